"""More concurrency (issue 5): overlapping ingests, gc while ingest runs, ``trainer sample`` while ingest writes.

Real processes on one SQLite cache. Recordings are named by absolute source path, so "overlapping trees" are
different SRC folders (the tree, a split, a patient) over the same files: every file is reachable from two or
three of the four processes started together. The bar is the serial run: the same index (``index_snapshot``),
each file preprocessed once, no duplicate rows, ``verify`` passing, and nothing a user should not see on stderr
("database is locked", a traceback).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import copy_cache
from edf_factory import Rec, index_snapshot, object_dirs, query, run_cli, write_tree
from test_crash_concurrency import _kill, _output, _start

import eegcache.ops.gc as gc_mod
from eegcache.index.db import open_index
from eegcache.ops.ingest import ingest
from eegcache.pipeline.spec import IngestConfig

TREE = (
    Rec("train", "aaaaaaha", 1, 2003, "01_tcp_ar", 0, fs=250, duration_s=150, events=((30.0, 75.5),), seed=71),
    Rec("train", "aaaaaaha", 1, 2003, "01_tcp_ar", 1, fs=256, duration_s=120, events=((100.0, 120.0),), seed=72),
    Rec("train", "aaaaaaha", 2, 2004, "02_tcp_le", 0, fs=400, duration_s=90, seed=73),
    Rec("train", "aaaaaahb", 1, 2005, "01_tcp_ar", 0, fs=512, duration_s=120, events=((0.0, 130.0),), seed=74),
    Rec("train", "aaaaaahb", 1, 2005, "01_tcp_ar", 1, fs=250, duration_s=180, events=((45.0, 50.0),), seed=75),
    Rec("dev", "aaaaaahc", 1, 2006, "03_tcp_ar_a", 0, fs=250, duration_s=120, events=((10.0, 40.0),), seed=76),
    Rec("dev", "aaaaaahc", 2, 2006, "01_tcp_ar", 0, fs=256, duration_s=60, seed=77),
    Rec("eval", "aaaaaahd", 1, 2007, "04_tcp_le_a", 0, fs=250, duration_s=90, annotation="tse_bi",
        events=((5.0, 9.0),), seed=78),
)  # fmt: skip
LOCKED = "database is locked"
SAMPLE_REFUSALS = (  # trainer/sampling.py's SamplingError messages: the documented refusals
    "is not an eegcache cache", "no window set of", "has no recordings", "no seizure windows",
    "no partial_seizure windows", "refusing to train on an incomplete selection", "holds no pipeline yet",
)  # fmt: skip


@dataclass(frozen=True)
class Serial:
    root: Path
    sources: tuple[Path, ...]  # four overlapping SRC folders: the tree, a split, a patient, another split
    cache: Path
    snapshot: dict
    n_files: int


@pytest.fixture(scope="module")
def serial(tmp_path_factory: pytest.TempPathFactory) -> Serial:
    base = tmp_path_factory.mktemp("overlap")
    root = base / "src"
    write_tree(root, TREE)
    cache = base / "serial"
    summary = ingest(root, cache, IngestConfig(), progress=False)
    assert summary.failed == 0 and summary.ingested == len(TREE), summary
    sources = (root, root / "edf" / "train", root / "edf" / "train" / "aaaaaaha", root / "edf" / "dev")
    return Serial(root, sources, cache, index_snapshot(cache), len(TREE))


def finish(procs: list[subprocess.Popen], timeout: float = 300) -> list[tuple[int, str, str]]:
    results = []
    for proc in procs:
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            for p in procs:
                _kill(p)
            raise
        out, err = _output(proc)
        results.append((rc, out, err))
    return results


def assert_clean(results: list[tuple[int, str, str]]) -> list[dict]:
    """Every process exited 0 with a JSON summary, without "database is locked" or a traceback."""
    for rc, _out, err in results:
        assert LOCKED not in err and "Traceback" not in err, err[-3000:]
        assert rc == 0, err[-3000:]
    return [json.loads(out) for _, out, _ in results]


def assert_serial(cache: Path, ref: Serial) -> None:
    """The serial index, no duplicate rows, verify passes, and gc leaves exactly the referenced objects."""
    assert query(cache, "SELECT count(*), count(DISTINCT rel_path) FROM recordings") == [(ref.n_files, ref.n_files)]
    assert query(cache, "SELECT count(*) FROM (SELECT 1 FROM windows GROUP BY recording_id, window_set_id, "
                        "start_sample HAVING count(*) > 1)") == [(0,)]
    assert query(cache, "SELECT count(*) FROM (SELECT 1 FROM events GROUP BY recording_id, start_s, stop_s "
                        "HAVING count(*) > 1)") == [(0,)]
    assert index_snapshot(cache) == ref.snapshot
    check = run_cli("verify", "--cache", cache)
    assert check.returncode == 0, check.stdout + check.stderr
    assert run_cli("gc", "--cache", cache, "--grace", "0").returncode == 0
    referenced = {k for (k,) in query(cache, "SELECT object_key FROM recordings WHERE object_key IS NOT NULL")}
    assert object_dirs(cache) == referenced == object_dirs(ref.cache)


# --- four ingests over overlapping trees ------------------------------------------------------------------------


def overlapping_round(ref: Serial, cache: Path, rng: random.Random | None = None) -> list[dict]:
    sources = list(ref.sources)
    extras: list[tuple[str, ...]] = [(), ("--workers", "2"), (), ()]
    if rng is not None:
        rng.shuffle(sources)
        extras = [("--workers", rng.choice("12")) for _ in sources]
    procs = []
    for i, (src, extra) in enumerate(zip(sources, extras, strict=True)):
        procs.append(_start(src, cache, *extra, log=cache.parent / f"{cache.name}-p{i}"))
        if rng is not None:
            time.sleep(rng.uniform(0, 0.5))
    summaries = assert_clean(finish(procs))
    # each file preprocessed once between the four (files are claimed), none failed
    assert sum(s["edf_read"] for s in summaries) == ref.n_files, summaries
    assert sum(s["failed"] for s in summaries) == 0
    assert_serial(cache, ref)
    return summaries


def test_four_overlapping_ingests_equal_one_serial_run(serial: Serial, tmp_path: Path) -> None:
    """The tree, its train split, one patient of it, and the dev split, ingested by four processes started
    together on a new cache (one with two workers)."""
    overlapping_round(serial, tmp_path / "cache")


@pytest.mark.stress
def test_four_overlapping_ingests_stress(serial: Serial, tmp_path: Path) -> None:
    """Ten rounds with shuffled sources, random worker counts and random start offsets."""
    rng = random.Random(20261206)
    for round_ in range(10):
        cache = tmp_path / f"cache{round_}"
        overlapping_round(serial, cache, rng)
        shutil.rmtree(cache)
    print("\nFIGURES test_four_overlapping_ingests_stress: 10 rounds x 4 processes, 0 inconsistencies")


# --- creating a new index -------------------------------------------------------------------------------------

OPEN_INDEX = r"""
import sys
from pathlib import Path
from eegcache.index.db import open_index
open_index(Path(sys.argv[1])).dispose()
"""


def test_processes_opening_a_new_index_wait_for_its_creator(tmp_path: Path) -> None:
    """Regression (CI): one of four ingests started together on a new cache failed with "database is locked".
    Two connections switching a new SQLite file to WAL at once deadlock, and SQLite fails one without waiting.
    So no process touches a file that is not yet WAL without the creation lock: while this test holds the lock,
    four processes opening the new cache create nothing; once it is released they all open the same WAL index."""
    import fcntl

    cache = tmp_path / "cache"
    cache.mkdir()
    with open(cache / ".index.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        procs = [subprocess.Popen([sys.executable, "-c", OPEN_INDEX, str(cache)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(4)]
        time.sleep(2.0)  # long enough for each process to import eegcache and reach the lock
        assert all(p.poll() is None for p in procs)
        index = cache / "index.sqlite"
        assert not index.exists() or index.stat().st_size == 0
        fcntl.flock(lock, fcntl.LOCK_UN)
    results = [(p.wait(timeout=120), p.communicate()[1]) for p in procs]
    assert [rc for rc, _ in results] == [0, 0, 0, 0], [err[-2000:] for _, err in results]
    assert all(LOCKED not in err for _, err in results)
    assert query(cache, "PRAGMA journal_mode") == [("wal",)]
    assert query(cache, "SELECT count(*) FROM alembic_version") == [(1,)]


def test_opening_the_index_keeps_this_process_s_sqlite_locks(tmp_path: Path) -> None:
    """Regression (CI: "database disk image is malformed" in the state machine). open_index must never open and
    close the database file itself: that drops every POSIX lock the process holds on it, so another process closing
    its last connection believes it is alone and deletes the WAL under this process's open connections. Here a
    connection stays open while open_index runs again, then another process opens and closes the index: the WAL
    must still be there."""
    import sqlite3

    cache = tmp_path / "cache"
    open_index(cache).dispose()
    held = sqlite3.connect(cache / "index.sqlite")
    try:
        held.execute("SELECT count(*) FROM alembic_version").fetchone()
        assert (cache / "index.sqlite-wal").exists()
        open_index(cache).dispose()
        closer = subprocess.run([sys.executable, "-c", "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
                                 "c.execute('SELECT count(*) FROM sqlite_master').fetchone(); c.close()",
                                 str(cache / "index.sqlite")], capture_output=True, text=True, timeout=60)
        assert closer.returncode == 0, closer.stderr
        assert (cache / "index.sqlite-wal").exists(), "another process deleted the WAL under an open connection"
        assert held.execute("SELECT count(*) FROM alembic_version").fetchone() == (1,)
    finally:
        held.close()


# --- gc while ingest runs ---------------------------------------------------------------------------------------

GC_LOOP = r"""
import json, sys, time, traceback
from pathlib import Path
from eegcache.ops.gc import gc
from eegcache.index.db import open_index
cache, stop, grace = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
out = {"runs": 0, "staging": 0, "objects": 0, "errors": []}
deadline = time.monotonic() + 240
while not (cache / "index.sqlite").exists() and not stop.exists() and time.monotonic() < deadline:
    time.sleep(0.01)
engine = open_index(cache)
while not stop.exists() and time.monotonic() < deadline:
    try:
        report = gc(engine, cache, grace_s=grace)
        out["runs"] += 1
        out["staging"] += len(report.staging)
        out["objects"] += len(report.objects)
    except Exception:
        out["errors"].append(traceback.format_exc()[-1200:])
print(json.dumps(out))
"""


def gc_during_ingest(ref: Serial, tmp_path: Path, grace: float, ingests: list[tuple[Path, tuple[str, ...]]]):
    """``gc`` (the library call the CLI makes) in a tight loop in its own process while the ingests run."""
    cache, stop = tmp_path / "cache", tmp_path / "stop"
    looper = subprocess.Popen([sys.executable, "-c", GC_LOOP, str(cache), str(stop), str(grace)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        procs = [_start(src, cache, *extra, log=tmp_path / f"ingest{i}") for i, (src, extra) in enumerate(ingests)]
        results = finish(procs)
    finally:
        stop.touch()
        out, err = looper.communicate(timeout=120)
    assert looper.returncode == 0, err[-3000:]
    return cache, results, json.loads(out)


def test_gc_with_the_default_grace_during_ingest_changes_nothing(serial: Serial, tmp_path: Path) -> None:
    """gc (default grace) looping while two ingests (one with workers) run: gc never fails and removes nothing,
    the ingests are clean, the index is the serial one."""
    cache, results, loop = gc_during_ingest(serial, tmp_path, gc_mod.DEFAULT_GRACE_S,
                                            [(serial.root, ("--workers", "2")), (serial.sources[1], ())])
    assert_clean(results)
    assert loop["runs"] > 0 and loop["staging"] == 0 and loop["objects"] == 0 and loop["errors"] == [], loop
    assert_serial(cache, serial)
    print(f"\nFIGURES gc default grace during ingest: {loop['runs']} gc runs, 0 errors, 0 inconsistencies")


def test_gc_grace_0_during_ingest_never_removes_a_writers_data(serial: Serial, tmp_path: Path) -> None:
    """gc --grace 0 looping while an ingest with workers runs: the ingest still succeeds for every file and the
    index equals the serial one (gc must never remove data a writer is about to register). Was a bug found by this
    test (gc judged writers by age only: staging rmtree'd mid-write, ObjectVanished twice -> traceback); fixed in
    01b1d91."""
    cache, results, loop = gc_during_ingest(serial, tmp_path, 0.0, [(serial.root, ("--workers", "2"))])
    assert loop["runs"] > 0
    summaries = assert_clean(results)
    assert summaries[0]["failed"] == 0, summaries[0]["failures"]
    assert loop["errors"] == [], loop["errors"][:1]
    assert_serial(cache, serial)
    print(f"\nFIGURES gc --grace 0 during ingest: {loop['runs']} gc runs, 0 errors, 0 inconsistencies")


def test_gc_survives_a_staging_folder_that_is_published_while_it_looks(
    serial: Serial, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A staging folder listed by gc and published by its writer before gc stats it is skipped, not a crash
    (was a FileNotFoundError traceback even with the default grace; fixed in 01b1d91)."""
    cache = tmp_path / "cache"
    copy_cache(serial.cache, cache)
    staging = cache / "staging" / f"{'ab' * 32}.{os.getpid()}.0badcafe"
    (staging / "signal").mkdir(parents=True)
    (staging / "zarr.json").write_text("{}")
    original = gc_mod.age

    def age(path: Path, now: float) -> float:
        if path == staging:  # listed by gc, then published by its writer before gc looks at it
            shutil.rmtree(staging)
        return original(path, now)

    monkeypatch.setattr(gc_mod, "age", age)
    engine = open_index(cache)
    try:
        gc_mod.gc(engine, cache)
    except FileNotFoundError as exc:
        raise AssertionError(f"gc crashed on a staging folder that vanished: {exc}") from exc
    finally:
        engine.dispose()


# --- trainer sample while ingest writes -------------------------------------------------------------------------

SAMPLE_LOOP = r"""
import contextlib, io, json, sys, traceback
from pathlib import Path
import click
from trainer.cli import main
cache, stop = sys.argv[1], Path(sys.argv[2])
out = {"runs": 0, "ok": 0, "refusals": [], "errors": []}
while not stop.exists():
    out["runs"] += 1
    try:
        with contextlib.redirect_stdout(io.StringIO()) as printed:
            main.main(["sample", "--cache", cache, "--json", "--split", "all"], standalone_mode=False)
        json.loads(printed.getvalue())
        out["ok"] += 1
    except click.ClickException as exc:
        out["refusals"].append(exc.format_message())
    except Exception:
        out["errors"].append(traceback.format_exc()[-1500:])
print(json.dumps(out))
"""


def check_sample(rc: int, out: str, err: str) -> str:
    """A trainer sample result: a JSON draw, or a documented refusal; never a lock error or a traceback."""
    assert LOCKED not in err and "Traceback" not in err, err[-3000:]
    if rc == 0:
        json.loads(out)
        return "ok"
    assert rc == 1 and err.startswith("Error: ") and any(r in err for r in SAMPLE_REFUSALS), err[-2000:]
    return next(r for r in SAMPLE_REFUSALS if r in err)


def test_trainer_sample_while_ingest_writes(serial: Serial, tmp_path: Path) -> None:
    """``trainer sample`` (real processes, and the same command in a tight in-process loop) while two ingests
    write a cache whose schema exists: every call prints a draw or a documented refusal, never "database is
    locked" or a traceback; afterwards the draw's counts are the serial cache's."""
    cache, stop = tmp_path / "cache", tmp_path / "stop"
    assert run_cli("db", "upgrade", "--cache", cache).returncode == 0  # see test_trainer_sample_on_a_schemaless_index
    looper = subprocess.Popen([sys.executable, "-c", SAMPLE_LOOP, str(cache), str(stop)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: list[str] = []
    try:
        procs = [_start(serial.root, cache, log=tmp_path / "ingest0"),
                 _start(serial.sources[1], cache, "--workers", "2", log=tmp_path / "ingest1")]
        while any(p.poll() is None for p in procs):
            done = subprocess.run([sys.executable, "-m", "trainer", "sample", "--cache", str(cache), "--json",
                                   "--split", "all"], capture_output=True, text=True, timeout=120)
            seen.append(check_sample(done.returncode, done.stdout, done.stderr))
        assert_clean(finish(procs))
    finally:
        stop.touch()
        out, err = looper.communicate(timeout=120)
    loop = json.loads(out)
    assert loop["errors"] == [], loop["errors"][:2]
    for message in loop["refusals"]:
        assert LOCKED not in message and any(r in message for r in SAMPLE_REFUSALS), message
    assert loop["runs"] > 0 and seen
    final = [subprocess.run([sys.executable, "-m", "trainer", "sample", "--cache", str(c), "--json", "--split", "all"],
                            capture_output=True, text=True, timeout=120) for c in (cache, serial.cache)]
    assert [f.returncode for f in final] == [0, 0], final[0].stderr + final[1].stderr
    drawn = [json.loads(f.stdout) for f in final]
    assert drawn[0]["available"] == drawn[1]["available"] and drawn[0]["per_epoch"] == drawn[1]["per_epoch"]
    assert_serial(cache, serial)
    print(f"\nFIGURES trainer sample during ingest: {loop['runs']} in-process calls ({loop['ok']} draws, "
          f"{len(loop['refusals'])} refusals), {len(seen)} real processes ({seen.count('ok')} draws), 0 errors")


def test_trainer_sample_on_a_schemaless_index(tmp_path: Path) -> None:
    """An index.sqlite without tables (a first ingest before its migration commits, or killed then) is refused
    like a missing index (was a traceback: no such table: window_sets; fixed in 01b1d91)."""
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "index.sqlite").touch()  # what open_index has created before the first migration commits
    done = subprocess.run([sys.executable, "-m", "trainer", "sample", "--cache", str(cache), "--json"],
                          capture_output=True, text=True, timeout=120)
    check_sample(done.returncode, done.stdout, done.stderr)
