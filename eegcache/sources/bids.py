"""BIDS-EEG datasets (the SzCORE exchange format): recording paths, entities, sidecars and ``participants.tsv``.

A BIDS root holds ``dataset_description.json``; recordings are ``sub-<label>/[ses-<label>/]eeg/<entities>_eeg.edf``
with the sibling ``<entities>_events.tsv`` (labels, read by ``eegcache.sources.annotations``) and ``<entities>_eeg.json``
(``EEGReference``, ``PowerLineFrequency``). The split of a subject comes from ``participants.tsv`` when it has a
``split`` column (the TUH conversion writes one), else it is empty.

Files come from outside: every malformed sidecar or TSV raises ``BidsError`` with a sentence naming the file, and
the recording that needs it fails alone.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path, PurePosixPath

DESCRIPTION = "dataset_description.json"
PARTICIPANTS = "participants.tsv"
MAX_SIDECAR_BYTES = 1 << 20
MAX_PARTICIPANTS_BYTES = 64 << 20
_LABEL = re.compile(r"^[A-Za-z0-9]+$")


class BidsError(ValueError):
    """A malformed BIDS file; the message starts with the file's name."""


def entities(stem: str) -> dict[str, str]:
    """``key-value`` pairs of a BIDS file stem (``sub-01_ses-02_task-x_run-03_eeg`` -> sub, ses, task, run); the
    suffix (the last part without a dash) is left out. Parsed generally: any entity may be absent."""
    out: dict[str, str] = {}
    for part in stem.split("_"):
        key, sep, value = part.partition("-")
        if sep and key and value:
            out.setdefault(key, value)
    return out


def is_recording(rel: PurePosixPath | Path) -> bool:
    """Whether a path relative to a BIDS root is a recording: ``sub-*/[ses-*/]eeg/*_eeg.edf``."""
    parts = PurePosixPath(Path(rel).as_posix()).parts
    if not parts or not parts[-1].lower().endswith("_eeg.edf") or not parts[0].startswith("sub-"):
        return False
    if len(parts) == 3:
        return parts[1] == "eeg"
    return len(parts) == 4 and parts[1].startswith("ses-") and parts[2] == "eeg"


def recording_name(edf: Path) -> str:
    """The recording's name: the file stem less ``_eeg`` (``sub-01_ses-01_task-szMonitoring_run-00``)."""
    stem = edf.stem
    return stem[: -len("_eeg")] if stem.endswith("_eeg") else stem


@dataclass(frozen=True)
class Sidecar:
    """What a recording's ``_eeg.json`` declares (None where it is absent or ``n/a``)."""

    reference: str | None = None
    power_line_hz: float | None = None
    sampling_hz: float | None = None


def sidecar_path(edf: Path) -> Path:
    return edf.with_name(edf.stem + ".json") if edf.stem.endswith("_eeg") else edf.with_suffix(".json")


def _read_text(path: Path, limit: int) -> str:
    try:
        size = path.stat().st_size
        if size > limit:
            raise BidsError(f"{path.name}: {size} bytes, larger than the {limit} byte limit for this file")
        data = path.read_bytes()
    except OSError as exc:
        raise BidsError(f"{path.name}: cannot read it ({exc.strerror or exc})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BidsError(f"{path.name}: not valid UTF-8 text (byte offset {exc.start})") from None
    return text[1:] if text.startswith("\ufeff") else text


def _optional_number(path: Path, data: dict, key: str) -> float | None:
    value = data.get(key)
    if value is None or (isinstance(value, str) and value.strip().lower() == "n/a"):
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise BidsError(f"{path.name}: {key} is {value!r}, not a positive number (or n/a)")
    return float(value)


def read_sidecar(edf: Path) -> Sidecar:
    """The recording's ``_eeg.json``; an absent sidecar declares nothing (an empty Sidecar)."""
    path = sidecar_path(edf)
    if not path.is_file():
        return Sidecar()
    text = _read_text(path, MAX_SIDECAR_BYTES)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BidsError(f"{path.name}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except RecursionError:
        raise BidsError(f"{path.name}: not valid JSON (nested too deeply)") from None
    if not isinstance(data, dict):
        raise BidsError(f"{path.name}: expected a JSON object, got {type(data).__name__}")
    reference = data.get("EEGReference")
    if reference is not None and not isinstance(reference, str):
        raise BidsError(f"{path.name}: EEGReference is {reference!r}, not text")
    return Sidecar(reference=reference.strip()[:128] if reference else None,
                   power_line_hz=_optional_number(path, data, "PowerLineFrequency"),
                   sampling_hz=_optional_number(path, data, "SamplingFrequency"))


def _parse_participants(path: Path) -> dict[str, str | None]:
    text = _read_text(path, MAX_PARTICIPANTS_BYTES)
    lines = [(n, line.rstrip("\r")) for n, line in enumerate(text.split("\n"), start=1) if line.strip()]
    if not lines:
        raise BidsError(f"{path.name}: file is empty")
    header = [h.strip() for h in lines[0][1].split("\t")]
    if "participant_id" not in header:
        raise BidsError(f"{path.name}: line {lines[0][0]}: the header lacks the column participant_id "
                        "(a tab-separated header is required)")
    pid = header.index("participant_id")
    split = header.index("split") if "split" in header else None
    out: dict[str, str | None] = {}
    for lineno, line in lines[1:]:
        fields = line.split("\t")
        if len(fields) != len(header):
            raise BidsError(f"{path.name}: line {lineno}: expected {len(header)} tab-separated fields, "
                            f"got {len(fields)}")
        subject = fields[pid].strip()
        if not subject.startswith("sub-") or not _LABEL.match(subject[4:]):
            raise BidsError(f"{path.name}: line {lineno}: participant_id {subject[:60]!r} is not sub-<label>")
        if subject in out:
            raise BidsError(f"{path.name}: line {lineno}: participant {subject} is listed twice")
        value = fields[split].strip() if split is not None else ""
        out[subject] = None if value.lower() in ("", "n/a") else value[:16]
    return out


@lru_cache(maxsize=8)
def _participants_cached(path: str, size: int, mtime_ns: int) -> dict[str, str | None] | BidsError:
    try:
        return _parse_participants(Path(path))
    except BidsError as exc:
        return exc


def participant_split(root: Path, subject: str) -> str | None:
    """The split of ``sub-<subject>`` from ``ROOT/participants.tsv`` (None without the file, without a split
    column, or when the subject is not listed). A malformed file raises BidsError for every recording."""
    path = Path(root) / PARTICIPANTS
    try:
        st = path.stat()
    except OSError:
        return None
    result = _participants_cached(str(path), st.st_size, st.st_mtime_ns)
    if isinstance(result, BidsError):
        raise BidsError(str(result))
    return result.get(f"sub-{subject}")


@dataclass(frozen=True)
class BidsInfo:
    """A BIDS recording's identity: entities from its name, split from participants.tsv."""

    name: str
    subject: str | None
    session: str | None
    run: str | None
    task: str | None


def info(edf: Path) -> BidsInfo:
    ent = entities(recording_name(edf) + "_eeg")
    return BidsInfo(recording_name(edf), ent.get("sub"), ent.get("ses"), ent.get("run"), ent.get("task"))


def find_root(folder: Path) -> Path | None:
    """The BIDS root at or above ``folder``: the nearest folder holding ``dataset_description.json`` such that
    ``folder`` is the root itself or lies in one of its ``sub-*`` folders."""
    folder = Path(folder)
    for candidate in (folder, *folder.parents):
        if (candidate / DESCRIPTION).is_file():
            if candidate == folder or folder.relative_to(candidate).parts[0].startswith("sub-"):
                return candidate
            return None
    return None
