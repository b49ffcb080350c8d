"""Small dialect helpers so the same statements run on SQLite and PostgreSQL."""

from __future__ import annotations

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite


def insert_ignore(conn, table: Table):
    """INSERT that skips rows violating a unique constraint (concurrent writers registering the same thing)."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    return sqlite.insert(table).on_conflict_do_nothing()
