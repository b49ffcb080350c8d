"""Store identity and gc's unreferenced-since times.

- ``index_identity``: one row with this index's random id (made here, so every index, old or new, has one), the id
  of the store it owns (the store's ``store.json`` names this index back; ``eegcache.store.owner``) and, for a copy made
  by ``eegcache index copy``, the id of the index it is a snapshot of. gc, push, pull and repair refuse to work
  on a store with an index that does not own it.
- ``unreferenced_objects``: when gc first found each unreferenced object; gc's grace period counts from there.

An index made by 0005 gets a fresh identity and no store: the first command that writes with it names it in the
store's ``store.json`` if the store has none yet (``eegcache.store.owner.require_owner``).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

import uuid
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    identity = op.create_table(
        "index_identity",
        sa.Column("index_id", sa.String(36), primary_key=True),
        sa.Column("store_id", sa.String(36), nullable=True),
        sa.Column("snapshot_of", sa.String(36), nullable=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.bulk_insert(identity, [{"index_id": str(uuid.uuid4()), "store_id": None, "snapshot_of": None,
                               "created_at": datetime.now(UTC).replace(tzinfo=None)}])
    op.create_table(
        "unreferenced_objects",
        sa.Column("object_key", sa.String(64), primary_key=True),
        sa.Column("since_s", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("unreferenced_objects")
    op.drop_table("index_identity")
