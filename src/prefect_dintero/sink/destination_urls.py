"""Where the data goes: destination URLs, their secrets, and new SQLite files."""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from ..errors import ConfigurationError
from ..redact import get_logger, is_secret_name

logger = get_logger(__name__)


class DestinationError(ConfigurationError):
    """The destination database cannot be reached or used."""


def url_secrets(url: str) -> list[str]:
    """Where a database URL carries a secret: ``user:password@``, or a query key whose name
    says it is one (``?password=``, ``?motherduck_token=``, ``?s3_secret_access_key=``;
    ``redact.is_secret_name``), whatever the database."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return []
    found = ["the user:password@ part"] if parsed.password else []
    # Named without "=": a message quoting "?key=" would have its next words masked.
    found += [f"?{key}" for key in parsed.query if is_secret_name(key)]
    return found


def redact_url(url: str) -> str:
    """A database URL fit to print: its password and secret query values masked."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return "<unparseable URL>"
    masked = {key: ("***" if is_secret_name(key) else value) for key, value in parsed.query.items()}
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


def make_parent(path: str) -> None:
    """Create the folder a new database file goes in (owner only), so a documented location
    such as ``~/prefect-dintero/dintero.db`` works on a worker's first run."""
    parent = Path(path).parent
    if not parent.exists():
        try:
            parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise DestinationError(f"cannot create the folder {parent}: {exc.strerror}") from None
        # Said, so that a misspelt folder is seen starting a new database.
        logger.warning("created the folder %s for the destination database", parent)


def sqlite_file(database: str | None) -> str | None:
    """The file a SQLite URL's database names: a path, or a ``file:`` URI's path
    (``sqlite:///file:dintero.db?uri=true``); None for memory."""
    if not database or database == ":memory:":
        return None
    if not database.startswith("file:"):
        return database
    from urllib.parse import unquote, urlsplit

    uri = urlsplit(database)
    path = unquote(uri.path)
    if not path or path == ":memory:" or "mode=memory" in uri.query:
        return None
    return path


def create_private_file(path: str | None) -> None:
    """Create a new SQLite file readable by its owner only (0600): it will hold customers'
    names and e-mails. SQLite gives its -wal and -shm files the same mode. An existing file
    keeps the mode its owner chose. ``path`` may be a ``file:`` URI."""
    path = sqlite_file(path)
    if not path:
        return
    make_parent(path)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return
    except OSError as exc:
        raise DestinationError(f"cannot create the SQLite file {path}: {exc.strerror}") from None
    os.close(fd)
