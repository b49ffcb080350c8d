"""Read-only ad hoc SQL over the index, with a time limit and a row cap (``eegcache sql``).

Safety does not rest on parsing the statement. On SQLite the file is opened read-only (``mode=ro``), an
authorizer allows only reading (no ATTACH, no writable PRAGMA, no functions that load extensions), and a
progress handler interrupts a statement that runs past its time limit. On PostgreSQL the statement runs in a
``READ ONLY`` transaction with a local ``statement_timeout``, and is rolled back whatever it did.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

DEFAULT_LIMIT = 1000
DEFAULT_TIMEOUT_S = 30.0
# Pragmas that only describe the schema, whatever their argument (a table or index name).
_SCHEMA_PRAGMAS = {"table_info", "table_xinfo", "index_list", "index_info", "index_xinfo", "foreign_key_list"}
# Pragmas that also have a writing form (``PRAGMA user_version = 5``): allowed only without an argument.
_VALUE_PRAGMAS = {"user_version", "schema_version", "database_list", "compile_options", "page_count", "page_size"}
_ALLOWED = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}
_DENIED_FUNCTIONS = {"load_extension", "readfile", "writefile", "edit", "fts3_tokenizer"}


class QueryError(ValueError):
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


def connect_readonly(index_file: Path, *, authorizer: bool = True, timeout_s: float = 60.0) -> sqlite3.Connection:
    """A SQLite connection that can only read: opened ``mode=ro`` and ``query_only``, and, for statements that hold
    user text, with the read-only authorizer."""
    conn = sqlite3.connect(f"{Path(index_file).resolve().as_uri()}?mode=ro", uri=True, timeout=timeout_s)
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


def _run_server(url: str, sql: str, params, limit: int, timeout_s: float) -> QueryResult:
    from sqlalchemy import create_engine, exc, text

    body = sql.strip().rstrip(";").strip()
    # A READ ONLY transaction still lets a superuser run COPY ... TO PROGRAM or server file functions, so one
    # reading statement is all that is accepted (and a least-privilege role is still the right connection).
    if ";" in body or not body.split(None, 1)[0].lower().startswith(_SERVER_READ_KEYWORDS) or "copy" in body.lower().split():
        raise QueryError("refused: eegcache sql runs one reading statement (SELECT, WITH, VALUES, TABLE, EXPLAIN, SHOW)")
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SET TRANSACTION READ ONLY")
            conn.exec_driver_sql(f"SET LOCAL statement_timeout = {max(1, int(timeout_s * 1000))}")
            try:
                result = conn.execute(text(sql), params if isinstance(params, dict) else {})
                rows = [tuple(r) for r in result.fetchmany(limit + 1)] if result.returns_rows else []
                columns = list(result.keys()) if result.returns_rows else []
            except exc.DBAPIError as err:
                code = getattr(err.orig, "pgcode", None)
                if code == "25006":  # read_only_sql_transaction
                    raise QueryError("refused: eegcache sql only reads; nothing was changed") from None
                if code == "57014":  # query_canceled (statement_timeout)
                    raise QueryError(f"stopped: the query ran longer than the {timeout_s:g} s time limit") from None
                raise QueryError(f"SQL error: {str(err.orig).strip()}") from None
            finally:
                conn.rollback()
        return QueryResult(columns, rows[:limit], len(rows) > limit)
    finally:
        engine.dispose()
