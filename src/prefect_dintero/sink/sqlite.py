"""SQLite, the embedded default: WAL, a busy timeout, and BEGIN IMMEDIATE."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from datetime import datetime
from operator import itemgetter
from typing import Any

from sqlalchemy import JSON, Boolean, Engine, Table, create_engine, event
from sqlalchemy.dialects.sqlite import insert
from sqlalchemy.engine import Connection, make_url

from .destination_urls import create_private_file
from .dialect import Dialect
from .values import UTCDateTime, dump_json, sqlite_datetime


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
        # A checkpoint every 10,000 pages (40 MB of WAL at 4 KiB pages) rather than SQLite's
        # 1,000: a large sync spent a third of its time in checkpoints, each with two fsyncs,
        # writing back the same index pages again and again.
        cursor.execute("PRAGMA wal_autocheckpoint=10000")
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
    label = "SQLite"

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

    def __init__(self) -> None:
        #: The upsert statement compiled to SQL, by statement (one per table of the sink).
        self._statements: dict[int, tuple] = {}

    def day(self, column: str) -> str:
        # Stored as text, 'YYYY-MM-DD HH:MM:SS.ffffff' in UTC.
        return f"substr({column}, 1, 10)"

    def insert(self, table: Table) -> Any:
        return insert(table)

    def write(self, conn: Connection, statement: Any, rows: list[dict]) -> None:
        """The upsert through sqlite3's own executemany, with values made ready here.

        SQLAlchemy's per-row parameter processing cost more than the database's work; the SQL
        is the same statement, compiled once, and the values take the forms SQLAlchemy's types
        would give them (datetimes as its text, JSON as text, booleans as integers).
        """
        sql, names, converters = self._compiled(conn, statement)
        values_of = itemgetter(*names)
        to_convert = [(i, convert) for i, convert in enumerate(converters) if convert]
        seen: dict[Any, Any] = {}  # synced_at and trusted_until are the same on every row
        params = []
        for row in rows:
            values = list(values_of(row))
            for i, convert in to_convert:
                value = values[i]
                if value is not None:
                    if type(value) is datetime:
                        converted = seen.get(value)
                        if converted is None:
                            converted = seen[value] = convert(value)
                        values[i] = converted
                    else:
                        values[i] = convert(value)
            params.append(tuple(values))
        conn.exec_driver_sql(sql, params)

    def _compiled(self, conn: Connection, statement: Any) -> tuple[str, tuple, tuple]:
        cached = self._statements.get(id(statement))
        if cached is None or cached[0] is not statement:
            compiled = statement.compile(dialect=conn.dialect)
            names = tuple(compiled.positiontup or ())
            types = {b.key: b.type for b in compiled.binds.values()}
            converters = tuple(_converter(types.get(name)) for name in names)
            cached = (statement, compiled.string, names, converters)
            self._statements[id(statement)] = cached
        return cached[1], cached[2], cached[3]


def _converter(kind: Any) -> Callable[[Any], Any] | None:
    if isinstance(kind, UTCDateTime):
        return sqlite_datetime
    if isinstance(kind, JSON):
        return dump_json
    if isinstance(kind, Boolean):
        return int
    return None


DIALECT = SQLiteDialect
