"""Fault injection (issue 5): ENOSPC and EIO during object writes and during the index commit.

Faults are injected where the operating system would raise them: zarr's file write (``zarr.storage._local._put``),
``os.fsync``, the ``os.rename`` that publishes a staging folder, the folder fsync after it, the signal pointer
write, the read-back that checksums a published object, and the SQL statements and COMMIT of one recording's
registration. Each fault is aimed at ONE recording (by its object key or source path, predicted from the files
with ``eegcache.pipeline.keys``), in process through ``eegcache.ops.ingest.ingest`` and in real ``eegcache ingest`` processes
with worker processes (a ``sitecustomize`` shim installs the same fault in every process). The last tests fill a
real tmpfs.

After every fault: the failing recording is reported by name with the operating system's words; nothing half
registered is in the index (no windows without an ingested recording and a registered object, every registered
object's folder holds exactly its registered files and decodes, ``verify`` passes, no staging folder or claim is
left); and a rerun without the fault gives the index of an uninterrupted run.
"""

from __future__ import annotations

import errno
import os
import pathlib
import random
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from conftest import copy_cache
from edf_factory import Rec, eegcache_cmd, index_snapshot, object_dirs, query, write_tree
from sqlalchemy import event
from sqlalchemy import exc as sa_exc

import eegcache.ops.ingest as ingest_mod
import eegcache.ops.register as register_mod
import eegcache.store.base
import eegcache.store.layout
from eegcache.index.db import open_index
from eegcache.ops.gc import gc
from eegcache.ops.ingest import IngestSummary, ingest
from eegcache.ops.verify import verify
from eegcache.pipeline import keys
from eegcache.pipeline.spec import IngestConfig, PreprocessSpec
from eegcache.sources.annotations import find_annotation
from eegcache.sources.tree import path_text
from eegcache.store import LABEL_CHUNK, LocalObjectStore

FAULT_TREE = (
    Rec("train", "aaaaaafa", 1, 2003, "01_tcp_ar", 0, fs=250, duration_s=120, events=((30.0, 75.5),), seed=41),
    Rec("train", "aaaaaafa", 1, 2003, "01_tcp_ar", 1, fs=256, duration_s=90, seed=42),
    Rec("dev", "aaaaaafb", 1, 2004, "02_tcp_le", 0, fs=400, duration_s=150, events=((0.0, 20.0), (100.0, 150.0)),
        seed=43),
    Rec("eval", "aaaaaafc", 2, 2005, "01_tcp_ar", 0, fs=512, duration_s=60, annotation="tse_bi",
        events=((10.0, 40.0),), seed=44),
)  # fmt: skip
TESTS_DIR = Path(__file__).resolve().parent
FAULT_ENV = "EEGCACHE_TEST_FAULT"


@dataclass(frozen=True)
class Reference:
    root: Path
    cache: Path
    edfs: tuple[Path, ...]  # in registration order (sorted paths)
    keys: dict[Path, str]  # object key of each EDF, predicted from its bytes
    snapshot: dict
    strides_snapshot: dict  # after a second, windows-only ingest at a 30 s stride


def object_key_of(edf: Path, spec: PreprocessSpec | None = None) -> str:
    """The object key ingest will give this EDF (its bytes, its annotation's bytes, the spec)."""
    ann = find_annotation(edf)
    assert ann is not None
    return keys.object_key(keys.file_digest(edf), spec or PreprocessSpec(), keys.label_key(keys.file_digest(ann)))


def run_ingest(root: Path, cache: Path, stride_s: float = 60.0, store_url: str | None = None) -> IngestSummary:
    return ingest(root, cache, IngestConfig(stride_s=stride_s), store_url=store_url, progress=False)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """The tree and the index of one uninterrupted ingest (and of a second one at another stride)."""
    base = tmp_path_factory.mktemp("faults")
    root = base / "src"
    edfs = tuple(sorted(write_tree(root, FAULT_TREE).values(), key=os.fsencode))
    cache = base / "reference"
    summary = run_ingest(root, cache)
    assert summary.failed == 0 and summary.ingested == len(FAULT_TREE), summary
    predicted = {edf: object_key_of(edf) for edf in edfs}
    stored = dict(query(cache, "SELECT d.root || '/' || r.rel_path, r.object_key FROM recordings r "
                               "JOIN datasets d ON d.id = r.dataset_id"))
    assert stored == {path_text(edf): key for edf, key in predicted.items()}
    snapshot = index_snapshot(cache)
    strides = base / "strides"
    copy_cache(cache, strides)
    assert run_ingest(root, strides, stride_s=30.0).failed == 0
    return Reference(root, cache, edfs, predicted, snapshot, index_snapshot(strides))


# --- what must hold after any fault --------------------------------------------------------------------------


def assert_consistent(cache: Path, store_root: Path | None = None, *, claims_left: bool = False) -> None:
    """Nothing half registered: windows and events only for ingested recordings with a registered object; every
    registered object's folder holds exactly its registered files, which decode (CRC32C) and pass ``verify``;
    no duplicate windows and no claim left behind."""
    assert query(cache, """SELECT count(*) FROM windows w JOIN recordings r ON r.id = w.recording_id
                           LEFT JOIN objects o ON o.key = r.object_key
                           WHERE r.status != 'ingested' OR o.key IS NULL""") == [(0,)]
    assert query(cache, """SELECT count(*) FROM recordings r LEFT JOIN objects o ON o.key = r.object_key
                           WHERE r.status = 'ingested' AND (o.key IS NULL OR NOT EXISTS
                               (SELECT 1 FROM object_files f WHERE f.object_key = o.key))""") == [(0,)]
    assert query(cache, "SELECT count(*) FROM recordings WHERE status = 'failed' AND object_key IS NOT NULL") == [(0,)]
    assert query(cache, "SELECT count(*) FROM events e JOIN recordings r ON r.id = e.recording_id "
                        "WHERE r.status != 'ingested'") == [(0,)]
    assert query(cache, "SELECT count(*) FROM (SELECT 1 FROM windows GROUP BY recording_id, window_set_id, "
                        "start_sample HAVING count(*) > 1)") == [(0,)]
    if not claims_left:
        assert query(cache, "SELECT count(*) FROM claims") == [(0,)]
    store = LocalObjectStore(store_root or cache)
    for (key,) in query(cache, "SELECT key FROM objects"):
        folder = store.path(key)
        registered = dict(query(cache, "SELECT path, size FROM object_files WHERE object_key = ?", (key,)))
        on_disk = {p.relative_to(folder).as_posix(): p.stat().st_size for p in folder.rglob("*") if p.is_file()}
        assert on_disk == registered, f"object {key}: files on disk differ from the index"
        group = store.open(key)
        signal, labels = np.asarray(group["signal"][...]), np.asarray(group["labels"][...])
        assert signal.shape[1] == labels.shape[0]
    # A staging folder may outlive a failed write: zarr still has chunk writes in flight (threads) when the first
    # error reaches ObjectStore.write, and they recreate folders behind its rmtree. Staging is never read; gc
    # removes it (assert_healed checks that).
    engine = open_index(cache)
    try:
        report = verify(engine, cache, store_url=f"file://{store_root}" if store_root else None)
    finally:
        engine.dispose()
    assert report.ok, [str(p) for p in report.problems]


def assert_healed(cache: Path, expected: dict, store_root: Path | None = None) -> None:
    """The index equals the uninterrupted one, verify passes, and gc leaves exactly the referenced objects and no
    staging folder of a finished process."""
    assert index_snapshot(cache) == expected
    assert_consistent(cache, store_root)
    engine = open_index(cache)
    try:
        gc(engine, cache, grace_s=0, store_url=f"file://{store_root}" if store_root else None)
    finally:
        engine.dispose()
    referenced = {k for (k,) in query(cache, "SELECT object_key FROM recordings WHERE object_key IS NOT NULL")}
    assert object_dirs(store_root or cache) == referenced
    staging = LocalObjectStore(store_root or cache).staging_root
    leftovers = sorted(staging.iterdir()) if staging.exists() else []
    # gc keeps the staging folders of live processes; an in-process write that failed may leave one behind
    # (test_a_failed_object_write_leaves_no_staging_folder, xfail): only this process's may remain.
    assert [p for p in leftovers if p.name.split(".")[1:2] != [str(os.getpid())]] == [], leftovers


# --- the faults ------------------------------------------------------------------------------------------------
# An installer takes a ``setattr`` (pytest's monkeypatch.setattr in process, the builtin in the shim), the target
# (object key or source path) and which occurrence fails (1-based), and returns a Fault that counts its firings.


@dataclass
class Fault:
    fired: int = 0
    seen: int = 0

    def hit(self, nth: int) -> bool:
        self.seen += 1
        if self.seen == nth:
            self.fired += 1
            return True
        return False

    def every(self) -> bool:
        self.seen += 1
        self.fired += 1
        return True


def os_error(code: int, filename: object = None) -> OSError:
    return OSError(code, os.strerror(code), None if filename is None else os.fspath(filename))


def file_write(setattr_: Callable, key: str, nth: int, code: int = errno.ENOSPC) -> Fault:
    """The write of the nth file (metadata or shard) of the target object fails half-way: half its bytes are on
    disk, then the disk is full (or fails)."""
    fault, original = Fault(), eegcache.store.layout.write_file

    def write_file(path, blob):
        if key in str(path) and fault.hit(nth):
            original(path, blob[:len(blob) // 2])
            raise os_error(code, path)
        return original(path, blob)

    setattr_(eegcache.store.layout, "write_file", write_file)
    return fault


def fsync_fails(setattr_: Callable, key: str, nth: int, code: int = errno.EIO) -> Fault:
    """The nth fsync of a file or folder of the target object's staging folder fails; while the target is staged,
    the flush of its batch (syncfs) reports the error too, so the store fsyncs each file to find the culprit."""
    fault, original, flush = Fault(), os.fsync, eegcache.store.base.flush_filesystem

    def flush_filesystem(path):
        staged = Path(path).parent
        if staged.name == "staging" and any(key in name for name in os.listdir(staged)):
            raise os_error(code, path)
        return flush(path)

    def fsync(fd):
        try:
            where = os.readlink(f"/proc/self/fd/{fd if isinstance(fd, int) else fd.fileno()}")
        except OSError:
            where = ""
        if key in where and fault.hit(nth):
            raise os_error(code)
        return original(fd)

    setattr_(os, "fsync", fsync)
    setattr_(eegcache.store.base, "flush_filesystem", flush_filesystem)
    return fault


def rename_fails(setattr_: Callable, key: str, nth: int, code: int = errno.ENOSPC) -> Fault:
    """The rename that publishes the target's staging folder into objects/ fails (a full directory block)."""
    fault, original = Fault(), os.rename

    def rename(src, dst, *args, **kwargs):
        if key in os.fspath(src) and Path(os.fspath(src)).parent.name == "staging" and fault.hit(nth):
            raise os_error(code, src)
        return original(src, dst, *args, **kwargs)

    setattr_(os, "rename", rename)
    return fault


def publish_then_eio(setattr_: Callable, key: str, nth: int, code: int = errno.EIO) -> Fault:
    """The rename succeeds, then the fsync of objects/<k[:2]> fails: the object is published but the call
    raises, so the recording fails with a complete, unregistered object on disk."""
    fault, original = Fault(), LocalObjectStore._publish

    def _publish(self, k, staging):
        published = original(self, k, staging)
        if k == key and fault.hit(nth):
            raise os_error(code, self.path(k).parent)
        return published

    setattr_(LocalObjectStore, "_publish", _publish)
    return fault


def pointer_fails(setattr_: Callable, key: str, nth: int, code: int = errno.ENOSPC) -> Fault:
    """The signal pointer file (signals/...) naming the target is created, then the disk is full. (A write into a
    signals/<prefix> folder not made yet fails before it creates anything, and the store makes the folder: not the
    fault's moment.)"""
    fault, original = Fault(), pathlib.Path.write_text

    def write_text(self, data, *args, **kwargs):
        if data == key and "signals" in self.parts and self.parent.is_dir() and fault.hit(nth):
            original(self, "", *args, **kwargs)
            raise os_error(code, self)
        return original(self, data, *args, **kwargs)

    setattr_(pathlib.Path, "write_text", write_text)
    return fault


@dataclass(frozen=True)
class IoKind:
    install: Callable[..., Fault]
    code: int
    occurrences: int  # how many occurrences one object write has at least (for the stress positions)


IO_FAULTS = {
    # an object has at least 4 files: three zarr.json and the signal's shard (no label shard without a seizure)
    "object file write ENOSPC": IoKind(file_write, errno.ENOSPC, 4),
    "object file write EIO": IoKind(lambda s, k, n: file_write(s, k, n, errno.EIO), errno.EIO, 4),
    "fsync EIO": IoKind(fsync_fails, errno.EIO, 7),
    "fsync ENOSPC": IoKind(lambda s, k, n: fsync_fails(s, k, n, errno.ENOSPC), errno.ENOSPC, 7),
    "rename ENOSPC": IoKind(rename_fails, errno.ENOSPC, 1),
    "rename EIO": IoKind(lambda s, k, n: rename_fails(s, k, n, errno.EIO), errno.EIO, 1),
    "folder fsync after rename EIO": IoKind(publish_then_eio, errno.EIO, 1),
    "signal pointer ENOSPC": IoKind(pointer_fails, errno.ENOSPC, 1),
}


def _mentions(parameters, target: str) -> bool:
    if isinstance(parameters, dict):
        return any(_mentions(v, target) for v in parameters.values())
    if isinstance(parameters, list | tuple):
        return any(_mentions(v, target) for v in parameters)
    # the recordings row names the file by its path relative to the dataset root
    return parameters == target or (isinstance(parameters, str) and "/" in parameters
                                    and target.endswith("/" + parameters))


def sql_fault(setattr_: Callable, source_path: str, where: str, persistent: bool = True) -> Fault:
    """The index write of one recording fails: the INSERT of its windows ("database or disk is full", raised by
    the driver so SQLAlchemy wraps it like a real one) or its COMMIT ("disk I/O error"). The recording's
    transaction (its own, or its batch's) is recognised by the INSERT/UPDATE of its recordings row. Persistent:
    every transaction that writes it fails for the rest of the run (the disk stays full); else only the first."""
    assert where in ("commit", "insert")
    fault, original = Fault(), ingest_mod.open_index
    fires = fault.every if persistent else (lambda: fault.hit(1))

    def open_with_fault(*args, **kwargs):
        engine = original(*args, **kwargs)

        def before(conn, cursor, statement, parameters, context, executemany):
            text = statement.lstrip().upper()
            if text.startswith(("INSERT INTO RECORDINGS", "UPDATE RECORDINGS")) and _mentions(parameters, source_path):
                conn.info["eegcache_fault_armed"] = True
            if where == "insert" and text.startswith("INSERT INTO WINDOWS") and conn.info.get("eegcache_fault_armed"):
                conn.info.pop("eegcache_fault_armed")
                if fires():
                    raise sqlite3.OperationalError("database or disk is full")

        def commit(conn):
            if conn.info.pop("eegcache_fault_armed", False) and where == "commit" and fires():
                raise sa_exc.OperationalError("COMMIT", None, sqlite3.OperationalError("disk I/O error"))

        def rollback(conn):
            conn.info.pop("eegcache_fault_armed", None)

        event.listen(engine, "before_cursor_execute", before)
        event.listen(engine, "commit", commit)
        event.listen(engine, "rollback", rollback)
        return engine

    setattr_(ingest_mod, "open_index", open_with_fault)
    return fault


def install_from_env() -> None:
    """Called by the sitecustomize shim in every process of a real ``eegcache ingest``: ``KIND|TARGET|NTH``."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    kind, target, nth = spec.split("|")
    if kind in ("commit", "insert"):
        sql_fault(setattr, target, kind)
    elif kind == "fill":
        fill_before_registration(setattr, target, nth)
    else:
        IO_FAULTS[kind].install(setattr, target, int(nth))


SHIM = f"""
import os, sys
if os.environ.get({FAULT_ENV!r}):
    sys.path.insert(0, {str(TESTS_DIR)!r})
    import test_faults
    test_faults.install_from_env()
"""


# --- in process: object writes --------------------------------------------------------------------------------


def io_trial(ref: Reference, cache: Path, monkeypatch: pytest.MonkeyPatch, kind: str, target: int, nth: int) -> None:
    """One fault aimed at one recording's object write; the run reports it and goes on; a rerun heals."""
    edf = ref.edfs[target]
    io = IO_FAULTS[kind]
    with monkeypatch.context() as mp:
        fault = io.install(mp.setattr, ref.keys[edf], nth)
        summary = run_ingest(ref.root, cache)
    assert fault.fired == 1, f"{kind}: the fault never fired (occurrences seen: {fault.seen})"
    failures = dict(summary.failures)
    assert list(failures) == [path_text(edf)], summary
    reason = failures[path_text(edf)]
    assert edf.name in reason and os.strerror(io.code) in reason, reason
    assert (summary.failed, summary.ingested) == (1, len(FAULT_TREE) - 1), summary
    assert query(cache, "SELECT status, reason, n_windows FROM recording_status WHERE source_path = ?",
                 (path_text(edf),)) == [("failed", reason, 0)]
    assert_consistent(cache)
    again = run_ingest(ref.root, cache)
    assert again.failed == 0 and again.failures == [], again
    assert_healed(cache, ref.snapshot)


DEFAULT_IO_CASES = [(kind, i % len(FAULT_TREE), min(2, io.occurrences)) for i, (kind, io) in enumerate(IO_FAULTS.items())]


@pytest.mark.parametrize("kind, target, nth", DEFAULT_IO_CASES, ids=[c[0] for c in DEFAULT_IO_CASES])
def test_io_fault_fails_one_recording_and_the_rerun_heals(
    reference: Reference, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, target: int, nth: int
) -> None:
    io_trial(reference, tmp_path / "cache", monkeypatch, kind, target, nth)


@pytest.mark.stress
def test_io_fault_stress(reference: Reference, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every fault kind at every recording at every occurrence (each file write, fsync, read-back...), in a
    seeded random order."""
    trials_list = [(kind, target, nth) for kind, io in IO_FAULTS.items() for target in range(len(FAULT_TREE))
                   for nth in range(1, io.occurrences + 1)]
    random.Random(20261205).shuffle(trials_list)
    for trials, (kind, target, nth) in enumerate(trials_list):
        cache = tmp_path / f"c{trials}"
        io_trial(reference, cache, monkeypatch, kind, target, nth)
        shutil.rmtree(cache)
    trials = len(trials_list)
    print(f"\nFIGURES test_io_fault_stress: {trials} faults injected, 0 inconsistencies")


def test_a_failed_object_write_leaves_no_staging_folder(
    reference: Reference, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first of the target's signal shards to be written fails (ENOSPC) half-way: no staging folder remains,
    however long one waits. (Regression: zarr-python wrote an object's shards concurrently, and the ones still in
    flight recreated the staging folder after ``ObjectStore.write`` had removed it; the writer now writes an
    object's files one after the other. A recording over SHARD_SAMPLES has several shards; shards of LABEL_CHUNK
    samples give this short one three.)"""
    edf = reference.edfs[0]  # 150 s: three signal shards
    key, cache = reference.keys[edf], tmp_path / "cache"
    original, state = eegcache.store.layout.write_file, {"failed": False, "after": []}

    def write_file(path, blob):
        if key in str(path) and state["failed"]:
            state["after"].append(path)
        elif key in str(path) and "/signal/c." in str(path):
            state["failed"] = True
            original(path, blob[:len(blob) // 2])
            raise os_error(errno.ENOSPC, path)
        return original(path, blob)

    with monkeypatch.context() as mp:
        mp.setattr(eegcache.store.layout, "write_file", write_file)
        mp.setattr(eegcache.store.layout, "SHARD_SAMPLES", LABEL_CHUNK)
        summary = run_ingest(reference.root, cache)
    assert [p for p, _ in summary.failures] == [path_text(edf)]
    assert state["failed"] and state["after"] == []  # nothing of the failed object is written after its error
    time.sleep(0.5)
    staging = cache / "staging"
    assert not staging.exists() or list(staging.iterdir()) == [], list(staging.iterdir())


# --- in process: the index write ------------------------------------------------------------------------------


def sql_trial(ref: Reference, cache: Path, monkeypatch: pytest.MonkeyPatch, where: str, target: int) -> None:
    edf = ref.edfs[target]
    with monkeypatch.context() as mp:
        fault = sql_fault(mp.setattr, path_text(edf), where)
        try:
            run_ingest(ref.root, cache)
        except sa_exc.OperationalError:
            pass  # whether the run reports it or dies is test_index_write_error_is_reported_and_the_run_goes_on's
    assert fault.fired >= 1
    rows = query(cache, "SELECT status, n_windows FROM recording_status WHERE source_path = ?", (path_text(edf),))
    assert rows in ([], [("failed", 0)]), rows  # rolled back whole, or recorded as failed: never half written
    assert_consistent(cache)
    again = run_ingest(ref.root, cache)
    assert again.failed == 0, again
    assert_healed(cache, ref.snapshot)


@pytest.mark.parametrize("where", ["insert", "commit"])
@pytest.mark.parametrize("target", [0, 2])
def test_index_write_error_leaves_no_half_registered_recording(
    reference: Reference, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str, target: int
) -> None:
    """'database or disk is full' on the windows INSERT, or 'disk I/O error' at COMMIT, of one recording's
    transaction: nothing of it is in the index, every other row is whole, and the next run completes."""
    sql_trial(reference, tmp_path / "cache", monkeypatch, where, target)


@pytest.mark.stress
def test_index_write_error_stress(reference: Reference, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trials = 0
    for where in ("insert", "commit"):
        for target in range(len(FAULT_TREE)):
            cache = tmp_path / f"c{trials}"
            sql_trial(reference, cache, monkeypatch, where, target)
            shutil.rmtree(cache)
            trials += 1
    print(f"\nFIGURES test_index_write_error_stress: {trials} faults injected, 0 inconsistencies")


@pytest.mark.parametrize("where", ["insert", "commit"])
def test_index_write_error_is_reported_and_the_run_goes_on(
    reference: Reference, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """Like an object write error, an index write error for one recording is that recording's failure: the run
    names it in summary.failures and ingests the others (was a bug: the OperationalError ended the run; fixed in
    6c0867e)."""
    edf = reference.edfs[1]
    with monkeypatch.context() as mp:
        sql_fault(mp.setattr, path_text(edf), where)
        try:
            summary = run_ingest(reference.root, tmp_path / "cache")
        except Exception as exc:  # noqa: BLE001 - the point: nothing may escape
            raise AssertionError(f"the run died at {edf.name} instead of reporting it: {exc!r}") from exc
    assert [path for path, _ in summary.failures] == [path_text(edf)]
    reason = summary.failures[0][1]
    assert reason.startswith(f"{edf.name}: ") and ("disk I/O error" in reason or "disk is full" in reason), reason
    assert summary.ingested == len(FAULT_TREE) - 1


@pytest.mark.parametrize("where", ["insert", "commit"])
def test_a_transient_index_error_in_a_batch_costs_no_recording(
    reference: Reference, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """Recordings are registered a batch per transaction: an index error once (not again) in a batch's
    transaction rolls the batch back whole, and each of its recordings is then registered on its own: none
    fails, none is half written, and the index equals a clean run's."""
    edf = reference.edfs[1]
    with monkeypatch.context() as mp:
        fault = sql_fault(mp.setattr, path_text(edf), where, persistent=False)
        summary = run_ingest(reference.root, tmp_path / "cache")
    assert fault.fired == 1 and summary.failed == 0 and summary.ingested == len(FAULT_TREE), summary
    assert_consistent(tmp_path / "cache")
    assert_healed(tmp_path / "cache", reference.snapshot)


# --- real processes with workers: the sitecustomize shim ------------------------------------------------------


def run_faulty_cli(tmp_path: Path, fault: str | None, *args: object) -> subprocess.CompletedProcess[str]:
    shim = tmp_path / "shim"
    shim.mkdir(exist_ok=True)
    (shim / "sitecustomize.py").write_text(SHIM)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(shim), os.environ.get("PYTHONPATH")]))}
    env.pop(FAULT_ENV, None)
    if fault:
        env[FAULT_ENV] = fault
    return subprocess.run(eegcache_cmd(*args), capture_output=True, text=True, timeout=300, env=env)


def test_cli_with_workers_reports_enospc_and_the_rerun_heals(reference: Reference, tmp_path: Path) -> None:
    """A real ``eegcache ingest --workers 2``: the worker writing the target object hits ENOSPC; the run prints
    FAILED with the path and the reason, exits 1 without a traceback; the rerun heals."""
    edf, cache = reference.edfs[2], tmp_path / "cache"
    done = run_faulty_cli(tmp_path, f"object file write ENOSPC|{reference.keys[edf]}|3",
                          "ingest", reference.root, "--cache", cache, "--quiet", "--workers", "2")
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert f"FAILED {edf}: {edf.name}: No space left on device" in done.stderr, done.stderr[-3000:]
    assert dict(query(cache, "SELECT source_path, status FROM recording_status")) == {
        path_text(e): "failed" if e == edf else "ingested" for e in reference.edfs}
    assert_consistent(cache)
    assert run_ingest(reference.root, cache).failed == 0
    assert_healed(cache, reference.snapshot)


def test_cli_index_commit_error_is_a_failed_recording_not_a_traceback(reference: Reference, tmp_path: Path) -> None:
    """A real process whose COMMIT of one recording fails: FAILED <path> with the reason, exit 1, no traceback."""
    edf, cache = reference.edfs[1], tmp_path / "cache"
    done = run_faulty_cli(tmp_path, f"commit|{path_text(edf)}|1", "ingest", reference.root, "--cache", cache, "--quiet")
    assert "Traceback" not in done.stderr, done.stderr[-1500:]
    assert done.returncode == 1 and f"FAILED {edf}" in done.stderr, done.stderr[-1500:]
    assert query(cache, "SELECT count(*) FROM recordings WHERE status = 'ingested'") == [(len(FAULT_TREE) - 1,)]


# --- a real filesystem that fills up (tmpfs; needs root) -------------------------------------------------------


@dataclass
class SmallFs:
    path: Path
    mounted: list[Path] = field(default_factory=list)

    def resize(self, size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.path)], check=True, capture_output=True)


@pytest.fixture
def small_fs(tmp_path: Path):
    """A small tmpfs at tmp_path/small (skipped where mounting is not allowed); tests resize it."""
    target = tmp_path / "small"
    target.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(target)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield SmallFs(target)
    finally:
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


def test_small_filesystem_for_objects_fills_up(reference: Reference, tmp_path: Path, small_fs: SmallFs) -> None:
    """Objects on a tmpfs that holds about 60 % of them (the index on the normal disk): the recordings that do not
    fit fail with 'No space left on device' by name, the others are ingested whole; after growing the filesystem
    a rerun heals."""
    cache, store = tmp_path / "cache", small_fs.path
    pages = sum(-(-f.stat().st_size // 4096) for f in (reference.cache / "objects").rglob("*") if f.is_file())
    small_fs.resize(f"{max(64, pages * 4 * 6 // 10)}k")
    done = subprocess.run(eegcache_cmd("ingest", reference.root, "--cache", cache, "--store", f"file://{store}",
                                       "--quiet"), capture_output=True, text=True, timeout=300)
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    failed = dict(query(cache, "SELECT source_path, reason FROM recording_status WHERE status = 'failed'"))
    assert done.returncode == 1 and failed, (done.stdout, done.stderr[-2000:])
    for path, reason in failed.items():
        assert Path(path).name in reason and "No space left on device" in reason, reason
        assert f"FAILED {path}: {reason}" in done.stderr
    assert 0 < len(failed) < len(FAULT_TREE)
    assert_consistent(cache, store)
    small_fs.resize("64m")
    assert run_ingest(reference.root, cache, store_url=f"file://{store}").failed == 0
    assert_healed(cache, reference.snapshot, store)


def _fill(folder: Path) -> Path:
    """Write a file until the filesystem is full."""
    filler = folder / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def fill_before_registration(setattr_: Callable, source_path: str, folder: str) -> Fault:
    """Fill the filesystem holding ``folder`` just before this recording's rows are written in its batch's index
    transaction. Batches of two files, so that the recordings before the target's batch are registered first."""
    fault, original = Fault(), register_mod._register_in

    def register_in(conn, store, target, item, now):
        if item.source_path == source_path and fault.hit(1):
            _fill(Path(folder))
        return original(conn, store, target, item, now)

    setattr_(register_mod, "_register_in", register_in)
    setattr_(ingest_mod, "PREPARE_BATCH_FILES", 2)
    return fault


def full_at_registration(ref: Reference, tmp_path: Path, small_fs: SmallFs,
                         target: int) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """The whole cache on the tmpfs; a real ``eegcache ingest --stride 30`` (windows only: only the index grows)
    fills the disk just before one recording's index transaction, so SQLite itself meets ENOSPC."""
    small_fs.resize("16m")
    cache = small_fs.path / "cache"
    assert run_ingest(ref.root, cache).failed == 0
    done = run_faulty_cli(tmp_path, f"fill|{path_text(ref.edfs[target])}|{small_fs.path}",
                          "ingest", ref.root, "--cache", cache, "--quiet", "--stride", "30")
    filler = small_fs.path / "filler"
    assert filler.is_file(), "the target recording was never registered"
    filler.unlink()
    return cache, done


def test_small_filesystem_full_at_the_index_commit_leaves_no_half_registered_data(
    reference: Reference, tmp_path: Path, small_fs: SmallFs
) -> None:
    """SQLite meets a real full disk in one recording's transaction: that recording has no 30 s windows (none
    half written), the rest is whole, and after space is freed the next run completes."""
    cache, done = full_at_registration(reference, tmp_path, small_fs, target=2)
    assert done.returncode != 0 and "full" in done.stderr, done.stderr[-2000:]
    assert_consistent(cache, claims_left=True)  # a process that cannot write the index cannot release its claims
    stride30 = dict(query(cache, "SELECT d.root || '/' || r.rel_path, count(*) FROM windows w JOIN recordings r "
                                 "ON r.id = w.recording_id JOIN datasets d ON d.id = r.dataset_id JOIN window_sets s "
                                 "ON s.id = w.window_set_id WHERE s.stride_s = 30 GROUP BY r.rel_path"))
    assert stride30, "the other recordings got their 30 s windows"
    assert path_text(reference.edfs[2]) not in stride30
    assert run_ingest(reference.root, cache, stride_s=30.0).failed == 0
    assert_healed(cache, reference.strides_snapshot)


def test_small_filesystem_full_at_the_index_commit_is_reported(
    reference: Reference, tmp_path: Path, small_fs: SmallFs
) -> None:
    """The run names the recording whose transaction met the full disk (FAILED, exit 1), without a traceback."""
    _, done = full_at_registration(reference, tmp_path, small_fs, target=2)
    assert "Traceback" not in done.stderr, done.stderr[-1500:]
    assert done.returncode == 1 and f"FAILED {reference.edfs[2]}" in done.stderr, done.stderr[-1500:]
