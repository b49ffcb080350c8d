"""Turn picked electrodes into the stored signal: resample, zero-phase filters, z-score (in the declared order); and
the per-window read-time filter a pipeline may declare (``window_filter``)."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

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


def _zscore(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Per-channel z-score (into ``out``, which may be ``x``; else a new array of x's type); channels with no
    variance (zero-filled) become 0. The values are those of every earlier release: (x - mean) / std."""
    mean = x.mean(axis=-1, keepdims=True)
    std = x.std(axis=-1, keepdims=True)
    out = np.subtract(x, mean, out=out)
    out /= np.where(std > 0, std, 1.0)
    np.copyto(out, 0.0, where=std == 0)
    return out


def preprocess(data: np.ndarray, fs_in: float, spec: PreprocessSpec) -> np.ndarray:
    """The declared pipeline, channels × samples in, channels × samples out at ``spec.fs`` in ``spec.dtype``.

    ``chain`` ``filter-first`` (default): resample, band-pass, notches, z-score. ``zscore-first`` (the reference):
    z-score the signal as read, then resample and filter. Channels that are all zero (zero-filled missing
    electrodes) stay zero after the z-score. ``compute`` says how: ``float64`` (every release before the field
    existed) or ``float32-fft`` (the same steps, equal to float64 within the tolerance stated below)."""
    if spec.compute == "float64":
        return _preprocess_float64(data, fs_in, spec)
    return _preprocess_float32_fft(data, fs_in, spec)


def _long_enough(x: np.ndarray) -> bool:
    return x.shape[-1] > 3 * 27  # sosfiltfilt needs a few filter lengths of signal; shorter ones are not filtered


# Designing a filter costs about a millisecond, a few percent of preprocessing a 30 s file: each design is made once
# per process for its rate, and each caller gets its own copy (scipy's filters want writable coefficients).
def _bandpass_sos(fs: float, bandpass_hz: tuple[float, float]) -> np.ndarray:
    return _bandpass_design(fs, bandpass_hz).copy()


@lru_cache(maxsize=64)
def _bandpass_design(fs: float, bandpass_hz: tuple[float, float]) -> np.ndarray:
    from scipy import signal as sps

    low, high = bandpass_hz
    if low > 0:
        return sps.butter(4, [low, high], btype="bandpass", fs=fs, output="sos")
    return sps.butter(4, high, btype="lowpass", fs=fs, output="sos")


def _notch_ba(f0: float, fs: float) -> tuple[np.ndarray, np.ndarray]:
    b, a = _notch_design(f0, fs)
    return b.copy(), a.copy()


@lru_cache(maxsize=64)
def _notch_design(f0: float, fs: float) -> tuple[np.ndarray, np.ndarray]:
    from scipy import signal as sps

    return sps.iirnotch(f0, Q=30.0, fs=fs)


def _notches(spec: PreprocessSpec) -> tuple[float, ...]:
    return (*spec.notch_hz, *spec.fixed_notch_hz)


def _filters64(x: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """The zero-phase filters in float64, sample by sample: the band-pass (``sosfiltfilt``), then each notch
    (``iirnotch``, Q 30, ``filtfilt``)."""
    from scipy import signal as sps

    if not _long_enough(x):
        return x
    if spec.bandpass_hz is not None:
        x = sps.sosfiltfilt(_bandpass_sos(spec.fs, spec.bandpass_hz), x, axis=-1)
    for f0 in _notches(spec):
        x = sps.filtfilt(*_notch_ba(f0, spec.fs), x, axis=-1)
    return x


def _preprocess_float64(data: np.ndarray, fs_in: float, spec: PreprocessSpec) -> np.ndarray:
    x = np.asarray(data, dtype=np.float64)
    if spec.chain == "zscore-first":
        x = _zscore(x)
    x = resample(x, fs_in, spec.fs, spec.resample)
    x = _filters64(x, spec)
    if spec.zscore and spec.chain == "filter-first":
        x = _zscore(x)
    return x.astype(spec.dtype)


# float32-fft. The filters are linear and time-invariant: away from the ends, band-pass and notches run forwards and
# backwards are one convolution with their zero-phase impulse response g (the cascade's impulse response correlated
# with itself), that is their squared magnitude response |H|² applied in the frequency domain: one scipy.fft rfft
# of the middle of the signal, times the spectrum of g at its bins, one irfft (the circular wrap-around falls in the
# half-kernel cut off each end of the middle). g is cut where its tail holds less than KERNEL_TOL of its absolute sum.
#
# The float64 filters' edge handling (each filter's odd extension and steady-state initial conditions, one filter
# after the other) is no convolution, and through the z-score's mean and std it reaches every sample. So the first and
# last ``ends`` samples (the filters' transients end to end, each until it falls below ENDS_TOL of what started it)
# are _filters64's, run on the first and last ``edge`` samples (longer by the same again, so that the transients
# from a segment's cut end die before they reach what is kept).
#
# What is left is float32 rounding, of the signal less its mean. Per channel, |float32-fft - float64| <=
# FLOAT32_FFT_ATOL * std + FLOAT32_FFT_RTOL * peak, the std and the peak (largest magnitude) of the float64 output:
# after the z-score (std 1), 1e-4 plus 4e-6 of the peak, which for EEG (peaks of a few tens of std) is under 2e-4;
# measured on the bench corpus, 7.5e-6. Zero-filled channels are exactly zero in both. A slow drift below the
# band-pass far larger than the band's signal (over ~30x its std) adds its own rounding, ~1e-6 of drift / std.
# Pinned by tests/test_preprocess_compute.py.
KERNEL_TOL = 1e-6
ENDS_TOL = 1e-5
FLOAT32_FFT_ATOL = 1e-4
FLOAT32_FFT_RTOL = 4e-6


@dataclass(frozen=True)
class ZeroPhase:
    kernel: np.ndarray  # float32, lags -half..half
    half: int
    ends: int  # samples at each end taken from the float64 filters
    edge: int  # samples at each end the float64 filters run on
    dc_gain: float  # |H(0)|²: what the filters make of a constant


def _stages(fs: float, bandpass_hz: tuple[float, float] | None, notches: tuple[float, ...]) -> list[np.ndarray]:
    from scipy import signal as sps

    stages = [] if bandpass_hz is None else [_bandpass_sos(fs, bandpass_hz)]
    return stages + [sps.tf2sos(*_notch_ba(f0, fs)) for f0 in notches]


def _decay(sos: np.ndarray, tol: float) -> int:
    """Samples for the slowest pole's transient to fall below ``tol`` of its start."""
    from scipy import signal as sps

    radius = float(np.abs(sps.sos2zpk(sos)[1]).max(initial=0.0))
    if radius >= 1.0:
        return 1 << 62
    return 1 if radius <= 0 else int(np.ceil(np.log(tol) / np.log(radius)))


@lru_cache(maxsize=64)
def _decays(fs: float, bandpass_hz: tuple[float, float] | None, notches: tuple[float, ...]) -> tuple[int, int]:
    """The filters' transients end to end (samples): to KERNEL_TOL, and to ENDS_TOL."""
    stages = _stages(fs, bandpass_hz, notches)
    return sum(_decay(s, KERNEL_TOL) for s in stages), sum(_decay(s, ENDS_TOL) for s in stages)


@lru_cache(maxsize=64)
def _dc_gain(fs: float, bandpass_hz: tuple[float, float] | None, notches: tuple[float, ...]) -> float:
    """|H(0)|² of the filters: what they make of a constant."""
    from scipy import signal as sps

    return float(np.prod([np.abs(sps.sosfreqz(s, worN=[0.0])[1][0]) ** 2 for s in _stages(fs, bandpass_hz, notches)]))


@lru_cache(maxsize=64)
def zero_phase(fs: float, bandpass_hz: tuple[float, float] | None, notches: tuple[float, ...]) -> ZeroPhase:
    """_filters64's band-pass and notches at ``fs`` as one zero-phase kernel."""
    from scipy import signal as sps

    stages = _stages(fs, bandpass_hz, notches)
    sos = np.vstack(stages)
    kernel_decays, decays = _decays(fs, bandpass_hz, notches)
    impulse = np.zeros(2 * kernel_decays + 64)
    impulse[0] = 1.0
    h = sps.sosfilt(sos, impulse)
    g = sps.fftconvolve(h, h[::-1])  # lags -(n-1)..(n-1)
    centre = h.size - 1
    weight = np.abs(g[centre:])
    weight[1:] *= 2  # both sides
    beyond = weight.sum() - np.cumsum(weight)  # beyond[k]: share of |g| at lags > k
    half = int(np.argmax(beyond <= KERNEL_TOL * weight.sum()))
    dc_gain = _dc_gain(fs, bandpass_hz, notches)
    ends = max(half, decays)
    edge = max(ends + decays + 64, 4 * 27 * 2)  # and long enough for _filters64 to filter it (_long_enough)
    return ZeroPhase(g[centre - half: centre + half + 1].astype(np.float32), half, ends, edge, dc_gain)


def _filters_fft(y: np.ndarray, spec: PreprocessSpec) -> tuple[np.ndarray, float]:
    """_filters64 of float32 ``y`` in float32 (see above), and the filters' gain at 0 Hz."""
    if (spec.bandpass_hz is None and not _notches(spec)) or not _long_enough(y):
        return y, 1.0
    from scipy import fft as sfft

    n, key = y.shape[-1], (spec.fs, spec.bandpass_hz, _notches(spec))
    if n <= 2 * (2 * _decays(*key)[1] + 64):  # all ends (a lower bound of 2 * edge): no kernel made
        return _filters64(y.astype(np.float64), spec).astype(np.float32), _dc_gain(*key)
    zp = zero_phase(*key)
    half, ends, edge = zp.half, zp.ends, zp.edge
    if n <= 2 * edge:
        return _filters64(y.astype(np.float64), spec).astype(np.float32), zp.dc_gain
    out = np.empty_like(y)
    middle = y[..., ends - half:n - ends + half]
    size = sfft.next_fast_len(middle.shape[-1], real=True)
    wrapped = np.zeros(size, dtype=np.float32)  # the kernel as a circular one: lag -k at size - k
    wrapped[: half + 1], wrapped[size - half:] = zp.kernel[half:], zp.kernel[:half]
    spectrum = sfft.rfft(middle, n=size, axis=-1)
    spectrum *= sfft.rfft(wrapped).real  # |H|² at the bins (the kernel is even: its spectrum is real)
    out[..., ends:n - ends] = sfft.irfft(spectrum, n=size, axis=-1)[..., half:middle.shape[-1] - half]
    out[..., :ends] = _filters64(y[..., :edge].astype(np.float64), spec)[..., :ends]
    out[..., n - ends:] = _filters64(y[..., n - edge:].astype(np.float64), spec)[..., edge - ends:]
    return out, zp.dc_gain


def _preprocess_float32_fft(data: np.ndarray, fs_in: float, spec: PreprocessSpec) -> np.ndarray:
    """_preprocess_float64's steps in float32. The signal is carried less its per-channel mean (taken in float64), so
    that float32 rounds what is left of it, not a large offset: the offset goes through the resampler on its own
    (resample_poly's ends taper it to zero and its phases' gains differ from 1 by up to ~7e-4) and through the filters
    as their gain at 0 Hz."""
    x = np.asarray(data, dtype=np.float64)
    if spec.chain == "zscore-first":
        x32, offset = _zscore(x).astype(np.float32), None
    else:
        offset = x.mean(axis=-1, keepdims=True)
        x32 = np.empty(x.shape, dtype=np.float32)
        np.subtract(x, offset, out=x32, casting="same_kind")
    y = resample(x32, fs_in, spec.fs, spec.resample)
    if offset is not None and fs_in != spec.fs:
        taper = resample(np.ones(x.shape[-1]), fs_in, spec.fs, spec.resample) - 1.0
        y += offset.astype(np.float32) * taper.astype(np.float32)
    y, dc_gain = _filters_fft(y, spec)
    if spec.zscore and spec.chain == "filter-first":
        y = _zscore(y, out=y)
    elif offset is not None:
        y += (offset * dc_gain).astype(np.float32)
    return y.astype(spec.dtype, copy=False)


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
