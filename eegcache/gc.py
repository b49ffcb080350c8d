"""Garbage collection: staging leftovers and objects no recording references, after a grace period.

The grace period protects a concurrent writer: its staging folder, and an object it has published but not yet
registered, are younger than the grace period. Unreferenced rows are deleted and their objects withdrawn
(moved to ``trash/``, or their ``COMPLETE`` marker removed on an object store) inside one write transaction, so
an ingest that registers an object (also under the write lock) sees either the object or its absence, never a
row without its data. The files are purged after the commit.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine, delete, select

from eegcache.claims import dead_here
from eegcache.index.db import writer
from eegcache.index.models import Claim, ObjectFile, Recording, StoredObject
from eegcache.store import age, open_store, writer_alive

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
            ages = store.object_ages(now)
            # While an ingest holds live claims, an unregistered folder may be its object between publish and
            # register: leave those for a later gc, whatever the grace period.
            ingest_running = any(
                expires > now and not dead_here(owner)
                for owner, expires in conn.execute(select(Claim.owner, Claim.expires_at)))
            doomed = sorted(
                key for key in (registered | set(ages)) - referenced
                if (key not in ages or ages[key] >= grace_s) and (key in registered or not ingest_running)
            )
            report.objects.extend(doomed)
            if not dry_run and doomed:
                conn.execute(delete(ObjectFile).where(ObjectFile.object_key.in_(doomed)))
                conn.execute(delete(StoredObject).where(StoredObject.key.in_(doomed)))
                for key in doomed:
                    if key in ages:
                        withdrawn.append((key, store.withdraw(key)))
    except BaseException:
        for key, token in withdrawn:  # the transaction rolled back: put the objects back
            store.restore(key, token)
        raise
    for key, token in withdrawn:
        store.purge(key, token)
    return report
