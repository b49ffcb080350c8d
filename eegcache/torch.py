"""A torch ``Dataset`` and a balanced ``Sampler`` over a selection, for any model and training loop.

    from eegcache.torch import WindowDataset, BalancedSampler
    ds = WindowDataset(sel)                          # ds[i] -> (signal float32 [C, T], mask float32 [T])
    sampler = BalancedSampler(sel, seed=0)           # indices into ds; set_epoch(e) before each epoch
    loader = ds.loader(32, sampler=sampler, num_workers=8)     # or torch.utils.data.DataLoader(ds, ...)

Index i means window ``sel.ids[i]`` everywhere. The dataset looks its windows up once (object key and start
sample per window) and reads through the store layer's ``WindowReader`` (its own reader of the layout ingest
writes, tensorstore or zarr-python for others; a local folder or ``s3://``), opening handles lazily in each
DataLoader worker (fork or spawn). The sampler is the trainer's epoch draw (``eegcache.sampling.draw_epoch``)
over the selection's classes: per epoch all partial-seizure windows, 0.3x as many full-seizure and 2.5x background
by default, reseeded by (seed, epoch); with ``num_replicas`` it shards like ``DistributedSampler`` (same epoch on
every rank, disjoint slices, padded so ranks run equal steps).

``ds.loader(batch_size, sampler=..., num_workers=...)`` is that DataLoader with batches read whole and handed over
through shared memory allocated once (``eegcache.torch_loader``), rather than stacked into fresh shared memory per
batch by the default collate: the same batches, faster wherever the workers are busy.

torch is imported here and in ``eegcache.torch_loader`` only: ``import eegcache`` works without it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from eegcache.sampling import CLASSES, CODES, Ratios, draw_epoch, target_counts
from eegcache.selection import SelectionError, WindowSelection

Transform = Callable[[np.ndarray, int, int], np.ndarray]  # (signal, epoch, window id) -> signal


class WindowDataset(Dataset):
    """Item i = (signal float32 [channels, window_samples], seizure mask float32 [window_samples]) of window
    ``selection.ids[i]``. A pipeline's declared read-time steps (``window_filter``) run first; then
    ``transform(signal, epoch, window_id)`` (optional) on the float32 numpy signal."""

    def __init__(self, selection: WindowSelection, *, transform: Transform | None = None,
                 reader: str | None = None) -> None:
        if selection.store_location is None:
            raise SelectionError("this selection does not know its store; make it with eegcache.open(...).windows()")
        from eegcache.pipeline.preprocess import window_transform

        keys, key_of, starts = selection.locations()
        self._setup(selection.ids, keys, key_of, starts, selection.window_set.window_samples,
                    selection.store_location, transform, reader, window_transform(selection.pipeline_spec()))

    def _setup(self, ids: np.ndarray, keys: list[str], key_of: np.ndarray, starts: np.ndarray, window_samples: int,
               store: tuple, transform: Transform | None, reader: str | None, read_transform=None) -> None:
        """Item i reads ``window_samples`` from ``starts[i]`` of object ``keys[key_of[i]]`` in ``store``
        ((cache folder, store URL)); ``read_transform`` is the pipeline's declared read-time steps."""
        self.ids = np.asarray(ids, dtype=np.int64)
        self.keys, self._key_of, self._starts = keys, key_of, starts
        self.window_samples = int(window_samples)
        self._store = store
        self.read_transform = read_transform  # a pipeline's window_filter, applied to every window first
        self.transform = transform
        self.epoch = 0
        self.reader_backend = reader
        self._reader = None
        self._channels: int | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return int(self.ids.size)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_reader"] = None  # handles stay in the process that opened them
        return state

    @property
    def reader(self):
        if self._reader is None:
            from eegcache.store import open_store

            self._reader = open_store(*self._store).reader(self.reader_backend)
        return self._reader

    @property
    def channels(self) -> int:
        """Channels of the stored signal, from the first object's metadata. No window is read, so a process that
        forks DataLoader workers afterwards has started no reading library: tensorstore is not fork-safe, and
        workers forked from a process that runs it must read through zarr-python, several times slower."""
        if self._channels is None:
            from eegcache.store import open_store

            self._channels = int(open_store(*self._store).open(self.keys[0])["signal"].shape[0])
        return self._channels

    def _item(self, i: int) -> tuple[str, int, int]:
        start = int(self._starts[i])
        return self.keys[self._key_of[i]], start, start + self.window_samples

    def read(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """The stored slices as numpy (signal in its stored dtype, labels uint8), before any transform."""
        return self.reader.read(*self._item(i))

    def _sample(self, i: int, signal: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        signal = signal.astype(np.float32, copy=False)
        if self.read_transform is not None:
            signal = self.read_transform(signal)
        if self.transform is not None:
            signal = self.transform(signal, self.epoch, int(self.ids[i]))
        return torch.from_numpy(np.ascontiguousarray(signal)), torch.from_numpy(labels.astype(np.float32))

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A batch in one call (the DataLoader uses it): the reader issues every read before awaiting the first."""
        got = self.reader.read_many([self._item(int(i)) for i in indices])
        return [self._sample(int(i), s, lab) for i, (s, lab) in zip(indices, got, strict=True)]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        return self._sample(int(i) % len(self), *self.read(int(i) % len(self)))

    def read_batch(self, indices: list[int], signal: torch.Tensor | None = None,
                   mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Items ``indices`` stacked, ``(signal [B, C, T], mask [B, T])`` float32, what the default collate makes of
        them; written into ``signal`` and ``mask`` when given (``WindowLoader``'s shared slots). Without transforms
        the reader decodes straight into the batch: no per-window array, no stacking copy."""
        indices = [int(i) for i in indices]
        for i in indices:
            if not 0 <= i < len(self):
                raise IndexError(i)
        items = [self._item(i) for i in indices]
        if signal is None:
            signal = torch.empty((len(indices), self.channels, self.window_samples), dtype=torch.float32)
            mask = torch.empty((len(indices), self.window_samples), dtype=torch.float32)
        if self.read_transform is None and self.transform is None:
            self.reader.read_into(items, signal.numpy(), mask.numpy())
            return signal, mask
        for row, (i, (s, lab)) in enumerate(zip(indices, self.reader.read_many(items), strict=True)):
            s, lab = self._sample(i, s, lab)
            if s.shape != signal.shape[1:]:
                raise ValueError(f"a transform turned window {int(self.ids[i])} into {tuple(s.shape)}; batches are "
                                 f"read into {tuple(signal.shape[1:])} (keep the window's shape, or use __getitem__)")
            signal[row], mask[row] = s, lab
        return signal, mask

    def loader(self, batch_size: int, **kwargs):
        """A ``torch.utils.data.DataLoader`` of batches of this dataset whose workers read each batch straight into
        shared memory allocated once per iterator (``eegcache.torch_loader.WindowLoader``; keyword arguments as
        DataLoader's, ``sampler``, ``shuffle``, ``drop_last``, ``num_workers``, ``pin_memory``, ...)."""
        from eegcache.torch_loader import WindowLoader

        return WindowLoader(self, batch_size, **kwargs)


class BalancedSampler(Sampler[int]):
    """Indices into the selection, one balanced epoch at a time (call ``set_epoch`` before each epoch).

    ``ratios`` are windows per class relative to the partial-seizure count (default partial 1, full 0.3,
    background 2.5, each capped by what the class has); ``max_windows`` caps an epoch. ``num_replicas``/``rank``
    shard each epoch like ``DistributedSampler`` (``pad``: repeat the first windows to equalise ranks)."""

    def __init__(self, selection: WindowSelection, ratios: Ratios | None = None, seed: int = 0, *,
                 num_replicas: int | None = None, rank: int | None = None, max_windows: int | None = None,
                 pad: bool = True) -> None:
        if num_replicas is None or rank is None:
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                num_replicas = torch.distributed.get_world_size() if num_replicas is None else num_replicas
                rank = torch.distributed.get_rank() if rank is None else rank
        self.num_replicas, self.rank = int(num_replicas or 1), int(rank or 0)
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"rank must lie in [0, num_replicas), got rank {self.rank}, num_replicas {self.num_replicas}")
        self.ratios = ratios or Ratios()
        self.seed, self.max_windows, self.pad = int(seed), max_windows, pad
        self.pools = {name: selection.positions(CODES[name]) for name in CLASSES}
        self.available = {name: int(p.size) for name, p in self.pools.items()}
        self.targets = target_counts(self.available, self.ratios)
        if self.available["partial"] == 0:
            raise SelectionError(f"no partial_seizure windows in {selection!r}: the ratios are relative to the partial "
                                 "count, so nothing would be drawn")
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def draw(self, epoch: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(indices, class codes) of one epoch's share for this rank."""
        positions, codes, _ = draw_epoch(self.pools, self.targets, self.seed, self.epoch if epoch is None else epoch,
                                         self.max_windows, self.rank, self.num_replicas, pad=self.pad)
        return positions, codes

    def __iter__(self) -> Iterator[int]:
        return iter(self.draw()[0].tolist())

    def __len__(self) -> int:
        total = sum(self.targets.values())
        total = total if self.max_windows is None else min(total, self.max_windows)
        return -(-total // self.num_replicas) if self.pad else total // self.num_replicas
