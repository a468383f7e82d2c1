"""The sink: tables and stream state in one database, each page committed with its state.

One table per stream (typed columns, ``account_id``, the object as JSON) and one state table.
Each page's rows and the stream's state are written in one database transaction, so a crash at
any instant leaves data and cursor consistent: the cursor is never ahead of the data. The tables
come from ``schema``, the state from ``state``, the rows from ``rows``; what differs between
databases lives in one dialect module each (``sqlite``, ``postgresql``, ``duckdb``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Table, bindparam, delete, select, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError

from .. import times
from ..errors import ConfigurationError, PageRefused
from ..streams.catalog import ChildTable, Stream
from ..streams.state import PageWrite, StreamState, with_state
from ..times import CLOCK_SKEW
from .destination_urls import DestinationError, redact_url, resolve_destination
from .dialect import Dialect, dialect_names, load_dialect
from .money_trail import ensure_view
from .rows import RowBuilder, Versioning, child_rows, newest_per_key
from .schema import Schema
from .state_table import StateStore


class _RolledBack(Exception):
    """Leaves a probing transaction so that it is rolled back."""


def _sqlstate(error: BaseException) -> str | None:
    """The database's error code: PostgreSQL's SQLSTATE, SQLite's error name."""
    code = getattr(error, "sqlstate", None) or getattr(error, "sqlite_errorname", None)
    return str(code) if code else None


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
            self.dialect = self._dialect(make_url(self.url).get_backend_name())
            engine = self._create_engine(self.dialect, self.url)
        else:
            self.url = engine.url.render_as_string(hide_password=False)
            self.dialect = self._dialect(engine.dialect.name)
            engine = self.dialect.tune(engine)
            # Its errors then never quote a statement's parameters (customers' rows), as the
            # sink's own engines never do.
            engine.hide_parameters = True
        self.engine = engine
        self.schema = Schema()
        self.metadata = self.schema.metadata
        self.state_table = self.schema.state_table
        self.states = StateStore(self.state_table, self.dialect)
        self.row_builder = RowBuilder()
        self._upserts: dict[str, Any] = {}
        self._existing: dict[str, Any] = {}

    @staticmethod
    def _dialect(name: str) -> Dialect:
        dialect = load_dialect(name)
        if dialect is None:
            raise DestinationError(
                f"unsupported destination dialect {name!r}: use "
                + ", ".join(dialect_names()[:-1])
                + f" or {dialect_names()[-1]}"
            )
        return dialect

    @staticmethod
    def _create_engine(dialect: Dialect, url: str) -> Engine:
        try:
            return dialect.create_engine(url)
        except (NoSuchModuleError, ModuleNotFoundError) as exc:
            hint = (
                f". For {dialect.label} install 'prefect-dintero[{dialect.extra}]'"
                if dialect.extra
                else ""
            )
            raise DestinationError(
                f"no database driver for {redact_url(url)}: {exc}{hint}"
            ) from None
        except ArgumentError:
            raise DestinationError(
                f"not a database URL: {redact_url(url)} (expected e.g. "
                "postgresql://user@host/database, or a path for SQLite)"
            ) from None

    def _failed(self, doing: str, exc: OperationalError) -> DestinationError:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        return DestinationError(doing.format(url=redact_url(self.url)) + f": {reason}")

    # -- schema ----------------------------------------------------------------------------------

    def table_for(self, stream: Stream) -> Table:
        return self.schema.table_for(stream)

    def prepare(self, streams: Sequence[Stream]) -> None:
        """Create missing tables; add columns the code declares that a table lacks (nullable);
        create the money trail's view once its tables exist (:mod:`.money_trail`)."""
        try:
            with self.dialect.begin(self.engine) as conn:
                self.schema.create(conn, self.dialect, list(streams))
                ensure_view(conn, self.dialect)
        except OperationalError as exc:
            raise self._failed("cannot use the destination database {url}", exc) from None

    # -- state -----------------------------------------------------------------------------------

    def read_state(self, account_id: str, stream: str, partition: str = "") -> StreamState:
        with self.engine.connect() as conn:
            state = self.states.read(conn, account_id, stream, partition)
            conn.rollback()
        return state

    def pause(self, account_id: str, stream: str, partition: str, until: datetime) -> None:
        """Remember that a read is not to be tried before ``until`` (a filter Dintero
        refused), in the read's state."""
        with self.dialect.begin(self.engine) as conn:
            state = self.states.lock(conn, account_id, stream, partition)
            self.states.save(
                conn, account_id, stream, partition, with_state(state, paused_until=until)
            )

    def personal_data_policies(self, stream: Stream) -> set[str]:
        """The personal-data policies the stream's table was filled under, whatever the
        account or partition: a table holds one (a column never mixes hashed and plain
        values). A state with rows but no policy recorded was written before policies were:
        ``keep``, as Dintero sent it."""
        t = self.states.table
        query = select(t.c.personal_data, t.c.cursor, t.c.rows_total).where(
            t.c.stream == stream.name
        )
        with self.engine.connect() as conn:
            found = conn.execute(query).all()
            conn.rollback()
        policies = {policy for policy, _, _ in found if policy is not None}
        if any(policy is None and (cursor is not None or total) for policy, cursor, total in found):
            policies.add("keep")
        return policies

    def start_over(
        self, stream: Stream, account_id: str, partition: str, personal_data: str
    ) -> None:
        """Delete the stream's whole table and reset every state of the stream (every account
        and partition) to a first sync under the ``personal_data`` policy, in one transaction:
        a full refresh under another policy must not leave rows written under the old one,
        this account's or another's (an object Dintero no longer lists would keep them for
        ever). The other accounts read everything again at their next run, under this policy."""
        table = self.table_for(stream)
        states = self.states.table
        with self.dialect.begin(self.engine) as conn:
            self.states.lock(conn, account_id, stream.name, partition)  # created if new
            conn.execute(delete(table))
            for child in stream.children:
                conn.execute(delete(self.schema.table_for_child(child)))
            fresh = StreamState(personal_data=personal_data)
            conn.execute(
                states.update()
                .where(states.c.stream == stream.name)
                .values({name: getattr(fresh, name) for name in StateStore.RESET})
            )

    # -- writes ----------------------------------------------------------------------------------

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
        table = self.table_for(stream)
        versioning = self._versioning(stream, table)
        version = versioning.version
        trusted_until = now + CLOCK_SKEW
        built = self.row_builder.build(stream, account_id, objects, now)
        rows = newest_per_key(built, stream.primary_key, versioning, trusted_until)
        result = PageWrite(duplicates=len(built) - len(rows))
        try:
            with self.dialect.begin(self.engine) as conn:
                state = self.states.lock(conn, account_id, stream.name, partition)
                if rows:
                    older = self._classify(
                        conn, table, stream, account_id, rows, versioning, trusted_until, result
                    )
                    if version:  # the upsert's guard compares with it, row by row
                        for row in rows:
                            row["trusted_until"] = trusted_until
                    self.dialect.write(conn, self._upsert(stream, table, versioning), rows)
                    # The children of every row written (not of an older copy kept out).
                    written = [row["raw"] for row in rows if row[stream.primary_key] not in older]
                    self._write_children(conn, stream, account_id, written)
                new_state = update_state(state, result)
                self.states.save(conn, account_id, stream.name, partition, new_state)
        except OperationalError as exc:
            raise self._failed("writing to {url} failed", exc) from None
        except Exception as exc:
            # Never the database's text, and never chained to it: either can quote the row.
            raise self._refused(stream, table, versioning, rows, exc) from None
        return result, new_state

    def _write_children(
        self, conn: Connection, stream: Stream, account_id: str, parents: list[dict]
    ) -> None:
        """Replace the child tables' rows of these parents, in the page's transaction."""
        if not stream.children or not parents:
            return
        keys = [parent[stream.primary_key] for parent in parents]
        for child in stream.children:
            table = self.schema.table_for_child(child)
            conn.execute(
                delete(table).where(
                    table.c.account_id == account_id, table.c[child.parent_key].in_(keys)
                )
            )
            rows = child_rows(child, account_id, parents)
            if rows:
                self.dialect.write(conn, self._child_insert(table), rows)

    def _child_insert(self, table: Table) -> Any:
        statement = self._upserts.get(table.name)
        if statement is None:
            statement = self._upserts[table.name] = self.dialect.insert(table)
        return statement

    @staticmethod
    def _versioning(stream: Stream, table: Table) -> Versioning:
        """The stream's version and deletion columns, where the table has them."""
        version = stream.version_field if (stream.version_field or "") in table.c else None
        deleted = stream.deleted_field if (stream.deleted_field or "") in table.c else None
        return Versioning(version, deleted if version else None)

    def _refused(
        self,
        stream: Stream,
        table: Table,
        versioning: Versioning,
        rows: list[dict],
        exc: BaseException,
    ) -> PageRefused:
        """What the database refused, named without a value."""
        cause = getattr(exc, "orig", None) or exc
        kind = type(cause).__name__
        code = _sqlstate(cause)
        key = self._refused_key(stream, table, versioning, rows)
        which = (
            f"object {key!s:.80}" if key is not None else "the page (no one row alone is refused)"
        )
        return PageRefused(
            f"the destination refused a {stream.name} page, table {table.name}: {kind}"
            + (f" (SQLSTATE {code})" if code else "")
            + f", at {which}. Nothing of the page was written and the stream's cursor did not "
            "move. The database's message is not shown: it can quote the row's values, which "
            "are customers' data. Check the table's columns and constraints against the "
            "README's (an added constraint or a changed column type refuses rows)."
        )

    def _refused_key(
        self, stream: Stream, table: Table, versioning: Versioning, rows: list[dict]
    ) -> str | None:
        """The key of the first row the database refuses alone: each row is written in a
        transaction that is rolled back, so nothing of it stays."""
        statement = self._upsert(stream, table, versioning)
        for row in rows:
            try:
                with self.dialect.begin(self.engine) as conn:
                    self.dialect.write(conn, statement, [row])
                    raise _RolledBack
            except _RolledBack:
                continue
            except Exception:
                return str(row[stream.primary_key])
        return None

    def _classify(
        self,
        conn: Connection,
        table: Table,
        stream: Stream,
        account_id: str,
        rows: list[dict],
        versioning: Versioning,
        trusted_until: datetime,
        result: PageWrite,
    ) -> set[str]:
        """Count the page's rows as inserted, updated or unchanged, before the upsert; return
        the keys of the rows whose stored copy is newer (the upsert keeps those out)."""
        pk = stream.primary_key
        older: set[str] = set()
        version = versioning.version
        query = self._existing.get(stream.name)
        if query is None:  # built once: building it per page cost more than running it
            compare = [table.c[version]] if version else [table.c.raw]
            if versioning.deleted:
                compare.append(table.c[versioning.deleted])
            query = select(table.c[pk], *compare).where(
                table.c.account_id == bindparam("account_id"),
                table.c[pk].in_(bindparam("keys", expanding=True)),
            )
            self._existing[stream.name] = query
        params = {"account_id": account_id, "keys": [r[pk] for r in rows]}
        existing = {found[0]: found[1:] for found in conn.execute(query, params).all()}
        for row in rows:
            if row[pk] not in existing:
                result.inserted += 1
            elif version:
                found = existing[row[pk]]
                old = versioning.of(dict(zip((version, versioning.deleted), found, strict=False)))
                if versioning.of(row) == old:
                    result.unchanged += 1
                elif versioning.replaces(row, old, trusted_until):
                    result.updated += 1
                else:
                    result.unchanged += 1  # an older copy: kept out by the upsert's guard
                    older.add(row[pk])
            elif existing[row[pk]][0] != row["raw"]:
                result.updated += 1
            else:
                result.unchanged += 1
        return older

    def _upsert(self, stream: Stream, table: Table, versioning: Versioning) -> Any:
        statement = self._upserts.get(stream.name)
        if statement is None:
            statement = self.dialect.upsert(table, stream.primary_key, versioning)
            self._upserts[stream.name] = statement
        return statement

    # -- reads, for summaries and checks ---------------------------------------------------------

    def count(self, stream: Stream, account_id: str | None = None) -> int:
        table = self.table_for(stream)
        query = select(text("count(*)")).select_from(table)
        if account_id:
            query = query.where(table.c.account_id == account_id)
        with self.engine.connect() as conn:
            return conn.execute(query).scalar_one()

    def rows(self, stream: Stream | ChildTable, account_id: str | None = None) -> list[dict]:
        """A stream's table's rows, or a child table's (for summaries and checks)."""
        if isinstance(stream, ChildTable):
            table = self.schema.table_for_child(stream)
        else:
            table = self.table_for(stream)
        query = select(table)
        if account_id:
            query = query.where(table.c.account_id == account_id)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def dispose(self) -> None:
        self.engine.dispose()
