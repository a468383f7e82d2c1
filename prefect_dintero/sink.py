"""The destination: SQLite or PostgreSQL through SQLAlchemy Core.

One table per stream (typed columns, ``account_id``, the object as JSON) and one state table.
Each page's rows and the stream's state are written in one database transaction, so a crash at
any instant leaves data and cursor consistent: the cursor is never ahead of the data.
"""

from __future__ import annotations

import json
import math
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Engine,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    inspect,
    literal,
    or_,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError, SQLAlchemyError
from sqlalchemy.types import TypeDecorator

from . import times
from .errors import ConfigurationError, DinteroError
from .paginators import MalformedPageError
from .redact import get_logger
from .streams import Stream
from .times import CLOCK_SKEW, iso, parse_datetime

__all__ = [
    "DestinationError",
    "PageWrite",
    "Sink",
    "StreamState",
    "iso",
    "parse_datetime",
    "with_state",
]

logger = get_logger(__name__)

STATE_TABLE = "dintero_sync_state"
#: Values named, per page, in warnings about values that do not fit their column.
WARN_UNFIT = 5
#: Arbitrary but fixed: the advisory lock id that serialises prefect-dintero's DDL.
SCHEMA_LOCK_KEY = 0x44494E54


class DestinationError(ConfigurationError):
    """The destination database cannot be reached or used."""


class UTCDateTime(TypeDecorator):
    """Aware UTC datetimes on every dialect (SQLite has no timezone type)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> datetime | None:
        dt = parse_datetime(value)
        if dt is not None and dialect.name == "sqlite":
            return dt.replace(tzinfo=None)
        return dt

    def process_result_value(self, value: Any, dialect: Any) -> datetime | None:
        return parse_datetime(value)


JSON_TYPE = JSON().with_variant(JSONB(), "postgresql")
_TYPES = {
    "text": lambda: Text(),
    "int": lambda: BigInteger(),
    "datetime": lambda: UTCDateTime(),
    "bool": lambda: Boolean(),
}


BIGINT_RANGE = (-(2**63), 2**63 - 1)
_INTEGER_TEXT = re.compile(r"[+-]?[0-9]{1,19}")


class Unfit(ValueError):
    """A value that does not fit its typed column (it stays in ``raw``)."""


def coerce(kind: str, value: Any) -> Any:
    """A value for a typed column, or ``Unfit`` saying why it does not fit.

    Amounts are integers in minor units (https://docs.dintero.com/docs/glossary: "33890 is
    338.90 NOK"). An integral float (``33890.0``) or a string of digits (``"33890"``) is that
    integer; anything with a fraction (``338.9``, ``"338.90"``), a non-finite number, a boolean
    or a number beyond 64 bits does not fit and is never rounded or truncated.
    """
    if value is None:
        return None
    if kind == "datetime":
        parsed = parse_datetime(value)
        if parsed is None:
            raise Unfit("is not an ISO 8601 date-time that UTC can hold")
        return parsed
    if kind == "int":
        if isinstance(value, bool):
            raise Unfit("is a boolean, not an integer")
        whole_float = isinstance(value, float) and math.isfinite(value) and value.is_integer()
        digits = isinstance(value, str) and _INTEGER_TEXT.fullmatch(value.strip())
        if not (isinstance(value, int) or whole_float or digits):
            raise Unfit("is not an integer (amounts are integers in minor units)")
        number = int(value)
        if not BIGINT_RANGE[0] <= number <= BIGINT_RANGE[1]:
            raise Unfit("does not fit a 64-bit integer")
        return number
    if kind == "bool":
        if not isinstance(value, bool):
            raise Unfit("is not a boolean")
        return value
    return value if isinstance(value, str) else json.dumps(value)


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


#: Query parameters of a database URL that carry a secret (libpq and drivers accept these).
SECRET_QUERY_KEYS = frozenset(
    {"password", "passwd", "pwd", "pass", "sslpassword", "secret", "token", "passfile"}
)


def url_secrets(url: str) -> list[str]:
    """Where a database URL carries a password: ``user:password@`` or ``?password=``."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return []
    found = ["the user:password@ part"] if parsed.password else []
    found += [f"?{key}=" for key in parsed.query if key.lower() in SECRET_QUERY_KEYS]
    return found


def redact_url(url: str) -> str:
    """A database URL fit to print: its password and secret query values masked."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return "<unparseable URL>"
    masked = {
        key: ("***" if key.lower() in SECRET_QUERY_KEYS else value)
        for key, value in parsed.query.items()
    }
    return parsed.set(query=masked).render_as_string(hide_password=True)


def resolve_destination(destination: str | Path) -> str:
    """A SQLAlchemy URL from a URL or a file path (a path means SQLite)."""
    destination = str(destination)
    if "://" not in destination:
        return f"sqlite:///{Path(destination).expanduser().resolve()}"
    try:
        url = make_url(destination)
    except ArgumentError:  # its message quotes the URL, password and all
        raise DestinationError(
            "the destination is not a database URL (expected e.g. "
            "postgresql://user@host/database, or a path for SQLite)"
        ) from None
    if url.drivername in ("postgresql", "postgres"):
        # psycopg 3 is the driver the postgres extra installs.
        url = url.set(drivername="postgresql+psycopg")
    return url.render_as_string(hide_password=False)


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


def create_private_file(path: str | None) -> None:
    """Create a new SQLite file readable by its owner only (0600): it will hold customers'
    names and e-mails. SQLite gives its -wal and -shm files the same mode. An existing file
    keeps the mode its owner chose."""
    if not path or path == ":memory:" or path.startswith("file:"):
        return
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return
    except OSError as exc:
        raise DestinationError(f"cannot create the SQLite file {path}: {exc.strerror}") from None
    os.close(fd)


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
            engine = self._create_engine(self.url)
        else:
            self.url = engine.url.render_as_string(hide_password=False)
            if engine.dialect.name == "sqlite":
                tune_sqlite(engine)
        self.engine = engine
        self.dialect = engine.dialect.name
        if self.dialect not in ("sqlite", "postgresql"):
            raise DestinationError(
                f"unsupported destination dialect {self.dialect!r}: use SQLite or PostgreSQL"
            )
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
        self._lock = threading.Lock()

    @staticmethod
    def _create_engine(url: str) -> Engine:
        try:
            if url.startswith("sqlite"):
                create_private_file(make_url(url).database)
                return tune_sqlite(
                    create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})
                )
            return create_engine(url, pool_pre_ping=True)
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
                            String(255) if is_key else _TYPES[col.type](),
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
                if self.dialect == "postgresql":
                    # Streams prepare their tables concurrently; PostgreSQL's CREATE TABLE IF NOT
                    # EXISTS still races, so one schema change at a time (SQLite's BEGIN
                    # IMMEDIATE already serialises this).
                    conn.execute(
                        text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY}
                    )
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
            self._insert(t)
            .values(account_id=account_id, stream=stream, partition=partition, rows_total=0)
            .on_conflict_do_nothing(index_elements=["account_id", "stream", "partition"])
        )
        query = select(t).where(self._state_key(account_id, stream, partition))
        if self.dialect == "postgresql":
            query = query.with_for_update()  # SQLite's BEGIN IMMEDIATE already excludes writers
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
        rows, unfit = [], []
        for position, obj in enumerate(objects):
            key = obj.get(stream.primary_key)
            if not isinstance(key, str) or not key or len(key) > 255:
                raise MalformedPageError(
                    f"object {position} of a {stream.name} page has no usable "
                    f"{stream.primary_key!r} (a string of at most 255 characters)"
                )
            row = {"account_id": account_id, "raw": obj, "synced_at": now}
            for col in stream.columns:
                if col.name == stream.primary_key:
                    row[col.name] = key
                    continue
                value = col.extract(obj)
                try:
                    row[col.name] = coerce(col.type, value)
                except Unfit as why:
                    row[col.name] = None
                    unfit.append((key, col.path or col.name, value, why))
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
                    conn.execute(self._upsert(table, pk, version, trusted_until), rows)
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

    def _insert(self, table: Table) -> Any:
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        return insert(table)

    def _upsert(self, table: Table, pk: str, version: str | None, trusted_until: datetime) -> Any:
        stmt = self._insert(table)
        keys = {"account_id", pk}
        updates = {c.name: stmt.excluded[c.name] for c in table.columns if c.name not in keys}
        # Never let an older copy of an object replace a newer one (a replayed page, a slow
        # run), unless either version can't be trusted (see ``replaces``).
        where = None
        if version:
            new, old = stmt.excluded[version], table.c[version]
            limit = literal(trusted_until, UTCDateTime())
            where = or_(new.is_(None), old.is_(None), new > limit, old > limit, new >= old)
        return stmt.on_conflict_do_update(
            index_elements=["account_id", pk], set_=updates, where=where
        )

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
