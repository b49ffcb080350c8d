"""The declared preprocessing spec: every field is part of the cache key.

The spec is plain data so it can be serialised canonically and hashed. Code changes that alter outputs bump
``PIPELINE_VERSION`` instead of hashing code (hashing pickled functions gives false hits and misses).
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

PIPELINE_VERSION = "eegcache-preprocess/1"
LABEL_RULES_VERSION = "eegcache-labels/1"

SZCORE_CHANNELS = (
    "Fp1", "F3", "C3", "P3", "O1", "F7", "T3", "T5", "Fz", "Cz", "Pz",
    "Fp2", "F4", "C4", "P4", "O2", "F8", "T4", "T6",
)
MISSING_POLICIES = ("fail", "zero")
DTYPES = ("float32", "float16")
MONTAGES = ("referential", "average", "double-banana", "tcp")
DEFAULT_MONTAGE = "referential"
CHAINS = ("filter-first", "zscore-first")
RESAMPLERS = ("poly", "fft")
# How the declared steps are computed (eegcache.pipeline.preprocess). float64: float64 throughout, the filters run
# sample by sample (sosfiltfilt, filtfilt), the only way before this field existed. float32-fft: float32, the
# zero-phase filters applied as one FFT convolution with their combined zero-phase impulse response, the float64
# filters for the first and last ~11 s (at 256 Hz); float64 within 1e-4 x std + 4e-6 x peak per channel
# (preprocess.FLOAT32_FFT_ATOL, _RTOL), in 0.35-0.7x its CPU time.
COMPUTES = ("float32-fft", "float64")
DEFAULT_COMPUTE = "float32-fft"


@dataclass(frozen=True)
class WindowFilter:
    """A per-window, read-time filter a pipeline may declare (SeizureTransformer filters each 60 s window): a causal
    Butterworth band-pass of ``order`` (``scipy.signal.lfilter``, transfer-function form), then causal notches
    (``iirnotch``, quality ``notch_q``) in the order given. Applied by the datasets and the evaluator to every window
    as it is read (after zero-padding a short tail), never to the stored signal: it is part of the pipeline's spec
    (and so of its digest) but not of the objects' keys, so pipelines differing only here share their objects.
    The notch frequencies are used as declared (not scaled to a recording's power line)."""

    bandpass_hz: tuple[float, float] | None = (0.5, 120.0)
    order: int = 3
    notch_hz: tuple[float, ...] = ()
    notch_q: float = 30.0

    def __post_init__(self) -> None:
        if self.bandpass_hz is not None:
            object.__setattr__(self, "bandpass_hz", tuple(float(x) for x in self.bandpass_hz))
            if len(self.bandpass_hz) != 2 or not 0 < self.bandpass_hz[0] < self.bandpass_hz[1]:
                raise ValueError(f"window_filter bandpass_hz {self.bandpass_hz} must be [low, high] with 0 < low < high")
        object.__setattr__(self, "notch_hz", tuple(float(x) for x in self.notch_hz))
        object.__setattr__(self, "order", int(self.order))
        object.__setattr__(self, "notch_q", float(self.notch_q))
        if not 1 <= self.order <= 8:
            raise ValueError(f"window_filter order must lie in 1..8, got {self.order}")
        if any(f <= 0 for f in self.notch_hz) or self.notch_q <= 0:
            raise ValueError("window_filter notch frequencies and notch_q must be > 0")

    def check(self, fs: float) -> None:
        if self.bandpass_hz is not None and not self.bandpass_hz[1] < fs / 2:
            raise ValueError(f"window_filter bandpass_hz {self.bandpass_hz} must end below fs/2 ({fs / 2})")
        for f0 in self.notch_hz:
            if not f0 < fs / 2:
                raise ValueError(f"window_filter notch {f0} Hz must lie below fs/2 ({fs / 2})")

    def to_dict(self) -> dict[str, Any]:
        return {"bandpass_hz": list(self.bandpass_hz) if self.bandpass_hz is not None else None, "order": self.order,
                "notch_hz": list(self.notch_hz), "notch_q": self.notch_q}

    @classmethod
    def from_value(cls, value: Any) -> WindowFilter | None:
        if value is None or isinstance(value, WindowFilter):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"window_filter must be a table (bandpass_hz, order, notch_hz, notch_q), got {value!r}")
        unknown = set(value) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown window_filter setting(s): {', '.join(sorted(unknown))}")
        return cls(**value)


@dataclass(frozen=True)
class PreprocessSpec:
    """What turns an EDF into the stored signal. Defaults follow SeizureTransformer / SzCORE."""

    fs: float = 256.0
    channels: tuple[str, ...] = SZCORE_CHANNELS
    bandpass_hz: tuple[float, float] | None = (0.5, 120.0)
    notch_hz: tuple[float, ...] = (60.0,)
    zscore: bool = True
    dtype: str = "float32"
    missing_electrodes: str = "fail"
    # Fields added after the first release: written into the canonical JSON only when they differ from their
    # defaults, so that every spec (and so every key) of an existing cache stays what it was.
    montage: str = DEFAULT_MONTAGE  # referential | average | double-banana | tcp (eegcache.pipeline.montage)
    mains_notch: bool = True  # notch_hz follows the recording's declared power line (BIDS PowerLineFrequency)
    # The reference's chain (keruiwu/SeizureTransformer): z-score of the raw signal first, then FFT resampling
    # (scipy.signal.resample), then the filters; its 1 Hz notch is not a mains frequency, so it is never scaled.
    chain: str = "filter-first"  # filter-first: resample, filter, z-score last | zscore-first: z-score, resample, filter
    resample: str = "poly"  # poly: scipy.signal.resample_poly by the exact ratio | fft: scipy.signal.resample
    fixed_notch_hz: tuple[float, ...] = ()  # notches applied as given (after notch_hz), whatever the power line
    window_filter: WindowFilter | None = None  # applied per window on read (not stored; see WindowFilter)
    # New specs compute in float32 with FFT filters; a stored spec that does not name it (every spec written before
    # the field existed) means float64 (see from_dict), so an existing pipeline keeps its algorithm and its keys.
    compute: str = DEFAULT_COMPUTE  # float32-fft | float64 (COMPUTES)

    def __post_init__(self) -> None:
        # Numbers are normalised so that equal specs serialise (and so key) equally: fs=256 and fs=256.0 are one.
        object.__setattr__(self, "fs", float(self.fs))
        object.__setattr__(self, "channels", tuple(self.channels))
        if self.bandpass_hz is not None:
            object.__setattr__(self, "bandpass_hz", tuple(float(x) for x in self.bandpass_hz))
        object.__setattr__(self, "notch_hz", tuple(float(x) for x in self.notch_hz))
        object.__setattr__(self, "fixed_notch_hz", tuple(float(x) for x in self.fixed_notch_hz))
        object.__setattr__(self, "window_filter", WindowFilter.from_value(self.window_filter))
        if not self.fs > 0:
            raise ValueError(f"fs must be positive, got {self.fs}")
        if not self.channels:
            raise ValueError("channels must name at least one electrode")
        if self.bandpass_hz is not None:
            low, high = self.bandpass_hz
            if not 0 <= low < high < self.fs / 2:
                raise ValueError(f"bandpass_hz {self.bandpass_hz} must satisfy 0 <= low < high < fs/2 ({self.fs / 2})")
        for f0 in self.notch_hz:
            if not 0 < f0 < self.fs / 2:
                raise ValueError(f"notch frequency {f0} Hz must lie between 0 and fs/2 ({self.fs / 2})")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.missing_electrodes not in MISSING_POLICIES:
            raise ValueError(f"missing_electrodes must be one of {MISSING_POLICIES}, got {self.missing_electrodes!r}")
        if self.montage not in MONTAGES:
            raise ValueError(f"montage must be one of {MONTAGES}, got {self.montage!r}")
        if not isinstance(self.mains_notch, bool):
            raise ValueError(f"mains_notch must be true or false, got {self.mains_notch!r}")
        for f0 in self.fixed_notch_hz:
            if not 0 < f0 < self.fs / 2:
                raise ValueError(f"fixed notch frequency {f0} Hz must lie between 0 and fs/2 ({self.fs / 2})")
        if self.chain not in CHAINS:
            raise ValueError(f"chain must be one of {CHAINS}, got {self.chain!r}")
        if self.chain == "zscore-first" and not self.zscore:
            raise ValueError("chain 'zscore-first' z-scores first: it needs zscore = true")
        if self.resample not in RESAMPLERS:
            raise ValueError(f"resample must be one of {RESAMPLERS}, got {self.resample!r}")
        if self.window_filter is not None:
            self.window_filter.check(self.fs)
        if self.compute not in COMPUTES:
            raise ValueError(f"compute must be one of {COMPUTES}, got {self.compute!r}")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["channels"] = list(self.channels)
        data["bandpass_hz"] = list(self.bandpass_hz) if self.bandpass_hz is not None else None
        data["notch_hz"] = list(self.notch_hz)
        data["fixed_notch_hz"] = list(self.fixed_notch_hz)
        data["window_filter"] = self.window_filter.to_dict() if self.window_filter is not None else None
        for name, before in _ABSENT.items():  # absent at the value it had before it existed: existing keys never change
            if data[name] == before:
                del data[name]
        return data

    def for_recording(self, power_line_hz: float | None) -> PreprocessSpec:
        """The spec one recording is built with: with ``mains_notch`` and a declared power-line frequency L (BIDS
        ``PowerLineFrequency``), the notch frequencies are scaled so that the first becomes L (``[60]`` -> ``[50]``,
        ``[60, 120]`` -> ``[50, 100]``). A recording that declares nothing (TUSZ trees) keeps ``notch_hz``, so its
        spec, and its key, are the pipeline's. This resolved spec is what the object's key hashes and records."""
        if not self.mains_notch or power_line_hz is None or not self.notch_hz or power_line_hz == self.notch_hz[0]:
            return self
        scale = float(power_line_hz) / self.notch_hz[0]
        return dataclasses.replace(self, notch_hz=tuple(round(f * scale, 6) for f in self.notch_hz))

    def stored(self) -> PreprocessSpec:
        """The part of the spec that makes the stored signal (without the read-time ``window_filter``): what the
        objects' keys hash, so pipelines that differ only in read-time steps share their objects."""
        return self if self.window_filter is None else dataclasses.replace(self, window_filter=None)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessSpec:
        """A spec as stored (``to_dict``, canonical JSON: a pipeline's, an object's). A field it does not name has
        the value it had before the field existed (``compute``: float64), which is not always today's default."""
        return cls.from_settings({**{k: v for k, v in _ABSENT.items() if k not in data}, **data})

    @classmethod
    def from_settings(cls, data: dict[str, Any]) -> PreprocessSpec:
        """A spec from settings a person wrote (config file, recipe, flags): a field not given has its default."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown preprocessing setting(s): {', '.join(sorted(unknown))}")
        values = dict(data)
        if values.get("bandpass_hz") == []:  # TOML has no null: an empty list is "no band-pass"
            values["bandpass_hz"] = None
        if "notch_hz" in values:
            notch = values["notch_hz"]
            values["notch_hz"] = [] if notch is None else notch if isinstance(notch, list | tuple) else [notch]
        return cls(**values)

    def canonical_json(self) -> str:
        """Stable text for hashing: sorted keys, no whitespace, floats as Python writes them."""
        return _canonical_json(self)


@lru_cache(maxsize=256)  # specs are frozen: serialised once per spec, not once per file
def _canonical_json(spec: PreprocessSpec) -> str:
    return json.dumps(spec.to_dict(), sort_keys=True, separators=(",", ":"))


# Fields added after the first release, at the value each had before it existed (every earlier spec behaved so):
# absent from the canonical JSON at that value (so every earlier key stays what it was) and read back as it. It is
# the default for all but ``compute``, whose default is the newer float32-fft.
_ABSENT = {"montage": DEFAULT_MONTAGE, "mains_notch": True, "chain": "filter-first", "resample": "poly",
           "fixed_notch_hz": [], "window_filter": None, "compute": "float64"}


@dataclass(frozen=True)
class IngestConfig:
    """Everything an ingest run takes besides the source tree and the cache.

    ``explicit`` names the spec fields the user set (config file or flags); the others come from the stored
    pipeline when it exists, so ``ingest --stride 10`` needs no repetition of the preprocessing flags. ``None``
    means the whole spec is explicit (library callers who build a ``PreprocessSpec``)."""

    spec: PreprocessSpec = field(default_factory=PreprocessSpec)
    window_s: float = 60.0
    stride_s: float = 60.0
    workers: int = 1
    pipeline: str = "default"
    dataset: str | None = None  # None: recognised from the tree (see eegcache.sources.datasets)
    replace: bool = False  # rebuild the pipeline with a changed spec instead of refusing
    layout: str | None = None  # None: recognised from the tree; "bids" or "folder" forces it (eegcache.sources.datasets)
    explicit: frozenset[str] | None = None
    retry_failed: bool = False  # read files again that failed before and have not changed since


TOP_LEVEL = ("window", "stride", "workers", "pipeline", "dataset", "replace", "layout", "retry_failed")
LAYOUTS = ("auto", "tusz", "bids", "folder")


def load_config(path: Path | None, overrides: dict[str, Any] | None = None, recipe=None) -> IngestConfig:
    """Read a TOML config (``[preprocess]`` table plus top-level ``window``/``stride``/``workers``/``pipeline``/
    ``dataset``) and apply
    command-line overrides on top. Unknown keys are errors, not silently ignored settings. ``recipe``
    (``eegcache.recipes.Recipe``) supplies the pipeline's name, window set and spec beneath the file and flags."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ValueError(f"config file {path}: {exc}") from exc
    if recipe is not None:
        base = recipe.ingest_settings()
        data = {**{k: v for k, v in base.items() if k != "preprocess"}, **data,
                "preprocess": {**base["preprocess"], **data.get("preprocess", {})}}
    preprocess = dict(data.pop("preprocess", {}))
    top = {k: data.pop(k) for k in TOP_LEVEL if k in data}
    if data:
        raise ValueError(f"config file {path}: unknown setting(s): {', '.join(sorted(data))}")
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key in TOP_LEVEL:
            top[key] = value
        else:
            preprocess[key] = value
    spec = PreprocessSpec.from_settings(preprocess)
    pipeline = str(top.get("pipeline", "default"))
    if not pipeline.strip() or len(pipeline) > 128:
        raise ValueError(f"pipeline name {pipeline!r} must be 1 to 128 characters")
    dataset = top.get("dataset")
    if dataset is not None and (not str(dataset).strip() or len(str(dataset)) > 128):
        raise ValueError(f"dataset name {dataset!r} must be 1 to 128 characters")
    layout = top.get("layout")
    if layout is not None and layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    return IngestConfig(
        spec=spec,
        layout=None if layout in (None, "auto") else str(layout),
        window_s=float(top.get("window", 60.0)),
        stride_s=float(top.get("stride", 60.0)),
        workers=int(top.get("workers", 1)),
        pipeline=pipeline,
        dataset=None if dataset is None else str(dataset),
        replace=bool(top.get("replace", False)),
        retry_failed=bool(top.get("retry_failed", False)),
        explicit=frozenset(preprocess),
    )
