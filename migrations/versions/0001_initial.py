"""Initial schema: objects, object files, recordings, events, window sets, windows and the public views.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Migrations keep the view text they shipped with; a later change of a view is a new migration.
WINDOW_LABELS = """
CREATE VIEW window_labels AS
SELECT
    w.id AS window_id,
    r.name AS recording,
    r.subject AS subject,
    r.session AS session,
    r.split AS split,
    r.montage AS montage,
    ws.window_s AS window_s,
    ws.stride_s AS stride_s,
    w.start_sample / ws.fs AS start_s,
    ws.window_s AS duration_s,
    CASE w.label WHEN 0 THEN 'no_seizure' WHEN 1 THEN 'partial_seizure' ELSE 'full_seizure' END AS label,
    CAST(w.seizure_samples AS DOUBLE PRECISION) / ws.window_samples AS seizure_fraction
FROM windows w
JOIN recordings r ON r.id = w.recording_id
JOIN window_sets ws ON ws.id = w.window_set_id
"""

RECORDING_STATUS = """
CREATE VIEW recording_status AS
SELECT
    r.name AS recording,
    r.source_path AS source_path,
    r.status AS status,
    r.reason AS reason,
    (SELECT count(*) FROM windows w WHERE w.recording_id = r.id) AS n_windows
FROM recordings r
"""


def upgrade() -> None:
    op.create_table(
        "objects",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("label_key", sa.String(64), nullable=False),
        sa.Column("spec_digest", sa.String(16), nullable=False),
        sa.Column("spec_json", sa.Text, nullable=False),
        sa.Column("n_channels", sa.Integer, nullable=False),
        sa.Column("n_samples", sa.BigInteger, nullable=False),
        sa.Column("fs", sa.Float, nullable=False),
        sa.Column("dtype", sa.String(16), nullable=False),
        sa.Column("nbytes", sa.BigInteger, nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_objects_spec_digest", "objects", ["spec_digest"])
    op.create_table(
        "object_files",
        sa.Column("object_key", sa.String(64), sa.ForeignKey("objects.key", ondelete="CASCADE"), primary_key=True),
        sa.Column("path", sa.String(255), primary_key=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
    )
    op.create_table(
        "recordings",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("source_path", sa.Text, nullable=False, unique=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("subject", sa.String(64)),
        sa.Column("session", sa.String(64)),
        sa.Column("split", sa.String(16)),
        sa.Column("montage", sa.String(32)),
        sa.Column("token", sa.String(16)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("warnings", sa.Text),
        sa.Column("reader", sa.String(16)),
        sa.Column("filled_channels", sa.Text),
        sa.Column("edf_size", sa.BigInteger),
        sa.Column("edf_mtime_ns", sa.BigInteger),
        sa.Column("edf_sha256", sa.String(64)),
        sa.Column("annotation_path", sa.Text),
        sa.Column("annotation_size", sa.BigInteger),
        sa.Column("annotation_mtime_ns", sa.BigInteger),
        sa.Column("annotation_sha256", sa.String(64)),
        sa.Column("object_key", sa.String(64), sa.ForeignKey("objects.key")),
        sa.Column("spec_digest", sa.String(16)),
        sa.Column("orig_fs", sa.Float),
        sa.Column("duration_s", sa.Float),
        sa.Column("seizure_s", sa.Float),
        sa.Column("updated_at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_recordings_name", "recordings", ["name"])
    op.create_index("ix_recordings_object_key", "recordings", ["object_key"])
    op.create_index("ix_recordings_split_status", "recordings", ["split", "status"])
    op.create_index("ix_recordings_edf_sha256", "recordings", ["edf_sha256"])
    op.create_table(
        "events",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("recording_id", sa.Integer, sa.ForeignKey("recordings.id", ondelete="CASCADE"), nullable=False),
        sa.Column("start_s", sa.Float, nullable=False),
        sa.Column("stop_s", sa.Float, nullable=False),
    )
    op.create_index("ix_events_recording_id", "events", ["recording_id"])
    op.create_table(
        "window_sets",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("window_s", sa.Float, nullable=False),
        sa.Column("stride_s", sa.Float, nullable=False),
        sa.Column("fs", sa.Float, nullable=False),
        sa.Column("window_samples", sa.Integer, nullable=False),
        sa.Column("stride_samples", sa.Integer, nullable=False),
        sa.UniqueConstraint("window_s", "stride_s", "fs", name="uq_window_sets_shape"),
    )
    op.create_table(
        "windows",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("recording_id", sa.Integer, sa.ForeignKey("recordings.id", ondelete="CASCADE"), nullable=False),
        sa.Column("window_set_id", sa.Integer, sa.ForeignKey("window_sets.id", ondelete="CASCADE"), nullable=False),
        sa.Column("start_sample", sa.BigInteger, nullable=False),
        sa.Column("seizure_samples", sa.Integer, nullable=False),
        sa.Column("label", sa.SmallInteger, nullable=False),
        sa.UniqueConstraint("recording_id", "window_set_id", "start_sample", name="uq_windows_slice"),
    )
    op.create_index("ix_windows_set_label", "windows", ["window_set_id", "label"])
    op.execute(WINDOW_LABELS)
    op.execute(RECORDING_STATUS)


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS recording_status")
    op.execute("DROP VIEW IF EXISTS window_labels")
    for table in ("windows", "window_sets", "events", "recordings", "object_files", "objects"):
        op.drop_table(table)
