"""Every wait has an end: a server's Retry-After, the account's limit, a retry's backoff and a
run's stop are all bounded by the run's budget and by the credentials' longest wait."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from prefect_dintero.auth.client_credentials import ClientCredentials
from prefect_dintero.client import DinteroClient
from prefect_dintero.errors import RunBudgetExceeded, RunInterrupted
from prefect_dintero.http.adaptive_limit import AdaptiveLimit
from prefect_dintero.http.retry import RetryPolicy, parse_retry_after
from prefect_dintero.sink import Sink
from prefect_dintero.streams.catalog import CATALOG
from prefect_dintero.sync.options import SyncRequest
from prefect_dintero.sync.stream_sync import sync_account_stream

from .helpers import AID, creds_for


def _always_429(retry_after: str):
    sent = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/auth/token"):
            return httpx.Response(200, json={"access_token": "tok-" + "x" * 20, "expires_in": 3600})
        sent.append(time.monotonic())
        return httpx.Response(429, headers={"retry-after": retry_after}, json={})

    return handler, sent


@pytest.mark.parametrize("header", ["3600", "inf", "nan", "-5", "31536000000", "1e308"])
def test_an_absurd_retry_after_is_a_bounded_wait(header):
    parsed = parse_retry_after(header)
    assert parsed is None or 0 <= parsed < float("inf")
    creds = ClientCredentials(account_id=AID, client_id="c", client_secret="s" * 10)
    policy = RetryPolicy.from_limits(attempts=3, max_wait_seconds=0.3)
    handler, sent = _always_429(header)
    limit = AdaptiveLimit(maximum=8)
    with DinteroClient(
        creds, transport=httpx.MockTransport(handler), retry_policy=policy, limiter=limit
    ) as client:
        started = time.monotonic()
        with pytest.raises(Exception, match="429"):
            client.get_json("/v1/things")
        # Three attempts, each pause at most the 0.3 s the credentials allow (and jitter).
        assert time.monotonic() - started < 3
        assert limit.paused_for() <= 0.3
        # The account is not frozen: the next request is sent at once.
        before = len(sent)
        with pytest.raises(Exception, match="429"):
            client.get_json("/v1/things")
        assert len(sent) == before + 3


def test_a_retry_after_of_an_hour_never_outlives_the_run_budget():
    """The defect: one 429 paused the account for an hour, past a 5 s budget."""
    creds = ClientCredentials(account_id=AID, client_id="c", client_secret="s" * 10)
    policy = RetryPolicy.from_limits(attempts=6, max_wait_seconds=3600)
    handler, _ = _always_429("3600")
    with DinteroClient(
        creds,
        transport=httpx.MockTransport(handler),
        retry_policy=policy,
        limiter=AdaptiveLimit(maximum=8),
        run_ends_at=time.time() + 1.5,
    ) as client:
        started = time.monotonic()
        with pytest.raises(RunBudgetExceeded):
            client.get_json("/v1/things")
        assert time.monotonic() - started < 1.5 + 1.0
        # Another request of the account, in another thread, waits for the pause no longer
        # than the run's budget either.
        errors: list[BaseException] = []

        def second() -> None:
            try:
                client.get_json("/v1/things")
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=second)
        started = time.monotonic()
        thread.start()
        thread.join(timeout=5)
        assert not thread.is_alive() and isinstance(errors[0], RunBudgetExceeded)
        assert time.monotonic() - started < 1.0


def test_a_real_sync_under_a_retry_after_of_an_hour_ends_within_its_budget(
    dintero_emulator_factory, tmp_path
):
    emu = dintero_emulator_factory(transactions=300, sessions=0, settlements=0, customers=0)
    emu.set_faults(
        {"route": "transactions", "probability": 1.0, "status": 429, "retry_after": 3600}
    )
    sink = Sink(tmp_path / "d.db")
    spec = CATALOG["transactions"]
    sink.prepare([spec])
    creds = creds_for(emu, retry_max_wait_seconds=900)
    with DinteroClient(creds, run_ends_at=time.time() + 3) as client:
        started = time.monotonic()
        with pytest.raises(RunBudgetExceeded):
            sync_account_stream(client, sink, spec, AID, SyncRequest(page_size=50))
        assert time.monotonic() - started < 3 + 10
    sink.dispose()


def test_a_waiter_for_a_slot_stops_with_its_run():
    limit = AdaptiveLimit(maximum=1, start=1)
    stop = threading.Event()

    def check() -> None:
        if stop.is_set():
            raise RunInterrupted("the run stopped")

    with limit.slot() as answered:  # the only slot, held
        threading.Timer(0.3, stop.set).start()
        started = time.monotonic()
        with pytest.raises(RunInterrupted), limit.slot(check):
            pass
        assert time.monotonic() - started < 0.3 + 1.0
        answered(200, 0.01)
    assert limit.in_flight == 0


def test_a_local_stop_inside_a_slot_leaves_the_limit_as_it_was():
    """The defect: RunInterrupted inside the slot was taken for a dropped connection (8 → 4)."""
    limit = AdaptiveLimit(maximum=8, start=8)
    with pytest.raises(RunInterrupted), limit.slot():
        raise RunInterrupted("the run's budget is spent")
    assert limit.limit == 8 and limit.decreases == 0 and limit.in_flight == 0
    with pytest.raises(ValueError), limit.slot():
        raise ValueError("a bug, not Dintero")
    assert limit.limit == 8
    # A network failure still counts as a dropped connection.
    from prefect_dintero.errors import TransientError

    with pytest.raises(TransientError), limit.slot():
        raise TransientError("connection reset")
    assert limit.limit == 4


def test_a_client_past_its_budget_sends_nothing_and_keeps_the_limit():
    creds = ClientCredentials(account_id=AID, client_id="c", client_secret="s" * 10)
    handler, sent = _always_429("1")
    limit = AdaptiveLimit(maximum=8, start=8)
    with (
        DinteroClient(
            creds,
            transport=httpx.MockTransport(handler),
            limiter=limit,
            run_ends_at=time.time() - 1,
        ) as client,
        pytest.raises(RunBudgetExceeded),
    ):
        client.get_json("/v1/things")
    assert sent == [] and limit.limit == 8


def test_a_client_takes_its_deadline_stop_check_and_limit_when_made():
    creds = ClientCredentials(account_id=AID, client_id="c", client_secret="s" * 10)
    handler, sent = _always_429("0")
    limit = AdaptiveLimit(maximum=8)
    with DinteroClient(
        creds,
        transport=httpx.MockTransport(handler),
        run_ends_at=time.time() + 60,
        stop_reason=lambda: "the slot was lost",
        limiter=limit,
    ) as client:
        assert client.limiter is limit
        with pytest.raises(RunInterrupted, match="the slot was lost"):
            client.get_json("/v1/things")
    assert sent == []  # asked before the request: nothing was sent
    # By default a client shares its account's one adaptive limit in the process; None: unpaced.
    with DinteroClient(creds) as first, DinteroClient(creds) as second:
        assert first.limiter is second.limiter is not None
    with DinteroClient(creds, limiter=None) as unpaced:
        assert unpaced.limiter is None


async def test_the_async_client_goes_through_the_account_limit():
    """The defect: the async client ignored its limiter, so coroutines were never paced."""
    import asyncio

    from prefect_dintero.client import AsyncDinteroClient

    creds = ClientCredentials(account_id=AID, client_id="c", client_secret="s" * 10)
    in_flight, most = 0, 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, most
        if request.url.path.endswith("/auth/token"):
            return httpx.Response(200, json={"access_token": "tok-" + "x" * 20, "expires_in": 3600})
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.02)
        in_flight -= 1
        if request.url.params.get("n") == "0":
            return httpx.Response(429, headers={"retry-after": "0"}, json={})
        return httpx.Response(200, json=[])

    limit = AdaptiveLimit(maximum=2, start=2)
    policy = RetryPolicy.from_limits(attempts=2, max_wait_seconds=0.1)
    client = AsyncDinteroClient(
        creds, transport=httpx.MockTransport(handler), retry_policy=policy, limiter=limit
    )
    # The token comes from the provider's own (sync) transport.
    client.token_provider.use_transport(
        httpx.MockTransport(
            lambda r: httpx.Response(
                200, json={"access_token": "tok-" + "x" * 20, "expires_in": 60}
            )
        )
    )
    async with client:
        await asyncio.gather(*(client.get_json("/v1/things", params={"n": n}) for n in range(1, 9)))
        assert most <= 2 and limit.in_flight == 0
        with pytest.raises(Exception, match="429"):
            await client.get_json("/v1/things", params={"n": 0})
    assert limit.decreases > 0  # the 429s were reported to the account's limit
