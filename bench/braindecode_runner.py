"""braindecode as a contender, run by the interpreter of braindecode's own venv (``bench.braindecode`` makes it).

``python bench/braindecode_runner.py TASK JSON_ARGS`` prints one JSON line, like ``bench.child``. It imports only
the standard library, numpy, torch, MNE and braindecode (none of eegcache: that venv does not have it), so the
parent passes everything in: the EDFs eegcache ingested, each with its EDF labels of the spec's electrodes in the
spec's order, and the preprocessing settings.

- ``build``: what a braindecode user writes: MNE read of the picked electrodes (``RawDataset``), then
  ``preprocess`` with resample → band-pass → notch → z-score (the spec's values; band-pass as eegcache designs
  it, a zero-phase 4th-order Butterworth; resample and notch with MNE's defaults), recordings shorter than one
  window dropped (braindecode's windowing raises on them), ``create_fixed_length_windows`` (60 s / 10 s,
  ``drop_last_window``), ``save``. Timed as a whole; bytes of the saved folder.
- ``reads``: ``load_concat_dataset(preload=False)``, random single-window reads (a fresh dataset per run), then a
  ``DataLoader`` (spawned persistent workers, warmed with blank batches before the clock starts) batches/s.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import warnings

import numpy as np


def _dir_size(root: str) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def zscore(x: np.ndarray) -> np.ndarray:
    """Per channel over time; an all-zero channel stays zero (eegcache's rule)."""
    mean = x.mean(axis=-1, keepdims=True)
    std = x.std(axis=-1, keepdims=True)
    return np.where(std > 0, (x - mean) / np.where(std > 0, std, 1.0), 0.0)


def build(recordings: list[dict], out: str, fs: float, bandpass_hz: list[float] | None, notch_hz: list[float],
          window: int, stride: int, n_jobs: int) -> dict:
    import mne
    from braindecode.datasets import BaseConcatDataset, RawDataset
    from braindecode.preprocessing import Preprocessor, create_fixed_length_windows, preprocess

    mne.set_log_level("ERROR")
    warnings.simplefilter("ignore")
    t0 = time.perf_counter()
    datasets = []
    for rec in recordings:
        raw = mne.io.read_raw_edf(rec["path"], include=rec["labels"], preload=False, verbose="error")
        raw.reorder_channels(rec["labels"])
        raw.rename_channels(dict(zip(rec["labels"], rec["names"], strict=True)))
        datasets.append(RawDataset(raw, description={"path": rec["path"], "target": 0}))
    concat = BaseConcatDataset(datasets)
    steps = [Preprocessor("resample", sfreq=fs)]
    if bandpass_hz is not None:
        steps.append(Preprocessor("filter", l_freq=bandpass_hz[0] or None, h_freq=bandpass_hz[1], method="iir",
                                  iir_params={"order": 4, "ftype": "butter", "output": "sos"}))
    if notch_hz:
        steps.append(Preprocessor("notch_filter", freqs=list(notch_hz)))
    steps.append(Preprocessor(zscore, apply_on_array=True))
    preprocess(concat, steps, n_jobs=n_jobs)
    kept = [d for d in concat.datasets if d.raw.n_times >= window]
    concat = BaseConcatDataset(kept)
    windows = create_fixed_length_windows(concat, window_size_samples=window, window_stride_samples=stride,
                                          drop_last_window=True, preload=False)
    os.makedirs(out, exist_ok=True)
    windows.save(out, overwrite=True)
    seconds = time.perf_counter() - t0
    hours = sum(d.raw.n_times for d in kept) / fs / 3600
    return {"seconds": seconds, "windows": len(windows), "recordings": len(kept), "eeg_hours": hours,
            "bytes": _dir_size(out), "n_jobs": n_jobs}


class Blanks:
    """The loaded windows behind an index where -1 is a blank window (to warm the workers before timing)."""

    def __init__(self, ds, shape: tuple[int, int]) -> None:
        self.ds, self.shape = ds, shape

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        if i < 0:
            return np.zeros(self.shape, np.float32), 0
        x, y, _inds = self.ds[i]
        return x, y


class _Batches:
    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def reads(out: str, max_reads: int, budget_s: float, repeats: int, seed: int, workers: list[int], n_batches: dict,
          batch_size: int, loader_budget_s: float, first_run: int = 0, loader_repeats: int | None = None) -> dict:
    import torch
    from braindecode.datautil.serialization import load_concat_dataset
    from torch.utils.data import DataLoader

    warnings.simplefilter("ignore")
    rates, counts = [], []
    for run in range(first_run, first_run + repeats):
        t_load = time.perf_counter()
        ds = load_concat_dataset(out, preload=False)
        load_s = time.perf_counter() - t_load
        order = np.random.default_rng([seed, run]).integers(0, len(ds), max_reads)
        t0 = time.perf_counter()
        done = 0
        for i in order.tolist():
            ds[i]
            done += 1
            if done >= 2 and time.perf_counter() - t0 >= budget_s:
                break
        rates.append(done / (time.perf_counter() - t0))
        counts.append(done)
    x0 = np.asarray(ds[0][0])
    shape = tuple(int(n) for n in x0.shape)
    loader_out = {}
    for w in workers:
        sampler = _Batches()
        loader = DataLoader(Blanks(ds, shape), batch_sampler=sampler, num_workers=w, persistent_workers=w > 0,
                            multiprocessing_context="spawn" if w else None)
        n_warm = max(1, 2 * w)
        want = int(n_batches[str(w)])
        b_rates, b_counts = [], []
        for run in range(repeats if loader_repeats is None else loader_repeats):
            order = np.resize(np.random.default_rng([seed, run]).permutation(len(ds)), want * batch_size)
            sampler.batches = [[-1] * batch_size for _ in range(n_warm)]
            sampler.batches += [order[k : k + batch_size].tolist() for k in range(0, order.size, batch_size)]
            it = iter(loader)
            for _ in range(n_warm):
                next(it)
            t0 = time.perf_counter()
            done = 0
            for signal, _y in it:
                assert isinstance(signal, torch.Tensor) and signal.shape[0] == batch_size
                done += 1
                if done >= want or time.perf_counter() - t0 >= loader_budget_s:
                    break
            b_rates.append(done / (time.perf_counter() - t0))
            b_counts.append(done)
        del it, loader
        loader_out[str(w)] = {"rates": b_rates, "batches": b_counts}
    return {"random_reads": {"rates": rates, "reads": counts, "load_seconds": load_s}, "window_shape": list(shape),
            "window_dtype": str(x0.dtype), "windows": len(ds), "dataloader": loader_out}


TASKS = {"build": build, "reads": reads}


def main(argv: list[str]) -> None:
    task, args = argv[0], json.loads(argv[1])
    result = TASKS[task](**args)
    import braindecode

    result["version"] = braindecode.__version__
    result["rss_mb"] = {"process": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                        "workers": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
