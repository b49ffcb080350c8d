"""Class counts and epoch draws at scale: a synthetic index of N windows in a real eegcache index.

The index is created by ``eegcache.index.db.open_index`` (so it has the migrations' tables, indexes and views)
and filled with ``executemany`` on a plain sqlite3 connection: ~330 windows of 60 s at 10 s stride per
recording, labels drawn with the corpus's class proportions. It is built once per (N, proportions) and reused."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.timing import repeat, summary
from eegcache.index.db import INDEX_FILE, open_index
from eegcache.pipeline.windows import LABELS

WINDOWS_PER_RECORDING = 330
WINDOW, STRIDE = 15360, 2560  # 60 s windows, 10 s stride at 256 Hz
VIEW_COUNTS = "SELECT label, count(*) FROM window_labels GROUP BY label"
TABLE_COUNTS = "SELECT label, count(*) FROM windows WHERE window_set_id = ? GROUP BY label"


def build_index(root: Path, n_windows: int, proportions: tuple[float, float, float], seed: int = 0) -> dict[str, Any]:
    """Create (or reuse) ``root/index.sqlite`` holding ``n_windows`` windows; returns its description."""
    root = Path(root)
    meta_path = root / "synthetic.json"
    wanted = {"n_windows": n_windows, "proportions": [round(p, 4) for p in proportions], "seed": seed}
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if {k: meta.get(k) for k in wanted} == wanted:
            return {**meta, "reused": True}
    for p in root.glob(INDEX_FILE + "*"):
        p.unlink()
    meta_path.unlink(missing_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    open_index(root).dispose()
    rng = np.random.default_rng(seed)
    n_rec = max(1, round(n_windows / WINDOWS_PER_RECORDING))
    weights = rng.uniform(0.3, 1.7, n_rec)
    per = np.floor(weights / weights.sum() * n_windows).astype(np.int64)
    per[: n_windows - int(per.sum())] += 1
    probs = np.asarray(wanted["proportions"], float)
    probs /= probs.sum()
    con = sqlite3.connect(root / INDEX_FILE, isolation_level=None)
    con.execute("PRAGMA synchronous = OFF")
    con.execute("BEGIN")
    now = "2026-11-28 00:00:00.000000"
    con.execute("INSERT INTO datasets (id, name, layout, root, updated_at) VALUES (1, 'synthetic', 'folder', '/', ?)",
                (now,))
    con.execute("INSERT INTO pipelines (id, name, spec_json, spec_digest, created_at) "
                "VALUES (1, 'default', '{}', 'synthetic', ?)", (now,))
    con.execute("INSERT INTO window_sets (id, pipeline_id, window_s, stride_s, fs, window_samples, stride_samples) "
                "VALUES (1, 1, 60.0, 10.0, 256.0, ?, ?)", (WINDOW, STRIDE))
    con.executemany(
        "INSERT INTO objects (key, label_key, spec_digest, spec_json, n_channels, n_samples, fs, dtype, nbytes, digest,"
        " created_at) VALUES (?, '', 'synthetic', '{}', 19, ?, 256.0, 'float32', 0, '', ?)",
        ((f"{i:064x}", int((k - 1) * STRIDE + WINDOW), now) for i, k in enumerate(per.tolist())),
    )
    splits = rng.choice(["train", "dev", "eval"], n_rec, p=[0.6, 0.25, 0.15]).tolist()
    con.executemany(
        "INSERT INTO recordings (id, dataset_id, pipeline_id, rel_path, name, subject, session, split, montage, token,"
        " status, object_key, spec_digest, duration_s, updated_at) VALUES (?, 1, 1, ?, ?, ?, 's001_2003', ?,"
        " '01_tcp_ar', 't000', 'ingested', ?, 'synthetic', ?, ?)",
        ((i + 1, f"synthetic/{i:08d}.edf", f"{i:08d}", f"s{i // 4:07d}", splits[i], f"{i:064x}",
          ((k - 1) * STRIDE + WINDOW) / 256.0, now) for i, k in enumerate(per.tolist())),
    )
    sql = ("INSERT INTO windows (recording_id, window_set_id, start_sample, seizure_samples, label) "
           "VALUES (?, 1, ?, ?, ?)")
    chunk = max(1, 1_000_000 // WINDOWS_PER_RECORDING)
    for lo in range(0, n_rec, chunk):
        counts = per[lo : lo + chunk]
        rec = np.repeat(np.arange(lo + 1, lo + 1 + counts.size), counts)
        offsets = np.arange(rec.size) - np.repeat(np.cumsum(counts) - counts, counts)
        labels = rng.choice(3, rec.size, p=probs)
        seizure = np.where(labels == 0, 0, np.where(labels == 2, WINDOW, rng.integers(1, WINDOW, rec.size)))
        con.executemany(sql, zip(rec.tolist(), (offsets * STRIDE).tolist(), seizure.tolist(), labels.tolist(),
                                 strict=True))
    con.execute("COMMIT")
    con.close()
    meta = {**wanted, "recordings": n_rec, "build_seconds": time.perf_counter() - t0,
            "bytes": sum(p.stat().st_size for p in root.glob(INDEX_FILE + "*"))}
    meta_path.write_text(json.dumps(meta))
    return {**meta, "reused": False}


def _connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def time_counts(index: Path, window_set_id: int, repeats: int) -> dict[str, Any]:
    """Connect read-only and run each class-count query; time per run includes the connection."""
    out: dict[str, Any] = {}
    for name, sql, params in (("view", VIEW_COUNTS, ()), ("table", TABLE_COUNTS, (window_set_id,))):
        seconds, counts = [], {}
        for _ in range(repeats):
            t0 = time.perf_counter()
            con = _connect(index)
            rows = con.execute(sql, params).fetchall()
            seconds.append(time.perf_counter() - t0)
            con.close()
            found = {(r[0] if isinstance(r[0], str) else LABELS[r[0]]): r[1] for r in rows}
            counts = {label: found.get(label, 0) for label in LABELS}
        out[name] = {**summary(seconds), "counts": counts, "sql": sql}
    return out


def write_manifest(path: Path, index: Path) -> dict[str, Any]:
    """The npz user's manifest for the same windows: ``{"files": [...], "windows": {label: [[file, row], ...]}}``."""
    if path.is_file():
        return {"bytes": path.stat().st_size, "reused": True}
    con = _connect(index)
    n_rec = con.execute("SELECT max(id) FROM recordings").fetchone()[0]
    rows = np.array(con.execute("SELECT recording_id, start_sample, label FROM windows ORDER BY id").fetchall(),
                    dtype=np.int64)
    con.close()
    parts = []
    for code, label in enumerate(LABELS):
        sel = rows[rows[:, 2] == code]
        refs = ",".join(f"[{r},{s}]" for r, s in zip((sel[:, 0] - 1).tolist(), (sel[:, 1] // STRIDE).tolist(),
                                                       strict=True))
        parts.append(f'"{label}":[{refs}]')
    files = json.dumps([f"synthetic/{i:08d}.npz" for i in range(n_rec)])
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f'{{"window":{WINDOW},"files":{files},"windows":{{{",".join(parts)}}}}}')
    tmp.rename(path)
    return {"bytes": path.stat().st_size, "reused": False}


def epoch_draw(cache: Path, repeats: int) -> dict[str, Any]:
    """The trainer's balanced epoch (``trainer.sampling.EpochSampler``, train split, 60 s / 10 s windows): time
    from nothing to the first epoch (per-class id queries + draw), and a later epoch's draw alone."""
    try:
        from trainer.sampling import EpochSampler, Selection
    except ImportError:
        return {"status": "pending trainer"}
    selection = Selection(window_s=60.0, stride_s=10.0, split="train")
    try:
        cold, made = repeat(lambda: (lambda s: (s, s.draw(0)))(EpochSampler(cache, selection, seed=0)), repeats)
        sampler, first = made[-1]
        warm, _ = repeat(lambda: sampler.draw(1), repeats)
    except Exception as exc:  # noqa: BLE001 - the trainer is young; report, do not abort the bench
        return {"status": f"trainer.sampling failed: {type(exc).__name__}: {exc}"}
    return {"status": "trainer.sampling.EpochSampler", "seconds": cold["median"], "first_epoch": cold,
            "draw_only": warm, "epoch_windows": int(first.ids.shape[0]), "available": first.to_dict()["available"]}
