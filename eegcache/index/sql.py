"""Small dialect helpers so the same statements run on SQLite and PostgreSQL."""

from __future__ import annotations

from functools import cache

from sqlalchemy import Table


def insert_ignore(conn, table: Table):
    """INSERT that skips rows violating a unique constraint (concurrent writers registering the same thing)."""
    return _insert_ignore(conn.dialect.name, table)


@cache  # statements are immutable: built once per table, not once per recording
def _insert_ignore(dialect: str, table: Table):
    # Each dialect's module is imported when used: PostgreSQL's alone costs ~30 ms, for nothing on SQLite.
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table).on_conflict_do_nothing()
