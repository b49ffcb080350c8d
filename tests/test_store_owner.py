"""gc only with the index that owns the store (issue 13, item 2), and gc's grace counted from when an object stopped
being referenced.

Every command runs as a real ``eegcache`` process. A snapshot made by ``eegcache index copy`` (the README's way to
train on a cluster) and a file copy of the index (``cp``) are refused by gc, repair, pull and push with a message
that says why, and delete nothing; the store's own index, a cache folder moved or copied whole, and an index bound
on purpose with ``eegcache store adopt`` work. Migration 0007 is tested on a cache made by the previous revision's
code (``tests/fixtures/cache_0005.tar.gz``).
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import time
from pathlib import Path

import pytest
from edf_factory import Rec, object_dirs, query, run_cli, write_rec

from eegcache.index.db import open_index
from eegcache.ops.gc import gc
from eegcache.ops.ingest import ingest
from eegcache.pipeline.spec import IngestConfig

FIXTURES = Path(__file__).resolve().parent / "fixtures"
FIRST = Rec("train", "aaaaaada", 1, 2003, "01_tcp_ar", 0, fs=250, duration_s=120, events=((10.0, 70.0),), seed=71)
SECOND = Rec("dev", "aaaaaadb", 1, 2004, "02_tcp_le", 0, fs=256, duration_s=90, events=((20.0, 30.0),), seed=72)
LATER = Rec("eval", "aaaaaadc", 1, 2005, "01_tcp_ar", 0, fs=250, duration_s=90, seed=73)


def _ok(*args: object) -> str:
    done = run_cli(*args)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _refused(*args: object, command: str) -> str:
    done = run_cli(*args)
    assert done.returncode != 0, done.stdout
    assert "Traceback" not in done.stderr, done.stderr
    assert f"{command} refused: the index" in done.stderr and "does not own the store" in done.stderr, done.stderr
    return done.stderr


def _sqlite(path: Path) -> str:
    return f"sqlite:///{path}"


@pytest.fixture
def live(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A cache of two recordings, a snapshot of its index (eegcache index copy), then a third recording ingested
    into the live index only: (source root, cache, snapshot file)."""
    root, cache, snapshot = tmp_path / "src", tmp_path / "cache", tmp_path / "snapshot.sqlite"
    write_rec(root, FIRST)
    write_rec(root, SECOND)
    _ok("ingest", root, "--cache", cache, "--quiet")
    _ok("index", "copy", "--from", _sqlite(cache / "index.sqlite"), "--to", _sqlite(snapshot))
    write_rec(root, LATER)
    _ok("ingest", root, "--cache", cache, "--quiet")
    return root, cache, snapshot


def test_gc_with_an_index_snapshot_refuses_and_deletes_nothing(live) -> None:
    """The issue's reproduction: gc --grace 0 with the snapshot and the live store deleted the object of the
    recording ingested after the snapshot, and verify on the live cache reported it missing. Now gc refuses, says
    the index is a snapshot, and the store is untouched."""
    _, cache, snapshot = live
    before = object_dirs(cache)
    assert len(before) == 3
    err = _refused("gc", "--cache", cache, "--db", _sqlite(snapshot), "--grace", "0", command="gc")
    assert "is a snapshot (eegcache index copy)" in err and "eegcache store adopt" in err
    assert _refused("gc", "--cache", cache, "--db", _sqlite(snapshot), "--dry-run", command="gc")
    assert object_dirs(cache) == before
    _ok("verify", "--cache", cache)
    assert "removed 0 staging folder(s), 0 object(s)" in _ok("gc", "--cache", cache, "--grace", "0")


def test_gc_with_a_file_copy_of_the_index_refuses(live, tmp_path: Path) -> None:
    """cp of index.sqlite has the owner's identity but another location: refused as a copy."""
    _, cache, _ = live
    copy = tmp_path / "elsewhere" / "index.sqlite"
    copy.parent.mkdir()
    shutil.copy2(cache / "index.sqlite", copy)
    err = _refused("gc", "--cache", cache, "--db", _sqlite(copy), "--grace", "0", command="gc")
    assert f"is at {copy}" in err and "a copy of the owner" in err, err
    assert len(object_dirs(cache)) == 3


def test_repair_pull_and_push_refuse_a_snapshot(live, tmp_path: Path) -> None:
    """repair removes and rebuilds objects, pull and push write the receiver: each refuses an index that does not
    own the store it would write, before changing anything."""
    root, cache, snapshot = live
    key = query(cache, "SELECT object_key FROM recordings WHERE name = ?", (FIRST.stem,))[0][0]
    chunk = next(p for p in (cache / "objects" / key[:2] / key / "signal").rglob("*") if p.is_file() and
                 p.name != "zarr.json")
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    done = run_cli("verify", "--cache", cache, "--db", _sqlite(snapshot), "--repair")
    assert done.returncode != 0 and "repair refused: the index" in done.stderr, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert chunk.read_bytes() == bytes(data)  # nothing rebuilt, nothing removed
    _ok("verify", "--cache", cache, "--repair")  # the owner repairs
    other = tmp_path / "other"
    write_rec(tmp_path / "other-src", Rec("train", "aaaaaadd", 1, 2006, "01_tcp_ar", 0, duration_s=60, seed=74))
    _ok("ingest", tmp_path / "other-src", "--cache", other, "--quiet")
    _refused("pull", "--cache", cache, "--db", _sqlite(snapshot), other, "--quiet", command="pull")
    remote = tmp_path / "remote"
    _ok("push", "--cache", cache, remote, "--quiet")  # a remote cache folder, owned by its own index
    shutil.copy2(snapshot, remote / "index.sqlite")  # ... whose index someone replaced by a snapshot
    for side in ("-wal", "-shm"):
        (remote / f"index.sqlite{side}").unlink(missing_ok=True)
    _refused("push", "--cache", cache, remote, "--quiet", command="push")


def test_a_cache_moved_or_copied_whole_keeps_its_owner(live, tmp_path: Path) -> None:
    """store.json records the index relative to the store folder: the folder moved, or copied with cp -r, is its
    own index's store (each copy owns itself)."""
    _, cache, _ = live
    moved = tmp_path / "moved"
    os.rename(cache, moved)
    _ok("gc", "--cache", moved, "--grace", "0")
    twin = tmp_path / "twin"
    shutil.copytree(moved, twin)
    _ok("gc", "--cache", twin, "--grace", "0")
    _ok("verify", "--cache", twin)
    identity = json.loads((twin / "store.json").read_text())
    assert identity["index_location"] == "index.sqlite"
    assert query(twin, "SELECT index_id, store_id, snapshot_of FROM index_identity") == [
        (identity["index_id"], identity["store_id"], None)]


def test_store_adopt_hands_the_store_to_another_index(live) -> None:
    """After moving the index for good (here to another SQLite file; the same holds for PostgreSQL), store adopt
    binds the store to it: gc works with it, and the old index is refused."""
    _, cache, snapshot = live
    moved = cache.parent / "moved.sqlite"
    _ok("index", "copy", "--from", _sqlite(cache / "index.sqlite"), "--to", _sqlite(moved))
    out = _ok("store", "adopt", "--cache", cache, "--db", _sqlite(moved))
    assert "owner was index" in out and "now index" in out
    assert "removed 0 staging folder(s), 0 object(s)" in _ok("gc", "--cache", cache, "--db", _sqlite(moved),
                                                              "--grace", "0")
    _refused("gc", "--cache", cache, "--grace", "0", command="gc")
    _refused("gc", "--cache", cache, "--db", _sqlite(snapshot), command="gc")
    _ok("verify", "--cache", cache, "--db", _sqlite(moved))


def test_migration_0007_on_a_cache_made_by_the_previous_revision(tmp_path: Path) -> None:
    """A cache made by the previous revision's code (schema 0005: 4 recordings, 2 window sets, real ingest; see
    tests/fixtures/README.md) and a snapshot of it made by that code's index copy. Upgrading keeps every row and
    gives the index an identity; the store has none yet, so gc with the old snapshot (which cannot be told from
    the owner by its marks) is refused; gc with the store folder's own index binds the store, and then the
    snapshot is refused for its identity; downgrade to 0005 and up again keeps the rows."""
    with tarfile.open(FIXTURES / "cache_0005.tar.gz") as tar:
        tar.extractall(tmp_path, filter="data")
    cache, snapshot = tmp_path / "cache", tmp_path / "snapshot.sqlite"
    assert query(cache, "SELECT version_num FROM alembic_version") == [("0005",)]
    windows = query(cache, "SELECT * FROM window_labels ORDER BY window_id")
    status = query(cache, "SELECT * FROM recording_status ORDER BY recording")
    assert len(windows) == 6 and len(status) == 4
    assert "index at revision 0007" in _ok("db", "upgrade", "--cache", cache)
    assert query(cache, "SELECT * FROM window_labels ORDER BY window_id") == windows
    assert query(cache, "SELECT * FROM recording_status ORDER BY recording") == status
    [(index_id, store_id, snapshot_of)] = query(cache, "SELECT index_id, store_id, snapshot_of FROM index_identity")
    assert len(index_id) == 36 and store_id is None and snapshot_of is None
    assert not (cache / "store.json").exists()
    err = _refused("gc", "--cache", cache, "--db", _sqlite(snapshot), "--grace", "0", command="gc")
    assert "has no identity yet" in err, err
    objects = object_dirs(cache)
    assert len(objects) == 4
    assert "removed 0 staging folder(s), 0 object(s)" in _ok("gc", "--cache", cache, "--grace", "0")
    identity = json.loads((cache / "store.json").read_text())
    assert identity["index_id"] == index_id
    assert query(cache, "SELECT store_id FROM index_identity") == [(identity["store_id"],)]
    err = _refused("gc", "--cache", cache, "--db", _sqlite(snapshot), "--grace", "0", command="gc")
    assert f"the store belongs to index {index_id[:8]}" in err, err
    assert object_dirs(cache) == objects
    _ok("verify", "--cache", cache)
    engine = open_index(cache)
    try:
        from eegcache.index.db import downgrade, upgrade

        downgrade(engine, "0005")
        assert query(cache, "SELECT * FROM window_labels ORDER BY window_id") == windows
        upgrade(engine)
    finally:
        engine.dispose()
    assert query(cache, "SELECT * FROM recording_status ORDER BY recording") == status
    # a new identity after the round trip (0005 had none): the old binding names the previous id, so it is refused
    # until the owner binds it again on purpose
    _refused("gc", "--cache", cache, command="gc")
    _ok("store", "adopt", "--cache", cache)
    _ok("gc", "--cache", cache, "--grace", "0")


# --- the grace period counts from when an object stopped being referenced ----------------------------------


def _edit_annotation(edf: Path, events: tuple[tuple[float, float], ...], duration_s: float) -> None:
    from edf_factory import write_csv_bi

    ann = edf.with_suffix(".csv_bi")
    stamp = max(time.time_ns(), ann.stat().st_mtime_ns + 1_000_000_000)
    write_csv_bi(ann, events, duration_s)
    os.utime(ann, ns=(stamp, stamp))


def test_gc_grace_counts_from_when_an_object_stopped_being_referenced(tmp_path: Path) -> None:
    """An object built long ago (its folder dated a year back) that a re-ingest just stopped referencing: gc with
    the default grace used to remove it at once (the folder's age). Now a gc run records when it found the object
    unreferenced, and only a run at least the grace later removes it; an object referenced again in between starts
    afresh. (Grace 2 s here, in process.)"""
    root, cache = tmp_path / "src", tmp_path / "cache"
    edf = write_rec(root, FIRST)
    ingest(root, cache, IngestConfig(), progress=False)
    engine = open_index(cache)
    try:
        old = query(cache, "SELECT object_key FROM recordings")[0][0]
        year_ago = time.time() - 365 * 86400
        folder = cache / "objects" / old[:2] / old
        for path in (folder, *folder.rglob("*")):
            os.utime(path, (year_ago, year_ago), follow_symlinks=False)
        _edit_annotation(edf, ((80.0, 100.0),), FIRST.duration_s)
        ingest(root, cache, IngestConfig(), progress=False)
        assert query(cache, "SELECT object_key FROM recordings")[0][0] != old
        assert gc(engine, cache).objects == []  # default grace (1 h): found unreferenced just now, kept
        assert gc(engine, cache, grace_s=2.0).objects == []
        [(since,)] = query(cache, "SELECT since_s FROM unreferenced_objects WHERE object_key = ?", (old,))
        time.sleep(2.2)
        # referenced again (the annotation back to its first bytes), then dropped again: the clock restarts
        _edit_annotation(edf, FIRST.events, FIRST.duration_s)
        ingest(root, cache, IngestConfig(), progress=False)
        assert query(cache, "SELECT object_key FROM recordings")[0][0] == old
        assert query(cache, "SELECT count(*) FROM unreferenced_objects WHERE object_key = ?", (old,)) == [(0,)]
        _edit_annotation(edf, ((80.0, 100.0),), FIRST.duration_s)
        ingest(root, cache, IngestConfig(), progress=False)
        assert gc(engine, cache, grace_s=2.0).objects == []  # 2.2 s after the first sighting, but new since
        [(again,)] = query(cache, "SELECT since_s FROM unreferenced_objects WHERE object_key = ?", (old,))
        assert again > since + 2.0
        time.sleep(2.2)
        assert gc(engine, cache, grace_s=2.0, dry_run=True).objects == [old]
        assert old in object_dirs(cache)
        assert gc(engine, cache, grace_s=2.0).objects == [old]
        assert old not in object_dirs(cache)
        assert query(cache, "SELECT count(*) FROM unreferenced_objects") == [(0,)]
    finally:
        engine.dispose()
    assert run_cli("verify", "--cache", cache).returncode == 0
