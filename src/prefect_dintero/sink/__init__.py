"""The destination: SQLite, PostgreSQL or DuckDB through SQLAlchemy Core.

``core`` holds the sink (one transaction per page), ``destination`` the destination as one
object, ``schema`` the tables from the catalog, ``state_table`` the state store, ``rows`` the
rows built from API objects, ``values`` the typed columns, ``destination_urls`` the URLs and
files, and one module per database (``sqlite``, ``postgresql``, ``duckdb``) what differs
between them, behind ``dialect.Dialect``.
"""

from .core import Sink
from .destination import Destination
from .destination_urls import DestinationError, redact_url, resolve_destination, url_secrets
from .schema import STATE_TABLE

__all__ = [
    "STATE_TABLE",
    "Destination",
    "DestinationError",
    "Sink",
    "redact_url",
    "resolve_destination",
    "url_secrets",
]
