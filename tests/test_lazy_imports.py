"""Heavy imports only where work needs them: a run with nothing to do never imports scipy.signal (~1.5 s here),
zarr (~0.3 s) or the optional reading libraries; nor Alembic (~0.3 s) while the index is at the newest schema, nor
numpy (~0.1 s) when no file needs preparing."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

from conftest import Standard
from edf_factory import query

from eegcache.index import db

HEAVY = ("scipy.signal", "mne", "tensorstore", "torch", "zarr")
NOOP_AVOIDS = ("alembic", "numpy")  # besides HEAVY, on the path of `eegcache ingest` with nothing to do
REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def _loaded_after(code: str, modules: tuple[str, ...] = HEAVY) -> dict:
    """Run ``code`` in a fresh interpreter, then report which of ``modules`` it left in ``sys.modules``."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps({{m: m in sys.modules for m in {modules!r}}}))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=180, cwd=REPO)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _ingest_code(tree: Path, cache: Path, *flags: str) -> str:
    return (
        "from eegcache.cli import main\n"
        "try:\n"
        f"    main(['ingest', {str(tree)!r}, '--cache', {str(cache)!r}, '--quiet', *{list(flags)!r}])\n"
        "except SystemExit:\n"
        "    pass\n"
    )


def test_importing_the_cli_and_ingest_loads_no_scipy_signal() -> None:
    loaded = _loaded_after("import eegcache.cli, eegcache.ops.ingest, eegcache.pipeline.preprocess, eegcache.store")
    assert loaded == dict.fromkeys(HEAVY, False)


def test_noop_ingest_of_an_unchanged_tree_imports_nothing_it_does_not_use(standard: Standard, cache_copy: Path) -> None:
    """`eegcache ingest` of the ingested standard tree (its one failed file failed before and has not changed, so
    it is not read again): the whole run, CLI included, never imports scipy.signal, zarr, torch or tensorstore,
    nor Alembic (the index is current) or numpy (no file is prepared)."""
    loaded = _loaded_after(_ingest_code(standard.root, cache_copy), HEAVY + NOOP_AVOIDS)
    assert loaded == dict.fromkeys(HEAVY + NOOP_AVOIDS, False)
    assert query(cache_copy, "SELECT version_num FROM alembic_version") == [(db.head_revision(),)]


def test_ingest_with_an_index_at_an_older_revision_still_migrates_it(tmp_path: Path) -> None:
    """The cache that eegcache at schema 0004 built (tests/fixtures/README.md) is upgraded by a plain ingest of its
    tree, Alembic imported for it, before the run finds every recording unchanged."""
    with tarfile.open(FIXTURES / "cache_0004.tar.gz") as tar:
        tar.extractall(tmp_path, filter="data")
    cache, tree = tmp_path / "cache", tmp_path / "tusz"
    assert query(cache, "SELECT version_num FROM alembic_version") == [("0004",)]
    loaded = _loaded_after(_ingest_code(tree, cache, "--missing-electrodes", "zero"), ("alembic",))
    assert loaded == {"alembic": True}
    assert query(cache, "SELECT version_num FROM alembic_version") == [(db.head_revision(),)]
    assert query(cache, "SELECT count(*) FROM recordings WHERE status = 'ingested'") == [(4,)]
