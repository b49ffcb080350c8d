"""Garbage collection: staging leftovers and objects no recording references, after a grace period.

gc runs only with the index that owns the store (``eegcache.store.owner``): with a snapshot of it, objects registered
after the snapshot would look unreferenced.

The grace period of an object counts from when gc first found it unreferenced (``unreferenced_objects``; the row
goes when the object is referenced again), not from its folder's age: an object built long ago and dropped a
minute ago by a re-ingest or ``eegcache remove`` is kept for the whole grace period, for the readers of an older
snapshot of the index. An object therefore goes at the earliest in the first gc run at least the grace period after
an earlier run found it unreferenced (``--grace 0``: in the first run). Staging folders still go by their age. The
grace period also protects a concurrent writer: its staging folder, and an object it has published but not yet
registered (which is, in addition, never collected while a writer holds live claims). Unreferenced rows are
deleted and their objects withdrawn (moved to ``trash/``, or their ``COMPLETE`` marker removed on an object store)
inside one write transaction, so an ingest that registers an object (also under the write lock) sees either the
object or its absence, never a row without its data. The files are purged after the commit.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine, delete, select

from eegcache.index.claims import dead_here
from eegcache.index.db import writer
from eegcache.index.models import Claim, ObjectFile, Recording, StoredObject, UnreferencedObject
from eegcache.store import age, open_store, writer_alive
from eegcache.store.owner import require_owner

DEFAULT_GRACE_S = 3600.0


@dataclass
class GcReport:
    staging: list[str] = field(default_factory=list)
    objects: list[str] = field(default_factory=list)
    bytes: int = 0


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def gc(
    engine: Engine, cache: Path, grace_s: float = DEFAULT_GRACE_S, dry_run: bool = False, store_url: str | None = None
) -> GcReport:
    cache = Path(cache)
    store = open_store(cache, store_url)
    require_owner(engine, store, "gc", bind_unowned="own-folder")
    report = GcReport()
    now = time.time()
    staging = store.staging_root
    for entry in sorted(staging.iterdir()) if staging.is_dir() else []:
        if writer_alive(entry.name):  # a running ingest's work in progress, whatever the grace period
            continue
        try:
            if age(entry, now) < grace_s:
                continue
            size = _size(entry)
        except FileNotFoundError:  # published (renamed) or removed since the listing
            continue
        report.staging.append(entry.name)
        report.bytes += size
        if not dry_run:
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
    withdrawn: list[tuple[str, object]] = []
    try:
        with writer(engine).begin() as conn:
            referenced = set(conn.execute(
                select(Recording.object_key).where(Recording.object_key.is_not(None))).scalars())
            registered = set(conn.execute(select(StoredObject.key)).scalars())
            if not dry_run:
                store.recover_withdrawn(registered)
            on_disk = set(store.object_ages(now))
            # While an ingest or a pull holds live claims, an unregistered folder may be its object between publish
            # and register: leave those for a later gc, whatever the grace period.
            writer_running = any(
                expires > now and not dead_here(owner)
                for owner, expires in conn.execute(select(Claim.owner, Claim.expires_at)))
            unreferenced = (registered | on_disk) - referenced
            seen = dict(conn.execute(select(UnreferencedObject.object_key, UnreferencedObject.since_s)).all())
            if not dry_run:
                gone = sorted(set(seen) - unreferenced)  # referenced again, or removed: their clocks stop
                for i in range(0, len(gone), 500):
                    conn.execute(delete(UnreferencedObject).where(UnreferencedObject.object_key.in_(gone[i:i + 500])))
                new = sorted(unreferenced - set(seen))
                if new:
                    conn.execute(UnreferencedObject.__table__.insert(),
                                 [{"object_key": key, "since_s": now} for key in new])
            doomed = sorted(
                key for key in unreferenced
                # rows without a folder protect nothing; a folder waits the grace period from its first sighting
                if (key not in on_disk or now - seen.get(key, now) >= grace_s)
                and (key in registered or not writer_running)
            )
            report.objects.extend(doomed)
            if not dry_run and doomed:
                conn.execute(delete(ObjectFile).where(ObjectFile.object_key.in_(doomed)))
                conn.execute(delete(StoredObject).where(StoredObject.key.in_(doomed)))
                conn.execute(delete(UnreferencedObject).where(UnreferencedObject.object_key.in_(doomed)))
                for key in doomed:
                    if key in on_disk:
                        withdrawn.append((key, store.withdraw(key)))
    except BaseException:
        for key, token in withdrawn:  # the transaction rolled back: put the objects back
            store.restore(key, token)
        raise
    for key, token in withdrawn:
        store.purge(key, token)
    return report
