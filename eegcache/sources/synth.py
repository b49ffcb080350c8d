"""A synthetic TUSZ-like tree: paths, EDF headers, annotations and EEG-like signals.

TUSZ cannot be shipped, so demos, tests and benchmarks run on a generated tree that honours every fact in
TUSZ_FORMAT.md (tree and names, montages, channel quirks, the unreadable start date, both annotation formats,
seizure statistics). Signals have EEG-like spectra and spatial correlation so that compression ratios are
meaningful, and seizures are rhythmic and large enough that a small model can learn them.

The output depends only on (hours, seed): the tree plan (names, durations, seizures) comes from one seeded
generator and each file's signal from its own, so ``quick_signal`` changes signals but never the plan.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

import numpy as np
import pyedflib
from scipy import fft as sfft

SPLITS = ("train", "dev", "eval")
ELECTRODES = (
    "FP1", "F3", "C3", "P3", "O1", "F7", "T3", "T5", "FZ", "CZ", "PZ",
    "FP2", "F4", "C4", "P4", "O2", "F8", "T4", "T6",
)  # fmt: skip
TCP_PAIRS = (
    ("FP1", "F7"), ("F7", "T3"), ("T3", "T5"), ("T5", "O1"), ("FP2", "F8"), ("F8", "T4"), ("T4", "T6"),
    ("T6", "O2"), ("A1", "T3"), ("T3", "C3"), ("C3", "CZ"), ("CZ", "C4"), ("C4", "T4"), ("T4", "A2"),
    ("FP1", "F3"), ("F3", "C3"), ("C3", "P3"), ("P3", "O1"), ("FP2", "F4"), ("F4", "C4"), ("C4", "P4"),
    ("P4", "O2"),
)  # fmt: skip
MONTAGES = ("01_tcp_ar", "02_tcp_le", "03_tcp_ar_a", "04_tcp_le_a")
RATES = (250, 256, 400, 512)
PHYSICAL_MAX = 4999.84
DIGITAL_MAX = 32767
PREFILTER = "HP:0.000 Hz LP:0.0 Hz N:0.0"
OLD_STYLE_SESSION = "s002_2003_07_21"
BAD_START_DATE = b"01:01:85"
MISSING_ELECTRODES = ("FZ", "PZ")
FOCAL_TYPES = ("fnsz", "cpsz", "spsz")
GENERALISED_TYPES = ("gnsz", "absz", "tnsz", "tcsz")

_TICKS = 10_000  # annotation times are integers of 0.1 ms, so 4-decimal text round-trips exactly
_MIN_GAP = 3 * _TICKS
_MIN_SEIZURE = 36_000  # 3.6 s, the shortest TUSZ seizure
_SHARE = {"train": 0.60, "dev": 0.25, "eval": 0.15}
_MONTAGE_P = (0.50, 0.25, 0.20, 0.05)
_SYNONYM = {"T3": "T7", "T4": "T8", "T5": "P7", "T6": "P8"}
_TUH_ORDER = (
    "FP1", "FP2", "F3", "F4", "C3", "C4", "P3", "P4", "O1", "O2", "F7", "F8",
    "T3", "T4", "T5", "T6", "A1", "A2", "FZ", "CZ", "PZ",
)  # fmt: skip
# Aux channel kinds and the chance a file has them; (name, kind, probability). "EEG X" names take the montage's
# reference suffix; C3P is a decoy that a substring match would mistake for C3.
_AUX = (
    ("EKG1", "ekg", 0.8), ("ROC", "eeg", 0.5), ("LOC", "eeg", 0.5), ("T1", "eeg", 0.4), ("T2", "eeg", 0.4),
    ("PHOTIC", "flat", 0.6), ("EMG", "emg", 0.3), ("26", "floating", 0.3), ("C3P", "decoy", 0.15),
)  # fmt: skip
_AUX_KIND = {name: kind for name, kind, _ in _AUX}
_SLOW_AUX = ("IBI", "BURSTS", "SUPPR")  # stored at 1 Hz
# Scalp positions (x to the right, y to the front) on a unit circle, for spatial mixing and seizure foci.
_POS = {
    "FP1": (-0.31, 0.95), "FP2": (0.31, 0.95), "F7": (-0.81, 0.59), "F3": (-0.42, 0.52), "FZ": (0.0, 0.45),
    "F4": (0.42, 0.52), "F8": (0.81, 0.59), "T3": (-1.0, 0.0), "C3": (-0.5, 0.0), "CZ": (0.0, 0.0),
    "C4": (0.5, 0.0), "T4": (1.0, 0.0), "T5": (-0.81, -0.59), "P3": (-0.42, -0.52), "PZ": (0.0, -0.45),
    "P4": (0.42, -0.52), "T6": (0.81, -0.59), "O1": (-0.31, -0.95), "O2": (0.31, -0.95),
    "A1": (-1.2, -0.15), "A2": (1.2, -0.15), "T1": (-0.95, 0.3), "T2": (0.95, 0.3),
    "LOC": (-0.55, 1.1), "ROC": (0.55, 1.1),
}  # fmt: skip
_BLINK_GAIN = {"FP1": 1.0, "FP2": 1.0, "F7": 0.3, "F8": 0.3, "F3": 0.3, "F4": 0.3, "FZ": 0.2, "LOC": -0.8, "ROC": 0.8}
_QUICK_GRID = tuple((x, y) for y in (0.7, 0.0, -0.7) for x in (-0.7, 0.0, 0.7))
_FOCI = tuple(sorted({e for pair in TCP_PAIRS for e in pair} - {"A1", "A2"}))


@dataclass(frozen=True)
class SynthRecording:
    """One generated EDF and the truth behind it, for tests and benchmarks to check readers against."""

    edf_path: Path  # absolute
    split: str  # train / dev / eval
    subject: str  # 8 lowercase letters
    session: str  # the session folder, e.g. "s001_2003" (or the older-style "s002_2003_07_21")
    montage: str  # e.g. "01_tcp_ar"
    token: str  # e.g. "t000"
    duration_s: int
    fs: float  # EEG sampling rate in the file
    events: tuple[tuple[float, float], ...]  # true seizure intervals (start_s, stop_s), sorted, disjoint
    missing_electrodes: tuple[str, ...]  # ("FZ", "PZ") for the files lacking them, else ()
    bad_start_date: bool  # header start date "01:01:85": pyedflib refuses the file, MNE reads it


@dataclass
class _Event:
    start: int  # ticks
    stop: int
    label: str
    focus: str | None  # centre electrode of a focal seizure; None when generalised
    channels: dict[str, tuple[int, int]] = field(default_factory=dict)  # TCP channel -> (start, stop) ticks


@dataclass
class _File:
    split: str
    duration: int
    subject: str = ""
    session: str = ""
    year: int = 2003
    montage: str = MONTAGES[0]
    token: int = 0
    fs: int = 250
    sex: str = "M"
    birth_year: int = 1960
    start_time: tuple[int, int, int] = (0, 0, 0)
    missing: bool = False
    synonyms: bool = False
    aux: tuple[str, ...] = ()
    slow_aux: bool = False
    order: str = "tuh"
    bad_date: bool = False
    stub_bckg: tuple[int, int] | None = None  # (start, stop) ticks of a ~1 s bckg stub row
    events: list[_Event] = field(default_factory=list)

    @property
    def stem(self) -> str:
        return f"{self.subject}_{self.session[:4]}_t{self.token:03d}"

    def relpath(self) -> Path:
        return Path("edf", self.split, self.subject, self.session, self.montage, self.stem)


def synthesize(out: Path, hours: float = 2.0, seed: int = 0, *, quick_signal: bool = False,
               file_s: int | None = None) -> list[SynthRecording]:
    """Write a TUSZ-like tree of about ``hours`` EEG-hours under ``out/edf`` and return its ground truth.

    Splits take about 60/25/15 % of the hours; a tiny ``hours`` still gives each split one file of at least 60 s
    (and eval a second, very short one), so every split has seizures.

    The same (hours, seed) gives the same bytes. ``quick_signal`` mixes the background from 9 sources instead
    of 25 (about a third less CPU, for large benchmark corpora); the tree, annotations and seizures stay the same.
    ``file_s`` makes every file exactly that long (a short-segment corpus: many files, each paying ingest's fixed
    cost per file); the names, quirks and seizure statistics stay TUSZ's.
    """
    out = Path(out).resolve()
    files = _plan(hours, np.random.default_rng([seed, 0]), file_s)
    recordings = []
    for index, f in enumerate(files):
        base = out / f.relpath()
        base.parent.mkdir(parents=True, exist_ok=True)
        channels = _signals(f, np.random.default_rng([seed, 1, index]), quick_signal)
        edf_path = base.with_suffix(".edf")
        _write_edf(edf_path, f, channels)
        _write_annotations(base, f)
        recordings.append(
            SynthRecording(
                edf_path=edf_path,
                split=f.split,
                subject=f.subject,
                session=f.session,
                montage=f.montage,
                token=f"t{f.token:03d}",
                duration_s=f.duration,
                fs=float(f.fs),
                events=tuple((e.start / _TICKS, e.stop / _TICKS) for e in f.events),
                missing_electrodes=MISSING_ELECTRODES if f.missing else (),
                bad_start_date=f.bad_date,
            )
        )
    return recordings


# ---------------------------------------------------------------------------------------------------------------
# The plan: names, durations, channel traits and seizures, all from one generator.


def _plan(hours: float, rng: np.random.Generator, file_s: int | None = None) -> list[_File]:
    total_s = max(hours, 0.0) * 3600
    if file_s is None:
        by_split = {split: _durations(split, _SHARE[split] * total_s, rng) for split in SPLITS}
    else:
        n = max(len(SPLITS), round(total_s / file_s))
        counts = {"dev": max(1, round(n * _SHARE["dev"])), "eval": max(2, round(n * _SHARE["eval"]))}
        counts["train"] = max(1, n - counts["dev"] - counts["eval"])
        by_split = {split: [_File(split, int(file_s)) for _ in range(counts[split])] for split in SPLITS}
    _assign_patients(by_split, rng)
    files = [f for split in SPLITS for f in by_split[split]]
    _assign_traits(files, by_split, rng)
    _plan_seizures(by_split, rng)
    return files


def _durations(split: str, target_s: float, rng: np.random.Generator) -> list[_File]:
    """Mostly 300 or 601 s files, some log-uniform up to 1 h (a third of the split at most, so that small
    trees still have several files), one remainder file, and very short files."""
    durations: list[int] = []
    remaining = round(target_s)
    longest = min(3600.0, max(target_s / 3, 120.0))
    while remaining >= 45 or not durations:
        u = rng.random()
        d = 300 if u < 0.45 else 601 if u < 0.75 else int(math.exp(rng.uniform(math.log(60), math.log(longest))))
        d = min(d, max(remaining, 60))
        durations.append(d)
        remaining -= d
    # TUSZ has files shorter than a 60 s window; eval always gets one so it has >= 2 files for the bad date.
    n_short = 1 if split == "eval" else len(durations) // 40
    for _ in range(n_short):
        durations.insert(int(rng.integers(0, len(durations) + 1)), int(rng.integers(5, 41)))
    return [_File(split, d) for d in durations]


def _assign_patients(by_split: dict[str, list[_File]], rng: np.random.Generator) -> None:
    """Group files into patients and sessions, with the naming quirks forced onto the first patient of a split."""
    used: set[str] = set()
    for split in SPLITS:
        files, i, first = by_split[split], 0, True
        while i < len(files):
            k = 1 + int(rng.poisson(1.3))
            if split == "train" and first:
                k = max(k, 3)  # the showcase patient: several sessions with different montages
            group, i = files[i : i + k], i + k
            subject = _new_subject(rng, used)
            _assign_sessions(group, subject, rng, split if first else "")
            first = False


def _new_subject(rng: np.random.Generator, used: set[str]) -> str:
    while True:
        name = "aaaa" + "".join(chr(97 + int(c)) for c in rng.integers(0, 26, 4))
        if name not in used:
            used.add(name)
            return name


def _assign_sessions(group: list[_File], subject: str, rng: np.random.Generator, first_of: str) -> None:
    chunks: list[list[_File]] = []
    i = 0
    while i < len(group):
        k = 1 + int(rng.poisson(0.6))
        if first_of == "train" and not chunks and len(group) > 1:
            k = min(k, len(group) - 1)  # at least two sessions
        chunks.append(group[i : i + k])
        i += k
    showcase = first_of == "train"
    number = 1 if showcase or rng.random() < 0.7 else int(rng.integers(2, 4))
    if first_of == "dev":
        number = 2  # a patient whose sessions start with a gap
    year = 2003 if showcase else int(rng.integers(2002, 2015))
    montage = _montage(rng)
    if first_of == "dev":
        montage = "03_tcp_ar_a"
    sex = "M" if rng.random() < 0.5 else "F"
    birth_year = year - int(rng.integers(1, 90))
    for j, chunk in enumerate(chunks):
        if j:
            number += 1 + (int(rng.integers(1, 3)) if rng.random() < 0.3 and not showcase else 0)
            year = min(year + int(rng.integers(0, 3)), 2017)
            if rng.random() < 0.25:
                montage = _montage(rng)
        if showcase and j < 2:
            montage, year = MONTAGES[j], 2003
        session = f"s{number:03d}_{year}"
        if showcase and (number == 2 or len(chunks) == 1):
            session, number = OLD_STYLE_SESSION, 2
        token = 1 if rng.random() < 0.2 or (first_of == "eval" and j == 0) else 0
        for f in chunk:
            f.subject, f.session, f.year, f.montage, f.token = subject, session, year, montage, token
            f.sex, f.birth_year = sex, birth_year
            token += 1 + (rng.random() < 0.15)


def _montage(rng: np.random.Generator) -> str:
    return MONTAGES[int(rng.choice(len(MONTAGES), p=_MONTAGE_P))]


def _assign_traits(files: list[_File], by_split: dict[str, list[_File]], rng: np.random.Generator) -> None:
    """Per-file rates and channel quirks, each forced onto a readable file at least once (when the tree is big
    enough), so that a reader that skips the bad-date file still meets every quirk."""
    for f in files:
        f.fs = 250 if rng.random() < 0.8 else int(rng.choice(RATES[1:]))
        f.missing = rng.random() < 0.034
        f.synonyms = rng.random() < 0.1
        f.aux = tuple(name for name, _, p in _AUX if rng.random() < p)
        f.slow_aux = rng.random() < 0.5
        f.order = str(rng.choice(["tuh", "szcore", "shuffled"], p=[0.6, 0.2, 0.2]))
        f.start_time = (int(rng.integers(7, 20)), int(rng.integers(0, 60)), int(rng.integers(0, 60)))
    evals = by_split["eval"]
    if len(evals) >= 2:
        longest = max(evals, key=lambda f: f.duration)
        candidates = [f for f in evals if f is not longest]
        regular = [f for f in candidates if f.duration >= 60] or candidates
        regular[int(rng.integers(len(regular)))].bad_date = True
    readable = [f for f in files if not f.bad_date]
    if len(files) >= 8:
        free = [f for f in readable if f.fs == 250]
        for rate in RATES[1:]:
            if free and not any(f.fs == rate for f in readable):
                free.pop(int(rng.integers(len(free)))).fs = rate
        if not any(f.synonyms for f in readable):
            readable[int(rng.integers(len(readable)))].synonyms = True
        if not any("C3P" in f.aux for f in readable):
            readable[int(rng.integers(len(readable)))].aux += ("C3P",)
    if not any(f.missing for f in by_split["train"]):
        by_split["train"][int(rng.integers(len(by_split["train"])))].missing = True
    if not any(f.slow_aux for f in readable):
        readable[0].slow_aux = True


def _plan_seizures(by_split: dict[str, list[_File]], rng: np.random.Generator) -> None:
    """About 4.5-6.5 % seizure time per split, on about half of the files, with TUSZ's edge cases forced once."""
    allocation = [pair for split in SPLITS for pair in _allocate(by_split[split], rng)]  # train first
    at_start = max(allocation, key=lambda pair: len(pair[1]))[0]
    at_end = next((f for f, _ in allocation if f is not at_start), at_start)
    for f, durations in allocation:
        f.events = _place(f, durations, rng, f is at_start, f is at_end, tight=f is at_start)
        for event in f.events:
            event.channels = _involved_channels(event, f.montage, rng)
    quiet = [f for split in SPLITS for f in by_split[split] if not f.events]
    stubs = rng.random(len(quiet)) < 0.5
    if len(quiet) >= 2 and len(set(stubs)) == 1:
        stubs[0] = not stubs[0]
    for f, stub in zip(quiet, stubs, strict=True):
        if stub:  # real stubs look like TERM,0.0119,1.0492,bckg
            start = int(rng.integers(50, 300))
            f.stub_bckg = (start, start + int(rng.integers(10_000, 10_600)))


def _allocate(files: list[_File], rng: np.random.Generator) -> list[tuple[_File, list[int]]]:
    """Draw seizure durations (lognormal, median 20 s) up to the split's target and deal them to about half of
    the files, longer files being likelier, never more than a file holds with 3 s gaps."""
    eligible = [f for f in files if not f.bad_date]
    target = rng.uniform(0.045, 0.065) * sum(f.duration for f in files) * _TICKS
    durations: list[int] = []
    while sum(durations) < target:
        drawn = min(rng.lognormal(math.log(20), 0.85), 400) * _TICKS
        durations.append(round(max(_MIN_SEIZURE, min(drawn, target - sum(durations)))))
    n_files = min(max(1, round(len(eligible) / 2)), max(1, len(durations) - 1), len(eligible))
    lengths = np.array([f.duration for f in eligible], dtype=float)
    chosen = [eligible[i] for i in sorted(rng.choice(len(eligible), n_files, replace=False, p=lengths / lengths.sum()))]
    # The longest events go one each to the longest chosen files (capped to a very short file), the rest to
    # files with room, so little seizure time is lost to capping.
    ranked = sorted(durations, reverse=True)
    dealt: list[list[int]] = [[] for _ in chosen]
    for i, d in zip(sorted(range(n_files), key=lambda i: -chosen[i].duration), ranked, strict=False):
        dealt[i].append(min(d, chosen[i].duration * _TICKS))
    for d in ranked[n_files:]:
        room = np.array([f.duration * _TICKS - sum(ds) - _MIN_GAP * len(ds) for f, ds in zip(chosen, dealt, strict=True)])
        fits = np.flatnonzero(room >= d)
        if fits.size:
            dealt[int(fits[rng.choice(fits.size, p=room[fits] / room[fits].sum())])].append(d)
    for ds in dealt:
        rng.shuffle(ds)
    return list(zip(chosen, dealt, strict=True))


def _place(f: _File, durations: list[int], rng: np.random.Generator, at_start: bool, at_end: bool, tight: bool) -> list[_Event]:
    """Lay events out in the file with >= 3 s gaps; the flags force a start at 0, an end at the file end and
    one gap of exactly 3 s."""
    total = f.duration * _TICKS
    k = len(durations)
    slack = total - sum(durations) - _MIN_GAP * (k - 1)
    weights = rng.dirichlet(np.ones(k + 1))
    if at_start:
        weights[0] = 0.0
    if at_end:
        weights[k] = 0.0
    if tight and k > 1:
        weights[1] = 0.0
    if weights.sum() == 0:
        weights[k] = 1.0
    gaps = np.floor(weights / weights.sum() * slack).astype(np.int64)
    gaps[int(np.flatnonzero(weights)[-1])] += slack - int(gaps.sum())
    events, t = [], int(gaps[0])
    for i, d in enumerate(durations):
        label, focus = _seizure_type(rng)
        events.append(_Event(t, t + d, label, focus))
        t += d + _MIN_GAP + int(gaps[i + 1])
    return events


def _seizure_type(rng: np.random.Generator) -> tuple[str, str | None]:
    if rng.random() < 0.35:
        return str(rng.choice(GENERALISED_TYPES, p=[0.55, 0.15, 0.1, 0.2])), None
    return str(rng.choice(FOCAL_TYPES, p=[0.6, 0.3, 0.1])), str(rng.choice(_FOCI))


def _spatial_weight(event: _Event, name: str) -> float:
    """How strongly an electrode takes part in a seizure: a Gaussian around a focus, or near-uniform."""
    if event.focus is None:
        return 0.5 if name in ("A1", "A2") else 0.85
    (x0, y0), (x, y) = _POS[event.focus], _POS[name]
    w = math.exp(-((x - x0) ** 2 + (y - y0) ** 2) / (2 * 0.3**2))
    return w if w >= 0.15 else 0.0


def _tcp_pairs(montage: str) -> tuple[tuple[str, str], ...]:
    if montage.endswith("_a"):
        return tuple(p for p in TCP_PAIRS if "A1" not in p and "A2" not in p)
    return TCP_PAIRS


def _involved_channels(event: _Event, montage: str, rng: np.random.Generator) -> dict[str, tuple[int, int]]:
    """Per-channel seizure spans: the strongest channel spans the whole event (so the union over channels is
    exactly the TERM event), the others start a little later and stop a little earlier."""
    pairs = [p for p in _tcp_pairs(montage) if max(_spatial_weight(event, e) for e in p) > 0]
    lead = max(pairs, key=lambda p: sum(_spatial_weight(event, e) for e in p))
    spans = {}
    length = event.stop - event.start
    for a, b in pairs:
        start, stop = event.start, event.stop
        if (a, b) != lead:
            start += int(rng.uniform(0, 0.15) * length)
            stop -= int(rng.uniform(0, 0.15) * length)
            if stop - start < _TICKS:
                start, stop = event.start, event.stop
        spans[f"{a}-{b}"] = (start, stop)
    return spans


# ---------------------------------------------------------------------------------------------------------------
# Signals (µV): 1/f background mixed across neighbouring electrodes, posterior alpha, line noise, blinks,
# and rhythmic evolving spike-wave seizures.


def _spike_wave(phase: np.ndarray) -> np.ndarray:
    """A negative spike followed by a slow wave, one per cycle, unit RMS."""
    return (-(np.exp(4.0 * (np.cos(phase) - 1.0)) - _SPIKE_MEAN) + 0.5 * np.sin(phase - 2.2)) / _SPIKE_RMS


def _spike_constants() -> tuple[float, float]:
    cycle = np.linspace(0, 2 * np.pi, 4096, endpoint=False)
    spike = np.exp(4.0 * (np.cos(cycle) - 1.0))
    wave = -(spike - spike.mean()) + 0.5 * np.sin(cycle - 2.2)
    return float(spike.mean()), float(np.sqrt(np.mean(wave**2)))


_SPIKE_MEAN, _SPIKE_RMS = _spike_constants()


def _shaped_noise(n: int, amplitude: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise of (about) unit variance with the given amplitude spectrum on rfftfreq(next_fast_len(n))."""
    m = sfft.next_fast_len(n, real=True)
    # irfft of unit complex normals scaled by a gives variance 4 * sum(a**2) / m**2: normalise up front.
    scale = m / (2 * math.sqrt(float(np.sum(amplitude.astype(np.float64) ** 2))))
    spectrum = rng.standard_normal((amplitude.size, 2), dtype=np.float32).view(np.complex64)[:, 0]
    spectrum *= amplitude * np.float32(scale)
    return sfft.irfft(spectrum, m)[:n]


def _pink(n: int, rng: np.random.Generator, beta: float, freqs: np.ndarray) -> np.ndarray:
    """1/f**beta noise, flat below 0.5 Hz and rolled off above 70 Hz."""
    amplitude = (np.maximum(freqs, 0.5) ** (-beta / 2) / np.sqrt(1 + (freqs / 70.0) ** 8)).astype(np.float32)
    amplitude[0] = 0
    return _shaped_noise(n, amplitude, rng)


def _signals(f: _File, rng: np.random.Generator, quick: bool) -> list[tuple[str, int, np.ndarray]]:
    """All channels of one file as (label, rate, µV samples), in the file's channel order."""
    fs, n = f.fs, f.duration * f.fs
    ref = "LE" if "_le" in f.montage else "REF"
    electrodes = [e for e in ELECTRODES if not (f.missing and e in MISSING_ELECTRODES)]
    if not f.montage.endswith("_a"):
        electrodes += ["A1", "A2"]
    spatial = electrodes + [a for a in f.aux if _AUX_KIND[a] == "eeg"]
    freqs = sfft.rfftfreq(sfft.next_fast_len(n, real=True), 1 / fs).astype(np.float32)

    # Every scalp channel is one mixture of shared sources: 1/f sources on a grid weighted by distance (so
    # neighbouring electrodes share components) plus a common reference, left and right alpha (8-12 Hz),
    # 60 Hz line noise and eye blinks.
    grid = np.array(_QUICK_GRID if quick else list(_POS.values()))
    sigma = 0.45 if quick else 0.3
    bump = np.exp(-0.5 * ((freqs - rng.uniform(8.5, 11.5)) / 0.6) ** 2).astype(np.float32)
    line = np.sin(2 * np.pi * 60 * np.arange(n) / fs + rng.uniform(0, 2 * np.pi)).astype(np.float32)
    sources = np.stack(
        [_pink(n, rng, rng.uniform(1.0, 1.6), freqs) for _ in range(len(grid) + 1)]
        + [_shaped_noise(n, bump, rng), _shaped_noise(n, bump, rng), line, _blinks(n, fs, rng)]
    )
    pos = np.array([_POS[c] for c in spatial])
    near = np.exp(-((pos[:, None, :] - grid[None, :, :]) ** 2).sum(-1) / (2 * sigma**2))
    mix = np.concatenate([near, np.full((len(spatial), 1), 0.35)], axis=1)
    base_rms = rng.uniform(20, 40)
    mix *= base_rms * rng.uniform(0.85, 1.15, (len(spatial), 1)) / np.linalg.norm(mix, axis=1, keepdims=True)
    alpha = base_rms * rng.uniform(0.6, 1.2) * np.clip((0.1 - pos[:, 1]) / 1.05, 0, 1)  # strongest occipitally
    left = np.clip(0.5 - 0.4 * pos[:, 0], 0.1, 0.9)
    line_gain = rng.uniform(0.3, 3.0) * rng.uniform(0.5, 1.5, len(spatial))
    blink_gain = np.array([_BLINK_GAIN.get(name, 0.0) for name in spatial])
    extra = np.stack([alpha * left, alpha * (1 - left), line_gain, blink_gain], axis=1)
    data = np.concatenate([mix, extra], axis=1).astype(np.float32) @ sources
    del sources

    background_rms = data.std(axis=1)
    for event in f.events:
        _add_seizure(data, spatial, background_rms, event, fs, rng)

    channels = {name: data[c] for c, name in enumerate(spatial)}
    for name in f.aux:
        if _AUX_KIND[name] != "eeg":
            channels[name] = _aux_signal(_AUX_KIND[name], n, fs, freqs, line, base_rms, rng)
    labels = {name: _label(name, ref, f.synonyms) for name in channels}
    order = _channel_order(list(channels), f.order, rng)
    result = [(labels[name], fs, channels[name]) for name in order]
    if f.slow_aux:
        result += [(name, 1, _slow_aux(name, f.duration, rng)) for name in _SLOW_AUX]
        if f.order == "shuffled":
            result = [result[i] for i in rng.permutation(len(result))]
    return result


def _label(name: str, ref: str, synonyms: bool) -> str:
    if name == "PHOTIC":
        return "PHOTIC PH" if ref == "LE" else "PHOTIC-REF"
    if name == "EMG":
        return "EMG-REF"
    return f"EEG {_SYNONYM.get(name, name) if synonyms else name}-{ref}"


def _channel_order(names: list[str], style: str, rng: np.random.Generator) -> list[str]:
    """TUH's usual order, the SzCORE order, or a shuffle; aux channels follow the electrodes unless shuffled."""
    if style == "shuffled":
        return [names[i] for i in rng.permutation(len(names))]
    reference = _TUH_ORDER if style == "tuh" else (*ELECTRODES, "A1", "A2")
    head = [e for e in reference if e in names]
    return head + [name for name in names if name not in head]


def _blinks(n: int, fs: int, rng: np.random.Generator) -> np.ndarray:
    """Half-sine deflections of 60-150 µV lasting 0.3 s, about 8 a minute."""
    out = np.zeros(n, dtype=np.float32)
    width = int(0.3 * fs)
    shape = np.sin(np.linspace(0, np.pi, width)).astype(np.float32)
    count = int(rng.poisson(8 * n / fs / 60))
    for start, amp in zip(rng.integers(0, max(n - width, 1), count), rng.uniform(60, 150, count), strict=True):
        out[start : start + width] += amp * shape[: n - start]
    return out


def _add_seizure(data: np.ndarray, names: list[str], rms: np.ndarray, event: _Event, fs: int, rng: np.random.Generator) -> None:
    """Rhythmic spike-wave whose frequency drifts down and amplitude grows, with raised-cosine ramps."""
    i0, i1 = event.start * fs // _TICKS, -(-event.stop * fs // _TICKS)
    length = i1 - i0
    t = np.arange(length, dtype=np.float64) / fs
    d = length / fs
    if event.label == "absz":
        f0 = f1 = rng.uniform(3.0, 3.6)
    elif event.label in GENERALISED_TYPES:
        f0, f1 = rng.uniform(4.5, 7.5), rng.uniform(2.5, 4.0)
    else:
        f0, f1 = rng.uniform(5.5, 8.0), rng.uniform(3.0, 5.0)
    freq = f0 + (f1 - f0) * t / d + 0.15 * np.sin(2 * np.pi * t / rng.uniform(3, 8))
    phase = 2 * np.pi * np.cumsum(freq) / fs + rng.uniform(0, 2 * np.pi)
    ramp = min(2.0, d / 4)
    edge = np.clip(np.minimum(t, d - t) / ramp, 0, 1)
    envelope = (0.5 - 0.5 * np.cos(np.pi * edge)) * (0.7 + 0.3 * t / d) * rng.uniform(3.0, 6.0)
    for c, name in enumerate(names):
        w = _spatial_weight(event, name) if name in _POS and name not in ("LOC", "ROC") else 0.0
        if w:
            wave = _spike_wave(phase + rng.uniform(0, 0.5))
            data[c, i0:i1] += (rms[c] * w * envelope * wave).astype(np.float32)


def _aux_signal(
    kind: str, n: int, fs: int, freqs: np.ndarray, line: np.ndarray, base_rms: float, rng: np.random.Generator
) -> np.ndarray:
    if kind == "ekg":
        return _ekg(n, fs, rng)
    if kind == "flat":
        return np.zeros(n, dtype=np.float32)
    if kind == "emg":
        return rng.uniform(3, 10) * rng.standard_normal(n, dtype=np.float32)
    if kind == "floating":  # an unconnected input picks up mains
        return rng.uniform(5, 30) * line + rng.standard_normal(n, dtype=np.float32)
    return 2 * base_rms * _pink(n, rng, 1.3, freqs)  # the decoy: unrelated to C3


def _ekg(n: int, fs: int, rng: np.random.Generator) -> np.ndarray:
    """QRS spikes with T waves at 55-95 beats per minute, with beat-to-beat jitter."""
    period = 60 / rng.uniform(55, 95)
    beats = np.cumsum(rng.normal(period, 0.03 * period, int(n / fs / period) + 2)) * fs
    beats = beats[beats < n].astype(np.int64)
    tw = np.arange(int(0.6 * fs)) / fs
    template = np.exp(-0.5 * ((tw - 0.05) / 0.012) ** 2) + 0.3 * np.exp(-0.5 * ((tw - 0.3) / 0.05) ** 2)
    out = np.zeros(n + template.size, dtype=np.float32)
    for b in beats:
        out[b : b + template.size] += template
    return rng.uniform(150, 600) * out[:n] + 5 * rng.standard_normal(n, dtype=np.float32)


def _slow_aux(name: str, duration: int, rng: np.random.Generator) -> np.ndarray:
    """The 1 Hz trend channels: IBI and BURSTS mostly zero, SUPPR a suppression percentage."""
    if name == "SUPPR":
        return np.clip(np.cumsum(rng.normal(0, 3, duration)) + 20, 0, 100).round().astype(np.float32)
    return np.zeros(duration, dtype=np.float32)


# ---------------------------------------------------------------------------------------------------------------
# Writers.


def _write_edf(path: Path, f: _File, channels: list[tuple[str, int, np.ndarray]]) -> None:
    """Plain EDF, 1 s records, TUH's header conventions; then the one bad start date patched in by hand."""
    gain = PHYSICAL_MAX / DIGITAL_MAX  # µV per digital step (both ranges are symmetric)
    common = {
        "dimension": "uV",
        "physical_max": PHYSICAL_MAX,
        "physical_min": -PHYSICAL_MAX,
        "digital_max": DIGITAL_MAX,
        "digital_min": -DIGITAL_MAX,
        "prefilter": PREFILTER,
        "transducer": "",
    }
    writer = pyedflib.EdfWriter(str(path), len(channels), file_type=pyedflib.FILETYPE_EDF)
    try:
        writer.setSignalHeaders([{**common, "label": label, "sample_frequency": rate} for label, rate, _ in channels])
        writer.setHeader(
            {
                "technician": "",
                "recording_additional": "",
                "patientname": f.subject,
                "patient_additional": f"Age:{f.year - f.birth_year}",
                "patientcode": f.subject,
                "equipment": "",
                "admincode": "",
                "sex": f.sex,
                "startdate": datetime(f.year, 1, 1, *f.start_time),
                "birthdate": date(f.birth_year, 1, 1),
            }
        )
        records = np.empty((f.duration, sum(rate for _, rate, _ in channels)), dtype=np.int16)
        col = 0
        for _, rate, samples in channels:
            digital = np.clip(np.rint(samples / gain), -DIGITAL_MAX, DIGITAL_MAX).astype(np.int16)
            records[:, col : col + rate] = digital.reshape(f.duration, rate)
            col += rate
        for record in records:
            if writer.blockWriteDigitalShortSamples(record) < 0:
                raise OSError(f"{path.name}: pyedflib failed to write a data record")
    finally:
        writer.close()
    if f.bad_date:
        with open(path, "r+b") as fh:
            fh.seek(168)
            fh.write(BAD_START_DATE)


def _ticks(t: int) -> str:
    return f"{t // _TICKS}.{t % _TICKS:04d}"


def _write_annotations(base: Path, f: _File) -> None:
    """The .csv_bi (TERM events) and the per-channel .csv whose seizure rows union to the same events."""
    head = (
        "# version = csv_v1.0.0\n"
        f"# bname = {f.stem}\n"
        f"# duration = {f.duration:.2f} secs\n"
        "# montage_file = $NEDC_NFC/lib/nedc_eas_default_montage.txt\n"
        "#\n"
        "channel,start_time,stop_time,label,confidence\n"
    )
    total = f.duration * _TICKS
    if f.events:
        term = [("TERM", e.start, e.stop, "seiz") for e in f.events]
    elif f.stub_bckg:
        term = [("TERM", *f.stub_bckg, "bckg")]
    else:
        term = [("TERM", 0, total, "bckg")]
    rows = []
    for a, b in _tcp_pairs(f.montage):
        channel = f"{a}-{b}"
        spans = sorted((e.channels[channel][0], e.channels[channel][1], e.label) for e in f.events if channel in e.channels)
        t = 0
        for start, stop, label in spans:
            if start > t:
                rows.append((channel, t, start, "bckg"))
            rows.append((channel, start, stop, label))
            t = stop
        if t < total:
            rows.append((channel, t, total, "bckg"))
    for suffix, body in ((".csv_bi", term), (".csv", rows)):
        lines = "".join(f"{c},{_ticks(s)},{_ticks(e)},{label},1.0000\n" for c, s, e, label in body)
        base.with_suffix(suffix).write_text(head + lines)
