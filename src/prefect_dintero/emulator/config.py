"""Configuration of the bundled Dintero emulator."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

ListOrder = Literal["newest", "oldest", "shuffled"]
ErrorCodes = Literal["dintero", "generic"]
PayoutDestinationList = Literal["object", "array", "missing"]

DEFAULT_ACCOUNT_ID = "T12345678"
DEFAULT_CLIENT_ID = "emulator-client"
DEFAULT_CLIENT_SECRET = "emulator-secret"
DEFAULT_REDIRECT_URI = "http://127.0.0.1:8788/callback"


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
    client_id: str = DEFAULT_CLIENT_ID
    client_secret: str = field(default=DEFAULT_CLIENT_SECRET, repr=False)
    redirect_uris: list[str] = field(default_factory=lambda: [DEFAULT_REDIRECT_URI])
    user: TestUser = field(default_factory=TestUser)
    #: Lifetime of access tokens, seconds.
    token_lifetime: int = 3600
    #: Lifetime of a user session's access tokens (the OIDC exchange's ``expires_in``), when it
    #: differs: Dintero documents 4 hours for service tokens and shows 86400 for the exchange.
    session_lifetime: int | None = None
    #: Issue refresh tokens from the OIDC exchange.
    refresh_tokens: bool = False
    #: Rotate refresh tokens: every refresh returns a new one and revokes the old one.
    rotate_refresh_tokens: bool = True
    #: Seconds a rotated-out refresh token is still accepted (0: strict, used once). Identity
    #: providers offer this (Auth0's reuse interval, Okta's grace period) so that a client which
    #: dies between the server's rotation and saving the new token can still refresh.
    refresh_token_reuse_interval: float = 0.0
    refresh_token_lifetime: int = 30 * 24 * 3600
    #: Lifetime of an authorization code, seconds.
    code_lifetime: int = 60
    transactions: int = 250
    sessions: int = 120
    settlements: int = 40
    customers: int = 80
    payout_destinations: list[str] = field(default_factory=lambda: ["PD-main", "PD-store-2"])
    transfers_per_destination: int = 60
    seed: int = 42
    #: The emulator's "now" when it starts. Defaults to 30 days before the real time, so that
    #: advancing the clock never creates objects dated in the real future.
    start_time: datetime | None = None
    #: How far back the generated history reaches from ``start_time``.
    history_days: int = 180

    # -- where Dintero's reference is silent: every plausible choice, switchable --------------
    # (the README's "Where Dintero's reference is silent" lists them). The sync must be correct
    # under each.

    #: Order of every list whose order Dintero does not document: transactions, sessions,
    #: settlements, payout transfers, and customers (without ``since_datetime``: the whole list;
    #: with it: the rows within a page). ``shuffled`` is a stable random permutation per data set.
    list_order: ListOrder = "newest"
    #: Leave out what the schemas mark optional but not nullable: ``items`` (settlements) and
    #: ``entries`` (payout transfers) when empty, ``last_evaluated_key`` and ``next_page_token``
    #: on the last page, a session's ``transaction_id`` before it has one. That is what the
    #: schemas say; False sends them as ``[]`` and ``null``, as real servers sometimes do.
    omit_optional_keys: bool = True
    #: Seconds added to every data page (the five lists and the payout destinations list): a
    #: real list API takes time to answer a page of 100 objects (Dintero publishes none).
    page_latency: float = 0.0
    #: Data requests per second accepted per account (0: no limit); beyond it, 429 with
    #: ``Retry-After`` in whole seconds. Dintero documents 429 and ``Retry-After``, not its limits.
    rate_limit: float = 0.0

    #: Whether ``since_datetime`` (customers, with ``include_deleted=true``) returns a customer
    #: deleted after it. The reference documents ``include_deleted`` and the deleted user's
    #: shape, not how the two parameters combine: True treats a deletion as the customer's
    #: last change; False returns deleted customers only in a list read without
    #: ``since_datetime``.
    deletions_in_since: bool = True
    #: Filters of ``GET /v1/transactions`` answered 400 naming them (``captured_at``,
    #: ``refunded_at``): documented, but "subject to change", so a client must survive their
    #: refusal.
    refused_transaction_filters: tuple[str, ...] = ()
    #: ``refunded_at`` matches a transaction by its first refund only, so a later refund of an
    #: already refunded payment is not found by it. The reference says "Transaction refunded
    #: after date", not which refund: True is the least convenient reading, False (any refund
    #: in the range) the most.
    refunded_at_first_refund_only: bool = False
    #: Whether a settlement moves a payment's ``updated_at`` (its events gain their
    #: ``settlements`` entries). Dintero's reference says neither: False leaves the payment
    #: changed under the same ``updated_at``, which a sync must still take in.
    settlement_touches_updated_at: bool = True
    #: ``since_datetime`` (customers) returns rows updated strictly after it, not at or after.
    since_exclusive: bool = False
    #: Pages hold fewer rows than asked for even when more follow (no page-size rule is
    #: documented). Customers read by ``since_datetime`` keep whole pages: Dintero's documented
    #: way of paging them ("update since_datetime to the latest updated_at value found in the
    #: result") is only complete if a page holds the earliest rows after it.
    short_pages: bool = False
    #: How long after creation transactions still change: captured within days, refunded up
    #: to this many days, settled within two weeks (mutations and clock advances).
    late_changes_days: int = 90
    #: ``dintero``: the error codes this emulator always used (``invalid_grant``, ...);
    #: ``generic``: 400/401/403 bodies whose code and message tell the client nothing.
    error_codes: ErrorCodes = "dintero"
    #: The body of ``GET /v1/accounts/{oid}/payout-destinations``: documented only as objects
    #: with ``payout_destination_id``, so either ``{"payout_destinations": [...]}`` or a bare
    #: array; ``missing``: the list is not served for this account (404), which the reference
    #: does not rule out for accounts without the Account Management API.
    payout_destination_list: PayoutDestinationList = "object"
    #: Whether the API client has the ``read:accounts`` scope (Account Management API) that
    #: listing payout destinations needs; without it that list answers 403.
    read_accounts_scope: bool = True

    def resolved_start_time(self) -> datetime:
        """The configured start time, or 30 days ago truncated to the second."""
        if self.start_time is not None:
            if self.start_time.tzinfo is None:
                return self.start_time.replace(tzinfo=UTC)
            return self.start_time
        now = datetime.now(UTC).replace(microsecond=0)
        return now - timedelta(days=30)
