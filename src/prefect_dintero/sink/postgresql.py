"""PostgreSQL: row locks on the state, an advisory lock around DDL."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, Select, Table, create_engine, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import Connection

from .dialect import Dialect

#: Arbitrary but fixed: the advisory lock id that serialises prefect-dintero's DDL.
SCHEMA_LOCK_KEY = 0x44494E54


class PostgreSQLDialect(Dialect):
    """Many writers: each page's transaction locks its stream's state row (FOR UPDATE)."""

    name = "postgresql"
    label = "PostgreSQL"
    extra = "postgres"

    def create_engine(self, url: str) -> Engine:
        return create_engine(url, pool_pre_ping=True, hide_parameters=True)

    def day(self, column: str) -> str:
        return f"to_char(({column}) AT TIME ZONE 'UTC', 'YYYY-MM-DD')"

    def insert(self, table: Table) -> Any:
        return insert(table)

    def lock_schema(self, conn: Connection) -> None:
        # Streams prepare their tables concurrently and CREATE TABLE IF NOT EXISTS still races.
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY})

    def lock_row(self, query: Select) -> Select:
        return query.with_for_update()


DIALECT = PostgreSQLDialect
