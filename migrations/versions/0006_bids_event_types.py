"""BIDS datasets and seizure types: ``events.event_type``, BIDS facts on recordings, and the view ``seizure_events``.

- ``events.event_type``: the seizure type(s) of each stored event (``seiz``, ``fnsz``... from TUSZ files, the BIDS
  ``eventType`` such as ``sz_foc_ia``; types of merged events joined by ``+``). Events registered before this
  revision keep NULL: the next ingest of their dataset re-reads their annotation files (no EDF) and fills them in.
- ``recordings.run``, ``recordings.reference`` and ``recordings.power_line_hz``: the BIDS run entity and what the
  recording's ``_eeg.json`` declares (``EEGReference``, ``PowerLineFrequency``); NULL for TUSZ and folder trees.
- ``seizure_events(recording, dataset, subject, session, split, start_s, stop_s, event_type, pipeline)``: one row
  per stored seizure event of an ingested recording (a public view, like ``window_labels``; one row per pipeline
  that holds the recording, hence the last column).

Independent of any other revision after 0004: it adds columns and a view only.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-08
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

SEIZURE_EVENTS = """
CREATE VIEW seizure_events AS
SELECT
    r.name AS recording,
    d.name AS dataset,
    r.subject AS subject,
    r.session AS session,
    r.split AS split,
    e.start_s AS start_s,
    e.stop_s AS stop_s,
    e.event_type AS event_type,
    p.name AS pipeline
FROM events e
JOIN recordings r ON r.id = e.recording_id
JOIN datasets d ON d.id = r.dataset_id
JOIN pipelines p ON p.id = r.pipeline_id
WHERE r.status = 'ingested'
"""


def upgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.add_column(sa.Column("event_type", sa.Text))
    with op.batch_alter_table("recordings") as batch:
        batch.add_column(sa.Column("run", sa.String(64)))
        batch.add_column(sa.Column("reference", sa.String(128)))
        batch.add_column(sa.Column("power_line_hz", sa.Float))
    op.execute(SEIZURE_EVENTS)


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS seizure_events")
    bind = op.get_bind()
    # SQLite drops a column by rebuilding the table, which a view over it does not survive: set the views aside
    # (as they are, whatever revision wrote them) and put them back. PostgreSQL drops the columns in place.
    views = []
    if bind.dialect.name == "sqlite":
        views = bind.execute(sa.text("SELECT name, sql FROM sqlite_master WHERE type = 'view'")).all()
        for name, _ in views:
            op.execute(f'DROP VIEW "{name}"')
    with op.batch_alter_table("recordings") as batch:
        batch.drop_column("power_line_hz")
        batch.drop_column("reference")
        batch.drop_column("run")
    with op.batch_alter_table("events") as batch:
        batch.drop_column("event_type")
    for _, sql in views:
        op.execute(sql)
