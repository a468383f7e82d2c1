"""Dintero's list responses as its published schemas describe them, written here as pydantic
models, to check the emulator against (``test_emulator_schemas.py``).

Sources: Dintero's payments spec (``spec-payments.yaml``: transactions, settlements, payout
transfers) and checkout spec (``spec-checkout.yaml``: sessions), and the customers spec, as
rendered at https://docs.dintero.com/api-reference. What they say, in short:

- A payout transfer entry carries 18 keys on every entry, each nullable: the ledger ones and
  the nine ``transfer_*``/``outbound_*`` ones (the receiving bank account among them).
- A transfers page's ``entries`` and ``next_page_token`` are optional; the token is a string
  when present, never null. A settlements page's ``items`` and ``last_evaluated_key`` likewise
  (the key an object).
- A checkout session requires its ``configuration``; its ``transaction_id`` is a string, absent
  until the session has a transaction.
- Transactions and sessions carry the buyer: ``customer`` (e-mail, phone), billing and shipping
  addresses (``OrderAddress``), ``customer_ip`` and ``user_agent``; transactions a masked card.

Every model allows keys it does not name (Dintero adds fields without notice). A key the schema
makes optional but not nullable is declared with a default that is not None: sent as ``null``
it fails, as it should.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class OrderAddress(_Open):
    first_name: str
    last_name: str
    address_line: str
    postal_code: str
    postal_place: str
    country: str
    email: str = ""
    phone_number: str = ""
    address_line_2: str | None = None
    # Typed string and optional in the schemas, not nullable: absent, never null.
    co_address: str = ""
    business_name: str = ""
    organization_number: str = ""
    latitude: float | None = None
    longitude: float | None = None


class Buyer(_Open):
    email: str
    phone_number: str
    customer_id: str = ""


class TransactionSettlementsEvent(_Open):
    """``TransactionSettlementsEvent``: one settlement's part of a transaction event."""

    settlement_id: str
    provider_reference: str
    amount: int
    event_correlation_id: str = ""
    capture: int = 0
    refund: int = 0
    fee: int = 0


class TransactionSettlementsRead(_Open):
    events: list[TransactionSettlementsEvent]
    settlement_status: str = ""


class TransactionEvent(_Open):
    event: str
    amount: int
    created_at: str
    settlements: TransactionSettlementsRead | None = None


class Transaction(_Open):
    id: str
    amount: int
    currency: str
    status: str
    created_at: str
    updated_at: str
    payment_product: str
    payment_product_type: str
    merchant_reference: str
    session_id: str
    settlement_status: str
    items: list[dict[str, Any]]
    events: list[TransactionEvent]
    store: dict[str, Any]
    metadata: dict[str, Any]
    customer: Buyer
    billing_address: OrderAddress
    shipping_address: OrderAddress
    customer_ip: str
    user_agent: str
    card: dict[str, Any]


class SessionOrder(_Open):
    amount: int
    currency: str
    items: list[dict[str, Any]]
    billing_address: OrderAddress
    shipping_address: OrderAddress


class Session(_Open):
    id: str
    created_at: str
    configuration: dict[str, Any]
    order: SessionOrder
    url: dict[str, Any]
    events: list[dict[str, Any]]
    customer: Buyer
    customer_ip: str
    user_agent: str
    transaction_id: str = "absent"  # a string when present, never null


class Settlement(_Open):
    id: str
    created_at: str
    updated_at: str
    settled_at: str
    start_at: str
    end_at: str
    provider: str
    provider_reference: str
    payment_status: str
    payout_destination_id: str
    amounts: list[dict[str, Any]]
    attachments: list[Any]


class SettlementsPage(_Open):
    items: list[Settlement] = []
    last_evaluated_key: dict[str, Any] = {}  # an object when present, never null


class SettlementAmounts(_Open):
    amount: int = 0
    capture: int = 0
    refund: int = 0
    fee: int = 0
    currency: str = ""


class PaymentMatchReportData(_Open):
    """``PaymentMatchReportDataV2``: every key optional."""

    settled_at: str = ""
    created_at: str = ""
    provider: str = ""
    provider_reference: str = ""
    amounts: list[SettlementAmounts] = []
    payment_status: str = ""
    payout_destination_id: str = ""


class TransferEntry(_Open):
    # Required on every entry, each nullable.
    account_id: str | None
    amount: int | None
    created_at: str | None
    currency: str | None
    inbound_payment_provider: str | None
    ledger_entry_id: str | None
    payout_destination_config_id: str | None
    payout_destination_id: str | None
    type: str | None
    transfer_id: str | None
    transfer_reference: str | None
    transfer_source_payout_destination_id: str | None
    transfer_destination_payout_destination_id: str | None
    outbound_message: str | None
    outbound_receiver_bank_account_bic: str | None
    outbound_receiver_bank_account_number: str | None
    outbound_receiver_bank_account_type: str | None
    outbound_receiver_country: str | None
    payment_match_report_data: PaymentMatchReportData | None = None


class TransfersPage(_Open):
    entries: list[TransferEntry] = []
    next_page_token: str = ""  # a string when present, never null


class PayoutDestination(_Open):
    payout_destination_id: str


class PayoutDestinationList(_Open):
    payout_destinations: list[PayoutDestination]


class PayoutDestinationBalance(_Open):
    """``PayoutDestinationBalanceV2``."""

    account_id: str
    payout_destination_config_id: str
    payout_destination_id: str
    currency: str
    amount: int


class PayoutDestinationBalances(_Open):
    payout_destination_balances: list[PayoutDestinationBalance] = []


class Customer(_Open):
    id: str
    customer_id: str
    created_at: str
    updated_at: str
    type: str
    first_name: str
    last_name: str
    email: str
    phone_number: str


#: The keys the schemas make optional but not nullable, per model: what the emulator's
#: ``--null-optional-keys`` switch sends as null (a deviation real servers sometimes make).
OPTIONAL_NOT_NULLABLE = {
    Session: ("transaction_id",),
    SettlementsPage: ("items", "last_evaluated_key"),
    TransfersPage: ("entries", "next_page_token"),
}
#: The same inside an object's addresses (``OrderAddress``).
ADDRESS_OPTIONAL_NOT_NULLABLE = ("co_address", "business_name", "organization_number")


def check(model: type[BaseModel], body: Any, *, nulls_allowed: bool = False) -> BaseModel:
    """``body`` validated against ``model``; with ``nulls_allowed``, a null where the schema
    says "absent or a value" is taken as absent (and nowhere else)."""
    if nulls_allowed and isinstance(body, dict):
        body = {
            k: _without_address_nulls(v)
            for k, v in body.items()
            if not (v is None and k in OPTIONAL_NOT_NULLABLE.get(model, ()))
        }
    return model.model_validate(body)


def _without_address_nulls(value: Any) -> Any:
    """Nulls taken as absent in every address, however deep (a session's are in ``order``)."""
    if isinstance(value, list):
        return [_without_address_nulls(v) for v in value]
    if not isinstance(value, dict):
        return value
    return {
        k: _without_address_nulls(v)
        for k, v in value.items()
        if not (v is None and k in ADDRESS_OPTIONAL_NOT_NULLABLE)
    }
