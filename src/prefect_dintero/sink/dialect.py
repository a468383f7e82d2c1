"""What differs between the databases a sink writes to: one small class per dialect.

A dialect lives in ``prefect_dintero/sink/<name>.py`` (``name`` as SQLAlchemy names the
backend: ``sqlite``, ``postgresql``, ``duckdb``) and exports its class as ``DIALECT``; the sink
finds it by the destination URL's backend name, so adding a database touches only its module
(and its extra in pyproject.toml).
"""

from __future__ import annotations

import contextlib
import importlib
import pkgutil
from collections.abc import Iterator
from typing import Any, ClassVar

from sqlalchemy import Engine, Select, Table, and_, bindparam, func, inspect, or_
from sqlalchemy.engine import Connection

from .rows import Versioning
from .values import UTCDateTime


class Dialect:
    """How one kind of database is opened, locked, changed and upserted into.

    Subclasses say how to create and tune an engine, which ``INSERT`` construct carries
    ``ON CONFLICT``, how a page's transaction starts, how the DDL of concurrent streams is
    serialised, which columns a table has, and how a stream's state row is locked for the
    transaction that writes a page.

    Attributes:
        name: SQLAlchemy's backend name.
        label: the database's name for messages.
        extra: the ``prefect-dintero[...]`` extra that installs the driver, if one is needed.
    """

    name: ClassVar[str]
    label: ClassVar[str]
    extra: ClassVar[str | None] = None

    def create_engine(self, url: str) -> Engine:
        raise NotImplementedError

    def tune(self, engine: Engine) -> Engine:
        """Make an engine given by the user (a connector block's) fit for the sink."""
        return engine

    @contextlib.contextmanager
    def begin(self, engine: Engine) -> Iterator[Connection]:
        """A write transaction: a page with its state, or the schema."""
        with engine.begin() as conn:
            yield conn

    def insert(self, table: Table) -> Any:
        raise NotImplementedError

    def lock_schema(self, conn: Connection) -> None:
        """Serialise schema changes of streams preparing their tables at the same moment."""

    def existing_columns(self, conn: Connection, table: str) -> set[str]:
        """The names of a table's columns, as the database has them."""
        return {c["name"] for c in inspect(conn).get_columns(table)}

    def has_table(self, conn: Connection, table: str) -> bool:
        return inspect(conn).has_table(table)

    def day(self, column: str) -> str:
        """SQL for the UTC day (``YYYY-MM-DD``) of a timestamp column."""
        raise NotImplementedError

    def replace_view(self, conn: Connection, name: str, select: str) -> None:
        """Create the view ``name`` as ``select``, replacing an older definition (dropped
        first: PostgreSQL cannot replace a view whose columns changed)."""
        conn.exec_driver_sql(f'DROP VIEW IF EXISTS "{name}"')
        conn.exec_driver_sql(f'CREATE VIEW "{name}" AS {select}')

    def lock_row(self, query: Select) -> Select:
        """The state row's query, locking the row until the transaction ends."""
        return query

    def write(self, conn: Connection, statement: Any, rows: list[dict]) -> None:
        """Run the upsert for a page's rows (executemany)."""
        conn.execute(statement, rows)

    def upsert(self, table: Table, pk: str, versioning: Versioning) -> Any:
        """``INSERT ... ON CONFLICT DO UPDATE`` for ``table``, built once per table.

        It never lets an older copy of an object replace a newer one (a replayed page, a slow
        run), unless either version can't be trusted: missing, or later than the
        ``trusted_until`` bound parameter every row carries. A tombstone is replaced only by a
        copy surely as new (see ``rows.Versioning``, which decides the same in Python).
        """
        stmt = self.insert(table)
        keys = {"account_id", pk}
        updates = {c.name: stmt.excluded[c.name] for c in table.columns if c.name not in keys}
        where = None
        if versioning.version:
            limit = bindparam("trusted_until", type_=UTCDateTime())
            if versioning.deleted is None:
                new, old = stmt.excluded[versioning.version], table.c[versioning.version]
                where = or_(new.is_(None), old.is_(None), new > limit, old > limit, new >= old)
            else:
                gone = table.c[versioning.deleted]
                # A tombstone is dated by its deletion: the version of either copy is its
                # deletion when it has one, else its version column.
                new_at = func.coalesce(
                    stmt.excluded[versioning.deleted], stmt.excluded[versioning.version]
                )
                old_at = func.coalesce(gone, table.c[versioning.version])
                where = or_(
                    and_(
                        gone.is_(None),
                        or_(
                            new_at.is_(None),
                            old_at.is_(None),
                            new_at > limit,
                            old_at > limit,
                            new_at >= old_at,
                        ),
                    ),
                    and_(
                        gone.is_not(None),
                        or_(
                            old_at > limit,
                            and_(new_at.is_not(None), new_at <= limit, new_at >= old_at),
                        ),
                    ),
                )
        return stmt.on_conflict_do_update(
            index_elements=["account_id", pk], set_=updates, where=where
        )


#: Modules of this package that are not dialects.
_NOT_DIALECTS = frozenset(
    {
        "core",
        "destination_urls",
        "dialect",
        "money_trail",
        "rows",
        "schema",
        "state_table",
        "values",
    }
)


def load_dialect(name: str) -> Dialect | None:
    """The dialect for a SQLAlchemy backend name, or None if there is none."""
    if not name.isidentifier() or name in _NOT_DIALECTS:
        return None
    try:
        module = importlib.import_module(f"{__package__}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"{__package__}.{name}":
            return None
        raise
    dialect = getattr(module, "DIALECT", None)
    return dialect() if dialect is not None else None


def dialect_names() -> list[str]:
    """The databases a sink can write to (for messages)."""
    package = importlib.import_module(__package__)
    names = [m.name for m in pkgutil.iter_modules(package.__path__) if m.name not in _NOT_DIALECTS]
    return sorted(getattr(load_dialect(n), "label", n) for n in names if load_dialect(n))
