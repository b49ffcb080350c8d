"""What the figures were measured on: CPU, memory, library versions."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def machine() -> dict[str, Any]:
    return {"cpu_count": os.cpu_count(), "cpu_model": _cpu_model(), "memory_gib": _mem_gib(),
            "platform": platform.platform(), "load_average_at_start": load_average()}


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages: on a shared machine, how much else was running."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def versions() -> dict[str, str | None]:
    """Versions of everything a figure depends on; None where a package is absent (torch is optional)."""
    out: dict[str, str | None] = {"python": sys.version.split()[0], "sqlite": sqlite3.sqlite_version}
    for name in ("eegcache", "numpy", "scipy", "zarr", "numcodecs", "sqlalchemy", "alembic", "pyedflib", "mne", "torch"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    try:
        out["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                           cwd=Path(__file__).resolve().parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        out["git_commit"] = None
    return out
