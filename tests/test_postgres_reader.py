"""``eegcache sql`` on PostgreSQL runs user SQL as the role ``eegcache_reader`` (migration 0005), inside a READ ONLY
transaction: with the local server's default role (a superuser) server files, other sessions, settings, large
objects, programs and other databases stay out of reach, and plain ``postgresql://`` URLs work (psycopg 3).

Real server only (127.0.0.1:5432, skipped when absent); every command is a real ``eegcache`` subprocess.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path

import pytest
from servers import cli, pg_available
from sqlalchemy import create_engine, text

from eegcache.sources.synth import synthesize

HOST = "postgres@127.0.0.1:5432/test"
PG_ADMIN = f"postgresql://{HOST}"  # the plain form users write: psycopg 3 (SQLAlchemy 2.x's default driver)


def _pg_available() -> bool:
    return pg_available(PG_ADMIN)


pytestmark = [pytest.mark.postgres, pytest.mark.skipif(not _pg_available(), reason="no PostgreSQL on 127.0.0.1:5432")]


def _admin():
    return create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")


@pytest.fixture(scope="module")
def pg(tmp_path_factory):
    """A small tree ingested into a fresh schema: (cache folder, URL, schema)."""
    schema = f"ec_{uuid.uuid4().hex[:10]}"
    admin = _admin()
    with admin.connect() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    base = tmp_path_factory.mktemp("pgreader")
    synthesize(base / "tree", hours=0.1, seed=5)
    url = f"{PG_ADMIN}?options=-csearch_path%3D{schema}"
    cli("ingest", str(base / "tree"), "--cache", str(base / "cache"), "--db", url, "--quiet",
        "--missing-electrodes", "zero")
    yield base / "cache", url, schema
    with admin.connect() as conn:
        conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


def _sql(pg, statement: str, *extra: str):
    cache, url, _ = pg
    return cli("sql", "--cache", str(cache), "--db", url, statement, *extra, check=False)


def _state(url: str) -> tuple:
    """What a refused statement must leave as it was: the views' rows, large objects, the reader's grants and
    the server settings of a new session."""
    engine = create_engine(url)
    with engine.connect() as conn:
        out = (conn.execute(text("SELECT count(*), sum(window_id) FROM window_labels")).one(),
               tuple(conn.execute(text("SELECT * FROM recording_status ORDER BY recording")).all()),
               conn.execute(text("SELECT count(*) FROM pg_largeobject_metadata")).scalar_one(),
               conn.execute(text("SELECT current_setting('default_transaction_read_only')")).scalar_one(),
               conn.execute(text("SELECT count(*) FROM information_schema.role_table_grants "
                                 "WHERE grantee = 'eegcache_reader' AND table_schema = current_schema()")).scalar_one())
    engine.dispose()
    return out


def test_plain_postgresql_url_and_both_drivers(pg, tmp_path: Path) -> None:
    cache, url, _ = pg
    rows = json.loads(cli("sql", "--cache", str(cache), "--db", url, "--json",
                          "SELECT count(*) AS n, current_user AS role FROM window_labels").stdout)
    assert rows[0]["n"] > 0 and rows[0]["role"] == "eegcache_reader"
    stats = json.loads(cli("stats", "--cache", str(cache), "--db", url, "--json").stdout)
    assert sum(stats["windows"].values()) == rows[0]["n"]
    for driver in ("postgresql+psycopg", "postgresql+psycopg2"):
        if driver.endswith("psycopg2"):
            pytest.importorskip("psycopg2")
        alt = url.replace("postgresql://", f"{driver}://", 1)
        again = json.loads(cli("sql", "--cache", str(cache), "--db", alt, "--json",
                               "SELECT count(*) AS n FROM window_labels").stdout)
        assert again[0]["n"] == rows[0]["n"], driver


@pytest.mark.parametrize(("statement", "phrase"), [
    ("SELECT pg_read_file('/etc/hostname')", "permission denied for function pg_read_file"),
    ("SELECT set_config('default_transaction_read_only', 'off', false)", "permission denied for function set_config"),
    # taking back the session's superuser role, then reading a server file through dynamic SQL
    ("SELECT set_config('role', 'postgres', true), query_to_xml('SELECT pg_read_file(''/etc/hostname'') AS f', "
     "true, false, '')", "permission denied for function set_config"),
    ("SELECT query_to_xml('SELECT pg_read_file(''/etc/hostname'') AS f', true, false, '')", "permission denied"),
    ("SELECT lo_import('/etc/hostname')", "permission denied for function lo_import"),
    ("SELECT pg_ls_dir('.')", "permission denied"),
    ("SELECT * FROM recordings", "permission denied for table recordings"),  # tables are not the API
    ("SELECT * FROM alembic_version", "permission denied"),
    ("COPY (SELECT 1) TO PROGRAM 'touch /tmp/eegcache_reader_pwned'", "one reading statement"),
    ("SELECT pg_reload_conf()", "permission denied"),
])
def test_reader_refuses_and_changes_nothing(pg, statement: str, phrase: str) -> None:
    before = _state(pg[1])
    done = _sql(pg, statement)
    assert done.returncode == 1, done.stdout
    assert "Traceback" not in done.stderr
    assert "refused" in done.stderr and phrase in done.stderr, done.stderr
    assert "vm\n" not in done.stdout and "<f>" not in done.stdout
    assert not Path("/tmp/eegcache_reader_pwned").exists()
    assert _state(pg[1]) == before


def test_reader_cannot_cancel_other_backends(pg) -> None:
    """`SELECT pg_cancel_backend(pid) FROM pg_stat_activity` cancelled 4 other backends under the connecting role;
    as the reader it is refused and a query running in another session goes on."""
    engine = create_engine(PG_ADMIN)
    outcome: dict = {}

    def sleeper() -> None:
        with engine.connect() as conn:
            outcome["pid"] = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
            try:
                conn.execute(text("SELECT pg_sleep(60)"))
                outcome["result"] = "finished"
            except Exception as exc:  # noqa: BLE001 - cancelled by the test itself, below
                outcome["result"] = type(exc.orig).__name__

    thread = threading.Thread(target=sleeper)
    thread.start()
    deadline = time.monotonic() + 20
    admin = _admin()
    with admin.connect() as conn:
        while time.monotonic() < deadline:
            if "pid" in outcome and conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE pid = :p AND "
                                                      "query LIKE '%pg_sleep(60)%'"), {"p": outcome["pid"]}).scalar_one():
                break
            time.sleep(0.1)
        done = _sql(pg, "SELECT pg_cancel_backend(pid) FROM pg_stat_activity")
        assert done.returncode == 1 and "refused" in done.stderr and "cancel" in done.stderr, done.stderr
        still = conn.execute(text("SELECT state FROM pg_stat_activity WHERE pid = :p"), {"p": outcome["pid"]}).scalar_one()
        assert still == "active" and "result" not in outcome, "another session's query was cancelled"
        conn.execute(text("SELECT pg_cancel_backend(:p)"), {"p": outcome["pid"]})
    thread.join(30)
    engine.dispose()
    admin.dispose()
    assert outcome["result"] == "QueryCanceled"


def test_pg_sleep_past_the_timeout_is_stopped_and_cannot_lift_it(pg) -> None:
    t0 = time.monotonic()
    done = _sql(pg, "SELECT pg_sleep(10)", "--timeout", "0.5")
    assert done.returncode == 1 and "stopped" in done.stderr and "time limit" in done.stderr, done.stderr
    lifted = _sql(pg, "SELECT set_config('statement_timeout', '0', true), pg_sleep(10)", "--timeout", "0.5")
    assert lifted.returncode == 1 and "refused" in lifted.stderr, lifted.stderr
    assert time.monotonic() - t0 < 9, "a statement outlived its time limit"


def test_dblink_is_refused(pg) -> None:
    """dblink (installed into the index's schema for the test, when the server has it) would open a new session
    as any role with trust authentication; the reader may not connect without a password."""
    cache, url, schema = pg
    admin = _admin()
    with admin.connect() as conn:
        available = conn.execute(text("SELECT count(*) FROM pg_available_extensions WHERE name = 'dblink'")).scalar_one()
        installed = conn.execute(text("SELECT count(*) FROM pg_extension WHERE extname = 'dblink'")).scalar_one()
        created = bool(available and not installed)
        if created:
            conn.execute(text(f"CREATE EXTENSION dblink SCHEMA {schema}"))
    try:
        before = _state(url)
        done = _sql(pg, "SELECT * FROM dblink('dbname=test user=postgres host=127.0.0.1', "
                        "'SELECT pg_read_file(''/etc/hostname'')') AS t(f text)")
        assert done.returncode == 1 and "Traceback" not in done.stderr
        if created or installed:
            assert "refused" in done.stderr and "password is required" in done.stderr, done.stderr
        else:
            assert "does not exist" in done.stderr, done.stderr
        assert "vm" not in done.stdout
        assert _state(url) == before
    finally:
        if created:
            with admin.connect() as conn:
                conn.execute(text("DROP EXTENSION dblink"))
        admin.dispose()


def test_what_the_connecting_role_needs(pg) -> None:
    """A least-privilege connecting role: CONNECT, USAGE on the schema, SELECT on alembic_version (the revision
    check) and membership in eegcache_reader. Without the membership sql says which GRANT is missing."""
    cache, url, schema = pg
    role = f"ec_app_{uuid.uuid4().hex[:8]}"
    admin = _admin()
    with admin.connect() as conn:
        conn.execute(text(f"CREATE ROLE {role} LOGIN"))
        conn.execute(text(f"GRANT USAGE ON SCHEMA {schema} TO {role}"))
        conn.execute(text(f"GRANT SELECT ON {schema}.alembic_version TO {role}"))
    app_url = url.replace("postgresql://postgres@", f"postgresql://{role}@", 1)
    try:
        done = cli("sql", "--cache", str(cache), "--db", app_url, "SELECT count(*) FROM window_labels", check=False)
        assert done.returncode == 1 and f"GRANT eegcache_reader TO {role}" in done.stderr, done.stderr
        with admin.connect() as conn:
            conn.execute(text(f"GRANT eegcache_reader TO {role}"))
        ok = cli("sql", "--cache", str(cache), "--db", app_url, "--json", "SELECT count(*) AS n FROM window_labels")
        assert json.loads(ok.stdout)[0]["n"] > 0
        refused = cli("sql", "--cache", str(cache), "--db", app_url, "SELECT pg_read_file('/etc/hostname')",
                      check=False)
        assert refused.returncode == 1 and "permission denied" in refused.stderr
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP OWNED BY {role}"))
            conn.execute(text(f"DROP ROLE {role}"))
        admin.dispose()


def test_migration_grants_every_view_and_downgrade_takes_the_grants_back(pg) -> None:
    from eegcache.index.db import downgrade, make_engine, upgrade

    cache, url, schema = pg
    engine = make_engine(url)
    downgrade(engine, "0004")
    with engine.begin() as conn:
        conn.execute(text("CREATE VIEW extra_view AS SELECT recording FROM recording_status"))
    with engine.connect() as conn:
        assert not conn.execute(text("SELECT has_table_privilege('eegcache_reader', 'window_labels', 'SELECT')")).scalar()
    upgrade(engine)
    try:
        done = cli("sql", "--cache", str(cache), "--db", url, "--json", "SELECT count(*) AS n FROM extra_view")
        assert json.loads(done.stdout)[0]["n"] > 0
    finally:
        with engine.begin() as conn:
            conn.execute(text("DROP VIEW extra_view"))
        engine.dispose()
