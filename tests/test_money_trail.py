"""The money trail: every capture, refund and settlement entry a row, payouts as data, and one
view per payout destination and day that adds up, on every dialect; a missing settlement
entry, or a missing settlement, shows as a difference."""

from __future__ import annotations

from collections import Counter
from datetime import datetime

from sqlalchemy import text

from prefect_dintero.client import DinteroClient
from prefect_dintero.sink import Sink
from prefect_dintero.sink.money_trail import COLUMNS, VIEW, ensure_view
from prefect_dintero.streams.catalog import CATALOG
from prefect_dintero.sync.stream_sync import sync_account_stream
from prefect_dintero.times import use_clock

from .helpers import AID, FAST, creds_for

#: Only payments' money: no generated settlements or ledger entries outside them.
DATA = dict(transactions=150, sessions=0, customers=0, settlements=0, transfers_per_destination=0)
MONEY = (
    "transactions",
    "settlements",
    "payout_transfers",
    "payout_destinations",
    "payout_balances",
)


def _sync(emu, sink: Sink) -> None:
    streams = [CATALOG[name] for name in MONEY]
    sink.prepare(streams)
    with use_clock(emu.state.clock.now), DinteroClient(creds_for(emu), retry_policy=FAST) as c:
        for stream in streams:
            sync_account_stream(c, sink, stream, AID)


def _trail(sink: Sink) -> dict[tuple, dict]:
    with sink.engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM dintero_money_trail")).mappings().all()
    return {(r["payout_destination_id"], r["day"], r["currency"]): dict(r) for r in rows}


def _day(stamp: str) -> str:
    return datetime.fromisoformat(stamp).date().isoformat()


def _expected(emu) -> dict[tuple, Counter]:
    """The view's measures computed from the emulator's objects, without SQL."""
    want: dict[tuple, Counter] = {}
    for txn in emu.dump("transactions"):
        for event in txn["events"]:
            if event["event"] in ("CAPTURE", "REFUND") and event["success"]:
                key = (txn["payout_destination_id"], _day(event["created_at"]), txn["currency"])
                measure = "captured" if event["event"] == "CAPTURE" else "refunded"
                want.setdefault(key, Counter())[measure] += event["amount"]
    for settlement in emu.dump("settlements"):
        [amounts] = settlement["amounts"]
        key = (settlement["payout_destination_id"], _day(settlement["settled_at"]))
        want.setdefault((*key, amounts["currency"]), Counter())["settled"] += amounts["amount"]
        want[(*key, amounts["currency"])]["fees"] += amounts["fee"]
    for entry in emu.dump("payout_transfers"):
        if entry["type"] == "inbound":
            day = _day(entry["payment_match_report_data"]["settled_at"])
            measure = "transferred"
        else:
            day, measure = _day(entry["created_at"]), "paid_out"
        key = (entry["payout_destination_id"], day, entry["currency"])
        want.setdefault(key, Counter())[measure] += entry["amount"]
    return want


def test_the_money_trail_adds_up(dintero_emulator_factory, destination):
    emu = dintero_emulator_factory(**DATA)
    sink = Sink(destination)
    _sync(emu, sink)
    trail = _trail(sink)
    # Once in place, the view is left alone by every later preparation (never dropped under
    # a reader), and says it is there.
    with sink.dialect.begin(sink.engine) as conn:
        assert ensure_view(conn, sink.dialect)
        assert sink.dialect.existing_columns(conn, VIEW) == set(COLUMNS)

    # The view's figures are the emulator's, day by day.
    want = _expected(emu)
    assert trail.keys() == want.keys()
    for key, row in trail.items():
        for measure in ("captured", "refunded", "settled", "fees", "transferred", "paid_out"):
            assert row[measure] == want[key][measure], (key, measure)
    # Every settlement is its payments' entries, and reached its payout destination.
    assert all(r["settlement_difference"] == 0 for r in trail.values())
    assert all(r["transfer_difference"] == 0 for r in trail.values())
    assert sum(r["settled"] for r in trail.values()) > 0
    # What was captured less what was refunded was settled, or awaits its settlement.
    for pd, currency in {(k[0], k[2]) for k in trail}:
        rows = [r for k, r in trail.items() if (k[0], k[2]) == (pd, currency)]
        moved = sum(r["captured"] - r["refunded"] for r in rows)
        settled = sum(r["settled_capture"] - r["settled_refund"] for r in rows)
        assert moved == settled + sum(r["awaiting_settlement"] for r in rows)
    # What came in less what went to the bank is what the destination holds.
    with sink.engine.connect() as conn:
        balances = conn.execute(
            text("SELECT payout_destination_id, currency, amount FROM dintero_payout_balances")
        ).all()
        held = {(pd, cur): amount for pd, cur, amount in balances}
        # Which payments, refunds and fees make up each payout: one plain join.
        payouts = conn.execute(
            text(
                "SELECT t.ledger_entry_id, t.amount, SUM(p.amount), SUM(p.capture), "
                "SUM(p.refund), SUM(p.fee), t.settled_capture, t.settled_refund, t.settled_fee "
                "FROM dintero_payout_transfers t JOIN dintero_transaction_settlements p "
                "ON p.account_id = t.account_id AND p.provider_reference = t.provider_reference "
                "WHERE t.type = 'inbound' "
                "GROUP BY t.ledger_entry_id, t.amount, t.settled_capture, t.settled_refund, "
                "t.settled_fee"
            )
        ).all()
    for (pd, currency), amount in held.items():
        rows = [r for k, r in trail.items() if (k[0], k[2]) == (pd, currency)]
        assert amount == sum(r["transferred"] - r["paid_out"] for r in rows)
    inbound = [e for e in emu.dump("payout_transfers") if e["type"] == "inbound"]
    assert len(payouts) == len(inbound)
    for _, amount, entries, capture, refund, fee, t_capture, t_refund, t_fee in payouts:
        assert (amount, capture, refund, fee) == (entries, t_capture, t_refund, t_fee)
    destinations = {
        row["payout_destination_id"] for row in sink.rows(CATALOG["payout_destinations"])
    }
    assert destinations == {"PD-main", "PD-store-2"}


def test_a_missing_settlement_entry_or_settlement_shows_as_a_difference(
    dintero_emulator_factory, destination
):
    emu = dintero_emulator_factory(**DATA)
    data = emu.state.accounts[AID]
    settled = [
        (txn, event)
        for txn in data.transactions
        for event in txn["events"]
        if event["event"] == "CAPTURE" and "settlements" in event
    ]

    def key(txn: dict, stamp: str) -> tuple:
        return (txn["payout_destination_id"], _day(stamp), txn["currency"])

    # A payment whose capture Dintero reports without its settlement entry.
    txn, event = settled[0]
    [entry] = event.pop("settlements")["events"]
    settled_on = data.settlements_by_created.by_id[entry["settlement_id"]]["settled_at"]
    entry_key = key(txn, settled_on)
    # A settlement missing from the settlements list, its payments' entries still there; one
    # whose days are not the missing entry's, so each difference shows on its own.
    for gone_txn, gone_event in settled[1:]:
        gone = data.settlements_by_created.by_id[
            gone_event["settlements"]["events"][0]["settlement_id"]
        ]
        gone_key = key(gone_txn, gone["settled_at"])
        members = [
            (t, e)
            for t, e in settled
            if "settlements" in e and e["settlements"]["events"][0]["settlement_id"] == gone["id"]
        ]
        if entry_key not in {gone_key, *(key(t, e["created_at"]) for t, e in members)}:
            break
    data.settlements_by_created.remove(gone["id"])
    data.settlements_by_settled.remove(gone["id"])
    gone_amount = gone["amounts"][0]["amount"]

    sink = Sink(destination)
    _sync(emu, sink)
    trail = _trail(sink)

    # The missing entry: its settlement's day says the providers paid more than the payments
    # account for, by exactly that entry.
    assert trail[entry_key]["settlement_difference"] == entry["amount"]
    # The missing settlement: the money that came in has no settlement to explain it ...
    assert trail[gone_key]["transfer_difference"] == -gone_amount
    assert sum(r["transfer_difference"] for r in trail.values()) == -gone_amount
    # ... and its payments' entries none either: they show on their events' days.
    for t, e in members:
        assert trail[key(t, e["created_at"])]["settlement_difference"] < 0
    assert sum(r["settlement_difference"] for r in trail.values()) == entry["amount"] - gone_amount
    # The capture without its entry awaits its settlement, as far as the view can tell.
    awaiting = sum(
        (e["amount"] if e["event"] == "CAPTURE" else -e["amount"])
        for t in emu.dump("transactions")
        for e in t["events"]
        if e["event"] in ("CAPTURE", "REFUND") and e["success"] and "settlements" not in e
    )
    assert sum(r["awaiting_settlement"] for r in trail.values()) == awaiting
    assert trail[key(txn, event["created_at"])]["awaiting_settlement"] != 0
