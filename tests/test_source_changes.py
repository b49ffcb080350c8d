"""What is read is what is keyed (issue 13, item 1): a source EDF or annotation that changes while ingest hashes and
reads it is never stored under a key that is not its content's, and never recorded with a size and mtime that are
not those of the bytes that were hashed.

The changes are injected deterministically between the steps of ``prepare`` (``eegcache.ops.prepare._checkpoint``: in
process, and in real ``eegcache ingest`` processes with worker processes through a ``sitecustomize`` shim), and
once for real: a thread rewrites a file between two versions while real ``eegcache ingest`` processes run. After
each, every object in the store holds what a fresh ingest of the bytes its key names gives (signal and labels, by
an independent fresh ingest of each version), and ``verify`` passes.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from edf_factory import Rec, eegcache_cmd, query, write_rec

import eegcache.ops.prepare as prepare_mod
from eegcache.ops.ingest import CHANGE_ATTEMPTS, ingest
from eegcache.pipeline.spec import IngestConfig
from eegcache.sources.annotations import find_annotation
from eegcache.store import LocalObjectStore

TESTS_DIR = Path(__file__).resolve().parent
CHANGE_ENV = "EEGCACHE_TEST_CHANGE"

# Two versions of one recording: same layout and size, other signal (seed) and other seizures.
V1 = Rec("train", "aaaaaaca", 1, 2003, "01_tcp_ar", 0, fs=250, duration_s=120, events=((10.0, 70.0),), seed=61)
V2 = Rec("train", "aaaaaaca", 1, 2003, "01_tcp_ar", 0, fs=250, duration_s=120, events=((80.0, 100.0),), seed=62)
STEADY = Rec("dev", "aaaaaacb", 1, 2004, "02_tcp_le", 0, fs=256, duration_s=90, events=((20.0, 30.0),), seed=63)


@dataclass(frozen=True)
class Version:
    edf: bytes
    ann: bytes


@dataclass(frozen=True)
class Sources:
    v1: Version
    v2: Version
    oracle: dict[str, tuple[np.ndarray, np.ndarray]]  # object key -> (signal, labels) of a fresh ingest
    rel: str  # the changing recording, relative to the root
    ann_suffix: str


def _version(tmp: Path, rec: Rec) -> tuple[Version, str, str]:
    edf = write_rec(tmp, rec)
    ann = find_annotation(edf)
    return Version(edf.read_bytes(), ann.read_bytes()), edf.relative_to(tmp).as_posix(), ann.suffix


def _objects(cache: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    store = LocalObjectStore(cache)
    out = {}
    for folder in sorted((cache / "objects").glob("??/*")):
        group = store.open(folder.name)
        out[folder.name] = (np.asarray(group["signal"][...]), np.asarray(group["labels"][...]))
    return out


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Sources:
    """Both versions' bytes, and what a fresh ingest of each (with the steady recording) stores under which key:
    the two versions, and the EDF of one with the annotation of the other."""
    base = tmp_path_factory.mktemp("versions")
    v1, rel, suffix = _version(base / "v1", V1)
    v2, _, _ = _version(base / "v2", V2)
    assert len(v1.edf) == len(v2.edf) and v1.edf != v2.edf and v1.ann != v2.ann
    oracle: dict = {}
    combos = {"v1": v1, "v2": v2, "v1-edf-v2-ann": Version(v1.edf, v2.ann), "v2-edf-v1-ann": Version(v2.edf, v1.ann)}
    for name, version in combos.items():
        root = base / f"fresh-{name}"
        write_rec(root, STEADY)
        _put(root / rel, version, suffix)
        cache = base / f"fresh-{name}-cache"
        assert ingest(root, cache, IngestConfig(), progress=False).failed == 0
        oracle.update(_objects(cache))
    return Sources(v1, v2, oracle, rel, suffix)


def _put(edf: Path, version: Version, suffix: str, *, ann_only: bool = False, edf_only: bool = False,
         bump: bool = True) -> None:
    """Write a version in place (a torn read is possible, as with an editor or cp onto the file); ``bump`` gives
    the files an mtime no earlier write had, so the change is visible to stat whatever the clock's resolution."""
    edf.parent.mkdir(parents=True, exist_ok=True)
    targets = []
    if not ann_only:
        targets.append((edf, version.edf))
    if not edf_only:
        targets.append((edf.with_suffix(suffix), version.ann))
    for path, data in targets:
        with open(path, "wb") as f:
            f.write(data)
        if bump:
            stamp = max(time.time_ns(), path.stat().st_mtime_ns + 1_000_000_000)
            os.utime(path, ns=(stamp, stamp))


def _tree(tmp: Path, sources: Sources, version: Version) -> tuple[Path, Path]:
    root = tmp / "src"
    write_rec(root, STEADY)
    edf = root / sources.rel
    _put(edf, version, sources.ann_suffix)
    return root, edf


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def assert_every_object_is_its_key(cache: Path, sources: Sources) -> None:
    """Every object folder in the store holds exactly what a fresh ingest of the bytes its key names holds, and
    every registered recording names the digests and the stat of the bytes on disk when it was read."""
    for key, (signal, labels) in _objects(cache).items():
        assert key in sources.oracle, f"object {key[:12]} is under a key no version of the sources has"
        want_signal, want_labels = sources.oracle[key]
        assert np.array_equal(signal, want_signal), f"object {key[:12]}: its signal is another version's"
        assert np.array_equal(labels, want_labels), f"object {key[:12]}: its labels are another version's"
    for edf_digest, ann_digest in query(cache, "SELECT edf_sha256, annotation_sha256 FROM recordings "
                                               "WHERE status = 'ingested' AND rel_path = ?", (sources.rel,)):
        assert edf_digest in {_sha(sources.v1.edf), _sha(sources.v2.edf)}
        assert ann_digest in {_sha(sources.v1.ann), _sha(sources.v2.ann)}
    done = subprocess.run(eegcache_cmd("verify", "--cache", cache), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def _row(cache: Path, rel: str) -> tuple:
    return query(cache, "SELECT status, reason, edf_sha256, edf_size, edf_mtime_ns, annotation_sha256, "
                        "annotation_size, annotation_mtime_ns FROM recordings WHERE rel_path = ?", (rel,))[0]


def _assert_row_is_the_files(cache: Path, rel: str, edf: Path, suffix: str) -> None:
    ann = edf.with_suffix(suffix)
    st, ast = edf.stat(), ann.stat()
    assert _row(cache, rel)[2:] == (_sha(edf.read_bytes()), st.st_size, st.st_mtime_ns, _sha(ann.read_bytes()),
                                    ast.st_size, ast.st_mtime_ns)


def _inject(monkeypatch: pytest.MonkeyPatch, step: str, path: Path, change, times: int | None = 1) -> list[int]:
    """Run ``change()`` when prepare reaches ``step`` for ``path`` (the first ``times`` times; None: always)."""
    fired = [0]

    def checkpoint(at: str, where: Path) -> None:
        if at == step and Path(where) == path and (times is None or fired[0] < times):
            fired[0] += 1
            change()

    monkeypatch.setattr(prepare_mod, "_checkpoint", checkpoint)
    return fired


def _ingest(root: Path, cache: Path, **config):
    return ingest(root, cache, IngestConfig(workers=1, **config), progress=False)


# --- deterministic: a change between two steps ---------------------------------------------------------------


def test_edf_changed_between_hash_and_read_is_read_again_and_keyed_by_what_was_read(
        sources: Sources, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The EDF is rewritten (v1 → v2) after it was hashed and before it is read: the bytes read are not those
    hashed, so the recording is prepared again and stored under v2's key with v2's signal (it was: v1's key holding
    v2's signal, reused without a read after the file went back to v1, verify saying nothing)."""
    root, edf = _tree(tmp_path, sources, sources.v1)
    cache = tmp_path / "cache"
    fired = _inject(monkeypatch, "edf-hashed", edf, lambda: _put(edf, sources.v2, sources.ann_suffix, edf_only=True))
    summary = _ingest(root, cache)
    assert fired == [1] and summary.failed == 0, summary.failures
    assert _row(cache, sources.rel)[2] == _sha(sources.v2.edf)
    _assert_row_is_the_files(cache, sources.rel, edf, sources.ann_suffix)
    assert_every_object_is_its_key(cache, sources)
    monkeypatch.undo()
    _put(edf, sources.v1, sources.ann_suffix, edf_only=True)  # back to v1: its object must be v1's own
    assert _ingest(root, cache).failed == 0
    assert _row(cache, sources.rel)[2] == _sha(sources.v1.edf)
    assert_every_object_is_its_key(cache, sources)


def test_edf_changed_after_it_was_read_is_prepared_again(sources: Sources, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Rewritten after the read (the object of v1 is consistent), before the row is written: the recorded size and
    mtime would be v2's beside v1's digest, so the file is prepared again and recorded as v2."""
    root, edf = _tree(tmp_path, sources, sources.v1)
    cache = tmp_path / "cache"
    fired = _inject(monkeypatch, "edf-read", edf, lambda: _put(edf, sources.v2, sources.ann_suffix, edf_only=True))
    assert _ingest(root, cache).failed == 0 and fired == [1]
    _assert_row_is_the_files(cache, sources.rel, edf, sources.ann_suffix)
    assert _row(cache, sources.rel)[2] == _sha(sources.v2.edf)
    assert_every_object_is_its_key(cache, sources)


def test_annotation_changed_while_prepared_is_read_again(sources: Sources, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The annotation is rewritten (10–70 s → 80–100 s) after it was read: prepared again; the events, the windows
    and the label key all come from v2's bytes (it was: the events table saying 80–100 s while the windows came
    from the 10–70 s mask)."""
    root, edf = _tree(tmp_path, sources, sources.v1)
    cache = tmp_path / "cache"
    ann = edf.with_suffix(sources.ann_suffix)
    fired = _inject(monkeypatch, "annotation-read", ann,
                    lambda: _put(edf, sources.v2, sources.ann_suffix, ann_only=True))
    assert _ingest(root, cache).failed == 0 and fired == [1]
    row = _row(cache, sources.rel)
    assert row[5] == _sha(sources.v2.ann)
    _assert_row_is_the_files(cache, sources.rel, edf, sources.ann_suffix)
    assert query(cache, "SELECT start_s, stop_s FROM events e JOIN recordings r ON r.id = e.recording_id "
                        "WHERE r.rel_path = ?", (sources.rel,)) == [(80.0, 100.0)]
    seizure = query(cache, "SELECT start_s FROM window_labels WHERE recording = ? AND label != 'no_seizure'",
                    (Path(sources.rel).stem,))
    assert seizure == [(60.0,)]  # the 60-120 s window holds 80-100 s; none of 0-60 s (the old 10-70 s mask)
    assert_every_object_is_its_key(cache, sources)


@pytest.mark.parametrize("step", ["edf-hashed", "annotation-read"])
def test_a_source_that_keeps_changing_fails_with_a_reason_and_stores_nothing_false(
        sources: Sources, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str) -> None:
    """Changed at every attempt: after CHANGE_ATTEMPTS the recording fails, the reason names the file and says it
    changed while it was being read; the other recording is ingested; whatever objects were written hold their
    keys' content; the next run, on a quiet file, ingests it."""
    root, edf = _tree(tmp_path, sources, sources.v1)
    cache = tmp_path / "cache"
    ann = edf.with_suffix(sources.ann_suffix)
    flip = iter([sources.v2, sources.v1] * 10)
    fired = _inject(monkeypatch, step, ann if step == "annotation-read" else edf,
                    lambda: _put(edf, next(flip), sources.ann_suffix, ann_only=step == "annotation-read",
                                 edf_only=step != "annotation-read"), times=None)
    summary = _ingest(root, cache)
    assert fired == [CHANGE_ATTEMPTS]
    assert summary.failed == 1 and summary.ingested == 1, summary
    [(path, reason)] = summary.failures
    assert path == str(edf)
    what = f"{edf.name}: its annotation {ann.name}" if step == "annotation-read" else edf.name
    assert reason.startswith(f"{what} changed while it was being read ({CHANGE_ATTEMPTS} attempts)"), reason
    assert _row(cache, sources.rel)[:2] == ("failed", reason)
    assert query(cache, "SELECT count(*) FROM windows w JOIN recordings r ON r.id = w.recording_id "
                        "WHERE r.rel_path = ?", (sources.rel,)) == [(0,)]
    assert_every_object_is_its_key(cache, sources)
    monkeypatch.undo()
    assert _ingest(root, cache).failed == 0
    _assert_row_is_the_files(cache, sources.rel, edf, sources.ann_suffix)
    assert_every_object_is_its_key(cache, sources)


def test_a_file_changed_between_plan_and_prepare_is_hashed_again(sources: Sources, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Plan sees the recorded size and mtime (a new stride: a windows-only task that reuses the known digest);
    the EDF is rewritten before prepare. It was recorded with v2's size and mtime and v1's digest, so every later
    run called it unchanged; now prepare re-stats, drops the known digest and hashes v2."""
    root, edf = _tree(tmp_path, sources, sources.v1)
    cache = tmp_path / "cache"
    assert _ingest(root, cache).failed == 0
    fired = _inject(monkeypatch, "prepare", edf, lambda: _put(edf, sources.v2, sources.ann_suffix, edf_only=True))
    summary = _ingest(root, cache, stride_s=30.0)
    assert fired == [1] and summary.failed == 0 and summary.edf_read == 1, summary
    _assert_row_is_the_files(cache, sources.rel, edf, sources.ann_suffix)
    assert _row(cache, sources.rel)[2] == _sha(sources.v2.edf)
    monkeypatch.undo()
    again = _ingest(root, cache, stride_s=30.0)
    assert (again.unchanged, again.edf_read) == (2, 0), again
    assert_every_object_is_its_key(cache, sources)


# --- real processes ------------------------------------------------------------------------------------------

SHIM = f"""
import os
if os.environ.get({CHANGE_ENV!r}):
    import json, pathlib
    import eegcache.ops.prepare as _prepare
    _spec = json.loads(os.environ[{CHANGE_ENV!r}])

    def _checkpoint(step, path, _spec=_spec):
        if step != _spec["step"] or str(path) != _spec["path"]:
            return
        try:  # once over all processes of the run (the parent and its workers)
            os.close(os.open(_spec["marker"], os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
        for target, source in _spec["writes"]:
            data = pathlib.Path(source).read_bytes()
            with open(target, "wb") as f:
                f.write(data)
            stamp = max(__import__("time").time_ns(), os.stat(target).st_mtime_ns + 1_000_000_000)
            os.utime(target, ns=(stamp, stamp))

    _prepare._checkpoint = _checkpoint
"""


def test_real_ingest_with_workers_rereads_a_file_changed_between_hash_and_read(sources: Sources,
                                                                               tmp_path: Path) -> None:
    """A real ``eegcache ingest --workers 2`` (the worker that prepares the file rewrites it, through a
    sitecustomize shim, after hashing it): exit 0, v2 recorded with v2's stat, every object its key's."""
    root, edf = _tree(tmp_path, sources, sources.v1)
    extra = Rec("eval", "aaaaaacc", 1, 2005, "01_tcp_ar", 0, fs=250, duration_s=60, seed=64)
    write_rec(root, extra)  # three files for two workers: the pool is used
    v2 = tmp_path / "v2.edf"
    v2.write_bytes(sources.v2.edf)
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(SHIM)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(shim), os.environ.get("PYTHONPATH")])),
           CHANGE_ENV: json.dumps({"step": "edf-hashed", "path": str(edf), "marker": str(tmp_path / "fired"),
                                   "writes": [[str(edf), str(v2)]]})}
    cache = tmp_path / "cache"
    done = subprocess.run(eegcache_cmd("ingest", root, "--cache", cache, "--quiet", "--workers", "2", "--json"),
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "fired").exists()
    assert json.loads(done.stdout)["ingested"] == 3
    assert _row(cache, sources.rel)[2] == _sha(sources.v2.edf)
    _assert_row_is_the_files(cache, sources.rel, edf, sources.ann_suffix)
    extra_key = query(cache, "SELECT object_key FROM recordings WHERE rel_path LIKE '%aaaaaacc%'")[0][0]
    oracle = Sources(sources.v1, sources.v2, {**sources.oracle, extra_key: _objects(cache)[extra_key]},
                     sources.rel, sources.ann_suffix)
    assert_every_object_is_its_key(cache, oracle)


def test_real_rewrite_loop_during_real_ingests(sources: Sources, tmp_path: Path) -> None:
    """A thread replaces the EDF and the annotation of one recording by the other version (write a temporary file,
    rename it over the source: each reader sees one whole version) at random intervals of 0-40 ms while real
    ``eegcache ingest --workers 2`` processes run, six rounds. Each round ends with the recording ingested (one
    version or a mix: EDF of one, annotation of the other) or failed as changed while read; never an object under a
    key that is not its content's, never a row whose digests are not those of a version; verify passes."""
    root, edf = _tree(tmp_path, sources, sources.v1)
    ann = edf.with_suffix(sources.ann_suffix)
    cache = tmp_path / "cache"
    stop = threading.Event()
    rewrites = [0]
    rng = random.Random(13)

    def loop() -> None:
        versions = [sources.v1, sources.v2]
        while not stop.is_set():
            version = versions[rewrites[0] % 2]
            for path, data in ((edf, version.edf), (ann, version.ann)):
                if rng.random() < 0.7:
                    tmp = path.with_name(f".{path.name}.tmp")
                    tmp.write_bytes(data)
                    os.replace(tmp, path)
            rewrites[0] += 1
            time.sleep(rng.uniform(0, 0.04))

    thread = threading.Thread(target=loop, daemon=True)
    outcomes: list[str] = []
    thread.start()
    try:
        for _ in range(6):
            done = subprocess.run(eegcache_cmd("ingest", root, "--cache", cache, "--quiet", "--workers", "2", "--json"),
                                  capture_output=True, text=True, timeout=300)
            assert "Traceback" not in done.stderr, done.stderr[-3000:]
            summary = json.loads(done.stdout)
            for path, reason in summary["failures"]:
                assert path == str(edf) and "changed while it was being read" in reason, (path, reason)
            outcomes.append(_row(cache, sources.rel)[0])
    finally:
        stop.set()
        thread.join()
    print(f"\nFIGURES rewrite loop: {rewrites[0]} rewrites during 6 real ingests; outcomes {outcomes}; "
          f"{len(_objects(cache))} objects checked")
    assert_every_object_is_its_key(cache, sources)
