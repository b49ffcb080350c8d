"""Reading windows back: one map-style dataset per store, random single-window reads, and DataLoader throughput.

The datasets serve the same windows (same recordings, same starts) and return the same thing, a ``(signal
channels × samples float32, labels samples)`` pair. For eegcache the trainer's own ``trainer.data.WindowDataset``
is used when it exists (else ``EegcacheWindows``, the same Zarr slices). The DataLoader measurement wraps them in
``Stores``, whose index ``(name, -1)`` returns zeros, to start its workers before the clock starts."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.contenders import labels_file, window_file
from bench.timing import summary
from eegcache.store import LocalObjectStore

N_CHANNELS = 19


@dataclass(frozen=True)
class WindowRef:
    window_id: int
    source_path: str  # the EDF
    object_key: str
    start: int  # sample
    label: int


class _Windows:
    def __init__(self, window: int) -> None:
        self.window = window
        self._open: dict[Any, Any] = {}

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_open"] = {}  # handles are per process
        return state


class EegcacheWindows(_Windows):
    """A window is a slice of its recording's stored signal and mask, read through the store's ``WindowReader``
    (``backend``: None for the default choice, or ``"zarr"`` for the zarr-python fallback)."""

    def __init__(self, cache: Path, refs: list[WindowRef], window: int, backend: str | None = None) -> None:
        super().__init__(window)
        self.cache = Path(cache)
        self.backend = backend
        self.items = [(r.object_key, r.start) for r in refs]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        key, start = self.items[i]
        reader = self._open.get("reader")
        if reader is None:
            reader = self._open["reader"] = LocalObjectStore(self.cache).reader(self.backend)
        return reader.read(key, start, start + self.window)


class NpzWindows(_Windows):
    """The field's cache: a window is one row of its recording's ``np.savez_compressed`` file, loaded per read."""

    def __init__(self, root: Path, src: Path, refs: list[WindowRef], window: int, stride: int) -> None:
        super().__init__(window)
        self.items = [(window_file(Path(root), Path(src), Path(r.source_path), "npz"), r.start // stride) for r in refs]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        path, row = self.items[i]
        with np.load(path) as z:
            return z["signal"][row], z["labels"][row]


class NpyWindows(_Windows):
    """The uncompressed variant: one ``.npy`` of windows per recording, memory-mapped, kept open per file."""

    def __init__(self, root: Path, src: Path, refs: list[WindowRef], window: int, stride: int) -> None:
        super().__init__(window)
        self.items = [(window_file(Path(root), Path(src), Path(r.source_path), "npy"), r.start // stride) for r in refs]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        path, row = self.items[i]
        maps = self._open.get(path)
        if maps is None:
            maps = self._open[path] = (np.load(path, mmap_mode="r"), np.load(labels_file(path), mmap_mode="r"))
        return np.array(maps[0][row]), np.array(maps[1][row])


def random_reads(make_dataset, n: int, budget_s: float, repeats: int, seed: int, first_run: int = 0) -> dict[str, Any]:
    """Single-window reads per second in this process, at random windows; a fresh dataset (cold handles) per run.
    Each run stops after ``n`` reads or ``budget_s`` seconds, whichever comes first (at least 2 reads). Run ``r``
    reads the windows of seed ``[seed, r]`` (``first_run`` offsets r, for rounds interleaved across stores)."""
    rates, counts = [], []
    for run in range(first_run, first_run + repeats):
        ds = make_dataset()
        order = np.random.default_rng([seed, run]).integers(0, len(ds), n)
        t0 = time.perf_counter()
        done = 0
        for i in order.tolist():
            ds[i]
            done += 1
            if done >= 2 and time.perf_counter() - t0 >= budget_s:
                break
        rates.append(done / (time.perf_counter() - t0))
        counts.append(done)
    return {**summary(rates), "reads": counts}


class Stores:
    """Several window datasets behind one map-style dataset indexed by ``(store name, window index)``, so that
    one set of DataLoader workers serves every store (spawning workers costs seconds on a small machine)."""

    def __init__(self, stores: dict[str, Any], window: int) -> None:
        self.stores = stores
        self.window = window

    def __len__(self) -> int:
        return sum(len(s) for s in self.stores.values())

    def __getitem__(self, index: tuple[str, int]) -> tuple[np.ndarray, np.ndarray]:
        name, i = index
        if i < 0:
            return np.zeros((N_CHANNELS, self.window), np.float32), np.zeros(self.window, np.uint8)
        return self.stores[name][i]

    def __getitems__(self, indices: list[tuple[str, int]]) -> list:
        """A batch (one store's windows) in one call where that store reads batches (the trainer's dataset)."""
        names = {name for name, _ in indices}
        store = self.stores[next(iter(names))] if len(names) == 1 else None
        if store is None or not hasattr(store, "__getitems__") or any(i < 0 for _, i in indices):
            return [self[index] for index in indices]
        return store.__getitems__([i for _, i in indices])


class PlainCollate:
    """A dataset with its own loader (``WindowDataset.loader``) seen without it: what ``DataLoader(ds)`` with the
    default collate makes of the same windows, measured beside it."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        return self.dataset[i]

    def __getitems__(self, indices: list[int]) -> list:
        return self.dataset.__getitems__(indices)


class _Batches:
    """A batch sampler whose batches are replaced between rounds, so persistent workers serve every round."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[str, int]]] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class _Order:
    """A sampler whose indices are replaced between rounds (for a dataset's own loader)."""

    def __init__(self) -> None:
        self.indices: list[int] = []

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def loader_rates(stores: dict[str, Any], window: int, workers: int, n_batches: dict[str, int], batch_size: int,
                 budget_s: float, repeats: int, seed: int) -> dict[str, Any]:
    """Batches per second from ``torch.utils.data.DataLoader`` with ``workers`` workers, for each store in turn.

    A store with a loader of its own (eegcache's ``WindowDataset.loader``) is read through it, as its users would;
    the others share one DataLoader with the default collate. Workers are spawned once and persist across stores
    and rounds (start-up is not timed). Each round starts with ``2 × workers`` (or 1) batches that are not timed
    (blank ones where the shared loader serves them), so the clock starts with every worker warm, then times
    ``n_batches[store]`` shuffled batches (stopping early after ``budget_s`` seconds, with at least one batch). A
    store whose round took longer than ``budget_s`` is not repeated (the compressed npz: seconds per batch)."""
    import torch
    from torch.utils.data import DataLoader

    context = "spawn" if workers else None
    sampler = _Batches()
    shared = DataLoader(Stores({k: v for k, v in stores.items() if not hasattr(v, "loader")}, window),
                        batch_sampler=sampler, num_workers=workers, persistent_workers=workers > 0,
                        multiprocessing_context=context)
    own = {name: (order, ds.loader(batch_size, sampler=order, num_workers=workers, persistent_workers=workers > 0,
                                   multiprocessing_context=context))
           for name, ds in stores.items() if hasattr(ds, "loader") for order in [_Order()]}
    n_warm = max(1, 2 * workers)
    rates: dict[str, list[float]] = {name: [] for name in stores}
    counts: dict[str, list[int]] = {name: [] for name in stores}
    for run in range(repeats):
        for name, ds in stores.items():
            if run and rates[name] and counts[name][-1] / rates[name][-1] > budget_s:
                continue
            want = n_batches[name]
            order = np.random.default_rng([seed, run]).permutation(len(ds))
            order = np.resize(order, want * batch_size)  # a small corpus repeats windows rather than end early
            if name in own:
                own[name][0].indices = [*np.resize(order, n_warm * batch_size).tolist(), *order.tolist()]
                it = iter(own[name][1])
            else:
                sampler.batches = [[(name, -1)] * batch_size for _ in range(n_warm)]
                sampler.batches += [[(name, int(i)) for i in order[k : k + batch_size]]
                                    for k in range(0, order.size, batch_size)]
                it = iter(shared)
            for _ in range(n_warm):
                next(it)
            t0 = time.perf_counter()
            done = 0
            for signal, _labels in it:
                assert isinstance(signal, torch.Tensor) and signal.shape[0] == batch_size
                done += 1
                if done >= want or time.perf_counter() - t0 >= budget_s:
                    break
            rates[name].append(done / (time.perf_counter() - t0))
            counts[name].append(done)
    del shared, own
    return {name: {**summary(rates[name]), "batches": counts[name]} for name in stores}
