"""Reading EDF files: header validation, electrode matching, and the pyedflib → MNE fallback.

The header is checked by hand before any reader touches the file, because readers disagree on damaged files
(MNE happily reads a truncated file as a shorter recording). A file that passes is read with pyedflib; where
pyedflib refuses a file that MNE reads (the TUSZ start date ``01:01:85``), MNE is used and recorded.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from eegcache.errors import InputError
from eegcache.pipeline.montage import ELECTRODE_SYNONYMS, MontageError, canon, electrode_index, referential_token  # noqa: F401
from eegcache.pipeline.montage import plan as montage_plan

if TYPE_CHECKING:
    import numpy as np

# numpy (~0.1 s to import) is imported by the functions that use it: `eegcache ingest` of an unchanged tree needs none.

MAX_SIGNALS = 4096
MAX_SAMPLES_PER_RECORD = 1 << 20
MIN_RATE_HZ, MAX_RATE_HZ = 10.0, 100_000.0  # EEG electrodes; the 1 Hz auxiliary channels are never picked
MAX_AMPLITUDE_UV = 1e9  # a kilovolt: beyond any amplifier, a broken calibration


class EdfError(InputError):
    """A file that cannot be ingested; the message is a sentence for a person."""


@dataclass(frozen=True)
class EdfHeader:
    n_records: int
    record_s: float
    labels: tuple[str, ...]
    samples_per_record: tuple[int, ...]
    header_bytes: int
    file_size: int

    @property
    def rates(self) -> tuple[float, ...]:
        return tuple(n / self.record_s for n in self.samples_per_record)

    @property
    def duration_s(self) -> float:
        return self.n_records * self.record_s


@dataclass(frozen=True)
class RawRecording:
    """Picked electrodes in µV, in the requested order, at the file's EEG rate."""

    data: np.ndarray
    fs: float
    reader: str
    filled: tuple[str, ...]
    duration_s: float
    names: tuple[str, ...] = ()  # the output channels (the montage's names)


def _field(raw: bytes, what: str, path: Path) -> str:
    try:
        return raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise EdfError(f"{path.name}: unreadable EDF header ({what} is not ASCII)") from None


def _number(text: str, what: str, path: Path, kind=int):
    try:
        value = kind(text)
    except ValueError:
        raise EdfError(f"{path.name}: unreadable EDF header ({what} is {text!r}, not a number)") from None
    if kind is float and not math.isfinite(value):
        raise EdfError(f"{path.name}: unreadable EDF header ({what} is {text!r})")
    return value


def read_header(path: Path) -> EdfHeader:
    """Parse and sanity-check the fixed EDF header; never allocate more than the header declares sensibly."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            fixed = f.read(256)
            if len(fixed) < 256:
                raise EdfError(f"{path.name}: not an EDF file ({size} bytes, shorter than the 256-byte header)")
            if fixed[:8] != b"0       ":
                raise EdfError(f"{path.name}: not an EDF file (the first 8 bytes are {fixed[:8]!r}, not '0')")
            ns = _number(_field(fixed[252:256], "signal count", path), "signal count", path)
            if not 0 < ns <= MAX_SIGNALS:
                raise EdfError(f"{path.name}: unreadable EDF header (signal count {ns})")
            header_bytes = _number(_field(fixed[184:192], "header size", path), "header size", path)
            if header_bytes != 256 * (ns + 1):
                raise EdfError(
                    f"{path.name}: unreadable EDF header (header size {header_bytes} does not match "
                    f"{ns} signals, which need {256 * (ns + 1)} bytes)"
                )
            rest = f.read(256 * ns)
    except PermissionError:
        raise EdfError(f"{path.name}: permission denied reading the file") from None
    except IsADirectoryError:
        raise EdfError(f"{path.name}: is a directory, not an EDF file") from None
    except OSError as exc:
        raise EdfError(f"{path.name}: cannot read the file ({exc.strerror or exc})") from None
    if len(rest) < 256 * ns:
        raise EdfError(f"{path.name}: truncated EDF header ({size} bytes, the header alone needs {header_bytes})")
    n_records = _number(_field(fixed[236:244], "record count", path), "record count", path)
    record_s = _number(_field(fixed[244:252], "record duration", path), "record duration", path, float)
    if n_records == 0:
        raise EdfError(f"{path.name}: zero-length recording (0 data records)")
    if n_records < 0:
        raise EdfError(f"{path.name}: unreadable EDF header (record count {n_records})")
    if record_s <= 0:
        raise EdfError(f"{path.name}: unreadable EDF header (record duration {record_s} s)")

    def column(offset: int, width: int) -> list[str]:
        start = offset * ns
        return [_field(rest[start + i * width : start + (i + 1) * width], "signal field", path) for i in range(ns)]

    labels = column(0, 16)
    spr_text = column(16 + 80 + 8 * 5 + 80, 8)
    spr = [_number(t, "samples per record", path) for t in spr_text]
    if any(not 0 < n <= MAX_SAMPLES_PER_RECORD for n in spr):
        raise EdfError(f"{path.name}: unreadable EDF header (samples per record {spr})")
    expected = header_bytes + n_records * sum(spr) * 2
    if size < expected:
        raise EdfError(
            f"{path.name}: truncated EDF ({size} bytes; the header declares {n_records} records, "
            f"which need {expected} bytes)"
        )
    return EdfHeader(n_records, record_s, tuple(labels), tuple(spr), header_bytes, size)


def electrode(label: str) -> str | None:
    """Electrode name of a channel label by its parsed token (``EEG T7-REF`` → ``T3``); never by substring."""
    token = referential_token(label)
    return None if token is None else canon(token)


def pick_channels(labels: tuple[str, ...], wanted: tuple[str, ...]) -> tuple[list[int | None], list[str]]:
    """Index of each wanted electrode among the labels (None where absent) and the missing names.

    An exact token match wins over a synonym (a file with both ``T3`` and ``T7`` uses ``T3``)."""
    index = electrode_index(labels)
    picks = [index.get(canon(name)) for name in wanted]
    return picks, [name for name, idx in zip(wanted, picks, strict=True) if idx is None]


def read_recording(path: Path, channels: tuple[str, ...], missing_policy: str = "fail",
                   montage: str = "referential") -> RawRecording:
    """Read ``montage`` (see ``eegcache.pipeline.montage``) in µV: for ``referential`` the wanted electrodes as stored.
    Missing electrodes (or pairs) fail unless the policy is ``zero``; a file that cannot supply the montage at all
    fails with what it lacks."""
    import numpy as np  # see the top

    header = read_header(path)
    try:
        recipe = montage_plan(header.labels, montage, channels, missing_policy)
    except MontageError as exc:
        raise EdfError(f"{path.name}: {exc}") from None
    present = list(recipe.sources)
    rates = {header.rates[i] for i in present}
    if len(rates) != 1:
        raise EdfError(f"{path.name}: the required electrodes have different sampling rates {sorted(rates)}")
    fs = rates.pop()
    if not MIN_RATE_HZ <= fs <= MAX_RATE_HZ:
        raise EdfError(f"{path.name}: implausible EEG sampling rate {fs:g} Hz "
                       f"(samples per record / record duration; expected {MIN_RATE_HZ:g}–{MAX_RATE_HZ:g} Hz)")
    n = header.n_records * header.samples_per_record[present[0]]
    # A referential montage is a plain copy of the picked rows (the stored values of every earlier release): each
    # electrode is read straight into its output row, and rows of zero-filled electrodes stay zero. Other montages
    # read the sources, then combine them.
    if montage == "referential":
        targets = [(int(row), present[int(col)]) for row, col in zip(*np.nonzero(recipe.matrix), strict=True)]
        rows = np.zeros((len(recipe.names), n), dtype=np.float64)
    else:
        targets = list(enumerate(present))
        rows = np.zeros((len(present), n), dtype=np.float64)
    try:
        _read_pyedflib(path, targets, rows)
        reader = "pyedflib"
    except Exception as first:  # noqa: BLE001 - pyedflib raises OSError or plain Exception by version
        rows[:] = 0.0
        try:
            signals = _read_mne(path, [header.labels[i] for i in present])
        except Exception as second:  # noqa: BLE001
            raise EdfError(f"{path.name}: unreadable EDF (pyedflib: {first}; mne: {second})") from None
        for row, index in targets:
            signal = signals[present.index(index)]
            rows[row, : min(n, signal.shape[0])] = signal[:n]
        reader = "mne"
    data = rows if montage == "referential" else recipe.apply(rows)
    # One pass each for min and max (NaN propagates through both, so a non-finite value fails too).
    if data.size and not max(-float(data.min()), float(data.max())) <= MAX_AMPLITUDE_UV:
        raise EdfError(f"{path.name}: the signal holds non-finite or implausible values (above {MAX_AMPLITUDE_UV:g} µV): "
                       "check the physical range of its channels")
    return RawRecording(data, fs, reader, recipe.filled, header.duration_s, recipe.names)


def _read_pyedflib(path: Path, targets: list[tuple[int, int]], out: np.ndarray) -> None:
    """Each (row, signal index) of ``targets``: the signal in µV into ``out[row]`` (as much of it as fits), through
    the buffer-filling call behind ``EdfReader.readSignal`` (no array per signal, no copy)."""
    import pyedflib

    with pyedflib.EdfReader(str(path)) as reader:
        counts = reader.getNSamples()
        for row, index in targets:
            m = min(out.shape[1], int(counts[index]))
            reader.readsignal(index, 0, m, out[row, :m])


def _read_mne(path: Path, names: list[str]) -> list[np.ndarray]:
    import mne

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # Only the wanted channels: MNE resamples every included channel to the highest included rate, so a
        # faster auxiliary channel must not be among them.
        raw = mne.io.read_raw_edf(str(path), include=names, preload=False, verbose="error")
        data = raw.get_data(picks=names, units="uV")
    return list(data)
