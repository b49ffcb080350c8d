"""From per-window probabilities to seizure events: cover, stitch, threshold, smooth, drop short events.

Pure numpy/scipy so every rule can be property-tested. The rules follow SeizureTransformer's post-processing:
threshold 0.8, morphological opening then closing over 5 samples, events shorter than 2 s dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class PostProcess:
    threshold: float = 0.8
    morph_samples: int = 5
    min_event_s: float = 2.0
    strict: bool = False  # seizure where probability > threshold (the reference code) instead of >=

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must lie in [0, 1], got {self.threshold}")
        if self.morph_samples < 0:
            raise ValueError(f"morph_samples must be >= 0, got {self.morph_samples}")
        if self.min_event_s < 0:
            raise ValueError(f"min_event_s must be >= 0, got {self.min_event_s}")


TAILS = ("end-aligned", "zero-pad")


@dataclass(frozen=True)
class Cover:
    """How a recording is covered by windows for prediction. ``tail``: ``end-aligned`` (default: one last full
    window aligned to the end) or ``zero-pad`` (the reference: windows at 0, w, 2w, ... and the last one zero-padded
    past the end). ``skip_short``: recordings shorter than one window are not scored (the reference skips them;
    by default they are zero-padded and scored). Skipped recordings are counted in the report, with the reason."""

    tail: str = "end-aligned"
    skip_short: bool = False

    def __post_init__(self) -> None:
        if self.tail not in TAILS:
            raise ValueError(f"tail must be one of {TAILS}, got {self.tail!r}")

    def starts(self, n_samples: int, window: int) -> np.ndarray:
        if self.tail == "zero-pad":
            if window <= 0:
                raise ValueError(f"window must be > 0, got {window}")
            return np.arange(0, n_samples, window, dtype=np.int64) if n_samples > 0 else np.zeros(0, dtype=np.int64)
        return cover_starts(n_samples, window)


def cover_starts(n_samples: int, window: int) -> np.ndarray:
    """Starts of the non-overlapping windows that cover a recording: 0, w, 2w, ... and, when a tail shorter than a
    window remains, one last full window aligned to the end (so no sample goes unpredicted and no input is
    invented). A recording shorter than one window gets the single start 0 (the caller pads it)."""
    if window <= 0:
        raise ValueError(f"window must be > 0, got {window}")
    if n_samples <= window:
        return np.zeros(1 if n_samples > 0 else 0, dtype=np.int64)
    starts = np.arange(0, n_samples - window + 1, window, dtype=np.int64)
    if starts[-1] + window < n_samples:
        starts = np.append(starts, n_samples - window)
    return starts


def stitch(window_probs: np.ndarray, starts: np.ndarray, n_samples: int) -> np.ndarray:
    """One probability per sample. Windows are laid down in order and the end-aligned tail window only fills the
    samples no earlier window covered, so every sample keeps the prediction of the window that started nearest
    before it on the regular grid. Predictions past ``n_samples`` (padding) are dropped."""
    window_probs = np.asarray(window_probs, dtype=np.float32)
    out = np.full(n_samples, np.nan, dtype=np.float32)
    covered = 0
    for probs, start in zip(window_probs, np.asarray(starts, dtype=np.int64), strict=True):
        stop = min(int(start) + probs.shape[0], n_samples)
        begin = max(int(start), covered)
        if stop > begin:
            out[begin:stop] = probs[begin - int(start): stop - int(start)]
            covered = stop
    if np.isnan(out).any():
        raise ValueError("the windows do not cover every sample of the recording")
    return out


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and stop (exclusive) sample of every run of True."""
    padded = np.concatenate([[False], np.asarray(mask, dtype=bool), [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    return edges[0::2], edges[1::2]


def open_close(mask: np.ndarray, size: int = 5) -> np.ndarray:
    """Opening (removes seizure runs shorter than ``size``), then closing (fills gaps shorter than ``size`` between
    seizure runs). Only the closing is edge-padded: scipy treats the outside as background, which would make its
    erosion shave ``size // 2`` samples off an event touching the start or end of the recording. (The opening needs
    no padding: its dilation restores what its erosion took at the border.)"""
    mask = np.asarray(mask, dtype=bool)
    if size <= 1 or mask.size == 0:
        return mask.copy()
    structure = np.ones(size, dtype=bool)
    opened = ndimage.binary_opening(mask, structure=structure)
    padded = np.pad(opened, size, mode="edge")
    return ndimage.binary_closing(padded, structure=structure)[size:-size]


def drop_short(mask: np.ndarray, min_samples: int) -> np.ndarray:
    """Remove runs of seizure shorter than ``min_samples`` (detections too brief to be a seizure)."""
    out = np.asarray(mask, dtype=bool).copy()
    for start, stop in zip(*_runs(out), strict=True):
        if stop - start < min_samples:
            out[start:stop] = False
    return out


def binarize(probs: np.ndarray, fs: float, config: PostProcess | None = None) -> np.ndarray:
    """Probabilities → cleaned seizure mask: threshold, opening/closing, minimum duration."""
    config = config or PostProcess()
    probs = np.asarray(probs)
    mask = probs > config.threshold if config.strict else probs >= config.threshold
    mask = open_close(mask, config.morph_samples)
    return drop_short(mask, int(np.ceil(config.min_event_s * fs - 1e-9)))


@dataclass(frozen=True)
class Event:
    start_s: float
    stop_s: float
    confidence: float  # mean probability over the event


def mask_events(mask: np.ndarray, fs: float, probs: np.ndarray | None = None) -> list[Event]:
    starts, stops = _runs(mask)
    out = []
    for a, b in zip(starts.tolist(), stops.tolist(), strict=True):
        conf = float(np.mean(probs[a:b])) if probs is not None else 1.0
        out.append(Event(a / fs, b / fs, conf))
    return out


def csv_bi(recording: str, duration_s: float, events: list[Event]) -> str:
    """Events in TUSZ's ``.csv_bi`` layout, so NEDC tools and our own annotation parser can read predictions."""
    lines = ["# version = csv_v1.0.0", f"# bname = {recording}", f"# duration = {duration_s:.4f} secs", "#",
             "channel,start_time,stop_time,label,confidence"]
    lines += [f"TERM,{e.start_s:.4f},{e.stop_s:.4f},seiz,{e.confidence:.4f}" for e in events]
    return "\n".join(lines) + "\n"
