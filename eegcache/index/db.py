"""Opening the index: engine, SQLite pragmas, automatic Alembic upgrade, and refusal of newer schemas."""

from __future__ import annotations

import ast
import fcntl
import os
import re
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.exc import DatabaseError

from eegcache.errors import StateError

if TYPE_CHECKING:
    from alembic.config import Config

INDEX_FILE = "index.sqlite"
BUSY_TIMEOUT_MS = 120_000


class IndexError_(StateError):
    """The index cannot be used (newer schema, unwritable folder...); the message says why."""


def default_url(cache: Path) -> str:
    return f"sqlite:///{Path(cache).resolve() / INDEX_FILE}"


def _alembic_config(connection=None) -> Config:
    from alembic.config import Config  # Alembic (~0.3 s of imports) only when migrating

    cfg = Config()
    cfg.set_main_option("script_location", str(resources.files("eegcache.migrations")))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


_REVISION_LINE = re.compile(r"^(revision|down_revision)\s*(?::[^=\n]*)?=\s*(.+?)\s*$", re.MULTILINE)


def script_revisions(versions: Path | None = None) -> dict[str, tuple[str, ...]]:
    """``{revision: its down revisions}`` of the migration scripts, read from their ``revision =`` and
    ``down_revision =`` lines rather than through Alembic, whose imports would be most of the time of a command
    that finds the index current (tests/test_migrations.py checks this against Alembic's own reading)."""
    versions = versions or Path(str(resources.files("eegcache.migrations"))) / "versions"
    found = {}
    for script in sorted(versions.glob("*.py")):
        if script.name == "__init__.py" or script.name.startswith(".#"):  # the files Alembic skips
            continue
        lines = dict(_REVISION_LINE.findall(script.read_text(encoding="utf-8")))
        down = ast.literal_eval(lines.get("down_revision", "None"))
        found[ast.literal_eval(lines["revision"])] = (down,) if isinstance(down, str) else tuple(down or ())
    return found


def head_revision() -> str:
    revisions = script_revisions()
    heads = set(revisions) - {down for downs in revisions.values() for down in downs}
    if len(heads) != 1:
        raise IndexError_(f"the migration scripts have {len(heads)} heads ({', '.join(sorted(heads))}), not one")
    return heads.pop()


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA journal_mode = WAL")
    cur.execute("PRAGMA synchronous = NORMAL")
    cur.execute("PRAGMA foreign_keys = ON")
    cur.close()


def _sqlite_begin(conn) -> None:
    # Writers take the write lock at BEGIN so that two of them queue on busy_timeout instead of failing to
    # upgrade a read transaction ("database is locked"); readers take no lock (WAL).
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("writer") else "BEGIN")


WRITER_LOCK_ID = 0x6565_6763  # "eegc": the advisory lock that serialises writers on PostgreSQL


def _postgres_begin(conn) -> None:
    # The PostgreSQL twin of BEGIN IMMEDIATE: writers queue on one transaction-scoped advisory lock, so
    # check-then-insert sequences never race and never deadlock.
    if conn.get_execution_options().get("writer"):
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({WRITER_LOCK_ID})")


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000, "isolation_level": None})
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    engine = create_engine(url, pool_pre_ping=True)
    if engine.dialect.name == "postgresql":
        event.listen(engine, "begin", _postgres_begin)
    return engine


@contextmanager
def _file_lock(path: Path):
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def current_revision(engine: Engine) -> str | None:
    """The index's schema revision, None before the first migration: read from Alembic's table as Alembic does."""
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        versions = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    if len(versions) > 1:
        raise IndexError_(f"the index records {len(versions)} schema revisions ({', '.join(versions)}), not one")
    return versions[0] if versions else None


@contextmanager
def _migrating(engine: Engine):
    """A write transaction for Alembic. On SQLite, foreign keys are switched off around it (outside the
    transaction, where the pragma takes effect): rebuilding a table in batch mode drops the old one, and with
    foreign keys on that DROP would cascade into every child row. The result is checked before the commit."""
    with writer(engine).connect() as conn:
        sqlite = engine.dialect.name == "sqlite"
        if sqlite:
            conn.connection.driver_connection.execute("PRAGMA foreign_keys = OFF")
        try:
            with conn.begin():
                yield conn
                if sqlite and (bad := conn.exec_driver_sql("PRAGMA foreign_key_check").first()):
                    raise IndexError_(f"the migration left a dangling reference in table {bad[0]}; rolled back")
        finally:
            if sqlite:
                conn.connection.driver_connection.execute("PRAGMA foreign_keys = ON")


def upgrade(engine: Engine, revision: str = "head") -> None:
    from alembic import command  # see _alembic_config

    with _migrating(engine) as conn:
        command.upgrade(_alembic_config(conn), revision)
        if conn.dialect.name == "postgresql":
            grant_reader_views(conn)


# The PostgreSQL role ``eegcache sql`` runs user SQL as (migration 0005; ``eegcache.index.query.server_reader``).
READER_ROLE = "eegcache_reader"

_GRANT_VIEWS = """
DO $eegcache$
DECLARE
    v record;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'eegcache_reader')
       AND has_schema_privilege('eegcache_reader', current_schema(), 'USAGE') THEN
        FOR v IN SELECT viewname FROM pg_views WHERE schemaname = current_schema()
                 AND NOT has_table_privilege('eegcache_reader', format('%I.%I', schemaname, viewname), 'SELECT') LOOP
            EXECUTE format('GRANT SELECT ON %I.%I TO eegcache_reader', current_schema(), v.viewname);
        END LOOP;
    END IF;
END
$eegcache$
"""


def grant_reader_views(conn) -> None:
    """Views are the public SQL API: once migration 0005 has set the reader role up on this schema, every view in
    it (including those that later migrations add) is readable by the reader role, and nothing else is."""
    conn.execute(text(_GRANT_VIEWS))  # text(): the driver sees format()'s % signs escaped


def downgrade(engine: Engine, revision: str) -> None:
    from alembic import command  # see _alembic_config

    with _migrating(engine) as conn:
        command.downgrade(_alembic_config(conn), revision)


def check_schema(engine: Engine) -> str | None:
    """Refuse an index written by a newer eegcache rather than misread it; returns its revision."""
    current = current_revision(engine)
    if current is not None and current not in script_revisions():
        raise IndexError_(
            f"the index is at schema revision {current!r}, which this eegcache does not know "
            f"(newest known: {head_revision()!r}); upgrade eegcache to read it"
        )
    return current


def open_index(cache: Path, url: str | None = None, *, upgrade_schema: bool = True) -> Engine:
    """Engine for the cache's index, created and upgraded to the newest schema when needed.

    ``url`` (or ``$EEGCACHE_DB``) is a SQLAlchemy URL; by default the index is ``CACHE/index.sqlite``."""
    cache = Path(cache)
    url = url or None
    if url is None:
        try:
            cache.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise IndexError_(f"cannot create the cache folder {cache}: {exc.strerror or exc}") from None
        problem = _not_writable(cache)
        if problem:
            raise IndexError_(f"{problem}: this command writes the cache (ingest, gc, db upgrade, pull and repair "
                              "do); the read-only commands (sql, stats, trainer sample/fit/evaluate) work without "
                              "write access")
    engine = make_engine(url or default_url(cache))
    where = url or str(cache / INDEX_FILE)
    if url is None and not _in_wal_mode(cache / INDEX_FILE):
        # A new (or not yet WAL) SQLite file: its first connection switches it to WAL, which takes an exclusive
        # lock without waiting on busy_timeout, so a second process doing the same at that moment would fail with
        # "database is locked". One process creates and migrates it while the others wait on this lock.
        with _file_lock(cache / ".index.lock"):
            if _read_schema(engine, where) != head_revision() and upgrade_schema:
                upgrade(engine)
        return engine
    if _read_schema(engine, where) != head_revision() and upgrade_schema:
        if url is None:  # one process migrates while the others wait
            with _file_lock(cache / ".index.lock"):
                if current_revision(engine) != head_revision():
                    upgrade(engine)
        else:  # the writer lock serialises upgraders; Alembic skips what is already applied
            upgrade(engine)
    return engine


def _read_schema(engine: Engine, where: str) -> str | None:
    try:
        return check_schema(engine)
    except DatabaseError as err:  # e.g. "file is not a database"
        engine.dispose()
        raise IndexError_(f"cannot read the index {where}: {err.orig}; it was left untouched") from None


def _in_wal_mode(index_file: Path) -> bool:
    """Whether the SQLite file is already in WAL mode, asked through SQLite on a read-only connection. Never by
    reading the file ourselves: closing any descriptor of a database file drops every POSIX lock this process
    holds on it, including those of its open SQLite connections, and with them the guarantee that nobody deletes the
    WAL under them (SQLite's "how to corrupt your database", 2.2; CI saw "database disk image is malformed")."""
    import sqlite3

    if not index_file.is_file():
        return False
    try:
        conn = sqlite3.connect(f"{index_file.resolve().as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
    except sqlite3.Error:
        return False
    try:
        return conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    except sqlite3.Error:  # empty (being created), not a database, or no -shm can be made: the locked path decides
        return False
    finally:
        conn.close()


def writer(engine: Engine) -> Engine:
    """The same engine whose transactions take the write lock up front (SQLite ``BEGIN IMMEDIATE``)."""
    return engine.execution_options(writer=True)


# ----------------------------------------------------------------------------------------------------------------
# Reading a cache this user cannot write


def _not_writable(cache: Path) -> str | None:
    """Why this user cannot write the cache's SQLite index (None when it can)."""
    if not os.access(cache, os.W_OK | os.X_OK):
        return f"the cache folder {cache} is not writable by this user"
    for name in (INDEX_FILE, f"{INDEX_FILE}-wal", f"{INDEX_FILE}-shm"):
        path = cache / name
        # exists() again after a failed access(): another process closing the last connection deletes the -wal
        # between the two calls, and a file that is gone is not a file this user cannot write.
        if path.exists() and not os.access(path, os.W_OK) and path.exists():
            return f"the index file {path} is not writable by this user"
    return None


def readonly_engine(index_file: Path) -> Engine:
    """An engine whose connections can only read the SQLite index (``eegcache.index.query.connect_readonly``: ``mode=ro``,
    or ``immutable`` where this user cannot create the WAL side files). No pragma is set: each would be a write."""
    from eegcache.index.query import connect_readonly

    index_file = Path(index_file)
    return create_engine("sqlite://", creator=lambda: connect_readonly(index_file, authorizer=False))


def open_index_for_reading(cache: Path, url: str | None = None) -> Engine:
    """Engine for commands that only read (``sql``, ``stats``). A cache this user may write is opened (and upgraded)
    as :func:`open_index` does; a SQLite index this user cannot write (a read-only mount, another user's cache) is
    opened read-only, and refused with a message when its schema is not the newest (it cannot be upgraded here)."""
    cache = Path(cache)
    url = url or None
    if url is not None or not (cache / INDEX_FILE).is_file() or _not_writable(cache) is None:
        return open_index(cache, url)
    from eegcache.index.query import QueryError

    engine = readonly_engine(cache / INDEX_FILE)
    try:
        current = check_schema(engine)
    except QueryError as err:  # already says which file and why
        engine.dispose()
        raise IndexError_(str(err)) from None
    except DatabaseError as err:
        engine.dispose()
        raise IndexError_(f"cannot read the index {cache / INDEX_FILE}: {err.orig}") from None
    if current != head_revision():
        engine.dispose()
        raise IndexError_(
            f"the index {cache / INDEX_FILE} is at schema revision {current!r}, older than this eegcache's "
            f"{head_revision()!r}, and this user cannot write it, so it cannot be upgraded here: ask its owner to run "
            f"eegcache db upgrade --cache {cache}, or read it with the eegcache version that wrote it")
    return engine
