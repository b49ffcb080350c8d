"""How one object is laid out as a Zarr v3 group, and the checksums that identify its files.

An object is a group with two arrays, ``signal`` (channels × samples, float32 or float16) and ``labels`` (samples,
uint8), and the attributes ingest gives it. Both arrays use Zarr's sharding codec: short inner chunks
(``SIGNAL_CHUNK`` samples × all channels, ``LABEL_CHUNK`` labels) packed into one shard file per array, up to
``SHARD_SAMPLES`` samples per shard, so a 60 s window read decodes about its own bytes while an object stays a
handful of files (at most five up to 68 min at 256 Hz: three ``zarr.json`` and one shard per array; zarr writes no
file for all-zero labels). Inner chunks are Blosc-compressed (LZ4HC level 1 with byte shuffle for the signal, LZ4
with bit shuffle for the labels) and carry a CRC32C (zarr's own codec), and so does each shard's index, so a damaged
chunk or index fails on read; the index keeps a sha256 per file for ``verify``. Why these settings: bench/RESULTS.md
(2026-12-02). The files are those zarr-python would write, made by ``eegcache.store.shards.encode_array`` without
zarr-python's per-object cost (``write_group``).

Anything that reads Zarr v3 (zarr-python, xarray, tensorstore, zarrs) reads an object; the layout is described by
each array's own metadata, so objects written with an earlier layout (16,384-sample chunks without shards, before
2026-12-02) stay readable beside new ones. The layout is not part of the content key: the same values under
another layout are other bytes of the same object.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

# numpy (~0.1 s) is imported where an object is written: a run with nothing to do never pays.

SIGNAL_CHUNK = 2048  # samples per inner chunk: 8 s at 256 Hz, ~156 KB of float32 for 19 channels
LABEL_CHUNK = 16384  # labels per inner chunk: 16 KB of uint8, ~2 per window read
SHARD_SAMPLES = 1 << 20  # samples per shard file at most: 68 min at 256 Hz, so most recordings are one file per array
assert SHARD_SAMPLES % SIGNAL_CHUNK == 0 and SHARD_SAMPLES % LABEL_CHUNK == 0  # a shard holds whole inner chunks


@dataclass(frozen=True)
class FileChecksum:
    path: str  # relative to the object folder, '/'-separated
    size: int
    sha256: str


def object_digest(checksums: list[FileChecksum]) -> str:
    """One digest for the whole object, over its sorted file list."""
    lines = "".join(f"{c.path} {c.size} {c.sha256}\n" for c in sorted(checksums, key=lambda c: c.path))
    return hashlib.sha256(lines.encode()).hexdigest()


# On preprocessed (z-scored) float32 EEG, LZ4HC at level 1 with byte shuffle is both smaller than LZ4 with bit
# shuffle and about twice as fast to decode, at about the same encoding cost (bench/RESULTS.md, 2026-12-02). A 0/1
# label mask: bit shuffle turns it into long runs that LZ4 packs to almost nothing. Each inner chunk carries a
# CRC32C, and so does each shard's index.
SIGNAL_BLOSC = {"cname": "lz4hc", "clevel": 1, "shuffle": "shuffle"}
LABEL_BLOSC = {"cname": "lz4", "clevel": 5, "shuffle": "bitshuffle"}


def shard_samples(n_samples: int, chunk: int) -> int:
    """Samples per shard of an array of ``n_samples`` with inner chunks of ``chunk``: the whole array (rounded up
    to whole chunks) up to ``SHARD_SAMPLES``."""
    whole = -(-n_samples // chunk) * chunk
    return max(chunk, min(SHARD_SAMPLES, whole))


def group_files(signal: np.ndarray, labels: np.ndarray, attrs: dict) -> dict[str, bytes]:
    """Every file of one object, by '/'-separated path: the bytes zarr-python would write for this group
    (``eegcache.store.shards.encode_array``; tests/test_shards_write.py compares them)."""
    import numpy as np

    from eegcache.store.shards import encode_array, metadata_bytes

    files = {"zarr.json": metadata_bytes({"attributes": attrs, "zarr_format": 3, "node_type": "group"})}
    labels = np.asarray(labels, dtype=np.uint8)
    for name, data, chunk, blosc, dims in (("signal", signal, SIGNAL_CHUNK, SIGNAL_BLOSC, ("channel", "time")),
                                           ("labels", labels, LABEL_CHUNK, LABEL_BLOSC, ("time",))):
        shard = shard_samples(data.shape[-1], chunk)
        files.update({f"{name}/{rel}": blob for rel, blob in encode_array(data, chunk, shard, blosc, dims).items()})
    return files


def write_group(folder: Path, signal: np.ndarray, labels: np.ndarray, attrs: dict) -> list[FileChecksum]:
    """Write one object's group into a new local folder (a staging folder: publishing is the store's job);
    returns the checksums of its files, hashed from the bytes written."""
    files = group_files(signal, labels, attrs)
    make_dir(folder)
    for sub in sorted({parent for rel in files for parent in _parents(rel)}):  # parents before children
        (folder / sub).mkdir()
    out = []
    for rel, blob in files.items():  # one after the other: when one fails, nothing is left writing
        write_file(folder / rel, blob)
        out.append(FileChecksum(rel, len(blob), hashlib.sha256(blob).hexdigest()))
    return sorted(out, key=lambda c: c.path)


def make_dir(folder: Path) -> None:
    """Make a new folder, and its parents only when they are missing: on a cache's second object they exist, and
    asking for each again is a system call per level per object."""
    try:
        folder.mkdir()
    except FileNotFoundError:
        folder.parent.mkdir(parents=True, exist_ok=True)
        folder.mkdir()


def write_file(path: Path, blob: bytes) -> None:
    with open(path, "wb") as f:
        f.write(blob)


def _parents(rel: str) -> list[str]:
    parts = rel.split("/")[:-1]
    return ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]


def folder_checksums(root: Path) -> list[FileChecksum]:
    """The checksums of every file below a local object folder, sorted by path."""
    out = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            full = Path(dirpath) / name
            data = full.read_bytes()
            out.append(FileChecksum(full.relative_to(root).as_posix(), len(data), hashlib.sha256(data).hexdigest()))
    return sorted(out, key=lambda c: c.path)


def fsync_tree(root: Path) -> None:
    """Flush every file and folder below root to disk, so a rename publishes durable data."""
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def fsync_dir(path: Path | str) -> None:
    """Flush one file or folder (os.open of a folder read-only is how its entries are flushed)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
