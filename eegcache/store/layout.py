"""How one object is laid out as a Zarr v3 group, and the checksums that identify its files.

An object is a group with two arrays, ``signal`` (channels × samples, float32) and ``labels`` (samples, uint8), and
the attributes ingest gives it. Chunks are Blosc-lz4 compressed and carry a CRC32C (zarr's own codec) so a damaged
chunk fails on read; the index keeps a sha256 per file for ``verify``. Anything that reads Zarr v3 (zarr-python,
xarray, tensorstore) reads an object; the layout is described by its own metadata, so objects written with an
earlier layout stay readable beside new ones.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

# zarr (~0.3 s) and numpy (~0.1 s) are imported where an object is written: a run with nothing to do never pays.

SIGNAL_CHUNK = 16384  # samples per chunk: 64 s at 256 Hz, ~1.2 MB of float32 for 19 channels
LABEL_CHUNK = 4 * SIGNAL_CHUNK  # a window read decodes a 64 KB label chunk, not a 1 MB one


@dataclass(frozen=True)
class FileChecksum:
    path: str  # relative to the object folder, '/'-separated
    size: int
    sha256: str


def object_digest(checksums: list[FileChecksum]) -> str:
    """One digest for the whole object, over its sorted file list."""
    lines = "".join(f"{c.path} {c.size} {c.sha256}\n" for c in sorted(checksums, key=lambda c: c.path))
    return hashlib.sha256(lines.encode()).hexdigest()


def _codecs() -> list:
    # Blosc lz4 with bit-shuffle beats zstd on preprocessed float32 EEG in size and read time (bench/RESULTS.md);
    # the CRC32C makes a damaged chunk fail on read.
    from zarr.codecs import BloscCodec, Crc32cCodec

    return [BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle"), Crc32cCodec()]


def write_group(folder: Path, signal: np.ndarray, labels: np.ndarray, attrs: dict) -> None:
    """Write one object's group into an empty local folder (a staging folder: publishing is the store's job)."""
    import numpy as np
    import zarr
    from zarr.storage import LocalStore

    group = zarr.open_group(LocalStore(folder), mode="w", zarr_format=3, attributes=attrs)
    codecs = _codecs()
    sig = group.create_array(
        "signal", shape=signal.shape, dtype=signal.dtype,
        chunks=(signal.shape[0], SIGNAL_CHUNK), compressors=codecs, dimension_names=("channel", "time"),
    )
    sig[...] = signal
    lab = group.create_array(
        "labels", shape=labels.shape, dtype=np.uint8, chunks=(LABEL_CHUNK,), compressors=codecs,
        dimension_names=("time",),
    )
    lab[...] = labels


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


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
