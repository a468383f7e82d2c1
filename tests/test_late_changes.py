"""Captures and refunds of any age reach the destination within the next hourly run, read by
Dintero's ``captured_at``/``refunded_at`` filters, each with its own cursor; a refused or
ignored filter is said once, remembered, and left to the reconcile for a day."""

from __future__ import annotations

import logging
from datetime import timedelta

import httpx
import pytest

from prefect_dintero.client import DinteroClient
from prefect_dintero.sink import Sink
from prefect_dintero.streams.catalog import CATALOG
from prefect_dintero.sync.options import SyncRequest
from prefect_dintero.sync.stream_sync import sync_account_stream
from prefect_dintero.times import use_clock

from .helpers import AID, FAST, assert_equals_source, creds_for

SPEC = CATALOG["transactions"]
#: A year and more of payments, so that refunds can come 100 to 400 days late.
DATA = dict(transactions=800, sessions=0, settlements=0, customers=0, history_days=400)


def _hourly(emu, sink, transport=None, **request):
    """A run on the emulator's clock, an hour after the last (as the hourly deployment)."""
    emu.advance_clock(3600)
    with (
        use_clock(emu.state.clock.now),
        DinteroClient(creds_for(emu), retry_policy=FAST, transport=transport) as client,
    ):
        if transport is not None:
            client.token_provider.use_transport(httpx.HTTPTransport())
        [result] = sync_account_stream(
            client, sink, SPEC, AID, SyncRequest(page_size=50, **request)
        )
    return result


def _requests(emu) -> int:
    return sum(emu.stats()["requests"].get("transactions", {}).values())


def _old_refunds(emu, n: int) -> set[str]:
    """Refund ``n`` payments more than 100 days old; their ids."""
    before = {t["id"]: t["status"] for t in emu.dump("transactions")}
    emu.mutate(refund_any_age=n, older_than_days=100)
    after = {t["id"]: t for t in emu.dump("transactions")}
    changed = {i for i, t in after.items() if len(t["events"]) and t["status"] != before[i]}
    changed |= {i for i, t in after.items() if sum(e["event"] == "REFUND" for e in t["events"]) > 1}
    return changed


@pytest.mark.parametrize("first_refund_only", [False, True])
def test_refunds_months_late_arrive_with_the_next_hourly_run(
    dintero_emulator_factory, destination, first_refund_only
):
    emu = dintero_emulator_factory(**DATA, refunded_at_first_refund_only=first_refund_only)
    sink = Sink(destination)
    sink.prepare([SPEC])
    _hourly(emu, sink)  # the first sync
    assert_equals_source(emu, sink, [SPEC])
    emu.reset_stats()
    quiet = _hourly(emu, sink)  # nothing changed: the filters cost one request each
    assert [r.requests for r in quiet.late_reads] == [1, 1]
    assert _requests(emu) == quiet.pages + 2
    refunded = _old_refunds(emu, 8)
    assert len(refunded) >= 6
    ages = [
        (emu.now() - _created(emu, i)).days for i in refunded
    ]  # 100 to 400 days: far behind the 3-day lookback and the 92-day reconcile
    assert min(ages) >= 100
    run = _hourly(emu, sink)
    by = {r.partition: r for r in run.late_reads}
    assert by["by refunded_at"].updated >= len(refunded) - 1
    if not first_refund_only:
        assert_equals_source(emu, sink, [SPEC])
    # A second refund of a payment already refunded once, months late.
    twice = _refund_again(emu)
    _hourly(emu, sink)
    stored = {r["id"]: r for r in sink.rows(SPEC, AID)}
    if first_refund_only:
        # Dintero matching the first refund only: the second is not found by the filter,
        # and no read by created_at looks that far back (the README says so).
        assert stored[twice["id"]]["raw"] != twice
    else:
        assert stored[twice["id"]]["raw"] == twice
        assert stored[twice["id"]]["status"] == twice["status"]
    sink.dispose()


def _created(emu, txn_id):
    from prefect_dintero.times import parse_datetime

    [t] = [t for t in emu.dump("transactions") if t["id"] == txn_id]
    return parse_datetime(t["created_at"])


def _refund_again(emu) -> dict:
    """A second refund, now, of a payment over 100 days old that was partly refunded."""
    data = emu.state.accounts[AID]
    now = emu.state.clock.now()
    candidates = [
        t
        for t in data.transactions
        if t["status"] == "PARTIALLY_REFUNDED"
        and (now - _created(emu, t["id"])) > timedelta(days=100)
    ]
    txn = candidates[0]
    from prefect_dintero.emulator.data import to_ms

    data.refund(txn, to_ms(now), 1)
    return next(t for t in emu.dump("transactions") if t["id"] == txn["id"])


def test_a_refused_filter_is_said_once_and_left_to_the_reconcile_for_a_day(
    dintero_emulator_factory, tmp_path, caplog
):
    emu = dintero_emulator_factory(
        **DATA, refused_transaction_filters=("captured_at", "refunded_at")
    )
    sink = Sink(tmp_path / "refused.db")
    sink.prepare([SPEC])
    with caplog.at_level(logging.WARNING, logger="prefect_dintero"):
        first = _hourly(emu, sink)
    assert first.late_reads == []
    said = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(said) == 2 and "reconcile" in said[0].getMessage()
    state = sink.read_state(AID, "transactions", "by refunded_at")
    assert state.paused_until is not None
    caplog.clear()
    emu.reset_stats()
    with caplog.at_level(logging.WARNING, logger="prefect_dintero"):
        again = _hourly(emu, sink)
    assert _requests(emu) == again.pages  # no filter asked for within the day
    assert not [r for r in caplog.records if "refused" in r.getMessage()]  # said once
    # Within the reconcile's window, a late refund still arrives, with the nightly run: the
    # deployment's 35 days reach 92 while a filter is refused.
    recent = emu.mutate(update_transactions=5, recent_days=60)
    assert recent["changed"][AID].get("transactions")
    with caplog.at_level(logging.WARNING, logger="prefect_dintero"):
        _hourly(emu, sink, reconcile=timedelta(days=35))
    assert any("reads 92 days back instead of 35" in r.getMessage() for r in caplog.records)
    assert_equals_source(emu, sink, [SPEC])
    # A day later the filters are asked for again (and refused again, said again).
    emu.advance_clock(86_400)
    emu.reset_stats()
    _hourly(emu, sink)
    assert _requests(emu) > again.pages
    sink.dispose()


@pytest.mark.parametrize("touches_updated_at", [True, False])
def test_the_settlement_of_a_refund_months_late_arrives_with_the_reconcile(
    dintero_emulator_factory, tmp_path, touches_updated_at
):
    """A refund is settled days after it, on a payment of any age: no filter finds that, the
    reconcile's late-change reads (a week back by each filter) do, in 35 days' reconcile;
    whether the settlement moved the payment's updated_at or not (undocumented)."""
    emu = dintero_emulator_factory(**DATA, settlement_touches_updated_at=touches_updated_at)
    sink = Sink(tmp_path / "settled.db")
    sink.prepare([SPEC])
    _hourly(emu, sink)
    refunded = _old_refunds(emu, 4)
    _hourly(emu, sink)
    assert_equals_source(emu, sink, [SPEC])
    emu.advance_clock(4 * 86_400)
    settled = emu.mutate(settle=1)["changed"][AID]["transactions"]
    assert settled
    _hourly(emu, sink)  # an hourly run does not see a settlement
    source = _source(emu)
    stale = {r["id"] for r in sink.rows(SPEC) if r["raw"] != source[r["id"]]}
    assert stale & refunded
    run = _hourly(emu, sink, reconcile=timedelta(days=35))
    assert_equals_source(emu, sink, [SPEC])
    if touches_updated_at:
        # (A copy under the same updated_at is written too, but counted unchanged: the counts
        # compare versions, not whole objects.)
        assert sum(r.updated for r in run.late_reads) >= len(stale & refunded)
    sink.dispose()


def test_a_late_change_read_days_behind_is_read_in_slices(dintero_emulator_factory, tmp_path):
    """After days without a run, each filter's window is cut evenly (its list comes in no
    order of the event's time) and read concurrently; it ends with everything in."""
    emu = dintero_emulator_factory(**DATA, page_latency=0.03)
    sink = Sink(tmp_path / "behind.db")
    sink.prepare([SPEC])
    _hourly(emu, sink)
    for _ in range(4):  # four days without a run, refunds every day
        emu.advance_clock(86_400, refund_any_age=25, older_than_days=5)
    emu.reset_stats()
    with (
        use_clock(emu.state.clock.now),
        DinteroClient(creds_for(emu, max_concurrent_requests=4), retry_policy=FAST) as client,
    ):
        [run] = sync_account_stream(client, sink, SPEC, AID, SyncRequest(page_size=20))
    by = {r.partition: r for r in run.late_reads}
    assert by["by refunded_at"].updated >= 90
    assert emu.stats()["peak_in_flight"]["transactions"] >= 2
    assert_equals_source(emu, sink, [SPEC])
    state = sink.read_state(AID, "transactions", "by refunded_at")
    assert state.resume is None and state.cursor is not None
    sink.dispose()


def _source(emu) -> dict[str, dict]:
    return {t["id"]: t for t in emu.dump("transactions")}


class IgnoresFilters(httpx.HTTPTransport):
    """A Dintero that drops ``captured_at``/``refunded_at``: every transaction comes back."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        params = [
            (k, v)
            for k, v in request.url.params.multi_items()
            if not k.startswith(("captured_at.", "refunded_at."))
        ]
        request.url = request.url.copy_with(params=params)
        return super().handle_request(request)


def test_an_ignored_filter_reads_no_history_and_is_paused(dintero_emulator_factory, tmp_path):
    emu = dintero_emulator_factory(**DATA)
    sink = Sink(tmp_path / "ignored.db")
    sink.prepare([SPEC])
    _hourly(emu, sink)
    emu.reset_stats()
    run = _hourly(emu, sink, transport=IgnoresFilters())
    # One page each (and what was fetched ahead while it was checked: a page or two), seen to
    # hold rows the filter would not have let through: nothing of it is written, and the read
    # stops there rather than page through the whole history (16 pages here).
    assert run.late_reads == []
    assert _requests(emu) <= run.pages + 2 * 3
    assert sink.read_state(AID, "transactions", "by captured_at").paused_until is not None
    sink.dispose()


# -- every money movement a row ----------------------------------------------------------------


def _events_by_transaction(sink, child):
    rows = {}
    for row in sink.rows(child, AID):
        rows.setdefault(row["transaction_id"], []).append(row)
    return {k: sorted(v, key=lambda r: r["position"]) for k, v in rows.items()}


def test_every_money_movement_is_a_row_replaced_with_its_payment(
    dintero_emulator_factory, destination
):
    events_table, _ = SPEC.children
    emu = dintero_emulator_factory(**DATA)
    sink = Sink(destination)
    sink.prepare([SPEC])
    _hourly(emu, sink)
    stored = _events_by_transaction(sink, events_table)
    source = {t["id"]: t for t in emu.dump("transactions")}
    assert stored.keys() == {i for i, t in source.items() if t["events"]}
    for txn_id, rows in stored.items():
        events = source[txn_id]["events"]
        assert [(r["event"], r["amount"], r["event_id"]) for r in rows] == [
            (e["event"], e["amount"], e["id"]) for e in events
        ]
        assert all(r["currency"] == source[txn_id]["currency"] for r in rows)
    # A late refund: the payment is re-read, its events replaced in the same transaction.
    refunded = _old_refunds(emu, 3)
    _hourly(emu, sink)
    stored = _events_by_transaction(sink, events_table)
    source = {t["id"]: t for t in emu.dump("transactions")}
    for txn_id in refunded:
        assert len(stored[txn_id]) == len(source[txn_id]["events"])
        assert stored[txn_id][-1]["event"] == "REFUND"
        assert stored[txn_id][-1]["transaction_status"] == source[txn_id]["status"]
    # An older copy of a payment (a replayed page) leaves its newer events alone.
    txn_id = next(iter(refunded))
    older = {**source[txn_id], "events": source[txn_id]["events"][:-1]}
    older["updated_at"] = "2000-01-01T00:00:00Z"
    sink.write_page(SPEC, AID, "", [older], lambda state, page: state)
    assert len(_events_by_transaction(sink, events_table)[txn_id]) == len(source[txn_id]["events"])
    # "Refunded today" is a plain query, the same on every database.
    from sqlalchemy import text

    with sink.engine.connect() as conn:
        refunds = conn.execute(
            text(
                "SELECT count(*) FROM dintero_transaction_events "
                "WHERE event = 'REFUND' AND success AND created_at >= :since"
            ),
            {"since": emu.now() - timedelta(hours=3)},
        ).scalar_one()
    assert refunds >= len(refunded)
    sink.dispose()


def test_captures_weeks_late_arrive_with_the_next_hourly_run(dintero_emulator_factory, tmp_path):
    emu = dintero_emulator_factory(**DATA)
    sink = Sink(tmp_path / "captures.db")
    sink.prepare([SPEC])
    _hourly(emu, sink)
    changed = emu.mutate(capture_late=6, older_than_days=10)["changed"][AID]["transactions"]
    assert changed >= 3
    run = _hourly(emu, sink)
    by = {r.partition: r for r in run.late_reads}
    assert by["by captured_at"].updated >= changed  # 10 to 30 days old: past the lookback
    assert run.updated == 0  # the read by created_at did not see them
    assert_equals_source(emu, sink, [SPEC])
    statuses = {r["status"] for r in sink.rows(SPEC, AID)}
    assert "PARTIALLY_CAPTURED" in statuses or "CAPTURED" in statuses
    sink.dispose()
