"""Turn picked electrodes into the stored signal: polyphase resample, zero-phase filters, z-score."""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from eegcache.spec import PreprocessSpec


def resample(data: np.ndarray, fs_in: float, fs_out: float) -> np.ndarray:
    """Polyphase resampling by the exact rational ratio of the two rates."""
    if fs_in == fs_out:
        return data
    from scipy import signal as sps  # imported on first use: ~1.5 s that a run with nothing to do never pays

    ratio = Fraction(fs_out / fs_in).limit_denominator(2000)
    return sps.resample_poly(data, ratio.numerator, ratio.denominator, axis=-1)


def preprocess(data: np.ndarray, fs_in: float, spec: PreprocessSpec) -> np.ndarray:
    """The declared pipeline, channels × samples in, channels × samples out at ``spec.fs`` in ``spec.dtype``.

    Channels that are all zero (zero-filled missing electrodes) stay zero after the z-score."""
    from scipy import signal as sps

    x = resample(np.asarray(data, dtype=np.float64), fs_in, spec.fs)
    padlen_ok = x.shape[-1] > 3 * 27  # sosfiltfilt needs a few filter lengths of signal
    if spec.bandpass_hz is not None and padlen_ok:
        low, high = spec.bandpass_hz
        if low > 0:
            sos = sps.butter(4, [low, high], btype="bandpass", fs=spec.fs, output="sos")
        else:
            sos = sps.butter(4, high, btype="lowpass", fs=spec.fs, output="sos")
        x = sps.sosfiltfilt(sos, x, axis=-1)
    for f0 in spec.notch_hz:
        if padlen_ok:
            b, a = sps.iirnotch(f0, Q=30.0, fs=spec.fs)
            x = sps.filtfilt(b, a, x, axis=-1)
    if spec.zscore:
        mean = x.mean(axis=-1, keepdims=True)
        std = x.std(axis=-1, keepdims=True)
        x = np.where(std > 0, (x - mean) / np.where(std > 0, std, 1.0), 0.0)
    return x.astype(spec.dtype)
