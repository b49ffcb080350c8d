"""The object store: one immutable Zarr v3 group per content key, published by atomic rename.

Layout under the cache folder::

    objects/<k[:2]>/<k>/            zarr group: arrays ``signal`` (channels × samples) and ``labels`` (samples)
    staging/<k>.<pid>.<random>/     objects being written; never read, removed by gc after a grace period

An object is written completely in ``staging/``, every file and folder is fsynced, and the folder is renamed
into ``objects/``. A folder in ``objects/`` is therefore always complete; whether it is *referenced* is the
index's business. Every chunk carries a CRC32C (zarr's own codec) so a damaged chunk fails on read, and the index
keeps a sha256 per file for ``verify``.
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec
from zarr.storage import LocalStore

SIGNAL_CHUNK = 16384  # samples per chunk: 64 s at 256 Hz, ~1.2 MB of float32 for 19 channels
LABEL_CHUNK = 1 << 20
STAGING = "staging"
OBJECTS = "objects"


@dataclass(frozen=True)
class FileChecksum:
    path: str  # relative to the object folder, '/'-separated
    size: int
    sha256: str


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def object_digest(checksums: list[FileChecksum]) -> str:
    """One digest for the whole object, over its sorted file list."""
    lines = "".join(f"{c.path} {c.size} {c.sha256}\n" for c in sorted(checksums, key=lambda c: c.path))
    return hashlib.sha256(lines.encode()).hexdigest()


class ObjectStore:
    """Immutable objects in a local folder."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / OBJECTS / key[:2] / key

    def exists(self, key: str) -> bool:
        return (self.path(key) / "zarr.json").is_file()

    def write(self, key: str, signal: np.ndarray, labels: np.ndarray, attrs: dict) -> bool:
        """Publish an object. Returns False when an identical object was already there (content addressing
        makes that a success: the bytes would be the same)."""
        if self.exists(key):
            return False
        staging_root = self.root / STAGING
        staging_root.mkdir(parents=True, exist_ok=True)
        staging = staging_root / f"{key}.{os.getpid()}.{secrets.token_hex(4)}"
        try:
            group = zarr.open_group(LocalStore(staging), mode="w", zarr_format=3, attributes=attrs)
            codecs = [ZstdCodec(level=3), Crc32cCodec()]
            sig = group.create_array(
                "signal", shape=signal.shape, dtype=signal.dtype,
                chunks=(signal.shape[0], SIGNAL_CHUNK), compressors=codecs, dimension_names=("channel", "time"),
            )
            sig[...] = signal
            lab = group.create_array(
                "labels", shape=labels.shape, dtype=np.uint8,
                chunks=(LABEL_CHUNK,), compressors=codecs, dimension_names=("time",),
            )
            lab[...] = labels
            _fsync_tree(staging)
            final = self.path(key)
            final.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(staging, final)
            except OSError as exc:
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST) and self.exists(key):
                    return False
                raise
            _fsync_dir(final.parent)
            return True
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)

    def checksums(self, key: str) -> list[FileChecksum]:
        """sha256 of every file of an object, as the index records them."""
        root = self.path(key)
        out = []
        for dirpath, _dirs, files in os.walk(root):
            for name in files:
                full = Path(dirpath) / name
                data = full.read_bytes()
                out.append(FileChecksum(full.relative_to(root).as_posix(), len(data), hashlib.sha256(data).hexdigest()))
        return sorted(out, key=lambda c: c.path)

    def open(self, key: str) -> zarr.Group:
        return zarr.open_group(LocalStore(self.path(key), read_only=True), mode="r")

    def read_labels(self, key: str) -> np.ndarray:
        return np.asarray(self.open(key)["labels"][...])

    def remove(self, key: str) -> None:
        shutil.rmtree(self.path(key), ignore_errors=True)
