"""Where synced data goes: the destination's connector block, loaded from Prefect."""

from __future__ import annotations

from typing import Any

from prefect_dintero.blocks.prefect_api import load_block
from prefect_dintero.errors import ConfigurationError
from prefect_dintero.sink import Sink
from prefect_dintero.sink.destination import Destination


def connector_engine(block_name: str) -> Any:
    """The SQLAlchemy engine of a prefect-sqlalchemy ``SqlAlchemyConnector`` block."""
    try:
        from prefect_sqlalchemy import SqlAlchemyConnector
    except ImportError:  # pragma: no cover - the postgres extra installs it
        raise ConfigurationError(
            "destination_block needs prefect-sqlalchemy: pip install 'prefect-dintero[postgres]'"
        ) from None
    return load_block(SqlAlchemyConnector, block_name).get_engine()


def open_sink(destination: Destination) -> Sink:
    """The sink of a destination: a path or URL, or a connector block loaded here."""
    return destination.open(connector_engine)
