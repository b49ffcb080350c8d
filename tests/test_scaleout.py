"""Scale-out: the same commands on PostgreSQL and an S3 API, several ingest processes sharing one tree.

Real servers only: PostgreSQL on 127.0.0.1:5432 (skipped when absent) and moto's S3 server started on a free
loopback port by this module.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import servers
from servers import cli, new_bucket, pg_available, snapshot
from sqlalchemy import create_engine, text

from eegcache.sources.synth import synthesize

s3_env = servers.s3_env  # the fixture, used by name
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"  # plain form: SQLAlchemy 2.x picks psycopg 3


def _pg_available() -> bool:
    return pg_available(PG_ADMIN)


pytestmark = pytest.mark.postgres
needs_pg = pytest.mark.skipif(not _pg_available(), reason="no PostgreSQL on 127.0.0.1:5432")


def _pg_schema():
    schema = f"ec_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    yield f"{PG_ADMIN}?options=-csearch_path%3D{schema}"
    with admin.connect() as conn:
        conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


@pytest.fixture
def pg_url():
    """A fresh PostgreSQL schema per test, dropped afterwards."""
    yield from _pg_schema()


@pytest.fixture(scope="module")
def pg_cache(tree, tmp_path_factory):
    """The tree ingested once into a PostgreSQL schema: (cache folder, URL)."""
    if not _pg_available():
        pytest.skip("no PostgreSQL on 127.0.0.1:5432")
    for url in _pg_schema():
        cache = tmp_path_factory.mktemp("pg") / "cache"
        cli("ingest", str(tree), "--cache", str(cache), "--db", url, "--quiet", "--missing-electrodes", "zero")
        yield cache, url


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tree")
    synthesize(root, hours=0.3, seed=3)
    return root


@pytest.fixture(scope="module")
def serial_sqlite(tree, tmp_path_factory):
    """The reference: one serial ingest into SQLite and a local folder."""
    cache = tmp_path_factory.mktemp("serial") / "cache"
    cli("ingest", str(tree), "--cache", str(cache), "--quiet", "--missing-electrodes", "zero")
    return snapshot(cache)


@needs_pg
def test_postgres_index_gives_the_same_views_as_sqlite(pg_cache, serial_sqlite):
    cache, pg_url = pg_cache
    assert not (cache / "index.sqlite").exists(), "with --db the index lives on the server"
    assert snapshot(cache, pg_url) == serial_sqlite
    stats = json.loads(cli("stats", "--cache", str(cache), "--db", pg_url, "--json").stdout)
    assert sum(stats["windows"].values()) == len(serial_sqlite[0])
    # the environment variable works like the flag
    assert snapshot(cache, pg_url) == snapshot_env(cache, pg_url)
    assert cli("verify", "--cache", str(cache), "--db", pg_url).returncode == 0


def snapshot_env(cache: Path, url: str):
    old = os.environ.get("EEGCACHE_DB")
    os.environ["EEGCACHE_DB"] = url
    try:
        return snapshot(cache)
    finally:
        if old is None:
            os.environ.pop("EEGCACHE_DB")
        else:
            os.environ["EEGCACHE_DB"] = old


@needs_pg
@pytest.mark.parametrize("statement", [
    "DELETE FROM windows", "DROP TABLE windows", "INSERT INTO window_sets VALUES (99, 1, 1, 256, 256, 256)",
    "SELECT 1; DELETE FROM windows", "UPDATE recordings SET status = 'x'", "COPY windows TO PROGRAM 'true'",
])
def test_postgres_sql_is_read_only(pg_cache, statement):
    cache, pg_url = pg_cache
    before = _table_rows(pg_url)
    proc = cli("sql", "--cache", str(cache), "--db", pg_url, statement, check=False)
    assert proc.returncode != 0
    assert "refused" in proc.stderr
    assert _table_rows(pg_url) == before


def _table_rows(url: str) -> dict:
    """Every row of the tables a refused statement could touch, read directly (cheaper than the CLI snapshot)."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return {table: sorted(map(tuple, conn.execute(text(f"SELECT * FROM {table}"))))
                    for table in ("windows", "window_sets", "recordings")}
    finally:
        engine.dispose()


@needs_pg
def test_postgres_statement_timeout(tmp_path, pg_url):
    cli("db", "upgrade", "--cache", str(tmp_path / "c"), "--db", pg_url)
    proc = cli("sql", "--cache", str(tmp_path / "c"), "--db", pg_url, "SELECT pg_sleep(5)", "--timeout", "0.3",
               check=False)
    assert proc.returncode != 0 and "time limit" in proc.stderr


@needs_pg
def test_postgres_migrations_downgrade_and_upgrade(pg_url):
    from eegcache.index.db import current_revision, downgrade, head_revision, make_engine, upgrade
    from eegcache.index.views import WINDOW_LABELS_COLUMNS

    engine = make_engine(pg_url)
    upgrade(engine)
    assert current_revision(engine) == head_revision()
    downgrade(engine, "base")
    assert current_revision(engine) is None
    upgrade(engine)
    with engine.connect() as conn:
        cols = tuple(conn.execute(text("SELECT * FROM window_labels")).keys())
    assert cols == WINDOW_LABELS_COLUMNS


def test_s3_store_ingest_verify_gc_and_detect_corruption(tree, tmp_path, s3_env, serial_sqlite):
    """One cache on a bucket (one ingest, the slow part, serves every check): the same index as a local serial
    run, verify passes, gc removes an unregistered object and nothing else, a damaged chunk is found, named and
    repaired."""
    import s3fs

    store = new_bucket()
    cache = tmp_path / "cache"
    cli("ingest", str(tree), "--cache", str(cache), "--store", store, "--quiet", "--missing-electrodes", "zero",
        env=s3_env)
    assert snapshot(cache) == serial_sqlite
    assert not (cache / "objects").exists(), "objects live in the bucket, not the cache folder"
    assert cli("verify", "--cache", str(cache), "--store", store, env=s3_env).returncode == 0
    fs = s3fs.S3FileSystem()

    # the trainer reads its windows and validation recordings from the bucket too (--store, like the CLI)
    run = tmp_path / "run"
    fit = _trainer("fit", "--cache", str(cache), "--store", store, "--out", str(run), "--split", "all",
                   "--val-split", "all", "--epochs", "1", "--batch-size", "4", "--max-windows-per-epoch", "4",
                   "--quiet", env=s3_env)
    assert fit.returncode == 0, fit.stderr[-3000:]
    scored = _trainer("evaluate", "--cache", str(cache), "--store", store, "--checkpoint", str(run / "last.pt"),
                      "--split", "all", "--json", env=s3_env)
    assert scored.returncode == 0, scored.stderr[-3000:]
    ingested = json.loads(cli("stats", "--cache", str(cache), "--json").stdout)["recordings"]["ingested"]
    assert json.loads(scored.stdout)["metrics"]["recordings"] == ingested > 0
    assert not (cache / "objects").exists()

    orphan = f"{store.removeprefix('s3://')}/objects/ff/{'f' * 64}/zarr.json"
    fs.pipe_file(orphan, b"{}")  # a publish whose registration never happened
    out = cli("gc", "--cache", str(cache), "--store", store, "--grace", "0", env=s3_env).stdout
    assert "f" * 64 in out
    assert not fs.exists(orphan)
    assert cli("verify", "--cache", str(cache), "--store", store, env=s3_env).returncode == 0

    chunk = next(p for p in fs.find(store) if "/signal/c." in p)
    data = bytearray(fs.cat_file(chunk))
    data[len(data) // 2] ^= 0xFF
    fs.pipe_file(chunk, bytes(data))
    proc = cli("verify", "--cache", str(cache), "--store", store, check=False, env=s3_env)
    assert proc.returncode == 1
    assert chunk.rsplit("/", 4)[-4][:12] in proc.stdout and "corrupt" in proc.stdout
    repaired = cli("verify", "--cache", str(cache), "--store", store, "--repair", check=False, env=s3_env)
    assert "after repair: 0 problem(s)" in repaired.stdout
    assert snapshot(cache) == serial_sqlite


def test_concurrent_ingest_processes_divide_the_work(tree, tmp_path, serial_sqlite):
    """Three processes on one SQLite cache: every file preprocessed exactly once, same index as a serial run."""
    cache = tmp_path / "cache"
    procs = [subprocess.Popen([sys.executable, "-m", "eegcache", "ingest", str(tree), "--cache", str(cache),
                               "--quiet", "--json", "--missing-electrodes", "zero"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert not any("database is locked" in err for _, err in outs)
    summaries = [json.loads(out) for out, _ in outs]
    n_files = len(list(tree.rglob("*.edf")))
    assert sum(s["ingested"] for s in summaries) == n_files
    assert snapshot(cache) == serial_sqlite


@needs_pg
def test_multi_node_ingest_with_a_killed_node(tree, tmp_path, pg_url, s3_env, serial_sqlite):
    """Three 'nodes' (separate scratch folders) share a PostgreSQL index and an S3 bucket; one is killed
    mid-run; the survivors take over its files after the lease and the index equals a serial SQLite run."""
    store = new_bucket()
    env = {**s3_env, "EEGCACHE_CLAIM_LEASE_S": "3"}

    def node(i: int) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "eegcache", "ingest", str(tree), "--cache", str(tmp_path / f"node{i}"),
             "--db", pg_url, "--store", store, "--quiet", "--json", "--missing-electrodes", "zero"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **env})

    cli("db", "upgrade", "--cache", str(tmp_path / "node0"), "--db", pg_url)
    nodes = [node(i) for i in range(3)]
    time.sleep(1.5)
    nodes[0].send_signal(signal.SIGKILL)
    outs = [p.communicate(timeout=600) for p in nodes[1:]]
    assert all(p.returncode == 0 for p in nodes[1:]), outs
    assert not any("database is locked" in err for _, err in outs)
    assert snapshot(tmp_path / "node1", pg_url) == serial_sqlite
    assert cli("verify", "--cache", str(tmp_path / "node1"), "--db", pg_url, "--store", store,
               env=s3_env).returncode == 0


@needs_pg
def test_index_copy_sqlite_to_postgres_and_back(tree, tmp_path, pg_url, serial_sqlite):
    cache = tmp_path / "cache"
    cli("ingest", str(tree), "--cache", str(cache), "--quiet", "--missing-electrodes", "zero")
    out = cli("index", "copy", "--from", f"sqlite:///{cache / 'index.sqlite'}", "--to", pg_url).stdout
    assert "row counts match" in out
    assert snapshot(cache, pg_url) == serial_sqlite
    refused = cli("index", "copy", "--from", f"sqlite:///{cache / 'index.sqlite'}", "--to", pg_url, check=False)
    assert refused.returncode != 0 and "not empty" in refused.stderr
    # the copy is a working index: new rows get fresh ids (the PostgreSQL sequences were advanced)
    cli("ingest", str(tree), "--cache", str(cache), "--db", pg_url, "--stride", "30", "--quiet",
        "--missing-electrodes", "zero")
    back = f"sqlite:///{tmp_path / 'back.sqlite'}"
    cli("index", "copy", "--from", pg_url, "--to", back)
    assert snapshot(cache, back) == snapshot(cache, pg_url)


def _trainer(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trainer", *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})


@needs_pg
def test_trainer_sample_and_fit_on_a_postgresql_index(pg_cache, tree, tmp_path):
    """The trainer reads only through the public API, so a PostgreSQL index (plain postgresql:// URL) serves it: the
    same epoch as a SQLite cache of the same tree, a --where through the reader role, and a real fit."""
    cache, url = pg_cache
    local = tmp_path / "local"
    cli("ingest", str(tree), "--cache", str(local), "--quiet", "--missing-electrodes", "zero")
    args = ["--split", "all", "--json", "--ids", "--where", "montage <> :m", "--param", "m=02_tcp_le"]
    on_pg = _trainer("sample", "--cache", str(cache), "--db", url, *args)
    on_sqlite = _trainer("sample", "--cache", str(local), *args)
    assert on_pg.returncode == 0, on_pg.stderr
    pg_draw, sqlite_draw = json.loads(on_pg.stdout), json.loads(on_sqlite.stdout)
    assert pg_draw["available"] == sqlite_draw["available"] and pg_draw["draw"]["drawn"] == sqlite_draw["draw"]["drawn"]
    assert len(pg_draw["draw"]["ids"]) == pg_draw["draw"]["windows"] > 0
    refused = _trainer("sample", "--cache", str(cache), "--db", url, "--where", "pg_read_file('/etc/hostname') <> ''")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr
    fit = _trainer("fit", "--cache", str(cache), "--db", url, "--out", str(tmp_path / "run"), "--split", "all",
                   "--val-split", "none", "--epochs", "1", "--batch-size", "4", "--max-windows-per-epoch", "8",
                   "--quiet")
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert (tmp_path / "run" / "last.pt").is_file()
