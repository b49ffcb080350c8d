"""``python -m bench.profile [--out DIR] [--hours H]``: the profiles behind the missed targets.

- ingest: cProfile of one 1-worker ``eegcache.ops.ingest.ingest`` of the bench corpus into a fresh cache; the time
  inside each stage (cumulative, main thread: with 1 worker ``prepare`` runs there, and the zarr I/O thread's work
  is inside ``ObjectStore.write``) next to the floor's two stages, and the top functions by own time.
- reads: one random window read split into its parts: the Zarr slices of signal and labels, the same chunks
  decoded by hand (file read, CRC32C strip, zstd), and a plain in-memory copy of a window (what mmap npy pays).
Run it after ``python -m bench`` with the same ``--out``/``--hours`` (it reuses the corpus and the read cache).
- ``--per-file N``: only the per-file overhead: the wall-clock milliseconds per file of each stage of a 1-worker
  ingest of the tree of N files of 30 s (``bench.per_file``; stage timers, not cProfile, whose cost per Python
  call would inflate the SQL and zarr layers), beside the floor on the same files, and cProfile's top functions."""

from __future__ import annotations

import argparse
import cProfile
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
from eegcache.index.db import INDEX_FILE
from eegcache.pipeline.spec import IngestConfig
from eegcache.store import SIGNAL_CHUNK, LocalObjectStore

# (label, module file suffix, function name): the stages of eegcache.ops.ingest.prepare/register, in order.
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
    ("window rows (numpy)", "eegcache/ops/ingest.py", "_windows_for"),
    ("register: one SQL transaction per recording", "eegcache/ops/ingest.py", "register"),
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
PER_FILE_STAGES = (
    ("claims and plans: the run's, then a claim + re-plan per batch", "eegcache.index.claims", "Claims.try_claim_many"),
    ("", "eegcache.ops.ingest", "plan"),
    ("private copy of the EDF, sha256 while copying", "eegcache.ops.ingest", "_private_copy"),
    ("read EDF (pyedflib / MNE)", "eegcache.ops.ingest", "read_recording"),
    ("preprocess (resample, filters, z-score)", "eegcache.pipeline.preprocess", "preprocess"),
    ("zarr write of the object (layout.write_group)", "eegcache.store.base", "write_group"),
    ("fsync of its files and folders (together)", "eegcache.store.base", "fsync_all"),
    ("publish: rename + fsync of objects/<k[:2]>", "eegcache.store.local", "LocalObjectStore._publish"),
    ("signal pointer", "eegcache.store.local", "LocalObjectStore.note_signal"),
    ("checksums: read back + sha256 every file", "eegcache.store.local", "LocalObjectStore.checksums"),
    ("register: one transaction per recording", "eegcache.ops.ingest", "register"),
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


def profile_reads(cache: Path, n: int = 200, seed: int = 0) -> dict[str, Any]:
    """Mean milliseconds of each part of one random 60 s window read from the eegcache store: the whole read
    through each available window reader, then the zarr-python slices, and the same chunks decoded by hand."""
    from numcodecs import Blosc

    from eegcache.store.reader import available_backends

    with sqlite3.connect(cache / INDEX_FILE) as con:
        ws_id, window = con.execute("SELECT id, window_samples FROM window_sets ORDER BY stride_s LIMIT 1").fetchone()
        rows = con.execute("SELECT r.object_key, w.start_sample FROM windows w JOIN recordings r "
                           "ON r.id = w.recording_id WHERE w.window_set_id = ?", (ws_id,)).fetchall()
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
    parts.update({"zarr signal slice": 0.0, "zarr labels slice": 0.0, "chunk files read": 0.0,
                  "crc strip + blosc-lz4 decode": 0.0, "copy of one window in memory (the mmap npy cost)": 0.0})
    chunks_touched = 0
    for key, start in picks:
        sig, lab = arrays[key]
        t = time.perf_counter()
        x = sig[:, start : start + window]
        parts["zarr signal slice"] += time.perf_counter() - t
        t = time.perf_counter()
        lab[start : start + window]
        parts["zarr labels slice"] += time.perf_counter() - t
        for c in range(start // SIGNAL_CHUNK, (start + window - 1) // SIGNAL_CHUNK + 1):
            t = time.perf_counter()
            blob = (store.path(key) / "signal" / "c" / "0" / str(c)).read_bytes()
            parts["chunk files read"] += time.perf_counter() - t
            t = time.perf_counter()
            np.frombuffer(blosc.decode(blob[:-4]), dtype="<f4")
            parts["crc strip + blosc-lz4 decode"] += time.perf_counter() - t
            chunks_touched += 1
        t = time.perf_counter()
        np.array(x)
        parts["copy of one window in memory (the mmap npy cost)"] += time.perf_counter() - t
    return {"reads": n, "signal_chunks_per_read": chunks_touched / n,
            "ms_per_read": {k: v / n * 1e3 for k, v in parts.items()}}


def codec_alternatives(cache: Path, n_chunks: int = 24) -> dict[str, Any]:
    """Size and decode time of stored signal chunks re-encoded with other codecs: what compression buys here."""
    from numcodecs import Blosc, Zstd

    files = sorted(p for p in (cache / "objects").glob("*/*/signal/c/0/*"))[:n_chunks]
    raws = [np.frombuffer(Blosc().decode(f.read_bytes()[:-4]), dtype="<f4").reshape(19, -1) for f in files]
    codecs = {
        "blosc lz4 + bitshuffle (eegcache today)": Blosc(cname="lz4", clevel=5, shuffle=Blosc.BITSHUFFLE),
        "zstd level 3 (eegcache before)": Zstd(level=3),
        "none (raw float32)": None,
        "blosc lz4 + byte shuffle": Blosc(cname="lz4", clevel=5, shuffle=Blosc.SHUFFLE),
        "blosc zstd 1 + byte shuffle": Blosc(cname="zstd", clevel=1, shuffle=Blosc.SHUFFLE),
        "float16 + zstd 3 (spec dtype float16)": "f16",
    }
    out = {}
    for name, codec in codecs.items():
        size, seconds = 0, 0.0
        for raw in raws:
            if codec is None:
                size += raw.nbytes
                t = time.perf_counter()
                np.array(raw)
                seconds += time.perf_counter() - t
                continue
            data, c = (raw.astype(np.float16), Zstd(level=3)) if codec == "f16" else (raw, codec)
            blob = c.encode(np.ascontiguousarray(data))
            size += len(blob)
            t = time.perf_counter()
            c.decode(blob)
            seconds += time.perf_counter() - t
        out[name] = {"ratio": size / sum(r.nbytes for r in raws), "decode_ms": seconds / len(raws) * 1e3}
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
    lines += ["", f"One random window read ({rd['reads']} reads, {rd['signal_chunks_per_read']:.2f} signal chunks each):",
              "", "| part | ms per read |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in rd["ms_per_read"].items()]
    if "codecs" in result:
        lines += ["", "The same signal chunks under other codecs (numcodecs, decode of one 1.2 MB chunk):", "",
                  "| codec | size vs raw float32 | decode ms per chunk |", "|---|---|---|"]
        lines += [f"| {k} | {v['ratio']:.3f} | {v['decode_ms']:.3f} |" for k, v in result["codecs"].items()]
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
    a = p.parse_args(argv)
    out = a.out.resolve()
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
              "codecs": codec_alternatives(out / "work" / "eegcache-s10")}
    indexes = sorted(out.glob("index-*/" + INDEX_FILE), key=lambda p: int(p.parent.name.split("-")[1]))
    if indexes:
        result["counts"] = explain_counts(indexes[-1])
    (out / "profile.json").write_text(json.dumps(result, indent=1))
    print(markdown(result))


if __name__ == "__main__":
    main()
