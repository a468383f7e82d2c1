"""The destination: SQLite, PostgreSQL or DuckDB through SQLAlchemy Core.

``core`` holds the sink (one transaction per page), ``schema`` the tables from the catalog,
``state`` the state store, ``rows`` the rows built from API objects, ``values`` the typed
columns, ``destinations`` the URLs and files, and one module per database (``sqlite``,
``postgresql``, ``duckdb``) what differs between them, behind ``dialect.Dialect``.
"""

from ..streams.state import PageWrite, StreamState, with_state
from ..times import iso, parse_datetime
from .core import Sink
from .destination_urls import (
    DestinationError,
    create_private_file,
    redact_url,
    resolve_destination,
    url_secrets,
)
from .dialect import Dialect, dialect_names, load_dialect
from .postgresql import SCHEMA_LOCK_KEY
from .rows import replaces
from .schema import STATE_TABLE
from .sqlite import tune_sqlite
from .values import JSON_TYPE, Unfit, UTCDateTime

__all__ = [
    "JSON_TYPE",
    "SCHEMA_LOCK_KEY",
    "STATE_TABLE",
    "DestinationError",
    "Dialect",
    "PageWrite",
    "Sink",
    "StreamState",
    "UTCDateTime",
    "Unfit",
    "create_private_file",
    "dialect_names",
    "iso",
    "load_dialect",
    "parse_datetime",
    "redact_url",
    "replaces",
    "resolve_destination",
    "tune_sqlite",
    "url_secrets",
    "with_state",
]
