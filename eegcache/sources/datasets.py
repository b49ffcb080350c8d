"""Datasets: a source tree has a name, a layout and the root it was last seen at (a ref that may move).

Recordings are named by their path relative to the dataset root, so a tree that moves (a new mount point, another
machine) is the same dataset: ingesting it from the new root re-roots it, and nothing already stored is rebuilt.

Which dataset a tree is, when no ``--dataset`` is given:
1. a dataset whose root is the tree's root, or a folder above the source (a subfolder of a known tree);
2. else a dataset whose recordings match a sample of the tree's files by relative path and content (size and
   mtime, else sha256): the tree moved;
3. else a new dataset named after the root folder (``-2``, ``-3``... when that name is taken).
The root of a TUSZ tree is the folder that holds ``edf/``, whichever subfolder is ingested; of any other tree,
the source folder itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine, select

from eegcache.index.db import writer
from eegcache.index.models import Dataset, Recording
from eegcache.index.sql import insert_ignore
from eegcache.pipeline import keys
from eegcache.sources import bids
from eegcache.sources.tree import path_text

SPLITS = ("train", "dev", "eval")
SAMPLE = 16  # files compared when recognising a moved tree


@dataclass(frozen=True)
class DatasetRef:
    id: int
    name: str
    layout: str
    root: Path
    moved_from: str | None = None  # the previous root, when this run re-rooted the dataset

    def rel_path(self, path: Path) -> str:
        return path_text(Path(path).relative_to(self.root))


def layout_and_root(src: Path, layout: str | None = None) -> tuple[str, Path]:
    """The tree's layout and root for a resolved source path (a folder or one file).

    Recognised: ``tusz`` (the folder holding ``edf/{train,dev,eval}``), ``bids`` (the folder holding
    ``dataset_description.json``, or its ``sub-*`` subfolders), else ``folder``. ``layout`` forces one: ``bids``
    roots at the BIDS root above ``src`` when there is one, else at ``src``; ``folder`` at ``src``."""
    folder = src if src.is_dir() else src.parent
    if layout == "bids":
        return "bids", bids.find_root(folder) or folder
    if layout == "folder":
        return "folder", folder
    if (folder / "edf").is_dir() and any((folder / "edf" / s).is_dir() for s in SPLITS):
        return "tusz", folder
    if layout != "tusz" and (root := bids.find_root(folder)) is not None:
        return "bids", root
    parts = folder.parts
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "edf" and (i + 1 == len(parts) or parts[i + 1] in SPLITS):
            return "tusz", Path(*parts[:i]) if i else Path(parts[0])
    return "folder", folder


def _is_under(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _matches(edf: Path, row) -> bool:
    try:
        st = edf.stat()
    except OSError:
        return False
    if st.st_size != row.edf_size:
        return False
    if st.st_mtime_ns == row.edf_mtime_ns:
        return True
    return row.edf_sha256 is not None and keys.file_digest(edf) == row.edf_sha256


def _moved_from(conn, root: Path, edfs: list[Path]) -> int | None:
    """The dataset whose recordings match a sample of ``edfs`` by relative path and content, if any."""
    if not edfs:
        return None
    step = max(1, len(edfs) // SAMPLE)
    sample = {path_text(e.relative_to(root)): e for e in edfs[::step][:SAMPLE]}
    rows = conn.execute(select(Recording.dataset_id, Recording.rel_path, Recording.edf_size, Recording.edf_mtime_ns,
                               Recording.edf_sha256).where(Recording.rel_path.in_(list(sample)))
                        .distinct()).all()
    scores: dict[int, list[int]] = {}
    seen: set[tuple[int, str]] = set()
    for row in rows:
        if (row.dataset_id, row.rel_path) in seen or row.edf_size is None:
            continue
        seen.add((row.dataset_id, row.rel_path))
        tally = scores.setdefault(row.dataset_id, [0, 0])
        tally[1] += 1
        tally[0] += _matches(sample[row.rel_path], row)
    best = sorted(((hit, total, ds) for ds, (hit, total) in scores.items() if hit and 2 * hit >= total), reverse=True)
    return best[0][2] if best else None


def _free_name(conn, base: str) -> str:
    taken = set(conn.execute(select(Dataset.name)).scalars())
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}-{n}"
    return name


def recordings_of(layout: str, root: Path, edfs: list[Path]) -> list[Path]:
    """The EDFs that are recordings of a tree of this layout: in a BIDS tree only ``sub-*/[ses-*/]eeg/*_eeg.edf``
    (never ``derivatives/`` or ``sourcedata/``); in the others every EDF."""
    if layout != "bids":
        return edfs
    return [e for e in edfs if _is_under(e, root) and bids.is_recording(e.relative_to(root))]


def resolve_dataset(engine: Engine, src: Path, name: str | None, edfs: list[Path],
                    layout: str | None = None) -> DatasetRef:
    """The dataset ``src`` belongs to, created or re-rooted as needed (one write transaction)."""
    layout, root = layout_and_root(src, layout)
    now = datetime.now(UTC).replace(tzinfo=None)
    with writer(engine).begin() as conn:
        rows = conn.execute(select(Dataset.__table__)).all()
        chosen = None
        if name is not None:
            chosen = next((d for d in rows if d.name == name), None)
        else:
            above = [d for d in rows if _is_under(src, Path(d.root))]
            if above:
                chosen = max(above, key=lambda d: len(d.root))
            elif (moved := _moved_from(conn, root, edfs)) is not None:
                chosen = next(d for d in rows if d.id == moved)
        if chosen is None:
            new_name = name or _free_name(conn, root.name or "dataset")
            conn.execute(insert_ignore(conn, Dataset.__table__).values(
                name=new_name, layout=layout, root=path_text(root), updated_at=now))
            row = conn.execute(select(Dataset.__table__).where(Dataset.name == new_name)).one()
            return DatasetRef(row.id, row.name, row.layout, Path(row.root))
        if _is_under(src, Path(chosen.root)):  # a subfolder of the tree where it was last seen
            return DatasetRef(chosen.id, chosen.name, chosen.layout, Path(chosen.root))
        conn.execute(Dataset.__table__.update().where(Dataset.id == chosen.id).values(
            root=path_text(root), layout=layout, updated_at=now))
        return DatasetRef(chosen.id, chosen.name, layout, root, moved_from=chosen.root)


def scanned_prefix(dataset: DatasetRef, src: Path) -> str | None:
    """The relative path the scan of ``src`` covered: '' for the whole tree, a folder, or one file's path."""
    if not _is_under(src, dataset.root):
        return None
    return "" if src == dataset.root else path_text(src.relative_to(dataset.root))
