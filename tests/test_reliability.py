"""Reliability evidence: a fault soak over every stream, and SIGKILL crash loops.

Each test prints what it did to the summary (``prefect-dintero evidence``): how many faults of each
kind the emulator injected, where each kill landed.
"""

from __future__ import annotations

import contextlib
import hashlib
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from prefect_dintero.auth.store import DEFAULT_STORE
from prefect_dintero.emulator import EmulatorConfig, running_emulator
from prefect_dintero.http.retry import RetryPolicy
from prefect_dintero.sink import STATE_TABLE, Sink
from prefect_dintero.streams.catalog import CATALOG
from prefect_dintero.times import parse_datetime

from ._servers import prefect_server_process, run
from .helpers import (
    AID,
    assert_equals_source,
    check_cursor_not_ahead_of_data,
    options,
    sync_all,
)

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
        if spec.incremental == "snapshot":  # read whole: its cursor is the run's start
            continue
        for partition in emu.config.payout_destinations if spec.per_destination else [""]:
            state = sink.read_state(AID, spec.name, partition)
            source = emu.dump(spec.name, destination=partition or None)
            newest = max(parse_datetime(o[spec.cursor_field]) for o in source)
            assert state.resume is None, f"{spec.name}/{partition}: a window is unfinished"
            assert state.cursor == newest, (
                f"{spec.name}/{partition}: cursor {state.cursor}, newest in source {newest}"
            )


@pytest.mark.slow
# The sync's behaviour under faults, on the two dialects that differ most (one writer vs row
# locks); DuckDB passes test_sync.py's fault test (CI's time budget).
@pytest.mark.parametrize("destination", ["sqlite", "postgres"], indirect=True)
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
        f"fault soak ({dialect}): {rows} rows in {len(CATALOG)} streams equal the source (0 lost, 0 "
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


# -- crash loop -----------------------------------------------------------------------------------

SETUP = textwrap.dedent(
    """
    import sys
    from pydantic import SecretStr
    from prefect_dintero import DinteroCredentials
    from prefect_dintero.flows import dintero_login

    url, client_id, secret, code = sys.argv[1:5]
    DinteroCredentials(account_id="T12345678", client_id=client_id,
        client_secret=SecretStr(secret), api_url=url, checkout_url=url).save(
        "crash-creds", overwrite=True)
    dintero_login("crash-creds", "crash-session", authorization_response=SecretStr(code))
    """
)

# The user's sync, as a deployment would run it: the dintero-sync flow, reading as the user.
# The next run starts as soon as one is killed: with one_run_at_a_time it would first wait for
# the killed run's account slot to lapse (five minutes); tests/test_sync_flow.py tests the slot.
SYNC = textwrap.dedent(
    """
    import sys
    from prefect_dintero.flows import dintero_sync

    dintero_sync("crash-creds", session_block="crash-session", destination=sys.argv[1],
                 page_size=40, payout_destinations=["PD-main", "PD-store-2"],
                 one_run_at_a_time=False)
    print("DONE", flush=True)
    """
)

# The saved refresh token's fingerprint (never the token itself), one call as the user, and the
# fingerprint again: the call renews a stale session.
PROBE = textwrap.dedent(
    """
    import hashlib
    from prefect_dintero import DinteroOIDCSession
    from prefect_dintero.blocks.token_store import save_pending

    def saved():
        token = DinteroOIDCSession.load("crash-session").refresh_token.get_secret_value()
        return hashlib.sha256(token.encode()).hexdigest()[:16]

    print(f"BEFORE {saved()}", flush=True)
    with DinteroOIDCSession.load("crash-session").get_client() as client:
        client.get_json("/v1/accounts/T12345678/settlements", params={"limit": 1})
    assert save_pending()  # a renewed session is saved in the background
    print(f"AFTER {saved()}", flush=True)
    """
)


def fingerprint(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()[:16]


def write_lock_held(database: Path) -> bool:
    """Whether another connection is inside a write transaction on the SQLite file right now."""
    conn = sqlite3.connect(database, timeout=0, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
        return False
    except sqlite3.OperationalError:
        return True
    finally:
        conn.close()


def rows_in(database: Path) -> int:
    if not database.exists():
        return 0
    with contextlib.closing(sqlite3.connect(database, timeout=30)) as conn:
        names = [
            n
            for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            if n.startswith("dintero_") and n != STATE_TABLE
        ]
        return sum(conn.execute(f'SELECT count(*) FROM "{n}"').fetchone()[0] for n in names)


def wait_until(condition: Callable[[], bool], process: subprocess.Popen, timeout: float) -> bool:
    """Poll ``condition`` tightly; False if the process ended or time ran out first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if condition():
            return True
    return False


@pytest.mark.slow
def test_crash_loop_resumes_to_the_source_and_never_loses_the_rotated_refresh_token(
    tmp_path, evidence
):
    config = EmulatorConfig(
        refresh_tokens=True,
        rotate_refresh_tokens=True,
        refresh_token_reuse_interval=900,
        token_lifetime=6,
        transactions=1500,
        sessions=240,
        settlements=80,
        customers=160,
        transfers_per_destination=80,
    )
    database = tmp_path / "crash.db"
    with running_emulator(config) as emu, prefect_server_process(tmp_path) as env:
        evidence.scan_path(tmp_path)
        run(
            [
                sys.executable,
                "-c",
                SETUP,
                emu.url,
                config.client_id,
                config.client_secret,
                emu.authorization_code(),
            ],
            env,
        )
        slow_pages = [
            {"route": route, "probability": 1.0, "latency": 0.12} for route in DATA_ROUTES
        ]

        def probe() -> tuple[bool, bool]:
            """Whether the session's saved refresh token was rotated out, before and after one
            call as the user (which renews a stale session)."""
            # Nothing else runs now: what the emulator holds is what the saved token faces.
            rotated = {fingerprint(t): r.revoked for t, r in emu.state.refresh_tokens.items()}
            out = run([sys.executable, "-c", PROBE], env, timeout=240)
            before = out.split("BEFORE ", 1)[1].split()[0]
            after = out.split("AFTER ", 1)[1].split()[0]
            records = {fingerprint(t): r for t, r in emu.state.refresh_tokens.items()}
            return rotated[before], records[after].revoked

        def refreshes() -> int:
            return emu.stats()["token_grants"]["refresh_token"]

        def page_in_flight_between_commits() -> bool:
            flying = emu.stats()["in_flight"]
            return any(flying.get(r) for r in DATA_ROUTES) and not write_lock_held(database)

        Sink(str(database)).prepare(list(CATALOG.values()))
        # The three moments that matter, each aimed at (random moments: the sigkill test of
        # tests/test_sync.py).
        moments = ["token refresh", "between pages", "mid-transaction"]
        kills: list[str] = []
        rescued = 0
        for moment in moments:
            before_rows = rows_in(database)
            emu.set_faults(*slow_pages)
            if moment == "token refresh":
                # Let the session go stale, then hold every token answer back after the server
                # has done the work: the kill lands after Dintero rotated the refresh token and
                # before this process could save the new one.
                time.sleep(config.token_lifetime)
                emu.set_faults({"route": "token", "probability": 1.0, "delay_response": 3.0})
                emu.set_faults(*slow_pages, replace=False)
                baseline = refreshes()
            proc = subprocess.Popen(
                [sys.executable, "-c", SYNC, str(database)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            if moment == "token refresh":
                landed = wait_until(lambda b=baseline: refreshes() > b, proc, 120)
            elif moment == "between pages":
                landed = wait_until(
                    lambda b=before_rows: (
                        rows_in(database) > b and page_in_flight_between_commits()
                    ),
                    proc,
                    120,
                )
            else:  # mid-transaction
                landed = wait_until(lambda: write_lock_held(database), proc, 120)
            assert landed, f"the sync ended before the {moment} kill: {proc.communicate()[0]}"
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=30)
            emu.clear_faults()
            rotated_out, still_rotated_out = probe()
            # The call worked; what the block holds now is a live refresh token.
            assert not still_rotated_out, moment
            if rotated_out:
                # Dintero rotated it and the process died before saving the new one; the reuse
                # interval let the next renewal through, and that renewal was saved.
                rescued += 1
            kills.append(f"{moment} (rows {before_rows}→{rows_in(database)})")
            check_cursor_not_ahead_of_data(emu, Sink(str(database)))
            if moment == "token refresh":
                assert rotated_out, "the kill did not land between rotation and save"

        final = run([sys.executable, "-c", SYNC, str(database)], env, timeout=300)
        assert "DONE" in final
        sink = Sink(str(database))
        assert_equals_source(emu, sink)
        assert_cursors_consistent(emu, sink)
        assert probe() == (False, False)
        stats = emu.stats()
        evidence.note(
            f"crash loop: SIGKILL x{len(kills)}: {'; '.join(kills)}. Resumed to the source "
            f"({rows_in(database)} rows, cursors consistent). "
            f"{stats['token_grants']['refresh_token']} refresh rotations, "
            f"{stats['token_grant_failures'].get('refresh_token', 0)} refused; {rescued} kill(s) "
            "landed between Dintero's rotation and the save (the reuse interval covered them); "
            "the session worked after every kill"
        )
