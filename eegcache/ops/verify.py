"""Verify: re-read every registered object against the checksums in the index (git fsck for the cache)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine, select

from eegcache.index.models import Dataset, ObjectFile, Recording, StoredObject
from eegcache.store import ObjectStore, open_store


@dataclass
class Problem:
    object_key: str
    recordings: list[str]
    what: str  # a sentence: which file and what is wrong

    def __str__(self) -> str:
        names = ", ".join(self.recordings) or "no recording"
        return f"object {self.object_key[:12]} ({names}): {self.what}"


@dataclass
class VerifyReport:
    objects: int = 0
    files: int = 0
    bytes: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _check_object(store: ObjectStore, key: str, files: list) -> tuple[list[str], int]:
    if not store.has_folder(key):
        return [f"object folder {key[:2]}/{key} is missing"], 0
    issues, nbytes = [], 0
    for f in files:
        try:
            data = store.read_file(key, f.path)
        except FileNotFoundError:
            issues.append(f"file {f.path} is missing")
            continue
        except OSError as exc:
            issues.append(f"file {f.path} cannot be read ({exc.strerror or exc})")
            continue
        nbytes += len(data)
        if len(data) != f.size:
            issues.append(f"file {f.path} has {len(data)} bytes, expected {f.size} (truncated or overwritten)")
        elif hashlib.sha256(data).hexdigest() != f.sha256:
            issues.append(f"file {f.path} is corrupt (sha256 mismatch)")
    return issues, nbytes


def verify(engine: Engine, cache: Path, store_url: str | None = None) -> VerifyReport:
    """Check every object file; name each missing or corrupt one with the recordings that use it."""
    store = open_store(cache, store_url)
    report = VerifyReport()
    with engine.connect() as conn:
        users: dict[str, list[str]] = {}
        for key, name in conn.execute(select(Recording.object_key, Recording.name).where(Recording.object_key.is_not(None))):
            users.setdefault(key, []).append(name)
        files: dict[str, list[ObjectFile]] = {}
        for row in conn.execute(select(ObjectFile.object_key, ObjectFile.path, ObjectFile.size, ObjectFile.sha256)):
            files.setdefault(row.object_key, []).append(row)
        keys = list(conn.execute(select(StoredObject.key)).scalars())
    for key in sorted(keys):
        report.objects += 1
        report.files += len(files.get(key, []))
        issues, nbytes = _check_object(store, key, files.get(key, []))
        report.bytes += nbytes
        report.problems.extend(Problem(key, sorted(users.get(key, [])), what) for what in issues)
    for key in sorted(set(users) - set(keys)):
        report.problems.append(Problem(key, sorted(users[key]), "the index names this object but has no record of it"))
    return report


def damaged_sources(engine: Engine, report: VerifyReport) -> dict[str, list[tuple[int, Path]]]:
    """(recording id, current source path) of the recordings that use each damaged object."""
    keys = {p.object_key for p in report.problems}
    with engine.connect() as conn:
        rows = conn.execute(select(Recording.object_key, Recording.id, Dataset.root, Recording.rel_path)
                            .join(Dataset, Dataset.id == Recording.dataset_id).where(Recording.object_key.in_(keys)))
        out: dict[str, list[tuple[int, Path]]] = {}
        for key, rec_id, root, rel in rows:
            out.setdefault(key, []).append((rec_id, Path(root) / rel))
    return out
