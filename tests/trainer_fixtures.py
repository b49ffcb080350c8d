"""Builders for the trainer tests: indexes made through the real migrations, small caches with real Zarr objects,
and one synthetic TUSZ corpus per test session.

Hand-made indexes let the sampler tests choose exact class counts; the synthetic corpus exercises the whole path
(EDF → ingest → index → trainer) the way a user runs it.
"""

from __future__ import annotations

import fcntl
import shutil
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from eegcache.index.db import INDEX_FILE, open_index
from eegcache.pipeline.labels import label_mask
from eegcache.pipeline.windows import label_codes, seizure_counts, window_starts
from eegcache.store import LocalObjectStore

NOW = "2026-01-01 00:00:00"
FS = 256.0


def migrated_index(folder: Path) -> Path:
    """An empty index at the newest schema (created by the Alembic migrations, as eegcache creates it)."""
    folder.mkdir(parents=True, exist_ok=True)
    open_index(folder).dispose()
    return folder / INDEX_FILE


def copy_index(template: Path, folder: Path) -> sqlite3.Connection:
    """A fresh copy of a migrated index (copying is much faster than migrating once per hypothesis example)."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(template, folder / INDEX_FILE)
    conn = sqlite3.connect(folder / INDEX_FILE)
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def _refs(conn: sqlite3.Connection) -> None:
    """The dataset and pipeline every hand-made recording and window set belongs to (ids 1)."""
    conn.execute("INSERT OR IGNORE INTO datasets(id, name, layout, root, updated_at) VALUES (1, 'src', 'tusz', '/src', ?)",
                 (NOW,))
    conn.execute("INSERT OR IGNORE INTO pipelines(id, name, spec_json, spec_digest, created_at) "
                 "VALUES (1, 'default', '{}', 'spec', ?)", (NOW,))


def add_window_set(conn: sqlite3.Connection, window_s: float = 60.0, stride_s: float = 60.0, fs: float = FS) -> int:
    _refs(conn)
    cur = conn.execute("INSERT INTO window_sets(pipeline_id, window_s, stride_s, fs, window_samples, stride_samples) "
                       "VALUES (1,?,?,?,?,?)",
                       (window_s, stride_s, fs, round(window_s * fs), round(stride_s * fs)))
    return int(cur.lastrowid)


def add_object(conn: sqlite3.Connection, key: str, n_samples: int, fs: float = FS) -> None:
    conn.execute("INSERT INTO objects(key, label_key, spec_digest, spec_json, n_channels, n_samples, fs, dtype, nbytes, "
                 "digest, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                 (key, "l" + key[1:], "spec", "{}", 19, n_samples, fs, "float32", 0, "d", NOW))


def add_recording(conn: sqlite3.Connection, name: str, *, split: str = "train", subject: str = "aaaaaaaa",
                  montage: str = "01_tcp_ar", status: str = "ingested", reason: str | None = None,
                  object_key: str | None = None, duration_s: float | None = None) -> int:
    _refs(conn)
    cur = conn.execute(
        "INSERT INTO recordings(dataset_id, rel_path, pipeline_id, name, subject, session, split, montage, status, "
        "reason, object_key, spec_digest, duration_s, updated_at) VALUES (1,?,1,?,?,?,?,?,?,?,?,?,?,?)",
        (f"{split}/{name}.edf", name, subject, "s001_2020", split, montage, status, reason, object_key,
         "spec" if status != "failed" else None, duration_s, NOW))
    return int(cur.lastrowid)


def add_windows(conn: sqlite3.Connection, recording_id: int, window_set_id: int, labels: list[int],
                window_samples: int = 15360) -> list[int]:
    ids = []
    for i, label in enumerate(labels):
        seizure = {0: 0, 1: window_samples // 2, 2: window_samples}[label]
        cur = conn.execute("INSERT INTO windows(recording_id, window_set_id, start_sample, seizure_samples, label) "
                           "VALUES (?,?,?,?,?)", (recording_id, window_set_id, i * window_samples, seizure, label))
        ids.append(int(cur.lastrowid))
    return ids


@dataclass
class HandIndex:
    """What a hand-made index holds, for checking the sampler against."""

    folder: Path
    ids: dict[int, list[int]] = field(default_factory=lambda: {0: [], 1: [], 2: []})  # label code → window ids
    subject_of: dict[int, str] = field(default_factory=dict)


def hand_index(template: Path, folder: Path, counts: dict[int, int], *, per_recording: int = 7,
               dev_counts: dict[int, int] | None = None, subjects: tuple[str, ...] = ("aaaaaaaa", "bbbbbbbb")) -> HandIndex:
    """Train windows with exactly ``counts[label]`` windows per label code, spread over several recordings and
    subjects (all ingested, with objects), plus optional dev windows that a split filter must exclude."""
    conn = copy_index(template, folder)
    out = HandIndex(folder)
    ws = add_window_set(conn)
    rng = np.random.default_rng(sum(counts.values()))
    for split, split_counts in (("train", counts), ("dev", dev_counts or {})):
        labels = [code for code, n in split_counts.items() for _ in range(n)]
        rng.shuffle(labels)
        for r, start in enumerate(range(0, len(labels), per_recording)):
            chunk = [int(x) for x in labels[start:start + per_recording]]
            key = f"k{split}{r:04d}".ljust(64, "0")
            add_object(conn, key, len(chunk) * 15360)
            subject = subjects[r % len(subjects)]
            rec = add_recording(conn, f"{split}_{r:04d}", split=split, subject=subject, object_key=key,
                                duration_s=len(chunk) * 60.0)
            ids = add_windows(conn, rec, ws, chunk)
            if split == "train":
                for i, code in zip(ids, chunk, strict=True):
                    out.ids[code].append(i)
                    out.subject_of[i] = subject
    conn.commit()
    conn.close()
    return out


# ----------------------------------------------------------------------------------------------------------------
# Small caches with real objects (for the dataset)


@dataclass
class RealRecording:
    name: str
    key: str
    signal: np.ndarray
    mask: np.ndarray
    split: str


def real_cache(folder: Path, *, window_s: float = 4.0, stride_s: float = 2.0, seed: int = 0,
               lengths: tuple[int, ...] = (5000, 9000, 20000), dtype: str = "float32") -> tuple[list[RealRecording], int]:
    """A cache whose objects hold random signals and masks with seizures, indexed with one window set; returns the
    recordings (with their arrays, the truth to compare against) and the window set id."""
    index = migrated_index(folder)
    conn = sqlite3.connect(index)
    ws = add_window_set(conn, window_s, stride_s)
    window, stride = round(window_s * FS), round(stride_s * FS)
    store = LocalObjectStore(folder)
    rng = np.random.default_rng(seed)
    recs = []
    for i, n in enumerate(lengths):
        signal = rng.standard_normal((19, n)).astype(dtype)
        start = float(rng.uniform(0, n / FS / 2))
        mask = label_mask([(start, start + float(rng.uniform(3, 15)))], n, FS)
        key = f"{i:02d}" + "ab" * 31
        store.write(key, signal, mask, {"fs": FS})
        add_object(conn, key, n)
        split = "train" if i < len(lengths) - 1 else "dev"
        rec = add_recording(conn, f"rec{i}", split=split, object_key=key, duration_s=n / FS)
        starts = window_starts(n, window, stride)
        counts = seizure_counts(mask, starts, window)
        codes = label_codes(counts, window)
        conn.executemany("INSERT INTO windows(recording_id, window_set_id, start_sample, seizure_samples, label) "
                         "VALUES (?,?,?,?,?)",
                         [(rec, ws, int(s), int(c), int(k)) for s, c, k in zip(starts, counts, codes, strict=True)])
        recs.append(RealRecording(f"rec{i}", key, signal, mask, split))
    conn.commit()
    conn.close()
    return recs, ws


# ----------------------------------------------------------------------------------------------------------------
# One synthetic corpus per session


SYNTH_HOURS, SYNTH_SEED = 1.0, 1


def synthetic_cache(base: Path) -> Path:
    """``eegcache synth --hours 1 --seed 1`` ingested with the default settings (60 s windows, 60 s stride), built
    once per session however many test modules ask (a file lock and a marker; module fixtures cannot share)."""
    from eegcache.ops.ingest import ingest
    from eegcache.pipeline.spec import IngestConfig
    from eegcache.sources.synth import synthesize

    root = base / "trainer_synth"
    root.mkdir(parents=True, exist_ok=True)
    cache = root / "cache"
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / "done").exists():
            synthesize(root / "tree", SYNTH_HOURS, SYNTH_SEED)
            ingest(root / "tree", cache, IngestConfig(), progress=False)
            (root / "done").touch()
    return cache
