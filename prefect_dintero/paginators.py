"""One small class per Dintero pagination style.

A paginator knows three things: the parameters of the first page, how to read a page's rows out
of a body (rejecting bodies of the wrong shape), and the parameters of the next page (None when
done). The loop that drives them (``pages``) detects a cursor that repeats and stops at a hard
page cap with an error, so a misbehaving API can never make a sync loop forever.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .errors import DinteroError, MalformedResponseError

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


class StartingAfterPaginator(Paginator):
    """Bare arrays paged with ``starting_after=<id of the last row>``; a short page is the last.

    Transactions, sessions (and customers without ``since_datetime``).
    """

    def __init__(self, limit: int, id_field: str = "id") -> None:
        super().__init__(limit)
        self.id_field = id_field

    def rows(self, body: Any) -> list[dict]:
        return self._require_rows(body, "the response")

    def next_params(self, body: Any, rows: list[dict]) -> dict[str, Any] | None:
        if len(rows) < self.limit:
            return None
        last = rows[-1].get(self.id_field)
        if not last:
            raise MalformedPageError(f"the last row has no {self.id_field!r} to page from")
        return {"limit": self.limit, "starting_after": last}


class LastEvaluatedKeyPaginator(Paginator):
    """``{items, last_evaluated_key}`` envelopes (settlements); no key means the last page.

    The key's date is ``settled_at``, or ``created_at`` when filtering on ``item_created_at``.
    """

    def __init__(self, limit: int, date_field: str = "created_at") -> None:
        super().__init__(limit)
        self.date_field = date_field

    def rows(self, body: Any) -> list[dict]:
        if not isinstance(body, dict) or "items" not in body:
            raise MalformedPageError("expected an object with an 'items' list")
        return self._require_rows(body["items"], "'items'")

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
        if not isinstance(body, dict) or "entries" not in body:
            raise MalformedPageError("expected an object with an 'entries' list")
        return self._require_rows(body["entries"], "'entries'")

    def next_params(self, body: Any, rows: list[dict]) -> dict[str, Any] | None:
        token = body.get("next_page_token")
        if not token:
            return None
        if not isinstance(token, str):
            raise MalformedPageError("next_page_token is not a string")
        return {"limit": self.limit, "page": token}


class SinceDatetimePaginator(Paginator):
    """Bare arrays ordered by ``updated_at``, paged by moving ``since_datetime`` (inclusive)
    to the last row's ``updated_at`` (customers). Boundary rows come back once more; the sink
    deduplicates them. A full page sharing one timestamp cannot be paged past that way, so the
    page size grows to the maximum once before this is reported as an error.
    """

    def __init__(
        self, limit: int, since: str | None, field: str = "updated_at", max_limit: int = 100
    ):
        super().__init__(limit)
        self.since = since
        self.field = field
        self.max_limit = max_limit

    def first_params(self) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": self.limit}
        if self.since:
            params["since_datetime"] = self.since
        return params

    def rows(self, body: Any) -> list[dict]:
        return self._require_rows(body, "the response")

    def next_params(self, body: Any, rows: list[dict]) -> dict[str, Any] | None:
        if len(rows) < self.limit:
            return None
        last = rows[-1].get(self.field)
        if not last:
            raise MalformedPageError(f"the last row has no {self.field!r} to page from")
        if last == self.since:
            if self.limit >= self.max_limit:
                raise PaginationError(
                    f"more than {self.limit} objects share {self.field}={last}; since_datetime "
                    "cannot page past them"
                )
            self.limit = self.max_limit
        self.since = last
        return {"limit": self.limit, "since_datetime": last}


@dataclass
class Page:
    """One page: its rows, the params that fetched it, and those of the next (None if last)."""

    number: int
    params: dict[str, Any]
    rows: list[dict]
    next_params: dict[str, Any] | None
    body: Any = field(repr=False, default=None)


def pages(
    fetch: Callable[[dict[str, Any]], Any],
    paginator: Paginator,
    *,
    start_params: dict[str, Any] | None = None,
    base_params: dict[str, Any] | None = None,
    max_pages: int = DEFAULT_MAX_PAGES,
) -> Iterator[Page]:
    """Yield pages one at a time (memory stays flat), from ``start_params`` when resuming.

    Raises:
        PaginationError: a cursor repeated, or ``max_pages`` pages were read.
        MalformedPageError: a body of the wrong shape.
    """
    params = dict(start_params) if start_params else paginator.first_params()
    seen: set[str] = set()
    for number in range(1, max_pages + 1):
        body = fetch({**(base_params or {}), **params})
        rows = paginator.rows(body)
        next_params = paginator.next_params(body, rows)
        yield Page(number, params, rows, next_params, body)
        if next_params is None:
            return
        marker = repr(sorted(next_params.items()))
        if marker in seen:
            raise PaginationError(f"the API returned the same page cursor twice ({next_params})")
        seen.add(marker)
        params = next_params
    raise PaginationError(f"stopped after the page cap of {max_pages} pages")
