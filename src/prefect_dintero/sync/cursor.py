"""The cursor arithmetic of one stream's run: where a window starts, what may move the cursor.

The cursor is guarded against what an API could send: it never moves past the run's start plus
``CLOCK_SKEW``, never because of a row outside the window that was asked for (such a row is
stored, with a warning naming it), and ``full_refresh`` resets it. A late-change read
(transactions by ``captured_at`` or ``refunded_at``) has its own cursor, and a page holding a
row the filter would not let through is refused before anything of it is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from .. import times
from ..errors import DinteroError
from ..redact import get_logger
from ..streams.catalog import Stream, has_event_within
from ..streams.state import StreamState
from ..times import CLOCK_SKEW, iso, parse_datetime
from .options import SyncRequest
from .stream_summary import StreamSummary

logger = get_logger(__name__)

#: Rows named in one warning about rows outside the requested window.
WARN_ROWS = 3


class FilterIgnored(DinteroError):
    """A late-change read got rows the filter it asked for would not have let through."""


def later(a: datetime | None, b: datetime | None) -> datetime | None:
    """The later of two times, either of which may be unknown."""
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


@dataclass
class WindowCursor:
    """Where one stream's read starts and where its cursor may go, for one run."""

    stream: Stream
    request: SyncRequest
    run_started_at: datetime
    label: str
    #: The latest a cursor may ever be: the run's start plus the clock skew.
    until: datetime = field(init=False)
    lookback: timedelta = field(init=False)

    def __post_init__(self) -> None:
        self.until = self.run_started_at + CLOCK_SKEW
        asked = self.request.lookback
        self.lookback = (
            asked
            if asked is not None and self.stream.changed_by_event is None
            else self.stream.lookback
        )

    def trusted(self, state: StreamState) -> datetime | None:
        cursor = state.cursor
        if cursor is not None and cursor > self.until:
            # A cursor past the run's start plus the skew was carried there by a row with a wrong
            # date, or set by hand: what was skipped since is unknown, so read everything once;
            # the upserts dedupe.
            logger.warning(
                "%s: the saved cursor %s is in the future; ignoring it and reading everything "
                "again, once",
                self.label,
                iso(cursor),
            )
            return None
        return cursor

    def lower_bound(self, state: StreamState) -> datetime | None:
        """Where this run's window starts."""
        cursor = self.trusted(state)
        request = self.request
        if self.stream.changed_by_event is not None:
            # A late-change read starts where it stopped, or (first, or after a full refresh)
            # at this run: what changed before is what the read by created_at and the
            # reconcile are for. It never reads the whole history of captures.
            since = self.run_started_at if cursor is None or request.full_refresh else cursor
            late_lower = since - self.lookback
            if request.reconcile is not None and self.stream.reconcile_reach is not None:
                # The settlements of the last days' captures and refunds, of any age.
                late_lower = min(late_lower, self.run_started_at - self.stream.reconcile_reach)
            return late_lower
        if request.full_refresh or cursor is None:
            lower = request.start_date
        else:
            lower = cursor - self.lookback
            if request.start_date is not None:
                lower = max(lower, request.start_date)
        if request.reconcile is not None and lower is not None:
            reconcile = self.run_started_at - request.reconcile
            if request.start_date is not None:
                reconcile = max(reconcile, request.start_date)
            lower = min(lower, reconcile)
        return lower

    def newest_in_window(
        self,
        rows: list[dict],
        lower: datetime | None,
        upper: datetime | None,
        summary: StreamSummary,
    ) -> datetime | None:
        """The newest cursor value among rows inside ``[lower, upper]`` and not after
        ``until``; rows outside what was asked for are counted and named in a warning."""
        newest, outside = None, []
        for row in rows:
            value = parse_datetime(self.stream.changed_at(row))
            if value is None:
                continue
            if (lower is not None and value < lower) or (upper is not None and value > upper):
                outside.append((row, value))
                continue
            if value > self.until:
                if value > times.now() + CLOCK_SKEW:
                    outside.append((row, value))
                continue
            newest = later(newest, value)
        if outside:
            summary.outside_window += len(outside)
            if self.stream.changed_by_event is not None:
                return newest  # a late-change read: refuse_ignored_filter refuses the page
            named = ", ".join(
                f"{row.get(self.stream.primary_key)!s:.80} "
                f"({self.stream.cursor_field} {iso(value)})"
                for row, value in outside[:WARN_ROWS]
            )
            more = f" and {len(outside) - WARN_ROWS} more" if len(outside) > WARN_ROWS else ""
            logger.warning(
                "%s: %d row(s) outside the window asked for (%s .. %s) were stored but do not "
                "move the cursor: %s%s",
                self.label,
                len(outside),
                iso(lower) or "start",
                iso(upper) or "now",
                named,
                more,
            )
        return newest

    def moved(self, old: datetime | None, seen: datetime | None) -> datetime | None:
        """Where the cursor goes after a complete read: forward only, and never past ``until``
        (which also mends a cursor a future-dated value carried away). A full refresh clears
        the old cursor first."""
        new = later(old, seen)
        if new is not None and new > self.until:
            new = self.until
        return new

    def closing_seen(self, seen: datetime | None, upper: datetime | None) -> datetime | None:
        """The newest value a whole window read shows: for a late-change read, the window's
        upper bound (the API filtered exactly this window on the event's time: all of it is
        in, whatever the rows' dates, so the next read starts there)."""
        if self.stream.changed_by_event is not None:
            return later(seen, upper)
        return seen

    def refuse_ignored_filter(
        self, rows: list[dict], lower: datetime | None, upper: datetime | None
    ) -> None:
        """On a late-change read: FilterIgnored when the page holds a row with no such event
        in the window asked for (the filter was ignored, and the read would page through the
        whole history every run). Checked before anything of the page is written. A row
        whose newest such event is later (a second refund during the run) is not one."""
        kind = self.stream.changed_by_event
        if kind is not None and not all(has_event_within(row, kind, lower, upper) for row in rows):
            raise FilterIgnored(self.stream.lower_param or "")
