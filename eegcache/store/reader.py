"""Reading windows back: the one function every window read goes through, with a fast backend when one is installed.

``WindowReader.read(key, start, stop)`` returns ``(signal[:, start:stop], labels[start:stop])`` of a stored object
as numpy arrays, exactly the bytes zarr-python would return. The objects are plain Zarr v3 whatever reads them;
only the reading library differs:

- ``direct``: the shards ingest writes, read by byte range, CRC32C-checked by google-crc32c and decoded by numcodecs'
  Blosc (``eegcache.store.shards``; no thread pool, so fork-safe). An object whose metadata is not that layout
  (an earlier layout, another writer) is read by the next backend in ``AUTO`` instead;
- ``tensorstore`` (the ``fast`` extra): tensorstore's ``zarr3`` driver on the object's files, no zarr-python
  per-call path at all;
- ``zarrs``: zarr-python with the ``zarrs`` codec pipeline (Rust codecs; zarr-python's own slicing). Only when asked
  for by name: zarrs-python 0.2.3 does not check the CRC32C when it reads part of a chunk, so a damaged chunk is
  returned as samples instead of failing (tests/test_reader.py keeps a strict xfail on it);
- ``zarr``: plain zarr-python, always available: the fallback.

The backend is chosen once per reader: ``backend=`` (one of the names above, or ``auto``, the default: direct,
with tensorstore when it imports, else zarr-python, for other objects; the trainer's ``--reader`` /
``$EEGCACHE_READER`` pass it). A backend asked for by name that cannot be imported is an error; ``auto`` falls back
quietly. Remote stores (``s3://``) always read through zarr-python. Speeds: bench/RESULTS.md.

Handles are per process: a reader used in a process it was not created in (a forked DataLoader worker) drops its
handles and reopens them. Neither tensorstore nor zarrs is fork-safe once its thread pools run (a forked child can
hang in them), so a process forked from one that had started either reads through the next backend that it has not
started, zarr-python at worst, and never zarrs unless it was asked for (spawned workers, fresh interpreters, use
tensorstore as usual).
"""

from __future__ import annotations

import importlib
import os
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from eegcache.store import ObjectStore

BACKENDS = ("direct", "tensorstore", "zarrs", "zarr")
AUTO = ("direct", "tensorstore", "zarr")  # what auto chooses from: the backends that refuse a damaged chunk
GENERAL = ("tensorstore", "zarr")  # what reads an object ``direct`` does not (another layout)
ZARRS_PIPELINE = "zarrs.ZarrsCodecPipeline"

# Objects whose handles a reader keeps (least recently read dropped first). The direct reader maps each object's
# shard files (two for a recording up to 68 min): this keeps a reader well under Linux's 65,530 maps per process.
MAX_OPEN_OBJECTS = 4096

_started: dict[str, int] = {}  # backend -> the process in which it started its thread pools (tensorstore, zarrs)


def _importable(name: str) -> bool:
    if name in ("zarr", "direct"):  # numcodecs and google-crc32c come with zarr
        return True
    if _started.get(name, os.getpid()) != os.getpid():
        return False  # forked from a process that runs this library's thread pools: not safe here
    try:
        importlib.import_module(name)
    except Exception:  # ImportError, or a library whose shared object fails to load
        return False
    return True


def available_backends() -> list[str]:
    """The backends that can be used in this process, fastest first."""
    return [name for name in BACKENDS if _importable(name)]


def _auto() -> str:
    return next(name for name in AUTO if _importable(name))


def choose_backend(backend: str | None = None) -> str:
    """The backend a new reader uses: ``backend``, or the fastest importable one for ``None`` / ``auto``."""
    wanted = (backend or "auto").strip().lower()
    if wanted == "auto":
        return _auto()
    if wanted not in BACKENDS:
        raise ValueError(f"unknown window reader {wanted!r}: choose one of {', '.join(BACKENDS)} or auto")
    if not _importable(wanted):
        raise ImportError(f"window reader {wanted!r} is not available in this environment "
                          "(install eegcache[fast], or choose auto)")
    return wanted


class WindowReader:
    """Window slices of one store's objects; array handles stay open per object (and per process)."""

    def __init__(self, store: ObjectStore, backend: str | None = None) -> None:
        self.store = store
        self.requested = backend
        local = getattr(store, "url", None) is None
        self.backend = choose_backend(backend) if local else "zarr"
        self._handles: OrderedDict[str, tuple[Any, Any]] = OrderedDict()  # least recently read first
        self._pid = os.getpid()
        self._context: Any = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_handles"], state["_context"] = OrderedDict(), None  # handles stay in the process that opened them
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._pid = os.getpid()
        if not _importable(self.backend):
            self.backend = self._fallback()

    def _check_process(self) -> None:
        if self._pid != os.getpid():  # forked: the parent's handles are not ours
            self._handles, self._context, self._pid = OrderedDict(), None, os.getpid()
            if not _importable(self.backend):
                self.backend = self._fallback()

    def _fallback(self) -> str:
        """After a fork the backend may not be safe here: the next one that is, zarrs only if it was asked for."""
        if self.requested == "zarrs" and _importable("zarrs"):
            return "zarrs"
        return _auto()

    def _general(self) -> str:
        """The backend for an object ``direct`` does not read: the first general one that is safe here."""
        return next(name for name in GENERAL if _importable(name))

    def _open(self, key: str) -> tuple[Any, Any]:
        self._check_process()
        handles = self._handles.get(key)
        if handles is None:
            handles = self._handles[key] = self._opener(self.backend, key)
            if len(self._handles) > MAX_OPEN_OBJECTS:  # its file maps go with it
                self._handles.popitem(last=False)
        else:
            self._handles.move_to_end(key)
        return handles

    def _opener(self, backend: str, key: str) -> tuple[str, Any, Any]:
        """``(backend, signal, labels)`` of one object: the backend that reads it, and its two array handles."""
        if backend == "direct":
            from eegcache.store.shards import ShardedArray

            folder = self.store.path(key)
            signal, labels = ShardedArray.open(folder / "signal"), ShardedArray.open(folder / "labels")
            if signal is not None and labels is not None:
                return "direct", signal, labels
            backend = self._general()
        opener = {"tensorstore": self._open_tensorstore, "zarrs": self._open_zarrs, "zarr": self._open_zarr}
        return (backend, *opener[backend](key))

    def _open_zarr(self, key: str) -> tuple[Any, Any]:
        group = self.store.open(key)
        return group["signal"], group["labels"]

    def _open_zarrs(self, key: str) -> tuple[Any, Any]:
        import zarr

        _started.setdefault("zarrs", os.getpid())
        # The codec pipeline is fixed when an array is opened, so the setting is needed only around the open.
        with zarr.config.set({"codec_pipeline.path": ZARRS_PIPELINE}):
            return self._open_zarr(key)

    def _open_tensorstore(self, key: str) -> tuple[Any, Any]:
        import tensorstore as ts

        if self._context is None:
            # No chunk cache (each window is read once per epoch; the page cache holds the files), and one
            # decoding thread: DataLoader workers are the parallelism.
            self._context = ts.Context({"cache_pool": {"total_bytes_limit": 0}, "data_copy_concurrency": {"limit": 1}})
        _started.setdefault("tensorstore", os.getpid())
        folder = self.store.path(key)

        def one(name: str) -> Any:
            spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(folder / name) + "/"}}
            return ts.open(spec, read=True, open=True, context=self._context).result()

        return one("signal"), one("labels")

    def read(self, key: str, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """``(signal[:, start:stop], labels[start:stop])`` of object ``key``, as numpy arrays (numpy slice
        semantics: a stop past the end is cut at the end)."""
        self._check_process()
        backend, signal, labels = self._open(key)
        if backend == "direct":
            return signal.read(start, stop), labels.read(start, stop)
        if backend != "tensorstore":
            return np.asarray(signal[:, start:stop]), np.asarray(labels[start:stop])
        n = signal.shape[1]
        lo, hi = max(0, min(start, n)), max(0, min(stop, n))
        hi = max(lo, hi)
        sig = signal[:, lo:hi].read()
        lab = labels[lo:hi].read()
        return sig.result(), lab.result()

    def read_many(self, items: list[tuple[str, int, int]]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Several windows at once: with tensorstore every read is issued before the first is awaited, so the
        decodes of a batch overlap their I/O; the other backends read one after the other."""
        self._check_process()
        if self.backend != "tensorstore":
            return [self.read(*item) for item in items]
        futures = []
        for key, start, stop in items:
            _, signal, labels = self._open(key)  # all tensorstore: only direct hands objects to another backend
            n = signal.shape[1]
            lo, hi = max(0, min(start, n)), max(0, min(stop, n))
            hi = max(lo, hi)
            futures.append((signal[:, lo:hi].read(), labels[lo:hi].read()))
        return [(s.result(), lab.result()) for s, lab in futures]

    def read_into(self, items: list[tuple[str, int, int]], signal: np.ndarray, labels: np.ndarray) -> None:
        """Window ``items[j]`` into ``signal[j]`` (channels × samples) and ``labels[j]``, cast to their dtypes: a
        batch buffer filled in place (``direct`` decodes straight into it). Every window must fill its row exactly."""
        self._check_process()
        if len(items) != len(signal) or len(items) != len(labels):
            raise ValueError(f"{len(items)} windows do not fill buffers of {len(signal)} and {len(labels)} rows")
        got = None if self.backend == "direct" else self.read_many(items)
        for j, item in enumerate(items):
            if got is None:
                backend, sig, lab = self._open(item[0])
                if backend == "direct" and sig.dtype == signal.dtype:
                    sig.read(item[1], item[2], out=signal[j])
                    _fill(labels[j], lab.read(item[1], item[2]), item)
                    continue
            window_signal, window_labels = self.read(*item) if got is None else got[j]
            _fill(signal[j], window_signal, item)
            _fill(labels[j], window_labels, item)

    def shape(self, key: str) -> tuple[int, int]:
        return tuple(int(n) for n in self._open(key)[1].shape)


def _fill(row: np.ndarray, data: np.ndarray, item: tuple[str, int, int]) -> None:
    """``row[...] = data`` when the shapes agree; a window cut short (an object shorter than its index says) fails."""
    if data.shape != row.shape:
        raise ValueError(f"object {item[0]}: samples {item[1]}:{item[2]} read as {data.shape}, not {row.shape}")
    np.copyto(row, data, casting="unsafe")
