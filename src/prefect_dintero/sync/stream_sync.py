"""Incremental sync of one stream into the sink: windows, cursors, resume, per-page commits.

Window streams (transactions, sessions, settlements, payout transfers) are read in a window
``[cursor - lookback, run start]`` fixed when the window opens, in whatever order the API lists
it. Each page is committed with the place to resume from; the cursor moves only when the whole
window is in, so it is never ahead of the data, and a crashed run's successor resumes the same
window from its last committed page. A read from the beginning or far back may go in concurrent
slices (:mod:`prefect_dintero.sync.window_reader`). Customers are walked by ``since_datetime`` and
their cursor moves with each page. A stream with late-change filters (transactions'
``captured_at`` and ``refunded_at``) is also read by each of them, from its own cursor, after
its window (:meth:`StreamSync.read_late_changes`). Snapshots (payout destinations and balances) are
short lists read whole on every run.

The cursor's arithmetic (where a window starts, what may move it) is :mod:`.cursor`'s; re-read
rows are deduplicated by the upsert.
"""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import datetime, timedelta

from pydantic import SecretStr

from .. import times
from ..client import DinteroClient
from ..errors import DinteroAPIError, NotFoundError, PermissionDeniedError
from ..redact import get_logger
from ..sink import Sink
from ..streams.catalog import LateChangeFilter, Stream
from ..streams.discovery import list_path as payout_destinations_path
from ..streams.discovery import payout_destination_ids
from ..streams.discovery import skipped as discovery_skipped
from ..streams.paginators import (
    Page,
    SinceDatetimePaginator,
    StartingAfterPaginator,
    fetched_ahead,
)
from ..streams.personal_data import PersonalDataPolicy, check_compatible
from ..streams.state import PageWrite, StreamState, with_state
from ..times import iso
from .cursor import FilterIgnored, later
from .options import SyncRequest
from .stream_run import StreamRun
from .stream_summary import ProgressCallback, StreamSummary
from .window_reader import WindowReader, even_slices, resumed_slices

logger = get_logger(__name__)

#: A late-change read further behind than this (after an outage) is read in slices.
LATE_READ_SLICED_AFTER = timedelta(days=1)
#: How long a late-change filter Dintero refused is left alone before it is tried again.
REFUSED_FILTER_PAUSE = timedelta(days=1)


def _starts_full_read(page: Page) -> bool:
    """Whether the page after this one reads the whole list (no since_datetime, no cursor)."""
    nxt = page.next_params
    return nxt is not None and "since_datetime" not in nxt and "starting_after" not in nxt


class StreamSync(StreamRun):
    """Syncs one stream of one account (and one partition) with a client into a sink."""

    def run(self) -> StreamSummary:
        started = time.monotonic()
        before = self.client.stats.snapshot()
        state = self._check_personal_data(
            self.sink.read_state(self.account_id, self.stream.name, self.partition)
        )
        summary = StreamSummary(
            self.stream.name, self.account_id, self.partition, cursor_before=iso(state.cursor)
        )
        if self.stream.incremental == "window":
            self._run_window(state, summary)
        elif self.stream.incremental == "since":
            self._run_since(state, summary)
        else:
            self._run_snapshot(summary)
        after = self.client.stats.snapshot()
        summary.requests = after["requests"] - before["requests"]
        summary.retries = after["retries"] - before["retries"]
        summary.rate_limited = after["rate_limited"] - before["rate_limited"]
        summary.seconds = round(time.monotonic() - started, 3)
        return summary

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

    # -- window streams ----------------------------------------------------------------------

    def _run_window(self, state: StreamState, summary: StreamSummary) -> None:
        lower = self.cursor.lower_bound(state)
        upper: datetime | None = self.run_started_at
        slices = None
        if state.in_progress and not self.request.full_refresh:
            saved_lower = state.window_lower
            covers = saved_lower is None or (lower is not None and saved_lower <= lower)
            if self.request.reconcile is None or covers:
                lower, upper, slices = saved_lower, state.window_upper, resumed_slices(state)
                summary.resumed = True
                logger.info(
                    "%s: resuming the window %s..%s from its last committed page",
                    self.label,
                    iso(lower),
                    iso(upper),
                )
            elif lower is not None and saved_lower is not None:
                # A reconcile run takes in the unfinished window rather than resuming it.
                lower = min(lower, saved_lower)
        workers = max_slices = 1
        if upper is not None and (len(slices or ()) > 1 or self._worth_slicing(state, lower)):
            workers = self.client.credentials.max_concurrent_requests
            max_slices = 2 * workers
            if slices is None and self.stream.changed_by_event is not None and lower is not None:
                # A late-change read lists payments in no order of the event's time: a first
                # page tells nothing of the density, so the window is cut evenly.
                slices = even_slices(lower, upper, workers)
        WindowReader(
            self,
            lower,
            upper,
            slices=slices,
            reset=self.request.full_refresh,
            summary=summary,
            workers=workers,
            max_slices=max_slices,
        ).read()

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
            or state.cursor > self.cursor.until  # not trusted: everything is read again
            or self.request.full_refresh
            or self.request.reconcile is not None
        )

    # -- since streams -----------------------------------------------------------------------

    def _run_since(self, state: StreamState, summary: StreamSummary) -> None:
        lower = self.cursor.lower_bound(state)
        paginator = self.stream.paginator(self.page_size, lower, self.cursor.until)
        if self.request.reconcile is not None and self.stream.deleted_field is not None:
            # Whether since_datetime returns an object deleted after it is not documented:
            # a reconcile reads the whole list (starting_after), which holds every deletion.
            paginator = StartingAfterPaginator(self.page_size)
        asked_lower = (
            lower - SinceDatetimePaginator.STEP
            if isinstance(paginator, SinceDatetimePaginator) and lower is not None
            else None
        )
        clear_cursor, scan_newest = self.request.full_refresh, None
        for page in fetched_ahead(self.pages(paginator)):
            page = self.protect(page)
            scanned = "since_datetime" not in page.params
            if scanned:
                # The whole list, in an order nobody documents: the cursor waits for the end.
                newest = self.cursor.newest_in_window(page.rows, None, None, summary)
                scan_newest = later(scan_newest, newest)
                newest = scan_newest if page.next_params is None else None
            else:
                newest = self.cursor.newest_in_window(page.rows, asked_lower, None, summary)

            def update(
                state: StreamState, write: PageWrite, newest=newest, clear_cursor=clear_cursor
            ) -> StreamState:
                cursor = None if clear_cursor else state.cursor
                return with_state(
                    state, cursor=self.cursor.moved(cursor, newest), **self.written(state, write)
                )

            self.commit(page, update, summary)
            clear_cursor = False
            if not scanned and _starts_full_read(page):
                logger.warning(
                    "%s: more than %d rows share one %s, which since_datetime cannot page past; "
                    "reading the whole list instead",
                    self.label,
                    page.params.get("limit"),
                    self.stream.cursor_field,
                )

    # -- snapshots ---------------------------------------------------------------------------

    def _run_snapshot(self, summary: StreamSummary) -> None:
        """A short list read whole (payout destinations, balances): its rows stamped with the
        run's start and written with the state, whose cursor says how fresh they are."""
        for page in self.pages(self.stream.paginator(self.page_size, None, self.cursor.until)):
            page = self.protect(page)
            page = replace(page, rows=self.stream.stamped(page.rows, self.run_started_at))

            def update(state: StreamState, write: PageWrite) -> StreamState:
                return with_state(state, cursor=self.run_started_at, **self.written(state, write))

            self.commit(page, update, summary)

    # -- late-change reads -------------------------------------------------------------------

    def read_late_changes(self, late: LateChangeFilter) -> StreamSummary | None:
        """Read what changed since the last run by a later event (a capture, a refund), of
        any age: a window on the filter's own cursor, committed and upserted like any other.

        The filters are documented as "subject to change". A 4xx to the read (400, 404, 422)
        is taken for a refusal of the filter: said once, remembered in the read's state, and
        tried again a day later; until then the nightly reconcile is what takes late changes
        in. None: the read was not made (refused within the last day).
        """
        label = f"{self.label} {late.partition}"
        account_id, name, started = self.account_id, self.stream.name, self.run_started_at
        paused_until = self.sink.read_state(account_id, name, late.partition).paused_until
        if paused_until is not None and paused_until > started:
            logger.debug("%s: refused by Dintero until %s; not read", label, iso(paused_until))
            return None
        read = StreamSync(
            self.client,
            self.sink,
            self.stream.late_change_read(late),
            account_id,
            self.request,
            partition=late.partition,
            run_started_at=started,
            on_page=self.on_page,
            personal_data=self.personal_data,
        )
        try:
            return read.run()
        except (DinteroAPIError, FilterIgnored) as exc:
            if isinstance(exc, DinteroAPIError) and exc.status_code not in (400, 404, 422):
                raise
            how = "ignored" if isinstance(exc, FilterIgnored) else f"refused ({exc.status_code})"
            until = started + REFUSED_FILTER_PAUSE
            self.sink.pause(account_id, name, late.partition, until)
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


def sync_account_stream(
    client: DinteroClient,
    sink: Sink,
    stream: Stream,
    account_id: str,
    request: SyncRequest | None = None,
    *,
    run_started_at: datetime | None = None,
    on_page: ProgressCallback | None = None,
    personal_data_key: SecretStr | None = None,
) -> list[StreamSummary]:
    """Sync one stream of one account; one result per partition (payout destination).

    ``request.personal_data`` says what happens to the stream's personal fields (keep, hash,
    drop); ``personal_data_key`` is the HMAC key ``hash`` needs (see
    :mod:`prefect_dintero.streams.personal_data`).

    Examples:
        ```python
        from prefect_dintero.client import DinteroClient
        from prefect_dintero.auth.client_credentials import ClientCredentials
        from prefect_dintero.emulator import running_emulator
        from prefect_dintero.sink import Sink
        from prefect_dintero.streams.catalog import CATALOG
        from prefect_dintero.sync.stream_sync import sync_account_stream

        with running_emulator() as emulator:
            creds = ClientCredentials(**emulator.credential_fields())
            sink = Sink("sqlite://")
            sink.prepare([CATALOG["transactions"]])
            with DinteroClient(creds) as client:
                [result] = sync_account_stream(client, sink, CATALOG["transactions"], "T12345678")
            assert result.inserted == sink.count(CATALOG["transactions"]) == 250
        ```
    """
    request = request or SyncRequest()
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
    syncs = [
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
        )
        for partition in partitions
    ]
    try:
        results = [sync.run() for sync in syncs]
    except (PermissionDeniedError, NotFoundError) as exc:
        path = stream.url_path(account_id)
        if path != payout_destinations_path(account_id):
            raise
        # The payout destinations list itself: the Account Management API, which an API
        # client may not be granted (as for discovering them).
        raise discovery_skipped(exc, path, stream.name) from None
    for late in stream.late_filters:  # transactions: one partition
        read = syncs[0].read_late_changes(late)
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
