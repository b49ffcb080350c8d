"""Parse seizure annotation files: TUSZ's .csv_bi, .csv and the legacy .tse_bi, .tse, and BIDS ``_events.tsv``.

The parser reduces every format to one merged, sorted tuple of (start, stop) seconds, plus the seizure type(s) of
each merged event: the label as written (``seiz``, ``fnsz``... lower-cased for TUSZ files; the BIDS ``eventType``
as written, e.g. ``sz_foc_ia``). Where overlapping or touching events of different types merge into one, the event
keeps every type, sorted and joined by ``+`` (``cpsz+fnsz``), so ``event_type LIKE '%gnsz%'`` finds any event that
had a generalised part. Files come from outside the project and may be damaged or
hostile: every problem surfaces as an AnnotationError naming the file (and line), parsing is linear
in the file size, and files over MAX_FILE_BYTES are refused before being read.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from eegcache.errors import InputError

if TYPE_CHECKING:
    import numpy as np

# numpy (~0.1 s to import) and eegcache.pipeline.labels (numpy's) are imported by the functions that parse or clip: finding
# the annotation of an unchanged file (`eegcache ingest` with nothing to do) needs neither.

ANNOTATION_SUFFIXES = (".csv_bi", ".csv", ".tse_bi", ".tse")  # order of preference
MAX_FILE_BYTES = 64 * 1024 * 1024
BIDS_EVENTS_SUFFIX = "_events.tsv"
BIDS_REQUIRED = ("onset", "duration", "eventType")
MAX_LABELS = 65535  # distinct labels per file (codes are uint16)
TYPE_JOIN = "+"
CSV_HEADER = ("channel", "start_time", "stop_time", "label", "confidence")
CSV_REQUIRED = ("channel", "start_time", "stop_time", "label")  # found by name in the header; confidence is unused
MAX_COLUMNS = 64
TSE_VERSION = "version=tse_v1.0.0"
BACKGROUND = "bckg"
_CHUNK = 1 << 20  # characters per splitlines() batch: bounds memory on files of tiny lines
_SHOW = 60  # longest snippet of offending input quoted in a message


class AnnotationError(InputError):
    """Raised with a message that names the file and the problem, e.g.
    "aaaaaaac_s001_t000.csv_bi: line 8: stop_time 3.0 is before start_time 7.0"."""


@dataclass(frozen=True)
class Annotation:
    """The seizure content of one annotation file; times are not clipped to the recording."""

    path: Path
    format: str  # "csv_bi", "csv", "tse_bi" or "tse"
    duration_s: float | None  # from "# duration = 829.00 secs" (csv formats; None for tse or without that line)
    events: tuple[tuple[float, float], ...]  # seizure intervals in seconds, sorted, merged
    warnings: tuple[str, ...] = ()  # what a person should know (e.g. no duration line: the EDF's length is used)
    types: tuple[str, ...] = field(default=(), compare=False)  # per merged event: its label(s), joined by "+"
    # The seizure rows before merging (starts, stops, label codes, label names), for types after clipping.
    rows: tuple[np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]] | None = field(default=None, compare=False,
                                                                                  repr=False)

    def clipped_types(self, events: tuple[tuple[float, float], ...], duration_s: float) -> tuple[str, ...]:
        """The types of ``events`` (these rows clipped to [0, duration_s] and merged, as ``clip_events`` makes
        them): every label of a row that still overlaps the event after clipping."""
        if not events:
            return ()
        if self.rows is None:
            return ("",) * len(events)
        import numpy as np  # see the top

        starts, stops, codes, names = self.rows
        cs, ce = np.maximum(starts, 0.0), np.minimum(stops, duration_s)
        keep = ce > cs
        first = np.array([a for a, _ in events])
        which = np.searchsorted(first, cs[keep], side="right") - 1
        ok = which >= 0
        pairs = np.unique(np.stack([which[ok], codes[keep][ok].astype(np.int64)]), axis=1)
        found: list[set[str]] = [set() for _ in events]
        for i, code in pairs.T.tolist():
            found[i].add(names[code])
        return tuple(TYPE_JOIN.join(sorted(t)) for t in found)


def find_annotation(edf_path: Path) -> Path | None:
    """The sibling annotation file of an EDF, by preference order (csv_bi first).

    csv_bi is preferred because it is the already-unioned TERM view the NEDC scorers use.
    """
    edf_path = Path(edf_path)
    for suffix in ANNOTATION_SUFFIXES:
        candidate = edf_path.with_suffix(suffix)
        if candidate.is_file():
            return candidate
    stem = edf_path.stem
    if stem.endswith("_eeg"):  # BIDS: sub-X_..._eeg.edf beside sub-X_..._events.tsv
        candidate = edf_path.with_name(stem[: -len("_eeg")] + BIDS_EVENTS_SUFFIX)
        if candidate.is_file():
            return candidate
    return None


def _show(text: str) -> str:
    """A bounded repr of offending input, so a hostile 64 MiB line cannot flood a log."""
    return repr(text if len(text) <= _SHOW else text[:_SHOW] + "...")


def _lines(text: str) -> Iterator[str]:
    """splitlines() in ~1 MiB batches: C speed, but never a list of millions of strings at once."""
    pos, n = 0, len(text)
    while pos < n:
        cut = text.find("\n", pos + _CHUNK)
        end = n if cut < 0 else cut + 1
        yield from text[pos:end].splitlines()
        pos = end


class _Parser:
    """State shared by the format readers: the file name for messages and the event arrays."""

    def __init__(self, path: Path, keep_case: bool = False) -> None:
        self.name = path.name
        self.keep_case = keep_case
        self.starts = array("d")  # 16 bytes per row instead of ~100 for a tuple of floats
        self.stops = array("d")
        self.warnings: list[str] = []
        self.codes = array("H")
        self.labels: dict[str, int] = {}

    def error(self, problem: str, lineno: int | None = None) -> AnnotationError:
        where = f"{self.name}: line {lineno}: " if lineno is not None else f"{self.name}: "
        return AnnotationError(where + problem)

    def number(self, field: str, what: str, lineno: int) -> float:
        """Strict float: rejects Python-only spellings (1_000, non-ASCII digits) and NaN/inf."""
        text = field.strip()
        try:
            if not text.isascii() or "_" in text:
                raise ValueError
            value = float(text)
        except ValueError:
            raise self.error(f"{what} {_show(text)} is not a number", lineno) from None
        if not math.isfinite(value):
            raise self.error(f"{what} {_show(text)} is not a finite number", lineno)
        return value

    def add(self, start_field: str, stop_field: str, label: str, lineno: int, names: tuple[str, str]) -> None:
        """Validate one row's times and keep it when its label is a seizure type."""
        start = self.number(start_field, names[0], lineno)
        stop = self.number(stop_field, names[1], lineno)
        self.keep(start, stop, label, lineno, names)

    def keep(self, start: float, stop: float, label: str, lineno: int, names: tuple[str, str]) -> None:
        if start < 0:
            raise self.error(f"{names[0]} {start!r} is negative", lineno)
        if stop < start:
            raise self.error(f"{names[1]} {stop!r} is before {names[0]} {start!r}", lineno)
        label = label.strip() if self.keep_case else label.strip().lower()
        if not label:
            raise self.error("empty label", lineno)
        if label.lower() != BACKGROUND and stop > start:  # zero-length events carry no samples: dropped
            code = self.labels.get(label)
            if code is None:
                if len(self.labels) >= MAX_LABELS:
                    raise self.error(f"more than {MAX_LABELS} distinct labels", lineno)
                code = self.labels[label] = len(self.labels)
            self.starts.append(start)
            self.stops.append(stop)
            self.codes.append(code)

    def events(self) -> tuple[tuple[float, float], ...]:
        import numpy as np  # see the top

        from eegcache.pipeline.labels import merge_arrays

        s, e = merge_arrays(
            np.frombuffer(self.starts, dtype=np.float64), np.frombuffer(self.stops, dtype=np.float64)
        )
        return tuple(zip(s.tolist(), e.tolist(), strict=True))

    def annotation(self, path: Path, fmt: str, duration: float | None) -> Annotation:
        import numpy as np  # see the top

        rows = (np.frombuffer(self.starts, dtype=np.float64).copy(), np.frombuffer(self.stops, dtype=np.float64).copy(),
                np.frombuffer(self.codes, dtype=np.uint16).copy(), tuple(self.labels))
        result = Annotation(path=path, format=fmt, duration_s=duration, events=self.events(), rows=rows,
                            warnings=tuple(self.warnings))
        object.__setattr__(result, "types", result.clipped_types(result.events, math.inf))
        return result

    def duration(self, value: str, lineno: int) -> float:
        text = value.strip()
        low = text.lower()
        for unit in ("seconds", "second", "secs", "sec", "s"):
            if low.endswith(unit):
                text = text[: -len(unit)]
                break
        seconds = self.number(text, "duration", lineno)
        if seconds < 0:
            raise self.error(f"duration {seconds!r} is negative", lineno)
        return seconds


def _header(parser: _Parser, stripped: str, lineno: int) -> dict[str, int]:
    """Column positions by name. The four columns the parser needs must be there; ``confidence`` and any other
    named column may be, in any order (NEDC's files have added columns before)."""
    names = [f.strip().lower() for f in stripped.split(",", MAX_COLUMNS)]
    missing = [c for c in CSV_REQUIRED if c not in names]
    if missing or len(names) > MAX_COLUMNS:
        raise parser.error(f"expected header {','.join(CSV_HEADER)!r} (columns by name; others may follow), "
                           f"got {_show(stripped)}", lineno)
    seen: set[str] = set()
    for name in names:
        if not name:
            raise parser.error(f"header has an unnamed column: {_show(stripped)}", lineno)
        if name in seen:
            raise parser.error(f"header names column {_show(name)} twice", lineno)
        seen.add(name)
    return {name: i for i, name in enumerate(names)}


def _parse_csv(parser: _Parser, text: str, binary: bool) -> float | None:
    """Read the csv/csv_bi body into parser; return the duration comment's value (None without one)."""
    duration: float | None = None
    columns: dict[str, int] | None = None
    for lineno, line in enumerate(_lines(text), start=1):
        stripped = line.strip()
        if not stripped:
            continue
        if stripped[0] == "#":
            key, sep, value = stripped[1:].partition("=")
            if sep and key.strip().lower() == "duration":
                seconds = parser.duration(value, lineno)
                if duration is not None and seconds != duration:
                    raise parser.error(f"second duration {seconds!r} contradicts {duration!r}", lineno)
                duration = seconds
            continue
        if columns is None:
            columns = _header(parser, stripped, lineno)
            width = len(columns)
            ch, start, stop, label = (columns[c] for c in CSV_REQUIRED)
            continue
        fields = stripped.split(",", width)  # maxsplit: a line of a million commas stays cheap
        if len(fields) != width:
            got = f"more than {width}" if len(fields) > width else str(len(fields))
            raise parser.error(f"expected {width} comma-separated fields, got {got}: {_show(stripped)}", lineno)
        channel = fields[ch].strip()
        if binary and channel.upper() != "TERM":
            raise parser.error(f"channel {_show(channel)} in a .csv_bi file (expected TERM)", lineno)
        if not channel:
            raise parser.error("empty channel", lineno)
        parser.add(fields[start], fields[stop], fields[label], lineno, ("start_time", "stop_time"))
    if columns is None:
        raise parser.error(f"no header line {','.join(CSV_HEADER)!r}")
    if duration is None:
        parser.warnings.append(f"{parser.name}: no '# duration = <seconds> secs' line; the recording's length is "
                               "taken from the EDF")
    return duration


def _parse_tse(parser: _Parser, text: str) -> None:
    """Read the legacy tse/tse_bi body ('version = tse_v1.0.0', then 'start stop label confidence')."""
    version_seen = False
    for lineno, line in enumerate(_lines(text), start=1):
        stripped = line.strip()
        if not stripped:
            continue
        if not version_seen:
            if "".join(stripped.split()).lower() != TSE_VERSION:
                raise parser.error(f"expected 'version = tse_v1.0.0', got {_show(stripped)}", lineno)
            version_seen = True
            continue
        if stripped[0] == "#":
            continue
        fields = stripped.split(maxsplit=4)
        if len(fields) != 4:
            got = "more than 4" if len(fields) > 4 else str(len(fields))
            raise parser.error(
                f"expected 4 whitespace-separated fields, got {got}: {_show(stripped)}", lineno
            )
        parser.add(fields[0], fields[1], fields[2], lineno, ("start", "stop"))
    if not version_seen:  # pragma: no cover - the empty-file check runs first
        raise parser.error("missing 'version = tse_v1.0.0' line")


def _parse_events_tsv(parser: _Parser, text: str) -> float | None:
    """Read a BIDS ``_events.tsv`` (tab-separated, a header naming at least onset, duration and eventType; ``n/a``
    for missing values) into parser; return the first row's ``recordingDuration`` (None when absent or n/a).
    Every row other than ``bckg`` is a seizure from onset to onset + duration."""
    header: list[str] | None = None
    duration: float | None = None
    rows = 0
    for lineno, line in enumerate(_lines(text), start=1):
        if not line.strip():
            continue
        fields = line.rstrip("\r\n").split("\t")
        if header is None:
            header = [f.strip() for f in fields]
            absent = [c for c in BIDS_REQUIRED if c not in header]
            if absent:
                raise parser.error(f"the header {_show(line.strip())} lacks the column(s) {', '.join(absent)} "
                                   "(a tab-separated header with onset, duration and eventType is required)", lineno)
            if len(set(header)) != len(header):
                raise parser.error(f"repeated column names in the header {_show(line.strip())}", lineno)
            col = {name: i for i, name in enumerate(header)}
            continue
        if len(fields) != len(header):
            raise parser.error(f"expected {len(header)} tab-separated fields, got {len(fields)}: {_show(line)}", lineno)
        onset = parser.number(fields[col["onset"]], "onset", lineno)
        length = parser.number(fields[col["duration"]], "duration", lineno)
        if length < 0:
            raise parser.error(f"duration {length!r} is negative", lineno)
        label = fields[col["eventType"]].strip()
        if label.lower() == "n/a":
            raise parser.error("eventType is n/a", lineno)
        parser.keep(onset, onset + length, label, lineno, ("onset", "onset + duration"))
        if rows == 0 and "recordingDuration" in col:
            value = fields[col["recordingDuration"]].strip()
            if value.lower() != "n/a":
                duration = parser.number(value, "recordingDuration", lineno)
                if duration < 0:
                    raise parser.error(f"recordingDuration {duration!r} is negative", lineno)
        rows += 1
    if header is None:  # pragma: no cover - the empty-file check runs first
        raise parser.error("no header line")
    return duration


def read_bytes(path: Path) -> bytes:
    """An annotation file's bytes, read once (the caller hashes and parses these same bytes), refusing oversized
    files before reading and turning I/O errors into AnnotationError."""
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise AnnotationError(
                f"{path.name}: file is {size} bytes, larger than the {MAX_FILE_BYTES} byte limit "
                "for annotation files; refusing to read it"
            )
        with path.open("rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)  # the file may grow between stat() and read()
    except OSError as exc:
        raise AnnotationError(f"{path.name}: cannot read file: {exc.strerror or exc}") from exc
    if len(data) > MAX_FILE_BYTES:
        raise AnnotationError(
            f"{path.name}: file is larger than the {MAX_FILE_BYTES} byte limit; refusing it"
        )
    return data


def decode(path: Path, data: bytes) -> str:
    """Annotation bytes as text (UTF-8), or AnnotationError naming the file."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise AnnotationError(
            f"{path.name}: not valid UTF-8 text (byte offset {exc.start}: {exc.reason})"
        ) from None


def _read(path: Path) -> str:
    return decode(path, read_bytes(path))


def parse_annotation(path: Path, text: str | None = None) -> Annotation:
    """Parse by suffix. Reads the file when text is None.

    Raises AnnotationError (message starting with the file name) for any malformed input.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    bids = path.name.endswith(BIDS_EVENTS_SUFFIX)
    if suffix not in ANNOTATION_SUFFIXES and not bids:
        raise AnnotationError(
            f"{path.name}: unknown annotation suffix {suffix or '(none)'!r}; expected one of "
            f"{', '.join(ANNOTATION_SUFFIXES)} or {BIDS_EVENTS_SUFFIX}"
        )
    if text is None:
        text = _read(path)
    elif len(text) > MAX_FILE_BYTES:
        raise AnnotationError(f"{path.name}: text is larger than the {MAX_FILE_BYTES} character limit")
    if text.startswith("\ufeff"):  # a byte-order mark from Windows editors
        text = text[1:]
    parser = _Parser(path, keep_case=bids)
    if not text or text.isspace():
        raise parser.error("file is empty")
    fmt = "bids_tsv" if bids else suffix[1:]
    duration: float | None = None
    if bids:
        duration = _parse_events_tsv(parser, text)
    elif fmt in ("csv_bi", "csv"):
        duration = _parse_csv(parser, text, binary=fmt == "csv_bi")
    else:
        _parse_tse(parser, text)
    return parser.annotation(path, fmt, duration)
