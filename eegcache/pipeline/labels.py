"""Seizure intervals to per-sample labels.

The rules here are the product's contract: every window label in the cache is derived from
``label_mask``, so its boundaries must be exact and reproducible across sampling rates.
Intervals are half-open, ``[start, stop)`` in seconds from the start of the recording.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

Events = tuple[tuple[float, float], ...]


def _as_array(events: Iterable[tuple[float, float]] | np.ndarray) -> np.ndarray:
    """Events as a float64 (n, 2) array; NaN is refused because no interval rule can place it."""
    if isinstance(events, np.ndarray):
        arr = np.asarray(events, dtype=np.float64)
    else:
        arr = np.array(list(events), dtype=np.float64)
    if arr.size == 0:
        return np.empty((0, 2), dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"events must be (start, stop) pairs, got an array of shape {arr.shape}")
    if np.isnan(arr).any():
        raise ValueError("events contain NaN times")
    return arr


def merge_arrays(starts: np.ndarray, stops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised merge of interval arrays (O(n log n) sort, then one linear pass).

    Exposed so the annotation parser can merge 10^6 rows without building Python tuples first.
    """
    starts = np.asarray(starts, dtype=np.float64)
    stops = np.asarray(stops, dtype=np.float64)
    if np.isnan(starts).any() or np.isnan(stops).any():
        raise ValueError("events contain NaN times")
    keep = stops > starts
    starts, stops = starts[keep], stops[keep]
    n = starts.size
    if n == 0:
        return starts, stops
    order = np.lexsort((stops, starts))
    s, e = starts[order], stops[order]
    reach = np.maximum.accumulate(e)
    new = np.empty(n, dtype=bool)
    new[0] = True
    new[1:] = s[1:] > reach[:-1]  # touching (==) intervals join the running group
    first = np.flatnonzero(new)
    last = np.append(first[1:] - 1, n - 1)
    return s[first], reach[last]


def merge_events(events: Iterable[tuple[float, float]]) -> Events:
    """Sort and merge overlapping or touching intervals; drop empty ones.

    Annotation files list events per channel and may overlap; downstream code (clipping,
    warnings, event counts) needs one canonical, disjoint set of seizure intervals.
    """
    arr = _as_array(events)
    s, e = merge_arrays(arr[:, 0], arr[:, 1])
    return tuple(zip(s.tolist(), e.tolist(), strict=True))


def _fmt(x: float) -> str:
    """Seconds for humans: up to 4 decimals (the annotation precision), at least one."""
    text = f"{x:.4f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def clip_events(events: Iterable[tuple[float, float]], duration_s: float) -> tuple[Events, list[str]]:
    """Clip events to [0, duration_s]; return (clipped events, warnings).

    Annotations sometimes run past the EDF's real length; the recording duration is only known
    once the EDF is read, so clipping lives here and every change is reported to a person, e.g.
    "seizure 590.0–640.0 s ends after the recording (601.0 s); clipped". Empty events are dropped
    silently. The result is merged (sorted, disjoint).
    """
    if not math.isfinite(duration_s) or duration_s < 0:
        raise ValueError(f"duration_s must be finite and >= 0, got {duration_s!r}")
    arr = _as_array(events)
    arr = arr[arr[:, 1] > arr[:, 0]]
    starts, stops = arr[:, 0], arr[:, 1]
    d = _fmt(duration_s)
    warnings: list[str] = []
    after = starts >= duration_s
    before = stops <= 0
    late = (stops > duration_s) & ~after
    early = (starts < 0) & ~before
    for i in np.flatnonzero(after | before | late | early).tolist():
        what = f"seizure {_fmt(starts[i])}–{_fmt(stops[i])} s"
        if after[i]:
            warnings.append(f"{what} starts at or after the end of the recording ({d} s); dropped")
        elif before[i]:
            warnings.append(f"{what} lies wholly before the start of the recording; dropped")
        elif early[i] and late[i]:
            warnings.append(f"{what} starts before and ends after the recording ({d} s); clipped")
        elif late[i]:
            warnings.append(f"{what} ends after the recording ({d} s); clipped")
        else:
            warnings.append(f"{what} starts before the recording; clipped to 0.0 s")
    keep = ~(after | before)
    clipped_s = np.maximum(starts[keep], 0.0)
    clipped_e = np.minimum(stops[keep], duration_s)
    s, e = merge_arrays(clipped_s, clipped_e)
    return tuple(zip(s.tolist(), e.tolist(), strict=True)), warnings


def _first_sample_at_or_after(x: np.ndarray, fs: float, n_samples: int) -> np.ndarray:
    """Smallest i in [0, n_samples] with float(i / fs) >= x (n_samples when none).

    ceil(x * fs) is only a first guess: x * fs and i / fs are rounded separately, so the guess
    can be one off; it is corrected against the very comparison the contract is defined by.
    """
    out = np.empty(x.shape, dtype=np.int64)
    low = x <= 0
    high = ~low & (x > (n_samples - 1) / fs) if n_samples > 0 else ~low
    mid = ~(low | high)
    out[low] = 0
    out[high] = n_samples
    xm = x[mid]
    c = np.clip(np.ceil(xm * fs), 0, n_samples).astype(np.int64)
    for _ in range(64):  # converges in one step in practice; bounded for safety
        up = c / fs < xm
        down = (c > 0) & ((c - 1) / fs >= xm)
        if not (up.any() or down.any()):
            break
        c = c + up - down
    else:  # pragma: no cover - unreachable for finite float64 inputs
        raise RuntimeError("sample boundary search did not converge")
    out[mid] = c
    return out


def label_mask(events: Iterable[tuple[float, float]], n_samples: int, fs: float) -> np.ndarray:
    """uint8 mask of length n_samples: sample i is 1 iff some event has start <= i/fs < stop.

    The first seizure sample is ceil(start*fs) and the exclusive end ceil(stop*fs), both corrected
    so float rounding never moves a boundary; events may overlap and extend beyond the recording.
    Linear in n_samples + events (bincount + cumsum), so a 1 h recording with hundreds of events is cheap.
    """
    if not (isinstance(fs, int | float | np.floating | np.integer) and math.isfinite(fs) and fs > 0):
        raise ValueError(f"fs must be a finite positive number, got {fs!r}")
    if n_samples < 0:
        raise ValueError(f"n_samples must be >= 0, got {n_samples}")
    n_samples = int(n_samples)
    fs = float(fs)
    arr = _as_array(events)
    mask = np.zeros(n_samples, dtype=np.uint8)
    if arr.shape[0] == 0 or n_samples == 0:
        return mask
    first = _first_sample_at_or_after(arr[:, 0], fs, n_samples)
    end = _first_sample_at_or_after(arr[:, 1], fs, n_samples)
    keep = end > first
    if not keep.any():
        return mask
    delta = np.bincount(first[keep], minlength=n_samples + 1) - np.bincount(
        end[keep], minlength=n_samples + 1
    )
    mask[np.cumsum(delta[:n_samples]) > 0] = 1
    return mask
