"""Repeated timings, their summary (median and spread), and child processes whose peak memory we can read."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any


def summary(samples: list[float]) -> dict[str, Any]:
    """Median, min and max of repeated measurements, keeping the raw runs."""
    if not samples:
        return {"median": None, "min": None, "max": None, "runs": []}
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples), "runs": list(samples)}


def repeat(fn: Callable[[], Any], repeats: int) -> tuple[dict[str, Any], list[Any]]:
    """Time ``fn`` ``repeats`` times (wall clock); returns the summary of seconds and each run's return value."""
    seconds, values = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        values.append(fn())
        seconds.append(time.perf_counter() - t0)
    return summary(seconds), values


def run_child(task: str, args: dict[str, Any]) -> dict[str, Any]:
    """Run ``bench.child`` in a fresh interpreter and return its JSON result.

    The child times its own work, so interpreter start-up and imports are not counted, and reports its peak
    resident memory (``ru_maxrss`` of itself and of the worker processes it waited for)."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.child", task, json.dumps(args)],
        capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    if proc.returncode != 0:
        raise RuntimeError(f"bench.child {task} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
