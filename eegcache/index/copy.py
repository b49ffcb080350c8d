"""Copy an index between databases (SQLite ⇄ PostgreSQL), table by table, with the row counts checked."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import exc, func, make_url, select, text
from sqlalchemy.exc import ArgumentError

from eegcache.errors import StateError
from eegcache.index.db import current_revision, head_revision, make_engine, upgrade, writer
from eegcache.index.models import Base, IndexIdentity

# Parents before children, so foreign keys hold at every insert. Claims are leases of running processes: not copied.
# Neither are index_identity (the copy has its own, marked as a snapshot of the source: it owns no store) and
# unreferenced_objects (gc's clocks belong to the store's owner).
TABLES = ("datasets", "pipelines", "objects", "object_files", "recordings", "events", "window_sets", "windows")
BATCH = 50_000


class CopyError(StateError):
    pass


@dataclass
class CopyReport:
    counts: dict[str, int]


def _sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL (None for other databases and in-memory SQLite)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise CopyError(f"{url!r} is not a database URL (e.g. sqlite:///cache/index.sqlite or "
                        "postgresql://user@host/db)") from None
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def _check_paths(source_url: str, target_url: str) -> None:
    """Clear messages instead of a driver's "unable to open database file" (and no empty SQLite file created in
    place of a mistyped source)."""
    source = _sqlite_file(source_url)
    if source is not None and not source.is_file():
        raise CopyError(f"no source index at {source}; nothing was copied")
    target = _sqlite_file(target_url)
    if target is not None:
        if not target.parent.is_dir():
            raise CopyError(f"the target folder {target.parent} does not exist; create it first (index copy creates "
                            "the index file, not folders); nothing was copied")
        if not os.access(target.parent, os.W_OK | os.X_OK):
            raise CopyError(f"the target folder {target.parent} is not writable by this user; nothing was copied")


def copy_index(source_url: str, target_url: str) -> CopyReport:
    """Copy every row of ``source_url`` into an empty index at ``target_url`` (created if needed)."""
    _check_paths(source_url, target_url)
    try:
        return _copy(source_url, target_url)
    except exc.DBAPIError as err:  # e.g. a server that cannot be reached, a file that is no database
        raise CopyError(f"cannot copy the index: {str(err.orig).strip().splitlines()[0]}; nothing was copied") from None


def _copy(source_url: str, target_url: str) -> CopyReport:
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
            from eegcache.store.owner import mark_snapshot

            source_identity = src.execute(select(IndexIdentity.index_id, IndexIdentity.store_id)).first()
            mark_snapshot(dst, *(source_identity or (None, None)))  # a copy owns no store (eegcache.store.owner)
            if dst.dialect.name == "postgresql":  # explicit ids do not advance the id sequences
                for name in ("datasets", "pipelines", "recordings", "events", "window_sets", "windows"):
                    dst.execute(text(f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), "
                                     f"coalesce((SELECT max(id) FROM {name}), 0) + 1, false)"))
        return CopyReport(counts)
    finally:
        source.dispose()
        target.dispose()
