"""The object store: one immutable Zarr v3 group per content key, published by atomic rename.

Layout under the cache folder::

    objects/<k[:2]>/<k>/            zarr group: arrays ``signal`` (channels × samples) and ``labels`` (samples)
    staging/<k>.<pid>.<random>/     objects being written; never read, removed by gc after a grace period

An object is written completely in ``staging/``, every file and folder is fsynced, and the folder is renamed
into ``objects/``. A folder in ``objects/`` is therefore always complete; whether it is *referenced* is the
index's business. Chunks are Blosc-lz4 compressed and carry a CRC32C (zarr's own codec) so a damaged chunk fails
on read, and the index keeps a sha256 per file for ``verify``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import zarr

# zarr (~0.3 s) and numpy (~0.1 s) are imported where an object is written or opened: a run with nothing to do
# never pays for them.

SIGNAL_CHUNK = 16384  # samples per chunk: 64 s at 256 Hz, ~1.2 MB of float32 for 19 channels
LABEL_CHUNK = 4 * SIGNAL_CHUNK  # a window read decodes a 64 KB label chunk, not a 1 MB one


def _codecs() -> list:
    # Blosc lz4 with bit-shuffle beats zstd on preprocessed float32 EEG in size and read time (bench/RESULTS.md);
    # the CRC32C makes a damaged chunk fail on read.
    from zarr.codecs import BloscCodec, Crc32cCodec

    return [BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle"), Crc32cCodec()]
STAGING = "staging"
OBJECTS = "objects"
SIGNALS = "signals"
TRASH = "trash"
MARKER = "COMPLETE"


@dataclass(frozen=True)
class FileChecksum:
    path: str  # relative to the object folder, '/'-separated
    size: int
    sha256: str


def fsync_tree(root: Path) -> None:
    """Flush every file and folder below root to disk, so a rename publishes durable data."""
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


def _write_group(folder: Path, signal: np.ndarray, labels: np.ndarray, attrs: dict) -> None:
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


def _folder_checksums(root: Path) -> list[FileChecksum]:
    out = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            full = Path(dirpath) / name
            data = full.read_bytes()
            out.append(FileChecksum(full.relative_to(root).as_posix(), len(data), hashlib.sha256(data).hexdigest()))
    return sorted(out, key=lambda c: c.path)


class ObjectStore:
    """Immutable objects in a local folder (the cache folder by default)."""

    url: str | None = None

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.staging_root = self.root / STAGING

    def path(self, key: str) -> Path:
        return self.root / OBJECTS / key[:2] / key

    def exists(self, key: str) -> bool:
        return (self.path(key) / "zarr.json").is_file()

    def _staging(self, key: str) -> Path:
        self.staging_root.mkdir(parents=True, exist_ok=True)
        return self.staging_root / f"{key}.{os.getpid()}.{secrets.token_hex(4)}"

    def write(self, key: str, signal: np.ndarray, labels: np.ndarray, attrs: dict) -> bool:
        """Publish an object. Returns False when an identical object was already there (content addressing
        makes that a success: the bytes would be the same)."""
        if self.exists(key):
            return False
        staging = self._staging(key)
        try:
            _write_group(staging, signal, labels, attrs)
            fsync_tree(staging)
            return self._publish(key, staging)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)

    def _publish(self, key: str, staging: Path) -> bool:
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

    def checksums(self, key: str) -> list[FileChecksum]:
        """sha256 of every file of an object, as the index records them."""
        return _folder_checksums(self.path(key))

    def has_folder(self, key: str) -> bool:
        return self.path(key).is_dir()

    def read_file(self, key: str, relpath: str) -> bytes:
        return (self.path(key) / relpath).read_bytes()

    def open(self, key: str) -> zarr.Group:
        import zarr
        from zarr.storage import LocalStore

        return zarr.open_group(LocalStore(self.path(key), read_only=True), mode="r")

    def reader(self, backend: str | None = None):
        """A ``eegcache.reader.WindowReader`` on this store: the one way windows are read (tensorstore when the
        ``fast`` extra is installed, zarr-python otherwise; ``$EEGCACHE_READER`` picks one by name)."""
        from eegcache.reader import WindowReader

        return WindowReader(self, backend)

    def read_labels(self, key: str) -> np.ndarray:
        import numpy as np  # see the top

        return np.asarray(self.open(key)["labels"][...])

    def remove(self, key: str) -> None:
        shutil.rmtree(self.path(key), ignore_errors=True)

    # --- signal pointers: which object holds the signal of a signal key (labels aside) ---
    def _pointer(self, signal_key: str) -> Path:
        return self.root / SIGNALS / signal_key[:2] / signal_key

    def signal_donor(self, signal_key: str) -> str | None:
        """A stored object whose signal is the one this signal key names, if any."""
        try:
            key = self._read_pointer(signal_key)
        except FileNotFoundError:
            return None
        return key if key and self.exists(key) else None

    def _read_pointer(self, signal_key: str) -> str:
        return self._pointer(signal_key).read_text().strip()

    def note_signal(self, signal_key: str, key: str) -> None:
        """Record that ``key`` holds this signal (atomic replace; the last writer wins, any winner is right)."""
        target = self._pointer(signal_key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f"{target.name}.{os.getpid()}.{secrets.token_hex(4)}")
        tmp.write_text(key)
        os.replace(tmp, target)

    # --- for gc: list, withdraw (reversibly, inside the index transaction), then purge ---
    def object_ages(self, now: float) -> dict[str, float]:
        ages = {}
        for p in (self.root / OBJECTS).glob("??/*"):
            try:
                ages[p.name] = age(p, now)
            except FileNotFoundError:  # withdrawn by another gc since the listing
                continue
        return ages

    def withdraw(self, key: str) -> Path:
        trash = self.root / TRASH
        trash.mkdir(exist_ok=True)
        target = trash / f"{key}.{os.getpid()}"
        os.rename(self.path(key), target)
        return target

    def restore(self, key: str, token: Path) -> None:
        os.rename(token, self.path(key))

    def purge(self, key: str, token: Path) -> None:
        shutil.rmtree(token, ignore_errors=True)

    def recover_withdrawn(self, registered: set[str]) -> None:
        """After a gc killed mid-way: folders of still-registered objects go back, the rest are garbage."""
        trash = self.root / TRASH
        for leftover in sorted(trash.iterdir()) if trash.is_dir() else []:
            key = leftover.name.split(".")[0]
            if key in registered and not self.path(key).exists():
                os.rename(leftover, self.path(key))
            else:
                shutil.rmtree(leftover, ignore_errors=True)


def pid_alive(pid: int) -> bool:
    """Whether a process of this host runs with this pid."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def writer_alive(staging_name: str) -> bool:
    """Whether the process that named this staging entry (``<key>.<pid>.<random>``) still runs on this host."""
    parts = staging_name.split(".")
    return len(parts) == 3 and parts[1].isdigit() and pid_alive(int(parts[1]))


def age(path: Path, now: float) -> float:
    """Seconds since a file or folder was last created, renamed or changed."""
    st = path.lstat()
    return now - max(st.st_mtime, st.st_ctime)


class RemoteObjectStore(ObjectStore):
    """Immutable objects under an fsspec URL (``s3://bucket/prefix``), read and written through zarr's
    FsspecStore. There is no atomic rename on an object store, so an object is complete when its ``COMPLETE``
    marker exists: the marker (holding the file checksums) is written after every other file, and readers and the
    index only trust objects that have it. Staging stays local, in the cache folder."""

    def __init__(self, root: Path, url: str) -> None:
        import fsspec

        super().__init__(root)
        self.url = url.rstrip("/")
        self.fs, self.base = fsspec.core.url_to_fs(self.url)

    def _remote(self, key: str) -> str:
        return f"{self.base}/{OBJECTS}/{key[:2]}/{key}"

    def exists(self, key: str) -> bool:
        return self.fs.exists(f"{self._remote(key)}/{MARKER}")

    def _publish(self, key: str, staging: Path) -> bool:
        checksums = _folder_checksums(staging)
        target = self._remote(key)
        for c in checksums:
            self.fs.put_file(str(staging / c.path), f"{target}/{c.path}")
        self.fs.pipe_file(f"{target}/{MARKER}", json.dumps([c.__dict__ for c in checksums]).encode())
        return True

    def checksums(self, key: str) -> list[FileChecksum]:
        out = []
        for relpath in self._files(key):
            data = self.read_file(key, relpath)
            out.append(FileChecksum(relpath, len(data), hashlib.sha256(data).hexdigest()))
        return sorted(out, key=lambda c: c.path)

    def _files(self, key: str) -> list[str]:
        root = self._remote(key)
        return sorted(p[len(root) + 1:] for p in self.fs.find(root) if not p.endswith(f"/{MARKER}"))

    def has_folder(self, key: str) -> bool:
        return bool(self.fs.find(self._remote(key)))

    def read_file(self, key: str, relpath: str) -> bytes:
        return self.fs.cat_file(f"{self._remote(key)}/{relpath}")

    def open(self, key: str) -> zarr.Group:
        import zarr
        from zarr.storage import FsspecStore

        protocol = self.url.split("://", 1)[0]
        store = FsspecStore.from_url(f"{protocol}://{self._remote(key)}", read_only=True)
        return zarr.open_group(store, mode="r")

    def remove(self, key: str) -> None:
        if self.fs.exists(self._remote(key)):
            self.fs.rm(self._remote(key), recursive=True)

    def _read_pointer(self, signal_key: str) -> str:
        return self.fs.cat_file(f"{self.base}/{SIGNALS}/{signal_key[:2]}/{signal_key}").decode()

    def note_signal(self, signal_key: str, key: str) -> None:
        self.fs.pipe_file(f"{self.base}/{SIGNALS}/{signal_key[:2]}/{signal_key}", key.encode())

    def object_ages(self, now: float) -> dict[str, float]:
        newest: dict[str, float] = {}
        for path, info in self.fs.find(f"{self.base}/{OBJECTS}", detail=True).items():
            parts = path[len(self.base) + 1:].split("/")
            if len(parts) < 4:
                continue
            modified = info.get("LastModified") or info.get("mtime")
            stamp = modified.timestamp() if hasattr(modified, "timestamp") else float(modified or now)
            newest[parts[2]] = max(newest.get(parts[2], 0.0), stamp)
        return {key: now - stamp for key, stamp in newest.items()}

    def withdraw(self, key: str):
        marker = f"{self._remote(key)}/{MARKER}"
        saved = self.fs.cat_file(marker) if self.fs.exists(marker) else None
        if saved is not None:
            self.fs.rm_file(marker)
        return saved

    def restore(self, key: str, token) -> None:
        if token is not None:
            self.fs.pipe_file(f"{self._remote(key)}/{MARKER}", token)

    def purge(self, key: str, token) -> None:
        self.remove(key)

    def recover_withdrawn(self, registered: set[str]) -> None:
        """Nothing to do: a withdrawn object lacks its marker, so it is unregistered garbage or gets rebuilt."""


def open_store(cache: Path, url: str | None = None) -> ObjectStore:
    """The object store of a cache: its own folder by default, or ``url`` / ``$EEGCACHE_STORE``."""
    url = url or None
    if url is None or url.startswith("file://"):
        return ObjectStore(Path(url.removeprefix("file://")) if url else cache)
    return RemoteObjectStore(cache, url)
