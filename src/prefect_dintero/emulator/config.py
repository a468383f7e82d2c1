"""Configuration of the bundled Dintero emulator."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, get_args

ListOrder = Literal["newest", "oldest", "shuffled"]
ErrorCodes = Literal["dintero", "generic"]
PayoutDestinationList = Literal["object", "array", "missing", "paged"]

DEFAULT_ACCOUNT_ID = "T12345678"
DEFAULT_CLIENT_ID = "emulator-client"
DEFAULT_CLIENT_SECRET = "emulator-secret"
DEFAULT_REDIRECT_URI = "http://127.0.0.1:8788/callback"


def option(
    default: Any, help: str, *, flag: str | None = None, silent: bool = False, **cli: Any
) -> Any:
    """A field the ``emulator`` command sets, with its help: ``--<field-name>`` or ``flag``,
    its type or action taken from the default unless ``cli`` (argparse's keywords) says.
    ``silent``: a behaviour Dintero's reference does not document."""
    return field(default=default, metadata={"help": help, "flag": flag, "silent": silent, **cli})


@dataclass
class TestUser:
    """The user the simulated identity provider logs in."""

    __test__ = False  # not a pytest test class

    sub: str = "c06c5a4e-3b0f-4f8e-9d61-6a7f0e1d2b3c"
    name: str = "Ada Lovelace"
    authority: str = "https://identity.emulator.invalid/access"


@dataclass
class EmulatorConfig:
    """Everything the emulator can be told at start-up.

    The defaults describe one test account with one API client; the same client is granted
    every account in ``account_ids`` (as a partner client would be).
    """

    account_ids: list[str] = field(default_factory=lambda: [DEFAULT_ACCOUNT_ID])
    client_id: str = option(DEFAULT_CLIENT_ID, "API client id")
    client_secret: str = field(
        default=DEFAULT_CLIENT_SECRET, repr=False, metadata={"help": "API client secret"}
    )
    redirect_uris: list[str] = field(default_factory=lambda: [DEFAULT_REDIRECT_URI])
    user: TestUser = field(default_factory=TestUser)
    token_lifetime: int = option(3600, "access token lifetime, s")
    #: Lifetime of a user session's access tokens (the OIDC exchange's ``expires_in``), when it
    #: differs: Dintero documents 4 hours for service tokens and shows 86400 for the exchange.
    session_lifetime: int | None = option(
        None, "lifetime of a user session's tokens, s (default: the token's)", type=int
    )
    refresh_tokens: bool = option(False, "issue refresh tokens from the OIDC exchange")
    #: Rotate refresh tokens: every refresh returns a new one and revokes the old one.
    rotate_refresh_tokens: bool = option(
        True, "reuse refresh tokens instead of rotating them", flag="--no-rotate-refresh-tokens"
    )
    #: Seconds a rotated-out refresh token is still accepted (0: strict, used once). Identity
    #: providers offer this (Auth0's reuse interval, Okta's grace period) so that a client which
    #: dies between the server's rotation and saving the new token can still refresh.
    refresh_token_reuse_interval: float = option(
        0.0,
        "accept a rotated-out refresh token for this long (0: strictly single use)",
        metavar="SECONDS",
    )
    refresh_token_lifetime: int = 30 * 24 * 3600
    code_lifetime: int = option(60, "authorization code lifetime, s")
    transactions: int = option(250, "transactions per account")
    sessions: int = option(120, "checkout sessions per account")
    settlements: int = option(40, "generated settlements per account, besides the daily ones")
    customers: int = option(80, "customers per account")
    payout_destinations: list[str] = field(default_factory=lambda: ["PD-main", "PD-store-2"])
    transfers_per_destination: int = option(
        60,
        "generated payout ledger entries per destination, besides those of the payments' "
        "settlements",
    )
    seed: int = option(42, "seed of the data generator")
    #: The emulator's "now" when it starts. Defaults to 30 days before the real time, so that
    #: advancing the clock never creates objects dated in the real future.
    start_time: datetime | None = option(
        None, "'now' at start (ISO 8601; default: 30 days ago)", type=datetime.fromisoformat
    )
    history_days: int = option(
        180, "the data is spread over the N days before the start", metavar="N"
    )

    # -- where Dintero's reference is silent: every plausible choice, switchable --------------
    # (the README's "Where Dintero's reference is silent" lists them). The sync must be correct
    # under each.

    #: Order of every list whose order Dintero does not document: transactions, sessions,
    #: settlements, payout transfers, and customers (without ``since_datetime``: the whole list;
    #: with it: the rows within a page). ``shuffled`` is a stable random permutation per data set.
    list_order: ListOrder = option(
        "newest",
        "order of every list Dintero does not document the order of (shuffled: a stable "
        "permutation per data set)",
        silent=True,
        choices=get_args(ListOrder),
    )
    #: Leave out what the schemas mark optional but not nullable: ``items`` (settlements) and
    #: ``entries`` (payout transfers) when empty, ``last_evaluated_key`` and ``next_page_token``
    #: on the last page, a session's ``transaction_id`` before it has one. That is what the
    #: schemas say; False sends them as ``[]`` and ``null``, as real servers sometimes do.
    omit_optional_keys: bool = option(
        True,
        "send items/entries as [] when empty, and last_evaluated_key/next_page_token and a "
        "session's transaction_id as null, where the schemas leave them out",
        flag="--null-optional-keys",
        silent=True,
    )
    #: Seconds added to every data page (the five lists and the payout destinations list): a
    #: real list API takes time to answer a page of 100 objects (Dintero publishes none).
    page_latency: float = 0.0
    #: Data requests per second accepted per account (0: no limit); beyond it, 429 with
    #: ``Retry-After`` in whole seconds. Dintero documents 429 and ``Retry-After``, not its limits.
    rate_limit: float = option(
        0.0,
        "data requests a second per account; beyond it 429 with Retry-After (0: none)",
        metavar="N",
    )

    #: Whether ``since_datetime`` (customers, with ``include_deleted=true``) returns a customer
    #: deleted after it. The reference documents ``include_deleted`` and the deleted user's
    #: shape, not how the two parameters combine: True treats a deletion as the customer's
    #: last change; False returns deleted customers only in a list read without
    #: ``since_datetime``.
    deletions_in_since: bool = option(
        True,
        "since_datetime never returns deleted customers",
        flag="--deletions-only-in-full-lists",
        silent=True,
    )
    #: Filters of ``GET /v1/transactions`` answered 400 naming them (``captured_at``,
    #: ``refunded_at``): documented, but "subject to change", so a client must survive their
    #: refusal.
    refused_transaction_filters: tuple[str, ...] = ()
    #: ``refunded_at`` matches a transaction by its first refund only, so a later refund of an
    #: already refunded payment is not found by it. The reference says "Transaction refunded
    #: after date", not which refund: True is the least convenient reading, False (any refund
    #: in the range) the most.
    refunded_at_first_refund_only: bool = option(
        False, "refunded_at matches a transaction by its first refund", silent=True
    )
    #: Whether a settlement moves a payment's ``updated_at`` (its events gain their
    #: ``settlements`` entries). Dintero's reference says neither: False leaves the payment
    #: changed under the same ``updated_at``, which a sync must still take in.
    settlement_touches_updated_at: bool = option(
        True,
        "a settlement adds its entries to a payment's events without moving the payment's "
        "updated_at (default: it moves it)",
        flag="--settlement-keeps-updated-at",
        silent=True,
    )
    #: ``since_datetime`` (customers) returns rows updated strictly after it, not at or after.
    since_exclusive: bool = option(
        False,
        "customers' since_datetime returns rows updated after it, not at or after it",
        silent=True,
    )
    #: Pages hold fewer rows than asked for even when more follow (no page-size rule is
    #: documented). Customers read by ``since_datetime`` keep whole pages: Dintero's documented
    #: way of paging them ("update since_datetime to the latest updated_at value found in the
    #: result") is only complete if a page holds the earliest rows after it.
    short_pages: bool = option(
        False, "pages may hold fewer rows than asked even when more follow", silent=True
    )
    #: How long after creation transactions still change: captured within days, refunded up
    #: to this many days, settled within two weeks (mutations and clock advances).
    late_changes_days: int = option(
        90, "transactions are refunded up to N days after creation", silent=True, metavar="N"
    )
    #: ``dintero``: the error codes this emulator always used (``invalid_grant``, ...);
    #: ``generic``: 400/401/403 bodies whose code and message tell the client nothing.
    error_codes: ErrorCodes = option(
        "dintero",
        "generic: 400/401/403 bodies whose code and message the client cannot know",
        silent=True,
        choices=get_args(ErrorCodes),
    )
    #: The body of ``GET /v1/accounts/{oid}/payout-destinations``: documented only as objects
    #: with ``payout_destination_id``, so either ``{"payout_destinations": [...]}`` or a bare
    #: array; ``missing``: the list is not served for this account (404), which the reference
    #: does not rule out for accounts without the Account Management API; ``paged``: the
    #: object holds the first destination and a ``next_page_token`` (no paging is documented
    #: for this list: a client must refuse it rather than read part of it).
    payout_destination_list: PayoutDestinationList = option(
        "object",
        'the payout destinations list as {"payout_destinations": [...]}, a bare array, not '
        "served (404), or paged (the first one and a next_page_token)",
        silent=True,
        choices=get_args(PayoutDestinationList),
    )
    #: Whether the API client has the ``read:accounts`` scope (Account Management API) that
    #: listing payout destinations needs; without it that list answers 403.
    read_accounts_scope: bool = option(
        True,
        "the API client lacks read:accounts: listing payout destinations answers 403",
        flag="--no-read-accounts",
    )

    def resolved_start_time(self) -> datetime:
        """The configured start time, or 30 days ago truncated to the second."""
        if self.start_time is not None:
            if self.start_time.tzinfo is None:
                return self.start_time.replace(tzinfo=UTC)
            return self.start_time
        now = datetime.now(UTC).replace(microsecond=0)
        return now - timedelta(days=30)
