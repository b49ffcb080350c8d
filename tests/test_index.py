"""The index: Alembic creates exactly the documented schema and public views, SQLite runs in WAL mode, a newer
schema is refused, and the manifest is a query whose answer ``stats`` agrees with."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from conftest import Standard
from edf_factory import cli, query, run_cli

from eegcache.index import db
from eegcache.index.models import Base
from eegcache.index.views import RECORDING_STATUS_COLUMNS, SEIZURE_EVENTS_COLUMNS, WINDOW_LABELS_COLUMNS

# The public SQL API as issue 2 documents it, with the columns index v2 appended (written out here, not imported,
# so the test pins the contract: earlier columns keep their names and positions).
WINDOW_LABELS = ("window_id", "recording", "subject", "session", "split", "montage", "window_s", "stride_s",
                 "start_s", "duration_s", "label", "seizure_fraction", "dataset", "pipeline")  # fmt: skip
RECORDING_STATUS = ("recording", "source_path", "status", "reason", "n_windows", "dataset", "pipeline", "rel_path",
                    "source")  # issue 10 (schema 0004) added the last columns of both
# Issue 11 (schema 0006): seizure events with their types; pipeline last (a recording has a row per pipeline).
SEIZURE_EVENTS = ("recording", "dataset", "subject", "session", "split", "start_s", "stop_s", "event_type", "pipeline")


def _columns(conn: sqlite3.Connection, view: str) -> tuple[str, ...]:
    return tuple(row[1] for row in conn.execute(f"PRAGMA table_info({view})"))


@pytest.fixture
def fresh(tmp_path: Path) -> Path:
    """A new, empty cache created and upgraded by the library."""
    cache = tmp_path / "fresh"
    db.open_index(cache).dispose()
    return cache


def test_views_are_exactly_the_documented_ones(fresh: Path) -> None:
    """Three views, with exactly the documented columns in the documented order."""
    conn = sqlite3.connect(fresh / "index.sqlite")
    try:
        views = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'view'")}
        assert views == {"window_labels", "recording_status", "seizure_events"}
        assert _columns(conn, "seizure_events") == SEIZURE_EVENTS == SEIZURE_EVENTS_COLUMNS
        assert _columns(conn, "window_labels") == WINDOW_LABELS == WINDOW_LABELS_COLUMNS
        assert _columns(conn, "recording_status") == RECORDING_STATUS == RECORDING_STATUS_COLUMNS
    finally:
        conn.close()


def test_migrations_match_the_models(fresh: Path) -> None:
    """The schema that the migrations build is the one the SQLAlchemy models describe (no drift)."""
    engine = db.make_engine(db.default_url(fresh))
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()
    assert diff == []


def test_wal_mode_and_head_revision(fresh: Path) -> None:
    """WAL is a property of the file (any new connection sees it) and the schema is at the newest revision."""
    assert query(fresh, "PRAGMA journal_mode") == [("wal",)]
    assert query(fresh, "SELECT version_num FROM alembic_version") == [(db.head_revision(),)]


def test_downgrade_to_base_and_back(fresh: Path) -> None:
    """Migrations are reversible: down to nothing, up to the same views again."""
    engine = db.make_engine(db.default_url(fresh))
    try:
        db.downgrade(engine, "base")
        left = {r[0] for r in query(fresh, "SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")}
        assert left <= {"alembic_version"}
        db.upgrade(engine)
    finally:
        engine.dispose()
    views = {r[0] for r in query(fresh, "SELECT name FROM sqlite_master WHERE type = 'view'")}
    assert views == {"window_labels", "recording_status", "seizure_events"}


def test_db_upgrade_command_creates_an_index(tmp_path: Path) -> None:
    """`eegcache db upgrade` on an empty folder creates the index at the head revision and says so."""
    cache = tmp_path / "new"
    done = run_cli("db", "upgrade", "--cache", cache)
    assert done.returncode == 0, done.stderr
    head = db.head_revision()
    assert head in done.stdout
    assert query(cache, "SELECT version_num FROM alembic_version") == [(head,)]
    assert query(cache, "PRAGMA journal_mode") == [("wal",)]


def test_db_current_command(fresh: Path) -> None:
    """`eegcache db current` prints the index's revision."""
    done = run_cli("db", "current", "--cache", fresh)
    assert done.returncode == 0, done.stderr[-500:]
    assert db.head_revision() in done.stdout


@pytest.mark.parametrize("command", [
    ("stats",), ("sql", "SELECT 1"), ("verify",), ("gc", "--dry-run"), ("db", "upgrade"), ("ingest", "SRC"),
], ids=lambda c: c[0])
def test_newer_schema_is_refused(fresh: Path, tmp_path: Path, command: tuple[str, ...]) -> None:
    """An index at a revision this eegcache does not know ('zzzz') is refused by every command with a message
    naming the revision and what to do, and is left as it was."""
    conn = sqlite3.connect(fresh / "index.sqlite")
    with conn:
        conn.execute("UPDATE alembic_version SET version_num = 'zzzz'")
    conn.close()
    src = tmp_path / "src"
    src.mkdir()
    args = [str(src) if a == "SRC" else a for a in command]
    if command[0] == "db":
        done = cli(*args, "--cache", fresh)
    else:
        done = cli(args[0], "--cache", fresh, *args[1:])
    assert done.returncode != 0
    assert "'zzzz'" in done.stderr and "upgrade eegcache" in done.stderr, done.stderr[-800:]
    assert "Traceback" not in done.stderr
    assert query(fresh, "SELECT version_num FROM alembic_version") == [("zzzz",)]


def test_manifest_query_equals_stats(standard: Standard) -> None:
    """The manifest is `SELECT label, count(*) FROM window_labels GROUP BY label`; stats --json reports the same
    windows per label and the same recordings per status as recording_status."""
    done = run_cli("stats", "--cache", standard.cache, "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    manifest = dict(query(standard.cache, "SELECT label, count(*) FROM window_labels GROUP BY label"))
    assert {k: v for k, v in data["windows"].items() if v} == manifest
    by_status = dict(query(standard.cache, "SELECT status, count(*) FROM recording_status GROUP BY status"))
    assert {k: v for k, v in data["recordings"].items() if v} == by_status
    assert sum(r["windows"] for r in data["windows_by_set"]) == sum(manifest.values())


def test_views_are_consistent(standard: Standard) -> None:
    """duration_s is the window length, seizure_fraction lies in [0, 1] and agrees with the label,
    n_windows counts the recording's windows, and ingested recordings have no reason while failed ones do."""
    bad = query(standard.cache, """
        SELECT count(*) FROM window_labels WHERE duration_s != window_s OR seizure_fraction < 0 OR seizure_fraction > 1
           OR (label = 'no_seizure') != (seizure_fraction = 0) OR (label = 'full_seizure') != (seizure_fraction = 1)""")
    assert bad == [(0,)]
    counts = dict(query(standard.cache, "SELECT recording, count(*) FROM window_labels GROUP BY recording"))
    for recording, status, reason, n in query(standard.cache,
                                              "SELECT recording, status, reason, n_windows FROM recording_status"):
        assert n == counts.get(recording, 0)
        assert (reason is None) == (status == "ingested")


def test_integrity_and_foreign_keys(standard: Standard) -> None:
    assert query(standard.cache, "PRAGMA integrity_check") == [("ok",)]
    assert query(standard.cache, "PRAGMA foreign_key_check") == []


@pytest.mark.parametrize("sql", [
    "SELECT label, count(*) FROM windows WHERE window_set_id = 1 GROUP BY label",
    "SELECT id FROM windows WHERE window_set_id = 1 AND label = 2",
])
def test_class_queries_use_an_index(standard: Standard, sql: str) -> None:
    """Class counts and per-class id lists are answered from an index, not a table scan (10 M windows)."""
    plan = [str(r[-1]) for r in query(standard.cache, f"EXPLAIN QUERY PLAN {sql}")]
    assert any(p.startswith("SEARCH windows USING") and "INDEX" in p for p in plan), plan
    assert not any(p.startswith("SCAN windows") for p in plan), plan
