"""Index v2: datasets and pipelines. Recordings are (dataset, path relative to its root, pipeline), not absolute paths.

Upgrading reads no EDF. Every recording of a cache made by 0003 gets a dataset (the folder above ``edf/`` for TUSZ
paths, the common folder of the others), a path relative to it, and the pipeline ``default`` (the spec most of its
objects were built with; recordings built with another spec keep their data and are reported stale by the trainer).
Window sets move to that pipeline. Claims are leases of running processes and are dropped.

Downgrading keeps the rows of the first pipeline only (0003 has one recording per path) and writes absolute paths
back from the dataset roots.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

import hashlib
import json
import posixpath
import re
from collections import Counter
from datetime import datetime

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# The spec and pipeline version of this revision's defaults, as text: a migration never imports the code it migrates.
DEFAULT_SPEC_JSON = (
    '{"bandpass_hz":[0.5,120.0],"channels":["Fp1","F3","C3","P3","O1","F7","T3","T5","Fz","Cz","Pz","Fp2","F4",'
    '"C4","P4","O2","F8","T4","T6"],"dtype":"float32","fs":256.0,"missing_electrodes":"fail","notch_hz":[60.0],'
    '"zscore":true}'
)
PIPELINE_VERSION = "eegcache-preprocess/1"
TUSZ_ROOT = re.compile(r"^(.*)/edf/(?:train|dev|eval)/")

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
    CAST(w.seizure_samples AS DOUBLE PRECISION) / ws.window_samples AS seizure_fraction,
    d.name AS dataset,
    p.name AS pipeline
FROM windows w
JOIN recordings r ON r.id = w.recording_id
JOIN window_sets ws ON ws.id = w.window_set_id
JOIN datasets d ON d.id = r.dataset_id
JOIN pipelines p ON p.id = ws.pipeline_id
"""

RECORDING_STATUS = """
CREATE VIEW recording_status AS
SELECT
    r.name AS recording,
    d.root || '/' || r.rel_path AS source_path,
    r.status AS status,
    r.reason AS reason,
    (SELECT count(*) FROM windows w WHERE w.recording_id = r.id) AS n_windows,
    d.name AS dataset,
    p.name AS pipeline,
    r.rel_path AS rel_path,
    CASE WHEN r.source_missing THEN 'missing' ELSE 'present' END AS source
FROM recordings r
JOIN datasets d ON d.id = r.dataset_id
JOIN pipelines p ON p.id = r.pipeline_id
"""

# The 0001 views, restored by the downgrade.
OLD_WINDOW_LABELS = """
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

OLD_RECORDING_STATUS = """
CREATE VIEW recording_status AS
SELECT
    r.name AS recording,
    r.source_path AS source_path,
    r.status AS status,
    r.reason AS reason,
    (SELECT count(*) FROM windows w WHERE w.recording_id = r.id) AS n_windows
FROM recordings r
"""


def _spec_digest(spec_json: str) -> str:
    payload = {"spec": json.loads(spec_json), "pipeline": PIPELINE_VERSION}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def _roots(paths: list[str]) -> dict[str, tuple[str, str]]:
    """source path → (dataset root, layout): TUSZ trees are rooted above ``edf/``; other files share one root."""
    out, plain = {}, []
    for path in paths:
        m = TUSZ_ROOT.match(path)
        if m:
            out[path] = (m.group(1) or "/", "tusz")
        else:
            plain.append(path)
    if plain:
        root = posixpath.commonpath([posixpath.dirname(p) for p in plain]) or "/"
        out.update({p: (root, "folder") for p in plain})
    return out


def _names(roots: list[str]) -> dict[str, str]:
    names: dict[str, str] = {}
    for root in sorted(roots):
        base = posixpath.basename(root.rstrip("/")) or "dataset"
        name, n = base, 1
        while name in names.values():
            n += 1
            name = f"{base}-{n}"
        names[root] = name
    return names


def _rel(path: str, root: str) -> str:
    return posixpath.relpath(path, root) if path.startswith(root.rstrip("/") + "/") else path


def upgrade() -> None:
    bind = op.get_bind()
    now = datetime.utcnow()
    op.execute("DROP VIEW IF EXISTS recording_status")
    op.execute("DROP VIEW IF EXISTS window_labels")
    datasets = op.create_table(
        "datasets",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        sa.Column("layout", sa.String(16), nullable=False),
        sa.Column("root", sa.Text, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
    )
    pipelines = op.create_table(
        "pipelines",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        sa.Column("spec_json", sa.Text, nullable=False),
        sa.Column("spec_digest", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    with op.batch_alter_table("recordings") as batch:
        batch.add_column(sa.Column("dataset_id", sa.Integer))
        batch.add_column(sa.Column("rel_path", sa.Text))
        batch.add_column(sa.Column("pipeline_id", sa.Integer))
        batch.add_column(sa.Column("source_missing", sa.Boolean, nullable=False, server_default=sa.false()))
    with op.batch_alter_table("window_sets") as batch:
        batch.add_column(sa.Column("pipeline_id", sa.Integer))

    rows = bind.execute(sa.text("SELECT id, source_path, annotation_path FROM recordings ORDER BY id")).all()
    n_sets = bind.execute(sa.text("SELECT count(*) FROM window_sets")).scalar_one()
    if rows or n_sets:
        common = bind.execute(sa.text(
            "SELECT o.spec_json, count(*) AS n FROM recordings r JOIN objects o ON o.key = r.object_key "
            "GROUP BY o.spec_json ORDER BY n DESC, o.spec_json LIMIT 1")).first()
        spec_json = common.spec_json if common else DEFAULT_SPEC_JSON
        bind.execute(pipelines.insert().values(id=1, name="default", spec_json=spec_json,
                                               spec_digest=_spec_digest(spec_json), created_at=now))
        bind.execute(sa.text("UPDATE window_sets SET pipeline_id = 1"))
    if rows:
        roots = _roots([r.source_path for r in rows])
        names = _names(sorted({root for root, _ in roots.values()}))
        ids = {}
        for i, root in enumerate(sorted(names), start=1):
            layout = Counter(lay for r, lay in roots.values() if r == root).most_common(1)[0][0]
            bind.execute(datasets.insert().values(id=i, name=names[root], layout=layout, root=root, updated_at=now))
            ids[root] = i
        update = sa.text("UPDATE recordings SET dataset_id = :d, rel_path = :rel, annotation_path = :ann, "
                         "pipeline_id = 1 WHERE id = :id")
        bind.execute(update, [
            {"id": r.id, "d": ids[roots[r.source_path][0]], "rel": _rel(r.source_path, roots[r.source_path][0]),
             "ann": _rel(r.annotation_path, roots[r.source_path][0]) if r.annotation_path else None}
            for r in rows
        ])
    op.execute("DELETE FROM claims")

    with op.batch_alter_table("recordings") as batch:
        batch.drop_column("source_path")
        batch.alter_column("dataset_id", existing_type=sa.Integer, nullable=False)
        batch.alter_column("rel_path", existing_type=sa.Text, nullable=False)
        batch.alter_column("pipeline_id", existing_type=sa.Integer, nullable=False)
        batch.create_foreign_key("fk_recordings_dataset", "datasets", ["dataset_id"], ["id"])
        batch.create_foreign_key("fk_recordings_pipeline", "pipelines", ["pipeline_id"], ["id"])
        batch.create_unique_constraint("uq_recordings_identity", ["dataset_id", "rel_path", "pipeline_id"])
    with op.batch_alter_table("window_sets") as batch:
        batch.drop_constraint("uq_window_sets_shape", type_="unique")
        batch.alter_column("pipeline_id", existing_type=sa.Integer, nullable=False)
        batch.create_foreign_key("fk_window_sets_pipeline", "pipelines", ["pipeline_id"], ["id"], ondelete="CASCADE")
        batch.create_unique_constraint("uq_window_sets_shape", ["pipeline_id", "window_s", "stride_s"])
    if bind.dialect.name == "postgresql":  # explicit ids above do not advance the sequences
        for name in ("datasets", "pipelines"):
            op.execute(f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), "
                       f"coalesce((SELECT max(id) FROM {name}), 0) + 1, false)")
    op.execute(WINDOW_LABELS)
    op.execute(RECORDING_STATUS)


def downgrade() -> None:
    bind = op.get_bind()
    op.execute("DROP VIEW IF EXISTS recording_status")
    op.execute("DROP VIEW IF EXISTS window_labels")
    first = bind.execute(sa.text("SELECT min(id) FROM pipelines")).scalar_one()
    # Foreign keys are off while SQLite tables are rebuilt, so children go first, by hand.
    others = "SELECT id FROM recordings WHERE pipeline_id <> :p"
    other_sets = "SELECT id FROM window_sets WHERE pipeline_id <> :p"
    for statement in (f"DELETE FROM windows WHERE recording_id IN ({others}) OR window_set_id IN ({other_sets})",
                      f"DELETE FROM events WHERE recording_id IN ({others})",
                      "DELETE FROM recordings WHERE pipeline_id <> :p",
                      "DELETE FROM window_sets WHERE pipeline_id <> :p"):
        bind.execute(sa.text(statement), {"p": first or 0})
    with op.batch_alter_table("recordings") as batch:
        batch.add_column(sa.Column("source_path", sa.Text))
    rows = bind.execute(sa.text(
        "SELECT r.id, d.root, r.rel_path, r.annotation_path FROM recordings r JOIN datasets d ON d.id = r.dataset_id"
    )).all()
    if rows:
        bind.execute(sa.text("UPDATE recordings SET source_path = :src, annotation_path = :ann WHERE id = :id"), [
            {"id": r.id, "src": posixpath.join(r.root, r.rel_path),
             "ann": posixpath.join(r.root, r.annotation_path) if r.annotation_path else None} for r in rows
        ])
    op.execute("DELETE FROM claims")
    with op.batch_alter_table("recordings") as batch:
        batch.drop_constraint("uq_recordings_identity", type_="unique")
        batch.drop_constraint("fk_recordings_dataset", type_="foreignkey")
        batch.drop_constraint("fk_recordings_pipeline", type_="foreignkey")
        batch.drop_column("dataset_id")
        batch.drop_column("rel_path")
        batch.drop_column("pipeline_id")
        batch.drop_column("source_missing")
        batch.alter_column("source_path", existing_type=sa.Text, nullable=False)
        batch.create_unique_constraint("recordings_source_path_key", ["source_path"])
    with op.batch_alter_table("window_sets") as batch:
        batch.drop_constraint("uq_window_sets_shape", type_="unique")
        batch.drop_constraint("fk_window_sets_pipeline", type_="foreignkey")
        batch.drop_column("pipeline_id")
        batch.create_unique_constraint("uq_window_sets_shape", ["window_s", "stride_s", "fs"])
    op.drop_table("pipelines")
    op.drop_table("datasets")
    op.execute(OLD_WINDOW_LABELS)
    op.execute(OLD_RECORDING_STATUS)
