"""Reading one window ``[lower, upper]`` of a stream: one slice, or concurrent slices.

An incremental run reads its window as one slice, page after page (the next page fetched while
this one is written). A window read from the beginning or far back (a first sync, a full
refresh, a reconcile, a late-change read after an outage) may be cut into slices read at the
same time: a list API answers one page per round trip, and a backfill of 10 million
transactions at 150 ms a page takes hours one page after another.

- **Slices follow the data, by bisection.** The window starts as one slice. A slice asks for
  its first page; when that page is the last, the slice is done in one request. When more
  follow and the page's dates cover a small part of the slice (a list in date order: the slice
  holds many pages), the slice is cut in two at its middle (while there are fewer than
  ``max_slices``), and each half starts over: so a dense stretch is cut until every worker has
  a slice, and a sparse one is read in turn. The page that showed the density is not written
  (each half reads it again). A list in no date order gives no such estimate: it is read in one
  slice. Nor is a slice cut when its first page came in less than 50 ms: on a fast network,
  concurrency costs more CPU than the round trips it saves.
- **Each slice commits its own resume point**, in the same transaction as its page (the
  state's ``resume`` holds every slice: its bounds, its next page, whether it is done, and the
  newest value it read). The stream's cursor moves only with the commit of the last slice: a
  crashed run resumes every slice where it stopped, and never skips a row.
- **Requests go through the account's adaptive limit** (``prefect_dintero.http.adaptive_limit``):
  the slices are workers, the limit says how many may have a request in flight.

Pages are written one at a time (one writer per stream): the round trips overlap, the writes,
a small share of the time, do not.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from queue import Queue
from typing import Any

from ..errors import DinteroAPIError
from ..redact import get_logger
from ..streams.paginators import Page
from ..streams.state import PageWrite, StreamState, with_state
from ..times import iso, parse_datetime
from .cursor import later
from .options import EARLIEST_START
from .stream_run import StreamRun
from .stream_summary import StreamSummary

logger = get_logger(__name__)

#: A slice shorter than this is never cut (timestamps have millisecond precision).
MIN_SPAN = timedelta(seconds=1)
#: A slice is cut only when its first page suggests at least this many pages: a cut costs
#: about three requests (the page read again, one more last page, one more part-filled page).
MIN_PAGES_TO_CUT = 16
#: A slice is cut only when its first page took at least this long to come: concurrency pays
#: for round trips; on a fast network the pages are read in turn (with the next one fetched
#: while this one is written), which costs less CPU.
MIN_WAIT_TO_CUT = 0.05
#: Over how long a first sync judges whether the account is dense enough to cut.
HORIZON = timedelta(days=30)


@dataclass(frozen=True)
class Slice:
    """Part of a window: ``[lo, hi]`` (None: from the beginning, or to no bound), where it
    stands."""

    lo: datetime | None
    hi: datetime | None
    resume: dict[str, Any] | None = None
    done: bool = False
    seen: datetime | None = None

    @property
    def key(self) -> str:
        return f"{iso(self.lo) or ''}|{iso(self.hi)}"

    def halves(self) -> tuple[Slice, Slice] | None:
        """The slice cut at its middle, or None when it is too short (or open) to cut."""
        if self.hi is None:
            return None
        base = self.lo if self.lo is not None else min(EARLIEST_START, self.hi - MIN_SPAN)
        if self.hi - base < 2 * MIN_SPAN:
            return None
        middle = base + (self.hi - base) / 2
        # Whole milliseconds, as the filter is sent, so the saved bounds are the ones asked for.
        middle -= timedelta(microseconds=middle.microsecond % 1000)
        # The halves share their boundary: a row dated exactly there is read twice (the upsert
        # takes it once), and no row can fall between them, whatever precision Dintero's
        # timestamps have (its reference says neither that nor how exact .gte/.lte are).
        return Slice(self.lo, middle), Slice(middle, self.hi)

    def to_json(self) -> dict[str, Any]:
        return {
            "lo": iso(self.lo),
            "hi": iso(self.hi),
            "resume": self.resume,
            "done": self.done,
            "seen": iso(self.seen),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Slice:
        return cls(
            lo=parse_datetime(data.get("lo")),
            hi=parse_datetime(data.get("hi")),
            resume=data.get("resume"),
            done=bool(data.get("done")),
            seen=parse_datetime(data.get("seen")),
        )


def even_slices(lower: datetime, upper: datetime, n: int) -> list[Slice]:
    """``[lower, upper]`` cut in ``n`` slices of equal span (sharing their bounds, as halves
    do): for a list in no order of the filtered time (a late-change read), where a first
    page tells nothing of the density."""
    n = max(1, min(n, int((upper - lower) / MIN_SPAN)))
    step = (upper - lower) / n
    bounds = [lower + step * i for i in range(n)] + [upper]
    bounds = [b - timedelta(microseconds=b.microsecond % 1000) for b in bounds[:-1]] + [upper]
    return [Slice(lo, hi) for lo, hi in itertools.pairwise(bounds) if hi > lo]


def saved_slices(resume: Any) -> list[Slice] | None:
    """The slices a state's ``resume`` holds, or None when it holds one page cursor."""
    if isinstance(resume, dict) and isinstance(resume.get("slices"), list):
        return [Slice.from_json(s) for s in resume["slices"]]
    return None


def resumed_slices(state: StreamState) -> list[Slice]:
    """Where an unfinished window stands: its slices, or (a state written by an older version,
    which saved one page cursor) the window as one slice resuming at that page."""
    saved = saved_slices(state.resume)
    if saved is not None:
        return saved
    return [Slice(state.window_lower, state.window_upper, state.resume, seen=state.max_seen)]


class WindowReader:
    """Reads the window ``[lower, upper]`` of a stream's run, in slices, and commits each page
    with where every slice stands.

    Args:
        run: the stream's run (its pages, its commits, its cursor).
        lower, upper: the window.
        slices: where an unfinished window stands; None starts with one slice.
        reset: a full refresh: the old cursor is forgotten with the first commit.
        summary: counted into.
        workers: how many slices are read at once (the adaptive limit bounds the requests).
        max_slices: how many slices the window may be cut into (1: never cut).
    """

    def __init__(
        self,
        run: StreamRun,
        lower: datetime | None,
        upper: datetime | None,
        *,
        slices: list[Slice] | None,
        reset: bool,
        summary: StreamSummary,
        workers: int = 1,
        max_slices: int = 1,
    ) -> None:
        self.run = run
        self.lower, self.upper = lower, upper
        self.slices: dict[str, Slice] = {
            s.key: s for s in (slices if slices is not None else [Slice(lower, upper)])
        }
        self.reset = reset and slices is None
        self.summary = summary
        self.workers = max(1, workers)
        self.max_slices = max(1, max_slices)
        self._lock = threading.Lock()  # the slices and the summary's outside_window
        self._failure: BaseException | None = None
        self._stop = threading.Event()
        self._todo: Queue[Slice | None] = Queue()
        self._open = 0
        #: Pages read, in each slice's order, for the one writer: the thread that called
        #: :meth:`read` (a database connection stays in its thread). At most two wait, and one
        #: in each worker's hands: memory stays flat.
        self._read_pages: Queue[tuple[Page, Slice] | None] = Queue(maxsize=min(2, self.workers))

    def read(self) -> None:
        pending = [s for s in self.slices.values() if not s.done]
        if not pending:
            self._commit(None, None)  # every slice was in: only the cursor is left to move
            return
        for s in pending:
            self._put(s)
        threads = [
            threading.Thread(target=self._work, name=f"dintero-slice-{n}", daemon=True)
            for n in range(self.workers)
        ]
        for t in threads:
            t.start()
        left = len(threads)
        while left:
            item = self._read_pages.get()
            if item is None:  # a worker left
                left -= 1
            elif not self._stop.is_set():
                try:
                    self._commit(*item)
                except BaseException as exc:
                    self._fail(exc)
        for t in threads:
            t.join()
        if self._failure is not None:
            raise self._failure

    def _fail(self, exc: BaseException) -> None:
        """The first failure ends the read: the others stop before their next request."""
        with self._lock:
            if self._failure is None:
                self._failure = exc
        self._stop.set()
        self._todo.put(None)

    # -- workers -----------------------------------------------------------------------------

    def _put(self, s: Slice) -> None:
        with self._lock:
            self._open += 1
        self._todo.put(s)

    def _work(self) -> None:
        try:
            while True:
                s = self._todo.get()
                if s is None or self._stop.is_set():
                    self._todo.put(None)  # wake the next worker to leave too
                    return
                try:
                    self._read(s)
                except BaseException as exc:
                    self._fail(exc)
                    return
                with self._lock:
                    self._open -= 1
                    finished = self._open == 0
                if finished:
                    self._todo.put(None)
        finally:
            self._read_pages.put(None)

    def _read(self, s: Slice) -> None:
        try:
            self._page(s)
        except DinteroAPIError as exc:
            if s.resume is None or exc.status_code != 400:
                raise
            # A resume token the API no longer accepts: the slice starts over (upserts dedupe).
            logger.warning(
                "%s: a saved page cursor was refused (%s); re-reading its slice",
                self.run.label,
                exc.message,
            )
            fresh = replace(s, resume=None)
            with self._lock:
                self.slices[s.key] = fresh
                if len(self.slices) == 1:
                    self.summary.resumed = False  # the whole window is read again
            self._page(fresh)

    def _page(self, s: Slice) -> None:
        run = self.run
        # The bounds a row is checked against: the API's filter when it has one.
        asked = (s.lo, s.hi) if run.stream.filtered_by_api else (None, None)
        walk = run.pages(
            run.stream.paginator(run.page_size, s.lo, run.cursor.until),
            lower=s.lo,
            upper=s.hi,
            resume=s.resume,
        )
        first = s.resume is None
        asked_at = time.monotonic()
        for page in walk:
            if self._stop.is_set():
                return
            if (
                first
                and self.max_slices > 1
                and page.next_params is not None
                and time.monotonic() - asked_at >= MIN_WAIT_TO_CUT
                and (halves := self._cut(s, page))
            ):
                # Dense: the halves are read instead, each from its start.
                for half in halves:
                    self._put(half)
                return
            first = False
            page = run.protect(page)
            with self._lock:
                newest = run.cursor.newest_in_window(page.rows, *asked, self.summary)
            run.cursor.refuse_ignored_filter(page.rows, self.lower, self.upper)
            last = page.next_params is None
            s = replace(
                s,
                resume=None if last else page.next_params,
                done=last,
                seen=later(s.seen, newest),
            )
            self._read_pages.put((page, s))
            if last:
                return

    def _cut(self, s: Slice, page: Page) -> tuple[Slice, Slice] | None:
        """The halves to read instead of ``s``, when its first page shows it dense enough to be
        worth a cut, and there are fewer than ``max_slices``; else None."""
        if self._estimated_pages(s, page) < MIN_PAGES_TO_CUT:
            return None
        with self._lock:
            if len(self.slices) >= self.max_slices:
                return None
            halves = s.halves()
            if halves is None:
                return None
            del self.slices[s.key]
            for half in halves:
                self.slices[half.key] = half
            return halves

    def _estimated_pages(self, s: Slice, page: Page) -> float:
        """How many pages the slice holds, judged from its first (full) page: when the list
        comes in date order, that page covers a short stretch of a dense slice. A page whose
        dates spread over most of the slice (a list in no date order) says nothing: 1."""
        dates = [d for r in page.rows if (d := parse_datetime(self.run.stream.changed_at(r)))]
        if len(dates) < 2:
            return 1.0
        # From the beginning (a first sync): how far back the data goes is unknown, so the
        # density is judged over the last HORIZON; only a dense account is cut (and then from
        # the earliest date Dintero data can have, where empty halves cost a request each).
        if s.hi is None:
            return 1.0
        span = HORIZON.total_seconds() if s.lo is None else (s.hi - s.lo).total_seconds()
        spread = (max(dates) - min(dates)).total_seconds()
        if span <= 0:
            return 1.0
        return span / max(spread, 0.001)

    # -- the one writer --------------------------------------------------------------------------

    def _commit(self, page: Page | None, s: Slice | None) -> None:
        """Write ``page`` and where slice ``s`` now stands, with every slice's state."""
        run = self.run
        with self._lock:
            if s is not None:
                self.slices[s.key] = s
            slices = list(self.slices.values())
            clear_cursor, self.reset = self.reset, False

        def update(state: StreamState, write: PageWrite) -> StreamState:
            # A full refresh forgets the old cursor with its first page, so a crash mid-way
            # leaves a window whose completion sets the cursor from what it read.
            cursor = None if clear_cursor else state.cursor
            if all(x.done for x in slices):
                seen = None
                for x in slices:
                    seen = later(seen, x.seen)
                return run.window_closed(
                    state, write, cursor, run.cursor.closing_seen(seen, self.upper)
                )
            return with_state(
                state,
                cursor=cursor,
                max_seen=None,
                window_lower=self.lower,
                window_upper=self.upper,
                resume={"slices": [x.to_json() for x in slices]},
                **run.written(state, write),
            )

        run.commit(page, update, self.summary)
