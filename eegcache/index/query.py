"""Read-only ad hoc SQL over the index, with a time limit and a row cap (``eegcache sql``).

Safety does not rest on parsing the statement. On SQLite the file is opened read-only (``mode=ro``), an
authorizer allows only reading (no ATTACH, no writable PRAGMA, no functions that load extensions), and a
progress handler interrupts a statement that runs past its time limit. On PostgreSQL the statement runs in a
``READ ONLY`` transaction with a local ``statement_timeout``, and is rolled back whatever it did.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from eegcache.errors import InputError

DEFAULT_LIMIT = 1000
DEFAULT_TIMEOUT_S = 30.0
# Pragmas that only describe the schema, whatever their argument (a table or index name).
_SCHEMA_PRAGMAS = {"table_info", "table_xinfo", "index_list", "index_info", "index_xinfo", "foreign_key_list"}
# Pragmas that also have a writing form (``PRAGMA user_version = 5``): allowed only without an argument.
_VALUE_PRAGMAS = {"user_version", "schema_version", "database_list", "compile_options", "page_count", "page_size"}
_ALLOWED = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}
_DENIED_FUNCTIONS = {"load_extension", "readfile", "writefile", "edit", "fts3_tokenizer"}


class QueryError(InputError):
    """A refused or failed query; the message says why."""


@dataclass
class QueryResult:
    columns: list[str]
    rows: list[tuple]
    truncated: bool


def _authorizer(action, arg1, arg2, _db, _trigger):
    if action in _ALLOWED:
        if action == sqlite3.SQLITE_FUNCTION and arg2 and arg2.lower() in _DENIED_FUNCTIONS:
            return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_PRAGMA and arg1:
        name = arg1.lower()
        if name in _SCHEMA_PRAGMAS or (name in _VALUE_PRAGMAS and arg2 is None):
            return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY


class ReadOnlyIndexError(QueryError):
    """The index cannot be opened for reading as it stands (e.g. transactions stranded in a WAL file of a folder
    that this user cannot write); the message says why and what to do."""


def _side_files(index_file: Path) -> tuple[Path, Path]:
    return index_file.with_name(index_file.name + "-wal"), index_file.with_name(index_file.name + "-shm")


def _open_sqlite(uri: str, timeout_s: float) -> sqlite3.Connection:
    conn = sqlite3.connect(uri, uri=True, timeout=timeout_s)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # opens the WAL index (-shm) now, not later
    except BaseException:
        conn.close()
        raise
    return conn


def open_sqlite_readonly(index_file: Path, *, timeout_s: float = 60.0) -> tuple[sqlite3.Connection, bool]:
    """(connection that can only read, whether it is ``immutable``).

    A WAL-mode index is first opened ``mode=ro``: safe beside live writers, but SQLite must then open or create
    the ``-shm`` side file. When the folder is not writable by this user and no side files exist (no connection is
    open on the index: a shared read-only mount, or another user's idle cache), ``mode=ro`` fails with "attempt to
    write a readonly database"; the index is then opened ``immutable=1``, which reads the main file without any
    locking or side file. That assumes nobody writes the index while it is read, which is what an absent ``-wal``
    file says at the moment of opening (a writer keeps one while it has the index open); a writer starting
    afterwards is not noticed. A ``-wal`` file with content that this user cannot open holds transactions not yet
    in the main file: the index is then refused rather than read without them."""
    index_file = Path(index_file).resolve()
    uri = index_file.as_uri()
    try:
        return _open_sqlite(f"{uri}?mode=ro", timeout_s), False
    except sqlite3.OperationalError as exc:
        wal, shm = _side_files(index_file)
        folder_writable = os.access(index_file.parent, os.W_OK | os.X_OK)
        if folder_writable or shm.exists():
            raise ReadOnlyIndexError(f"cannot read the index {index_file}: {exc}") from None
        if wal.exists() and wal.stat().st_size > 0:
            raise ReadOnlyIndexError(
                f"cannot read the index {index_file}: its write-ahead log {wal.name} holds {wal.stat().st_size} bytes "
                f"of transactions not yet in {index_file.name}, and this user cannot write the folder "
                f"{index_file.parent}, so SQLite cannot open them. Ask the cache's owner to open it once (e.g. "
                "eegcache stats), which moves them into the index file") from None
    try:
        return _open_sqlite(f"{uri}?mode=ro&immutable=1", timeout_s), True
    except sqlite3.Error as exc:
        raise ReadOnlyIndexError(f"cannot read the index {index_file}: {exc}") from None


def connect_readonly(index_file: Path, *, authorizer: bool = True, timeout_s: float = 60.0) -> sqlite3.Connection:
    """A SQLite connection that can only read: opened ``mode=ro`` (``immutable`` in a folder this user cannot write;
    see :func:`open_sqlite_readonly`) and ``query_only``, and, for statements that hold user text, with the read-only
    authorizer."""
    conn, _immutable = open_sqlite_readonly(index_file, timeout_s=timeout_s)
    conn.execute("PRAGMA query_only = 1")
    if authorizer:
        conn.set_authorizer(_authorizer)
    return conn


def run_query(
    index: Path | str,
    sql: str,
    params: dict | tuple = (),
    *,
    limit: int = DEFAULT_LIMIT,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> QueryResult:
    """Run one read-only statement and return at most ``limit`` rows (``truncated`` says if there were more).

    ``index`` is the SQLite index file, or a SQLAlchemy URL of a server database."""
    if isinstance(index, str) and "://" in index and not index.startswith("sqlite"):
        return _run_server(index, sql, params, limit, timeout_s)
    index_file = Path(str(index).removeprefix("sqlite:///"))
    if not index_file.is_file():
        raise QueryError(f"no index at {index_file}: ingest something into this cache first")
    conn = connect_readonly(index_file, timeout_s=30)
    try:
        deadline = time.monotonic() + timeout_s
        conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
        try:
            cur = conn.execute(sql, params)
            rows = cur.fetchmany(limit + 1) if cur.description else []
        except sqlite3.DatabaseError as exc:
            msg = str(exc)
            if msg in ("not authorized", "authorization denied"):
                raise QueryError("refused: eegcache sql only reads (SELECT, read-only PRAGMA); nothing was changed") from None
            if msg == "interrupted":
                raise QueryError(f"stopped: the query ran longer than the {timeout_s:g} s time limit") from None
            raise QueryError(f"SQL error: {msg}") from None
        except (sqlite3.ProgrammingError, sqlite3.Warning) as exc:
            raise QueryError(f"SQL error: {exc}") from None
        columns = [d[0] for d in cur.description] if cur.description else []
        return QueryResult(columns, rows[:limit], len(rows) > limit)
    finally:
        conn.close()


_SERVER_READ_KEYWORDS = ("select", "with", "values", "table", "explain", "show")
READER_ROLE = "eegcache_reader"  # created by migration 0005; see eegcache.index.db.READER_ROLE
_SET_CONFIG = "pg_catalog.set_config(text, text, boolean)"
# SQLSTATEs that mean the reader role (or the server) refused the statement
_REFUSED = {"42501": "permission denied", "2F003": "prohibited", "25006": "read-only transaction"}


def _sqlstate(orig) -> str | None:
    """The SQLSTATE of a driver error: psycopg 3 says ``sqlstate``, psycopg2 ``pgcode``."""
    return getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)


def _first_line(orig) -> str:
    return (str(orig).strip().splitlines() or [""])[0]


def _become_reader(conn) -> None:
    """``SET LOCAL ROLE eegcache_reader`` on a PostgreSQL connection inside its transaction, after checking that
    the role exists and that a query running as it cannot take the session's own role back."""
    from sqlalchemy import exc, text

    user, superuser, exists = conn.execute(text(
        "SELECT session_user, (SELECT rolsuper FROM pg_roles WHERE rolname = session_user), "
        "EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :role)"), {"role": READER_ROLE}).one()
    if not exists:
        raise QueryError(
            f"refused: eegcache sql on PostgreSQL runs queries as the role {READER_ROLE}, which does not exist on this "
            "server; run eegcache db upgrade as a role with CREATEROLE (migration 0005 creates it), or have an "
            f"administrator create it: CREATE ROLE {READER_ROLE} NOLOGIN NOINHERIT, then eegcache db upgrade")
    try:
        conn.exec_driver_sql(f"SET LOCAL ROLE {READER_ROLE}")
    except exc.DBAPIError as err:
        if _sqlstate(err.orig) == "42501":
            raise QueryError(
                f"refused: the role {user} may not SET ROLE {READER_ROLE}, which eegcache sql runs queries as; an "
                f"administrator grants it with: GRANT {READER_ROLE} TO {user}") from None
        raise QueryError(f"cannot switch to the reader role {READER_ROLE}: {_first_line(err.orig)}") from None
    if superuser and conn.execute(text("SELECT has_function_privilege(:role, :fn, 'EXECUTE')"),
                                  {"role": READER_ROLE, "fn": _SET_CONFIG}).scalar_one():
        raise QueryError(
            f"refused: the role {READER_ROLE} may call set_config(), through which a query could take back the "
            "superuser role this session connected as. A superuser runs eegcache db upgrade (migration 0005 revokes "
            f"it), or: REVOKE EXECUTE ON FUNCTION {_SET_CONFIG} FROM PUBLIC; or connect as a role that is no superuser")


@contextmanager
def server_reader(url: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator:
    """A SQLAlchemy connection on which text from a user may run against a server index, rolled back at the end.

    On PostgreSQL: a ``READ ONLY`` transaction, ``SET LOCAL ROLE eegcache_reader`` (a role that may only SELECT the
    index's views; migration 0005) and a local ``statement_timeout``. Server files, other sessions, settings, large
    objects and programs are then out of reach whatever the connecting role may do; the connecting role needs
    only membership in ``eegcache_reader``. Other servers get the ``READ ONLY`` transaction alone."""
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    engine = create_engine(url, poolclass=NullPool)  # the connection is closed after use: no session state survives
    try:
        with engine.connect() as conn:
            try:
                conn.exec_driver_sql("SET TRANSACTION READ ONLY")
                if conn.dialect.name == "postgresql":
                    _become_reader(conn)
                    conn.exec_driver_sql(f"SET LOCAL statement_timeout = {max(1, int(timeout_s * 1000))}")
                yield conn
            finally:
                conn.rollback()
    finally:
        engine.dispose()


def _run_server(url: str, sql: str, params, limit: int, timeout_s: float) -> QueryResult:
    from sqlalchemy import exc, text

    body = sql.strip().rstrip(";").strip()
    # One reading statement is all that is accepted (COPY, even COPY TO, is refused before the server sees it); the
    # reader role is what keeps server files, other sessions and settings out of reach.
    if not body or ";" in body or not body.split(None, 1)[0].lower().startswith(_SERVER_READ_KEYWORDS) \
            or "copy" in body.lower().split():
        raise QueryError("refused: eegcache sql runs one reading statement (SELECT, WITH, VALUES, TABLE, EXPLAIN, "
                         "SHOW); nothing was run")
    with server_reader(url, timeout_s=timeout_s) as conn:
        try:
            result = conn.execute(text(sql), params if isinstance(params, dict) else {})
            rows = [tuple(r) for r in result.fetchmany(limit + 1)] if result.returns_rows else []
            columns = list(result.keys()) if result.returns_rows else []
            if conn.dialect.name == "postgresql" and conn.exec_driver_sql("SELECT current_user").scalar_one() != READER_ROLE:
                raise QueryError(f"refused: the query left the reader role {READER_ROLE}; its rows are withheld and "
                                 "nothing was changed")
        except exc.DBAPIError as err:
            code = _sqlstate(err.orig)
            if code == "57014":  # query_canceled (statement_timeout)
                raise QueryError(f"stopped: the query ran longer than the {timeout_s:g} s time limit") from None
            if code in _REFUSED:
                raise QueryError(f"refused: eegcache sql only reads, as the role {READER_ROLE}, which may SELECT the "
                                 f"public views and nothing else ({_first_line(err.orig)}); nothing was changed") from None
            raise QueryError(f"SQL error: {_first_line(err.orig)}") from None
    return QueryResult(columns, rows[:limit], len(rows) > limit)
