"""braindecode's own virtual environment, made once outside the project's install and CI, and runs inside it.

braindecode imports torchaudio, whose library does not load beside the project's CPU build of torch 2.13; its own
venv with torch 2.9.1 works (``shared/BENCH_NOTES.md``). ``python -m bench --with-braindecode`` creates it the first
time (about 7 GB, a few minutes) under ``$EEGCACHE_BENCH_CACHE`` (default ``~/.cache/eegcache-bench``); without
the flag, or when it cannot be made, the bench says so in braindecode's column and carries on.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

REQUIREMENTS = ("torch==2.9.1", "torchaudio==2.9.*", "braindecode")
RUNNER = Path(__file__).with_name("braindecode_runner.py")


def venv_dir() -> Path:
    base = os.environ.get("EEGCACHE_BENCH_CACHE") or Path.home() / ".cache" / "eegcache-bench"
    return Path(base) / "braindecode-venv"


def venv_python(venv: Path | None = None) -> Path:
    return (venv or venv_dir()) / "bin" / "python"


def status(venv: Path | None = None) -> dict[str, Any]:
    """Whether braindecode imports in its venv (tried in a child: a broken torchaudio can abort the interpreter)."""
    python = venv_python(venv)
    if not python.exists():
        return {"installed": False, "venv": str(python.parent.parent),
                "note": "braindecode: not measured (its venv is absent; `python -m bench --with-braindecode` makes it)"}
    proc = subprocess.run([str(python), "-c", "import braindecode, torch; print(braindecode.__version__, torch.__version__)"],
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"installed": False, "venv": str(python.parent.parent), "error": last,
                "note": f"braindecode: not measured (its venv does not import it: {last})"}
    version, torch_version = proc.stdout.split()[-2:]
    return {"installed": True, "version": version, "torch": torch_version, "venv": str(python.parent.parent),
            "note": f"braindecode {version} (own venv, torch {torch_version})"}


def ensure(log, venv: Path | None = None) -> dict[str, Any]:
    """The venv's status, creating it first when absent. Never raises: a failure is reported in the status."""
    venv = venv or venv_dir()
    current = status(venv)
    if current["installed"] or venv_python(venv).exists():
        return current
    tmp = venv.with_name(venv.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    log(f"creating braindecode's venv in {venv} ({' '.join(REQUIREMENTS)}; ~7 GB, a few minutes, once)")
    try:
        subprocess.run([sys.executable, "-m", "venv", str(tmp)], check=True, capture_output=True, text=True)
        proc = subprocess.run([str(tmp / "bin" / "python"), "-m", "pip", "install", "-q", *REQUIREMENTS],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError((proc.stderr.strip().splitlines() or ["pip failed"])[-1])
        tmp.rename(venv)  # only a complete venv gets the final name; python -m pip works after the move
    except (OSError, RuntimeError, subprocess.CalledProcessError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        return {"installed": False, "venv": str(venv), "error": str(exc),
                "note": f"braindecode: not measured (making its venv failed: {exc})"}
    return status(venv)


def run(task: str, args: dict[str, Any], venv: Path | None = None, timeout: float = 3600) -> dict[str, Any]:
    """``bench/braindecode_runner.py TASK`` in braindecode's venv; its JSON result.

    ``-P`` / ``PYTHONSAFEPATH`` keep ``bench/`` off that interpreter's path (its modules would shadow others)."""
    env = {**os.environ, "PYTHONSAFEPATH": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([str(venv_python(venv)), "-P", str(RUNNER), task, json.dumps(args)], capture_output=True,
                          text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"braindecode runner {task} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def recordings(cache: Path, channels: tuple[str, ...]) -> list[dict[str, Any]]:
    """The EDFs eegcache ingested (same recordings for both), each with its EDF labels of ``channels`` in order."""
    import sqlite3

    from eegcache.index.db import INDEX_FILE
    from eegcache.sources.edf import pick_channels, read_header

    with sqlite3.connect(Path(cache) / INDEX_FILE) as con:
        paths = [r[0] for r in con.execute(
            "SELECT source_path FROM recording_status WHERE status = 'ingested' ORDER BY source_path")]
    out = []
    for path in paths:
        header = read_header(Path(path))
        picks, missing = pick_channels(header.labels, channels)
        if missing:
            continue
        out.append({"path": path, "labels": [header.labels[i] for i in picks], "names": list(channels)})
    return out
