"""Small dialect helpers so the same statements run on SQLite and PostgreSQL."""

from __future__ import annotations

from sqlalchemy import Table


def insert_ignore(conn, table: Table):
    """INSERT that skips rows violating a unique constraint (concurrent writers registering the same thing)."""
    # Each dialect's module is imported when used: PostgreSQL's alone costs ~30 ms, for nothing on SQLite.
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table).on_conflict_do_nothing()
