"""The catalog of Dintero streams: one declarative entry per resource.

Adding a stream is adding one ``Stream`` to ``CATALOG``: where it lives, how it pages, its key,
its cursor, how the API filters it, and the typed columns to keep (every object is also kept
whole as JSON).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal
from urllib.parse import quote

from ..errors import ConfigurationError
from ..times import iso, parse_datetime
from ..validation import validate_account_id, validate_payout_destination
from .paginators import (
    LastEvaluatedKeyPaginator,
    MalformedPageError,
    NextPageTokenPaginator,
    Paginator,
    SinceDatetimePaginator,
    StartingAfterPaginator,
    WholeListPaginator,
)

ColumnType = Literal["text", "int", "datetime", "bool"]
#: Builds a stream's paginator from (page size, lower bound, until): the lower bound of the
#: read (None: everything) and the latest time a row may carry to advance it.
PaginatorFactory = Callable[[int, datetime | None, datetime], Paginator]


@dataclass(frozen=True)
class Column:
    """A typed column taken from the object at ``path`` (dotted into nested objects)."""

    name: str
    type: ColumnType = "text"
    path: str | None = None

    def __post_init__(self) -> None:
        # Split once: the path is walked for every row of every page.
        steps = tuple(
            (part, int(part) if part.isdigit() else None)
            for part in (self.path or self.name).split(".")
        )
        object.__setattr__(self, "_steps", steps)

    def extract(self, obj: dict) -> Any:
        value: Any = obj
        for key, index in self._steps:  # type: ignore[attr-defined]
            if type(value) is dict:
                value = value.get(key)
            elif type(value) is list and index is not None:
                value = value[index] if len(value) > index else None
            else:
                return None
            if value is None:
                return None
        return value


@dataclass(frozen=True)
class ChildTable:
    """A list inside each object kept as rows of its own table (a transaction's events, and
    each event's settlement entries): a plain SQL join where the list would need JSON
    functions that differ by database.

    Its rows are replaced whenever their parent's row is written (in the same transaction),
    and left alone when the parent's copy is older than the stored one. Keyed by the
    account, the parent's key (``parent_key``) and ``key``: the item's place in its list
    (lists of events only grow; Dintero marks an event's ``id`` optional).

    Attributes:
        name: the table is ``dintero_<name>``.
        items: the parent object's items as flat dicts, each with the ``key`` fields.
        key: the item fields that tell its rows apart within one parent.
        columns: the typed columns, taken from each item.
    """

    name: str
    description: str
    items: Callable[[dict], Iterable[dict]]
    key: tuple[str, ...]
    columns: tuple[Column, ...]
    parent_key: str = "transaction_id"

    @property
    def table_name(self) -> str:
        return f"dintero_{self.name}"


def _events(txn: dict) -> Iterator[dict]:
    """A transaction's events, each with its place in the list and the payment's currency."""
    events = txn.get("events")
    for position, event in enumerate(events if isinstance(events, list) else ()):
        if isinstance(event, dict):
            yield {**event, "position": position, "currency": txn.get("currency")}


def _settlement_entries(txn: dict) -> Iterator[dict]:
    """Each event's settlement entries (``settlements.events[]``,
    ``TransactionSettlementsRead`` in Dintero's payments spec): which settlement, with which
    provider reference, paid out how much of it."""
    for event in _events(txn):
        settled = event.get("settlements")
        entries = settled.get("events") if isinstance(settled, dict) else None
        for position, entry in enumerate(entries if isinstance(entries, list) else ()):
            if isinstance(entry, dict):
                yield {
                    **entry,
                    "event_position": event["position"],
                    "position": position,
                    "event_id": event.get("id"),
                    "event": event.get("event"),
                    "currency": event["currency"],
                }


@dataclass(frozen=True)
class LateChangeFilter:
    """A filter Dintero offers on when a later event of an object happened: transactions'
    ``captured_at`` and ``refunded_at`` (documented on ``GET /v1/transactions``, "subject to
    change": https://docs.dintero.com/api-reference/payments). A refund made months after its
    payment is found by it, where a read by ``created_at`` never looks that far back.

    Each has its own cursor (its state is the stream's, partition ``by <name>``) and a short
    lookback: an hourly run with nothing new costs one request each.

    Attributes:
        name: the filter's name (``captured_at``): ``<name>.gte`` and ``<name>.lte``.
        event: the transaction event it is on (``CAPTURE``): a row's cursor value is the
            newest event of that kind.
        lookback: re-read this much before the filter's cursor (clock skew, an event recorded
            a moment after its time).
        reconcile_reach: how far back a reconcile run reads by the filter: a capture or
            refund is settled days after it (its settlement entries arrive on the payment),
            which no filter finds, whatever the payment's age.
    """

    name: str
    event: str
    lookback: timedelta = timedelta(minutes=15)
    reconcile_reach: timedelta = timedelta(days=7)

    @property
    def partition(self) -> str:
        """Where its state is kept: the stream's state, under this partition."""
        return f"by {self.name}"


@dataclass(frozen=True)
class Stream:
    """How to read one Dintero resource incrementally.

    Attributes:
        name: the stream's name (and table ``dintero_<name>``).
        host: ``"api"`` or ``"checkout"``.
        path: the list endpoint; ``{account_id}`` and ``{destination}`` are filled in.
        paginator: builds the paginator (see ``PaginatorFactory``).
        primary_key: the object field that identifies a row.
        cursor_field: the datetime field the window or cursor is on.
        incremental: ``"window"``: a window ``[cursor - lookback, run start]`` is fixed and
            paged in whatever order the API returns, and the cursor moves when the whole window
            is in; ``"since"``: the paginator walks ``cursor_field`` upwards and the cursor
            moves with each page; ``"snapshot"``: a short list read whole on every run, each
            row stamped with the run's start (``taken_at``).
        lower_param / upper_param: the API's filter on ``cursor_field``; None when the API has
            none (then every page is read, and only the cursor looks at the window).
        version_field: a row is never replaced by one with an older value of this field.
        max_page_size: the API's largest ``limit``.
        lookback: the default re-read window before the saved cursor (late changes).
        per_destination: one partition per payout destination.
        deleted_field: where the API lists deleted objects too (customers, with
            ``include_deleted=true``), the field that dates a deletion; a deleted object's
            row is overwritten with what Dintero keeps of it (ids and dates, nothing personal).
        personal: the personal fields, as dotted paths (into lists too): what
            ``personal_data="hash"`` hashes and ``"drop"`` removes, before anything is written.
        late_filters: the filters on later events the API offers (see
            :class:`LateChangeFilter`): each incremental run reads them too.
        changed_by_event: set on a late-change read (:meth:`late_change_read`): a row's cursor
            value is its newest event of this kind, not ``cursor_field``.
        reconcile_reach: a late-change read's reach in a reconcile run (see
            :class:`LateChangeFilter`).
        children: lists inside each object kept as tables of their own (:class:`ChildTable`).
        history_of: a snapshot kept as history (payout balances): every run's rows stay,
            each keyed (``primary_key``) by these fields and ``taken_at``.
    """

    name: str
    host: Literal["api", "checkout"]
    path: str
    paginator: PaginatorFactory
    primary_key: str
    cursor_field: str
    incremental: Literal["window", "since", "snapshot"]
    columns: tuple[Column, ...]
    lower_param: str | None = None
    upper_param: str | None = None
    version_field: str | None = "updated_at"
    max_page_size: int = 100
    lookback: timedelta = timedelta(days=1)
    per_destination: bool = False
    description: str = ""
    extra_params: dict[str, Any] = field(default_factory=dict)
    personal: tuple[str, ...] = ()
    deleted_field: str | None = None
    late_filters: tuple[LateChangeFilter, ...] = ()
    changed_by_event: str | None = None
    children: tuple[ChildTable, ...] = ()
    history_of: tuple[str, ...] = ()
    reconcile_reach: timedelta | None = None

    def stamped(self, objects: list[dict], taken_at: datetime) -> list[dict]:
        """A snapshot's objects as stored: with the run's start (``taken_at``), and for a
        history, their key (``<fields>@<taken_at>``). Other streams' objects as they are."""
        if self.incremental != "snapshot":
            return objects
        stamp = str(iso(taken_at))
        rows = []
        for obj in objects:
            row = {**obj, "taken_at": stamp}
            if self.history_of:
                row[self.primary_key] = "/".join(obj[f] for f in self.history_of) + "@" + stamp
            rows.append(row)
        return rows

    def late_change_read(self, late: LateChangeFilter) -> Stream:
        """This stream read by a late-change filter: the same endpoint, table and rows, the
        window on ``<filter>.gte``/``.lte`` instead of ``created_at``."""
        return replace(
            self,
            lower_param=f"{late.name}.gte",
            upper_param=f"{late.name}.lte",
            lookback=late.lookback,
            reconcile_reach=late.reconcile_reach,
            changed_by_event=late.event,
            late_filters=(),
        )

    def changed_at(self, obj: dict) -> Any:
        """The object's cursor value, or for a deleted object without one, its deletion."""
        if self.changed_by_event is not None:
            return newest_event(obj, self.changed_by_event)
        value = obj.get(self.cursor_field)
        if value is None and self.deleted_field is not None:
            value = obj.get(self.deleted_field)
        return value

    @property
    def filtered_by_api(self) -> bool:
        """Whether the API filters this stream's window on both ends."""
        return self.lower_param is not None and self.upper_param is not None

    @property
    def table_name(self) -> str:
        return f"dintero_{self.name}"

    def check_keys(self, objects: list[dict]) -> None:
        """MalformedPageError unless every object has a usable primary key: checked as a page
        arrives, before the next page is asked for, so a bad page stops the stream there."""
        for position, obj in enumerate(objects):
            for name in self.history_of or (self.primary_key,):
                key = obj.get(name) if isinstance(obj, dict) else None
                if not isinstance(key, str) or not key or len(key) > 200:
                    raise MalformedPageError(
                        f"object {position} of a {self.name} page has no usable "
                        f"{name!r} (a string of at most 200 characters)"
                    )

    def url_path(self, account_id: str, destination: str | None = None) -> str:
        """The endpoint's path, each id validated and encoded as one path segment."""
        return self.path.format(
            account_id=quote(validate_account_id(account_id), safe=""),
            destination=quote(validate_payout_destination(destination), safe="")
            if destination
            else "",
        )


def event_times(obj: dict, kind: str) -> Iterator[datetime]:
    """When each of the object's events of ``kind`` happened (``events[]``), failed or not: a
    filter on them may match either. Events without a usable time are left out."""
    events = obj.get("events")
    for event in events if isinstance(events, list) else ():
        if isinstance(event, dict) and event.get("event") == kind:
            when = parse_datetime(event.get("created_at"))
            if when is not None:
                yield when


def has_event_within(obj: dict, kind: str, lower: datetime | None, upper: datetime | None) -> bool:
    """Whether the object has an event of ``kind`` within ``[lower, upper]``."""
    return any(
        (lower is None or when >= lower) and (upper is None or when <= upper)
        for when in event_times(obj, kind)
    )


def newest_event(obj: dict, kind: str) -> datetime | None:
    """When the object's newest event of ``kind`` happened."""
    return max(event_times(obj, kind), default=None)


#: The buyer's personal fields on transactions and sessions (the customer's contact details,
#: the addresses, the IP address and the browser). ``customer.customer_id`` stays: it is a
#: Dintero id, the key that joins a transaction to its customer.
BUYER = (
    "customer.email",
    "customer.phone_number",
    "customer.first_name",
    "customer.last_name",
    "billing_address",
    "shipping_address",
    "customer_ip",
    "user_agent",
)

CATALOG: dict[str, Stream] = {
    s.name: s
    for s in (
        Stream(
            name="transactions",
            description="Checkout transactions (payments), with status, amounts and events.",
            host="checkout",
            path="/v1/transactions",
            paginator=lambda limit, lower, until: StartingAfterPaginator(limit),
            primary_key="id",
            cursor_field="created_at",
            incremental="window",
            lower_param="created_at.gte",
            upper_param="created_at.lte",
            # Transactions are captured, refunded and settled days after they are created: the
            # last few days are re-read by created_at on every run, and captures and refunds of
            # any age are read by their own filters (each with its own cursor).
            lookback=timedelta(days=3),
            late_filters=(
                LateChangeFilter("captured_at", "CAPTURE"),
                LateChangeFilter("refunded_at", "REFUND"),
            ),
            # Every money movement a row: captures, refunds and voids, and what each settled.
            children=(
                ChildTable(
                    name="transaction_events",
                    description="Each transaction's events: authorisations, captures, refunds, "
                    "voids, with the status each left and the amount it moved.",
                    items=_events,
                    key=("position",),
                    columns=(
                        Column("position", "int"),
                        Column("event_id", path="id"),
                        Column("event"),
                        Column("transaction_status"),
                        Column("success", "bool"),
                        Column("amount", "int"),
                        Column("currency"),
                        Column("created_at", "datetime"),
                        Column("event_reference"),
                        Column("request_id"),
                        Column("correlation_request_id"),
                    ),
                ),
                ChildTable(
                    name="transaction_settlements",
                    description="Each event's settlement entries: the settlement and the "
                    "provider reference that paid it out, and how much of it was capture, "
                    "refund and fee.",
                    items=_settlement_entries,
                    key=("event_position", "position"),
                    columns=(
                        Column("event_position", "int"),
                        Column("position", "int"),
                        Column("event_id"),
                        Column("event"),
                        Column("settlement_id"),
                        Column("provider_reference"),
                        Column("event_correlation_id"),
                        Column("amount", "int"),
                        Column("capture", "int"),
                        Column("refund", "int"),
                        Column("fee", "int"),
                        Column("currency"),
                    ),
                ),
            ),
            columns=(
                Column("id"),
                Column("created_at", "datetime"),
                Column("updated_at", "datetime"),
                Column("status"),
                Column("amount", "int"),
                Column("currency"),
                Column("payment_product"),
                Column("payment_product_type"),
                Column("merchant_reference"),
                Column("session_id"),
                Column("settlement_status"),
                Column("channel"),
                Column("customer_id", path="customer.customer_id"),
                Column("payout_destination_id"),
                Column("payout_correlation_id", path="metadata.payout_correlation_id"),
            ),
            personal=BUYER,
        ),
        Stream(
            name="sessions",
            description="Checkout sessions, with their order and outcome.",
            host="checkout",
            path="/v1/sessions",
            paginator=lambda limit, lower, until: StartingAfterPaginator(limit),
            primary_key="id",
            cursor_field="created_at",
            incremental="window",
            lower_param="created_at.gte",
            upper_param="created_at.lte",
            lookback=timedelta(days=1),
            columns=(
                Column("id"),
                Column("created_at", "datetime"),
                Column("updated_at", "datetime"),
                Column("expires_at", "datetime"),
                Column("transaction_id"),
                Column("order_amount", "int", "order.amount"),
                Column("order_currency", path="order.currency"),
                Column("merchant_reference", path="order.merchant_reference"),
                Column("cancelled_at", "datetime"),
            ),
            personal=(*BUYER, "order.billing_address", "order.shipping_address"),
        ),
        Stream(
            name="settlements",
            description="Settlements paid out by the payment providers.",
            host="api",
            path="/v1/accounts/{account_id}/settlements",
            paginator=lambda limit, lower, until: LastEvaluatedKeyPaginator(limit, "created_at"),
            primary_key="id",
            cursor_field="created_at",
            incremental="window",
            lower_param="item_created_at.gte",
            upper_param="item_created_at.lte",
            max_page_size=1000,
            lookback=timedelta(days=2),
            columns=(
                Column("id"),
                Column("created_at", "datetime"),
                Column("updated_at", "datetime"),
                Column("settled_at", "datetime"),
                Column("provider"),
                Column("provider_reference"),
                Column("payment_status"),
                Column("payout_destination_id"),
                # amount = capture - refund - fee (the first currency's; the rest is in raw).
                Column("amount", "int", "amounts.0.amount"),
                Column("capture", "int", "amounts.0.capture"),
                Column("refund", "int", "amounts.0.refund"),
                Column("fee", "int", "amounts.0.fee"),
                Column("currency", path="amounts.0.currency"),
            ),
        ),
        Stream(
            name="customers",
            description="Customers, by their last update.",
            host="api",
            path="/v1/accounts/{account_id}/customers/users",
            paginator=lambda limit, lower, until: SinceDatetimePaginator(
                limit, lower, until, deleted_field="deleted_at"
            ),
            primary_key="id",
            cursor_field="updated_at",
            incremental="since",
            # The paginator sends since_datetime itself (and leaves it out when it has to read
            # the whole list).
            lower_param=None,
            upper_param=None,
            lookback=timedelta(minutes=10),
            # Deleted customers too (a GDPR erasure must reach the destination), reduced by
            # Dintero to their ids and dates.
            extra_params={"include_deleted": "true"},
            deleted_field="deleted_at",
            columns=(
                Column("id"),
                Column("customer_id"),
                Column("created_at", "datetime"),
                Column("updated_at", "datetime"),
                Column("deleted_at", "datetime"),
                Column("type"),
                Column("status"),
                Column("email"),
                Column("first_name"),
                Column("last_name"),
            ),
            personal=(
                "first_name",
                "last_name",
                "email",
                "phone_number",
                "addresses",
                "date_of_birth",
                "gender",
            ),
        ),
        Stream(
            name="payout_transfers",
            description="Ledger entries of each payout destination (v2 payout API).",
            host="api",
            path="/v2/accounts/{account_id}/payout/payout-destinations/{destination}/transfers",
            paginator=lambda limit, lower, until: NextPageTokenPaginator(limit),
            primary_key="ledger_entry_id",
            cursor_field="created_at",
            incremental="window",
            # No date filter and no documented order: every run reads every page, and only the
            # cursor looks at created_at.
            lower_param=None,
            upper_param=None,
            version_field=None,
            max_page_size=1000,
            lookback=timedelta(days=1),
            per_destination=True,
            columns=(
                Column("ledger_entry_id"),
                Column("payout_destination_id"),
                Column("created_at", "datetime"),
                Column("type"),
                Column("amount", "int"),
                Column("currency"),
                Column("inbound_payment_provider"),
                # An inbound entry's settlement (payment_match_report_data): the join from a
                # payout to the payments it pays, by provider_reference.
                Column("provider_reference", path="payment_match_report_data.provider_reference"),
                Column("settled_at", "datetime", "payment_match_report_data.settled_at"),
                Column("settled_capture", "int", "payment_match_report_data.amounts.0.capture"),
                Column("settled_refund", "int", "payment_match_report_data.amounts.0.refund"),
                Column("settled_fee", "int", "payment_match_report_data.amounts.0.fee"),
                Column("transfer_reference"),
            ),
            personal=(
                "outbound_receiver_bank_account_number",
                "outbound_receiver_bank_account_bic",
                "outbound_message",
            ),
        ),
        Stream(
            name="payout_destinations",
            description="The account's payout destinations (sellers), as they are now.",
            host="api",
            # The Account Management API (scope read:accounts); no paging documented.
            path="/v1/accounts/{account_id}/payout-destinations",
            paginator=lambda limit, lower, until: WholeListPaginator("payout_destinations"),
            primary_key="payout_destination_id",
            cursor_field="taken_at",
            incremental="snapshot",
            version_field=None,
            columns=(
                Column("payout_destination_id"),
                Column("payout_destination_name"),
                Column("taken_at", "datetime"),
            ),
        ),
        Stream(
            name="payout_balances",
            description="Each payout destination's balance per currency, one snapshot a run.",
            host="api",
            path="/v2/accounts/{account_id}/payout/payout-destinations/{destination}/balances",
            paginator=lambda limit, lower, until: WholeListPaginator("payout_destination_balances"),
            primary_key="balance_id",
            cursor_field="taken_at",
            incremental="snapshot",
            version_field=None,
            per_destination=True,
            # A balance is a point in time: every run's is kept, to follow it over days.
            history_of=("payout_destination_id", "currency"),
            columns=(
                Column("balance_id"),
                Column("payout_destination_id"),
                Column("currency"),
                Column("amount", "int"),
                Column("taken_at", "datetime"),
            ),
        ),
    )
}


def resolve_streams(names: list[str] | None) -> list[Stream]:
    """The named streams (all when None), or a clear error listing the valid names."""
    if names is None:
        return list(CATALOG.values())
    if isinstance(names, str):
        names = [names]
    unknown = [n for n in names if n not in CATALOG]
    if unknown:
        guesses = [
            f"{name!r} (did you mean {close[0]!r}?)"
            if (close := difflib.get_close_matches(str(name), CATALOG, n=1, cutoff=0.6))
            else repr(name)
            for name in unknown
        ]
        raise ConfigurationError(
            f"unknown stream{'s' if len(unknown) > 1 else ''} {', '.join(guesses)}; "
            f"valid streams: {', '.join(CATALOG)}"
        )
    if not names:
        raise ConfigurationError(f"no streams selected; valid streams: {', '.join(CATALOG)}")
    return [CATALOG[n] for n in dict.fromkeys(names)]
