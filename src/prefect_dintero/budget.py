"""The run's budget: when the run in this context must be over, seen by every wait inside it.

The sync flow sets it around a run (:func:`within`); the threads and tasks the run starts copy
their context, so every wait of the run (a token request's retries, a renewal slot, a request's
deadline) can see it without being handed it. Not an HTTP matter: the HTTP layer and the
Prefect layer both read it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextvars import ContextVar

_ends_at: ContextVar[float | None] = ContextVar("dintero_run_ends_at", default=None)


@contextlib.contextmanager
def within(ends_at: float | None) -> Iterator[None]:
    """Bound every wait of the run inside the block by ``ends_at`` (``time.time()``)."""
    token = _ends_at.set(ends_at)
    try:
        yield
    finally:
        _ends_at.reset(token)


def ends_at() -> float | None:
    """When the current run must be over (``time.time()``), or None."""
    return _ends_at.get()


def time_left() -> float | None:
    """Seconds the current run has left (None: no budget; never below 0)."""
    ends = _ends_at.get()
    return None if ends is None else max(0.0, ends - time.time())
