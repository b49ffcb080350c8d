"""``python -m bench.profile [--out DIR] [--hours H]``: the profiles behind the missed targets.

- ingest: cProfile of one 1-worker ``eegcache.ops.ingest.ingest`` of the bench corpus into a fresh cache; the time
  inside each stage (cumulative, main thread: with 1 worker ``prepare`` runs there, and the zarr I/O thread's work
  is inside ``ObjectStore.write``) next to the floor's two stages, and the top functions by own time.
- reads: one random window read split into its parts: the whole read through each window reader, the Zarr slices
  of signal and labels, the same chunks decoded by hand (shard index, chunk reads, CRC32C, Blosc), and a plain
  in-memory copy of a window (what mmap npy pays);
- codecs: the same signal re-encoded with other codecs (size, decode time);
- layouts: the cache's objects rewritten under other layouts (inner chunk, shard, codecs), each read at the same
  random windows through tensorstore and zarr-python, with its size per EEG-hour: what chose ``eegcache.store.layout``.
- ``--preprocess``: only the EDF read and each stage of ``preprocess`` under each ``compute`` (float64, float32-fft),
  CPU ms per EEG-hour on the corpus, rounds interleaved.
- ``--per-file N``: only the per-file overhead: the wall-clock milliseconds per file of each stage of a 1-worker
  ingest of the tree of N files of 30 s (``bench.per_file``; stage timers, not cProfile, whose cost per Python
  call would inflate the SQL and zarr layers), beside the floor on the same files, and cProfile's top functions.
Run it after ``python -m bench`` with the same ``--out``/``--hours`` (it reuses the corpus and the read cache)."""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import json
import pstats
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.corpus import SEED, make_corpus
from bench.report import secs
from bench.timing import summary
from eegcache.index.db import INDEX_FILE
from eegcache.pipeline.spec import IngestConfig, PreprocessSpec
from eegcache.store import LocalObjectStore

# (label, module file suffix, function name): the stages of eegcache.ops.prepare.prepare and
# eegcache.ops.register.register, in order.
STAGES = (
    ("open index + plan (alembic check, SQL)", "eegcache/index/db.py", "open_index"),
    ("sha256 of the EDF (content key)", "eegcache/pipeline/keys.py", "file_digest"),
    ("read EDF (pyedflib / MNE)", "eegcache/sources/edf.py", "read_recording"),
    ("preprocess (resample, filters, z-score)", "eegcache/pipeline/preprocess.py", "preprocess"),
    ("parse annotation", "eegcache/sources/annotations.py", "parse_annotation"),
    ("label mask", "eegcache/pipeline/labels.py", "label_mask"),
    ("store.write: zarr encode + write + fsync + rename", "eegcache/store/base.py", "write"),
    ("  of which fsync of every file", "eegcache/store/layout.py", "fsync_tree"),
    ("store.checksums: re-read + sha256 every file", "eegcache/store/local.py", "checksums"),
    ("window rows (numpy)", "eegcache/ops/prepare.py", "_windows_for"),
    ("register: one SQL transaction per recording", "eegcache/ops/register.py", "register"),
)


def _stage_times(stats: pstats.Stats) -> dict[str, float]:
    raw = stats.stats  # type: ignore[attr-defined]
    out = {}
    for label, suffix, name in STAGES:
        out[label] = sum(v[3] for (file, _line, func), v in raw.items() if func == name and file.endswith(suffix))
    return out


def _top(stats: pstats.Stats, n: int = 15) -> list[dict[str, Any]]:
    raw = stats.stats  # type: ignore[attr-defined]
    rows = sorted(raw.items(), key=lambda kv: kv[1][2], reverse=True)[:n]
    return [{"function": f"{Path(file).name}:{line}({func})", "calls": v[1], "tottime": v[2], "cumtime": v[3]}
            for (file, line, func), v in rows]


def profile_ingest(src: Path, cache: Path) -> dict[str, Any]:
    """cProfile one fresh 1-worker ingest, and time the floor (read + preprocess) on the same files for scale."""
    from bench.contenders import floor
    from eegcache.ops.ingest import ingest

    shutil.rmtree(cache, ignore_errors=True)
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    ingest(src, cache, IngestConfig(workers=1), progress=False)
    prof.disable()
    total = time.perf_counter() - t0
    stats = pstats.Stats(prof)
    floor_run = floor(str(src), 1)
    return {"ingest_seconds": total, "floor_seconds": floor_run["seconds"], "stages": _stage_times(stats),
            "top_tottime": _top(stats)}


# (label, module, attribute): what a 1-worker ingest of many short files spends per file, in the order it happens.
# Each is patched where the run looks it up: plan and register in eegcache.ops.ingest, their caller.
PER_FILE_STAGES = (
    ("claims and plans: the run's, then a claim + re-plan per batch", "eegcache.index.claims", "Claims.try_claim_many"),
    ("", "eegcache.ops.ingest", "plan"),
    ("private copy of the EDF, sha256 while copying", "eegcache.ops.prepare", "_private_copy"),
    ("read EDF (pyedflib / MNE)", "eegcache.ops.prepare", "read_recording"),
    ("preprocess (resample, filters, z-score)", "eegcache.pipeline.preprocess", "preprocess"),
    ("zarr write of the object (layout.write_group)", "eegcache.store.base", "write_group"),
    ("flush of its files and folders (a batch's together: syncfs, or an fsync of each)", "eegcache.store.base",
     "make_durable"),
    ("publish: rename, then fsync of the objects/<k[:2]> folders (a batch's together)", "eegcache.store.local",
     "LocalObjectStore._publish"),
    ("", "eegcache.store.local", "LocalObjectStore._settle"),
    ("signal pointer", "eegcache.store.local", "LocalObjectStore.note_signal"),
    ("checksums: read back + sha256 every file", "eegcache.store.local", "LocalObjectStore.checksums"),
    ("register: one transaction per batch of recordings (one per recording after an error)", "eegcache.ops.ingest",
     "register_many"),
    ("", "eegcache.ops.ingest", "register"),
)


def _timed(acc: dict[str, float], label: str, fn, context: bool = False):
    import contextlib
    import functools

    if context:
        @contextlib.contextmanager
        def cm(*a, **k):
            t = time.perf_counter()
            with fn(*a, **k) as value:
                acc[label] += time.perf_counter() - t
                yield value
                t = time.perf_counter()
            acc[label] += time.perf_counter() - t
        return cm

    @functools.wraps(fn)
    def wrapper(*a, **k):
        t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            acc[label] += time.perf_counter() - t
    return wrapper


def profile_per_file(src: Path, cache: Path) -> dict[str, Any]:
    """Milliseconds per file of each stage of a fresh 1-worker ingest of the short-file tree (wall clock, stage
    timers patched in), the floor per file on the same files, then cProfile's top functions of a second ingest."""
    import importlib

    from bench.contenders import floor
    from bench.per_file import STRIDE_S, WINDOW_S
    from eegcache.ops.ingest import ingest

    config = IngestConfig(workers=1, window_s=WINDOW_S, stride_s=STRIDE_S)
    acc: dict[str, float] = {}
    patched = []
    label = ""
    for name, module, attr in PER_FILE_STAGES:
        label = name or label
        acc.setdefault(label, 0.0)
        owner = importlib.import_module(module)
        *path, leaf = attr.split(".")
        for part in path:
            owner = getattr(owner, part)
        original = getattr(owner, leaf)
        patched.append((owner, leaf, original))
        setattr(owner, leaf, _timed(acc, label, original, context=leaf == "_private_copy"))
    try:
        shutil.rmtree(cache, ignore_errors=True)
        t0 = time.perf_counter()
        summary = ingest(src, cache, config, progress=False)
        total = time.perf_counter() - t0
    finally:
        for owner, leaf, original in reversed(patched):
            setattr(owner, leaf, original)
    files = summary.ingested + summary.reused + summary.failed + summary.skipped
    stages = {k: v / files * 1e3 for k, v in acc.items()}
    stages["everything else (plan of the run, index and zarr set-up, windows, Python)"] = \
        total / files * 1e3 - sum(stages.values())
    floor_run = floor(str(src), 1)
    shutil.rmtree(cache, ignore_errors=True)
    prof = cProfile.Profile()
    prof.enable()
    ingest(src, cache, config, progress=False)
    prof.disable()
    shutil.rmtree(cache, ignore_errors=True)
    return {"files": files, "ingest_ms_per_file": total / files * 1e3,
            "floor_ms_per_file": floor_run["seconds"] / floor_run["files"] * 1e3, "stages_ms_per_file": stages,
            "top_tottime": _top(pstats.Stats(prof), 20)}


def per_file_markdown(pf: dict[str, Any]) -> str:
    lines = [f"Per-file overhead, 1 worker, {pf['files']} files of 30 s: ingest {pf['ingest_ms_per_file']:.1f} ms per "
             f"file, the floor {pf['floor_ms_per_file']:.1f} ms on the same files.", "",
             "| stage (wall clock) | ms per file |", "|---|---|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in pf["stages_ms_per_file"].items()]
    lines += ["", "| top functions by own time (cProfile) | calls | tottime s | cumtime s |", "|---|---|---|---|"]
    lines += [f"| `{r['function']}` | {r['calls']} | {r['tottime']:.2f} | {r['cumtime']:.2f} |" for r in pf["top_tottime"]]
    return "\n".join(lines)


# (label, attribute of eegcache.pipeline.preprocess): the stages of preprocess, timed by wrappers (CPU time).
PREPROCESS_STAGES = (
    ("resample (resample_poly; float32-fft: and its offset's taper)", "resample"),
    ("filters: float64 sosfiltfilt + filtfilt (float32-fft: the ends only)", "_filters64"),
    ("filters: float32-fft in all (FFT convolution + float64 ends)", "_filters_fft"),
    ("z-score", "_zscore"),
)


def profile_preprocess(src: Path, rounds: int = 3) -> dict[str, Any]:
    """CPU milliseconds per EEG-hour of the EDF read and of each stage of ``preprocess`` under each ``compute``, on
    every EDF of ``src`` (the default spec, zero-filled missing electrodes), rounds interleaved (per file: read, then
    float64, then float32-fft), medians over rounds (the first round pays the imports: MNE's for the start-date
    files)."""
    import statistics

    from eegcache.pipeline import preprocess as pp
    from eegcache.pipeline.spec import COMPUTES
    from eegcache.sources.edf import EdfError, read_recording
    from eegcache.sources.tree import discover

    spec = PreprocessSpec(missing_electrodes="zero")
    edfs = discover(src)
    per_round: list[dict[str, float]] = []
    hours = 0.0
    originals = {attr: getattr(pp, attr) for _label, attr in PREPROCESS_STAGES}
    acc: dict[str, float] = {}

    def timed(label: str, fn):
        def wrapper(*a, **k):
            t0 = time.process_time()
            try:
                return fn(*a, **k)
            finally:
                acc[label] = acc.get(label, 0.0) + time.process_time() - t0
        return wrapper

    try:
        for r in range(rounds):
            acc.clear()
            for edf in edfs:
                t0 = time.process_time()
                try:
                    raw = read_recording(edf, spec.channels, spec.missing_electrodes)
                except EdfError:
                    continue
                acc["read EDF (read_recording)"] = acc.get("read EDF (read_recording)", 0.0) + time.process_time() - t0
                if r == 0:
                    hours += raw.data.shape[1] / raw.fs / 3600
                for compute in COMPUTES[::-1]:  # float64 first
                    for label, attr in PREPROCESS_STAGES:
                        setattr(pp, attr, timed(f"{compute}: {label}", originals[attr]))
                    t0 = time.process_time()
                    pp.preprocess(raw.data, raw.fs, dataclasses.replace(spec, compute=compute))
                    acc[f"{compute}: preprocess in all"] = acc.get(f"{compute}: preprocess in all", 0.0) + \
                        time.process_time() - t0
                    for _label, attr in PREPROCESS_STAGES:
                        setattr(pp, attr, originals[attr])
            per_round.append(dict(acc))
    finally:
        for attr, fn in originals.items():
            setattr(pp, attr, fn)
    labels = sorted({k for d in per_round for k in d}, key=lambda k: (k.split(":")[0] != "read EDF (read_recording)",
                                                                       k.split(":")[0], "in all" in k, k))
    ms = {k: statistics.median(d.get(k, 0.0) for d in per_round) / hours * 1e3 for k in labels}
    return {"eeg_hours": hours, "files": len(edfs), "rounds": rounds, "ms_per_eeg_hour": ms}


def preprocess_markdown(pr: dict[str, Any]) -> str:
    lines = [f"EDF read and preprocessing stages, CPU ms per EEG-hour ({pr['files']} files, {pr['eeg_hours']:.2f} "
             f"EEG-hours, median of {pr['rounds']} interleaved rounds):", "", "| stage | ms per EEG-hour |", "|---|---|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in pr["ms_per_eeg_hour"].items()]
    return "\n".join(lines)


def _windows(cache: Path) -> tuple[int, list[tuple[str, int]]]:
    """The window length and every (object key, start sample) of the densest window set."""
    with sqlite3.connect(cache / INDEX_FILE) as con:
        ws_id, window = con.execute("SELECT id, window_samples FROM window_sets ORDER BY stride_s LIMIT 1").fetchone()
        rows = con.execute("SELECT r.object_key, w.start_sample FROM windows w JOIN recordings r "
                           "ON r.id = w.recording_id WHERE w.window_set_id = ?", (ws_id,)).fetchall()
    return window, rows


def _chunk_spans(array_folder: Path, start: int, stop: int) -> tuple[list[tuple[Path, int | None]], int]:
    """The files holding samples [start, stop) of an array, each with the inner chunk's position in its shard, and
    the size of a shard's index, from the array's metadata: sharded (today's layout; an index of (offset, length)
    per inner chunk + a CRC32C at the end of each shard) or one file per chunk (before 2026-12-02: no index)."""
    meta = json.loads((array_folder / "zarr.json").read_text())
    outer = meta["chunk_grid"]["configuration"]["chunk_shape"][-1]
    prefix = f"{array_folder}/c/" + ("0/" if len(meta["shape"]) == 2 else "")
    if meta["codecs"][0]["name"] != "sharding_indexed":
        return [(Path(f"{prefix}{c}"), None) for c in range(start // outer, (stop - 1) // outer + 1)], 0
    inner = meta["codecs"][0]["configuration"]["chunk_shape"][-1]
    per_shard = outer // inner
    spans = [(Path(f"{prefix}{c // per_shard}"), c % per_shard) for c in range(start // inner, (stop - 1) // inner + 1)]
    return spans, 16 * per_shard + 4


def profile_reads(cache: Path, n: int = 200, seed: int = 0) -> dict[str, Any]:
    """Mean milliseconds of each part of one random 60 s window read from the eegcache store: the whole read
    through each available window reader, then the zarr-python slices, and the same signal chunks by hand."""
    import google_crc32c
    from numcodecs import Blosc

    from eegcache.store.reader import available_backends

    window, rows = _windows(cache)
    store = LocalObjectStore(cache)
    picks = [rows[i] for i in np.random.default_rng(seed).integers(0, len(rows), n)]
    parts: dict[str, float] = {}
    for backend in available_backends():
        reader = store.reader(backend)
        for key, start in picks[:10]:  # warm: handles open, library initialised
            reader.read(key, start, start + window)
        t = time.perf_counter()
        for key, start in picks:
            reader.read(key, start, start + window)
        parts[f"whole read through eegcache.store.reader ({backend})"] = time.perf_counter() - t
    arrays = {}
    for key, _ in picks:
        if key not in arrays:
            g = store.open(key)
            arrays[key] = (g["signal"], g["labels"])
    blosc = Blosc()
    by_hand = ("shard index read + CRC32C (sharded layout)", "signal chunk reads (file, or byte range of a shard)",
               "CRC32C check of the chunks (google-crc32c, as zarr-python)", "Blosc decode of the chunks")
    parts.update({"zarr signal slice": 0.0, "zarr labels slice": 0.0, **dict.fromkeys(by_hand, 0.0),
                  "copy of one window in memory (the mmap npy cost)": 0.0})
    chunks_touched, decoded = 0, 0
    for key, start in picks:
        sig, lab = arrays[key]
        t = time.perf_counter()
        x = sig[:, start : start + window]
        parts["zarr signal slice"] += time.perf_counter() - t
        t = time.perf_counter()
        lab[start : start + window]
        parts["zarr labels slice"] += time.perf_counter() - t
        indexes: dict[Path, np.ndarray] = {}
        spans, index_bytes = _chunk_spans(store.path(key) / "signal", start, min(start + window, sig.shape[1]))
        for path, inner in spans:
            t = time.perf_counter()
            with open(path, "rb") as f:
                if inner is None:
                    blob = f.read()
                else:
                    if path not in indexes:  # what a reader without a cache does once per shard and read
                        f.seek(-index_bytes, 2)
                        raw = f.read(index_bytes)
                        google_crc32c.value(raw[:-4])
                        indexes[path] = np.frombuffer(raw[:-4], "<u8").reshape(-1, 2)
                        parts[by_hand[0]] += time.perf_counter() - t
                        t = time.perf_counter()
                    offset, nbytes = indexes[path][inner].tolist()
                    f.seek(offset)
                    blob = f.read(nbytes)
            parts[by_hand[1]] += time.perf_counter() - t
            t = time.perf_counter()
            google_crc32c.value(blob[:-4])
            parts[by_hand[2]] += time.perf_counter() - t
            t = time.perf_counter()
            decoded += len(blosc.decode(blob[:-4]))
            parts[by_hand[3]] += time.perf_counter() - t
            chunks_touched += 1
        t = time.perf_counter()
        np.array(x)
        parts["copy of one window in memory (the mmap npy cost)"] += time.perf_counter() - t
    return {"reads": n, "signal_chunks_per_read": chunks_touched / n,
            "decoded_bytes_per_read": decoded / n, "window_bytes": 19 * window * 4,
            "ms_per_read": {k: v / n * 1e3 for k, v in parts.items()}}


def _signals(cache: Path, n_objects: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    store = LocalObjectStore(cache)
    keys = sorted(p.name for p in (cache / "objects").glob("*/*"))[:n_objects]
    return [(k, np.asarray(store.open(k)["signal"][...]), np.asarray(store.open(k)["labels"][...])) for k in keys]


def codec_alternatives(cache: Path, n_objects: int = 6, step: int = 7) -> dict[str, Any]:
    """Size, decode and encode time of inner chunks (SIGNAL_CHUNK samples × all channels) of the stored signal
    under other codecs (numcodecs, one thread): what each codec buys on this signal."""
    from numcodecs import Blosc, Zstd, blosc

    from eegcache.store.layout import SIGNAL_CHUNK

    blosc.set_nthreads(1)
    raws = [np.ascontiguousarray(sig[:, i : i + SIGNAL_CHUNK]) for _k, sig, _l in _signals(cache, n_objects)
            for i in range(0, sig.shape[1] - SIGNAL_CHUNK, step * SIGNAL_CHUNK)]
    codecs = {
        "blosc lz4hc level 1 + byte shuffle (eegcache today)": Blosc(cname="lz4hc", clevel=1, shuffle=Blosc.SHUFFLE),
        "blosc lz4 5 + bit shuffle (eegcache before 2026-12-02)": Blosc(cname="lz4", clevel=5, shuffle=Blosc.BITSHUFFLE),
        "blosc lz4 5 + byte shuffle": Blosc(cname="lz4", clevel=5, shuffle=Blosc.SHUFFLE),
        "blosc lz4 5, no shuffle": Blosc(cname="lz4", clevel=5, shuffle=Blosc.NOSHUFFLE),
        "blosc lz4hc level 5 + byte shuffle": Blosc(cname="lz4hc", clevel=5, shuffle=Blosc.SHUFFLE),
        "blosc zstd 1 + byte shuffle": Blosc(cname="zstd", clevel=1, shuffle=Blosc.SHUFFLE),
        "zstd level 1": Zstd(level=1),
        "zstd level 3 (eegcache before the Blosc change)": Zstd(level=3),
        "none (raw float32)": None,
    }
    raw_bytes = sum(r.nbytes for r in raws)
    out = {}
    for name, codec in codecs.items():
        if codec is None:
            t = time.process_time()
            for raw in raws:
                np.array(raw)
            out[name] = {"ratio": 1.0, "decode_ms_per_window": (time.process_time() - t) / raw_bytes * 19 * 15360 * 4e3,
                         "encode_s_per_eeg_hour": 0.0}
            continue
        t = time.process_time()
        blobs = [codec.encode(raw) for raw in raws]
        encode = time.process_time() - t
        t = time.process_time()
        for blob in blobs:
            codec.decode(blob)
        decode = time.process_time() - t
        out[name] = {"ratio": sum(map(len, blobs)) / raw_bytes,
                     "decode_ms_per_window": decode / raw_bytes * 19 * 15360 * 4e3,  # CPU ms per 60 s at 256 Hz
                     "encode_s_per_eeg_hour": encode / raw_bytes * 19 * 256 * 3600 * 4}
    return out


# The layouts layout_alternatives compares: (inner chunk samples, shard samples or None for no sharding (one file per
# chunk) or 0 for one shard per array, signal compressor, label inner chunk, label shard). Labels keep today's
# settings except in the layout before 2026-12-02.
LAYOUTS = {
    "today: 2,048 in one shard, lz4hc-1 byte shuffle": (2048, 0, "lz4hc1-byte", 16384, 0),
    "before: 16,384 chunks, no shards, lz4 bit shuffle": (16384, None, "lz4-bit", 65536, None),
    "2,048 in 16,384-sample shards, lz4 bit shuffle": (2048, 16384, "lz4-bit", 16384, 0),
    "2,048 in one shard, lz4 bit shuffle": (2048, 0, "lz4-bit", 16384, 0),
    "2,048 in one shard, lz4 byte shuffle": (2048, 0, "lz4-byte", 16384, 0),
    "2,048 in one shard, zstd-1": (2048, 0, "zstd1", 16384, 0),
    "2,048 in 16,384-sample shards, lz4hc-1 byte shuffle": (2048, 16384, "lz4hc1-byte", 16384, 0),
    "1,024 in one shard, lz4hc-1 byte shuffle": (1024, 0, "lz4hc1-byte", 16384, 0),
    "4,096 in one shard, lz4hc-1 byte shuffle": (4096, 0, "lz4hc1-byte", 16384, 0),
    "2,048 in one shard, uncompressed": (2048, 0, "none", 16384, 0),
    "2,048 in one shard, uncompressed, no CRC32C (not an option: for the CRC's cost)": (2048, 0, "no-crc", 16384, 0),
}


def _compressors(name: str) -> list:
    from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

    chosen = {"lz4hc1-byte": [BloscCodec(cname="lz4hc", clevel=1, shuffle="shuffle")],
              "lz4-bit": [BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")],
              "lz4-byte": [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")],
              "zstd1": [ZstdCodec(level=1)], "none": [], "no-crc": []}[name]
    return chosen if name == "no-crc" else [*chosen, Crc32cCodec()]


def _write_variant(folder: Path, signal: np.ndarray, labels: np.ndarray, spec: tuple) -> None:
    import zarr
    from zarr.storage import LocalStore

    chunk, shard, codec, label_chunk, label_shard = spec

    def shards(n: int, inner: int, setting: int | None) -> tuple[int, ...] | None:
        return None if setting is None else (setting or -(-n // inner) * inner,)

    group = zarr.open_group(LocalStore(folder), mode="w", zarr_format=3)
    sig_shard = shards(signal.shape[1], chunk, shard)
    group.create_array("signal", shape=signal.shape, dtype=signal.dtype, chunks=(signal.shape[0], chunk),
                       shards=None if sig_shard is None else (signal.shape[0], *sig_shard),
                       compressors=_compressors(codec))[...] = signal
    group.create_array("labels", shape=labels.shape, dtype=labels.dtype, chunks=(label_chunk,),
                       shards=shards(labels.shape[0], label_chunk, label_shard),
                       compressors=_compressors("lz4-bit"))[...] = labels


def layout_alternatives(cache: Path, work: Path, n: int = 400, rounds: int = 5, seed: int = 1) -> dict[str, Any]:
    """The cache's objects rewritten under each of LAYOUTS (same values; a scratch store per layout under
    ``work``), then random 60 s windows read through tensorstore (wall and process CPU time: the CPU time is
    steadier on a loaded machine) and zarr-python, rounds interleaved over the layouts; sizes per EEG-hour."""
    from eegcache.store.reader import available_backends

    window, rows = _windows(cache)
    signals = _signals(cache, 10_000)
    hours = sum(sig.shape[1] for _k, sig, _l in signals) / PreprocessSpec().fs / 3600
    roots = {}
    for i, (name, spec) in enumerate(LAYOUTS.items()):
        root = roots[name] = work / f"layout-{i}"
        shutil.rmtree(root, ignore_errors=True)
        for key, sig, lab in signals:
            _write_variant(LocalObjectStore(root).path(key), sig, lab, spec)
    del signals
    backends = [b for b in ("tensorstore", "zarr") if b in available_backends()]
    rates: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for r in range(rounds):
        for name in (list(roots) if r % 2 == 0 else list(roots)[::-1]):
            for backend in backends:
                reader = LocalObjectStore(roots[name]).reader(backend)
                count = n if backend == "tensorstore" else n // 4
                picks = [rows[i] for i in np.random.default_rng([seed, r]).integers(0, len(rows), count)]
                for key, start in picks[:10]:
                    reader.read(key, start, start + window)
                t, c = time.perf_counter(), time.process_time()
                for key, start in picks:
                    reader.read(key, start, start + window)
                rates.setdefault((name, backend), []).append(
                    (count / (time.perf_counter() - t), count / (time.process_time() - c)))
    out = {}
    for name, root in roots.items():
        files = [p for p in (root / "objects").rglob("*") if p.is_file()]
        entry: dict[str, Any] = {"mb_per_eeg_hour": sum(p.stat().st_size for p in files) / 1e6 / hours,
                                 "files_per_object": len(files) / max(1, len(list((root / "objects").glob("*/*"))))}
        for backend in backends:
            got = rates[(name, backend)]
            entry[backend] = {"wall": summary([g[0] for g in got]), "cpu": summary([g[1] for g in got])}
        out[name] = entry
        shutil.rmtree(root, ignore_errors=True)
    return out


def explain_counts(index: Path, repeats: int = 3) -> dict[str, Any]:
    """Query plans and timings of the class-count queries and of variants that show where the view's time goes."""
    from bench.index_scale import TABLE_COUNTS, VIEW_COUNTS

    variants = {
        "view (public API)": (VIEW_COUNTS, ()),
        "table, one window set (covering index)": (TABLE_COUNTS, (1,)),
        "table, all window sets": ("SELECT label, count(*) FROM windows GROUP BY label", ()),
        "table joined to recordings (what the view adds)":
            ("SELECT w.label, count(*) FROM windows w JOIN recordings r ON r.id = w.recording_id GROUP BY w.label", ()),
    }
    out = {}
    con = sqlite3.connect(f"file:{index}?mode=ro", uri=True)
    for name, (sql, params) in variants.items():
        plan = [row[-1] for row in con.execute("EXPLAIN QUERY PLAN " + sql, params)]
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            con.execute(sql, params).fetchall()
            times.append(time.perf_counter() - t)
        out[name] = {"sql": sql, "plan": plan, "seconds": sorted(times)[len(times) // 2]}
    out["windows"] = con.execute("SELECT count(*) FROM windows").fetchone()[0]
    con.close()
    return out


def markdown(result: dict[str, Any]) -> str:
    ing = result["ingest"]
    lines = [f"Ingest, 1 worker: {secs(ing['ingest_seconds'])} under cProfile; the floor (read + preprocess only) "
             f"{secs(ing['floor_seconds'])} without it.", "", "| stage (cumulative, main thread) | seconds | share |",
             "|---|---|---|"]
    lines += [f"| {k} | {v:.2f} | {v / ing['ingest_seconds']:.0%} |" for k, v in ing["stages"].items()]
    lines += ["", "| top functions by own time | calls | tottime s | cumtime s |", "|---|---|---|---|"]
    lines += [f"| `{r['function']}` | {r['calls']} | {r['tottime']:.2f} | {r['cumtime']:.2f} |" for r in ing["top_tottime"]]
    rd = result["reads"]
    lines += ["", f"One random window read ({rd['reads']} reads, {rd['signal_chunks_per_read']:.2f} signal chunks each, "
              f"{rd['decoded_bytes_per_read'] / rd['window_bytes']:.2f}× the window's bytes decoded):",
              "", "| part | ms per read |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in rd["ms_per_read"].items()]
    if "codecs" in result:
        lines += ["", "Inner chunks of the stored signal under other codecs (numcodecs, one thread, CPU time):", "",
                  "| codec | size vs raw float32 | decode ms per 60 s window of bytes | encode s per EEG-hour |",
                  "|---|---|---|---|"]
        lines += [f"| {k} | {v['ratio']:.3f} | {v['decode_ms_per_window']:.3f} | {v['encode_s_per_eeg_hour']:.3f} |"
                  for k, v in result["codecs"].items()]
    if "layouts" in result:
        lay = result["layouts"]
        base = lay[next(iter(lay))]
        lines += ["", "The cache's objects rewritten under other layouts, random 60 s window reads (signal + labels), "
                  "medians of interleaved rounds (× = vs the first row):", "",
                  "| layout | MB per EEG-hour | files per object | tensorstore reads/s | tensorstore reads per CPU-s "
                  "| zarr-python reads/s |", "|---|---|---|---|---|---|"]
        for name, v in lay.items():
            def cell(backend: str, clock: str, v=v) -> str:
                if backend not in v:
                    return "—"
                got, ref = v[backend][clock], base[backend][clock]
                return f"{got['median']:,.0f} ({got['min']:,.0f}–{got['max']:,.0f}) {got['median'] / ref['median']:.2f}×"
            lines.append(f"| {name} | {v['mb_per_eeg_hour']:.1f} | {v['files_per_object']:.1f} | "
                         f"{cell('tensorstore', 'wall')} | {cell('tensorstore', 'cpu')} | {cell('zarr', 'wall')} |")
    if "counts" in result:
        c = result["counts"]
        lines += ["", f"Class-count queries on the synthetic index of {c['windows']:,} windows (median of 3, open connection):",
                  "", "| query | seconds | plan |", "|---|---|---|"]
        lines += [f"| {k} | {v['seconds']:.3f} | {'; '.join(v['plan'])} |" for k, v in c.items() if k != "windows"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    p.add_argument("--out", type=Path, default=Path("bench/out"))
    p.add_argument("--hours", type=float, default=2.0, help="corpus to profile ingest on (default: the quick one)")
    p.add_argument("--per-file", type=int, metavar="N", help="profile only the per-file overhead, on N files of 30 s")
    p.add_argument("--preprocess", action="store_true", help="profile only the EDF read and the preprocessing stages "
                   "(each compute), on the corpus of --hours")
    a = p.parse_args(argv)
    out = a.out.resolve()
    if a.preprocess:
        pr = profile_preprocess(make_corpus(out, a.hours, SEED).root)
        (out / "profile-preprocess.json").write_text(json.dumps(pr, indent=1))
        print(preprocess_markdown(pr))
        return
    if a.per_file:
        from bench.per_file import corpus as short_corpus

        tree = short_corpus(out, a.per_file)
        pf = profile_per_file(tree.root, out / "work" / "profile-per-file-cache")
        (out / "profile-per-file.json").write_text(json.dumps(pf, indent=1))
        print(per_file_markdown(pf))
        return
    corpus = make_corpus(out, a.hours, SEED)
    result = {"ingest": profile_ingest(corpus.root, out / "work" / "profile-cache"),
              "reads": profile_reads(out / "work" / "eegcache-s10"),
              "codecs": codec_alternatives(out / "work" / "eegcache-s10"),
              "layouts": layout_alternatives(out / "work" / "eegcache-s10", out / "work")}
    indexes = sorted(out.glob("index-*/" + INDEX_FILE), key=lambda p: int(p.parent.name.split("-")[1]))
    if indexes:
        result["counts"] = explain_counts(indexes[-1])
    (out / "profile.json").write_text(json.dumps(result, indent=1))
    print(markdown(result))


if __name__ == "__main__":
    main()
