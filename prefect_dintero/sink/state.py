"""The state store: each stream's row in the state table, read, locked and saved in the same
transaction as the page it describes."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table, select
from sqlalchemy.engine import Connection

from ..state import StreamState
from .dialect import Dialect


class StateStore:
    """Reads and writes stream states in ``table`` (the schema's state table)."""

    def __init__(self, table: Table, dialect: Dialect) -> None:
        self.table = table
        self.dialect = dialect

    def _key(self, account_id: str, stream: str, partition: str) -> Any:
        t = self.table
        return (
            (t.c.account_id == account_id) & (t.c.stream == stream) & (t.c.partition == partition)
        )

    def read(self, conn: Connection, account_id: str, stream: str, partition: str) -> StreamState:
        query = select(self.table).where(self._key(account_id, stream, partition))
        return self._from_row(conn.execute(query).mappings().first())

    def lock(self, conn: Connection, account_id: str, stream: str, partition: str) -> StreamState:
        """The state, held until the transaction ends (created if new)."""
        # Two runs may create the row at once: let the database settle it, not a read first.
        conn.execute(
            self.dialect.insert(self.table)
            .values(account_id=account_id, stream=stream, partition=partition, rows_total=0)
            .on_conflict_do_nothing(index_elements=["account_id", "stream", "partition"])
        )
        query = self.dialect.lock_row(
            select(self.table).where(self._key(account_id, stream, partition))
        )
        return self._from_row(conn.execute(query).mappings().first())

    def save(
        self, conn: Connection, account_id: str, stream: str, partition: str, state: StreamState
    ) -> None:
        conn.execute(
            self.table.update()
            .where(self._key(account_id, stream, partition))
            .values(
                cursor=state.cursor,
                max_seen=state.max_seen,
                rows_total=state.rows_total,
                window_lower=state.window_lower,
                window_upper=state.window_upper,
                resume=state.resume,
                last_run_at=state.last_run_at,
                last_run_id=state.last_run_id,
            )
        )

    @staticmethod
    def _from_row(row: Any) -> StreamState:
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
