"""``WindowDataset.loader``: the batches torch's DataLoader with its default collate yields, in the same order, with 0
or 2 workers (fork and spawn), with a sampler, shuffling, ``drop_last`` and transforms; batches kept by the consumer
are never overwritten by later ones (the shared slots are reused only once copied out); a worker with no free slot
sends its batch the default way; a damaged chunk in a worker fails the iteration naming the file."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np
import pytest
import torch
from edf_factory import Rec, write_tree
from torch.utils.data import DataLoader

import eegcache
import eegcache.torch_loader
from eegcache.torch import BalancedSampler, WindowDataset

RECS = (
    Rec("train", "aaaaaatl", 1, 2003, "01_tcp_ar", 0, fs=256, duration_s=420, events=((30.0, 100.0),), seed=201),
    Rec("train", "aaaaaatm", 1, 2004, "02_tcp_le", 0, fs=250, duration_s=300, events=((0.0, 90.0),), seed=202),
)  # fmt: skip


@pytest.fixture(scope="module")
def selection(tmp_path_factory):
    base = tmp_path_factory.mktemp("loader")
    write_tree(base / "tusz", RECS)
    with eegcache.open(base / "cache") as cache:
        summary = cache.ingest(base / "tusz", stride_s=10)
        assert (summary.ingested, summary.failed) == (len(RECS), 0)
        return cache.windows(stride_s=10)


def _default(ds, batch_size: int, **kwargs) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(DataLoader(ds, batch_size=batch_size, **kwargs))


def _same_batches(got, want) -> None:
    assert len(got) == len(want)
    for (gs, gm), (ws, wm) in zip(got, want, strict=True):
        assert gs.dtype == ws.dtype == torch.float32 and gm.dtype == wm.dtype == torch.float32
        assert torch.equal(gs, ws) and torch.equal(gm, wm)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_batches_equal_the_default_collate_and_kept_batches_stay_intact(selection, method: str) -> None:
    """Two workers, a balanced sampler, a last batch shorter than the others; the consumer keeps every batch (the
    pattern a ring of reused buffers would corrupt) and they still equal the default DataLoader's, which needs more
    batches than the workers have slots."""
    ds = WindowDataset(selection)
    sampler = BalancedSampler(selection, seed=3)
    context = multiprocessing.get_context(method)
    batches = -(-len(sampler) // 3)
    assert batches > 2 * 3, "fewer batches than slots: reuse would not be exercised"
    got = list(ds.loader(3, sampler=sampler, num_workers=2, multiprocessing_context=context))
    _same_batches(got, _default(ds, 3, sampler=sampler))
    assert [s.shape[0] for s, _ in got] == [min(3, len(sampler) - 3 * b) for b in range(batches)]


def test_without_workers_shuffle_and_drop_last(selection) -> None:
    ds = WindowDataset(selection)
    _same_batches(list(ds.loader(4)), _default(ds, 4))
    got = list(ds.loader(4, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(9)))
    _same_batches(got, _default(ds, 4, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(9)))
    assert all(s.shape[0] == 4 for s, _ in got) and len(got) == len(ds) // 4


def test_persistent_workers_serve_every_epoch(selection) -> None:
    ds = WindowDataset(selection)
    sampler = BalancedSampler(selection, seed=5)
    loader = ds.loader(4, sampler=sampler, num_workers=2, persistent_workers=True)
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        _same_batches(list(loader), _default(ds, 4, sampler=sampler))


def test_transforms_run_per_window_as_with_the_default_collate(selection) -> None:
    def flip(signal: np.ndarray, epoch: int, window_id: int) -> np.ndarray:
        return -signal * (1 + epoch) + window_id

    ds = WindowDataset(selection, transform=flip)
    ds.set_epoch(2)
    _same_batches(list(ds.loader(5, num_workers=2)), _default(ds, 5))

    shorter = WindowDataset(selection, transform=lambda signal, epoch, window_id: signal[:, :100])
    with pytest.raises(ValueError, match="keep the window's shape"):
        next(iter(shorter.loader(2)))


def test_a_worker_without_a_free_slot_sends_the_batch_the_default_way(selection, monkeypatch) -> None:
    """Forked workers inherit the patch: every slot is always taken, so every batch takes the fallback."""
    monkeypatch.setattr(eegcache.torch_loader.BatchSlots, "claim", lambda self, worker: None)
    ds = WindowDataset(selection)
    got = list(ds.loader(4, num_workers=2, multiprocessing_context=multiprocessing.get_context("fork")))
    _same_batches(got, _default(ds, 4))


def test_loader_refuses_what_it_cannot_honour(selection) -> None:
    ds = WindowDataset(selection)
    with pytest.raises(TypeError, match="collate_fn"):
        ds.loader(4, collate_fn=lambda batch: batch)
    with pytest.raises(ValueError, match="not both"):
        ds.loader(4, sampler=[0, 1], shuffle=True)
    with pytest.raises(ValueError, match="at least 1"):
        ds.loader(0)


def test_a_damaged_chunk_fails_the_iteration_naming_the_file(selection, tmp_path: Path) -> None:
    import shutil

    from eegcache.store import LocalObjectStore

    cache = tmp_path / "cache"
    source_root = Path(selection.store_location[0])
    shutil.copytree(source_root, cache)
    with eegcache.open(cache) as copy:
        sel = copy.windows(stride_s=10)
    ds = WindowDataset(sel)
    key = ds.keys[int(ds._key_of[0])]
    shard = LocalObjectStore(cache).path(key) / "signal" / "c.0.0"
    data = bytearray(shard.read_bytes())
    data[100] ^= 0x01
    shard.write_bytes(bytes(data))
    with pytest.raises(Exception, match=r"CRC32C") as failure:
        list(ds.loader(4, num_workers=2))
    assert str(shard) in str(failure.value)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs CUDA")
def test_pinned_batches_are_copied_out_once_into_page_locked_memory(selection) -> None:
    ds = WindowDataset(selection)
    got = list(ds.loader(4, num_workers=2, pin_memory=True))
    assert all(s.is_pinned() and m.is_pinned() for s, m in got)
    _same_batches(got, _default(ds, 4))
