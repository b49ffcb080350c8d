"""Turn picked electrodes into the stored signal: resample, zero-phase filters, z-score (in the declared order); and
the per-window read-time filter a pipeline may declare (``window_filter``)."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from eegcache.pipeline.spec import PreprocessSpec, WindowFilter


def resample(data: np.ndarray, fs_in: float, fs_out: float, method: str = "poly") -> np.ndarray:
    """``poly``: polyphase resampling by the exact rational ratio of the two rates. ``fft``: Fourier resampling
    (``scipy.signal.resample``) to ``int(n * fs_out / fs_in)`` samples, as the SeizureTransformer reference does."""
    if fs_in == fs_out:
        return data
    from scipy import signal as sps  # imported on first use: ~1.5 s that a run with nothing to do never pays

    if method == "fft":
        return sps.resample(data, int(data.shape[-1] / fs_in * fs_out), axis=-1)
    ratio = Fraction(fs_out / fs_in).limit_denominator(2000)
    return sps.resample_poly(data, ratio.numerator, ratio.denominator, axis=-1)


def _zscore(x: np.ndarray) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    std = x.std(axis=-1, keepdims=True)
    return np.where(std > 0, (x - mean) / np.where(std > 0, std, 1.0), 0.0)


def preprocess(data: np.ndarray, fs_in: float, spec: PreprocessSpec) -> np.ndarray:
    """The declared pipeline, channels × samples in, channels × samples out at ``spec.fs`` in ``spec.dtype``.

    ``chain`` ``filter-first`` (default): resample, band-pass, notches, z-score. ``zscore-first`` (the reference):
    z-score the signal as read, then resample and filter. Channels that are all zero (zero-filled missing
    electrodes) stay zero after the z-score."""
    from scipy import signal as sps

    x = np.asarray(data, dtype=np.float64)
    if spec.chain == "zscore-first":
        x = _zscore(x)
    x = resample(x, fs_in, spec.fs, spec.resample)
    padlen_ok = x.shape[-1] > 3 * 27  # sosfiltfilt needs a few filter lengths of signal
    if spec.bandpass_hz is not None and padlen_ok:
        low, high = spec.bandpass_hz
        if low > 0:
            sos = sps.butter(4, [low, high], btype="bandpass", fs=spec.fs, output="sos")
        else:
            sos = sps.butter(4, high, btype="lowpass", fs=spec.fs, output="sos")
        x = sps.sosfiltfilt(sos, x, axis=-1)
    for f0 in (*spec.notch_hz, *spec.fixed_notch_hz):
        if padlen_ok:
            b, a = sps.iirnotch(f0, Q=30.0, fs=spec.fs)
            x = sps.filtfilt(b, a, x, axis=-1)
    if spec.zscore and spec.chain == "filter-first":
        x = _zscore(x)
    return x.astype(spec.dtype)


def window_filter(signal: np.ndarray, fs: float, wf: WindowFilter) -> np.ndarray:
    """The read-time filter of one window ([channels, samples] → float32, same shape): causal Butterworth band-pass
    (transfer-function coefficients, ``lfilter`` from rest), then each causal notch in turn."""
    from scipy import signal as sps

    x = np.asarray(signal, dtype=np.float64)
    if wf.bandpass_hz is not None:
        b, a = sps.butter(wf.order, list(wf.bandpass_hz), btype="bandpass", fs=fs)
        x = sps.lfilter(b, a, x, axis=-1)
    for f0 in wf.notch_hz:
        b, a = sps.iirnotch(f0, Q=wf.notch_q, fs=fs)
        x = sps.lfilter(b, a, x, axis=-1)
    return x.astype(np.float32)


@dataclass(frozen=True)
class WindowTransform:
    """A pipeline's read-time steps as a picklable callable (DataLoader workers started by spawn get a copy)."""

    fs: float
    filter: WindowFilter

    def __call__(self, signal: np.ndarray) -> np.ndarray:
        return window_filter(signal, self.fs, self.filter)


def window_transform(spec: PreprocessSpec | None) -> WindowTransform | None:
    """The read-time transform of a pipeline's spec, or None when it declares none."""
    if spec is None or spec.window_filter is None:
        return None
    return WindowTransform(spec.fs, spec.window_filter)
