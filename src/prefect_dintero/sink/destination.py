"""The destination as one object: parsed, checked, anchored, labelled and opened in one place."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from ..errors import ConfigurationError
from .core import Sink
from .destination_urls import (
    anchor_destination,
    in_temporary_working_folder,
    redact_url,
    resolve_destination,
    url_secrets,
)


@dataclass(frozen=True)
class Destination:
    """Where synced data goes: a SQLite (or DuckDB) file, a database URL without a secret, or
    the name of a prefect-sqlalchemy ``SqlAlchemyConnector`` block.

    Checked when made: a URL carrying a password or a secret query key is refused (flow
    parameters are visible in the Prefect UI), and the message never quotes it.

    Examples:
        ```python
        from prefect_dintero.sink.destination import Destination

        here = Destination("data/dintero.db")
        assert here.anchored("/srv/dintero").url == "sqlite:////srv/dintero/data/dintero.db"
        assert Destination("postgresql://etl@db/dintero").label() == (
            "postgresql+psycopg://etl@db/dintero"
        )
        ```
    """

    target: str = "dintero.db"
    block: str | None = None

    def __post_init__(self) -> None:
        if self.block or "://" not in self.target:
            return
        try:
            make_url(self.target)
        except ArgumentError:  # its message quotes the URL, password and all
            raise ConfigurationError(
                "destination is not a database URL (expected e.g. "
                "postgresql://user@host/database, or a path for SQLite)"
            ) from None
        if where := url_secrets(self.target):
            raise ConfigurationError(
                f"the destination URL carries a secret ({', '.join(where)}), and flow parameters "
                "are visible in the Prefect UI: save the connection as a SqlAlchemyConnector "
                "block and pass destination_block, or leave the secret out and give it to the "
                "worker in its environment (PGPASSWORD for PostgreSQL, motherduck_token for "
                "MotherDuck)"
            )

    @property
    def url(self) -> str:
        """The SQLAlchemy URL (a path means SQLite, made absolute)."""
        if self.block:
            raise ConfigurationError(f"the destination is the block {self.block!r}, not a URL")
        return resolve_destination(self.target)

    def anchored(self, folder: str | Path) -> Destination:
        """This destination with a relative SQLite or DuckDB file placed in ``folder``."""
        return self if self.block else replace(self, target=anchor_destination(self.target, folder))

    def temporary_folder(self) -> Path | None:
        """The temporary working folder a relative file would be deleted with, or None."""
        return None if self.block else in_temporary_working_folder(self.target)

    def label(self) -> str:
        """Where the data goes, fit to log and show: a file as its absolute path, a URL with
        its password masked, a block by its name."""
        if self.block:
            return f"the SqlAlchemyConnector block {self.block!r}"
        return redact_url(self.url)

    def for_event(self) -> dict[str, str]:
        """Where a run wrote, as a downstream run takes it (never a secret: refused above)."""
        if self.block:
            return {"destination": "", "destination_block": self.block}
        return {"destination": self.url, "destination_block": ""}

    def open(self, block_engine: Callable[[str], Any] | None = None) -> Sink:
        """The sink: over the URL, or over the engine ``block_engine`` makes from the block
        (the Prefect layer loads the block; the core never does)."""
        if not self.block:
            return Sink(self.target)
        if block_engine is None:
            raise ConfigurationError("a destination block needs Prefect to load it")
        return Sink(engine=block_engine(self.block))
