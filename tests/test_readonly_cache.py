"""A cache this user cannot write (a read-only mount, another user's cache) serves the reading commands:
``eegcache sql``, ``eegcache stats``, ``trainer sample`` and the reads of ``trainer fit``/``evaluate``; ``ingest``
and ``gc`` refuse it with a message.

The tests run as root, whom chmod does not stop: each command therefore runs in a real subprocess started by
``setpriv`` with CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH and CAP_FOWNER dropped from its bounding set (so from its
permitted and effective sets after exec). The kernel then applies the file modes to it as to any user; a probe
checks that it really cannot write the folder before anything is asserted. As another user, plain chmod suffices.
(An unprivileged uid is not used because the interpreter lives under /root, which only root may enter.)
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Standard, copy_cache

IS_ROOT = os.geteuid() == 0
DROP_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", "--inh-caps=-all"]
NOBODY = 65534


def _prefix() -> list[str]:
    if not IS_ROOT:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root and setpriv (util-linux) is missing: cannot take away root's override of "
                    "file modes, so a read-only cache cannot be made")
    return DROP_DAC


def as_reader(*args: object, check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run ``args`` (argv) as a user that file modes apply to."""
    done = subprocess.run([*_prefix(), *[str(a) for a in args]], capture_output=True, text=True, timeout=600)
    if check and done.returncode != 0:
        raise AssertionError(f"{args} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


def eegcache(*args: object, check: bool = False) -> subprocess.CompletedProcess[str]:
    return as_reader(sys.executable, "-m", "eegcache", *args, check=check)


def trainer(*args: object, check: bool = False) -> subprocess.CompletedProcess[str]:
    return as_reader(sys.executable, "-m", "trainer", *args, check=check)


def _chmod_tree(root: Path, writable: bool) -> None:
    for path in [root, *root.rglob("*")]:
        mode = path.stat().st_mode
        path.chmod(mode | 0o200 if writable else mode & ~0o222)


def _make_read_only(cache: Path, how: str) -> None:
    if how == "chmod":  # folder and files without any write bit
        _chmod_tree(cache, writable=False)
    else:  # "other_user": the cache belongs to someone else; its modes are the usual 755/644
        if not IS_ROOT:
            pytest.skip("giving a cache to another user needs root (chown)")
        for path in [cache, *cache.rglob("*")]:
            os.chown(path, NOBODY, NOBODY, follow_symlinks=False)
    probe = as_reader("sh", "-c", f"touch '{cache}/probe' 2>/dev/null || echo denied")
    assert probe.stdout.strip() == "denied", "the reader could still write the cache: the test would prove nothing"
    assert not (cache / "probe").exists()


@pytest.fixture(params=["chmod", "other_user"])
def ro_cache(request, standard: Standard, tmp_path: Path):
    cache = _copy(standard, tmp_path / "cache")
    _make_read_only(cache, request.param)
    yield cache
    if IS_ROOT:
        for path in [cache, *cache.rglob("*")]:
            os.chown(path, 0, 0, follow_symlinks=False)
    _chmod_tree(cache, writable=True)


def _copy(standard: Standard, target: Path) -> Path:
    """A copy of the standard cache with no WAL side files (checkpointed, then closed: as an idle cache is)."""
    copy_cache(standard.cache, target)
    conn = sqlite3.connect(target / "index.sqlite")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    assert not list(target.glob("index.sqlite-*"))
    return target


def _digest(cache: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(cache)): (p.stat().st_size, p.stat().st_mtime_ns) for p in cache.rglob("*")}


def test_sql_stats_and_trainer_sample_read_a_read_only_cache(ro_cache: Path, standard: Standard) -> None:
    before = _digest(ro_cache)
    done = eegcache("sql", "--cache", ro_cache, "--json",
                    "SELECT label, count(*) AS n FROM window_labels GROUP BY label ORDER BY label", check=True)
    assert {r["label"]: r["n"] for r in json.loads(done.stdout)} == {
        k: v for k, v in standard.summary.window_counts.items() if v}
    stats = json.loads(eegcache("stats", "--cache", ro_cache, "--json", check=True).stdout)
    assert stats["windows"] == standard.summary.window_counts
    assert stats["recordings"] == {"ingested": 6, "failed": 1, "skipped": 1}
    sample = trainer("sample", "--cache", ro_cache, "--allow-incomplete", "--json", "--ids", check=True)
    draw = json.loads(sample.stdout)["draw"]
    assert draw["windows"] > 0 and len(draw["ids"]) == draw["windows"]
    # the same draw as on a writable copy of the cache
    writable = subprocess.run([sys.executable, "-m", "trainer", "sample", "--cache", str(standard.cache),
                               "--allow-incomplete", "--json", "--ids"], capture_output=True, text=True, check=True)
    assert json.loads(writable.stdout)["draw"]["ids"] == draw["ids"]
    assert _digest(ro_cache) == before, "a reading command changed the read-only cache"
    assert not list(ro_cache.glob("index.sqlite-*"))


def test_ingest_and_gc_refuse_a_read_only_cache_with_a_message(ro_cache: Path, standard: Standard) -> None:
    before = _digest(ro_cache)
    for args in (("ingest", standard.root, "--cache", ro_cache, "--quiet"), ("gc", "--cache", ro_cache)):
        done = eegcache(*args)
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr
        assert "is not writable by this user" in done.stderr and "read-only commands" in done.stderr, done.stderr
    assert _digest(ro_cache) == before


def test_trainer_fit_and_evaluate_read_a_read_only_cache(ro_cache: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    runs.chmod(0o777)  # the run folder is the reader's own
    fit = trainer("fit", "--cache", ro_cache, "--out", runs / "run", "--epochs", 1, "--allow-incomplete",
                  "--max-windows-per-epoch", 4, "--batch-size", 4, "--val-split", "dev", "--quiet", check=True)
    assert "done: 1 epochs" in fit.stdout
    ev = trainer("evaluate", "--cache", ro_cache, "--checkpoint", runs / "run" / "last.pt", "--split", "eval",
                 "--json", check=True)
    assert json.loads(ev.stdout)["metrics"]["recordings"] >= 1


def test_a_reader_beside_a_live_writer_reads_through_the_wal(standard: Standard, tmp_path: Path) -> None:
    """Another user's cache while its owner has it open: the side files exist, so the reader opens ``mode=ro``
    (not ``immutable``) and sees a transaction the owner committed to the WAL without a checkpoint."""
    cache = _copy(standard, tmp_path / "cache")
    owner = sqlite3.connect(cache / "index.sqlite", isolation_level=None)
    try:
        owner.execute("PRAGMA wal_autocheckpoint = 0")
        owner.execute("INSERT INTO window_sets(pipeline_id, window_s, stride_s, fs, window_samples, stride_samples) "
                      "SELECT min(id), 7, 7, 256, 1792, 1792 FROM pipelines")
        assert (cache / "index.sqlite-wal").stat().st_size > 0
        _make_read_only(cache, "chmod")
        done = eegcache("sql", "--cache", cache, "--json", "SELECT count(*) AS n FROM window_sets WHERE window_s = 7",
                        check=True)
        assert json.loads(done.stdout) == [{"n": 1}]
    finally:
        owner.close()
        _chmod_tree(cache, writable=True)


def test_stranded_wal_without_its_index_is_refused_not_misread(standard: Standard, tmp_path: Path) -> None:
    """A WAL with committed transactions and no -shm (a writer killed, then the shm removed) in a folder the reader
    cannot write: ``immutable`` would silently miss those transactions, so every reader refuses with a message."""
    cache = _copy(standard, tmp_path / "cache")
    child = subprocess.run([sys.executable, "-c", f"""
import os, sqlite3
c = sqlite3.connect({str(cache / 'index.sqlite')!r}, isolation_level=None)
c.execute("PRAGMA wal_autocheckpoint = 0")
c.execute("INSERT INTO window_sets(pipeline_id, window_s, stride_s, fs, window_samples, stride_samples) "
          "SELECT min(id), 7, 7, 256, 1, 1 FROM pipelines")
os._exit(0)  # no checkpoint, no clean close
"""], check=True)
    assert child.returncode == 0 and (cache / "index.sqlite-wal").stat().st_size > 0
    (cache / "index.sqlite-shm").unlink()
    _make_read_only(cache, "chmod")
    try:
        for done in (eegcache("sql", "--cache", cache, "SELECT 1"), eegcache("stats", "--cache", cache),
                     trainer("sample", "--cache", cache, "--allow-incomplete")):
            assert done.returncode == 1, done.stdout
            assert "Traceback" not in done.stderr, done.stderr[-1500:]
            assert "transactions not yet in index.sqlite" in done.stderr, done.stderr
    finally:
        _chmod_tree(cache, writable=True)
    # the owner opening it once recovers them
    assert json.loads(subprocess.run([sys.executable, "-m", "eegcache", "sql", "--cache", str(cache), "--json",
                                      "SELECT count(*) AS n FROM window_sets WHERE window_s = 7"],
                                     capture_output=True, text=True, check=True).stdout) == [{"n": 1}]


def test_an_older_schema_in_a_read_only_cache_is_refused_with_a_message(standard: Standard, tmp_path: Path) -> None:
    from eegcache.index import db

    cache = _copy(standard, tmp_path / "cache")
    engine = db.open_index(cache)
    db.downgrade(engine, "0002")
    engine.dispose()
    _make_read_only(cache, "chmod")
    try:
        done = eegcache("stats", "--cache", cache)
        assert done.returncode == 1 and "Traceback" not in done.stderr
        assert "cannot be upgraded here" in done.stderr and "eegcache db upgrade" in done.stderr, done.stderr
    finally:
        _chmod_tree(cache, writable=True)
