"""Time as the sync sees it: parsing Dintero's timestamps, formatting filters, and "now".

``now()`` is the one clock the sync and the sink read. It is the system clock; ``use_clock`` is
a test seam that swaps it, so the tests and the month simulation can drive the emulator's clock
and the sync's together (hours pass in milliseconds).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

#: How far a server's clock may run ahead of ours. A cursor never moves past the run's start
#: plus this, and an ``updated_at`` later than now plus this is not trusted as a version.
CLOCK_SKEW = timedelta(minutes=5)

_clock: Callable[[], datetime] = lambda: datetime.now(UTC)  # noqa: E731


def now() -> datetime:
    """The current time, timezone-aware UTC."""
    return _clock()


@contextmanager
def use_clock(clock: Callable[[], datetime]) -> Iterator[None]:
    """A test seam: read ``clock`` instead of the system clock inside the ``with`` block."""
    global _clock
    previous, _clock = _clock, clock
    try:
        yield
    finally:
        _clock = previous


def parse_datetime(value: Any) -> datetime | None:
    """An ISO 8601 value as an aware UTC datetime (no timezone means UTC); None if unusable.

    Dintero documents "ISO 8601 … If a timezone is not specified we assume UTC". A value that
    parses but cannot be held as UTC (``9999-12-31T23:59:59-05:00``) is unusable too.
    """
    if type(value) is str:
        try:
            dt = datetime.fromisoformat(value)  # takes "Z" since Python 3.11
        except ValueError:
            return None
    elif isinstance(value, datetime):
        dt = value
    else:
        return None
    if dt.tzinfo is UTC:
        return dt
    try:
        return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)
    except (OverflowError, ValueError):
        return None


def iso(value: datetime | None) -> str | None:
    """A datetime as Dintero's filters take it: UTC with milliseconds and a Z."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
