"""Copy an index between databases (SQLite ⇄ PostgreSQL), table by table, with the row counts checked."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select, text

from eegcache.index.db import current_revision, head_revision, make_engine, upgrade, writer
from eegcache.index.models import Base

# Parents before children, so foreign keys hold at every insert. Claims are leases of running processes: not copied.
TABLES = ("datasets", "pipelines", "objects", "object_files", "recordings", "events", "window_sets", "windows")
BATCH = 50_000


class CopyError(RuntimeError):
    pass


@dataclass
class CopyReport:
    counts: dict[str, int]


def copy_index(source_url: str, target_url: str) -> CopyReport:
    """Copy every row of ``source_url`` into an empty index at ``target_url`` (created if needed)."""
    source, target = make_engine(source_url), make_engine(target_url)
    try:
        if current_revision(source) != head_revision():
            raise CopyError(f"the source index is at revision {current_revision(source)!r}; "
                            f"upgrade it to {head_revision()!r} first (eegcache db upgrade)")
        upgrade(target)
        counts: dict[str, int] = {}
        with source.connect() as src, writer(target).begin() as dst:
            for name in TABLES:
                table = Base.metadata.tables[name]
                if dst.execute(select(func.count()).select_from(table)).scalar_one():
                    raise CopyError(f"the target index is not empty (table {name} has rows); nothing was copied")
                result = src.execution_options(stream_results=True).execute(select(table).order_by(*table.primary_key))
                while rows := result.fetchmany(BATCH):
                    dst.execute(table.insert(), [dict(r._mapping) for r in rows])
                counts[name] = src.execute(select(func.count()).select_from(table)).scalar_one()
                copied = dst.execute(select(func.count()).select_from(table)).scalar_one()
                if copied != counts[name]:
                    raise CopyError(f"table {name}: {copied} rows arrived of {counts[name]}; the copy was rolled back")
            if dst.dialect.name == "postgresql":  # explicit ids do not advance the id sequences
                for name in ("datasets", "pipelines", "recordings", "events", "window_sets", "windows"):
                    dst.execute(text(f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), "
                                     f"coalesce((SELECT max(id) FROM {name}), 0) + 1, false)"))
        return CopyReport(counts)
    finally:
        source.dispose()
        target.dispose()
