"""Which index owns a store: gc, push, pull and repair only run with the store's own index.

A store and its index are bound both ways at creation: the store holds ``store.json`` (``{"store_id", "index_id",
"index_location"}``, beside ``objects/``; on an object store the object ``store.json`` under the prefix) and the
index's ``index_identity`` row (migration 0007) holds its own random ``index_id`` and the ``store_id``. An index
owns a store when

- the store's ``index_id`` is this index's (a copy made by ``eegcache index copy`` gets a fresh id, and is marked
  as a snapshot of its source);
- this index is not marked as a snapshot;
- where the owner's location was recorded, this index is at it: for SQLite the index file (relative to a local
  store's folder when it lies inside it, so a cache folder moved or copied whole keeps its binding; absolute
  otherwise), for PostgreSQL the database and schema. A file copied with ``cp`` has the owner's id but another
  location.

Why: gc deletes what its index does not reference. Run with a snapshot, objects the live index registered after
the snapshot look unreferenced, and gc deleted them. The same holds for repair (it removes and rebuilds objects)
and for the receiving side of push and pull (their rows would land in an index the store's gc does not read).

A store without ``store.json`` (made before 0007, or new) is bound by the first command that writes it with an
index that is not a snapshot (ingest, pull, push, repair); gc binds one only when its index is the store folder's
own ``index.sqlite`` or the store holds no object yet, and refuses otherwise (it cannot tell a snapshot made before
0007 from the owner). ``eegcache store adopt`` binds a store to another index on purpose (after moving the index
to PostgreSQL with ``eegcache index copy``, for instance).
"""

from __future__ import annotations

import json
import os
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine, select, text, update

from eegcache.index.db import IndexError_, writer
from eegcache.index.models import IndexIdentity
from eegcache.store import ObjectStore
from eegcache.store.remote import FsspecObjectStore

STORE_FILE = "store.json"


class NotOwner(IndexError_):
    """This index does not own this store; the message says why and what to do."""


@dataclass(frozen=True)
class StoreIdentity:
    store_id: str
    index_id: str
    index_location: str | None

    def to_json(self) -> bytes:
        return json.dumps({"format": 1, "store_id": self.store_id, "index_id": self.index_id,
                           "index_location": self.index_location,
                           "written_at": datetime.now(UTC).isoformat(timespec="seconds")}, indent=1).encode()


def _store_name(store: ObjectStore) -> str:
    return store.url or str(store.root)


def read_identity(store: ObjectStore) -> StoreIdentity | None:
    try:
        if isinstance(store, FsspecObjectStore):
            path = f"{store.base}/{STORE_FILE}"
            if not store.fs.exists(path):
                return None
            raw = store.fs.cat_file(path)
        else:
            raw = (store.root / STORE_FILE).read_bytes()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(raw)
        return StoreIdentity(str(data["store_id"]), str(data["index_id"]), data.get("index_location"))
    except (ValueError, KeyError, TypeError):
        raise NotOwner(f"the store identity {_store_name(store)}/{STORE_FILE} is unreadable; restore it from a backup, "
                       "or run eegcache store adopt with the store's own index to write it again") from None


def _write_identity(store: ObjectStore, identity: StoreIdentity, *, exclusive: bool) -> StoreIdentity:
    """Write store.json (atomically; ``exclusive``: only if there is none, and return the one that is there)."""
    data = identity.to_json()
    if isinstance(store, FsspecObjectStore):  # no exclusive create on an object store: a check, then the write
        path = f"{store.base}/{STORE_FILE}"
        if exclusive and store.fs.exists(path):
            return read_identity(store) or identity
        store.fs.pipe_file(path, data)
        return identity
    store.root.mkdir(parents=True, exist_ok=True)
    target = store.root / STORE_FILE
    tmp = target.with_name(f".{STORE_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        tmp.write_bytes(data)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        if exclusive:
            try:
                os.link(tmp, target)  # fails if another process bound the store first
            except FileExistsError:
                return read_identity(store) or identity
        else:
            os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return identity


def index_location(engine: Engine, store: ObjectStore) -> str | None:
    """Where this index is, in the form ``store.json`` records (see the module's docstring)."""
    if engine.dialect.name == "sqlite":
        database = engine.url.database
        if not database or database == ":memory:":
            return None
        path = Path(os.path.realpath(database))
        if not isinstance(store, FsspecObjectStore):
            root = Path(os.path.realpath(store.root))
            if path.is_relative_to(root):
                return path.relative_to(root).as_posix()
        return str(path)
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            db, schema = conn.execute(text("SELECT current_database(), current_schema()")).one()
        return f"postgresql:{db}/{schema}"
    return None


def _describe(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


def _row(conn):
    row = conn.execute(select(IndexIdentity.index_id, IndexIdentity.store_id, IndexIdentity.snapshot_of)).first()
    if row is None:  # only if someone deleted it: a fresh identity, owning nothing
        row_id = str(uuid.uuid4())
        conn.execute(IndexIdentity.__table__.insert().values(index_id=row_id, created_at=_now()))
        return conn.execute(select(IndexIdentity.index_id, IndexIdentity.store_id, IndexIdentity.snapshot_of)).one()
    return row


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _has_objects(store: ObjectStore) -> bool:
    if isinstance(store, FsspecObjectStore):
        return bool(store.fs.exists(f"{store.base}/objects") and store.fs.find(f"{store.base}/objects", maxdepth=3))
    return any((store.root / "objects").glob("??/*"))


def require_owner(engine: Engine, store: ObjectStore, command: str, *, travelling: bool = False,
                  bind_unowned: str = "any") -> StoreIdentity | None:
    """Make sure this index owns the store, binding a store without identity to it (see the module docstring).
    Raises NotOwner with the reason otherwise.

    ``travelling``: the index is by construction the store's own (an object-store remote's ``index.sqlite``, fetched
    into a temporary folder): the store is (re)bound to it. ``bind_unowned``: ``"any"`` binds a store without identity
    to any index that is not a snapshot; ``"own-folder"`` (gc) only to the store folder's own index, or when the store
    holds no object; ``"never"`` only reports (returns None)."""
    location = index_location(engine, store)
    with writer(engine).begin() as conn:
        row = _row(conn)
        found = read_identity(store)
        if travelling:
            if found is None or found.index_id != row.index_id:
                found = _write_identity(store, StoreIdentity(found.store_id if found else row.store_id
                                                             or str(uuid.uuid4()), row.index_id, None), exclusive=False)
        elif found is None:
            if row.snapshot_of is not None or bind_unowned == "never":
                if bind_unowned == "never":
                    return None
                raise _refusal(command, engine, store, "this index is a snapshot (eegcache index copy) of index "
                               f"{row.snapshot_of[:8]}, and the store has no identity yet to say which index owns it")
            if bind_unowned == "own-folder" and location != "index.sqlite" and _has_objects(store):
                raise _refusal(command, engine, store, "the store has no identity yet (it was made before eegcache "
                               "schema 0007), and this index is not the store folder's own index.sqlite, so it may "
                               "be a snapshot; bind the store to its owner first (any eegcache ingest, pull or repair "
                               "with the owning index does, or eegcache store adopt)")
            found = _write_identity(store, StoreIdentity(row.store_id or str(uuid.uuid4()), row.index_id, location),
                                    exclusive=True)
        why = _why_not(found, row, location)
        if why:
            if bind_unowned == "never":
                return None
            raise _refusal(command, engine, store, why)
        if row.store_id != found.store_id:
            conn.execute(update(IndexIdentity).where(IndexIdentity.index_id == row.index_id)
                         .values(store_id=found.store_id))
    return found


def _why_not(found: StoreIdentity, row, location: str | None) -> str | None:
    if row.snapshot_of is not None:
        return (f"this index is a snapshot (eegcache index copy) of index {row.snapshot_of[:8]}; the store belongs to "
                f"index {found.index_id[:8]}" + (f" at {found.index_location}" if found.index_location else ""))
    if found.index_id != row.index_id:
        return (f"the store belongs to index {found.index_id[:8]}"
                + (f" at {found.index_location}" if found.index_location else "")
                + f", and this one is index {row.index_id[:8]}")
    if found.index_location and location and found.index_location != location:
        return (f"this index has the owner's identity but is at {location}, and the owner is at "
                f"{found.index_location}: it is a copy of the owner (cp, a backup), not the owner")
    return None


def _refusal(command: str, engine: Engine, store: ObjectStore, why: str) -> NotOwner:
    return NotOwner(
        f"{command} refused: the index {_describe(engine)} does not own the store {_store_name(store)}: {why}. "
        f"{command} with an index that is not the store's owner could delete or overwrite what the owner registered "
        "(objects registered after a snapshot look unreferenced in it). Run it with the store's own index (--db), or, "
        "if this index has replaced the owner for good (e.g. the index moved to PostgreSQL with eegcache index copy), "
        "run eegcache store adopt once with this index")


def adopt(engine: Engine, store: ObjectStore) -> tuple[StoreIdentity | None, StoreIdentity]:
    """Bind the store to this index on purpose, whatever owned it: returns (the previous identity, the new one)."""
    location = index_location(engine, store)
    with writer(engine).begin() as conn:
        row = _row(conn)
        before = read_identity(store)
        after = _write_identity(store, StoreIdentity(before.store_id if before else row.store_id or str(uuid.uuid4()),
                                                     row.index_id, location), exclusive=False)
        conn.execute(update(IndexIdentity).where(IndexIdentity.index_id == row.index_id)
                     .values(store_id=after.store_id, snapshot_of=None))
    return before, after


def mark_snapshot(conn, source_index_id: str | None, source_store_id: str | None) -> None:
    """Inside ``eegcache index copy``: the target is a snapshot of the source, owning no store."""
    row = _row(conn)
    conn.execute(update(IndexIdentity).where(IndexIdentity.index_id == row.index_id)
                 .values(snapshot_of=source_index_id or "unknown", store_id=source_store_id))
