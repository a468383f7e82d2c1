"""Where synced data goes: a path, a URL without a password, or a SqlAlchemyConnector block."""

from __future__ import annotations

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from prefect_dintero.errors import ConfigurationError
from prefect_dintero.sink import Sink, url_secrets


def check_destination(destination: str, destination_block: str | None = None) -> None:
    """Reject a destination that would put a password into flow parameters (never printing
    it)."""
    if destination_block:
        return
    if "://" in destination:
        try:
            make_url(destination)
        except ArgumentError:
            raise ConfigurationError(
                "destination is not a database URL (expected e.g. "
                "postgresql://user@host/database, or a path for SQLite)"
            ) from None
        where = url_secrets(destination)
        if where:
            raise ConfigurationError(
                f"the destination URL carries a password ({', '.join(where)}), and flow "
                "parameters are visible in the Prefect UI: save the connection as a "
                "SqlAlchemyConnector block and pass destination_block, or leave the password "
                "out and set PGPASSWORD for the worker"
            )


def open_sink(destination: str = "dintero.db", destination_block: str | None = None) -> Sink:
    """A sink for a destination path or URL, or for a prefect-sqlalchemy connector block."""
    check_destination(destination, destination_block)
    if destination_block:
        try:
            from prefect_sqlalchemy import SqlAlchemyConnector
        except ImportError:  # pragma: no cover - the postgres extra installs it
            raise ConfigurationError(
                "destination_block needs prefect-sqlalchemy: "
                "pip install 'prefect-dintero[postgres]'"
            ) from None
        connector = SqlAlchemyConnector.load(destination_block, _sync=True)
        return Sink(engine=connector.get_engine())
    return Sink(destination)
