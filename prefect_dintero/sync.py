"""Incremental sync of one stream into the sink: windows, resume, and per-page commits.

Newest-first streams (transactions, sessions, settlements, payout transfers) are read in a
window ``[cursor - lookback, run start]`` fixed when the window opens. Each page is committed
with the place to resume from; the cursor moves only when the whole window is in, to the newest
value seen, so it can never be ahead of the data. A crashed run's successor resumes the same
window from its last committed page. Oldest-first streams (customers) move the cursor with each
page. Re-read rows at window boundaries are deduplicated by the upsert.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from .client import DinteroClient
from .errors import ConfigurationError, DinteroAPIError
from .paginators import DEFAULT_MAX_PAGES, Page, pages
from .redact import get_logger
from .sink import PageWrite, Sink, StreamState, iso, parse_datetime, with_state
from .streams import Stream

logger = get_logger(__name__)


@dataclass
class SyncOptions:
    """How to sync.

    Attributes:
        page_size: rows asked for per page (capped at each endpoint's maximum).
        lookback: re-read this far before the saved cursor; None uses each stream's default
            (transactions 3 days: they change status for days after creation).
        full_refresh: ignore the saved cursor and any unfinished window.
        start_date: the oldest data a first (or full) sync reads; None reads everything.
        payout_destinations: the payout destinations whose transfers to sync.
        max_pages: a hard page cap per window (a safety net, never reached in practice).
    """

    page_size: int = 100
    lookback: timedelta | None = None
    full_refresh: bool = False
    start_date: datetime | None = None
    payout_destinations: list[str] = field(default_factory=list)
    max_pages: int = DEFAULT_MAX_PAGES


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
    cursor_before: str | None = None
    cursor_after: str | None = None
    resumed: bool = False
    requests: int = 0
    retries: int = 0
    rate_limited: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


ProgressCallback = Callable[[StreamResult], None]


def _newest(rows: list[dict], field_name: str) -> datetime | None:
    values = [parse_datetime(r.get(field_name)) for r in rows]
    values = [v for v in values if v is not None]
    return max(values) if values else None


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
        options: SyncOptions,
        *,
        partition: str = "",
        run_started_at: datetime | None = None,
        run_id: str | None = None,
        on_page: ProgressCallback | None = None,
    ) -> None:
        self.client = client
        self.sink = sink
        self.stream = stream
        self.account_id = account_id
        self.options = options
        self.partition = partition
        self.run_started_at = run_started_at or datetime.now(UTC)
        self.run_id = run_id or uuid.uuid4().hex
        self.on_page = on_page
        self.page_size = max(1, min(options.page_size, stream.max_page_size))
        self.lookback = options.lookback if options.lookback is not None else stream.lookback

    # -- the run ---------------------------------------------------------------------------------

    def run(self) -> StreamResult:
        started = time.monotonic()
        before = self.client.stats.snapshot()
        state = self.sink.read_state(self.account_id, self.stream.name, self.partition)
        result = StreamResult(
            self.stream.name,
            self.account_id,
            self.partition,
            cursor_before=iso(state.cursor),
        )
        if self.stream.order == "desc":
            self._run_window(state, result)
        else:
            self._run_ascending(state, result)
        after = self.client.stats.snapshot()
        result.requests = after["requests"] - before["requests"]
        result.retries = after["retries"] - before["retries"]
        result.rate_limited = after["rate_limited"] - before["rate_limited"]
        result.seconds = round(time.monotonic() - started, 3)
        return result

    def _fetch(self, params: dict[str, Any]) -> Any:
        path = self.stream.url_path(self.account_id, self.partition or None)
        return self.client.get_json(path, host=self.stream.host, params=params)

    def _lower_bound(self, state: StreamState) -> datetime | None:
        if self.options.full_refresh or state.cursor is None:
            return self.options.start_date
        lower = state.cursor - self.lookback
        if self.options.start_date is not None:
            lower = max(lower, self.options.start_date)
        return lower

    def _base_params(self, lower: datetime | None, upper: datetime | None) -> dict[str, Any]:
        params = dict(self.stream.extra_params)
        if self.stream.lower_param and lower is not None:
            params[self.stream.lower_param] = iso(lower)
        if self.stream.upper_param and upper is not None:
            params[self.stream.upper_param] = iso(upper)
        return params

    # -- newest first: a fixed window --------------------------------------------------------------

    def _run_window(self, state: StreamState, result: StreamResult) -> None:
        resume = None
        if state.in_progress and not self.options.full_refresh:
            lower, upper, resume = state.window_lower, state.window_upper, state.resume
            result.resumed = True
            logger.info(
                "%s/%s: resuming the window %s..%s from its last committed page",
                self.account_id,
                self.stream.name,
                iso(lower),
                iso(upper),
            )
        else:
            lower, upper = self._lower_bound(state), self.run_started_at
        try:
            self._page_window(lower, upper, resume, result)
        except DinteroAPIError as exc:
            if resume is None or exc.status_code != 400:
                raise
            # A resume token the API no longer accepts: re-read the window (upserts dedupe).
            logger.warning(
                "%s/%s: the saved page cursor was refused (%s); re-reading the window",
                self.account_id,
                self.stream.name,
                exc.message,
            )
            result.resumed = False
            self._page_window(lower, upper, None, result)

    def _page_window(
        self,
        lower: datetime | None,
        upper: datetime | None,
        resume: dict[str, Any] | None,
        result: StreamResult,
    ) -> None:
        paginator = self.stream.paginator(self.page_size, iso(lower))
        filtered_by_api = self.stream.lower_param is not None
        for page in pages(
            self._fetch,
            paginator,
            start_params=resume,
            base_params=self._base_params(lower, upper),
            max_pages=self.options.max_pages,
        ):
            rows = page.rows
            last = page.next_params is None
            if not filtered_by_api:
                rows, passed_window = self._clip(rows, lower, upper)
                last = last or passed_window
            self._commit_window_page(page, rows, lower, upper, last, result)
            if last:
                return

    def _clip(
        self, rows: list[dict], lower: datetime | None, upper: datetime | None
    ) -> tuple[list[dict], bool]:
        """Rows inside the window, and whether the newest-first list has passed below it."""
        kept, passed = [], False
        for row in rows:
            value = parse_datetime(row.get(self.stream.cursor_field))
            if value is not None and upper is not None and value > upper:
                continue
            if value is not None and lower is not None and value < lower:
                passed = True
                continue
            kept.append(row)
        return kept, passed

    def _commit_window_page(
        self,
        page: Page,
        rows: list[dict],
        lower: datetime | None,
        upper: datetime | None,
        last: bool,
        result: StreamResult,
    ) -> None:
        newest = _newest(rows, self.stream.cursor_field)

        def update(state: StreamState, write: PageWrite) -> StreamState:
            seen = _later(state.max_seen if state.in_progress else None, newest)
            common = dict(
                rows_total=state.rows_total + write.inserted,
                last_run_at=datetime.now(UTC),
                last_run_id=self.run_id,
            )
            if last:
                # The whole window is in: the cursor may move, but only forward.
                return with_state(
                    state,
                    cursor=_later(state.cursor, seen),
                    max_seen=None,
                    window_lower=None,
                    window_upper=None,
                    resume=None,
                    **common,
                )
            return with_state(
                state,
                max_seen=seen,
                window_lower=lower,
                window_upper=upper,
                resume=page.next_params,
                **common,
            )

        write, new_state = self.sink.write_page(
            self.stream, self.account_id, self.partition, rows, update
        )
        self._account(page, rows, write, new_state, result)

    # -- oldest first: the cursor moves with each page ---------------------------------------------

    def _run_ascending(self, state: StreamState, result: StreamResult) -> None:
        lower = self._lower_bound(state)
        upper = self.run_started_at
        paginator = self.stream.paginator(self.page_size, iso(lower))
        for page in pages(self._fetch, paginator, max_pages=self.options.max_pages):
            rows, beyond = [], False
            for row in page.rows:
                value = parse_datetime(row.get(self.stream.cursor_field))
                if value is not None and value > upper:
                    beyond = True  # changed after the run started: the next run takes it
                    continue
                rows.append(row)
            newest = _newest(rows, self.stream.cursor_field)

            def update(state: StreamState, write: PageWrite, newest=newest) -> StreamState:
                return with_state(
                    state,
                    cursor=_later(state.cursor, newest),
                    rows_total=state.rows_total + write.inserted,
                    last_run_at=datetime.now(UTC),
                    last_run_id=self.run_id,
                )

            write, new_state = self.sink.write_page(
                self.stream, self.account_id, self.partition, rows, update
            )
            self._account(page, rows, write, new_state, result)
            if beyond:
                return

    # -- bookkeeping -------------------------------------------------------------------------------

    def _account(
        self,
        page: Page,
        rows: list[dict],
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
            "%s/%s page %d: %d rows (+%d new, %d updated)",
            self.account_id,
            self.stream.name,
            page.number,
            len(rows),
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
    options: SyncOptions | None = None,
    *,
    run_started_at: datetime | None = None,
    on_page: ProgressCallback | None = None,
) -> list[StreamResult]:
    """Sync one stream of one account; one result per partition (payout destination).

    Examples:
        ```python
        from pydantic import SecretStr
        from prefect_dintero.client import DinteroClient
        from prefect_dintero.credentials import ClientCredentials
        from prefect_dintero.emulator import running_emulator
        from prefect_dintero.sink import Sink
        from prefect_dintero.streams import CATALOG
        from prefect_dintero.sync import sync_stream

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
    options = options or SyncOptions()
    partitions = [""]
    if stream.per_destination:
        partitions = list(options.payout_destinations)
        if not partitions:
            raise ConfigurationError(
                f"{stream.name} needs payout destination ids: pass payout_destinations=[...]"
            )
    run_started_at = run_started_at or datetime.now(UTC)
    return [
        StreamSync(
            client,
            sink,
            stream,
            account_id,
            options,
            partition=partition,
            run_started_at=run_started_at,
            on_page=on_page,
        ).run()
        for partition in partitions
    ]
