"""Garbage collection: staging leftovers and objects no recording references, after a grace period.

The grace period protects a concurrent writer: its staging folder, and an object it has renamed into place but
not yet registered, are younger than the grace period. Unreferenced rows are deleted and their folders moved to
``trash/`` inside one write transaction, so an ingest that registers an object (also under the write lock) sees
either the object or its absence, never a row without a folder.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine, delete, select

from eegcache.index.db import writer
from eegcache.index.models import ObjectFile, Recording, StoredObject
from eegcache.store import OBJECTS, STAGING, ObjectStore

DEFAULT_GRACE_S = 3600.0
TRASH = "trash"


@dataclass
class GcReport:
    staging: list[str] = field(default_factory=list)
    objects: list[str] = field(default_factory=list)
    bytes: int = 0


def _age(path: Path, now: float) -> float:
    st = path.lstat()
    return now - max(st.st_mtime, st.st_ctime)


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def gc(engine: Engine, cache: Path, grace_s: float = DEFAULT_GRACE_S, dry_run: bool = False) -> GcReport:
    cache = Path(cache)
    report = GcReport()
    now = time.time()
    staging = cache / STAGING
    for entry in sorted(staging.iterdir()) if staging.is_dir() else []:
        if _age(entry, now) >= grace_s:
            report.staging.append(entry.name)
            report.bytes += _size(entry)
            if not dry_run:
                shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
    moved: list[tuple[Path, Path]] = []
    try:
        _sweep_objects(engine, cache, grace_s, dry_run, now, report, moved)
    except BaseException:
        for original, target in moved:  # the transaction rolled back: put the folders back
            os.rename(target, original)
        raise
    for _original, target in moved:
        shutil.rmtree(target, ignore_errors=True)
    return report


def _sweep_objects(engine, cache, grace_s, dry_run, now, report, moved) -> None:
    trash = cache / TRASH
    with writer(engine).begin() as conn:
        referenced = set(conn.execute(select(Recording.object_key).where(Recording.object_key.is_not(None))).scalars())
        registered = set(conn.execute(select(StoredObject.key)).scalars())
        for leftover in sorted(trash.iterdir()) if trash.is_dir() and not dry_run else []:
            # A gc killed mid-way: folders of still-registered objects go back, the rest are garbage.
            key = leftover.name.split(".")[0]
            home = ObjectStore(cache).path(key)
            if key in registered and not home.exists():
                os.rename(leftover, home)
            else:
                shutil.rmtree(leftover, ignore_errors=True)
        on_disk = {p.name: p for p in (cache / OBJECTS).glob("??/*") if p.is_dir()}
        doomed = sorted(
            key for key in (registered | set(on_disk)) - referenced
            if key not in on_disk or _age(on_disk[key], now) >= grace_s
        )
        for key in doomed:
            report.objects.append(key)
            if key in on_disk:
                report.bytes += _size(on_disk[key])
        if not dry_run and doomed:
            conn.execute(delete(ObjectFile).where(ObjectFile.object_key.in_(doomed)))
            conn.execute(delete(StoredObject).where(StoredObject.key.in_(doomed)))
            trash.mkdir(exist_ok=True)
            for key in doomed:
                if key in on_disk:
                    target = trash / f"{key}.{os.getpid()}"
                    os.rename(on_disk[key], target)
                    moved.append((on_disk[key], target))
