"""Read-only ad hoc SQL over the index, with a time limit and a row cap (``eegcache sql``).

Safety does not rest on parsing the statement: SQLite opens the file read-only (``mode=ro``), an authorizer
allows only reading (no ATTACH, no writable PRAGMA, no functions that load extensions), and a progress handler
interrupts a statement that runs past its time limit.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

DEFAULT_LIMIT = 1000
DEFAULT_TIMEOUT_S = 30.0
_READ_PRAGMAS = {"table_info", "table_xinfo", "index_list", "index_info", "foreign_key_list", "user_version",
                 "schema_version", "database_list", "compile_options", "page_count", "page_size"}
_ALLOWED = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}


class QueryError(ValueError):
    """A refused or failed query; the message says why."""


@dataclass
class QueryResult:
    columns: list[str]
    rows: list[tuple]
    truncated: bool


def _authorizer(action, arg1, arg2, _db, _trigger):
    if action in _ALLOWED:
        if action == sqlite3.SQLITE_FUNCTION and arg2 and arg2.lower() in {"load_extension", "readfile", "writefile"}:
            return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_PRAGMA and arg1 and arg1.lower() in _READ_PRAGMAS and arg2 is None:
        return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY


def run_query(
    index_file: Path,
    sql: str,
    params: dict | tuple = (),
    *,
    limit: int = DEFAULT_LIMIT,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> QueryResult:
    """Run one read-only statement and return at most ``limit`` rows (``truncated`` says if there were more)."""
    index_file = Path(index_file)
    if not index_file.is_file():
        raise QueryError(f"no index at {index_file}: ingest something into this cache first")
    conn = sqlite3.connect(f"{index_file.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
    try:
        conn.execute("PRAGMA query_only = 1")
        conn.set_authorizer(_authorizer)
        deadline = time.monotonic() + timeout_s
        conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
        try:
            cur = conn.execute(sql, params)
            rows = cur.fetchmany(limit + 1) if cur.description else []
        except sqlite3.DatabaseError as exc:
            msg = str(exc)
            if msg == "not authorized":
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
