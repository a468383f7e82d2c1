"""The emulator's five list endpoints, each with its own page shape."""

from __future__ import annotations

import base64
import binascii
import zlib
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .data import SortedCollection, to_ms
from .responses import (
    TRANSACTION_STATUSES,
    ApiError,
    Handler,
    parse_limit,
    parse_time,
)
from .world import EmulatorState


class ListRoutes:
    """Transactions, sessions, settlements, customers and payout transfers."""

    state: EmulatorState
    # Mixed in beside this class by the app (``EmulatorApp``, ``AuthRoutes``).
    _served: Callable[[str, Handler], Callable[[Request], Awaitable[Response]]]
    _authenticate: Callable[..., dict]
    _account: Callable[[Request], tuple[str, Any]]

    def list_routes(self) -> list[Route]:
        """One route per list endpoint: a new stream's endpoint is added here, with its
        handler below."""
        served = self._served
        return [
            Route("/v1/transactions", served("transactions", self._transactions)),
            Route("/v1/sessions", served("sessions", self._sessions)),
            Route("/v1/accounts/{aid}/settlements", served("settlements", self._settlements)),
            Route("/v1/accounts/{aid}/customers/users", served("customers", self._customers)),
            Route(
                "/v1/accounts/{aid}/payout-destinations",
                served("payout_destinations", self._payout_destinations),
            ),
            Route(
                "/v2/accounts/{aid}/payout/payout-destinations/{pd}/transfers",
                served("payout_transfers", self._payout_transfers),
            ),
            Route(
                "/v2/accounts/{aid}/payout/payout-destinations/{pd}/balances",
                served("payout_balances", self._payout_balances),
            ),
        ]

    async def _transactions(self, request: Request) -> Response:
        claims = self._authenticate(request)
        data = self.state.accounts[claims["account_id"]]
        statuses = request.query_params.getlist("status")
        unknown = set(statuses) - TRANSACTION_STATUSES
        if unknown:
            raise ApiError(400, "BAD_REQUEST", f"unknown status: {', '.join(sorted(unknown))}")
        return self._list_checkout(
            request, data.transactions, set(statuses), self._late_event_filter(request)
        )

    #: The filters on later events of ``GET /v1/transactions`` (documented, "subject to
    #: change"): a transaction matches when an event of that kind lies in the range.
    LATE_EVENT_FILTERS = {"captured_at": "CAPTURE", "refunded_at": "REFUND"}

    def _late_event_filter(self, request: Request) -> Callable[[dict], bool] | None:
        config = self.state.config
        ranges: dict[str, tuple[int | None, int | None]] = {}
        for name, event in self.LATE_EVENT_FILTERS.items():
            gte, lte = parse_time(request, f"{name}.gte"), parse_time(request, f"{name}.lte")
            if gte is None and lte is None:
                continue
            if name in config.refused_transaction_filters:
                raise ApiError(400, "BAD_REQUEST", f"unsupported query parameter: {name}")
            ranges[event] = (gte, lte)
        if not ranges:
            return None
        first_only = config.refunded_at_first_refund_only

        def matches(txn: dict) -> bool:
            for event, (gte, lte) in ranges.items():
                times = [
                    to_ms(datetime.fromisoformat(e["created_at"]))
                    for e in txn.get("events", ())
                    if e.get("event") == event and e.get("success", True)
                ]
                if event == "REFUND" and first_only:
                    times = sorted(times)[:1]
                if not any((gte is None or t >= gte) and (lte is None or t <= lte) for t in times):
                    return False
            return True

        return matches

    async def _sessions(self, request: Request) -> Response:
        claims = self._authenticate(request)
        return self._list_checkout(request, self.state.accounts[claims["account_id"]].sessions)

    # -- paging helpers -------------------------------------------------------------------------

    @property
    def _order(self) -> str:
        return self.state.config.list_order

    def _page_size(self, request: Request, limit: int) -> int:
        """The rows this page holds: ``limit``, or under ``short_pages`` a stable 1..limit."""
        if not self.state.config.short_pages or limit <= 1:
            return limit
        marker = f"{request.url.path}?{request.url.query}".encode()
        return 1 + zlib.crc32(marker) % limit

    @staticmethod
    def _page(collection: SortedCollection, **kwargs: Any) -> list[dict]:
        try:
            return collection.page(**kwargs)
        except KeyError:
            raise ApiError(
                400, "BAD_REQUEST", "starting_after refers to an unknown object"
            ) from None

    def _payout_destination(self, request: Request) -> tuple[str, Any]:
        """The payout destination in the path, and its account's data."""
        _, data = self._account(request)
        pd = request.path_params["pd"]
        if pd not in data.transfers:
            raise ApiError(404, "NOT_FOUND", f"payout destination {pd} not found")
        return pd, data

    def _optional(self, body: dict[str, Any], key: str, value: Any) -> None:
        """Set an optional key of an envelope, or leave it out (``omit_optional_keys``)."""
        if value or not self.state.config.omit_optional_keys:
            body[key] = value

    # -- data routes ------------------------------------------------------------------------------

    def _list_checkout(
        self,
        request: Request,
        collection: SortedCollection,
        statuses: set[str] | None = None,
        matches: Callable[[dict], bool] | None = None,
    ) -> Response:
        """A bare array paged by ``starting_after=<id of the last object>``. Dintero documents
        neither the order nor when a page is the last (``list_order``, ``short_pages``)."""
        limit = self._page_size(request, parse_limit(request, 100))
        gte, lte = parse_time(request, "created_at.gte"), parse_time(request, "created_at.lte")
        after = request.query_params.get("starting_after")
        window = dict(order=self._order, gte_ms=gte, lte_ms=lte)
        if not statuses and matches is None:
            page = self._page(collection, limit=limit, after_id=after, **window)
        else:
            page = []
            while len(page) < limit:
                chunk = self._page(collection, limit=limit * 4, after_id=after, **window)
                if not chunk:
                    break
                page.extend(
                    o
                    for o in chunk
                    if (not statuses or o["status"] in statuses) and (matches is None or matches(o))
                )
                after = chunk[-1]["id"]
            page = page[:limit]
        return JSONResponse(page)

    async def _settlements(self, request: Request) -> Response:
        """``{items, last_evaluated_key}``; the order is undocumented (``list_order``)."""
        aid, data = self._account(request)
        q = request.query_params
        limit = self._page_size(request, parse_limit(request, 1000))
        by_created = any(k.startswith("item_created_at.") for k in q)
        if by_created and any(k.startswith("created_at.") for k in q):
            raise ApiError(
                400, "BAD_REQUEST", "item_created_at.* cannot be combined with created_at.*"
            )
        prefix = "item_created_at" if by_created else "created_at"
        gte, lte = parse_time(request, f"{prefix}.gte"), parse_time(request, f"{prefix}.lte")
        after_id, after_date = q.get("starting_after_id"), q.get("starting_after_date")
        if (after_id is None) != (after_date is None):
            raise ApiError(
                400,
                "BAD_REQUEST",
                "starting_after_id and starting_after_date must be used together",
            )
        if after_id is not None:
            parse_time(request, "starting_after_date")
        collection = data.settlements_by_created if by_created else data.settlements_by_settled
        rows = self._page(
            collection,
            order=self._order,
            limit=limit + 1,
            gte_ms=gte,
            lte_ms=lte,
            after_id=after_id,
        )
        body: dict[str, Any] = {}
        self._optional(body, "items", rows[:limit])
        key = None
        if len(rows) > limit:
            last = rows[limit - 1]
            key = {
                "id": last["id"],
                "account_id": aid,
                "settled_at": last["settled_at"],
                "created_at": last["created_at"],
            }
        self._optional(body, "last_evaluated_key", key)
        return JSONResponse(body)

    async def _customers(self, request: Request) -> Response:
        """A bare array. With ``since_datetime``: the earliest ``limit`` customers updated at or
        after it (after it under ``since_exclusive``), which is what Dintero's documented way of
        paging ("update since_datetime to the latest updated_at value found in the result")
        needs; the order within the page is undocumented. Without it: every customer in an
        undocumented order, paged by ``starting_after=<id of the last customer>``."""
        _, data = self._account(request)
        q = request.query_params
        limit = parse_limit(request, 100)
        # include_deleted=true lists deleted customers too, reduced to their ids and dates.
        customers = data.customers_all if q.get("include_deleted") == "true" else data.customers
        if "since_datetime" in q and not self.state.config.deletions_in_since:
            customers = data.customers
        if "since_datetime" in q and "starting_after" in q:
            raise ApiError(
                400, "BAD_REQUEST", "since_datetime can't be combined with starting_after"
            )
        since = parse_time(request, "since_datetime")
        if since is not None:
            if self.state.config.since_exclusive:
                since += 1  # timestamps have millisecond precision
            rows = customers.page(order="oldest", limit=limit, gte_ms=since)
            if self._order == "newest":
                rows.reverse()
            elif self._order == "shuffled":
                rows.sort(key=lambda r: customers.shuffle_key(r["id"]))
        else:
            rows = self._page(
                customers,
                order=self._order,
                limit=self._page_size(request, limit),
                after_id=q.get("starting_after"),
            )
        headers = {"total-count": str(len(customers))} if q.get("total") == "true" else None
        return JSONResponse(rows, headers=headers)

    async def _payout_destinations(self, request: Request) -> Response:
        """The account's payout destinations (the Account Management API, scope
        ``read:accounts``). Dintero documents only objects with ``payout_destination_id``, not
        the envelope: wrapped in ``{"payout_destinations": [...]}`` or a bare array, or not
        served at all: 404 (``payout_destination_list``). No paging is documented; ``paged``
        answers the first one with a ``next_page_token``, as an undocumented paging would."""
        aid, data = self._account(request)
        claims = self._authenticate(request, aid)
        if "read:accounts" not in str(claims.get("scope", "")).split():
            raise ApiError(403, "forbidden", "the API client lacks the scope read:accounts")
        if self.state.config.payout_destination_list == "missing":
            raise ApiError(404, "not_found", "no payout destinations resource for this account")
        rows = data.dump("payout_destinations")
        shape = self.state.config.payout_destination_list
        if shape == "array":
            return JSONResponse(rows)
        if shape == "paged" and len(rows) > 1:
            return JSONResponse({"payout_destinations": rows[:1], "next_page_token": "page-2"})
        return JSONResponse({"payout_destinations": rows})

    async def _payout_transfers(self, request: Request) -> Response:
        """``{entries, next_page_token}``; no date filter and no documented order
        (``list_order``); the token is opaque."""
        pd, data = self._payout_destination(request)
        limit = self._page_size(request, parse_limit(request, 1000))
        after = None
        token = request.query_params.get("page")
        if token:
            try:
                after = base64.urlsafe_b64decode(token.encode()).decode().partition(":")[2]
            except (ValueError, binascii.Error, UnicodeDecodeError):
                raise ApiError(400, "BAD_REQUEST", "page is not a valid page token") from None
        currency = request.query_params.get("currency")
        rows = self._page(data.transfers[pd], order=self._order, limit=limit + 1, after_id=after)
        if currency:
            rows = [r for r in rows if r["currency"] == currency]
        body: dict[str, Any] = {}
        self._optional(body, "entries", rows[:limit])
        next_token = None
        if len(rows) > limit:
            last = rows[limit - 1]
            raw = f"{to_ms(datetime.fromisoformat(last['created_at']))}:{last['ledger_entry_id']}"
            next_token = base64.urlsafe_b64encode(raw.encode()).decode()
        self._optional(body, "next_page_token", next_token)
        return JSONResponse(body)

    async def _payout_balances(self, request: Request) -> Response:
        """``{"payout_destination_balances": [...]}``: one balance per currency, from the
        destination's ledger (Dintero's payouts spec, "Get seller balances"); no paging."""
        pd, data = self._payout_destination(request)
        return JSONResponse({"payout_destination_balances": data.balances(pd)})

    # -- control (not Dintero's API) ------------------------------------------------------------
