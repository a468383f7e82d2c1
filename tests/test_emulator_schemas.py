"""Every emulator list response, every page, checked against Dintero's published schemas
(``dintero_schemas.py``), under each emulator switch that changes a response's shape."""

from __future__ import annotations

import pytest

from prefect_dintero.emulator import EmulatorConfig, running_emulator

from . import dintero_schemas as schema
from .test_emulator_contract import AID, HTTP, bearer, service_token

DATA = dict(
    account_ids=[AID],
    transactions=60,
    sessions=60,
    settlements=30,
    customers=30,
    transfers_per_destination=40,
)
SWITCHES = {
    "schemas-default": {},
    "null-optional-keys": dict(omit_optional_keys=False),
    "shuffled-short-pages": dict(list_order="shuffled", short_pages=True),
    "bare-array-destinations": dict(payout_destination_list="array"),
}


def _pages(emu, token, path, rows_key, next_params, limit=7):
    """Every page of a list; ``rows_key`` None for a bare array."""
    query: dict = {"limit": limit}
    while True:
        body = HTTP.get(f"{emu.url}{path}", params=query, headers=bearer(token)).json()
        yield body
        rows = body if rows_key is None else (body.get(rows_key) or [])
        nxt = next_params(body, rows)
        if not nxt:
            return
        query = {"limit": limit, **nxt}


@pytest.mark.parametrize("switch", list(SWITCHES))
def test_every_page_of_every_list_matches_the_schemas(switch):
    config = EmulatorConfig(**DATA, **SWITCHES[switch])
    nulls = not config.omit_optional_keys
    checked: dict[str, int] = {}
    with running_emulator(config) as emu:
        token = service_token(emu)
        for path, model in (
            ("/v1/transactions", schema.Transaction),
            ("/v1/sessions", schema.Session),
        ):
            for page in _pages(
                emu, token, path, None, lambda b, rows: rows and {"starting_after": rows[-1]["id"]}
            ):
                for obj in page:
                    schema.check(model, obj, nulls_allowed=nulls)
                    checked[model.__name__] = checked.get(model.__name__, 0) + 1

        for page in _pages(
            emu,
            token,
            f"/v1/accounts/{AID}/settlements",
            "items",
            lambda b, rows: (
                b.get("last_evaluated_key")
                and {
                    "starting_after_id": b["last_evaluated_key"]["id"],
                    "starting_after_date": b["last_evaluated_key"]["settled_at"],
                }
            ),
        ):
            parsed = schema.check(schema.SettlementsPage, page, nulls_allowed=nulls)
            checked["Settlement"] = checked.get("Settlement", 0) + len(parsed.items)

        for page in _pages(
            emu,
            token,
            f"/v1/accounts/{AID}/customers/users",
            None,
            lambda b, rows: False,  # one page of 100 holds them all
            limit=100,
        ):
            for obj in page:
                schema.check(schema.Customer, obj)
                checked["Customer"] = checked.get("Customer", 0) + 1

        listed = HTTP.get(
            f"{emu.url}/v1/accounts/{AID}/payout-destinations", headers=bearer(token)
        ).json()
        if config.payout_destination_list == "object":
            destinations = schema.check(schema.PayoutDestinationList, listed).payout_destinations
        else:  # a bare array: outside the reference's example, a choice the client must read
            destinations = [schema.check(schema.PayoutDestination, d) for d in listed]
        assert {d.payout_destination_id for d in destinations} == set(config.payout_destinations)

        for pd in config.payout_destinations:
            for page in _pages(
                emu,
                token,
                f"/v2/accounts/{AID}/payout/payout-destinations/{pd}/transfers",
                "entries",
                lambda b, rows: b.get("next_page_token") and {"page": b["next_page_token"]},
            ):
                parsed = schema.check(schema.TransfersPage, page, nulls_allowed=nulls)
                for entry in parsed.entries:
                    checked["TransferEntry"] = checked.get("TransferEntry", 0) + 1
                    if entry.type == "outbound":
                        assert entry.outbound_receiver_bank_account_number
                        assert entry.outbound_receiver_bank_account_bic
                    if entry.payment_match_report_data is not None:
                        checked["PaymentMatch"] = checked.get("PaymentMatch", 0) + 1
            balances = HTTP.get(
                f"{emu.url}/v2/accounts/{AID}/payout/payout-destinations/{pd}/balances",
                headers=bearer(token),
            ).json()
            parsed_balances = schema.check(schema.PayoutDestinationBalances, balances)
            checked["Balance"] = checked.get("Balance", 0) + len(
                parsed_balances.payout_destination_balances
            )
        transfers = emu.dump("payout_transfers")
        settlements = emu.dump("settlements")
        settled_events = [
            e for t in emu.dump("transactions") for e in t["events"] if "settlements" in e
        ]
        balances = emu.dump("payout_balances")

    # The generated ones, and those the providers' daily runs made of the payments: a
    # settlement each, one inbound entry (with its match report) per settlement, one
    # outbound per destination, currency and day.
    assert len(settlements) > 30 and settled_events
    assert checked == {
        "Transaction": 60,
        "Session": 60,
        "Settlement": len(settlements),
        "Customer": 30,
        "TransferEntry": len(transfers),
        "PaymentMatch": len(settlements) - 30,
        "Balance": len(balances),
    }


def test_the_schemas_refuse_what_they_should():
    """The models are not vacuous: a missing required key, or null where the schema says a
    string when present, fails."""
    with running_emulator(EmulatorConfig(**DATA, omit_optional_keys=False)) as emu:
        token = service_token(emu)
        sessions = HTTP.get(
            f"{emu.url}/v1/sessions", params={"limit": 100}, headers=bearer(token)
        ).json()
    without_transaction = next(s for s in sessions if s.get("transaction_id") is None)
    with pytest.raises(ValueError, match="transaction_id"):
        schema.check(schema.Session, without_transaction)
    schema.check(schema.Session, without_transaction, nulls_allowed=True)
    no_configuration = {k: v for k, v in sessions[0].items() if k != "configuration"}
    with pytest.raises(ValueError, match="configuration"):
        schema.check(schema.Session, no_configuration, nulls_allowed=True)
    with pytest.raises(ValueError, match="next_page_token"):
        schema.check(schema.TransfersPage, {"entries": [], "next_page_token": None})
    # An address's optional strings: absent, never null (the emulator once sent null).
    address = {**sessions[0]["order"]["billing_address"], "co_address": None}
    with pytest.raises(ValueError, match="co_address"):
        schema.check(schema.OrderAddress, address)
