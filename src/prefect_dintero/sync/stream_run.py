"""One stream of one account (and partition) as a run reads it: its pages, and each page's
commit with where the read stands. The readers (:mod:`.window_reader`, :mod:`.stream_sync`)
work through this, never through the client or the sink directly."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime
from typing import Any

from .. import times
from ..client import DinteroClient
from ..redact import get_logger
from ..sink import Sink
from ..streams.catalog import Stream
from ..streams.paginators import Page, Paginator, pages
from ..streams.personal_data import KEEP, PersonalDataPolicy
from ..streams.state import PageWrite, StreamState, with_state
from ..times import iso
from .cursor import WindowCursor
from .options import SyncRequest
from .stream_summary import ProgressCallback, StreamSummary

logger = get_logger(__name__)

#: How a page's commit changes the stream's state (given the state before and what the page
#: did), inside the page's transaction.
StateUpdate = Callable[[StreamState, PageWrite], StreamState]


class StreamRun:
    """One stream of one account (and one partition) in one run: what its readers share."""

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
        self.run_id = uuid.uuid4().hex  # this stream's read, in its state's last_run_id
        self.on_page = on_page
        self.personal_data = personal_data
        self.page_size = max(1, min(request.page_size, stream.max_page_size))
        self.label = f"{account_id}/{stream.name}" + (f"/{partition}" if partition else "")
        self.cursor = WindowCursor(stream, request, self.run_started_at, self.label)

    # -- reading -----------------------------------------------------------------------------

    def pages(
        self,
        paginator: Paginator,
        *,
        lower: datetime | None = None,
        upper: datetime | None = None,
        resume: dict[str, Any] | None = None,
        filtered: bool = True,
    ) -> Iterator[Page]:
        """The stream's pages from ``resume`` (or the start), within ``[lower, upper]`` where
        the API filters (``filtered``), each checked (every row has its key)."""
        params = dict(self.stream.extra_params)
        if filtered and self.stream.lower_param and lower is not None:
            params[self.stream.lower_param] = iso(lower)
        if filtered and self.stream.upper_param and upper is not None:
            params[self.stream.upper_param] = iso(upper)
        return pages(
            self._fetch,
            paginator,
            start_params=resume,
            base_params=params,
            max_pages=self.request.max_pages,
            check_rows=self.stream.check_keys,
        )

    def _fetch(self, params: dict[str, Any]) -> Any:
        path = self.stream.url_path(
            self.account_id, self.partition if self.stream.per_destination else None
        )
        return self.client.get_json(path, host=self.stream.host, params=params)

    def protect(self, page: Page) -> Page:
        """The page with its personal fields hashed or dropped: nothing after this sees them."""
        if self.personal_data.mode == "keep" or not self.stream.personal:
            return page
        return replace(
            page, rows=self.personal_data.apply(page.rows, self.stream.personal), body=None
        )

    # -- committing --------------------------------------------------------------------------

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
            cursor=self.cursor.moved(cursor, seen),
            max_seen=None,
            window_lower=None,
            window_upper=None,
            resume=None,
            **self.written(state, write),
        )

    def commit(self, page: Page | None, update: StateUpdate, summary: StreamSummary) -> None:
        """Write ``page`` (None: the state alone) and the state ``update`` makes, in one
        transaction, and count it. Nothing is written once the run must stop."""
        self.client.check_run()
        write, state = self.sink.write_page(
            self.stream, self.account_id, self.partition, page.rows if page else [], update
        )
        summary.cursor_after = iso(state.cursor)
        if page is None:
            return
        summary.pages += 1
        summary.fetched += len(page.rows)
        summary.inserted += write.inserted
        summary.updated += write.updated
        summary.unchanged += write.unchanged + write.duplicates
        logger.debug(
            "%s page %d: %d rows (+%d new, %d updated)",
            self.label,
            page.number,
            len(page.rows),
            write.inserted,
            write.updated,
        )
        if self.on_page is not None:
            self.on_page(summary)
