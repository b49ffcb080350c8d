"""Parse TUSZ seizure annotation files (.csv_bi, .csv and the legacy .tse_bi, .tse).

Only the seizure intervals matter to the cache, so the parser reduces every format to one merged,
sorted tuple of (start, stop) seconds. Files come from outside the project and may be damaged or
hostile: every problem surfaces as an AnnotationError naming the file (and line), parsing is linear
in the file size, and files over MAX_FILE_BYTES are refused before being read.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eegcache.labels import merge_arrays

ANNOTATION_SUFFIXES = (".csv_bi", ".csv", ".tse_bi", ".tse")  # order of preference
MAX_FILE_BYTES = 64 * 1024 * 1024
CSV_HEADER = ("channel", "start_time", "stop_time", "label", "confidence")
CSV_REQUIRED = ("channel", "start_time", "stop_time", "label")  # found by name in the header; confidence is unused
MAX_COLUMNS = 64
TSE_VERSION = "version=tse_v1.0.0"
BACKGROUND = "bckg"
_CHUNK = 1 << 20  # characters per splitlines() batch: bounds memory on files of tiny lines
_SHOW = 60  # longest snippet of offending input quoted in a message


class AnnotationError(ValueError):
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


def find_annotation(edf_path: Path) -> Path | None:
    """The sibling annotation file of an EDF, by preference order (csv_bi first).

    csv_bi is preferred because it is the already-unioned TERM view the NEDC scorers use.
    """
    edf_path = Path(edf_path)
    for suffix in ANNOTATION_SUFFIXES:
        candidate = edf_path.with_suffix(suffix)
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

    def __init__(self, path: Path) -> None:
        self.name = path.name
        self.starts = array("d")  # 16 bytes per row instead of ~100 for a tuple of floats
        self.stops = array("d")
        self.warnings: list[str] = []

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
        if start < 0:
            raise self.error(f"{names[0]} {start!r} is negative", lineno)
        if stop < start:
            raise self.error(f"{names[1]} {stop!r} is before {names[0]} {start!r}", lineno)
        label = label.strip().lower()
        if not label:
            raise self.error("empty label", lineno)
        if label != BACKGROUND and stop > start:  # zero-length events carry no samples: dropped
            self.starts.append(start)
            self.stops.append(stop)

    def events(self) -> tuple[tuple[float, float], ...]:
        s, e = merge_arrays(
            np.frombuffer(self.starts, dtype=np.float64), np.frombuffer(self.stops, dtype=np.float64)
        )
        return tuple(zip(s.tolist(), e.tolist(), strict=True))

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
    if suffix not in ANNOTATION_SUFFIXES:
        raise AnnotationError(
            f"{path.name}: unknown annotation suffix {suffix or '(none)'!r}; expected one of "
            f"{', '.join(ANNOTATION_SUFFIXES)}"
        )
    if text is None:
        text = _read(path)
    elif len(text) > MAX_FILE_BYTES:
        raise AnnotationError(f"{path.name}: text is larger than the {MAX_FILE_BYTES} character limit")
    if text.startswith("\ufeff"):  # a byte-order mark from Windows editors
        text = text[1:]
    parser = _Parser(path)
    if not text or text.isspace():
        raise parser.error("file is empty")
    fmt = suffix[1:]
    duration: float | None = None
    if fmt in ("csv_bi", "csv"):
        duration = _parse_csv(parser, text, binary=fmt == "csv_bi")
    else:
        _parse_tse(parser, text)
    return Annotation(path=path, format=fmt, duration_s=duration, events=parser.events(), warnings=tuple(parser.warnings))
