"""One small class per Dintero pagination style.

A paginator knows three things: the parameters of the first page, how to read a page's rows out
of a body (rejecting bodies of the wrong shape), and the parameters of the next page (None when
done). The loop that drives them (``pages``) detects a cursor that repeats and stops at a hard
page cap with an error, so a misbehaving API can never make a sync loop forever.

Dintero's API reference documents neither the order of its lists nor when a page is the last
one (https://docs.dintero.com/api-reference), so no paginator here relies on either: bare
arrays end on an empty page, never on a short one, and envelopes end when their cursor is
missing or empty (the schemas mark ``items``, ``entries``, ``last_evaluated_key`` and
``next_page_token`` optional, so a missing list is an empty one).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from ..errors import DinteroError, MalformedResponseError
from ..times import EPOCH, iso, parse_datetime

DEFAULT_MAX_PAGES = 100_000


class PaginationError(DinteroError):
    """Paging cannot go on safely: a repeated cursor or the page cap."""


class MalformedPageError(MalformedResponseError):
    """A page whose body is not the documented shape (nothing from it is written)."""

    def __init__(self, message: str, **kwargs: Any) -> None:
        kwargs.setdefault("hint", "Nothing from this page was written and the cursor did not move")
        super().__init__(message, **kwargs)

    def _render(self) -> str:
        if self.status_code is not None:
            return super()._render()
        where = f" ({self.method} {self.url})" if self.method and self.url else ""
        return f"Dintero sent a malformed page: {self.message}{where}. {self.hint}"


class Paginator:
    """Base of the pagination styles. ``limit`` is the page size asked for."""

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def first_params(self) -> dict[str, Any]:
        return {"limit": self.limit}

    def rows(self, body: Any) -> list[dict]:
        raise NotImplementedError

    def next_params(self, body: Any, rows: list[dict]) -> dict[str, Any] | None:
        raise NotImplementedError

    @staticmethod
    def _require_rows(value: Any, where: str) -> list[dict]:
        if not isinstance(value, list) or not all(isinstance(r, dict) for r in value):
            raise MalformedPageError(f"expected {where} to be a list of objects")
        return value

    @classmethod
    def _envelope_rows(cls, body: Any, key: str) -> list[dict]:
        if not isinstance(body, dict):
            raise MalformedPageError(f"expected an object with an optional {key!r} list")
        value = body.get(key)
        return [] if value is None else cls._require_rows(value, repr(key))


def page_token(row: dict, id_field: str = "id") -> str:
    """What ``starting_after`` takes after ``row``: Dintero's docs call it "an object ID" and,
    for customers, a ``paging_token`` without saying where it is sent; a row's own
    ``paging_token`` wins when there is one."""
    token = row.get("paging_token") or row.get(id_field)
    if not isinstance(token, str) or not token:
        raise MalformedPageError(f"the last row has no {id_field!r} to page from")
    return token


class StartingAfterPaginator(Paginator):
    """Bare arrays paged with ``starting_after=<id of the last row>``; an empty page is the last.

    Transactions and sessions. A short page is not taken as the last: nothing documents it.
    """

    def __init__(self, limit: int, id_field: str = "id") -> None:
        super().__init__(limit)
        self.id_field = id_field

    def rows(self, body: Any) -> list[dict]:
        return self._require_rows(body, "the response")

    def next_params(self, body: Any, rows: list[dict]) -> dict[str, Any] | None:
        if not rows:
            return None
        return {"limit": self.limit, "starting_after": page_token(rows[-1], self.id_field)}


class LastEvaluatedKeyPaginator(Paginator):
    """``{items, last_evaluated_key}`` envelopes (settlements); no key means the last page.

    The key's date is ``settled_at``, or ``created_at`` when filtering on ``item_created_at``.
    """

    def __init__(self, limit: int, date_field: str = "created_at") -> None:
        super().__init__(limit)
        self.date_field = date_field

    def rows(self, body: Any) -> list[dict]:
        return self._envelope_rows(body, "items")

    def next_params(self, body: Any, rows: list[dict]) -> dict[str, Any] | None:
        key = body.get("last_evaluated_key")
        if not key:
            return None
        if not isinstance(key, dict) or not key.get("id") or not key.get(self.date_field):
            raise MalformedPageError(f"last_evaluated_key lacks id or {self.date_field}")
        return {
            "limit": self.limit,
            "starting_after_id": key["id"],
            "starting_after_date": key[self.date_field],
        }


class NextPageTokenPaginator(Paginator):
    """``{entries, next_page_token}`` envelopes (v2 payout transfers), ``page=<token>``."""

    def rows(self, body: Any) -> list[dict]:
        return self._envelope_rows(body, "entries")

    def next_params(self, body: Any, rows: list[dict]) -> dict[str, Any] | None:
        token = body.get("next_page_token")
        if not token:
            return None
        if not isinstance(token, str):
            raise MalformedPageError("next_page_token is not a string")
        return {"limit": self.limit, "page": token}


#: Keys that would say a list goes on; none is documented for the lists read whole.
MORE_PAGES_KEYS = ("next_page_token", "last_evaluated_key", "starting_after", "paging_token")


def refuse_more_pages(body: Any, what: str) -> None:
    """MalformedPageError when a list read whole says more pages follow: no paging is
    documented for it, so reading its first page alone would lose the rest without a word."""
    keys = [key for key in MORE_PAGES_KEYS if isinstance(body, dict) and body.get(key)]
    if keys:
        raise MalformedPageError(
            f"{what} says more pages follow ({', '.join(keys)}), but Dintero documents no "
            "paging for it"
        )


class WholeListPaginator(Paginator):
    """A short list answered whole (payout destinations, balances): no ``limit``, one page.
    The envelope is not always documented, so ``{key: [...]}`` and a bare array are both
    read (a missing key is an empty list, as for the other envelopes)."""

    def __init__(self, key: str) -> None:
        super().__init__(0)
        self.key = key

    def first_params(self) -> dict[str, Any]:
        return {}

    def rows(self, body: Any) -> list[dict]:
        if isinstance(body, list):
            return self._require_rows(body, "the response")
        return self._envelope_rows(body, self.key)

    def next_params(self, body: Any, rows: list[dict]) -> dict[str, Any] | None:
        refuse_more_pages(body, f"the {self.key} list")
        return None


class SinceDatetimePaginator(Paginator):
    """Customers, by ``since_datetime``, as Dintero documents: "retrieve next page by updating
    since_datetime to the latest updated_at value found in the result".

    What the docs leave open is handled without relying on either answer:

    - whether ``since_datetime`` is inclusive: every request asks from one millisecond before
      the newest value seen, so rows sharing that value come back either way (the sink
      deduplicates them);
    - the order of rows within a page: the next ``since_datetime`` is the page's newest value,
      not its last row's;
    - whether a short page is the last: paging ends when a page brings nothing newer.

    Rows dated after ``until`` (the run's start plus the clock skew) never advance the paging:
    one row dated 2099 must not skip everything before it.

    More rows sharing one ``updated_at`` than a page holds (a bulk import) cannot be paged past
    with ``since_datetime``, which can't be combined with ``starting_after``. The page then
    grows to ``max_limit`` once, and if that is still not enough the paginator reads the whole
    list with ``starting_after`` instead (``scanning``): slow, but complete.
    """

    #: One millisecond: Dintero's timestamps carry milliseconds.
    STEP = timedelta(milliseconds=1)

    def __init__(
        self,
        limit: int,
        since: datetime | None,
        until: datetime,
        *,
        field: str = "updated_at",
        id_field: str = "id",
        max_limit: int = 100,
        deleted_field: str | None = None,
    ) -> None:
        super().__init__(limit)
        self.since = since or EPOCH
        self.until = until
        self.field = field
        #: A deleted row's change time, when it has no ``field`` (deleted customers keep only
        #: their ids and their created and deleted times).
        self.deleted_field = deleted_field
        self.id_field = id_field
        self.max_limit = max_limit
        #: The newest value seen so far (at most ``until``).
        self.newest: datetime | None = None
        #: True once paging fell back to reading the whole list.
        self.scanning = False

    def first_params(self) -> dict[str, Any]:
        return {"limit": self.limit, "since_datetime": iso(self.since - self.STEP)}

    def rows(self, body: Any) -> list[dict]:
        return self._require_rows(body, "the response")

    def next_params(self, body: Any, rows: list[dict]) -> dict[str, Any] | None:
        if not rows:
            return None
        if self.scanning:
            return {"limit": self.limit, "starting_after": page_token(rows[-1], self.id_field)}
        values = [
            parse_datetime(r.get(self.field) or (self.deleted_field and r.get(self.deleted_field)))
            for r in rows
        ]
        usable = [v for v in values if v is not None and v <= self.until]
        if not usable:
            if all(v is None for v in values):
                raise MalformedPageError(f"no row of the page has a usable {self.field!r}")
            return None  # everything here changed after the run started: the next run's
        newest = max(usable)
        if self.newest is None or newest > self.newest:
            self.newest = newest
            return {"limit": self.limit, "since_datetime": iso(newest - self.STEP)}
        if len(rows) < self.limit:
            return None  # only rows at the newest value came back: done
        if self.limit < self.max_limit:
            self.limit = self.max_limit
            return {"limit": self.limit, "since_datetime": iso(self.newest - self.STEP)}
        self.scanning = True
        return {"limit": self.limit}


@dataclass
class Page:
    """One page: its rows, the params that fetched it, and those of the next (None if last)."""

    number: int
    params: dict[str, Any]
    rows: list[dict]
    next_params: dict[str, Any] | None
    body: Any = field(repr=False, default=None)


class PageWalk:
    """One pagination, without I/O: it says which params to ask for next and takes each
    answer, so the sync loop (:func:`pages`) and the async one (:func:`apages`) share every
    check, as httpx's auth flows share theirs.

    Raises (from :meth:`request` and :meth:`take`):
        PaginationError: a cursor repeated, or ``max_pages`` pages were read.
        MalformedPageError: a body of the wrong shape, or more rows than asked for.
    """

    def __init__(
        self,
        paginator: Paginator,
        *,
        start_params: dict[str, Any] | None = None,
        base_params: dict[str, Any] | None = None,
        max_pages: int = DEFAULT_MAX_PAGES,
        check_rows: Callable[[list[Any]], None] | None = None,
    ) -> None:
        self.paginator = paginator
        self.base_params = base_params or {}
        self.max_pages = max_pages
        self.check_rows = check_rows
        self.params: dict[str, Any] | None = (
            dict(start_params) if start_params else paginator.first_params()
        )
        self.number = 0
        self.seen: set[str] = set()

    def request(self) -> dict[str, Any] | None:
        """The query parameters of the next request, or None when the last page was read."""
        if self.params is None:
            return None
        if self.number >= self.max_pages:
            raise PaginationError(f"stopped after the page cap of {self.max_pages} pages")
        return {**self.base_params, **self.params}

    def take(self, body: Any) -> Page:
        """The page in ``body``, checked before the next page is asked for."""
        assert self.params is not None, "take() after the last page"
        params = self.params
        rows = self.paginator.rows(body)
        asked = params.get("limit")
        if isinstance(asked, int) and len(rows) > asked:
            raise MalformedPageError(
                f"the page holds {len(rows)} rows, more than the {asked} asked for"
            )
        if self.check_rows is not None:
            self.check_rows(rows)
        self.number += 1
        next_params = self.paginator.next_params(body, rows)
        if next_params is not None:
            marker = repr(sorted(next_params.items()))
            if marker in self.seen:
                raise PaginationError(
                    f"the API returned the same page cursor twice ({next_params})"
                )
            self.seen.add(marker)
        self.params = next_params
        return Page(self.number, params, rows, next_params, body)


def pages(
    fetch: Callable[[dict[str, Any]], Any],
    paginator: Paginator,
    *,
    start_params: dict[str, Any] | None = None,
    base_params: dict[str, Any] | None = None,
    max_pages: int = DEFAULT_MAX_PAGES,
    check_rows: Callable[[list[Any]], None] | None = None,
) -> Iterator[Page]:
    """Yield pages one at a time (memory stays flat), from ``start_params`` when resuming.

    ``check_rows`` sees each page's rows before the next page is asked for: a page it refuses
    ends the pagination there, with no request sent after it (pages may be fetched ahead).

    Raises:
        PaginationError: a cursor repeated, or ``max_pages`` pages were read.
        MalformedPageError: a body of the wrong shape.
    """
    walk = PageWalk(
        paginator,
        start_params=start_params,
        base_params=base_params,
        max_pages=max_pages,
        check_rows=check_rows,
    )
    while (params := walk.request()) is not None:
        yield walk.take(fetch(params))


async def apages(
    fetch: Callable[[dict[str, Any]], Awaitable[Any]],
    paginator: Paginator,
    *,
    base_params: dict[str, Any] | None = None,
    max_pages: int = DEFAULT_MAX_PAGES,
    check_rows: Callable[[list[Any]], None] | None = None,
) -> AsyncIterator[Page]:
    """:func:`pages` for an async ``fetch``."""
    walk = PageWalk(paginator, base_params=base_params, max_pages=max_pages, check_rows=check_rows)
    while (params := walk.request()) is not None:
        yield walk.take(await fetch(params))


def fetched_ahead(source: Iterator[Page]) -> Iterator[Page]:
    """The same pages, the next one fetched in a thread while the caller writes this one.

    Memory stays flat (one page waits), and nothing changes for a crash: a page is only
    committed by the caller, so a run killed with a page fetched ahead resumes from the last
    page it committed. An error while fetching reaches the caller at that page; a caller that
    stops leaves the page in flight to finish alone, and no further one is asked for.
    """
    pool = ThreadPoolExecutor(1, thread_name_prefix="dintero-fetch-ahead")
    try:
        ahead = pool.submit(next, source, None)
        while (page := ahead.result()) is not None:
            ahead = pool.submit(next, source, None)
            yield page
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
