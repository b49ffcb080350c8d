"""Windows: a covering index on (window_set_id, label, recording_id) for the trainer's per-class draws.

The epoch sampler selects window ids per class and, with a split filter, joins recordings by recording_id; with
recording_id in the index SQLite answers that from the index alone instead of visiting every window row.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_windows_set_label_recording", "windows", ["window_set_id", "label", "recording_id"])
    op.drop_index("ix_windows_set_label", table_name="windows")


def downgrade() -> None:
    op.create_index("ix_windows_set_label", "windows", ["window_set_id", "label"])
    op.drop_index("ix_windows_set_label_recording", table_name="windows")
