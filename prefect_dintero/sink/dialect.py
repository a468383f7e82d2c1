"""What differs between the databases a sink writes to: one small class per dialect."""

from __future__ import annotations

from typing import Any, ClassVar

from sqlalchemy import Engine, Select, Table, bindparam, or_
from sqlalchemy.engine import Connection

from .values import UTCDateTime


class Dialect:
    """How one kind of database is opened, locked and upserted into.

    Subclasses say how to create and tune an engine, which ``INSERT`` construct carries
    ``ON CONFLICT``, how the DDL of concurrent streams is serialised, and how a stream's state
    row is locked for the transaction that writes a page.
    """

    name: ClassVar[str]

    def create_engine(self, url: str) -> Engine:
        raise NotImplementedError

    def tune(self, engine: Engine) -> Engine:
        """Make an engine given by the user (a connector block's) fit for the sink."""
        return engine

    def insert(self, table: Table) -> Any:
        raise NotImplementedError

    def lock_schema(self, conn: Connection) -> None:
        """Serialise schema changes of streams preparing their tables at the same moment."""

    def lock_row(self, query: Select) -> Select:
        """The state row's query, locking the row until the transaction ends."""
        return query

    def write(self, conn: Connection, statement: Any, rows: list[dict]) -> None:
        """Run the upsert for a page's rows (executemany)."""
        conn.execute(statement, rows)

    def upsert(self, table: Table, pk: str, version: str | None) -> Any:
        """``INSERT ... ON CONFLICT DO UPDATE`` for ``table``, built once per table.

        It never lets an older copy of an object replace a newer one (a replayed page, a slow
        run), unless either version can't be trusted: missing, or later than the
        ``trusted_until`` bound parameter every row carries (see ``core.replaces``).
        """
        stmt = self.insert(table)
        keys = {"account_id", pk}
        updates = {c.name: stmt.excluded[c.name] for c in table.columns if c.name not in keys}
        where = None
        if version:
            new, old = stmt.excluded[version], table.c[version]
            limit = bindparam("trusted_until", type_=UTCDateTime())
            where = or_(new.is_(None), old.is_(None), new > limit, old > limit, new >= old)
        return stmt.on_conflict_do_update(
            index_elements=["account_id", pk], set_=updates, where=where
        )
