"""Where synced data goes: a path, a URL without a password, or a SqlAlchemyConnector block."""

from __future__ import annotations

from prefect_dintero.blocks.prefect_api import load_block
from prefect_dintero.errors import ConfigurationError
from prefect_dintero.sink import Sink
from prefect_dintero.sync.options import check_destination


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
        connector = load_block(SqlAlchemyConnector, destination_block)
        return Sink(engine=connector.get_engine())
    return Sink(destination)
