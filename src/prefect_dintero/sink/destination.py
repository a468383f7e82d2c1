"""The destination as one object: parsed, checked, anchored, labelled and opened in one place."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from ..errors import ConfigurationError
from .core import Sink
from .destination_urls import redact_url, resolve_destination, url_secrets


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
        resolve_destination(self.target)  # refuses what is not a URL, without quoting it
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

    @property
    def relative_file(self) -> str | None:
        """The relative file a SQLite or DuckDB destination names (``dintero.db``,
        ``sqlite:///dintero.db``, ``duckdb:///data/d.duckdb``), or None: an absolute or ``~``
        path, another database, memory, a SQLite ``file:`` URI, or a block."""
        if self.block:
            return None
        path = self.target
        if "://" in path:
            url = make_url(path)
            if url.get_backend_name() not in ("sqlite", "duckdb"):
                return None
            path = url.database or ""
        if not path or path == ":memory:" or path.startswith(("file:", "~")):
            return None
        return None if Path(path).is_absolute() else path

    def anchored(self, folder: str | Path) -> Destination:
        """This destination with its relative file (:attr:`relative_file`) placed in
        ``folder`` (``~`` expanded); any other destination as it is."""
        if (relative := self.relative_file) is None:
            return self
        target = str(Path(folder).expanduser() / relative)
        if "://" in self.target:
            url = make_url(self.target).set(database=target)
            target = url.render_as_string(hide_password=False)
        return replace(self, target=target)

    def temporary_folder(self) -> Path | None:
        """The working folder, if it is a temporary one (inside the system's temporary folder,
        as a Prefect process worker makes for a deployment run and deletes after it) and this
        destination a file named relative to it; else None. An absolute path is where its user
        said, even under the system's temporary folder."""
        if self.relative_file is None:
            return None
        cwd = Path.cwd().resolve()
        temporary = Path(tempfile.gettempdir()).resolve()
        file = Path(make_url(self.url).database or "").expanduser().resolve()
        if cwd != temporary and cwd.is_relative_to(temporary) and file.is_relative_to(cwd):
            return cwd
        return None

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
