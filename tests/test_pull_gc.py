"""pull protects what it copied until its rows commit (issue 13, item 3).

``transfer`` copies every object first and merges the rows afterwards; a ``gc`` of the receiver in between removed
the copied, not yet registered objects, and the rows then named missing objects while the summary said success.
Now the transfer holds a claim in the receiver's index (gc leaves unregistered objects alone while claims are live)
and each recording's merge checks, under the write lock, that its object is there, copying it again if not.

Real processes: a real ``eegcache pull`` stopped between its copies and its merges (a ``sitecustomize`` shim
replaces ``eegcache.ops.transfer._checkpoint``) while a real ``eegcache gc --grace 0`` runs; the same with the copied
objects deleted behind gc's back (as a gc that ignores claims would); and a gc loop running during real pulls.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from edf_factory import Rec, eegcache_cmd, object_dirs, query, run_cli, write_rec

PULL_ENV = "EEGCACHE_TEST_PULL"
RECS = (
    Rec("train", "aaaaaaea", 1, 2003, "01_tcp_ar", 0, fs=250, duration_s=120, events=((10.0, 70.0),), seed=81),
    Rec("dev", "aaaaaaeb", 1, 2004, "02_tcp_le", 0, fs=256, duration_s=90, events=((20.0, 30.0),), seed=82),
    Rec("eval", "aaaaaaec", 1, 2005, "01_tcp_ar", 0, fs=250, duration_s=90, seed=83),
)

SHIM = f"""
import os
if os.environ.get({PULL_ENV!r}):
    import json, pathlib, shutil, time
    import eegcache.ops.transfer as _transfer
    _spec = json.loads(os.environ[{PULL_ENV!r}])

    def _checkpoint(step, _spec=_spec):
        if step != "copied":
            return
        if _spec["mode"] == "delete":  # a gc that does not respect claims takes every copied object
            for folder in pathlib.Path(_spec["cache"], "objects").glob("??/*"):
                shutil.rmtree(folder)
            return
        pathlib.Path(_spec["ready"]).touch()
        deadline = time.time() + 120
        while not os.path.exists(_spec["go"]) and time.time() < deadline:
            time.sleep(0.05)

    _transfer._checkpoint = _checkpoint
"""


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("pull-source")
    for rec in RECS:
        write_rec(base / "src", rec)
    done = run_cli("ingest", base / "src", "--cache", base / "cache", "--quiet")
    assert done.returncode == 0, done.stderr
    return base / "cache"


def _env(tmp_path: Path, spec: dict) -> dict:
    shim = tmp_path / "shim"
    shim.mkdir(exist_ok=True)
    (shim / "sitecustomize.py").write_text(SHIM)
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(shim), os.environ.get("PYTHONPATH")])),
            PULL_ENV: json.dumps(spec)}


def _assert_receiver_complete(receiver: Path, source: Path) -> None:
    keys = {k for (k,) in query(receiver, "SELECT object_key FROM recordings WHERE object_key IS NOT NULL")}
    assert keys == {k for (k,) in query(source, "SELECT object_key FROM recordings WHERE object_key IS NOT NULL")}
    assert keys <= object_dirs(receiver), "rows name objects the receiver lacks"
    done = run_cli("verify", "--cache", receiver)
    assert done.returncode == 0, done.stdout + done.stderr


def test_gc_between_the_copies_and_the_merges_leaves_the_copied_objects(source: Path, tmp_path: Path) -> None:
    """The pull is held after copying all objects; a real gc --grace 0 runs: it removes none of them (the pull's
    claim is live), the pull merges, exit 0, and verify passes (it was: 3 objects removed, the summary saying
    success, verify naming 3 missing objects)."""
    receiver, ready, go = tmp_path / "receiver", tmp_path / "ready", tmp_path / "go"
    pull = subprocess.Popen(eegcache_cmd("pull", "--cache", receiver, source, "--quiet", "--json"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(tmp_path, {"mode": "pause", "ready": str(ready), "go": str(go)}))
    try:
        deadline = time.time() + 120
        while not ready.exists():
            assert pull.poll() is None, pull.communicate()
            assert time.time() < deadline
            time.sleep(0.05)
        copied = object_dirs(receiver)
        assert len(copied) == len(RECS)
        assert query(receiver, "SELECT count(*) FROM recordings") == [(0,)]  # nothing registered yet
        gc = run_cli("gc", "--cache", receiver, "--grace", "0")
        assert gc.returncode == 0, gc.stderr
        assert "0 object(s)" in gc.stdout, gc.stdout
        assert object_dirs(receiver) == copied
    finally:
        go.touch()
        out, err = pull.communicate(timeout=300)
    assert pull.returncode == 0, err[-3000:]
    summary = json.loads(out)
    assert summary["recordings"] == len(RECS) and summary["failed"] == []
    _assert_receiver_complete(receiver, source)


def test_objects_taken_before_the_merge_are_copied_again(source: Path, tmp_path: Path) -> None:
    """Every copied object is deleted between the copies and the merges (as a gc that does not respect claims, or
    one whose claim view expired, would): each merge finds its object gone under the write lock, copies it again
    and merges; no row names a missing object."""
    receiver = tmp_path / "receiver"
    done = subprocess.run(eegcache_cmd("pull", "--cache", receiver, source, "--quiet", "--json"), capture_output=True,
                          text=True, timeout=300, env=_env(tmp_path, {"mode": "delete", "cache": str(receiver)}))
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["recordings"] == len(RECS) and summary["failed"] == []
    assert summary["objects_sent"] == 2 * len(RECS)  # each sent twice
    _assert_receiver_complete(receiver, source)


GC_LOOP = """
import sys, time
from pathlib import Path
from eegcache.ops.gc import gc
from eegcache.index.db import open_index
from eegcache.store.owner import NotOwner
cache, stop = Path(sys.argv[1]), Path(sys.argv[2])
runs = removed = 0
while not stop.exists():
    if not (cache / "index.sqlite").exists():
        time.sleep(0.01)
        continue
    try:
        engine = open_index(cache)
        try:
            removed += len(gc(engine, cache, grace_s=0).objects)
            runs += 1
        finally:
            engine.dispose()
    except NotOwner:  # the pull has not bound the new store yet
        pass
print(runs, removed)
"""


def test_gc_loop_during_real_pulls(source: Path, tmp_path: Path) -> None:
    """A gc --grace 0 loop runs against each receiver while a real pull fills it (4 pulls into fresh receivers,
    then one more into the last, which sends nothing): every pull exits 0, every row's object is there, verify
    passes, and gc removed nothing that a row names."""
    totals = []
    for i in range(4):
        receiver, stop = tmp_path / f"receiver{i}", tmp_path / f"stop{i}"
        loop = subprocess.Popen([sys.executable, "-c", GC_LOOP, str(receiver), str(stop)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            done = run_cli("pull", "--cache", receiver, source, "--quiet", "--json")
            assert done.returncode == 0, done.stderr[-3000:]
            again = run_cli("pull", "--cache", receiver, source, "--quiet", "--json")
            assert again.returncode == 0 and json.loads(again.stdout)["objects_sent"] == 0, again.stderr
        finally:
            stop.touch()
            out, err = loop.communicate(timeout=120)
        assert loop.returncode == 0, err
        totals.append(tuple(int(x) for x in out.split()))
        _assert_receiver_complete(receiver, source)
    print(f"\nFIGURES gc loop during pulls: (gc runs, objects removed) per pull {totals}")
