"""A worker process killed mid-run (OOM killer, a segfault in a reader) never ends the run: its files are
reported failed by name, the other files are ingested, and the next run completes the index."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from eegcache.sources.synth import synthesize


def _spawned_workers(parent: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and "spawn_main" in cmdline:
            out.append(int(entry.name))
    return out


def test_killed_worker_fails_its_files_and_the_run_goes_on(tmp_path: Path) -> None:
    tree, cache = tmp_path / "tree", tmp_path / "cache"
    n_files = len(synthesize(tree, hours=0.5, seed=11))
    args = [sys.executable, "-m", "eegcache", "ingest", str(tree), "--cache", str(cache), "--workers", "2",
            "--quiet", "--json", "--missing-electrodes", "zero"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline, workers = time.time() + 60, []
    while time.time() < deadline and not workers:  # wait until the pool is up and working
        workers = _spawned_workers(proc.pid)
        time.sleep(0.2)
    assert workers, "no worker process appeared"
    time.sleep(0.5)  # a worker spends seconds importing and on its first file: the kill lands mid-file
    os.kill(workers[0], signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    summary = json.loads(out)
    assert proc.returncode == 1 and summary["failed"] >= 1, err
    assert all("worker process died" in reason for _, reason in summary["failures"])
    assert summary["ingested"] + summary["failed"] == n_files
    again = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["ingested"] == summary["failed"]
    verify = subprocess.run([sys.executable, "-m", "eegcache", "verify", "--cache", str(cache)],
                            capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout
