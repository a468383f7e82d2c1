"""SQLite, the embedded default: WAL, a busy timeout, and BEGIN IMMEDIATE."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from sqlalchemy import Engine, Table, create_engine, event
from sqlalchemy.dialects.sqlite import insert
from sqlalchemy.engine import Connection, make_url

from .destinations import create_private_file
from .dialect import Dialect


def _use_wal(cursor: Any) -> None:
    """Switch a SQLite database to WAL once. Several streams open a new file at the same moment;
    the switch needs the file to itself and SQLite answers "locked" at once instead of waiting,
    so the losers wait a little and find it done."""
    for attempt in range(50):
        if cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
            return
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == 49:
                raise
            time.sleep(0.02 * (attempt + 1))


def tune_sqlite(engine: Engine) -> Engine:
    """WAL, a busy timeout, and BEGIN IMMEDIATE on every connection of a SQLite engine."""
    if getattr(engine, "_dintero_tuned", False):
        return engine

    @event.listens_for(engine, "connect")
    def _sqlite_connect(dbapi_connection: Any, record: Any) -> None:
        # Let SQLAlchemy, not the sqlite3 module, issue BEGIN (as IMMEDIATE below).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA busy_timeout=60000")
        # WAL: readers never block the writer; NORMAL is durable across process crashes
        # (SIGKILL), which is what a sync must survive.
        _use_wal(cursor)
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _sqlite_begin(conn: Connection) -> None:
        # Take the write lock at BEGIN: the state row is read, then written.
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    engine._dintero_tuned = True  # type: ignore[attr-defined]
    return engine


class SQLiteDialect(Dialect):
    """One file, one writer at a time: BEGIN IMMEDIATE serialises the page transactions (so the
    state row needs no lock of its own), and WAL lets readers in meanwhile."""

    name = "sqlite"

    def create_engine(self, url: str) -> Engine:
        create_private_file(make_url(url).database)
        return tune_sqlite(
            create_engine(
                url,
                connect_args={"timeout": 60, "check_same_thread": False},
                hide_parameters=True,
            )
        )

    def tune(self, engine: Engine) -> Engine:
        return tune_sqlite(engine)

    def insert(self, table: Table) -> Any:
        return insert(table)
