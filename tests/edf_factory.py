"""Writers of real TUSZ-shaped test inputs: plain EDF files (pyedflib) and annotation files in the exact formats.

Every electrode carries a sinusoid at its own frequency (``ELECTRODE_HZ``) so that a test can tell, from the
dominant frequency of a stored channel, which source channel was picked. The decoy ``EEG C3P-REF`` and the other
auxiliary channels carry frequencies no electrode uses.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pyedflib

PHYSICAL_MAX = 4999.84
DIGITAL_MAX = 32767
GAIN_UV = 2 * PHYSICAL_MAX / (2 * DIGITAL_MAX)  # µV per digital step
PREFILTER = "HP:0.000 Hz LP:0.0 Hz N:0.0"
FS = 256.0  # the default target rate of the cache
SPLITS = ("train", "dev", "eval")
MONTAGES = {"01_tcp_ar": "REF", "02_tcp_le": "LE", "03_tcp_ar_a": "REF", "04_tcp_le_a": "LE"}
RATES = (250, 256, 400, 512)

# The default spec order (SzCORE), spelled as TUH labels spell electrodes.
SZCORE = ("FP1", "F3", "C3", "P3", "O1", "F7", "T3", "T5", "FZ", "CZ", "PZ",
          "FP2", "F4", "C4", "P4", "O2", "F8", "T4", "T6")  # fmt: skip
SPEC_NAMES = ("Fp1", "F3", "C3", "P3", "O1", "F7", "T3", "T5", "Fz", "Cz", "Pz",
              "Fp2", "F4", "C4", "P4", "O2", "F8", "T4", "T6")  # fmt: skip
TUH_ORDER = ("FP1", "FP2", "F3", "F4", "C4", "C3", "P3", "P4", "O1", "O2", "F7", "F8",
             "T3", "T4", "T5", "T6", "A1", "A2", "FZ", "CZ", "PZ")  # fmt: skip (C4 before C3 on purpose)
SYNONYMS = {"T3": "T7", "T4": "T8", "T5": "P7", "T6": "P8"}
ELECTRODE_HZ = {name: 3.0 + 2.0 * i for i, name in enumerate(SZCORE)}  # 3, 5, ..., 39 Hz
ELECTRODE_HZ.update({"A1": 41.0, "A2": 43.0})
DECOY_HZ = 47.0  # EEG C3P-REF: a substring match would take it for C3
EKG_HZ = 51.0
TCP_CHANNELS = ("FP1-F7", "F7-T3", "T3-T5", "T5-O1", "FP2-F8", "F8-T4", "T4-T6", "T6-O2", "A1-T3", "T3-C3",
                "C3-CZ", "CZ-C4", "C4-T4", "T4-A2", "FP1-F3", "F3-C3", "C3-P3", "P3-O1", "FP2-F4", "F4-C4",
                "C4-P4", "P4-O2")  # fmt: skip
BAD_START_DATE = b"01:01:85"


@dataclass(frozen=True)
class Channel:
    """One EDF signal: its 16-character label, its rate in Hz and its samples in µV."""

    label: str
    fs: int
    samples: np.ndarray


def tusz_path(
    root: Path, split: str, patient: str, session: int, year: int, montage: str, token: int, session_suffix: str = ""
) -> Path:
    """``edf/<split>/<patient>/sNNN_YYYY[suffix]/<montage>/<patient>_sNNN_tNNN.edf`` under ``root``."""
    session_dir = f"s{session:03d}_{year}{session_suffix}"
    return Path(root, "edf", split, patient, session_dir, montage, f"{patient}_s{session:03d}_t{token:03d}.edf")


def tone(freq: float, fs: int, duration_s: float, amplitude: float = 60.0, phase: float = 0.0) -> np.ndarray:
    t = np.arange(round(duration_s * fs)) / fs
    return amplitude * np.sin(2 * np.pi * freq * t + phase)


def write_edf(path: Path, channels: Sequence[Channel], start: datetime = datetime(2003, 1, 1, 10, 0, 0)) -> Path:
    """Plain EDF (not EDF+), 1 s records, TUH's physical/digital ranges and prefilter."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    common = {
        "dimension": "uV", "physical_max": PHYSICAL_MAX, "physical_min": -PHYSICAL_MAX,
        "digital_max": DIGITAL_MAX, "digital_min": -DIGITAL_MAX, "prefilter": PREFILTER, "transducer": "",
    }  # fmt: skip
    writer = pyedflib.EdfWriter(str(path), len(channels), file_type=pyedflib.FILETYPE_EDF)
    try:
        writer.setSignalHeaders([{**common, "label": c.label, "sample_frequency": c.fs} for c in channels])
        writer.setStartdatetime(start)
        writer.writeSamples([np.clip(np.asarray(c.samples, dtype=np.float64), -PHYSICAL_MAX, PHYSICAL_MAX)
                             for c in channels])
    finally:
        writer.close()
    return path


def patch_bytes(path: Path, offset: int, data: bytes) -> None:
    """Overwrite header bytes in place (the way a damaged or odd real file differs from what pyedflib writes)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def set_start_date(path: Path, date: bytes = BAD_START_DATE) -> None:
    """Bytes 168-175 of the EDF header: the start date pyedflib refuses in one TUSZ eval file."""
    assert len(date) == 8
    patch_bytes(path, 168, date)


def fmt4(t: float) -> str:
    return f"{t:.4f}"


def csv_head(stem: str, duration_s: float) -> str:
    return (
        "# version = csv_v1.0.0\n"
        f"# bname = {stem}\n"
        f"# duration = {duration_s:.2f} secs\n"
        "# montage_file = $NEDC_NFC/lib/nedc_eas_default_montage.txt\n"
        "#\n"
        "channel,start_time,stop_time,label,confidence\n"
    )


def write_csv_bi(path: Path, events: Iterable[tuple[float, float]], duration_s: float, *, stub: bool = False,
                 label: str = "seiz") -> Path:
    """TERM rows: only seizure rows when there are events, else ONE bckg row (a ~1 s stub or the whole file)."""
    events = list(events)
    if events:
        rows = [f"TERM,{fmt4(a)},{fmt4(b)},{label},1.0000\n" for a, b in events]
    elif stub:
        rows = ["TERM,0.0119,1.0492,bckg,1.0000\n"]
    else:
        rows = [f"TERM,0.0000,{fmt4(duration_s)},bckg,1.0000\n"]
    path = Path(path)
    path.write_text(csv_head(path.stem, duration_s) + "".join(rows))
    return path


def write_csv(path: Path, channel_events: dict[str, list[tuple[float, float, str]]], duration_s: float,
              channels: Sequence[str] = TCP_CHANNELS) -> Path:
    """Per-TCP-channel rows tiling the file with bckg and the given seizure spans (any non-bckg label)."""
    rows = []
    for channel in channels:
        t = 0.0
        for start, stop, label in sorted(channel_events.get(channel, [])):
            if start > t:
                rows.append(f"{channel},{fmt4(t)},{fmt4(start)},bckg,1.0000\n")
            rows.append(f"{channel},{fmt4(start)},{fmt4(stop)},{label},1.0000\n")
            t = stop
        if t < duration_s:
            rows.append(f"{channel},{fmt4(t)},{fmt4(duration_s)},bckg,1.0000\n")
    path = Path(path)
    path.write_text(csv_head(path.stem, duration_s) + "".join(rows))
    return path


def write_tse_bi(path: Path, events: Iterable[tuple[float, float]], duration_s: float) -> Path:
    """Legacy ``.tse_bi``: a version line, then ``start stop label confidence`` lines tiling the file."""
    lines, t = ["version = tse_v1.0.0\n", "\n"], 0.0
    for a, b in sorted(events):
        if a > t:
            lines.append(f"{fmt4(t)} {fmt4(a)} bckg 1.0000\n")
        lines.append(f"{fmt4(a)} {fmt4(b)} seiz 1.0000\n")
        t = b
    if t < duration_s:
        lines.append(f"{fmt4(t)} {fmt4(duration_s)} bckg 1.0000\n")
    path = Path(path)
    path.write_text("".join(lines))
    return path


@dataclass(frozen=True)
class Rec:
    """A recording to write: where it goes in the tree, its channels, its events and its annotation format."""

    split: str
    patient: str
    session: int
    year: int
    montage: str
    token: int
    fs: int = 250
    duration_s: int = 120
    events: tuple[tuple[float, float], ...] = ()
    annotation: str = "csv_bi"  # csv_bi | csv | tse_bi | none
    synonyms: bool = False  # T7/T8/P7/P8 instead of T3/T4/T5/T6
    missing: tuple[str, ...] = ()  # TUH electrode names left out, e.g. ("FZ", "PZ")
    decoy: bool = True  # an EEG C3P-REF channel placed before C3
    slow_aux: bool = True  # IBI/BURSTS/SUPPR at 1 Hz
    ekg: bool = True
    order: str = "tuh"  # tuh | szcore | shuffled
    bad_start_date: bool = False
    session_suffix: str = ""
    stub_bckg: bool = False
    seed: int = 0
    extra: tuple[Channel, ...] = field(default=(), compare=False)

    @property
    def stem(self) -> str:
        return f"{self.patient}_s{self.session:03d}_t{self.token:03d}"

    @property
    def session_name(self) -> str:
        return f"s{self.session:03d}_{self.year}{self.session_suffix}"

    def edf_path(self, root: Path) -> Path:
        return tusz_path(root, self.split, self.patient, self.session, self.year, self.montage, self.token,
                         self.session_suffix)

    @property
    def electrodes(self) -> tuple[str, ...]:
        """TUH electrode names present in the file."""
        names = list(TUH_ORDER)
        if self.montage.endswith("_a"):
            names = [n for n in names if n not in ("A1", "A2")]
        return tuple(n for n in names if n not in self.missing)

    @property
    def n_samples(self) -> int:
        """Samples of the stored signal at 256 Hz."""
        return int(self.duration_s * FS)


def electrode_label(name: str, ref: str, synonyms: bool = False) -> str:
    return f"EEG {SYNONYMS.get(name, name) if synonyms else name}-{ref}"


def rec_channels(rec: Rec) -> list[Channel]:
    """The EDF signals of a recording: electrodes with their tones, the decoy, EKG and 1 Hz channels."""
    rng = np.random.default_rng(rec.seed)
    ref = MONTAGES[rec.montage]
    names = list(rec.electrodes)
    if rec.order == "szcore":
        names = [n for n in SZCORE if n in names] + [n for n in names if n not in SZCORE]
    eeg = {
        n: Channel(electrode_label(n, ref, rec.synonyms), rec.fs,
                   tone(ELECTRODE_HZ[n], rec.fs, rec.duration_s, phase=rng.uniform(0, 2 * np.pi)))
        for n in names
    }
    ordered: list[Channel] = []
    for n in names:
        if n == "C3" and rec.decoy:  # the decoy comes first, so "first label containing C3" picks it
            ordered.append(Channel(f"EEG C3P-{ref}", rec.fs, tone(DECOY_HZ, rec.fs, rec.duration_s, amplitude=200)))
        ordered.append(eeg[n])
    if rec.decoy and "C3" not in names:
        ordered.append(Channel(f"EEG C3P-{ref}", rec.fs, tone(DECOY_HZ, rec.fs, rec.duration_s, amplitude=200)))
    if rec.ekg:
        ordered.append(Channel(f"EEG EKG1-{ref}", rec.fs, tone(EKG_HZ, rec.fs, rec.duration_s, amplitude=400)))
    ordered.extend(rec.extra)
    if rec.slow_aux:
        ordered += [
            Channel("IBI", 1, np.zeros(rec.duration_s)),
            Channel("BURSTS", 1, np.zeros(rec.duration_s)),
            Channel("SUPPR", 1, np.clip(np.cumsum(rng.normal(0, 3, rec.duration_s)) + 20, 0, 100).round()),
        ]
    if rec.order == "shuffled":
        ordered = [ordered[i] for i in rng.permutation(len(ordered))]
    return ordered


def write_annotation(rec: Rec, edf: Path) -> Path | None:
    if rec.annotation == "csv_bi":
        return write_csv_bi(edf.with_suffix(".csv_bi"), rec.events, rec.duration_s, stub=rec.stub_bckg)
    if rec.annotation == "csv":
        # Each event is split over two channels with overlapping spans: the union is the event.
        per_channel: dict[str, list[tuple[float, float, str]]] = {}
        for a, b in rec.events:
            mid = round((a + b) / 2, 4)
            per_channel.setdefault("FP1-F7", []).append((a, min(b, round(mid + 1.0, 4)), "fnsz"))
            per_channel.setdefault("F7-T3", []).append((mid, b, "cpsz"))
        channels = TCP_CHANNELS if not rec.montage.endswith("_a") else tuple(c for c in TCP_CHANNELS if "A" not in c)
        return write_csv(edf.with_suffix(".csv"), per_channel, rec.duration_s, channels)
    if rec.annotation == "tse_bi":
        return write_tse_bi(edf.with_suffix(".tse_bi"), rec.events, rec.duration_s)
    assert rec.annotation == "none"
    return None


def write_rec(root: Path, rec: Rec) -> Path:
    """Write the EDF and its annotation under ``root``; returns the EDF path."""
    edf = write_edf(rec.edf_path(root), rec_channels(rec), start=datetime(rec.year, 1, 1, 9, 30, 0))
    if rec.bad_start_date:
        set_start_date(edf)
    write_annotation(rec, edf)
    return edf


def write_tree(root: Path, recs: Iterable[Rec]) -> dict[Rec, Path]:
    return {rec: write_rec(root, rec) for rec in recs}


# --- independent expectations -------------------------------------------------------------------------------


def expected_mask(events: Iterable[tuple[float, float]], n_samples: int, fs: float = FS) -> np.ndarray:
    """Sample i is seizure iff some event has start <= i/fs < stop: the rule, evaluated literally."""
    t = np.arange(n_samples) / fs
    mask = np.zeros(n_samples, dtype=bool)
    for a, b in events:
        mask |= (t >= float(fmt4(a))) & (t < float(fmt4(b)))
    return mask


def expected_windows(mask: np.ndarray, window_s: float, stride_s: float, fs: float = FS) -> list[tuple[float, str, float]]:
    """(start_s, label, seizure_fraction) of every full-length window starting at 0, every stride."""
    w, s = round(window_s * fs), round(stride_s * fs)
    out = []
    start = 0
    while start + w <= mask.size:
        count = int(mask[start : start + w].sum())
        label = "no_seizure" if count == 0 else "full_seizure" if count == w else "partial_seizure"
        out.append((start / fs, label, count / w))
        start += s
    return out


def n_windows(n_samples: int, window_s: float, stride_s: float, fs: float = FS) -> int:
    w, s = round(window_s * fs), round(stride_s * fs)
    return 0 if n_samples < w else (n_samples - w) // s + 1


def dominant_hz(x: np.ndarray, fs: float = FS) -> float:
    spectrum = np.abs(np.fft.rfft(np.asarray(x, dtype=np.float64)))
    spectrum[0] = 0.0
    return float(np.argmax(spectrum) * fs / x.size)


def fsencode_name(directory: Path, name: bytes) -> bytes:
    """A bytes path (for file names that are not valid UTF-8)."""
    return os.path.join(os.fsencode(directory), name)


# --- running the CLI and reading the index ------------------------------------------------------------------


def eegcache_cmd(*args: object) -> list[str]:
    """``python -m eegcache.cli ARGS`` with the interpreter running the tests (the venv's)."""
    return [sys.executable, "-m", "eegcache.cli", *(os.fsdecode(a) if isinstance(a, bytes) else str(a) for a in args)]


def run_cli(*args: object, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run one ``eegcache`` command in a real subprocess and capture its output."""
    return subprocess.run(eegcache_cmd(*args), capture_output=True, text=True, timeout=timeout, cwd=cwd)


def query(cache: Path, sql: str, params: Sequence | dict = ()) -> list[tuple]:
    """Rows of a query on the cache's index, through a plain sqlite3 connection (not the library)."""
    conn = sqlite3.connect(Path(cache) / "index.sqlite", timeout=60)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def index_snapshot(cache: Path) -> dict[str, list[tuple]]:
    """What two equivalent ingests must agree on: window rows (as a sorted list, so duplicates show), the
    per-recording status, and the set of referenced objects."""
    windows = query(cache, "SELECT recording, window_s, stride_s, start_s, label, seizure_fraction FROM window_labels")
    status = query(cache, "SELECT recording, source_path, status, reason, n_windows FROM recording_status")
    objects = query(cache, "SELECT DISTINCT object_key FROM recordings WHERE object_key IS NOT NULL")
    return {
        "windows": sorted((r, w, s, st, lab, round(f, 12)) for r, w, s, st, lab, f in windows),
        "status": sorted(status, key=lambda row: row[1]),
        "objects": sorted(objects),
    }


def table_dump(cache: Path, tables: Iterable[str] = ("objects", "object_files", "recordings", "events",
                                                        "window_sets", "windows")) -> dict[str, list[tuple]]:
    """Every row of the index tables, sorted: a byte-for-byte picture of what an ingest changed."""
    return {t: sorted(query(cache, f"SELECT * FROM {t}"), key=repr) for t in tables}


def object_files_on_disk(cache: Path) -> dict[str, int]:
    """Relative path -> size of every file under objects/."""
    root = Path(cache) / "objects"
    return {p.relative_to(root).as_posix(): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}


def object_dirs(cache: Path) -> set[str]:
    return {p.name for p in (Path(cache) / "objects").glob("??/*") if p.is_dir()}


def invoke(*args: object):
    """Run one ``eegcache`` command in this process through click's CliRunner (for argument and error-message
    tests, where a subprocess would only add interpreter start-up); returns the click Result."""
    from click.testing import CliRunner

    from eegcache.cli import main

    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=True)


@dataclass(frozen=True)
class Out:
    returncode: int
    stdout: str
    stderr: str


def cli(*args: object) -> Out:
    """A command run in process (CliRunner): the code path of the subprocess without the interpreter start-up.
    An exception other than SystemExit escaping the command (a traceback for a user) fails the assertion here.
    Every command is also run as a real subprocess somewhere in the suite."""
    result = invoke(*args)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return Out(result.exit_code, result.stdout, result.stderr)
