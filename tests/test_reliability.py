"""Reliability evidence: a fault soak over every stream, and SIGKILL crash loops.

Each test prints what it did to the summary (``prefect-dintero evidence``): how many faults of each
kind the emulator injected, where each kill landed.
"""

from __future__ import annotations

from collections import Counter

import pytest

from prefect_dintero.retry import RetryPolicy
from prefect_dintero.sink import Sink, parse_datetime
from prefect_dintero.store import DEFAULT_STORE
from prefect_dintero.streams import CATALOG

from .test_sync import AID, assert_equals_source, options, sync_all

DATA_ROUTES = ("transactions", "sessions", "settlements", "customers", "payout_transfers")

# The soak's fault mix. Probability rules matching a request share one draw, so on a data route
# exactly 37 % of requests are faulted in expectation: 20 % 429 (half with Retry-After in
# seconds, half as an HTTP date), 10 % 500/502/503, 5 % dropped connections, 2 % 401. The token
# route gets the same 35 % of transient faults, but no forced 401: a 401 there means a wrong
# client secret, which is permanent by design.
SOAK_FAULTS = [
    {"route": "*", "probability": 0.10, "status": 429, "retry_after": 1},
    {
        "route": "*",
        "probability": 0.10,
        "status": 429,
        "retry_after": 1,
        "retry_after_format": "http-date",
    },
    {"route": "*", "probability": 0.034, "status": 500},
    {"route": "*", "probability": 0.033, "status": 502},
    {"route": "*", "probability": 0.033, "status": 503},
    {"route": "*", "probability": 0.05, "drop": True},
    *({"route": route, "probability": 0.02, "status": 401} for route in DATA_ROUTES),
]
# Generous attempts: at a 37 % fault rate, 15 faults in a row on one request is a 1-in-3-million
# event. Retry-After is honoured up to 0.25 s so the soak stays short.
SOAK_POLICY = RetryPolicy(
    max_attempts=15, backoff_base=0.01, backoff_cap=0.05, retry_after_cap=0.25
)


@pytest.fixture(autouse=True)
def _fresh_tokens():
    DEFAULT_STORE.clear()


def assert_cursors_consistent(emu, sink: Sink) -> None:
    """Every window finished (no resume point left) and every cursor sits exactly on the newest
    cursor value of the source: neither behind (data would be refetched forever) nor ahead."""
    for spec in CATALOG.values():
        for partition in emu.config.payout_destinations if spec.per_destination else [""]:
            state = sink.read_state(AID, spec.name, partition)
            source = emu.dump(spec.name, destination=partition or None)
            newest = max(parse_datetime(o[spec.cursor_field]) for o in source)
            assert state.resume is None, f"{spec.name}/{partition}: a window is unfinished"
            assert state.cursor == newest, (
                f"{spec.name}/{partition}: cursor {state.cursor}, newest in source {newest}"
            )


@pytest.mark.slow
def test_fault_soak_over_every_stream_loses_and_duplicates_nothing(
    dintero_emulator_factory, destination, evidence
):
    emu = dintero_emulator_factory(
        transactions=500,
        sessions=150,
        settlements=100,
        customers=150,
        transfers_per_destination=60,
        seed=2026,
    )
    sink = Sink(destination)
    sink.prepare(list(CATALOG.values()))
    emu.set_faults(*SOAK_FAULTS)
    results = sync_all(emu, sink, opts=options(emu, page_size=5), policy=SOAK_POLICY)
    stats = emu.stats()
    emu.clear_faults()

    assert_equals_source(emu, sink)
    assert_cursors_consistent(emu, sink)

    injected = Counter(stats["faults_injected"])
    data_requests = sum(sum(stats["requests"].get(r, {}).values()) for r in DATA_ROUTES)
    data_faults = data_requests - sum(
        stats["requests"].get(r, {}).get("200", 0) for r in DATA_ROUTES
    )
    retries = sum(r.retries for rs in results.values() for r in rs)
    rows = sum(len(emu.dump(spec.name)) for spec in CATALOG.values())
    dialect = "sqlite" if "://" not in destination else "postgresql"
    evidence.note(
        f"fault soak ({dialect}): {rows} rows in 5 streams equal the source (0 lost, 0 "
        f"duplicated, cursors on the newest source value); {stats['requests_total']} requests, "
        f"{data_faults}/{data_requests} data requests faulted; "
        f"injected {dict(sorted(injected.items()))}, Retry-After forms "
        f"{stats['retry_after_forms']}; {retries} retries; "
        f"token grants {stats['token_grants']['client_credentials']}"
    )
    # Every kind of fault really happened, in both Retry-After forms.
    for kind in ("429", "500", "502", "503", "drop", "401"):
        assert injected[kind] > 0, (kind, injected)
    assert stats["retry_after_forms"].get("seconds", 0) > 0
    assert stats["retry_after_forms"].get("http-date", 0) > 0
    # One shared draw: the faulted share of data requests is near the configured 37 %.
    assert 0.25 < data_faults / data_requests < 0.50, (data_faults, data_requests)
    # Each forced 401 cost one renewal, not more.
    assert stats["token_grants"]["client_credentials"] <= injected["401"] + 1
