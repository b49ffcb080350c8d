"""Windows as index rows over a recording's continuous per-sample seizure mask.

A window is just (start sample, length); its label follows from how many of its samples are
seizure, so windows of any length/stride can be derived from one mask without re-reading labels.
"""

from __future__ import annotations

import math
import numbers
import operator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

# numpy (~0.1 s to import) is imported by the functions that use it: `eegcache ingest` of an unchanged tree needs none.

LABELS = ("no_seizure", "partial_seizure", "full_seizure")  # label codes 0, 1, 2 in this order


def _positive_int(name: str, value: int) -> int:
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {value!r}") from None
    if v <= 0:
        raise ValueError(f"{name} must be a positive number of samples, got {v}")
    return v


def window_starts(n_samples: int, window: int, stride: int) -> np.ndarray:
    """Full-length windows only: starts 0, stride, 2*stride, ... while start + window <= n_samples (int64).

    A trailing partial window is dropped rather than padded: the model needs fixed-length input and
    padding would invent samples that carry no label.
    """
    import numpy as np  # see the top

    window = _positive_int("window", window)
    stride = _positive_int("stride", stride)
    n = operator.index(n_samples)
    if n < 0:
        raise ValueError(f"n_samples must be >= 0, got {n}")
    if n < window:
        return np.empty(0, dtype=np.int64)
    return np.arange(0, n - window + 1, stride, dtype=np.int64)


def seizure_counts(mask: np.ndarray, starts: np.ndarray, window: int) -> np.ndarray:
    """Seizure samples per window, via one cumulative sum (O(n), not O(windows*window)).

    Any non-zero mask value counts as seizure. Returns int64.
    """
    import numpy as np  # see the top

    window = _positive_int("window", window)
    mask = np.asarray(mask)
    if mask.ndim != 1:
        raise ValueError(f"mask must be 1-D, got shape {mask.shape}")
    starts = np.asarray(starts, dtype=np.int64)
    if starts.size and (starts.min() < 0 or starts.max() + window > mask.size):
        raise ValueError(
            f"windows of {window} samples at these starts do not fit a mask of {mask.size} samples"
        )
    csum = np.zeros(mask.size + 1, dtype=np.int64)
    np.cumsum(mask != 0, out=csum[1:])
    return csum[starts + window] - csum[starts]


def label_codes(counts: np.ndarray, window: int) -> np.ndarray:
    """0 when no seizure sample, 2 when all samples are seizure, 1 otherwise (int8); see LABELS."""
    import numpy as np  # see the top

    window = _positive_int("window", window)
    counts = np.asarray(counts)
    if counts.size and (counts.min() < 0 or counts.max() > window):
        raise ValueError(f"seizure counts must lie in [0, {window}]")
    codes = np.ones(counts.shape, dtype=np.int8)
    codes[counts == 0] = 0
    codes[counts == window] = 2
    return codes


def seconds_to_samples(seconds: float, fs: float) -> int:
    """Exact conversion for window/stride lengths.

    Raises ValueError when seconds*fs is not a whole positive number of samples (e.g. 0.001 s at
    256 Hz), because silently rounding would make windows differ between sampling rates. A relative
    tolerance of 1e-12 absorbs only float representation error (e.g. (n / 200.5) * 200.5); 1e-9 let a
    fraction of 0.001 sample pass at a million samples.
    """
    for name, v in (("seconds", seconds), ("fs", fs)):
        if isinstance(v, bool) or not isinstance(v, numbers.Real):  # numpy's integers and floats too
            raise ValueError(f"{name} must be a number, got {v!r}")
        if not math.isfinite(v) or v <= 0:
            raise ValueError(f"{name} must be finite and positive, got {v!r}")
    product = float(seconds) * float(fs)
    n = round(product)
    if n < 1 or abs(product - n) > 1e-12 * max(1.0, product):
        raise ValueError(
            f"{seconds!r} s at {fs!r} Hz is {product!r} samples, not a whole positive number of samples"
        )
    return int(n)
