"""The public Python API: ``eegcache.open``, selections, ``eegcache.torch``. Every figure is checked against the
CLI's own SQL over the public views (or a plain sqlite3 connection), never against the library itself."""

from __future__ import annotations

import multiprocessing
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from edf_factory import Rec, query, write_tree
from hypothesis import given, settings
from hypothesis import strategies as st

import eegcache
from eegcache.sampling import CLASSES, CODES, Ratios, target_counts
from eegcache.torch import BalancedSampler, WindowDataset
from trainer.sampling import EpochSampler, Selection

RECS = (
    Rec("train", "aaaaaapa", 1, 2003, "01_tcp_ar", 0, fs=250, duration_s=600, events=((30.0, 100.0), (400.0, 420.0)),
        seed=101),
    Rec("train", "aaaaaapa", 2, 2004, "02_tcp_le", 0, fs=256, duration_s=480, events=((0.0, 200.0),), seed=102),
    Rec("train", "aaaaaapb", 1, 2005, "01_tcp_ar", 1, fs=400, duration_s=300, seed=103),
    Rec("dev", "aaaaaapc", 1, 2006, "01_tcp_ar", 0, fs=256, duration_s=300, events=((100.0, 130.0),), seed=104),
)  # fmt: skip


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("api")
    root = base / "tusz"
    write_tree(root, RECS)
    with eegcache.open(base / "cache") as cache:
        summary = cache.ingest(root, stride_s=10)
        assert (summary.ingested, summary.failed) == (len(RECS), 0)
    return base / "cache"


def sql_ids(cache: Path, where: str = "1=1", params=()) -> list[tuple[int, str]]:
    return query(cache, f"SELECT window_id, label FROM window_labels WHERE stride_s = 10 AND {where} "
                        "ORDER BY window_id", params)


def test_selection_matches_the_views(demo: Path) -> None:
    with eegcache.open(demo) as cache:
        sel = cache.windows(split="train", stride_s=10)
        rows = sql_ids(demo, "split = 'train'")
        assert sel.ids.dtype == np.int64 and sel.ids.tolist() == [r[0] for r in rows]
        assert len(sel) == len(rows)
        assert sel.counts() == {label: sum(1 for r in rows if r[1] == label)
                                for label in ("no_seizure", "partial_seizure", "full_seizure")}
        frame = sel.to_pandas()
        assert frame["window_id"].tolist() == sel.ids.tolist()
        full = query(demo, "SELECT * FROM window_labels WHERE stride_s = 10 AND split = 'train' ORDER BY window_id")
        assert [tuple(r) for r in frame.itertuples(index=False)] == full
        every = cache.windows(stride_s=10)
        assert every.ids.tolist() == [r[0] for r in sql_ids(demo)]


def test_where_params_and_dataset(demo: Path) -> None:
    with eegcache.open(demo) as cache:
        sel = cache.windows(stride_s=10, where="montage = :m AND start_s >= :t", params={"m": "01_tcp_ar", "t": 60})
        assert sel.ids.tolist() == [r[0] for r in sql_ids(demo, "montage = ? AND start_s >= 60", ("01_tcp_ar",))]
        assert len(cache.windows(stride_s=10, dataset="tusz")) == len(sql_ids(demo))
        with pytest.raises(eegcache.EegcacheError, match="no dataset named 'nope' in .*; datasets: tusz"):
            cache.windows(stride_s=10, dataset="nope")
        with pytest.raises(eegcache.EegcacheError, match="may only read window_labels"):
            cache.windows(stride_s=10, where="1=1); DELETE FROM windows; --")
        with pytest.raises(eegcache.EegcacheError, match="no window set of 30 s windows at 5 s stride"):
            cache.windows(window_s=30, stride_s=5)
    assert query(demo, "SELECT count(*) FROM windows")[0][0] > 0


def test_one_method_per_command(demo: Path, tmp_path: Path) -> None:
    with eegcache.open(demo) as cache:
        stats = cache.stats()
        assert stats["pipeline"] == "default" and stats["recordings"]["ingested"] == len(RECS)
        assert cache.sql("SELECT count(*) AS n FROM recording_status").rows == [(len(RECS),)]
        assert cache.verify().ok
        assert cache.gc(dry_run=True).objects == []
        assert cache.remove(missing=True, dry_run=True).recordings == []
        sent = cache.push(str(tmp_path / "copy"))
        assert sent.recordings == len(RECS) and not sent.failed
    with eegcache.open(tmp_path / "copy") as copy:
        assert copy.windows(stride_s=10).ids.size == len(sql_ids(demo))


def _truth(cache: Path, window_id: int) -> tuple[np.ndarray, np.ndarray]:
    conn = sqlite3.connect(cache / "index.sqlite")
    key, start, n = conn.execute("SELECT r.object_key, w.start_sample, ws.window_samples FROM windows w JOIN "
                                 "recordings r ON r.id = w.recording_id JOIN window_sets ws ON ws.id = w.window_set_id "
                                 "WHERE w.id = ?", (window_id,)).fetchone()
    conn.close()
    group = zarr.open_group(str(cache / "objects" / key[:2] / key), mode="r")
    return np.asarray(group["signal"][:, start:start + n]), np.asarray(group["labels"][start:start + n])


def test_dataset_items_are_the_stored_slices(demo: Path) -> None:
    with eegcache.open(demo) as cache:
        sel = cache.windows(split="train", stride_s=10)
    ds = WindowDataset(sel)
    assert len(ds) == len(sel)
    for i in (0, len(ds) // 2, len(ds) - 1):
        signal, mask = ds[i]
        want_signal, want_mask = _truth(demo, int(sel.ids[i]))
        assert signal.dtype == torch.float32 and mask.dtype == torch.float32
        assert np.array_equal(signal.numpy(), want_signal.astype(np.float32))
        assert np.array_equal(mask.numpy(), want_mask.astype(np.float32))


def test_channels_start_no_reading_library(demo: Path) -> None:
    """``ds.channels`` (what the trainer sizes its model by before it forks loader workers) comes from metadata: the
    process has started no tensorstore, so forked workers may still use it. A fresh interpreter, so that no other
    test's reads count."""
    code = (
        "import eegcache\n"
        "from eegcache.store import reader\n"
        "from eegcache.torch import WindowDataset\n"
        f"with eegcache.open({str(demo)!r}) as cache:\n"
        "    sel = cache.windows(split='train', stride_s=10)\n"
        "ds = WindowDataset(sel)\n"
        "channels = ds.channels\n"
        "assert not reader._started, reader._started\n"
        "assert channels == ds[0][0].shape[0] > 0, channels\n"
        "print('ok', channels)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.startswith("ok"), done.stderr[-2000:]


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_dataloader_with_two_workers(demo: Path, method: str) -> None:
    with eegcache.open(demo) as cache:
        sel = cache.windows(split="train", stride_s=10)
    ds = WindowDataset(sel)
    sampler = BalancedSampler(sel, seed=3)
    order = list(sampler)
    loader = torch.utils.data.DataLoader(ds, sampler=sampler, batch_size=4, num_workers=2,
                                         multiprocessing_context=multiprocessing.get_context(method))
    got = torch.cat([x for x, _ in loader])
    want = torch.stack([ds[i][0] for i in order])
    assert torch.equal(got, want)


def test_sampler_is_the_trainers_epoch_draw(demo: Path) -> None:
    """Same seed and epoch: BalancedSampler's indices name exactly the window ids trainer's EpochSampler draws."""
    with eegcache.open(demo) as cache:
        sel = cache.windows(split="train", stride_s=10)
    trainer = EpochSampler(demo, Selection(window_s=60, stride_s=10, split="train"), seed=7)
    sampler = BalancedSampler(sel, seed=7)
    for epoch in (0, 1, 5):
        sampler.set_epoch(epoch)
        assert sel.ids[list(sampler)].tolist() == trainer.draw(epoch).ids.tolist()
    counts = dict(zip(*np.unique(sel.codes[list(sampler)], return_counts=True), strict=True))
    available = {name: int(np.count_nonzero(sel.codes == CODES[name])) for name in CLASSES}
    assert {name: int(counts.get(CODES[name], 0)) for name in CLASSES} == target_counts(available, Ratios())


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), epoch=st.integers(0, 1000), world=st.integers(1, 5),
       ratios=st.tuples(st.floats(0, 2), st.floats(0, 3), st.floats(0, 4)))
def test_sampler_determinism_epochs_and_shards(demo_selection, seed, epoch, world, ratios) -> None:
    sel = demo_selection
    r = Ratios(*ratios)
    whole = BalancedSampler(sel, r, seed)
    whole.set_epoch(epoch)
    epoch_draw = list(whole)
    again = BalancedSampler(sel, r, seed)
    again.set_epoch(epoch)
    assert list(again) == epoch_draw  # a function of (seed, epoch)
    assert len(set(epoch_draw)) == len(epoch_draw)  # no repeats within an epoch
    shards = []
    for rank in range(world):
        s = BalancedSampler(sel, r, seed, num_replicas=world, rank=rank)
        s.set_epoch(epoch)
        shards.append(list(s))
        assert len(shards[-1]) == len(s)
    assert len({len(x) for x in shards}) == 1  # equal steps on every rank
    flat = [i for x in shards for i in x]
    assert set(flat) == set(epoch_draw)
    trimmed = [list(BalancedSampler(sel, r, seed, num_replicas=world, rank=k, pad=False).draw(epoch)[0])
               for k in range(world)]
    assert len({i for x in trimmed for i in x}) == sum(len(x) for x in trimmed)  # strictly disjoint without padding


@pytest.fixture(scope="module")
def demo_selection(demo: Path):
    with eegcache.open(demo) as cache:
        return cache.windows(split="train", stride_s=10)


def test_errors_share_one_base() -> None:
    from eegcache.index.db import IndexError_
    from eegcache.index.query import QueryError
    from eegcache.ops.transfer import TransferError
    from eegcache.pipeline.names import PipelineError
    from eegcache.sources.annotations import AnnotationError
    from eegcache.sources.edf import EdfError
    from trainer.sampling import SamplingError

    for cls in (AnnotationError, EdfError, IndexError_, PipelineError, QueryError, TransferError, SamplingError):
        assert issubclass(cls, eegcache.EegcacheError), cls
    with pytest.raises(eegcache.EegcacheError, match="is not an eegcache cache"):
        eegcache.open("/nonexistent/cache").windows()
