"""The sink: tables and stream state in one database, each page committed with its state.

One table per stream (typed columns, ``account_id``, the object as JSON) and one state table.
Each page's rows and the stream's state are written in one database transaction, so a crash at
any instant leaves data and cursor consistent: the cursor is never ahead of the data. What
differs between SQLite and PostgreSQL lives in their dialect classes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import BigInteger, Column, Engine, MetaData, String, Table, inspect, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError, SQLAlchemyError

from .. import times
from ..errors import ConfigurationError, DinteroError
from ..redact import get_logger
from ..streams import Stream
from ..times import CLOCK_SKEW
from .destinations import DestinationError, redact_url, resolve_destination
from .dialect import Dialect
from .postgresql import PostgreSQLDialect
from .sqlite import SQLiteDialect
from .values import COERCERS, COLUMN_TYPES, JSON_TYPE, Unfit, UTCDateTime

logger = get_logger(__name__)

STATE_TABLE = "dintero_sync_state"
#: Values named, per page, in warnings about values that do not fit their column.
WARN_UNFIT = 5
DIALECTS: dict[str, type[Dialect]] = {"sqlite": SQLiteDialect, "postgresql": PostgreSQLDialect}


@dataclass
class StreamState:
    """Where a stream of one account (and partition) stands."""

    cursor: datetime | None = None
    rows_total: int = 0
    window_lower: datetime | None = None
    window_upper: datetime | None = None
    resume: dict[str, Any] | None = None
    last_run_at: datetime | None = None
    last_run_id: str | None = None
    max_seen: datetime | None = None

    @property
    def in_progress(self) -> bool:
        return self.resume is not None


@dataclass
class PageWrite:
    """What one page did to its table."""

    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    duplicates: int = 0
    keys: list[str] = field(default_factory=list, repr=False)


class Sink:
    """Tables and state in one database. Thread-safe: each write uses its own connection.

    Args:
        url: a SQLAlchemy URL, or a path for a SQLite file.
        engine: an engine to use instead (a prefect-sqlalchemy connector's, say).
    """

    def __init__(self, url: str | Path | None = None, *, engine: Engine | None = None) -> None:
        if engine is None:
            if url is None:
                raise ConfigurationError("a destination URL or engine is needed")
            self.url = resolve_destination(url)
            name = "sqlite" if self.url.startswith("sqlite") else "postgresql"
            self.dialect_impl = self._dialect(name)
            engine = self._create_engine(self.dialect_impl, self.url)
        else:
            self.url = engine.url.render_as_string(hide_password=False)
            self.dialect_impl = self._dialect(engine.dialect.name)
            engine = self.dialect_impl.tune(engine)
        self.engine = engine
        self.dialect = self.dialect_impl.name
        self.metadata = MetaData()
        self.state_table = Table(
            STATE_TABLE,
            self.metadata,
            Column("account_id", String(32), primary_key=True),
            Column("stream", String(64), primary_key=True),
            Column("partition", String(255), primary_key=True, default=""),
            Column("cursor", UTCDateTime()),
            Column("max_seen", UTCDateTime()),
            Column("rows_total", BigInteger(), nullable=False, default=0),
            Column("window_lower", UTCDateTime()),
            Column("window_upper", UTCDateTime()),
            Column("resume", JSON_TYPE),
            Column("last_run_at", UTCDateTime()),
            Column("last_run_id", String(64)),
        )
        self._tables: dict[str, Table] = {}
        self._upserts: dict[str, Any] = {}
        self._coercers: dict[str, list[tuple[Any, Callable[[Any], Any]]]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _dialect(name: str) -> Dialect:
        dialect = DIALECTS.get(name)
        if dialect is None:
            raise DestinationError(
                f"unsupported destination dialect {name!r}: use SQLite or PostgreSQL"
            )
        return dialect()

    @staticmethod
    def _create_engine(dialect: Dialect, url: str) -> Engine:
        try:
            return dialect.create_engine(url)
        except (NoSuchModuleError, ModuleNotFoundError) as exc:
            raise DestinationError(
                f"no database driver for {redact_url(url)}: {exc}. For PostgreSQL install "
                "'prefect-dintero[postgres]'"
            ) from None
        except ArgumentError:
            raise DestinationError(
                f"not a database URL: {redact_url(url)} (expected e.g. "
                "postgresql://user@host/database, or a path for SQLite)"
            ) from None

    # -- schema --------------------------------------------------------------------------------

    def table_for(self, stream: Stream) -> Table:
        with self._lock:
            table = self._tables.get(stream.name)
            if table is None:
                columns = [Column("account_id", String(32), primary_key=True, nullable=False)]
                for col in stream.columns:
                    is_key = col.name == stream.primary_key
                    columns.append(
                        Column(
                            col.name,
                            String(255) if is_key else COLUMN_TYPES[col.type](),
                            primary_key=is_key,
                            nullable=not is_key,
                        )
                    )
                columns.append(Column("raw", JSON_TYPE, nullable=False))
                columns.append(Column("synced_at", UTCDateTime(), nullable=False))
                table = Table(stream.table_name, self.metadata, *columns)
                self._tables[stream.name] = table
            return table

    def prepare(self, streams: Sequence[Stream]) -> None:
        """Create missing tables; add columns the code declares that a table lacks (nullable)."""
        tables = [self.table_for(s) for s in streams]
        try:
            with self.engine.begin() as conn:
                self.dialect_impl.lock_schema(conn)
                self.metadata.create_all(conn, tables=[self.state_table, *tables])
                inspector = inspect(conn)
                for table in tables:
                    existing = {c["name"] for c in inspector.get_columns(table.name)}
                    for column in table.columns:
                        if column.name not in existing:
                            kind = column.type.compile(dialect=conn.dialect)
                            conn.exec_driver_sql(
                                f'ALTER TABLE "{table.name}" ADD COLUMN "{column.name}" {kind}'
                            )
        except OperationalError as exc:
            raise DestinationError(
                f"cannot use the destination database {redact_url(self.url)}: "
                f"{str(exc.orig).strip().splitlines()[0] if exc.orig else exc}"
            ) from None

    # -- state ---------------------------------------------------------------------------------

    def _state_key(self, account_id: str, stream: str, partition: str) -> Any:
        t = self.state_table
        return (
            (t.c.account_id == account_id) & (t.c.stream == stream) & (t.c.partition == partition)
        )

    def read_state(self, account_id: str, stream: str, partition: str = "") -> StreamState:
        with self.engine.connect() as conn:
            row = (
                conn.execute(
                    select(self.state_table).where(self._state_key(account_id, stream, partition))
                )
                .mappings()
                .first()
            )
            conn.rollback()
        return self._state_from_row(row)

    @staticmethod
    def _state_from_row(row: Any) -> StreamState:
        if row is None:
            return StreamState()
        return StreamState(
            cursor=row["cursor"],
            rows_total=row["rows_total"] or 0,
            window_lower=row["window_lower"],
            window_upper=row["window_upper"],
            resume=row["resume"],
            last_run_at=row["last_run_at"],
            last_run_id=row["last_run_id"],
            max_seen=row["max_seen"],
        )

    def _lock_state(
        self, conn: Connection, account_id: str, stream: str, partition: str
    ) -> StreamState:
        t = self.state_table
        # Two runs may create the row at once: let the database settle it, not a read first.
        conn.execute(
            self.dialect_impl.insert(t)
            .values(account_id=account_id, stream=stream, partition=partition, rows_total=0)
            .on_conflict_do_nothing(index_elements=["account_id", "stream", "partition"])
        )
        query = self.dialect_impl.lock_row(
            select(t).where(self._state_key(account_id, stream, partition))
        )
        return self._state_from_row(conn.execute(query).mappings().first())

    # -- writes ----------------------------------------------------------------------------------

    def build_rows(
        self, stream: Stream, account_id: str, objects: list[dict], now: datetime
    ) -> list[dict]:
        """Rows for the table, or MalformedPageError if any object lacks its primary key.

        A value that does not fit its typed column is stored as NULL there, with a warning
        naming the stream, the object and the field; the ``raw`` JSON keeps it. One odd value
        must not fail the stream on every run.
        """
        stream.check_keys(objects)
        rows, unfit = [], []
        for obj in objects:
            key = obj[stream.primary_key]
            row = {"account_id": account_id, "raw": obj, "synced_at": now}
            for col, to_column in self._columns(stream):
                value = col.extract(obj)
                if value is None:
                    row[col.name] = None
                    continue
                try:
                    row[col.name] = to_column(value)
                except Unfit as why:
                    row[col.name] = None
                    unfit.append((key, col.path or col.name, value, why))
            row[stream.primary_key] = key
            rows.append(row)
        for key, field_name, value, why in unfit[:WARN_UNFIT]:
            logger.warning(
                "%s %s: %s %.60r %s; stored as NULL in its column (the raw JSON keeps it)",
                stream.name,
                key[:80],
                field_name,
                value,
                why,
            )
        if len(unfit) > WARN_UNFIT:
            logger.warning(
                "%s: %d more values on this page did not fit their columns",
                stream.name,
                len(unfit) - WARN_UNFIT,
            )
        return rows

    def _columns(self, stream: Stream) -> list[tuple[Any, Callable[[Any], Any]]]:
        """The stream's typed columns (its key aside) with the function that fits a value to
        each, worked out once per stream."""
        columns = self._coercers.get(stream.name)
        if columns is None:
            columns = [
                (col, COERCERS[col.type])
                for col in stream.columns
                if col.name != stream.primary_key
            ]
            self._coercers[stream.name] = columns
        return columns

    def write_page(
        self,
        stream: Stream,
        account_id: str,
        partition: str,
        objects: list[dict],
        update_state: Callable[[StreamState, PageWrite], StreamState],
    ) -> tuple[PageWrite, StreamState]:
        """Upsert a page's objects and update the stream's state in one transaction."""
        now = times.now()
        rows = self.build_rows(stream, account_id, objects, now)
        table = self.table_for(stream)
        pk = stream.primary_key
        version = (
            stream.version_field
            if stream.version_field and stream.version_field in table.c
            else None
        )
        result = PageWrite()
        trusted_until = now + CLOCK_SKEW
        # Keep one row per key (the newest): one statement must not touch a row twice.
        unique: dict[str, dict] = {}
        for row in rows:
            current = unique.get(row[pk])
            if current is None or (
                version is None or replaces(row[version], current[version], trusted_until)
            ):
                unique[row[pk]] = row
        result.duplicates = len(rows) - len(unique)
        rows = list(unique.values())
        result.keys = list(unique)
        try:
            with self.engine.begin() as conn:
                state = self._lock_state(conn, account_id, stream.name, partition)
                if rows:
                    self._classify(
                        conn, table, stream, account_id, rows, version, trusted_until, result
                    )
                    if version:  # the upsert's guard compares with it, row by row
                        for row in rows:
                            row["trusted_until"] = trusted_until
                    self.dialect_impl.write(conn, self._upsert(stream, table, version), rows)
                new_state = update_state(state, result)
                conn.execute(
                    self.state_table.update()
                    .where(self._state_key(account_id, stream.name, partition))
                    .values(
                        cursor=new_state.cursor,
                        max_seen=new_state.max_seen,
                        rows_total=new_state.rows_total,
                        window_lower=new_state.window_lower,
                        window_upper=new_state.window_upper,
                        resume=new_state.resume,
                        last_run_at=new_state.last_run_at,
                        last_run_id=new_state.last_run_id,
                    )
                )
        except OperationalError as exc:
            raise DestinationError(
                f"writing to {redact_url(self.url)} failed: "
                f"{str(exc.orig).strip().splitlines()[0] if exc.orig else exc}"
            ) from None
        except SQLAlchemyError as exc:
            raise DinteroError(f"writing a {stream.name} page failed: {exc}") from exc
        return result, new_state

    def _classify(
        self,
        conn: Connection,
        table: Table,
        stream: Stream,
        account_id: str,
        rows: list[dict],
        version: str | None,
        trusted_until: datetime,
        result: PageWrite,
    ) -> None:
        pk = stream.primary_key
        keys = [r[pk] for r in rows]
        compare = table.c[version] if version else table.c.raw
        existing = dict(
            conn.execute(
                select(table.c[pk], compare).where(
                    table.c.account_id == account_id, table.c[pk].in_(keys)
                )
            ).all()
        )
        for row in rows:
            if row[pk] not in existing:
                result.inserted += 1
            elif version:
                old = existing[row[pk]]
                if row[version] == old:
                    result.unchanged += 1
                elif replaces(row[version], old, trusted_until):
                    result.updated += 1
                else:
                    result.unchanged += 1  # an older copy: kept out by the upsert's guard
            elif existing[row[pk]] != row["raw"]:
                result.updated += 1
            else:
                result.unchanged += 1

    def _upsert(self, stream: Stream, table: Table, version: str | None) -> Any:
        statement = self._upserts.get(stream.name)
        if statement is None:
            statement = self.dialect_impl.upsert(table, stream.primary_key, version)
            self._upserts[stream.name] = statement
        return statement

    # -- reads for tests and summaries -------------------------------------------------------------

    def count(self, stream: Stream, account_id: str | None = None) -> int:
        table = self.table_for(stream)
        query = select(text("count(*)")).select_from(table)
        if account_id:
            query = query.where(table.c.account_id == account_id)
        with self.engine.connect() as conn:
            return conn.execute(query).scalar_one()

    def rows(self, stream: Stream, account_id: str | None = None) -> list[dict]:
        table = self.table_for(stream)
        query = select(table)
        if account_id:
            query = query.where(table.c.account_id == account_id)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def dispose(self) -> None:
        self.engine.dispose()


def with_state(state: StreamState, **changes: Any) -> StreamState:
    return replace(state, **changes)


def replaces(new: datetime | None, old: datetime | None, trusted_until: datetime) -> bool:
    """Whether a copy versioned ``new`` may replace one versioned ``old``.

    An older copy never replaces a newer one. A version that is missing, or later than
    ``trusted_until`` (now plus the clock skew), tells nothing: such a copy replaces and is
    replaced, so one row dated 2099 can never freeze its row against real changes.
    """
    if new is None or old is None or new > trusted_until or old > trusted_until:
        return True
    return new >= old
