"""Crash safety and concurrency with real ``eegcache ingest`` processes.

SIGKILL lands at seeded random moments (the whole process group, workers included); after every kill the index
must still only show windows whose objects are complete on disk, and a rerun must reach exactly the index of an
uninterrupted run, with ``verify`` passing. Processes started together on one cache must give the index of one
serial run, without "database is locked" and without duplicate rows.

A killed process leaves claims on the files it was preparing; a rerun on the same host must take them over at
once (not wait for their lease), so every run here uses the default lease.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from edf_factory import Rec, eegcache_cmd, index_snapshot, object_dirs, query, run_cli, write_tree

CRASH_TREE = (
    Rec("train", "aaaaaaca", 1, 2003, "01_tcp_ar", 0, fs=250, duration_s=240, events=((30.0, 75.5),), seed=21),
    Rec("train", "aaaaaaca", 1, 2003, "01_tcp_ar", 1, fs=250, duration_s=180, seed=22),
    Rec("train", "aaaaaaca", 2, 2004, "02_tcp_le", 0, fs=256, duration_s=200, events=((0.0, 20.0), (150.0, 200.0)), seed=23),
    Rec("train", "aaaaaacb", 1, 2005, "03_tcp_ar_a", 0, fs=400, duration_s=150, events=((61.25, 119.75),), seed=24),
    Rec("dev", "aaaaaacc", 1, 2006, "01_tcp_ar", 0, fs=512, duration_s=120, seed=25, annotation="csv", events=((10.0, 40.0),)),
    Rec("dev", "aaaaaacc", 1, 2006, "01_tcp_ar", 2, fs=250, duration_s=300, events=((100.0, 160.0),), seed=26),
    Rec("eval", "aaaaaacd", 3, 2007, "04_tcp_le_a", 0, fs=250, duration_s=180, annotation="tse_bi",
        events=((5.0, 9.0), (12.0, 18.0)), seed=27),
    Rec("eval", "aaaaaacd", 4, 2008, "01_tcp_ar", 0, fs=256, duration_s=45, seed=28),
    Rec("eval", "aaaaaace", 1, 2009, "01_tcp_ar", 0, fs=250, duration_s=60, missing=("FZ", "PZ"), seed=29),
)  # fmt: skip


@dataclass(frozen=True)
class Reference:
    root: Path
    cache: Path
    rc: int
    summary: dict
    snapshot: dict
    wall_s: float


def _start(root: Path, cache: Path, *extra: str, log: Path | None = None) -> subprocess.Popen:
    """An `eegcache ingest` in its own process group (so a kill reaches its workers), output to files."""
    log = log or cache.parent / f"ingest-{time.monotonic_ns()}"
    out, err = open(f"{log}.out", "w"), open(f"{log}.err", "w")
    proc = subprocess.Popen(eegcache_cmd("ingest", root, "--cache", cache, "--quiet", "--json", *extra),
                            stdout=out, stderr=err, start_new_session=True)
    proc.logs = (Path(f"{log}.out"), Path(f"{log}.err"))  # type: ignore[attr-defined]
    out.close()
    err.close()
    return proc


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _output(proc: subprocess.Popen) -> tuple[str, str]:
    out, err = proc.logs  # type: ignore[attr-defined]
    return out.read_text(), err.read_text()


def _summary(stdout: str) -> dict:
    """The --json summary: stdout is one JSON object (failures go to stderr)."""
    return json.loads(stdout)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """The tree, and the index of one uninterrupted serial run over it."""
    base = tmp_path_factory.mktemp("crash")
    root = base / "src"
    write_tree(root, CRASH_TREE)
    cache = base / "reference"
    t0 = time.monotonic()
    done = run_cli("ingest", root, "--cache", cache, "--quiet", "--json")
    wall = time.monotonic() - t0
    assert done.returncode == 1, done.stderr  # the file without Fz/Pz fails
    return Reference(root, cache, done.returncode, _summary(done.stdout), index_snapshot(cache), wall)


def _check_invariants(cache: Path) -> None:
    """What must hold at ANY moment: every window belongs to an ingested recording whose object folder is
    complete (every registered file present with its size), and there are no duplicate rows."""
    if not (cache / "index.sqlite").exists():
        return
    tables = {r[0] for r in query(cache, "SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "windows" not in tables:  # killed before the first migration committed
        return
    orphans = query(cache, "SELECT count(*) FROM windows w JOIN recordings r ON r.id = w.recording_id "
                           "WHERE r.status != 'ingested' OR r.object_key IS NULL")
    assert orphans == [(0,)]
    for key, path, size in query(cache, "SELECT f.object_key, f.path, f.size FROM object_files f JOIN recordings r "
                                        "ON r.object_key = f.object_key"):
        file = cache / "objects" / key[:2] / key / path
        assert file.is_file() and file.stat().st_size == size, file
    assert query(cache, "SELECT count(*) - count(DISTINCT recording_id || ':' || window_set_id || ':' || start_sample) "
                        "FROM windows") == [(0,)]


def _assert_final(cache: Path, ref: Reference) -> None:
    assert index_snapshot(cache) == ref.snapshot
    check = run_cli("verify", "--cache", cache)
    assert check.returncode == 0, check.stdout + check.stderr
    assert run_cli("gc", "--cache", cache, "--grace", "0").returncode == 0
    referenced = {k for (k,) in query(cache, "SELECT object_key FROM recordings WHERE object_key IS NOT NULL")}
    assert object_dirs(cache) == referenced == object_dirs(ref.cache)
    assert run_cli("verify", "--cache", cache).returncode == 0


def _kill_and_rerun(ref: Reference, cache: Path, kills: int, seed: int, extra: tuple[str, ...] = ()) -> int:
    """Start ingests and kill each at a random moment of an uninterrupted run's duration, checking the invariants
    after each; a run that finished before its kill starts the next over on an empty cache (once the cache is
    complete a run has nothing to do, and kills would no longer land on work). Then a rerun must give the
    uninterrupted index. Returns how many kills landed on a running ingest."""
    rng = random.Random(seed)
    landed = 0
    for _ in range(kills):
        proc = _start(ref.root, cache, *extra)
        try:
            proc.wait(timeout=rng.uniform(0.2, ref.wall_s))
        except subprocess.TimeoutExpired:
            _kill(proc)
            landed += 1
            _check_invariants(cache)
        else:
            _, err = _output(proc)
            assert "Traceback" not in err, err
            _check_invariants(cache)
            shutil.rmtree(cache)
    final = _start(ref.root, cache, *extra)
    assert final.wait(timeout=300) == ref.rc, _output(final)
    _assert_final(cache, ref)
    return landed


def test_sigkill_at_random_moments_then_rerun(reference: Reference, tmp_path: Path) -> None:
    """Five seeded random kills across the run, then a rerun: the index equals the uninterrupted one."""
    landed = _kill_and_rerun(reference, tmp_path / "cache", kills=5, seed=20261128)
    assert landed >= 1  # at least one kill hit a running ingest


def test_rerun_after_a_kill_does_not_wait_for_the_dead_claims(reference: Reference, tmp_path: Path) -> None:
    """Killed while it holds a claim (default lease), the rerun takes the dead process's files over at once
    instead of idling until the lease runs out; its index is the uninterrupted one."""
    cache = tmp_path / "cache"
    proc = _start(reference.root, cache)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if query(cache, "SELECT count(*) FROM claims")[0][0]:
                break
        except Exception:  # noqa: BLE001 - the index or its tables may not exist yet
            pass
        time.sleep(0.02)
    assert proc.poll() is None, "the ingest ended before it was seen holding a claim"
    _kill(proc)
    assert query(cache, "SELECT count(*) FROM claims")[0][0] >= 1
    rerun = _start(reference.root, cache)
    try:
        rerun.wait(timeout=max(20.0, 4 * reference.wall_s))
    except subprocess.TimeoutExpired:
        _kill(rerun)
        raise AssertionError("the rerun was still waiting (for the killed run's claims)") from None
    assert rerun.returncode == reference.rc
    _assert_final(cache, reference)


@pytest.mark.stress
@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigkill_stress(reference: Reference, tmp_path: Path, workers: str) -> None:
    """100 kills (serial and with worker processes), then a rerun."""
    landed = _kill_and_rerun(reference, tmp_path / "cache", kills=100, seed=7 + int(workers),
                             extra=("--workers", workers))
    assert landed >= 50


def _together(ref: Reference, cache: Path, runs: list[tuple[str, ...]]) -> list[tuple[int, dict, str]]:
    procs = [_start(ref.root, cache, *extra, log=cache.parent / f"p{i}") for i, extra in enumerate(runs)]
    results = []
    for proc in procs:
        try:
            rc = proc.wait(timeout=300)
        except subprocess.TimeoutExpired:
            _kill(proc)
            raise
        out, err = _output(proc)
        results.append((rc, _summary(out), err))
    return results


def _no_trouble(results: list[tuple[int, dict, str]], rc: int) -> None:
    for code, _summary, err in results:
        assert "database is locked" not in err and "Traceback" not in err, err[-2000:]
        assert code == rc, err[-2000:]


def test_two_ingests_at_once_equal_one(reference: Reference, tmp_path: Path) -> None:
    """Two processes started together on a new cache: both finish, the index is the serial one, no duplicate
    rows, and each EDF is preprocessed once between them (files are claimed)."""
    cache = tmp_path / "cache"
    results = _together(reference, cache, [(), ()])
    _no_trouble(results, reference.rc)
    assert sum(s["edf_read"] for _, s, _ in results) == reference.summary["edf_read"]
    assert query(cache, "SELECT count(*), count(DISTINCT rel_path) FROM recordings") == \
        [(len(CRASH_TREE), len(CRASH_TREE))]
    _assert_final(cache, reference)


def test_two_strides_at_once_equal_serial(reference: Reference, tmp_path: Path) -> None:
    """Stride 60 and stride 10 ingested at the same time give the index of the two runs one after the other."""
    serial = tmp_path / "serial"
    for stride in ("60", "10"):
        run_cli("ingest", reference.root, "--cache", serial, "--quiet", "--stride", stride)
    cache = tmp_path / "cache"
    results = _together(reference, cache, [("--stride", "60"), ("--stride", "10")])
    _no_trouble(results, reference.rc)
    assert index_snapshot(cache) == index_snapshot(serial)
    assert run_cli("verify", "--cache", cache).returncode == 0


@pytest.mark.stress
def test_concurrency_stress(reference: Reference, tmp_path: Path) -> None:
    """Ten rounds of three processes (one with two workers) on fresh caches, each equal to the serial index."""
    for round_ in range(10):
        cache = tmp_path / f"cache{round_}"
        results = _together(reference, cache, [(), ("--workers", "2"), ()])
        _no_trouble(results, reference.rc)
        _assert_final(cache, reference)


# --- claims taken in batches (many short files) ------------------------------------------------------------------

# Short files: each claim batch holds many of them, so a kill lands while the process holds claims on files it has
# registered, files it is preparing and files it has not started.
SHORT_TREE = tuple(
    Rec(("train", "dev", "eval")[i % 3], f"aaaaab{chr(97 + i // 6)}{chr(97 + i % 6)}", 1 + i % 2, 2003, "01_tcp_ar",
        0, fs=250, duration_s=30 + 5 * (i % 3), events=((5.0, 12.5),) if i % 4 == 0 else (), seed=100 + i)
    for i in range(18)
)  # fmt: skip


@pytest.fixture(scope="module")
def short_reference(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    base = tmp_path_factory.mktemp("short")
    root = base / "src"
    write_tree(root, SHORT_TREE)
    cache = base / "reference"
    t0 = time.monotonic()
    done = run_cli("ingest", root, "--cache", cache, "--quiet", "--json", "--window", "10", "--stride", "5")
    wall = time.monotonic() - t0
    assert done.returncode == 0, done.stderr
    return Reference(root, cache, done.returncode, _summary(done.stdout), index_snapshot(cache), wall)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigkill_in_the_middle_of_a_claim_batch(short_reference: Reference, tmp_path: Path, workers: str) -> None:
    """Killed while it holds a batch of claims, some of its files registered and others not: every registered
    recording is complete (the same status and windows as in an uninterrupted run), none is partial, and a rerun
    takes the dead process's claims over at once, prepares only what was not registered and reaches the
    uninterrupted index."""
    ref, cache = short_reference, tmp_path / "cache"
    args = ("--window", "10", "--stride", "5", "--workers", workers)
    proc = _start(ref.root, cache, *args)
    seen = (0, 0)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            seen = query(cache, "SELECT (SELECT count(*) FROM claims), (SELECT count(*) FROM recordings)")[0]
        except Exception:  # noqa: BLE001 - the index or its tables may not exist yet
            pass
        if seen[0] >= 2 and seen[1] >= 1:
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the ingest ended before it was seen holding claims with recordings registered"
    _kill(proc)
    claims, registered = query(cache, "SELECT (SELECT count(*) FROM claims), (SELECT count(*) FROM recordings)")[0]
    assert claims >= 1 and 1 <= registered < len(SHORT_TREE), (claims, registered)
    _check_invariants(cache)
    want = {row[1]: row for row in ref.snapshot["status"]}
    done_before = index_snapshot(cache)
    for row in done_before["status"]:
        assert row == want[row[1]], "a registered recording differs from the uninterrupted run's"
    windows_of = {r[0] for r in done_before["status"]}
    assert done_before["windows"] == [w for w in ref.snapshot["windows"] if w[0] in windows_of]
    rerun = _start(ref.root, cache, *args)
    try:
        rerun.wait(timeout=max(30.0, 4 * ref.wall_s))
    except subprocess.TimeoutExpired:
        _kill(rerun)
        raise AssertionError("the rerun was still waiting (for the killed run's claims)") from None
    out, err = _output(rerun)
    assert rerun.returncode == 0, err[-2000:]
    summary = _summary(out)
    assert summary["unchanged"] == registered and summary["unchanged"] + summary["ingested"] + \
        summary["reused"] == len(SHORT_TREE), summary
    assert query(cache, "SELECT count(*) FROM claims") == [(0,)]
    _assert_final(cache, ref)
