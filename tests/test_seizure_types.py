"""Seizure types (issue 11): each stored event keeps its annotation's label(s), exposed by the view
``seizure_events``; schema 0006 upgrades a cache built by the previous release in place, and the next ingest types
its events from the annotation files without reading an EDF."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

from edf_factory import Rec, query, run_cli, write_csv_bi, write_tree

from eegcache.index import db
from eegcache.pipeline.labels import clip_events
from eegcache.sources.annotations import parse_annotation

FIXTURES = Path(__file__).parent / "fixtures"


def test_types_from_tusz_files_and_merged_types_joined(tmp_path: Path) -> None:
    """.csv_bi and .tse_bi rows are 'seiz'; in a .csv the per-channel rows (fnsz on FP1-F7 overlapping cpsz on
    F7-T3, as edf_factory writes them) merge into one event that keeps both types, sorted and joined by '+'."""
    tree = tmp_path / "tusz"
    write_tree(tree, [
        Rec("train", "aaaaaaaa", 1, 2003, "01_tcp_ar", 0, duration_s=120, events=((10.0, 30.0), (60.0, 70.0)),
            annotation="csv"),
        Rec("train", "aaaaaaab", 1, 2003, "01_tcp_ar", 0, duration_s=120, events=((5.0, 9.0),), seed=2),
        Rec("dev", "aaaaaaac", 1, 2003, "01_tcp_ar", 0, duration_s=120, events=((1.0, 2.0),), seed=3,
            annotation="tse_bi"),
    ])
    cache = tmp_path / "cache"
    assert run_cli("ingest", tree, "--cache", cache, "--quiet").returncode == 0
    rows = query(cache, "SELECT recording, dataset, subject, session, split, start_s, stop_s, event_type, pipeline "
                        "FROM seizure_events ORDER BY recording, start_s")
    assert rows == [
        ("aaaaaaaa_s001_t000", "tusz", "aaaaaaaa", "s001_2003", "train", 10.0, 30.0, "cpsz+fnsz", "default"),
        ("aaaaaaaa_s001_t000", "tusz", "aaaaaaaa", "s001_2003", "train", 60.0, 70.0, "cpsz+fnsz", "default"),
        ("aaaaaaab_s001_t000", "tusz", "aaaaaaab", "s001_2003", "train", 5.0, 9.0, "seiz", "default"),
        ("aaaaaaac_s001_t000", "tusz", "aaaaaaac", "s001_2003", "dev", 1.0, 2.0, "seiz", "default"),
    ]
    # --where can select on types, e.g. recordings with a complex partial seizure
    assert query(cache, "SELECT DISTINCT recording FROM window_labels WHERE recording IN (SELECT recording FROM "
                        "seizure_events WHERE event_type LIKE '%cpsz%')") == [("aaaaaaaa_s001_t000",)]


def test_types_after_clipping_come_from_the_rows_that_remain(tmp_path: Path) -> None:
    """A row that lies wholly past the end of the recording is dropped with its type, even when it had merged
    with a row that survives."""
    path = tmp_path / "x.csv"
    path.write_text("# duration = 100.00 secs\nchannel,start_time,stop_time,label,confidence\n"
                    "FP1-F7,80.0,99.0,fnsz,1.0\nF7-T3,95.0,120.0,gnsz,1.0\nT3-T5,110.0,130.0,tcsz,1.0\n"
                    "T5-O1,10.0,20.0,cpsz,1.0\nT5-O1,20.0,30.0,bckg,1.0\n")
    ann = parse_annotation(path)
    assert ann.events == ((10.0, 20.0), (80.0, 130.0)) and ann.types == ("cpsz", "fnsz+gnsz+tcsz")
    events, _ = clip_events(ann.events, 100.0)
    assert ann.clipped_types(events, 100.0) == ("cpsz", "fnsz+gnsz")
    events, _ = clip_events(ann.events, 15.0)
    assert ann.clipped_types(events, 15.0) == ("cpsz",)
    stub = write_csv_bi(tmp_path / "y.csv_bi", [], 60.0, stub=True)
    assert parse_annotation(stub).types == ()


def test_migration_0006_upgrades_a_cache_built_by_the_previous_release(tmp_path: Path) -> None:
    """A cache made by eegcache at schema 0004 (commit caa3584, real ingest; tests/fixtures/README.md) upgrades in
    place: window rows and object keys unchanged, events kept with no type; its tree, moved, re-ingests reading no
    EDF, and the events get their types from the annotation files."""
    with tarfile.open(FIXTURES / "cache_0004.tar.gz") as tar:
        tar.extractall(tmp_path, filter="data")
    cache, tree = tmp_path / "cache", tmp_path / "tusz"
    assert query(cache, "SELECT version_num FROM alembic_version") == [("0004",)]
    windows_sql = ("SELECT window_id, recording, dataset, pipeline, window_s, stride_s, start_s, label, seizure_fraction "
                   "FROM window_labels ORDER BY window_id")
    old_windows = query(cache, windows_sql)
    old_events = query(cache, "SELECT r.name, e.start_s, e.stop_s FROM events e JOIN recordings r "
                              "ON r.id = e.recording_id ORDER BY r.name, e.start_s")
    old_keys = query(cache, "SELECT name, object_key, spec_digest FROM recordings ORDER BY name")
    old_pipeline = query(cache, "SELECT name, spec_json, spec_digest FROM pipelines")
    assert len(old_windows) > 0 and len(old_events) > 0
    done = run_cli("db", "upgrade", "--cache", cache)
    assert done.returncode == 0 and f"index at revision {db.head_revision()}" in done.stdout, (done.stdout, done.stderr)
    assert query(cache, windows_sql) == old_windows
    assert query(cache, "SELECT recording, start_s, stop_s, event_type FROM seizure_events "
                        "ORDER BY recording, start_s") == [(*e, None) for e in old_events]
    done = run_cli("ingest", tree, "--cache", cache, "--json", "--quiet", "--missing-electrodes", "zero")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["moved_from"] == "/tmp/fx/tusz" and (summary["edf_read"], summary["ingested"]) == (0, 0)
    assert query(cache, windows_sql) == old_windows
    assert query(cache, "SELECT name, object_key, spec_digest FROM recordings ORDER BY name") == old_keys
    assert query(cache, "SELECT name, spec_json, spec_digest FROM pipelines") == old_pipeline
    assert query(cache, "SELECT recording, start_s, stop_s, event_type FROM seizure_events "
                        "ORDER BY recording, start_s") == [(*e, "seiz") for e in old_events]
    again = json.loads(run_cli("ingest", tree, "--cache", cache, "--json", "--quiet").stdout)
    assert again["unchanged"] == len(old_keys)
    assert run_cli("verify", "--cache", cache).returncode == 0
    engine = db.open_index(cache)  # and back to 0004, with the same windows
    db.downgrade(engine, "0004")
    engine.dispose()
    assert query(cache, "SELECT version_num FROM alembic_version") == [("0004",)]
    assert query(cache, windows_sql) == old_windows
