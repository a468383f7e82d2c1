"""Backfills read in concurrent slices under a limit that adapts to Dintero: correct under every
list order, crash and 429 burst, and no dearer than before where nothing is new."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from pydantic import SecretStr

from prefect_dintero.client import DinteroClient
from prefect_dintero.http.adaptive_limit import AdaptiveLimit
from prefect_dintero.sink import Sink
from prefect_dintero.streams.catalog import CATALOG
from prefect_dintero.sync import window_reader as window_slices
from prefect_dintero.sync.options import SyncRequest
from prefect_dintero.sync.stream_sync import sync_account_stream
from prefect_dintero.times import use_clock

from .helpers import AID, FAST, assert_equals_source, check_cursor_not_ahead_of_data, creds_for

SLICED = [CATALOG["transactions"], CATALOG["sessions"], CATALOG["settlements"]]
DATA = dict(transactions=1500, sessions=600, settlements=300, customers=20)


@pytest.fixture
def cut_small(monkeypatch):
    """Cut slices from two pages on, however fast the emulator answers, so small test data
    is read in many slices."""
    monkeypatch.setattr(window_slices, "MIN_PAGES_TO_CUT", 2)
    monkeypatch.setattr(window_slices, "MIN_WAIT_TO_CUT", 0.0)


def _sync(emu, sink, streams=SLICED, concurrent=8, **request):
    """On the emulator's clock: an hourly run's window is then its lookback and the hour since,
    as against Dintero (the emulator's data lives 30 days back)."""
    creds = creds_for(emu, max_concurrent_requests=concurrent)
    with use_clock(emu.state.clock.now), DinteroClient(creds, retry_policy=FAST) as client:
        return {
            s.name: sync_account_stream(client, sink, s, AID, SyncRequest(page_size=25, **request))[
                0
            ]
            for s in streams
        }


@pytest.mark.parametrize("order", ["newest", "oldest", "shuffled"])
def test_a_backfill_in_concurrent_slices_equals_the_source(
    dintero_emulator_factory, destination, cut_small, order
):
    emu = dintero_emulator_factory(**DATA, list_order=order)
    emu.set_faults({"route": "*", "probability": 1.0, "latency": 0.01})
    # The same backfill read one page after another, for its requests.
    baseline = Sink("sqlite://")
    baseline.prepare(SLICED)
    sequential = _sync(emu, baseline, concurrent=1)["transactions"].requests
    baseline.dispose()
    emu.reset_stats()
    sink = Sink(destination)
    sink.prepare(SLICED)
    results = _sync(emu, sink)
    assert_equals_source(emu, sink, SLICED)
    check_cursor_not_ahead_of_data(emu, sink)
    peak = emu.stats()["peak_in_flight"]
    transactions = results["transactions"]
    if order != "shuffled":  # dates in order: the first pages show where the data is dense
        assert peak["transactions"] > 1
        # At most 16 slices; a cut costs the page read again, a last and a part-filled page.
        assert sequential < transactions.requests <= sequential + 3 * 16
    else:  # no date order says nothing of density: cuts only into the empty years before
        assert transactions.requests <= sequential + 3 * 16
    state = sink.read_state(AID, "transactions")
    assert state.resume is None and state.cursor is not None
    # Nothing new: the next run makes the requests a sequential run makes.
    emu.clear_faults()
    again = _sync(emu, sink)
    sequential_again = _sync(emu, sink, concurrent=1)
    for name in again:
        assert again[name].inserted == again[name].updated == 0
        assert again[name].requests == sequential_again[name].requests
    sink.dispose()


def test_429_bursts_halve_the_limit_and_lose_nothing(dintero_emulator_factory, tmp_path, cut_small):
    emu = dintero_emulator_factory(**DATA)
    emu.set_faults(
        {"route": "transactions", "probability": 0.15, "status": 429, "retry_after": 0.05},
        {"route": "*", "probability": 1.0, "latency": 0.01},
    )
    sink = Sink(str(tmp_path / "bursts.db"))
    sink.prepare(SLICED)
    creds = creds_for(emu, max_concurrent_requests=8)
    with DinteroClient(creds, retry_policy=FAST) as client:
        [result] = sync_account_stream(
            client, sink, CATALOG["transactions"], AID, SyncRequest(page_size=25)
        )
        limit = client.limiter
    assert result.rate_limited > 0 and limit is not None and limit.decreases > 0
    assert_equals_source(emu, sink, [CATALOG["transactions"]])
    sink.dispose()


def test_the_emulator_limits_the_rate_and_answers_429_with_retry_after(dintero_emulator_factory):
    import httpx

    emu = dintero_emulator_factory(transactions=50, rate_limit=5, page_latency=0.05)
    token = httpx.post(
        f"{emu.url}/v1/accounts/{AID}/auth/token",
        auth=(emu.config.client_id, emu.config.client_secret),
        json={"grant_type": "client_credentials", "audience": f"{emu.url}/v1/accounts/{AID}"},
    ).json()["access_token"]
    started = time.monotonic()

    def page(_: int) -> httpx.Response:
        return httpx.get(
            f"{emu.url}/v1/transactions",
            params={"limit": 1},
            headers={"Authorization": f"Bearer {token}"},
        )

    with ThreadPoolExecutor(12) as pool:  # 12 at once: one second's 5, then 429s
        answers = list(pool.map(page, range(12)))
    statuses = [a.status_code for a in answers]
    assert 5 <= statuses.count(200) <= 6 and statuses.count(429) >= 6
    refused = next(a for a in answers if a.status_code == 429)
    assert int(refused.headers["Retry-After"]) >= 1
    assert time.monotonic() - started >= 0.05  # the pages that passed waited their latency
    assert emu.stats()["rate_limited"] == statuses.count(429)


CRASHER = textwrap.dedent(
    """
    import sys
    from pydantic import SecretStr
    from prefect_dintero.sync import window_reader as window_slices
    from prefect_dintero.client import DinteroClient
    from prefect_dintero.auth.client_credentials import ClientCredentials
    from prefect_dintero.http.retry import RetryPolicy
    from prefect_dintero.sink import Sink
    from prefect_dintero.streams.catalog import CATALOG
    from prefect_dintero.sync.options import SyncRequest
    from prefect_dintero.sync.stream_sync import sync_account_stream
    window_slices.MIN_PAGES_TO_CUT = 2
    window_slices.MIN_WAIT_TO_CUT = 0.0
    url, destination = sys.argv[1], sys.argv[2]
    creds = ClientCredentials(account_id="T12345678", client_id="emulator-client",
        client_secret=SecretStr("emulator-secret"), api_url=url, checkout_url=url,
        max_concurrent_requests=8)
    sink = Sink(destination)
    policy = RetryPolicy(max_attempts=8, backoff_base=0.01, backoff_cap=0.05, retry_after_cap=0.2)
    with DinteroClient(creds, retry_policy=policy) as client:
        for name in ("transactions", "sessions", "settlements"):
            sync_account_stream(client, sink, CATALOG[name], "T12345678", SyncRequest(page_size=10))
    print("DONE", flush=True)
    """
)


@pytest.mark.slow
def test_sigkill_mid_slices_then_every_slice_resumes(dintero_emulator_factory, destination):
    emu = dintero_emulator_factory(**DATA)
    # Slow enough (a few seconds for the whole read, in slices) that kills land mid-read.
    emu.set_faults({"route": "*", "probability": 1.0, "latency": 0.1})
    Sink(destination).prepare(SLICED)
    rng = random.Random(11)
    kills, sliced_states = 0, 0
    for _ in range(5):
        proc = subprocess.Popen(
            [sys.executable, "-c", CRASHER, emu.url, destination],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(rng.uniform(1.0, 2.0))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=30)
        sink = Sink(destination)
        check_cursor_not_ahead_of_data(emu, sink)
        state = sink.read_state(AID, "transactions")
        sliced_states += window_slices.saved_slices(state.resume) is not None
        sink.dispose()
    assert kills >= 4 and sliced_states >= 1  # killed with slices half read, at least once
    emu.clear_faults()
    done = subprocess.run(
        [sys.executable, "-c", CRASHER, emu.url, destination],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "DONE" in done.stdout, done.stderr[-3000:]
    sink = Sink(destination)
    assert_equals_source(emu, sink, SLICED)
    check_cursor_not_ahead_of_data(emu, sink)
    assert sink.read_state(AID, "transactions").resume is None
    sink.dispose()


# -- the adaptive limit ------------------------------------------------------------------------


def test_the_limit_grows_by_rounds_halves_on_429_and_pauses_for_retry_after():
    limit = AdaptiveLimit(maximum=12)
    assert limit.limit == 2
    for _ in range(2 + 4):  # slow start: a round at 2 doubles it, a round at 4 too
        with limit.slot() as answered:
            answered(200, 0.1)
    assert limit.limit == 8
    with limit.slot() as answered:
        answered(429, 0.1, 0.3)
    assert limit.limit == 4
    started = time.monotonic()
    with limit.slot() as answered:  # waits the Retry-After
        answered(200, 0.1)
    assert time.monotonic() - started >= 0.25
    # After a decrease, one more a round: 4 to 5, 5 to 6.
    for _ in range(3 + 5):
        with limit.slot() as answered:
            answered(200, 0.1)
    assert limit.limit == 6
    # Near the level that met the 429 (8), more waits 16 rounds, not one.
    for _ in range(6):
        with limit.slot() as answered:
            answered(200, 0.1)
    assert limit.limit == 7
    for _ in range(7 * 15):
        with limit.slot() as answered:
            answered(200, 0.1)
    assert limit.limit == 7
    for _ in range(7):
        with limit.slot() as answered:
            answered(200, 0.1)
    assert limit.limit == 8


def test_a_burst_of_429s_halves_once_and_5xx_and_slow_answers_decrease():
    limit = AdaptiveLimit(maximum=8, start=8)
    for _ in range(8):  # every request in flight met the same limit
        with limit.slot() as answered:
            answered(429, 0.1, None)
    assert limit.limit == 4 and limit.decreases == 1
    limit = AdaptiveLimit(maximum=8, start=8)
    with limit.slot() as answered:
        answered(503, 0.1)
    assert limit.limit == 4
    limit = AdaptiveLimit(maximum=8, start=8)
    with limit.slot() as answered:
        answered(200, 0.1)
    with limit.slot() as answered:
        answered(200, 2.0)  # twenty times slower, over a second: the server queues
    assert limit.limit == 7


def test_requests_in_flight_never_exceed_the_limit():
    limit = AdaptiveLimit(maximum=4)
    now, peak, seen_limit = [0], [0], []
    guard = threading.Lock()

    def request(n: int) -> None:
        with limit.slot() as answered:
            with guard:
                now[0] += 1
                peak[0] = max(peak[0], now[0])
                seen_limit.append(limit.limit)
            time.sleep(0.005)
            with guard:
                now[0] -= 1
            answered(429 if n % 17 == 0 else 200, 0.005, None)

    threads = [threading.Thread(target=request, args=(n,)) for n in range(120)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak[0] <= 4 and limit.in_flight == 0


def test_max_concurrent_requests_is_a_credentials_field(dintero_emulator_factory):
    from prefect_dintero import DinteroCredentials

    emu = dintero_emulator_factory(transactions=5)
    block = DinteroCredentials(
        account_id=AID,
        client_id=emu.config.client_id,
        client_secret=SecretStr(emu.config.client_secret),
        api_url=emu.url,
        checkout_url=emu.url,
        max_concurrent_requests=3,
    )
    assert block.to_core().max_concurrent_requests == 3
    assert DinteroCredentials.model_fields["max_concurrent_requests"].default == 8
    with pytest.raises(ValueError):
        DinteroCredentials(**{**block.model_dump(), "max_concurrent_requests": 0})


def test_a_malformed_page_in_one_slice_writes_nothing_of_it_and_the_rerun_resumes(
    dintero_emulator_factory, tmp_path, cut_small
):
    from prefect_dintero.errors import MalformedResponseError

    emu = dintero_emulator_factory(**DATA)
    # The 12th page of transactions is cut off mid-body, whichever slice asked for it.
    emu.set_faults({"route": "transactions", "sequence": ["ok"] * 11 + [{"malformed": True}]})
    sink = Sink(str(tmp_path / "malformed.db"))
    sink.prepare(SLICED)
    spec = CATALOG["transactions"]
    with pytest.raises(MalformedResponseError, match="not valid JSON"):
        _sync(emu, sink, streams=[spec])
    state = sink.read_state(AID, "transactions")
    assert state.cursor is None  # not every slice is in: the cursor did not move
    written = sink.count(spec)
    assert written < 1500
    check_cursor_not_ahead_of_data(emu, sink)
    [result] = _sync(emu, sink, streams=[spec]).values()
    assert result.resumed and result.inserted == 1500 - written
    assert_equals_source(emu, sink, [spec])
    sink.dispose()
