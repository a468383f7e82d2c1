"""The state store: each stream's row in the state table, read, locked and saved in the same
transaction as the page it describes."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table, bindparam, select
from sqlalchemy.engine import Connection

from ..streams.state import StreamState
from .dialect import Dialect


class StateStore:
    """Reads and writes stream states in ``table`` (the schema's state table).

    Its statements are built once, with bound parameters: built per page, their construction
    cost more than the database's work on the state row.
    """

    #: The state columns a save writes (the key aside).
    FIELDS = (
        "cursor",
        "max_seen",
        "rows_total",
        "window_lower",
        "window_upper",
        "resume",
        "last_run_at",
        "last_run_id",
        "personal_data",
        "paused_until",
    )

    #: What a full refresh resets (the last run is kept: it still happened).
    RESET = tuple(name for name in FIELDS if name not in ("last_run_at", "last_run_id"))

    def __init__(self, table: Table, dialect: Dialect) -> None:
        self.table = table
        self.dialect = dialect
        t = table
        # Bound parameter names differ from the columns': an UPDATE's SET takes those.
        key = (
            (t.c.account_id == bindparam("key_account_id"))
            & (t.c.stream == bindparam("key_stream"))
            & (t.c.partition == bindparam("key_partition"))
        )
        self._read = select(t).where(key)
        self._locked = dialect.lock_row(select(t).where(key))
        # Two runs may create the row at once: the conflict clause lets the database settle
        # which, and both then read the one row.
        self._create = (
            dialect.insert(t)
            .values(
                account_id=bindparam("key_account_id"),
                stream=bindparam("key_stream"),
                partition=bindparam("key_partition"),
                rows_total=0,
            )
            .on_conflict_do_nothing(index_elements=["account_id", "stream", "partition"])
        )
        self._save = t.update().where(key)

    @staticmethod
    def _key(account_id: str, stream: str, partition: str) -> dict[str, str]:
        return {"key_account_id": account_id, "key_stream": stream, "key_partition": partition}

    def read(self, conn: Connection, account_id: str, stream: str, partition: str) -> StreamState:
        key = self._key(account_id, stream, partition)
        return self._from_row(conn.execute(self._read, key).mappings().first())

    def lock(self, conn: Connection, account_id: str, stream: str, partition: str) -> StreamState:
        """The state, held until the transaction ends (created if new)."""
        key = self._key(account_id, stream, partition)
        row = conn.execute(self._locked, key).mappings().first()
        if row is None:  # the stream's first page (or someone deleted the row to reset it)
            conn.execute(self._create, key)
            row = conn.execute(self._locked, key).mappings().first()
        return self._from_row(row)

    def save(
        self, conn: Connection, account_id: str, stream: str, partition: str, state: StreamState
    ) -> None:
        values = {name: getattr(state, name) for name in self.FIELDS}
        conn.execute(self._save, {**self._key(account_id, stream, partition), **values})

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
            personal_data=row["personal_data"],
            paused_until=row.get("paused_until"),
        )
