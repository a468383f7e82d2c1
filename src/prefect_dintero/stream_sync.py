"""Incremental sync of one stream into the sink: windows, cursors, resume, per-page commits.

Window streams (transactions, sessions, settlements, payout transfers) are read in a window
``[cursor - lookback, run start]`` fixed when the window opens, in whatever order the API lists
it. Each page is committed with the place to resume from; the cursor moves only when the whole
window is in, so it is never ahead of the data, and a crashed run's successor resumes the same
window from its last committed page. A read from the beginning or far back may go in concurrent
slices (:mod:`prefect_dintero.window_slices`). Customers are walked by ``since_datetime`` and
their cursor moves with each page. A stream with late-change filters (transactions'
``captured_at`` and ``refunded_at``) is also read by each of them, from its own cursor, after
its window (:func:`_read_late_changes`). Snapshots (payout destinations and balances) are
short lists read whole on every run.

The cursor is guarded against what an API could send: it never moves past the run's start plus
``CLOCK_SKEW``, never because of a row outside the window that was asked for (such a row is
stored, with a warning naming it), and ``full_refresh`` resets it. Re-read rows are
deduplicated by the upsert.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from pydantic import SecretStr

from . import times
from .adaptive_limit import limit_for
from .client import DinteroClient
from .discovery import list_path as payout_destinations_path
from .discovery import payout_destination_ids
from .discovery import skipped as discovery_skipped
from .errors import DinteroAPIError, DinteroError, NotFoundError, PermissionDeniedError
from .paginators import (
    Page,
    SinceDatetimePaginator,
    StartingAfterPaginator,
    fetched_ahead,
    pages,
)
from .personal_data import KEEP, PersonalDataPolicy, check_compatible
from .redact import get_logger
from .request import SyncRequest
from .sink import Sink
from .stream_state import PageWrite, StreamState, with_state
from .streams import LateChangeFilter, Stream, has_event_within
from .times import CLOCK_SKEW, iso, parse_datetime
from .window_slices import SlicedWindow, even_slices, saved_slices

logger = get_logger(__name__)

#: Rows named in one warning about rows outside the requested window.
WARN_ROWS = 3
#: A late-change read further behind than this (after an outage) is read in slices.
LATE_READ_SLICED_AFTER = timedelta(days=1)


@dataclass
class StreamResult:
    """What syncing one stream (of one account and partition) did."""

    stream: str
    account_id: str
    partition: str = ""
    pages: int = 0
    fetched: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    outside_window: int = 0
    cursor_before: str | None = None
    cursor_after: str | None = None
    resumed: bool = False
    requests: int = 0
    retries: int = 0
    rate_limited: int = 0
    seconds: float = 0.0
    #: The late-change reads made after this one (``captured_at``, ``refunded_at``), each with
    #: its own counts (not in this result's).
    late_reads: list[StreamResult] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


ProgressCallback = Callable[[StreamResult], None]


def _starts_full_read(page: Page) -> bool:
    """Whether the page after this one reads the whole list (no since_datetime, no cursor)."""
    nxt = page.next_params
    return nxt is not None and "since_datetime" not in nxt and "starting_after" not in nxt


def _later(a: datetime | None, b: datetime | None) -> datetime | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


class StreamSync:
    """Syncs one stream of one account (and one partition) with a client into a sink."""

    def __init__(
        self,
        client: DinteroClient,
        sink: Sink,
        stream: Stream,
        account_id: str,
        request: SyncRequest,
        *,
        partition: str = "",
        run_started_at: datetime | None = None,
        run_id: str | None = None,
        on_page: ProgressCallback | None = None,
        personal_data: PersonalDataPolicy = KEEP,
    ) -> None:
        self.client = client
        self.sink = sink
        self.stream = stream
        self.account_id = account_id
        self.request = request
        self.partition = partition
        self.run_started_at = run_started_at or times.now()
        #: The latest a cursor may ever be: the run's start plus the clock skew.
        self.until = self.run_started_at + CLOCK_SKEW
        self.run_id = run_id or uuid.uuid4().hex
        self.on_page = on_page
        self.personal_data = personal_data
        self.page_size = max(1, min(request.page_size, stream.max_page_size))
        self.lookback = (
            request.lookback
            if request.lookback is not None and stream.changed_by_event is None
            else stream.lookback
        )
        self.label = f"{account_id}/{stream.name}" + (f"/{partition}" if partition else "")

    # -- the run ---------------------------------------------------------------------------------

    def run(self) -> StreamResult:
        started = time.monotonic()
        before = self.client.stats.snapshot()
        state = self._check_personal_data(
            self.sink.read_state(self.account_id, self.stream.name, self.partition)
        )
        result = StreamResult(
            self.stream.name,
            self.account_id,
            self.partition,
            cursor_before=iso(state.cursor),
        )
        if self.stream.incremental == "window":
            self._run_window(state, result)
        elif self.stream.incremental == "since":
            self._run_since(state, result)
        else:
            self._run_snapshot(result)
        after = self.client.stats.snapshot()
        result.requests = after["requests"] - before["requests"]
        result.retries = after["retries"] - before["retries"]
        result.rate_limited = after["rate_limited"] - before["rate_limited"]
        result.seconds = round(time.monotonic() - started, 3)
        return result

    def _check_personal_data(self, state: StreamState) -> StreamState:
        """The state to start from, once the destination table's personal-data policy agrees
        with this run's: refused when it differs, whichever account or partition filled the
        table (a column never mixes hashed and plain values), unless this is a full refresh,
        which deletes the whole table first."""
        wanted = self.personal_data.fingerprint
        others = self.sink.personal_data_policies(self.stream) - {wanted}
        if not others:
            return state
        table = self.stream.table_name
        if not self.request.full_refresh:
            check_compatible(sorted(others)[0], self.personal_data, table)
        logger.warning(
            "%s: the destination's %s table was filled under another personal-data policy; "
            "this full refresh deletes the whole table (every account's rows) and reads "
            "everything again; the other accounts read theirs again at their next run",
            self.label,
            table,
        )
        self.sink.start_over(self.stream, self.account_id, self.partition, wanted)
        return self.sink.read_state(self.account_id, self.stream.name, self.partition)

    def _protected(self, page: Page) -> Page:
        """The page with its personal fields hashed or dropped: nothing after this sees them."""
        if self.personal_data.mode == "keep" or not self.stream.personal:
            return page
        return replace(
            page, rows=self.personal_data.apply(page.rows, self.stream.personal), body=None
        )

    def _fetch(self, params: dict[str, Any]) -> Any:
        path = self.stream.url_path(
            self.account_id, self.partition if self.stream.per_destination else None
        )
        return self.client.get_json(path, host=self.stream.host, params=params)

    def _trusted_cursor(self, state: StreamState) -> datetime | None:
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

    def _lower_bound(self, state: StreamState) -> datetime | None:
        cursor = self._trusted_cursor(state)
        if self.stream.changed_by_event is not None:
            # A late-change read starts where it stopped, or (first, or after a full refresh)
            # at this run: what changed before is what the read by created_at and the
            # reconcile are for. It never reads the whole history of captures.
            since = self.run_started_at if cursor is None or self.request.full_refresh else cursor
            late_lower = since - self.lookback
            if self.request.reconcile is not None and self.stream.reconcile_reach is not None:
                # The settlements of the last days' captures and refunds, of any age.
                late_lower = min(late_lower, self.run_started_at - self.stream.reconcile_reach)
            return late_lower
        if self.request.full_refresh or cursor is None:
            lower = self.request.start_date
        else:
            lower = cursor - self.lookback
            if self.request.start_date is not None:
                lower = max(lower, self.request.start_date)
        if self.request.reconcile is not None and lower is not None:
            reconcile = self.run_started_at - self.request.reconcile
            if self.request.start_date is not None:
                reconcile = max(reconcile, self.request.start_date)
            lower = min(lower, reconcile)
        return lower

    def _base_params(self, lower: datetime | None, upper: datetime | None) -> dict[str, Any]:
        params = dict(self.stream.extra_params)
        if self.stream.lower_param and lower is not None:
            params[self.stream.lower_param] = iso(lower)
        if self.stream.upper_param and upper is not None:
            params[self.stream.upper_param] = iso(upper)
        return params

    def _newest_in_window(
        self,
        rows: list[dict],
        lower: datetime | None,
        upper: datetime | None,
        result: StreamResult,
    ) -> datetime | None:
        """The newest cursor value among rows inside ``[lower, upper]`` and not after
        ``until``; rows outside what was asked for are counted and named in a warning."""
        field_name = self.stream.cursor_field
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
            if newest is None or value > newest:
                newest = value
        if outside:
            result.outside_window += len(outside)
            if self.stream.changed_by_event is not None:
                return newest  # a late-change read: its caller refuses the page, and says so
            named = ", ".join(
                f"{row.get(self.stream.primary_key)!s:.80} ({field_name} {iso(value)})"
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

    def _moved_cursor(self, old: datetime | None, seen: datetime | None) -> datetime | None:
        """Where the cursor goes after a complete read: forward only, and never past ``until``
        (which also mends a cursor a future-dated value carried away). A full refresh clears
        the old cursor first."""
        new = _later(old, seen)
        if new is not None and new > self.until:
            new = self.until
        return new

    # -- window streams ----------------------------------------------------------------------------

    def _run_window(self, state: StreamState, result: StreamResult) -> None:
        resume = None
        reset = self.request.full_refresh
        lower = self._lower_bound(state)
        upper: datetime | None = self.run_started_at
        if state.in_progress and not reset:
            saved_lower = state.window_lower
            covers = saved_lower is None or (lower is not None and saved_lower <= lower)
            if self.request.reconcile is None or covers:
                lower, upper, resume = saved_lower, state.window_upper, state.resume
                result.resumed = True
                logger.info(
                    "%s: resuming the window %s..%s from its last committed page",
                    self.label,
                    iso(lower),
                    iso(upper),
                )
            elif lower is not None and saved_lower is not None:
                # A reconcile run takes in the unfinished window rather than resuming it.
                lower = min(lower, saved_lower)
        saved = saved_slices(resume)
        if upper is not None and (
            saved is not None or (resume is None and self._worth_slicing(state, lower))
        ):
            workers = self.client.credentials.max_concurrent_requests
            if saved is None and self.stream.changed_by_event is not None and lower is not None:
                # A late-change read lists payments in no order of the event's time: a first
                # page tells nothing of the density, so the window is cut evenly.
                saved = even_slices(lower, upper, workers)
            SlicedWindow(self, lower, upper, saved, reset, result, workers).run()
            return
        try:
            self._page_window(lower, upper, resume, reset, result)
        except DinteroAPIError as exc:
            if resume is None or exc.status_code != 400:
                raise
            # A resume token the API no longer accepts: re-read the window (upserts dedupe).
            logger.warning(
                "%s: the saved page cursor was refused (%s); re-reading the window",
                self.label,
                exc.message,
            )
            result.resumed = False
            self._page_window(lower, upper, None, reset, result)

    def written(self, state: StreamState, write: PageWrite) -> dict[str, Any]:
        """What every page's commit records besides where the read stands."""
        return dict(
            rows_total=state.rows_total + write.inserted,
            last_run_at=times.now(),
            last_run_id=self.run_id,
            personal_data=self.personal_data.fingerprint,
        )

    def window_closed(
        self, state: StreamState, write: PageWrite, cursor: datetime | None, seen: datetime | None
    ) -> StreamState:
        """The state once a whole window is in: the cursor moved, nothing left to resume."""
        return with_state(
            state,
            cursor=self._moved_cursor(cursor, seen),
            max_seen=None,
            window_lower=None,
            window_upper=None,
            resume=None,
            **self.written(state, write),
        )

    def _worth_slicing(self, state: StreamState, lower: datetime | None) -> bool:
        """Whether to read this window in concurrent slices: a stream the API filters by date,
        more than one request allowed in flight, and a read from the beginning or far back (a
        first sync, a full refresh, a reconcile; a late-change read more than a day behind,
        after an outage). An incremental run reads its pages in turn, as it always did: it
        makes no more requests than before."""
        if not (
            self.stream.filtered_by_api
            and self.stream.cursor_field == "created_at"
            and self.client.credentials.max_concurrent_requests > 1
        ):
            return False
        if self.stream.changed_by_event is not None:
            return lower is not None and self.run_started_at - lower > LATE_READ_SLICED_AFTER
        return (
            state.cursor is None
            or state.cursor > self.until  # not trusted: everything is read again
            or self.request.full_refresh
            or self.request.reconcile is not None
        )

    def refuse_ignored_filter(
        self, page: Page, lower: datetime | None, upper: datetime | None
    ) -> None:
        """On a late-change read: FilterIgnored when the page holds a row with no such event
        in the window asked for (the filter was ignored, and the read would page through the
        whole history every run). Checked before anything of the page is written. A row
        whose newest such event is later (a second refund during the run) is not one."""
        kind = self.stream.changed_by_event
        if kind is not None and not all(
            has_event_within(row, kind, lower, upper) for row in page.rows
        ):
            raise FilterIgnored(self.stream.lower_param or "")

    def closing_seen(self, seen: datetime | None, upper: datetime | None) -> datetime | None:
        """The newest value a whole window read shows: for a late-change read, the window's
        upper bound (the API filtered exactly this window on the event's time: all of it is
        in, whatever the rows' dates, so the next read starts there)."""
        if self.stream.changed_by_event is not None:
            return _later(seen, upper)
        return seen

    def _page_window(
        self,
        lower: datetime | None,
        upper: datetime | None,
        resume: dict[str, Any] | None,
        reset: bool,
        result: StreamResult,
    ) -> None:
        paginator = self.stream.paginator(self.page_size, lower, self.until)
        # The window that was asked for: the API's filter when it has one, else everything.
        asked = (lower, upper) if self.stream.filtered_by_api else (None, None)
        first = True
        for page in fetched_ahead(
            pages(
                self._fetch,
                paginator,
                start_params=resume,
                base_params=self._base_params(lower, upper),
                max_pages=self.request.max_pages,
                check_rows=self.stream.check_keys,
            )
        ):
            page = self._protected(page)
            newest = self._newest_in_window(page.rows, *asked, result)
            self.refuse_ignored_filter(page, lower, upper)
            last = page.next_params is None
            clear_cursor = reset and first and resume is None
            first = False

            def update(
                state: StreamState,
                write: PageWrite,
                newest=newest,
                last=last,
                page=page,
                clear_cursor=clear_cursor,
            ) -> StreamState:
                # A full refresh forgets the old cursor with its first page, so a crash mid-way
                # leaves a window whose completion sets the cursor from what it read.
                cursor = None if clear_cursor else state.cursor
                seen = _later(state.max_seen if state.in_progress else None, newest)
                if last:
                    return self.window_closed(state, write, cursor, self.closing_seen(seen, upper))
                return with_state(
                    state,
                    cursor=cursor,
                    max_seen=seen,
                    window_lower=lower,
                    window_upper=upper,
                    resume=page.next_params,
                    **self.written(state, write),
                )

            self.client.check_run()  # nothing is written once the run must stop
            write, new_state = self.sink.write_page(
                self.stream, self.account_id, self.partition, page.rows, update
            )
            self._count_page(page, write, new_state, result)
            if last:
                return

    # -- since streams -----------------------------------------------------------------------------

    def _run_since(self, state: StreamState, result: StreamResult) -> None:
        lower = self._lower_bound(state)
        reset = self.request.full_refresh
        paginator = self.stream.paginator(self.page_size, lower, self.until)
        if self.request.reconcile is not None and self.stream.deleted_field is not None:
            # Whether since_datetime returns an object deleted after it is not documented:
            # a reconcile reads the whole list (starting_after), which holds every deletion.
            paginator = StartingAfterPaginator(self.page_size)
        asked_lower = (
            lower - SinceDatetimePaginator.STEP
            if isinstance(paginator, SinceDatetimePaginator) and lower is not None
            else None
        )
        first, scan_newest = True, None
        for page in fetched_ahead(
            pages(
                self._fetch,
                paginator,
                base_params=dict(self.stream.extra_params),
                max_pages=self.request.max_pages,
                check_rows=self.stream.check_keys,
            )
        ):
            page = self._protected(page)
            scanned = "since_datetime" not in page.params
            if scanned:
                # The whole list, in an order nobody documents: the cursor waits for the end.
                newest = self._newest_in_window(page.rows, None, None, result)
                scan_newest = _later(scan_newest, newest)
                newest = scan_newest if page.next_params is None else None
            else:
                newest = self._newest_in_window(page.rows, asked_lower, None, result)
            clear_cursor = reset and first
            first = False

            def update(
                state: StreamState, write: PageWrite, newest=newest, clear_cursor=clear_cursor
            ) -> StreamState:
                cursor = None if clear_cursor else state.cursor
                return with_state(
                    state,
                    cursor=self._moved_cursor(cursor, newest),
                    **self.written(state, write),
                )

            self.client.check_run()
            write, new_state = self.sink.write_page(
                self.stream, self.account_id, self.partition, page.rows, update
            )
            self._count_page(page, write, new_state, result)
            if not scanned and _starts_full_read(page):
                logger.warning(
                    "%s: more than %d rows share one %s, which since_datetime cannot page past; "
                    "reading the whole list instead",
                    self.label,
                    page.params.get("limit"),
                    self.stream.cursor_field,
                )

    # -- snapshots ---------------------------------------------------------------------------------

    def _run_snapshot(self, result: StreamResult) -> None:
        """A short list read whole (payout destinations, balances): its rows stamped with the
        run's start and written with the state, whose cursor says how fresh they are."""
        for page in pages(
            self._fetch,
            self.stream.paginator(self.page_size, None, self.until),
            base_params=dict(self.stream.extra_params),
            max_pages=self.request.max_pages,
            check_rows=self.stream.check_keys,
        ):
            page = self._protected(page)
            page = replace(page, rows=self.stream.stamped(page.rows, self.run_started_at))

            def update(state: StreamState, write: PageWrite) -> StreamState:
                return with_state(state, cursor=self.run_started_at, **self.written(state, write))

            self.client.check_run()
            write, new_state = self.sink.write_page(
                self.stream, self.account_id, self.partition, page.rows, update
            )
            self._count_page(page, write, new_state, result)

    # -- bookkeeping -------------------------------------------------------------------------------

    def _count_page(
        self,
        page: Page,
        write: PageWrite,
        state: StreamState,
        result: StreamResult,
    ) -> None:
        result.pages += 1
        result.fetched += len(page.rows)
        result.inserted += write.inserted
        result.updated += write.updated
        result.unchanged += write.unchanged + write.duplicates
        result.cursor_after = iso(state.cursor)
        logger.debug(
            "%s page %d: %d rows (+%d new, %d updated)",
            self.label,
            page.number,
            len(page.rows),
            write.inserted,
            write.updated,
        )
        if self.on_page is not None:
            self.on_page(result)


def sync_stream(
    client: DinteroClient,
    sink: Sink,
    stream: Stream,
    account_id: str,
    request: SyncRequest | None = None,
    *,
    run_started_at: datetime | None = None,
    on_page: ProgressCallback | None = None,
    personal_data_key: SecretStr | None = None,
) -> list[StreamResult]:
    """Sync one stream of one account; one result per partition (payout destination).

    ``request.personal_data`` says what happens to the stream's personal fields (keep, hash,
    drop); ``personal_data_key`` is the HMAC key ``hash`` needs (see
    :mod:`prefect_dintero.personal_data`).

    Examples:
        ```python
        from pydantic import SecretStr
        from prefect_dintero.client import DinteroClient
        from prefect_dintero.client_credentials import ClientCredentials
        from prefect_dintero.emulator import running_emulator
        from prefect_dintero.sink import Sink
        from prefect_dintero.streams import CATALOG
        from prefect_dintero.stream_sync import sync_stream

        with running_emulator() as emulator:
            creds = ClientCredentials(
                account_id="T12345678",
                client_id=emulator.config.client_id,
                client_secret=SecretStr(emulator.config.client_secret),
                api_url=emulator.url,
                checkout_url=emulator.url,
            )
            sink = Sink("sqlite://")
            sink.prepare([CATALOG["transactions"]])
            with DinteroClient(creds) as client:
                [result] = sync_stream(client, sink, CATALOG["transactions"], "T12345678")
            assert result.inserted == sink.count(CATALOG["transactions"]) == 250
        ```
    """
    request = request or SyncRequest()
    if client.limiter is None:  # one per account in the process, shared by its streams
        client.limiter = limit_for(
            account_id, client.credentials.api_url, client.credentials.max_concurrent_requests
        )
    # Checked before any request: hash without a key is refused here.
    policy = PersonalDataPolicy(request.personal_data, personal_data_key)
    partitions = [""]
    if stream.per_destination:
        # Given, or discovered (StreamSkipped when the credentials may not list them).
        partitions = list(request.payout_destinations) or payout_destination_ids(
            client, account_id, stream.name
        )
    run_started_at = run_started_at or times.now()
    request = _reconcile_for(sink, stream, account_id, request, run_started_at)
    try:
        results = [
            StreamSync(
                client,
                sink,
                stream,
                account_id,
                request,
                partition=partition,
                run_started_at=run_started_at,
                on_page=on_page,
                personal_data=policy,
            ).run()
            for partition in partitions
        ]
    except (PermissionDeniedError, NotFoundError) as exc:
        path = stream.url_path(account_id)
        if path != payout_destinations_path(account_id):
            raise
        # The payout destinations list itself: the Account Management API, which an API
        # client may not be granted (as for discovering them).
        raise discovery_skipped(exc, path, stream.name) from None
    for late in stream.late_filters:
        read = _read_late_changes(
            client, sink, stream, late, account_id, request, run_started_at, on_page, policy
        )
        if read is not None:
            results[0].late_reads.append(read)
    return results


#: How far back the reconcile reads a stream whose late-change filters Dintero refuses (or
#: ignores): refunds come months late, and only the reconcile finds them then (90 days, with
#: a missed night to spare).
RECONCILE_WITHOUT_FILTERS = timedelta(days=92)


def _reconcile_for(
    sink: Sink, stream: Stream, account_id: str, request: SyncRequest, run_started_at: datetime
) -> SyncRequest:
    """The request, its reconcile reaching :data:`RECONCILE_WITHOUT_FILTERS` back when one of
    the stream's late-change filters is paused (refused): the reconcile is then what takes
    late refunds in. Where the filters work, it only needs to cover what no filter does."""
    if request.reconcile is None or request.reconcile >= RECONCILE_WITHOUT_FILTERS:
        return request
    refused = [
        late.name
        for late in stream.late_filters
        if (until := sink.read_state(account_id, stream.name, late.partition).paused_until)
        and until > run_started_at
    ]
    if not refused:
        return request
    logger.warning(
        "%s/%s: Dintero refused the %s filter(s): this reconcile reads %d days back instead of "
        "%g, for the late changes no filter brings",
        account_id,
        stream.name,
        " and ".join(refused),
        RECONCILE_WITHOUT_FILTERS.days,
        request.reconcile / timedelta(days=1),
    )
    return request.model_copy(update={"reconcile": RECONCILE_WITHOUT_FILTERS})


class FilterIgnored(DinteroError):
    """A late-change read got rows the filter it asked for would not have let through."""


#: How long a late-change filter Dintero refused is left alone before it is tried again.
REFUSED_FILTER_PAUSE = timedelta(days=1)


def _read_late_changes(
    client: DinteroClient,
    sink: Sink,
    stream: Stream,
    late: LateChangeFilter,
    account_id: str,
    request: SyncRequest,
    run_started_at: datetime,
    on_page: ProgressCallback | None,
    policy: PersonalDataPolicy,
) -> StreamResult | None:
    """Read what changed since the last run by a later event (a capture, a refund), of any
    age: a window on the filter's own cursor, committed and upserted like any other.

    The filters are documented as "subject to change". A 4xx to the read (400, 404, 422) is
    taken for a refusal of the filter: said once, remembered in the read's state, and tried
    again a day later; until then the nightly reconcile is what takes late changes in. None:
    the read was not made (refused within the last day).
    """
    label = f"{account_id}/{stream.name} {late.partition}"
    state = sink.read_state(account_id, stream.name, late.partition)
    if state.paused_until is not None and state.paused_until > run_started_at:
        logger.debug("%s: refused by Dintero until %s; not read", label, iso(state.paused_until))
        return None
    read = StreamSync(
        client,
        sink,
        stream.late_change_read(late),
        account_id,
        request,
        partition=late.partition,
        run_started_at=run_started_at,
        on_page=on_page,
        personal_data=policy,
    )
    try:
        return read.run()
    except (DinteroAPIError, FilterIgnored) as exc:
        if isinstance(exc, DinteroAPIError) and exc.status_code not in (400, 404, 422):
            raise
        how = "ignored" if isinstance(exc, FilterIgnored) else f"refused ({exc.status_code})"
        until = run_started_at + REFUSED_FILTER_PAUSE
        sink.pause(account_id, stream.name, late.partition, until)
        logger.warning(
            "%s: Dintero %s the %s filter; late %s are left to the nightly reconcile "
            "(reconcile_days) until it is tried again, after %s",
            label,
            how,
            late.name,
            "captures" if late.event == "CAPTURE" else f"{late.event.lower()}s",
            iso(until),
        )
        return None
