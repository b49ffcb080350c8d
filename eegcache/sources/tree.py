"""Finding EDF files under a source folder and reading TUSZ metadata from their paths."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

TUSZ_PATH = re.compile(
    r"(?:^|/)edf/(train|dev|eval)/([a-z]{8})/(s(\d{3})_(\d{4})(?:_\d{2}_\d{2})?)/"
    r"(0[1-4]_tcp_(?:ar|le)(?:_a)?)/\2_s\4_(t\d{3})\.edf$"
)


@dataclass(frozen=True)
class PathInfo:
    name: str
    split: str | None = None
    subject: str | None = None
    session: str | None = None
    montage: str | None = None
    token: str | None = None


def path_text(path: Path) -> str:
    """The path as text that any database accepts; undecodable bytes become ``\\xNN`` escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def is_utf8(path: Path) -> bool:
    try:
        os.fsencode(path).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def parse_path(path: Path) -> PathInfo:
    """TUSZ split/subject/session/montage/token when the path follows the corpus layout; else just the stem."""
    text = path_text(path)
    m = TUSZ_PATH.search(text)
    name = path_text(Path(path.name)).rsplit(".", 1)[0]
    if not m:
        return PathInfo(name=name)
    split, subject, session, _num, _year, montage, token = m.groups()
    return PathInfo(name=name, split=split, subject=subject, session=session, montage=montage, token=token)


def discover(src: Path) -> list[Path]:
    """Every ``*.edf`` below ``src`` (or ``src`` itself), sorted. Symlinked folders are not followed, so a
    symlink loop cannot trap the walk; symlinked files are read like any other file."""
    src = Path(src)
    if not src.exists():
        raise FileNotFoundError(f"source path {src} does not exist")
    if src.is_file():
        return [src]
    found = []
    for dirpath, dirnames, filenames in os.walk(src, followlinks=False):
        dirnames.sort()
        found.extend(Path(dirpath) / f for f in filenames if f.lower().endswith(".edf"))
    return sorted(found, key=lambda p: os.fsencode(p))
