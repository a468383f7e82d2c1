"""Streams: what can be read from Dintero and how its lists page.

``catalog`` declares every stream (path, host, key, cursor, paginator, the reason beside each
setting), ``discovery`` finds the payout destinations a per-destination stream is read for,
``paginators`` walks Dintero's page shapes without I/O of its own, ``personal_data`` hashes or
drops personal fields, ``queries`` reads one stream's records in your own code, and ``state``
is where a stream stands (the words the sync and the sink share). Nothing here makes a request.
"""

from .catalog import CATALOG, Stream, resolve_streams

__all__ = ["CATALOG", "Stream", "resolve_streams"]
