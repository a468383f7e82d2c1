"""DuckDB, the embedded analytics database: one writing process per file, page transactions
serialised within it.

DuckDB lets one process at a time open a file for writing (its documented concurrency model:
https://duckdb.org/docs/stable/connect/concurrency) and resolves concurrent transactions of
that process optimistically, failing the later writer of a row. So pooled connections are
closed after half a second unused (a file stays locked while a sync writes, not while its
process idles: opening a file costs ~40 ms, so a connection per page would double a page's
time), a connection waits for another process's lock as SQLite's busy timeout does, and the
page transactions of one file take turns in this process, as SQLite's BEGIN IMMEDIATE makes
them. duckdb-engine builds on
SQLAlchemy's PostgreSQL dialect, and DuckDB speaks its ``INSERT ... ON CONFLICT``.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import stat
import tempfile
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Engine, Table, create_engine, event, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import Connection

from ..redact import get_logger
from .destination_urls import DestinationError, make_parent
from .dialect import Dialect

logger = get_logger(__name__)

#: How long a connection waits for another process to release the file.
LOCK_WAIT_SECONDS = 60.0
#: Pooled connections unused this long are closed, releasing the file to other processes.
IDLE_RELEASE_SECONDS = 0.5

_file_locks: dict[str, threading.RLock] = {}
_file_locks_guard = threading.Lock()


def _file_lock(engine: Engine) -> threading.RLock:
    key = os.path.realpath(engine.url.database or ":memory:")
    with _file_locks_guard:
        return _file_locks.setdefault(key, threading.RLock())


def _create_private(engine: Engine) -> None:
    """A new database file readable by its owner only (0600): it will hold customers' names
    and e-mails. An existing file keeps the mode its owner chose.

    DuckDB refuses a file it did not write (an empty one made 0600 first), and a file it makes
    where it goes, made 0600 after, is readable by others for a moment (a handle opened then
    stays open). So DuckDB makes it in a private folder beside it (0700), where it is made 0600,
    and it is linked into place. The engine's own connections open it only after that.
    """
    import duckdb

    database = engine.url.database
    if not database or database == ":memory:" or os.path.exists(database):
        return
    make_parent(database)
    with _file_lock(engine):
        if os.path.exists(database):
            return
        try:
            staging = tempfile.mkdtemp(prefix=".dintero-new-", dir=os.path.dirname(database) or ".")
        except OSError as exc:
            raise DestinationError(
                f"cannot create the DuckDB file {database}: {exc.strerror}"
            ) from None
        try:
            made = os.path.join(staging, "new.duckdb")
            duckdb.connect(made).close()
            os.chmod(made, 0o600)
            try:
                os.link(made, database)
            except FileExistsError:  # another process made it meanwhile: theirs is used
                pass
            except OSError:  # a file system without hard links
                if not os.path.exists(database):
                    os.rename(made, database)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _umask() -> int | None:
    """This process's umask, read without changing it (Linux), else None."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    return None


_wal_warned: set[str] = set()


def _warn_if_others_can_read_the_wal(database: str | None) -> None:
    """DuckDB makes its write-ahead log (``<file>.wal``, rows not yet checkpointed into the
    file) with the process's umask, not with the database file's mode (SQLite gives its WAL the
    file's mode): with umask 022 in a folder others can enter, they can read it while a sync
    writes. Said once per file and process."""
    if not database or database == ":memory:" or database in _wal_warned:
        return
    umask = _umask()
    if umask is None:
        return
    folder = os.path.dirname(os.path.abspath(database))
    try:
        folder_mode = stat.S_IMODE(os.stat(folder).st_mode)
    except OSError:
        return
    group = not umask & 0o040 and folder_mode & 0o010
    others = not umask & 0o004 and folder_mode & 0o001
    if group or others:
        _wal_warned.add(database)
        logger.warning(
            "DuckDB writes %s.wal (rows not yet checkpointed into the file) with this "
            "process's umask %03o, so %s who can enter %s could read it while a sync runs: "
            "keep DuckDB files in a folder only you can enter (chmod 700 %s) or run with "
            "umask 077",
            os.path.basename(database),
            umask,
            "other users" if others else "your group",
            folder,
            folder,
        )


class _IdleRelease:
    """Closes an engine's pooled connections once none has been in use for a while."""

    def __init__(self, engine: Engine, after: float) -> None:
        self.engine, self.after = engine, after
        self.in_use = 0
        self.timer: threading.Timer | None = None
        self.lock = threading.Lock()
        self.exiting = False
        _idle_releases.add(self)

    def checkout(self, *args: Any) -> None:
        with self.lock:
            self.in_use += 1
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None

    def checkin(self, *args: Any) -> None:
        with self.lock:
            self.in_use = max(0, self.in_use - 1)
            if self.in_use == 0 and self.timer is None and not self.exiting:
                self.timer = threading.Timer(self.after, self.release)
                self.timer.daemon = True
                self.timer.start()

    def release(self) -> None:
        with self.lock:
            self.timer = None
            if self.in_use == 0:
                self.engine.pool.dispose()


_idle_releases: weakref.WeakSet[_IdleRelease] = weakref.WeakSet()


@atexit.register
def _close_before_exit() -> None:
    """Close pooled connections while the interpreter is still whole. A timer thread closing
    one while the interpreter shuts down is stopped inside DuckDB's C++ code, which aborts the
    process ("terminate called ... exception not rethrown", exit status 134): a script that
    exited as its connections went idle (half a second after its last write) failed."""
    for idle in list(_idle_releases):
        with idle.lock:
            idle.exiting = True
            timer, idle.timer = idle.timer, None
        if timer is not None:
            timer.cancel()
            timer.join(LOCK_WAIT_SECONDS)
        with idle.lock:
            if idle.in_use == 0:
                idle.engine.pool.dispose()


def _tune(engine: Engine) -> Engine:
    if getattr(engine, "_dintero_tuned", False):
        return engine
    idle = _IdleRelease(engine, IDLE_RELEASE_SECONDS)
    event.listen(engine, "checkout", idle.checkout)
    event.listen(engine, "checkin", idle.checkin)

    @event.listens_for(engine, "do_connect")
    def _connect(dialect: Any, record: Any, cargs: Any, cparams: Any) -> Any:
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        while True:
            try:
                return dialect.connect(*cargs, **cparams)
            except Exception as exc:
                # Only a file another process holds is waited for.
                if "Could not set lock on file" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    @event.listens_for(engine, "connect")
    def _utc(dbapi_connection: Any, record: Any) -> None:
        # Timestamps come back in the session's zone; the sink's are UTC.
        dbapi_connection.execute("SET TimeZone = 'UTC'")

    engine._dintero_tuned = True  # type: ignore[attr-defined]
    return engine


class DuckDBDialect(Dialect):
    """One file, one writing process; page transactions take turns within it."""

    name = "duckdb"
    label = "DuckDB"
    extra = "duckdb"

    def create_engine(self, url: str) -> Engine:
        import duckdb  # noqa: F401  (the extra's driver: a clear error here if it is missing)

        engine = _tune(create_engine(url, hide_parameters=True))
        _create_private(engine)
        _warn_if_others_can_read_the_wal(engine.url.database)
        return engine

    def tune(self, engine: Engine) -> Engine:
        return _tune(engine)

    @contextlib.contextmanager
    def begin(self, engine: Engine) -> Iterator[Connection]:
        with _file_lock(engine), engine.begin() as conn:
            yield conn

    def insert(self, table: Table) -> Any:
        return insert(table)

    def write(self, conn: Connection, statement: Any, rows: list[dict]) -> None:
        """The page as one multi-row ``INSERT``: DuckDB runs an executemany row by row."""
        trusted = {"trusted_until": rows[0]["trusted_until"]} if "trusted_until" in rows[0] else {}
        values = [{k: v for k, v in row.items() if k != "trusted_until"} for row in rows]
        conn.execute(statement.values(values), trusted)

    def day(self, column: str) -> str:
        # The session's time zone is UTC (``_tune``).
        return f"strftime({column}, '%Y-%m-%d')"

    def has_table(self, conn: Connection, table: str) -> bool:
        query = text("SELECT 1 FROM information_schema.tables WHERE table_name = :table")
        return conn.execute(query, {"table": table}).first() is not None

    def existing_columns(self, conn: Connection, table: str) -> set[str]:
        # duckdb-engine's reflection queries PostgreSQL catalogs DuckDB lacks.
        query = text("SELECT column_name FROM information_schema.columns WHERE table_name = :table")
        return {name for (name,) in conn.execute(query, {"table": table})}


DIALECT = DuckDBDialect
