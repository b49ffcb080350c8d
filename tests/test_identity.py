"""Portable identity (index v2): recordings are (dataset, relative path, pipeline), never absolute paths.

Every defect of the issue that introduced datasets and pipelines was reproduced by hand with the CLI; each is a
test here, run through real ``eegcache``/``trainer`` subprocesses on real EDF trees, SQLite files and Zarr stores.
Expected windows come from ``edf_factory``'s literal label rule, not from the library.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from conftest import copy_cache
from edf_factory import (
    Rec,
    eegcache_cmd,
    expected_mask,
    expected_windows,
    query,
    run_cli,
    write_csv_bi,
    write_tree,
)

from eegcache.index.db import head_revision

FIXTURES = Path(__file__).parent / "fixtures"
RECS = (
    Rec("train", "aaaaaaja", 1, 2003, "01_tcp_ar", 0, fs=250, duration_s=150, events=((10.0, 40.0),), seed=91),
    Rec("train", "aaaaaaja", 2, 2004, "02_tcp_le", 1, fs=256, duration_s=120, seed=92),
    Rec("dev", "aaaaaajb", 1, 2005, "01_tcp_ar", 0, fs=400, duration_s=180, events=((0.0, 70.0),), seed=93),
    Rec("eval", "aaaaaajc", 1, 2006, "03_tcp_ar_a", 0, fs=512, duration_s=120, events=((100.0, 120.0),), seed=94),
)  # fmt: skip
N = len(RECS)


def trainer_cmd(*args: object) -> list[str]:
    return [sys.executable, "-m", "trainer", *map(str, args)]


def ingest_json(src: Path, cache: Path, *flags: object) -> dict:
    done = run_cli("ingest", src, "--cache", cache, "--json", "--quiet", *flags)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def windows(cache: Path, pipeline: str = "default") -> list[tuple]:
    """window_labels as a user sees it, ids included (a moved tree must keep the very rows)."""
    return query(cache, "SELECT window_id, recording, dataset, pipeline, split, window_s, stride_s, start_s, label, "
                        "seizure_fraction FROM window_labels WHERE pipeline = ? ORDER BY window_id", (pipeline,))


def status(cache: Path) -> list[tuple]:
    return query(cache, "SELECT dataset, rel_path, pipeline, status, n_windows, source, source_path "
                        "FROM recording_status ORDER BY dataset, rel_path, pipeline")


def rec_windows(rec: Rec, window_s: float, stride_s: float) -> list[tuple]:
    n = int(round(rec.duration_s * 256))
    return [(round(s, 6), lab) for s, lab, _ in expected_windows(expected_mask(rec.events, n), window_s, stride_s)]


@pytest.fixture
def built(tmp_path: Path) -> tuple[Path, Path, dict[Rec, Path]]:
    """A small TUSZ tree at tmp/site-a/tusz ingested into tmp/cache (60 s windows, 60 s stride)."""
    root = tmp_path / "site-a" / "tusz"
    edfs = write_tree(root, RECS)
    cache = tmp_path / "cache"
    summary = ingest_json(root, cache)
    assert (summary["ingested"], summary["failed"], summary["dataset"]) == (N, 0, "tusz")
    return root, cache, edfs


def test_moved_tree_is_the_same_dataset(built, tmp_path: Path) -> None:
    """Regression: a moved tree made every recording a `skipped` twin of its old path, doubled recording_status,
    and a later stride covered none of them, so `trainer sample` refused the split."""
    root, cache, _ = built
    before_windows, before_status = windows(cache), status(cache)
    moved = tmp_path / "mnt" / "other" / "tusz-copy"
    moved.parent.mkdir(parents=True)
    root.rename(moved)
    done = run_cli("ingest", moved, "--cache", cache, "--quiet")
    assert done.returncode == 0, done.stderr
    assert f"dataset 'tusz' moved: last seen at {root}" in done.stdout
    assert windows(cache) == before_windows
    after = status(cache)
    assert len(after) == N
    assert [r[:6] for r in after] == [r[:6] for r in before_status]
    assert all(r[6].startswith(str(moved) + "/") for r in after)
    stride = ingest_json(moved, cache, "--stride", 30)
    assert (stride["edf_read"], stride["failed"], stride["windows_added"]) == (0, 0, N)
    covered = query(cache, "SELECT count(DISTINCT recording) FROM window_labels WHERE stride_s = 30")
    assert covered == [(N,)]
    sample = subprocess.run(trainer_cmd("sample", "--cache", cache, "--stride", 30, "--json"), capture_output=True,
                            text=True, timeout=300)
    assert sample.returncode == 0, sample.stderr
    assert json.loads(sample.stdout)["draw"]["windows"] > 0


def test_copied_tree_with_new_mtimes_is_recognised_by_content(built, tmp_path: Path) -> None:
    """A copy that loses mtimes (plain cp) is found by its relative paths and digests: hashed, never preprocessed."""
    root, cache, _ = built
    before = windows(cache)
    copy = tmp_path / "elsewhere"
    shutil.copytree(root, copy, copy_function=shutil.copyfile)
    shutil.rmtree(root)
    summary = ingest_json(copy, cache)
    assert summary["moved_from"] == str(root)
    assert (summary["edf_read"], summary["failed"], summary["skipped"]) == (0, 0, 0)
    assert windows(cache) == before
    assert len(status(cache)) == N


def test_moved_tree_with_a_changed_spec_is_refused_not_failed_forever(built, tmp_path: Path) -> None:
    """Regression: moving the tree and passing --dtype float16 failed every file with "FOREIGN KEY constraint
    failed" on every run while the old rows kept serving training. Now the pipeline's spec is protected: the change
    is refused, naming the field and the choices, and a second pipeline builds beside the first."""
    root, cache, _ = built
    before = windows(cache)
    moved = tmp_path / "moved"
    root.rename(moved)
    refused = run_cli("ingest", moved, "--cache", cache, "--quiet", "--dtype", "float16")
    assert refused.returncode == 1
    assert "pipeline 'default' was built with another preprocessing spec" in refused.stderr
    assert "dtype 'float32' -> 'float16'" in refused.stderr and "--pipeline OTHER" in refused.stderr
    assert "--replace" in refused.stderr and "Traceback" not in refused.stderr
    assert windows(cache) == before
    half = ingest_json(moved, cache, "--dtype", "float16", "--pipeline", "half")
    assert (half["edf_read"], half["failed"], half["pipeline"]) == (N, 0, "half")
    assert windows(cache) == before
    assert len(windows(cache, "half")) == len(before)
    dtypes = query(cache, "SELECT p.name, o.dtype FROM recordings r JOIN pipelines p ON p.id = r.pipeline_id "
                          "JOIN objects o ON o.key = r.object_key GROUP BY p.name, o.dtype ORDER BY p.name")
    assert dtypes == [("default", "float32"), ("half", "float16")]


def test_replace_rebuilds_the_pipeline(built) -> None:
    root, cache, _ = built
    rebuilt = ingest_json(root, cache, "--dtype", "float16", "--replace")
    assert (rebuilt["edf_read"], rebuilt["failed"]) == (N, 0)
    assert query(cache, "SELECT DISTINCT o.dtype FROM recordings r JOIN objects o ON o.key = r.object_key") == \
        [("float16",)]
    assert ingest_json(root, cache)["unchanged"] == N  # the stored spec is the pipeline's now: no flags needed


def test_a_deleted_source_keeps_its_data_and_gets_later_window_sets(built) -> None:
    """Regression: a recording whose source file was deleted never got windows of a later window set."""
    root, cache, edfs = built
    gone = RECS[2]
    for f in edfs[gone].parent.glob(f"{edfs[gone].stem}.*"):
        f.unlink()
    summary = ingest_json(root, cache, "--stride", 20)
    assert (summary["sources_missing"], summary["edf_read"], summary["failed"]) == (1, 0, 0)
    row = query(cache, "SELECT status, source FROM recording_status WHERE recording = ?", (edfs[gone].stem,))
    assert row == [("ingested", "missing")]
    got = query(cache, "SELECT start_s, label FROM window_labels WHERE recording = ? AND stride_s = 20 "
                       "ORDER BY start_s", (edfs[gone].stem,))
    assert [(round(s, 6), lab) for s, lab in got] == rec_windows(gone, 60, 20)
    dry = run_cli("remove", "--cache", cache, "--missing", "--dry-run")
    assert dry.returncode == 0 and "would remove 1 recording(s)" in dry.stdout, dry.stdout
    assert len(status(cache)) == N
    removed = run_cli("remove", "--cache", cache, "--missing")
    assert removed.returncode == 0 and "removed 1 recording(s)" in removed.stdout, removed.stderr
    assert query(cache, "SELECT count(*) FROM recording_status WHERE recording = ?", (edfs[gone].stem,)) == [(0,)]
    assert run_cli("gc", "--cache", cache, "--grace", "0").returncode == 0
    assert run_cli("verify", "--cache", cache).returncode == 0


def test_remove_needs_a_condition(built) -> None:
    _, cache, _ = built
    done = run_cli("remove", "--cache", cache)
    assert done.returncode == 1 and "say what to remove" in done.stderr
    unknown = run_cli("remove", "--cache", cache, "--dataset", "nope")
    assert unknown.returncode == 1 and "no dataset named 'nope'; datasets: tusz" in unknown.stderr


def _twin(edf: Path, folder: str) -> Path:
    """A byte-identical copy of a recording (EDF and annotations) at another relative path that sorts after it."""
    target_dir = edf.parents[3] / "zzzzzzzz" / folder / edf.parent.name
    target_dir.mkdir(parents=True)
    for f in edf.parent.glob(f"{edf.stem}.*"):
        shutil.copyfile(f, target_dir / f"zzzzzzzz_s009_t000{f.suffix}")
    return target_dir / "zzzzzzzz_s009_t000.edf"


def test_a_twin_takes_the_windows_when_its_owner_changes_or_goes(built) -> None:
    """Regression: a `skipped` twin stayed skipped, with 0 windows and a stale reason, after its original changed."""
    root, cache, edfs = built
    owner_rec = RECS[0]
    twin = _twin(edfs[owner_rec], "s009_2015")
    ingest_json(root, cache)
    rows = dict(query(cache, "SELECT recording, status FROM recording_status"))
    assert rows[twin.stem] == "skipped" and rows[edfs[owner_rec].stem] == "ingested"
    ids_before = [r[0] for r in query(cache, "SELECT window_id FROM window_labels WHERE recording = ?",
                                      (edfs[owner_rec].stem,))]
    write_csv_bi(edfs[owner_rec].with_suffix(".csv_bi"), ((80.0, 100.0),), owner_rec.duration_s)
    summary = ingest_json(root, cache)
    assert (summary["edf_read"], summary["failed"]) == (0, 0)
    got = dict(query(cache, "SELECT recording, status FROM recording_status"))
    assert got[twin.stem] == "ingested" and got[edfs[owner_rec].stem] == "ingested"
    twin_rows = query(cache, "SELECT window_id, start_s, label FROM window_labels WHERE recording = ? ORDER BY start_s",
                      (twin.stem,))
    assert [r[0] for r in twin_rows] == ids_before  # the windows moved with their ids
    assert [(round(s, 6), lab) for _, s, lab in twin_rows] == rec_windows(owner_rec, 60, 60)
    edited = dataclasses.replace(owner_rec, events=((80.0, 100.0),))
    own = query(cache, "SELECT start_s, label FROM window_labels WHERE recording = ? ORDER BY start_s",
                (edfs[owner_rec].stem,))
    assert [(round(s, 6), lab) for s, lab in own] == rec_windows(edited, 60, 60)
    # the twin (now the owner of the old content) disappears: it keeps its data and windows, marked missing
    for f in twin.parent.glob(f"{twin.stem}.*"):
        f.unlink()
    ingest_json(root, cache)
    assert query(cache, "SELECT status, source, n_windows FROM recording_status WHERE recording = ?",
                 (twin.stem,)) == [("ingested", "missing", len(rec_windows(owner_rec, 60, 60)))]


def test_owner_deleted_hands_windows_to_the_present_twin(built) -> None:
    root, cache, edfs = built
    owner_rec = RECS[1]
    twin = _twin(edfs[owner_rec], "s009_2015")
    ingest_json(root, cache)
    assert dict(query(cache, "SELECT recording, n_windows FROM recording_status"))[twin.stem] == 0
    for f in edfs[owner_rec].parent.glob(f"{edfs[owner_rec].stem}.*"):
        f.unlink()
    ingest_json(root, cache)
    rows = {r[0]: r[1:] for r in query(cache, "SELECT recording, status, source, n_windows FROM recording_status")}
    assert rows[twin.stem] == ("ingested", "present", len(rec_windows(owner_rec, 60, 60)))
    assert rows[edfs[owner_rec].stem] == ("skipped", "missing", 0)


def test_pull_from_a_cache_built_at_another_path_merges(built, tmp_path: Path) -> None:
    """Regression: pulling from a cache whose tree lived at another path registered the recordings twice."""
    root, cache, edfs = built
    other_root = tmp_path / "site-b" / "corpus"
    shutil.copytree(root, other_root)
    other = tmp_path / "other-cache"
    assert ingest_json(other_root, other)["dataset"] == "corpus"  # another name, the same tree
    before = len(windows(other))
    done = run_cli("pull", "--cache", other, cache, "--json", "--quiet")
    assert done.returncode == 0, done.stderr
    assert len(windows(other)) == before
    assert len(status(other)) == N
    # the same identity with other bytes is a conflict: named, skipped, replaced only with --overwrite
    write_csv_bi(edfs[RECS[1]].with_suffix(".csv_bi"), ((5.0, 15.0),), RECS[1].duration_s)
    ingest_json(root, cache)
    conflict = run_cli("pull", "--cache", other, cache, "--quiet")
    assert conflict.returncode == 0, conflict.stderr
    assert f"CONFLICT tusz/{Path(edfs[RECS[1]]).relative_to(root)}" in conflict.stderr
    assert "--overwrite" in conflict.stderr
    mine = query(other, "SELECT count(*) FROM window_labels WHERE recording = ? AND label <> 'no_seizure'",
                 (edfs[RECS[1]].stem,))
    assert mine == [(0,)]
    forced = run_cli("pull", "--cache", other, cache, "--quiet", "--overwrite")
    assert forced.returncode == 0 and "CONFLICT" not in forced.stderr, forced.stderr
    theirs = query(other, "SELECT count(*) FROM window_labels WHERE recording = ? AND label <> 'no_seizure'",
                   (edfs[RECS[1]].stem,))
    assert theirs == [(1,)]
    assert run_cli("verify", "--cache", other).returncode == 0


def test_second_pipeline_at_another_rate_beside_the_first(built, tmp_path: Path) -> None:
    """Regression: re-ingesting with --fs 200 replaced the 256 Hz data. A named pipeline keeps both, sharing
    nothing but the EDFs; commands that read one pipeline refuse to guess between two."""
    root, cache, _ = built
    before = windows(cache)
    config = tmp_path / "fm.toml"
    config.write_text('pipeline = "fm200"\n[preprocess]\nfs = 200.0\nbandpass_hz = [0.5, 70.0]\n')
    fm = ingest_json(root, cache, "--config", config)
    assert (fm["pipeline"], fm["edf_read"], fm["failed"]) == ("fm200", N, 0)
    assert windows(cache) == before
    assert query(cache, "SELECT DISTINCT fs FROM window_sets ws JOIN pipelines p ON p.id = ws.pipeline_id "
                        "WHERE p.name = 'fm200'") == [(200.0,)]
    stats = run_cli("stats", "--cache", cache)
    assert stats.returncode == 1 and "2 pipelines (default, fm200); choose one with --pipeline" in stats.stderr
    assert json.loads(run_cli("stats", "--cache", cache, "--pipeline", "fm200", "--json").stdout)["pipeline"] == "fm200"
    refused = subprocess.run(trainer_cmd("sample", "--cache", cache), capture_output=True, text=True, timeout=300)
    assert refused.returncode == 1 and "choose one with --pipeline NAME" in refused.stderr
    for name in ("default", "fm200"):
        drawn = subprocess.run(trainer_cmd("sample", "--cache", cache, "--pipeline", name, "--split", "all", "--json"),
                               capture_output=True, text=True, timeout=300)
        assert drawn.returncode == 0, drawn.stderr
        assert json.loads(drawn.stdout)["window_set"]["fs"] == (256.0 if name == "default" else 200.0)


def test_dataset_name_flag_and_subfolder_ingest(built, tmp_path: Path) -> None:
    root, cache, _ = built
    sub = ingest_json(root / "edf" / "dev", cache, "--stride", 30)
    assert (sub["dataset"], sub["unchanged"] + sub["windows_added"], sub["sources_missing"]) == ("tusz", 1, 0)
    named = tmp_path / "copy"
    shutil.copytree(root, named)
    other = ingest_json(named, cache, "--dataset", "tusz-copy")
    assert other["dataset"] == "tusz-copy" and other["skipped"] == N  # byte-identical twins of the first dataset
    assert len(status(cache)) == 2 * N


def test_migration_0004_upgrades_a_cache_built_by_the_previous_release(tmp_path: Path) -> None:
    """A cache made by eegcache at schema 0003 (the previous release's code, real ingest: 4 ingested recordings, a
    byte-identical twin, a truncated EDF, two window sets; tests/fixtures/README.md says how it was made) upgrades
    in place reading no EDF, keeps every window row, and its tree, moved, re-ingests without preprocessing."""
    with tarfile.open(FIXTURES / "cache_0003.tar.gz") as tar:
        tar.extractall(tmp_path, filter="data")
    cache, tree = tmp_path / "cache", tmp_path / "tusz"
    old = query(cache, "SELECT window_id, recording, window_s, stride_s, start_s, label, seizure_fraction "
                       "FROM window_labels ORDER BY window_id")
    old_status = query(cache, "SELECT recording, status, reason, n_windows FROM recording_status ORDER BY recording")
    assert query(cache, "SELECT version_num FROM alembic_version") == [("0003",)] and len(old) > 0
    done = run_cli("db", "upgrade", "--cache", cache)
    assert done.returncode == 0 and f"index at revision {head_revision()}" in done.stdout, done.stderr
    new = query(cache, "SELECT window_id, recording, window_s, stride_s, start_s, label, seizure_fraction, dataset, "
                       "pipeline FROM window_labels ORDER BY window_id")
    assert [r[:7] for r in new] == old and {r[7:] for r in new} == {("tusz", "default")}
    rows = query(cache, "SELECT recording, status, n_windows, rel_path, source_path FROM recording_status "
                        "ORDER BY recording")
    assert [(r[0], r[1], r[2]) for r in rows] == [(r[0], r[1], r[3]) for r in old_status]
    assert all(r[3].startswith("edf/") and r[4] == "/tmp/fx/tusz/" + r[3] for r in rows)  # where it was built
    done = run_cli("ingest", tree, "--cache", cache, "--json", "--quiet", "--missing-electrodes", "zero", "--stride", 20)
    assert done.returncode == 1, done.stderr  # the truncated EDF fails again, and nothing else does
    summary = json.loads(done.stdout)
    assert summary["moved_from"] == "/tmp/fx/tusz"
    assert (summary["edf_read"], summary["ingested"]) == (0, 0)
    assert summary["failed"] == 1 and "truncated EDF header" in summary["failures"][0][1]
    assert query(cache, "SELECT window_id, recording, window_s, stride_s, start_s, label, seizure_fraction, dataset, "
                        "pipeline FROM window_labels ORDER BY window_id") == new
    assert run_cli("verify", "--cache", cache).returncode == 0


def test_kill_during_a_reroot_then_rerun_equals_an_uninterrupted_one(built, tmp_path: Path) -> None:
    """SIGKILL an ingest that re-roots a copied tree (new mtimes: every file is hashed and re-registered) at
    several moments; the next run leaves exactly the index an uninterrupted re-root leaves."""
    root, cache, _ = built
    reference = tmp_path / "reference"
    copy_cache(cache, reference)
    copy = tmp_path / "copy"
    shutil.copytree(root, copy, copy_function=shutil.copyfile)
    ingest_json(copy, reference)
    expected = windows(reference), [r[:6] for r in status(reference)]
    for delay in (0.4, 1.0, 1.8):
        trial = tmp_path / f"trial-{delay}"
        copy_cache(cache, trial)
        proc = subprocess.Popen(eegcache_cmd("ingest", copy, "--cache", trial, "--quiet"), start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        ingest_json(copy, trial)
        assert (windows(trial), [r[:6] for r in status(trial)]) == expected, delay
        assert run_cli("verify", "--cache", trial).returncode == 0
