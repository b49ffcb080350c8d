"""Shared fixtures: one standard TUSZ-like tree ingested once per session, and cheap copies of its cache.

The standard tree covers every montage folder, the rates 250/256/400/512, the three annotation formats, the
naming quirks (old-style session folder, token numbers with gaps), the decoy ``C3P`` channel, T7/T8/P7/P8
synonyms, 1 Hz channels, the ``01:01:85`` start date, a file shorter than one window, a file missing Fz/Pz and a
byte-identical copy of one recording at a second path.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest
from edf_factory import Rec, write_tree

from eegcache.ops.ingest import IngestSummary, ingest
from eegcache.pipeline.spec import IngestConfig

IS_ROOT = os.geteuid() == 0

OVERLAP = Rec("train", "aaaaaaaa", 1, 2003, "01_tcp_ar", 0, fs=250, duration_s=300, seed=1,
              events=((0.0, 12.5), (100.0, 130.0), (125.0, 140.0), (290.0, 310.0)))  # fmt: skip
SYNONYMS_CSV = Rec("train", "aaaaaaaa", 2, 2003, "02_tcp_le", 1, fs=256, duration_s=180, seed=2, events=((60.0, 120.0),),
                   annotation="csv", synonyms=True, session_suffix="_07_21", order="szcore")  # fmt: skip
NO_A1A2 = Rec("dev", "aaaaaaab", 3, 2010, "03_tcp_ar_a", 2, fs=400, duration_s=120, seed=3, stub_bckg=True,
              order="shuffled")  # fmt: skip
BAD_DATE = Rec("dev", "aaaaaaab", 4, 2011, "01_tcp_ar", 0, fs=250, duration_s=90, seed=4, events=((45.5, 75.25),),
               bad_start_date=True)  # fmt: skip
TSE_512 = Rec("eval", "aaaaaaac", 1, 2012, "04_tcp_le_a", 0, fs=512, duration_s=150, seed=5, annotation="tse_bi",
              events=((10.0039, 33.3333), (59.9961, 60.0039)))  # fmt: skip
SHORT = Rec("eval", "aaaaaaac", 2, 2012, "01_tcp_ar", 3, fs=250, duration_s=30, seed=6, events=((5.0, 10.0),))
MISSING = Rec("train", "aaaaaaad", 1, 2004, "01_tcp_ar", 0, fs=250, duration_s=60, seed=7, missing=("FZ", "PZ"))
STANDARD_TREE = (OVERLAP, SYNONYMS_CSV, NO_A1A2, BAD_DATE, TSE_512, SHORT, MISSING)
INGESTED = (OVERLAP, SYNONYMS_CSV, NO_A1A2, BAD_DATE, TSE_512, SHORT)
DUPLICATE_STEM = "aaaaaaab_s003_t007"  # a byte-identical copy of NO_A1A2 beside it


@dataclass(frozen=True)
class Standard:
    root: Path
    cache: Path
    edfs: dict[Rec, Path]
    duplicate: Path
    summary: IngestSummary


def copy_dup(edf: Path, stem: str) -> Path:
    """Copy an EDF and its annotation files byte for byte to another name in the same folder."""
    target = edf.with_name(f"{stem}.edf")
    for src in edf.parent.glob(f"{edf.stem}.*"):
        shutil.copy2(src, target.with_suffix(src.suffix))
    return target


@pytest.fixture(scope="session")
def standard(tmp_path_factory: pytest.TempPathFactory) -> Standard:
    """The standard tree, ingested once (in process, defaults: 60 s windows, 60 s stride)."""
    base = tmp_path_factory.mktemp("standard")
    root = base / "tusz"
    edfs = write_tree(root, STANDARD_TREE)
    duplicate = copy_dup(edfs[NO_A1A2], DUPLICATE_STEM)
    cache = base / "cache"
    summary = ingest(root, cache, IngestConfig(), progress=False)
    return Standard(root, cache, edfs, duplicate, summary)


@pytest.fixture
def cache_copy(standard: Standard, tmp_path: Path) -> Path:
    """A private copy of the standard cache (same source paths) for a test that changes it."""
    return copy_cache(standard.cache, tmp_path / "cache")


def copy_cache(source: Path, target: Path) -> Path:
    """A copy of a cache folder. The index goes through SQLite's backup API (a consistent snapshot), never by copying
    its files: closing a descriptor of a database file drops this process's POSIX locks on it, under engines other
    tests left open on the source."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("index.sqlite*"))
    with closing(sqlite3.connect(source / "index.sqlite")) as src, closing(sqlite3.connect(target / "index.sqlite")) as dst:
        src.backup(dst)
    return target


@pytest.fixture
def tree(tmp_path: Path):
    """Write a private tree of the given recordings; returns (root, {rec: edf path})."""

    def make(*recs: Rec, name: str = "src") -> tuple[Path, dict[Rec, Path]]:
        root = tmp_path / name
        return root, write_tree(root, recs)

    return make
