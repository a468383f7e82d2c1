"""The destination: SQLite or PostgreSQL through SQLAlchemy Core.

``core`` holds the sink (tables, state, one transaction per page), ``values`` the typed
columns, ``destinations`` the URLs and files, and ``sqlite`` and ``postgresql`` what differs
between the two databases.
"""

from ..times import iso, parse_datetime
from .core import (
    DIALECTS,
    STATE_TABLE,
    PageWrite,
    Sink,
    StreamState,
    replaces,
    with_state,
)
from .destinations import (
    SECRET_QUERY_KEYS,
    DestinationError,
    create_private_file,
    redact_url,
    resolve_destination,
    url_secrets,
)
from .postgresql import SCHEMA_LOCK_KEY
from .sqlite import tune_sqlite
from .values import JSON_TYPE, Unfit, UTCDateTime, coerce

__all__ = [
    "DIALECTS",
    "JSON_TYPE",
    "SCHEMA_LOCK_KEY",
    "SECRET_QUERY_KEYS",
    "STATE_TABLE",
    "DestinationError",
    "PageWrite",
    "Sink",
    "StreamState",
    "UTCDateTime",
    "Unfit",
    "coerce",
    "create_private_file",
    "iso",
    "parse_datetime",
    "redact_url",
    "replaces",
    "resolve_destination",
    "tune_sqlite",
    "url_secrets",
    "with_state",
]
