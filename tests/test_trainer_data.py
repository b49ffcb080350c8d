"""The window dataset: shapes, and signal and labels equal to the stored slices, in the main process and in
DataLoader workers."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from trainer_fixtures import real_cache

from trainer.data import Augment, WindowDataset, seed_worker


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    folder = tmp_path_factory.mktemp("real")
    recs, ws = real_cache(folder)
    conn = sqlite3.connect(folder / "index.sqlite")
    rows = conn.execute("SELECT w.id, r.name, w.start_sample, w.label FROM windows w JOIN recordings r "
                        "ON r.id = w.recording_id WHERE w.window_set_id = ? ORDER BY w.id", (ws,)).fetchall()
    conn.close()
    return folder, {r.name: r for r in recs}, rows


def _truth(recs, rows, window=1024):
    out = {}
    for wid, name, start, _label in rows:
        rec = recs[name]
        out[wid] = (rec.signal[:, start:start + window], rec.mask[start:start + window])
    return out


def test_items_are_the_stored_slices(cache):
    folder, recs, rows = cache
    truth = _truth(recs, rows)
    ids = [r[0] for r in rows][::-1]  # any order: items follow the given ids
    ds = WindowDataset(folder, ids)
    assert len(ds) == len(ids) and ds.window_samples == 1024
    for i, wid in enumerate(ids):
        signal, mask = ds[i]
        assert signal.dtype == torch.float32 and mask.dtype == torch.float32
        assert signal.shape == (19, 1024) and mask.shape == (1024,)
        assert np.array_equal(signal.numpy(), truth[wid][0])
        assert np.array_equal(mask.numpy(), truth[wid][1].astype(np.float32))


def test_labels_agree_with_the_window_label(cache):
    folder, _recs, rows = cache
    ds = WindowDataset(folder, [r[0] for r in rows])
    labels = {0: 0, 1: 0, 2: 0}
    for i, (_wid, _name, _start, label) in enumerate(rows):
        seizure = int(ds[i][1].sum())
        assert label == (0 if seizure == 0 else 2 if seizure == 1024 else 1)
        labels[label] += 1
    assert labels[0] and labels[1]  # the fixture has both kinds


def test_dataloader_workers_read_the_same(cache):
    folder, recs, rows = cache
    truth = _truth(recs, rows)
    ids = [r[0] for r in rows]
    ds = WindowDataset(folder, ids)
    ds[0]  # the parent opened a store first: workers must not reuse its handles
    generator = torch.Generator().manual_seed(0)
    loader = DataLoader(ds, batch_size=4, num_workers=2, generator=generator, worker_init_fn=seed_worker)
    signals, masks = zip(*loader, strict=True)
    signal, mask = torch.cat(signals), torch.cat(masks)
    assert signal.shape == (len(ids), 19, 1024)
    for i, wid in enumerate(ids):
        assert np.array_equal(signal[i].numpy(), truth[wid][0])
        assert np.array_equal(mask[i].numpy(), truth[wid][1])


def test_float16_objects_come_out_as_float32(tmp_path):
    recs, ws = real_cache(tmp_path, lengths=(3000, 3000), dtype="float16")
    ds = WindowDataset(tmp_path, [1, 2])
    signal, _ = ds[0]
    assert signal.dtype == torch.float32
    assert np.array_equal(signal.numpy(), recs[0].signal[:, :1024].astype(np.float32))


def test_augmentation_is_off_by_default_and_seeded_per_window(cache):
    folder, _recs, rows = cache
    ids = [r[0] for r in rows[:6]]
    plain = WindowDataset(folder, ids)
    aug = WindowDataset(folder, ids, augment=Augment(seed=1, channel_dropout=0.3), epoch=2)
    again = WindowDataset(folder, ids[::-1], augment=Augment(seed=1, channel_dropout=0.3), epoch=2)
    for i in range(len(ids)):
        raw, mask = plain[i]
        a, a_mask = aug[i]
        assert torch.equal(mask, a_mask)  # labels never change
        assert not torch.equal(raw, a)
        assert torch.equal(a, again[len(ids) - 1 - i][0])  # same window, same epoch: same augmentation
    aug.set_epoch(3)
    assert not torch.equal(aug[0][0], again[len(ids) - 1][0])


def test_unknown_ids_are_refused(cache):
    folder, _recs, _rows = cache
    with pytest.raises(KeyError, match="not in the index"):
        WindowDataset(folder, [1, 10**9])
