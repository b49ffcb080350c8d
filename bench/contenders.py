"""The contenders' build steps: eegcache ingest, the per-recording npz / mmap-npy window caches, and the floor.

These functions run inside ``bench.child`` (a fresh interpreter per run) so that each run's peak memory can be
read; each returns plain JSON-able figures and times only its own work."""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from bench.corpus import WINDOW_S, read_and_preprocess, signal_and_mask
from eegcache.index.db import open_index
from eegcache.ops.ingest import ingest
from eegcache.pipeline.spec import IngestConfig, PreprocessSpec
from eegcache.pipeline.windows import LABELS, label_codes, seconds_to_samples, window_starts
from eegcache.sources.tree import discover

MANIFEST = "manifest.json"


def dir_size(root: Path) -> int:
    """Apparent size in bytes of every file under ``root`` (what ``du --apparent-size -b`` says)."""
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except FileNotFoundError:
                pass
    return total


def _map(fn, items: list, workers: int) -> list:
    """``fn`` over ``items`` in this process or in ``workers`` spawned processes (spawn, like eegcache)."""
    if workers <= 1:
        return [fn(item) for item in items]
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        return list(pool.map(fn, items, chunksize=1))


# --- the floor ----------------------------------------------------------------------------------------------------


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _floor_one(edf: Path, spec: PreprocessSpec) -> dict[str, float]:
    signal = read_and_preprocess(edf, spec)
    return {"hours": 0.0 if signal is None else signal.shape[1] / spec.fs / 3600, "rss_mb": _peak_rss_mb()}


def floor(src: str, workers: int) -> dict[str, Any]:
    """Read every EDF and preprocess it, storing nothing: the limit any cache build can approach."""
    spec = PreprocessSpec()
    edfs = discover(Path(src))
    t0 = time.perf_counter()
    done = _map(partial(_floor_one, spec=spec), edfs, workers)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "eeg_hours": sum(d["hours"] for d in done), "processed": sum(d["hours"] > 0 for d in done),
            "files": len(edfs), "worker_peak_rss_mb": max(d["rss_mb"] for d in done) if workers > 1 else None}


# --- eegcache -----------------------------------------------------------------------------------------------------


def eegcache_ingest(src: str, cache: str, workers: int, window_s: float, stride_s: float) -> dict[str, Any]:
    """The library twin of ``eegcache ingest SRC --cache CACHE --workers N --window W --stride S``."""
    config = IngestConfig(spec=PreprocessSpec(), window_s=window_s, stride_s=stride_s, workers=workers)
    t0 = time.perf_counter()
    result = ingest(Path(src), Path(cache), config, progress=False)
    seconds = time.perf_counter() - t0
    engine = open_index(Path(cache))
    with engine.connect() as conn:
        hours = conn.exec_driver_sql(
            "SELECT coalesce(sum(duration_s), 0) / 3600.0 FROM recordings WHERE status = 'ingested'").scalar_one()
    engine.dispose()
    out = result.to_dict()
    out.pop("failures", None)
    return {**out, "seconds": seconds, "eeg_hours": hours}


def eegcache_cli_noop(src: str, cache: str, window_s: float, stride_s: float) -> float:
    """Wall seconds of ``eegcache ingest SRC --cache CACHE`` in a fresh interpreter on a tree it has ingested
    already: what a user waits for when there is nothing to do (imports included). It must read no EDF (its exit
    status is 1 where files failed before: the synthetic corpus has some)."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "eegcache", "ingest", src, "--cache", cache, "--window", f"{window_s:g}",
               "--stride", f"{stride_s:g}"]
    t0 = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    if "ingested 0," not in done.stdout or "EDF files read: 0 " not in done.stdout:
        raise RuntimeError(f"eegcache ingest of an unchanged tree did work or failed: {done.stdout[-500:]}"
                           f"{done.stderr[-500:]}")
    return seconds


# --- per-recording window caches (what the field uses today) ---------------------------------------------------


def window_file(out: Path, src: Path, edf: Path, kind: str) -> Path:
    """Where a recording's windows live: the EDF's path under ``src``, moved under ``out``."""
    stem = out / edf.relative_to(src).with_suffix("")
    return stem.with_suffix(".npz") if kind == "npz" else stem.with_name(stem.name + ".signal.npy")


def _materialise_one(edf: Path, src: Path, out: Path, kind: str, window: int, stride: int) -> dict[str, float]:
    spec = PreprocessSpec()
    loaded = signal_and_mask(edf, spec)
    if loaded is None:
        return {"hours": 0.0, "windows": 0, "rss_mb": _peak_rss_mb()}
    signal, mask = loaded
    starts = window_starts(signal.shape[1], window, stride)
    hours = signal.shape[1] / spec.fs / 3600
    if not starts.size:
        return {"hours": hours, "windows": 0, "rss_mb": _peak_rss_mb()}
    windows = np.ascontiguousarray(sliding_window_view(signal, window, axis=1)[:, starts].transpose(1, 0, 2))
    labels = np.ascontiguousarray(sliding_window_view(mask, window)[starts])
    dest = window_file(out, src, edf, kind)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if kind == "npz":
        np.savez_compressed(dest, signal=windows, labels=labels)
    else:
        np.save(dest, windows)
        np.save(labels_file(dest), labels)
    return {"hours": hours, "windows": int(starts.size), "rss_mb": _peak_rss_mb()}


def labels_file(signal_npy: Path) -> Path:
    return signal_npy.with_name(signal_npy.name.replace(".signal.npy", ".labels.npy"))


def build_window_cache(src: str, out: str, kind: str, stride_s: float, workers: int) -> dict[str, Any]:
    """Materialise every recording's overlapping windows (signal + per-sample labels) into one file per recording
    (``np.savez_compressed``, or uncompressed ``.npy`` for the mmap variant), then build the manifest by scanning."""
    fs = PreprocessSpec().fs
    window, stride = seconds_to_samples(WINDOW_S, fs), seconds_to_samples(stride_s, fs)
    src_p, out_p = Path(src), Path(out)
    edfs = discover(src_p)
    t0 = time.perf_counter()
    done = _map(partial(_materialise_one, src=src_p, out=out_p, kind=kind, window=window, stride=stride), edfs, workers)
    build_s = time.perf_counter() - t0
    manifest = build_manifest(out_p, kind, window)
    return {
        "seconds": build_s + manifest["seconds"], "build_seconds": build_s, "manifest_seconds": manifest["seconds"],
        "eeg_hours": sum(d["hours"] for d in done), "windows": sum(d["windows"] for d in done),
        "counts": manifest["counts"], "bytes": dir_size(out_p),
        "worker_peak_rss_mb": max((d["rss_mb"] for d in done), default=0.0) if workers > 1 else None,
    }



def build_manifest(root: Path, kind: str, window: int) -> dict[str, Any]:
    """Scan the cache folder, classify every window from its stored labels, write ``manifest.json``."""
    t0 = time.perf_counter()
    files: list[str] = []
    refs: dict[str, list[list[int]]] = {label: [] for label in LABELS}
    pattern = "*.npz" if kind == "npz" else "*.labels.npy"
    for path in sorted(Path(root).rglob(pattern)):
        if kind == "npz":
            with np.load(path) as z:
                labels = z["labels"]
        else:
            labels = np.load(path, mmap_mode="r")
        codes = label_codes(np.count_nonzero(labels, axis=1), window)
        fid = len(files)
        files.append(path.relative_to(root).as_posix())
        for i, code in enumerate(codes.tolist()):
            refs[LABELS[code]].append([fid, i])
    (Path(root) / MANIFEST).write_text(json.dumps({"window": window, "files": files, "windows": refs}))
    return {"seconds": time.perf_counter() - t0, "counts": {k: len(v) for k, v in refs.items()}}


def load_manifest_counts(path: Path) -> dict[str, int]:
    """The npz user's "class counts": load manifest.json and count the references per class."""
    with open(path) as f:
        data = json.load(f)
    return {label: len(refs) for label, refs in data["windows"].items()}
