"""Heavy imports only where work needs them: a run with nothing to do never imports scipy.signal (~1.5 s here),
zarr (~0.3 s) or the optional reading libraries."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import Standard

HEAVY = ("scipy.signal", "mne", "tensorstore", "torch", "zarr")
REPO = Path(__file__).resolve().parents[1]


def _loaded_after(code: str) -> dict:
    """Run ``code`` in a fresh interpreter, then report which heavy modules it left in ``sys.modules``."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps({{m: m in sys.modules for m in {HEAVY!r}}}))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=180, cwd=REPO)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_importing_the_cli_and_ingest_loads_no_scipy_signal() -> None:
    loaded = _loaded_after("import eegcache.cli, eegcache.ops.ingest, eegcache.pipeline.preprocess, eegcache.store")
    assert loaded == dict.fromkeys(HEAVY, False)


def test_noop_ingest_of_an_unchanged_tree_loads_no_scipy_signal(standard: Standard, cache_copy: Path) -> None:
    """`eegcache ingest` of the ingested standard tree (its one failed file is re-read and fails again before any
    preprocessing): the whole run, CLI included, never imports scipy.signal."""
    code = (
        "from eegcache.cli import main\n"
        "try:\n"
        f"    main(['ingest', {str(standard.root)!r}, '--cache', {str(cache_copy)!r}, '--quiet'])\n"
        "except SystemExit:\n"
        "    pass\n"
    )
    loaded = _loaded_after(code)
    assert not loaded["scipy.signal"] and not loaded["torch"] and not loaded["tensorstore"] and not loaded["zarr"]
