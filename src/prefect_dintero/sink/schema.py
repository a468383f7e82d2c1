"""The tables, from the stream catalog: one per stream, and the state table."""

from __future__ import annotations

import threading

from sqlalchemy import BigInteger, Column, MetaData, String, Table
from sqlalchemy.engine import Connection

from ..streams.catalog import ChildTable, Stream
from .dialect import Dialect
from .values import COLUMN_TYPES, JSON_TYPE, UTCDateTime

STATE_TABLE = "dintero_sync_state"


class Schema:
    """The sink's tables: built from each stream's catalog entry on first use, created (and
    extended with columns the catalog gained) by :meth:`prepare`."""

    def __init__(self) -> None:
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
            Column("personal_data", String(64)),
            Column("paused_until", UTCDateTime()),
        )
        self._tables: dict[str, Table] = {}
        self._lock = threading.Lock()

    def table_for(self, stream: Stream) -> Table:
        """The stream's table: ``account_id``, its typed columns, the object as JSON."""
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

    def table_for_child(self, child: ChildTable) -> Table:
        """A child table: ``account_id``, the parent's key and the item's key, then its typed
        columns (no JSON: the parent's ``raw`` holds the items whole)."""
        with self._lock:
            table = self._tables.get(child.table_name)
            if table is None:
                columns = [
                    Column("account_id", String(32), primary_key=True, nullable=False),
                    Column(child.parent_key, String(255), primary_key=True, nullable=False),
                ]
                for col in child.columns:
                    is_key = col.name in child.key
                    columns.append(
                        Column(
                            col.name,
                            COLUMN_TYPES[col.type](),
                            primary_key=is_key,
                            nullable=not is_key,
                        )
                    )
                table = Table(child.table_name, self.metadata, *columns)
                self._tables[child.table_name] = table
            return table

    def create(self, conn: Connection, dialect: Dialect, streams: list[Stream]) -> None:
        """Create missing tables; add (nullable) the columns the catalog declares that a table
        lacks. Runs inside the caller's transaction, under the dialect's schema lock."""
        tables = [self.table_for(s) for s in streams]
        tables += [self.table_for_child(c) for s in streams for c in s.children]
        dialect.lock_schema(conn)
        self.metadata.create_all(conn, tables=[self.state_table, *tables])
        for table in [self.state_table, *tables]:
            existing = dialect.existing_columns(conn, table.name)
            for column in table.columns:
                if column.name not in existing:
                    kind = column.type.compile(dialect=conn.dialect)
                    conn.exec_driver_sql(
                        f'ALTER TABLE "{table.name}" ADD COLUMN "{column.name}" {kind}'
                    )
