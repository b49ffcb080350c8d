"""A DataLoader whose workers hand batches over through shared memory allocated once, not once per batch.

torch's default collate stacks each batch a worker makes into a new shared-memory segment, which the main process
maps and frees again: every batch faults in fresh pages twice. Where page faults are dear (the VMs of
bench/RESULTS.md: ~1 ms per 60 s window of 19 channels, as much as decoding it) that is half a worker's time.
``WindowLoader`` gives each worker of each iterator a few batch slots in shared memory (``prefetch_factor + 1``, the
most batches a worker has in flight, plus the one it writes); a worker reads a batch straight into a free slot
(``WindowDataset.read_batch``) and sends only the slot's number; the main process copies the slot into ordinary
tensors as it receives the message (one memcpy, into memory the allocator reuses; page-locked memory where the
loader pins, so that pinning copies nothing more) and frees the slot. A worker
that finds no slot free sends its batch the default way, so a slow consumer never blocks it. Batches are exactly
what ``DataLoader(dataset, batch_size, collate_fn=default_collate)`` yields (tests/test_torch_loader.py).

The slots cost ``workers × (prefetch_factor + 1)`` batches of memory for as long as the iterator lives: as much as
the batches the default collate keeps in flight, plus one per worker.
"""

from __future__ import annotations

import uuid
import weakref
from typing import TYPE_CHECKING

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, Sampler, SequentialSampler, get_worker_info

if TYPE_CHECKING:
    from eegcache.torch import WindowDataset

_LIVE: weakref.WeakValueDictionary[str, BatchSlots] = weakref.WeakValueDictionary()  # in the main process


class BatchSlots:
    """``slots`` batch buffers per worker in shared memory, and a busy flag for each (set by the worker that fills
    the slot, cleared by the main process once it has copied the batch out)."""

    def __init__(self, workers: int, slots: int, batch_size: int, channels: int, samples: int,
                 pinned: bool = False) -> None:
        self.token = uuid.uuid4().hex
        self.pinned = pinned  # copy batches out into page-locked memory (the loader pins: one copy, not two)
        self.signal = torch.empty((workers, slots, batch_size, channels, samples), dtype=torch.float32).share_memory_()
        self.mask = torch.empty((workers, slots, batch_size, samples), dtype=torch.float32).share_memory_()
        self.busy = torch.zeros((workers, slots), dtype=torch.uint8).share_memory_()
        _LIVE[self.token] = self

    def claim(self, worker: int) -> int | None:
        """A free slot of ``worker``, now marked busy; None when all are in flight."""
        flags = self.busy[worker].numpy()
        for k in range(flags.size):
            if flags[k] == 0:
                flags[k] = 1
                return k
        return None


class _InSlot:
    """What a worker sends for a batch in a slot: the slot's address, rebuilt in the main process as the batch."""

    def __init__(self, token: str, worker: int, slot: int, rows: int) -> None:
        self.address = (token, worker, slot, rows)

    def __reduce__(self):
        return _take_slot, self.address


def _take_slot(token: str, worker: int, slot: int, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(signal, mask) copied out of a worker's slot, which is free again afterwards (runs in the main process)."""
    slots = _LIVE.get(token)
    if slots is None:
        raise RuntimeError("a DataLoader worker sent a batch for an iterator that no longer exists")
    try:
        return _copy(slots.signal[worker, slot, :rows], slots.pinned), _copy(slots.mask[worker, slot, :rows], slots.pinned)
    finally:
        slots.busy[worker, slot] = 0


def _copy(view: torch.Tensor, pinned: bool) -> torch.Tensor:
    """A copy of a slot's rows; page-locked where the loader pins, which then keeps it as it is."""
    if not pinned:
        return view.clone()
    return torch.empty(view.shape, dtype=view.dtype, pin_memory=True).copy_(view)


class _Batches(Dataset):
    """What the workers index: a list of the dataset's indices -> one batch, in a slot when there is one."""

    def __init__(self, dataset: WindowDataset, batch_size: int) -> None:
        self.dataset, self.batch_size = dataset, batch_size
        self.slots: BatchSlots | None = None  # set for each iterator that has workers, before they start

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, indices: list[int]):
        info = get_worker_info()
        slot = None
        if info is not None and self.slots is not None:  # the batch sampler never gives more than batch_size
            slot = self.slots.claim(info.id)
        if slot is None:
            return self.dataset.read_batch(indices)
        try:
            self.dataset.read_batch(indices, self.slots.signal[info.id, slot, :len(indices)],
                                    self.slots.mask[info.id, slot, :len(indices)])
        except BaseException:
            self.slots.busy[info.id, slot] = 0
            raise
        return _InSlot(self.slots.token, info.id, slot, len(indices))


class WindowLoader(DataLoader):
    """``DataLoader(dataset, batch_size, sampler=..., shuffle=..., drop_last=..., **kwargs)`` for a
    ``WindowDataset``, yielding the same ``(signal [B, C, T], mask [B, T])`` batches; with workers, batches travel
    through shared slots allocated once per iterator. ``collate_fn`` and ``batch_sampler`` are not taken: batches
    are made by the dataset."""

    def __init__(self, dataset: WindowDataset, batch_size: int, *, sampler: Sampler[int] | list[int] | None = None,
                 shuffle: bool = False, drop_last: bool = False, generator: torch.Generator | None = None,
                 **kwargs) -> None:
        for name in ("collate_fn", "batch_sampler"):
            if name in kwargs:
                raise TypeError(f"WindowLoader does not take {name}: the dataset makes its batches")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if sampler is not None and shuffle:
            raise ValueError("give a sampler or shuffle=True, not both")
        if sampler is None:
            sampler = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
        super().__init__(_Batches(dataset, batch_size), batch_size=None, generator=generator,
                         sampler=BatchSampler(sampler, batch_size, drop_last), **kwargs)

    def _get_iterator(self):
        if self.num_workers == 0:
            return super()._get_iterator()
        batches = self.dataset
        slots = BatchSlots(self.num_workers, (self.prefetch_factor or 2) + 1, batches.batch_size,
                           batches.dataset.channels, batches.dataset.window_samples,
                           pinned=bool(self.pin_memory) and torch.cuda.is_available())
        batches.slots = slots  # the workers take their copy of the dataset as they start
        try:
            iterator = super()._get_iterator()
        finally:
            batches.slots = None
        iterator._eegcache_slots = slots  # the slots live as long as the iterator
        return iterator
