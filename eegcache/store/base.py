"""The object store's contract: immutable objects named by content key, written in local staging and published
whole, plus the signal pointers and the withdraw/restore/purge steps gc needs. ``LocalObjectStore`` (a folder)
and ``FsspecObjectStore`` (``s3://`` and other fsspec URLs) are its two implementations."""

from __future__ import annotations

import ctypes
import os
import secrets
import shutil
import threading
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eegcache.store.layout import FileChecksum, fsync_dir, write_group

if TYPE_CHECKING:
    import numpy as np
    import zarr

# zarr (~0.3 s) and numpy (~0.1 s) are imported where an object is written or opened: a run with nothing to do
# never pays for them.

STAGING = "staging"
OBJECTS = "objects"
SIGNALS = "signals"
TRASH = "trash"
MARKER = "COMPLETE"


@dataclass(frozen=True)
class Staged:
    """An object written in staging (``ObjectStore.stage``), waiting for ``publish``."""

    key: str
    folder: Path
    checksums: list[FileChecksum]


class ObjectStore(ABC):
    """Immutable objects, each a Zarr v3 group (``eegcache.store.layout``), under one root."""

    url: str | None = None

    def __init__(self, root: Path) -> None:
        self.root = Path(root)  # the local folder: the objects of a local store, the staging of every store
        self.staging_root = self.root / STAGING

    def _staging(self, key: str) -> Path:
        """A new staging folder's name (``write_group`` makes it, and ``staging/`` when it is missing)."""
        return self.staging_root / f"{key}.{os.getpid()}.{secrets.token_hex(4)}"

    def write(self, key: str, signal: np.ndarray, labels: np.ndarray, attrs: dict) -> list[FileChecksum] | None:
        """Publish an object; returns the checksums of the files it wrote, or None when an identical object was
        already there (content addressing makes that a success: the bytes would be the same)."""
        staged = self.stage(key, signal, labels, attrs)
        if staged is None:
            return None
        (done,) = self.publish([staged])
        if isinstance(done, OSError):
            raise done
        return done

    def stage(self, key: str, signal: np.ndarray, labels: np.ndarray, attrs: dict) -> Staged | None:
        """Write an object in staging, not yet durable nor published (``publish``); None when it is stored already."""
        if self.exists(key):
            return None
        staging = self._staging(key)
        try:
            return Staged(key, staging, write_group(staging, signal, labels, attrs))
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def publish(self, staged: list[Staged]) -> list[list[FileChecksum] | None | OSError]:
        """Make staged objects durable and publish them, each on its own: for each, the checksums of its files, None
        when an identical object was published first, or the OSError that stopped it (its staging is removed
        either way). They are flushed together (``make_durable``): one flush for a batch of objects, where the
        fsyncs of each were the largest part of the store's cost per short file (bench/RESULTS.md, 2026-12-04)."""
        errors = make_durable([s.folder for s in staged])
        out: list[list[FileChecksum] | None | OSError] = []
        try:
            for s in staged:
                try:
                    if s.folder in errors:
                        raise errors[s.folder]
                    out.append(s.checksums if self._publish(s.key, s.folder) else None)
                except OSError as exc:
                    out.append(exc)
            unsettled = self._settle([s.key for s, o in zip(staged, out, strict=True) if not isinstance(o, OSError)])
            return [unsettled.get(s.key, o) for s, o in zip(staged, out, strict=True)]
        finally:
            for s in staged:
                if s.folder.exists():
                    shutil.rmtree(s.folder, ignore_errors=True)

    def reader(self, backend: str | None = None):
        """A ``eegcache.store.reader.WindowReader`` on this store: the one way windows are read (tensorstore when
        the ``fast`` extra is installed, zarr-python otherwise)."""
        from eegcache.store.reader import WindowReader

        return WindowReader(self, backend)

    def read_labels(self, key: str) -> np.ndarray:
        import numpy as np  # see the top

        return np.asarray(self.open(key)["labels"][...])

    def signal_donor(self, signal_key: str) -> str | None:
        """A stored object whose signal is the one this signal key names, if any."""
        try:
            key = self._read_pointer(signal_key)
        except FileNotFoundError:
            return None
        return key if key and self.exists(key) else None

    # --- what each implementation provides ---
    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether a complete object is published under this key."""

    @abstractmethod
    def _publish(self, key: str, staging: Path) -> bool:
        """Make the complete staging folder the object ``key``; False when another writer published it first."""

    def _settle(self, keys: list[str]) -> dict[str, OSError]:
        """After ``_publish`` of a batch: make the publications durable (a local store flushes the folders the
        renames changed); the error of each key whose publication is not known durable."""
        return {}

    @abstractmethod
    def checksums(self, key: str) -> list[FileChecksum]:
        """sha256 of every file of an object, as the index records them."""

    @abstractmethod
    def has_folder(self, key: str) -> bool:
        """Whether anything (complete or not) is stored under this key."""

    @abstractmethod
    def read_file(self, key: str, relpath: str) -> bytes: ...

    @abstractmethod
    def open(self, key: str) -> zarr.Group:
        """The object's group, read-only, through zarr-python."""

    @abstractmethod
    def remove(self, key: str) -> None: ...

    @abstractmethod
    def _read_pointer(self, signal_key: str) -> str:
        """The key a signal pointer names; FileNotFoundError when there is none."""

    @abstractmethod
    def note_signal(self, signal_key: str, key: str) -> None:
        """Record that ``key`` holds this signal (the last writer wins; any winner is right)."""

    # --- for gc: list, withdraw (reversibly, inside the index transaction), then purge ---
    @abstractmethod
    def object_ages(self, now: float) -> dict[str, float]:
        """Seconds since each stored object was last written, by key."""

    @abstractmethod
    def withdraw(self, key: str) -> Any:
        """Make an object unreadable, reversibly; returns the token ``restore`` and ``purge`` take."""

    @abstractmethod
    def restore(self, key: str, token: Any) -> None: ...

    @abstractmethod
    def purge(self, key: str, token: Any) -> None: ...

    @abstractmethod
    def recover_withdrawn(self, registered: set[str]) -> None:
        """After a gc killed mid-way: put back what is still registered, drop the rest."""


_FSYNC_THREADS = 16
_fsync_pool: tuple[int, ThreadPoolExecutor] | None = None  # (the pid that made it: a forked child has no threads)
_fsync_lock = threading.Lock()


def flush_filesystem(path: Path) -> bool:
    """syncfs(2) of the filesystem holding ``path``: every dirty page and inode of it written and its journal
    committed, in one call. False where the C library has no syncfs (not Linux); raises what it reports (since
    Linux 5.8 it reports write-back errors of that filesystem)."""
    libc = _libc()
    if libc is None:
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.syncfs(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), str(path))
    finally:
        os.close(fd)
    return True


@lru_cache(maxsize=1)
def _libc():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc if hasattr(libc, "syncfs") else None
    except OSError:
        return None


def make_durable(folders: list[Path], below: bool = True) -> dict[Path, OSError]:
    """Flush ``folders`` (one filesystem: the store's) and, with ``below``, everything in them to disk, so that a
    rename publishes durable data or a published rename survives a crash; the error of each folder that could not
    be flushed.

    One syncfs where there is one: the fsyncs of ~8 files and folders per object, even issued together, cost ~3.5 ms
    more per short file here than one syncfs per batch (each its own write-out, thread wake-up and journal wait;
    bench/RESULTS.md, 2026-12-04). It flushes the whole filesystem, so where another process writes a lot
    to it, it waits for that data too (ingest calls it from a thread, while the next batch is prepared). Without
    syncfs, or when it reports an error, every file and folder is fsynced on its own (``fsync_many``), which says
    which folders failed: an error elsewhere on the filesystem fails none of them."""
    if not folders:
        return {}
    try:
        if flush_filesystem(folders[0]):
            return {}
    except OSError:
        pass
    return fsync_many(folders) if below else fsync_together([(f, f) for f in folders])


def fsync_all(root: Path) -> None:
    """Flush every file and folder below ``root`` to disk, so that a rename publishes durable data (``fsync_many``
    of one folder); raises the first error, once none is still running."""
    errors = fsync_many([root])
    if errors:
        raise errors[root]


def fsync_many(roots: list[Path]) -> dict[Path, OSError]:
    """Flush every file and folder below each of ``roots`` to disk: the same fsyncs as ``layout.fsync_tree``,
    issued together from a few threads. One after the other, each waits for its own journal commit (~2 ms each,
    an object has ~8 files and folders); issued together, the filesystem commits them at once. Returns once every
    one has finished (none is left running on a folder the caller is about to remove): the first error of each
    root that had one."""
    paths = []
    for root in roots:
        for dirpath, _dirnames, filenames in os.walk(root):
            paths.append((root, dirpath))
            paths.extend((root, os.path.join(dirpath, name)) for name in filenames)
    return fsync_together(paths)


def fsync_together(paths: list[tuple[Any, str | Path]]) -> dict[Any, OSError]:
    """fsync each ``(owner, path)`` from the shared threads; returns once all have finished: the first error of
    each owner that had one."""
    global _fsync_pool
    with _fsync_lock:
        if _fsync_pool is None or _fsync_pool[0] != os.getpid():
            _fsync_pool = (os.getpid(), ThreadPoolExecutor(_FSYNC_THREADS, thread_name_prefix="eegcache-fsync"))
        pool = _fsync_pool[1]
    futures = [(owner, pool.submit(fsync_dir, p)) for owner, p in paths]
    wait([f for _, f in futures])
    errors: dict[Any, OSError] = {}
    for owner, f in futures:
        exc = f.exception()
        if exc is not None and owner not in errors:
            if not isinstance(exc, OSError):
                raise exc
            errors[owner] = exc
    return errors


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
