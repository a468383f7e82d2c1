"""Prefect as the remote service it is: every test here talks to the Prefect test server through
a proxy (``PrefectApiProxy``) that adds latency, answers 429/500/503, refuses connections and
counts requests by route, as Prefect Cloud tens of milliseconds away, rate-limited and sometimes
failing, would.
"""

from __future__ import annotations

import contextvars
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.settings import PREFECT_API_URL, temporary_settings
from pydantic import SecretStr

import prefect_dintero.blocks.session as session_module
import prefect_dintero.blocks.slots as slots_module
import prefect_dintero.blocks.token_store as token_store_module
import prefect_dintero.flows.sync as sync_flow_module
from prefect_dintero import DinteroCredentials, DinteroOIDCSession, DinteroServiceToken
from prefect_dintero.blocks.prefect_api import PrefectUnavailable
from prefect_dintero.blocks.slots import wait_for_slot
from prefect_dintero.blocks.token_store import save_pending
from prefect_dintero.emulator import EmulatorConfig, running_emulator
from prefect_dintero.errors import DinteroAPIError, ReauthorizationRequired, StoreUnavailable
from prefect_dintero.flows import dintero_login, dintero_sync
from prefect_dintero.flows.accounts import AccountsFailed, AccountTarget, dintero_sync_accounts
from prefect_dintero.sink import Sink
from prefect_dintero.streams.catalog import CATALOG
from tests.prefect_proxy import PrefectApiProxy

from .helpers import save_credentials, unique

pytestmark = pytest.mark.usefixtures("prefect_server")
AID = "T12345678"
#: The routes of a session block's reads, and of any block document's update.
SESSION_READS = "GET /block_types/slug/dintero-oidc-session/block_documents/name"
BLOCK_UPDATES = "PATCH /block_documents/{id}"


@pytest.fixture(scope="module")
def emu():
    # Single-use refresh tokens that rotate, as the strictest identity provider would.
    config = EmulatorConfig(
        refresh_tokens=True,
        rotate_refresh_tokens=True,
        transactions=600,
        sessions=20,
        settlements=10,
        customers=10,
        transfers_per_destination=5,
    )
    with running_emulator(config) as server:
        yield server


@pytest.fixture
def proxy(prefect_api_proxy: PrefectApiProxy):
    """The Prefect API seen through the proxy, well again: everything Prefect in the test uses
    it, and its faults, latency and limit end with the test."""
    prefect_api_proxy.clear_faults()
    prefect_api_proxy.latency = 0.0
    prefect_api_proxy.set_api_limit(None)
    prefect_api_proxy.reset_counts()
    with temporary_settings({PREFECT_API_URL: prefect_api_proxy.api_url}):
        yield prefect_api_proxy
    prefect_api_proxy.clear_faults()
    prefect_api_proxy.latency = 0.0


def log_in(emu, creds: str, session: str | None = None) -> str:
    session = session or unique("session")
    dintero_login(creds, session, authorization_response=SecretStr(emu.authorization_code()))
    return session


def log_in_elsewhere(emu, creds: str, session: str) -> None:
    """A new login into ``session`` by another process: this one hears of it only through the
    block."""
    credentials = DinteroCredentials.load(creds, _sync=True)
    token = credentials.exchange_authorization_code(emu.authorization_code())
    DinteroOIDCSession.from_token(credentials, token).save(session, overwrite=True, _sync=True)


def expire(session: str) -> None:
    """Make the saved session's access token expired (its refresh token still works)."""
    block = DinteroOIDCSession.load(session, _sync=True)
    block.expires_at = datetime.now(UTC) - timedelta(seconds=1)
    block.save(session, overwrite=True, _sync=True)


def live_refresh_token(emu, token) -> bool:
    record = emu.state.refresh_tokens.get(token.refresh_token.get_secret_value())
    return record is not None and not record.revoked


def saved(session: str):
    return DinteroOIDCSession.load(session, _sync=True).to_token()


# -- the data path never waits on Prefect ---------------------------------------------------------


def test_a_session_sync_makes_no_prefect_request_per_page(emu, proxy, tmp_path):
    creds = save_credentials(emu)
    session = log_in(emu, creds)
    counts = []
    for n, page_size in enumerate((100, 10)):  # 6 pages, then 60
        proxy.reset_counts()
        [result] = dintero_sync(
            creds,
            session,
            streams=["transactions"],
            destination=str(tmp_path / f"run-{n}.db"),
            page_size=page_size,
        )
        counts.append((result["pages"], proxy.counts()))
    (few, small), (many, large) = counts
    assert many - few >= 50
    # The same requests whatever the pages: the flow's and the tasks', the slot, the bearer.
    assert large["requests"] - small["requests"] <= 1, (small["routes"], large["routes"])
    assert large["routes"].get(f"{SESSION_READS}/{{name}}", 0) <= 2, large["routes"]


def test_requests_go_on_while_prefect_is_slow_failing_or_down(emu, proxy):
    creds = save_credentials(emu)
    session = log_in(emu, creds)
    bearer = DinteroOIDCSession.load(session, _sync=True).get_bearer()
    bearer.token()

    def load(requests: int = 10) -> None:
        with bearer.client() as client:
            for _ in range(requests):
                client.get_json("/v1/transactions", host="checkout", params={"limit": 1})

    proxy.latency = 0.2
    proxy.reset_counts()
    threads = [
        threading.Thread(target=contextvars.copy_context().run, args=(load,)) for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # 40 Dintero requests, no Prefect request: nothing on the request path waits on Prefect,
    # so no lock is held across it either.
    assert proxy.counts()["requests"] == 0
    proxy.latency = 0.0
    proxy.add_fault(status=500)
    load()
    proxy.clear_faults()
    with proxy.outage():
        load()


def test_a_new_login_reaches_a_running_process_within_the_check_interval(emu, proxy, monkeypatch):
    monkeypatch.setattr(session_module, "LOGIN_CHECK_SECONDS", 1.0)
    creds = save_credentials(emu)
    session = log_in(emu, creds)
    bearer = DinteroOIDCSession.load(session, _sync=True).get_bearer()
    first = bearer.login_id
    proxy.reset_counts()
    log_in_elsewhere(emu, creds, session)  # someone logs in again into the same block
    second = saved(session).session_id
    started = time.monotonic()
    with bearer.client() as client:
        while bearer.login_id != second:
            assert time.monotonic() - started < 10, "the new login never reached the process"
            client.get_json("/v1/transactions", host="checkout", params={"limit": 1})
            time.sleep(0.05)
    took = time.monotonic() - started
    assert first != second
    # One read of which login the block holds per interval, and one of the new login.
    reads = proxy.counts()["routes"].get(f"{SESSION_READS}/{{name}}", 0)
    assert reads <= took / 1.0 + 4, (reads, took)


@pytest.mark.parametrize("refusal", [401, 403])
def test_a_new_login_is_taken_at_once_when_dintero_refuses_the_old_one(emu, proxy, refusal):
    creds = save_credentials(emu)
    session = log_in(emu, creds)
    bearer = DinteroOIDCSession.load(session, _sync=True).get_bearer()
    bearer.token()
    log_in_elsewhere(emu, creds, session)
    new = saved(session)
    proxy.reset_counts()
    emu.set_faults({"route": "transactions", "sequence": [{"status": refusal}]})
    try:
        with bearer.client() as client:
            client.get_json("/v1/transactions", host="checkout", params={"limit": 1})
    finally:
        emu.clear_faults()
    assert bearer.token() == new.access_token.get_secret_value()
    # A refused token is never written back: the block keeps the new login.
    assert proxy.counts()["routes"].get(BLOCK_UPDATES, 0) == 0
    assert saved(session).session_id == new.session_id


def test_an_expired_session_and_no_prefect_is_a_clear_prefect_error(emu, proxy):
    creds = save_credentials(emu, request_deadline_seconds=2.0)  # waits 14 s for Prefect
    session = log_in(emu, creds)
    expire(session)
    bearer = DinteroOIDCSession.load(session, _sync=True).get_bearer()
    before = emu.stats()["requests"].get("transactions", {})
    started = time.monotonic()
    with proxy.outage(), bearer.client() as client, pytest.raises(StoreUnavailable) as raised:
        client.get_json("/v1/transactions", host="checkout", params={"limit": 1})
    waited = time.monotonic() - started
    assert isinstance(raised.value, PrefectUnavailable)
    assert not isinstance(raised.value, DinteroAPIError)
    assert "Prefect API" in str(raised.value) and "Dintero failed" not in str(raised.value)
    # Waited for Prefect once (not once per request attempt), and sent Dintero nothing.
    assert waited < 28, waited
    assert emu.stats()["requests"].get("transactions", {}) == before


def test_a_deleted_session_block_asks_for_a_new_login(emu, proxy):
    creds = save_credentials(emu)
    session = log_in(emu, creds)
    expire(session)
    block = DinteroOIDCSession.load(session, _sync=True)
    bearer = block.get_bearer()
    with get_client(sync_client=True) as client:
        client.delete_block_document(block._block_document_id)
    with pytest.raises(ReauthorizationRequired, match="no longer exists"):
        bearer.token()


# -- a renewal keeps its token whatever Prefect does ---------------------------------------------


def test_a_renewed_session_survives_failed_and_rate_limited_saves(emu, proxy):
    creds = save_credentials(emu)
    session = log_in(emu, creds)
    expire(session)
    bearer = DinteroOIDCSession.load(session, _sync=True).get_bearer()
    proxy.add_fault(route=BLOCK_UPDATES, status=500, times=2)
    proxy.add_fault(route=BLOCK_UPDATES, status=429, retry_after=2, times=1)
    since = time.monotonic()
    token = bearer.token()  # Dintero rotates the refresh token: the old one is dead now
    with bearer.client() as client:  # used at once, while its save is still being retried
        client.get_json("/v1/transactions", host="checkout", params={"limit": 1})
    assert save_pending()
    kept = saved(session)
    assert kept.access_token.get_secret_value() == token
    assert live_refresh_token(emu, kept)
    attempts = [t for t, _, _ in proxy.history(BLOCK_UPDATES) if t >= since]
    assert len(attempts) == 4, proxy.history(BLOCK_UPDATES)
    assert attempts[3] - attempts[2] >= 2.0  # the 429's Retry-After was honoured


def test_a_save_that_keeps_failing_is_retried_at_later_requests(emu, proxy, monkeypatch):
    monkeypatch.setattr(token_store_module, "SAVE_WHILE_HELD_SECONDS", 1.0)
    monkeypatch.setattr(token_store_module, "SAVE_RETRY_WAITS", (0.5,))
    creds = save_credentials(emu)
    session = log_in(emu, creds)
    expire(session)
    bearer = DinteroOIDCSession.load(session, _sync=True).get_bearer()
    proxy.add_fault(route=BLOCK_UPDATES, status=503, seconds=4)
    token = bearer.token()
    deadline = time.monotonic() + 20
    with bearer.client() as client:
        while saved(session).access_token.get_secret_value() != token:
            assert time.monotonic() < deadline, proxy.history(BLOCK_UPDATES)
            client.get_json("/v1/transactions", host="checkout", params={"limit": 1})
            time.sleep(0.2)
    assert live_refresh_token(emu, saved(session))


RENEW_AND_EXIT = textwrap.dedent(
    """
    import sys
    from prefect_dintero import DinteroOIDCSession
    DinteroOIDCSession.load(sys.argv[1]).get_bearer().token()
    print("RENEWED", flush=True)
    """
)

USE_SESSION = textwrap.dedent(
    """
    import sys
    from prefect_dintero import DinteroOIDCSession
    with DinteroOIDCSession.load(sys.argv[1]).get_client() as client:
        client.get_json("/v1/transactions", host="checkout", params={"limit": 1})
    print("USED", flush=True)
    """
)


def test_a_process_that_renews_and_exits_while_prefect_fails_keeps_the_session(emu, proxy):
    creds = save_credentials(emu)
    session = log_in(emu, creds)
    expire(session)
    proxy.add_fault(route=BLOCK_UPDATES, status=500, seconds=4)
    env = {**os.environ, "PREFECT_API_URL": proxy.api_url}
    out = subprocess.run(
        [sys.executable, "-c", RENEW_AND_EXIT, session],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "RENEWED" in out.stdout, out.stderr[-3000:]
    # The exit waited for the save; the block holds the rotated session, and a new process
    # (any worker) can use it.
    assert live_refresh_token(emu, saved(session))
    used = subprocess.run(
        [sys.executable, "-c", USE_SESSION, session],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "USED" in used.stdout, used.stderr[-3000:]


def test_a_slow_renewal_save_never_overwrites_a_new_login(emu, proxy):
    creds = save_credentials(emu)
    session = log_in(emu, creds)
    expire(session)
    bearer = DinteroOIDCSession.load(session, _sync=True).get_bearer()
    proxy.add_fault(route=BLOCK_UPDATES, delay=4.0, times=1)
    bearer.token()  # renews; its save takes 4 s, in the renewal slot
    renewed = bearer.login_id
    log_in(emu, creds, session)  # a new login meanwhile: saved in the slot, after that save
    assert save_pending()
    final = saved(session)
    assert final.session_id != renewed  # the new login, not the renewal of the old one
    assert live_refresh_token(emu, final)


def test_a_renewal_saved_late_is_dropped_for_a_newer_login(emu, proxy, monkeypatch, caplog):
    monkeypatch.setattr(token_store_module, "SAVE_WHILE_HELD_SECONDS", 1.0)
    monkeypatch.setattr(token_store_module, "SAVE_RETRY_WAITS", (60.0,))
    creds = save_credentials(emu)
    session = log_in(emu, creds)
    expire(session)
    bearer = DinteroOIDCSession.load(session, _sync=True).get_bearer()
    proxy.add_fault(route=BLOCK_UPDATES, status=500)
    bearer.token()  # renewed; its save fails, and is left for a later request
    time.sleep(1.5)
    proxy.clear_faults()
    log_in_elsewhere(emu, creds, session)
    new = saved(session)
    bearer._provider.store._next_save_at = 0.0  # the later request's try is due now
    with caplog.at_level(logging.WARNING, logger="prefect_dintero"):
        deadline = time.monotonic() + 15
        while bearer.login_id != new.session_id:  # the late save finds the new login
            assert time.monotonic() < deadline
            bearer.token()
            time.sleep(0.1)
    assert saved(session).session_id == new.session_id
    assert "the renewal was not saved over it" in caplog.text


# -- the service token --------------------------------------------------------------------------


def test_a_service_token_is_used_while_prefect_is_down_and_renewed_alone_once_expired(emu, proxy):
    creds = save_credentials(emu, token_leeway_seconds=3590)  # stale at once: renewal is due
    credentials = DinteroCredentials.load(creds, _sync=True)
    provider = credentials.service_token_provider()
    first = provider.get_token()
    assert save_pending()
    grants = emu.stats()["token_grants"]["client_credentials"]
    with proxy.outage(), credentials.get_client() as client:
        started = time.monotonic()
        for _ in range(5):  # inside its renewal margin, not expired: used as it is
            client.get_json("/v1/transactions", host="checkout", params={"limit": 1})
        assert time.monotonic() - started < 10  # nobody waited on the unreachable API
        assert provider.get_token().same_access_token(first)
        assert emu.stats()["token_grants"]["client_credentials"] == grants
        # Expired: renewed without the slot (a second grant is cheap), kept in memory.
        expired = first.model_copy(update={"expires_at": datetime.now(UTC) - timedelta(1)})
        provider.store.put(provider.key, first, expired)
        client.get_json("/v1/transactions", host="checkout", params={"limit": 1})
        renewed = provider.get_token()
        assert not renewed.same_access_token(first)
        assert emu.stats()["token_grants"]["client_credentials"] == grants + 1
    # Prefect is back: the token renewed alone is saved for every other process.
    assert save_pending()
    shared = DinteroServiceToken.load(f"{creds}-service-token", _sync=True)
    assert shared.access_token.get_secret_value() == renewed.access_token.get_secret_value()


# -- slots and leases -------------------------------------------------------------------------------


def new_limit() -> str:
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    name = unique("cloud-slot")
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
    return name


def test_a_waiter_asks_at_most_ten_times_a_minute_and_honours_retry_after(proxy):
    name = new_limit()
    held = wait_for_slot(name, timeout=0, lease=60)
    assert held is not None
    with held:
        proxy.reset_counts()
        proxy.add_fault(route="increment-with-lease", status=429, retry_after=3, times=1)
        started = time.monotonic()
        assert wait_for_slot(name, timeout=10, lease=60) is None
        took = time.monotonic() - started
    tries = [t for t, _, _ in proxy.history("increment-with-lease")]
    assert 10 <= took < 14
    # 0, then 3 (the 429's Retry-After), then 1, 2 and 4 s apart, and one at the deadline.
    assert len(tries) <= 6, tries
    assert tries[1] - tries[0] >= 3.0


def test_a_lease_survives_a_run_of_429s_and_503s(proxy):
    name = new_limit()
    held = wait_for_slot(name, timeout=0, lease=60, renew_every=0.5)
    assert held is not None
    with held:
        proxy.add_fault(route="/renew", status=429, retry_after=1, seconds=4)
        time.sleep(4)
        proxy.clear_faults()
        proxy.add_fault(route="/renew", status=503, seconds=4)
        time.sleep(4)
        proxy.clear_faults()
        renewed = held.renewals
        deadline = time.monotonic() + 10
        while held.renewals == renewed:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert held.holds() and held.lost is None
        assert held.failed_renewals == 0


def test_a_run_that_may_have_lost_its_slot_stops_before_another_writes(
    emu, proxy, monkeypatch, tmp_path
):
    """Prefect refuses every renewal of the account slot's lease: the run holding it stops at
    its next page once its lease may have run out, and the next run writes only after that."""
    monkeypatch.setattr(sync_flow_module, "ACCOUNT_SLOT_LEASE", 60.0)
    monkeypatch.setattr(sync_flow_module, "ACCOUNT_SLOT_RENEW_SECONDS", 1.0)
    # The lease counts as possibly gone 8 s after its last renewal, not 54 (CI's time).
    monkeypatch.setattr(slots_module, "lease_margin", lambda lease: lease - 8.0)
    # One page after another, so that the run outlasts its lease.
    creds = save_credentials(emu, max_concurrent_requests=1)
    database = str(tmp_path / "one-account.db")
    writes: list[tuple[float, str]] = []
    real_write = Sink.write_page

    def recording_write(self, *args, **kwargs):
        from prefect.runtime import flow_run

        writes.append((time.monotonic(), flow_run.id))
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(Sink, "write_page", recording_write)
    proxy.add_fault(route="/renew", status=429, retry_after=1)
    emu.set_faults({"route": "transactions", "probability": 1.0, "latency": 0.3})
    outcome: dict[str, object] = {}

    def run(label: str) -> None:
        state = dintero_sync(
            creds,
            streams=["transactions"],
            destination=database,
            page_size=10,
            return_state=True,
        )
        outcome[label] = state

    try:
        # Each run in a copy of this context, so its Prefect client goes through the proxy.
        first = threading.Thread(target=contextvars.copy_context().run, args=(run, "first"))
        first.start()
        while not writes:
            time.sleep(0.05)
        second = threading.Thread(target=contextvars.copy_context().run, args=(run, "second"))
        second.start()
        first.join(120)
        emu.clear_faults()
        proxy.clear_faults()
        second.join(120)
    finally:
        emu.clear_faults()
    first_state, second_state = outcome["first"], outcome["second"]
    assert first_state.is_failed() and second_state.is_completed()
    with pytest.raises(Exception) as stopped:
        first_state.result()
    assert "may no longer be held" in str(stopped.value)
    first_id = writes[0][1]
    first_writes = [t for t, run_id in writes if run_id == first_id]
    second_writes = [t for t, run_id in writes if run_id != first_id]
    assert first_writes and second_writes
    assert max(first_writes) < min(second_writes)  # never two writers at once
    # The stopped run's pages were kept; the next one resumed and finished the source.
    sink = Sink(database)
    rows = {r["id"] for r in sink.rows(CATALOG["transactions"], AID)}
    assert rows == {t["id"] for t in emu.dump("transactions")}


# -- the fan-out ----------------------------------------------------------------------------------


def test_the_fan_out_never_cancels_a_run_no_worker_started(emu, proxy, monkeypatch):
    import prefect_dintero.flows.accounts as accounts_module

    monkeypatch.setattr(accounts_module, "PICKUP_GRACE_SECONDS", 4.0)
    monkeypatch.setattr(accounts_module, "POLL_FIRST_SECONDS", 0.5)
    pool = unique("no-worker")
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
    deployment = unique("hourly")
    dintero_sync.to_deployment(name=deployment, work_pool_name=pool).apply()
    creds = [save_credentials(emu), save_credentials(emu)]
    proxy.reset_counts()
    state = dintero_sync_accounts(
        [AccountTarget(credentials_block=c) for c in creds],
        mode="deployments",
        deployment_name=f"dintero-sync/{deployment}",
        return_state=True,
    )
    assert state.is_failed()
    with pytest.raises(AccountsFailed):
        state.result()
    with get_client(sync_client=True) as client:
        runs = [
            r
            for r in client.read_flow_runs()
            if r.deployment_id is not None and r.parameters.get("credentials_block") in creds
        ]
    assert len(runs) == 2
    assert {r.state.type.value for r in runs} == {"SCHEDULED"}  # left queued, not cancelled
    # One read a poll for both runs, the polls spaced out.
    reads = proxy.counts()["routes"].get("POST /flow_runs/filter", 0)
    assert reads <= 8, proxy.counts()["routes"]
