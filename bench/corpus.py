"""The benchmark corpus: a synthetic TUSZ-like tree (fixed seed), reused across runs, and the one function that
turns a recording into (preprocessed signal, per-sample label mask) for the contenders that are not eegcache."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eegcache.pipeline.labels import clip_events, label_mask
from eegcache.pipeline.preprocess import preprocess
from eegcache.pipeline.spec import PreprocessSpec
from eegcache.sources.annotations import AnnotationError, find_annotation, parse_annotation
from eegcache.sources.edf import EdfError, read_recording
from eegcache.sources.synth import synthesize
from eegcache.sources.tree import discover

SEED = 20261128
WINDOW_S = 60.0
STRIDES_S = (60.0, 15.0, 10.0)


@dataclass(frozen=True)
class Corpus:
    root: Path  # the folder that holds edf/
    hours: float  # EEG-hours of every EDF in the tree
    n_files: int
    bytes: int  # EDF + annotation bytes

    def edfs(self) -> list[Path]:
        return discover(self.root)

    def to_dict(self) -> dict:
        return {"root": str(self.root), "eeg_hours_total": self.hours, "edf_files": self.n_files, "bytes": self.bytes}


def make_corpus(out: Path, hours: float, seed: int = SEED, file_s: int | None = None) -> Corpus:
    """Synthesise the corpus under ``out/corpus-<hours>h-<seed>`` once; later runs reuse the finished tree.
    ``file_s``: every file that long (``out/corpus-<files>x<file_s>s-<seed>``, the per-file-overhead tree)."""
    name = f"corpus-{hours:g}h-{seed}" if file_s is None else f"corpus-{round(hours * 3600 / file_s)}x{file_s}s-{seed}"
    root = Path(out) / name
    done = root / "corpus.json"
    if not done.is_file():
        shutil.rmtree(root, ignore_errors=True)
        recordings = synthesize(root, hours, seed, file_s=file_s)
        size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
        meta = {"hours": sum(r.duration_s for r in recordings) / 3600, "n_files": len(recordings), "bytes": size}
        done.write_text(json.dumps(meta))
    meta = json.loads(done.read_text())
    return Corpus(root, meta["hours"], meta["n_files"], meta["bytes"])


def read_and_preprocess(edf: Path, spec: PreprocessSpec) -> np.ndarray | None:
    """The floor's unit of work: read the picked electrodes and preprocess; None for a file eegcache would fail."""
    try:
        raw = read_recording(edf, spec.channels, spec.missing_electrodes)
    except EdfError:
        return None
    return preprocess(raw.data, raw.fs, spec)


def signal_and_mask(edf: Path, spec: PreprocessSpec) -> tuple[np.ndarray, np.ndarray] | None:
    """Preprocessed signal and the per-sample seizure mask, with eegcache's own label rules (same windows, same
    labels for every contender)."""
    signal = read_and_preprocess(edf, spec)
    ann = find_annotation(edf)
    if signal is None or ann is None:
        return None
    n = signal.shape[1]
    try:
        events, _warnings = clip_events(parse_annotation(ann).events, n / spec.fs)
    except AnnotationError:
        return None
    return signal, label_mask(events, n, spec.fs)
