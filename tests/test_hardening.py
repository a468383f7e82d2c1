"""Hostile servers and second logins: one identity per session, deadlines on every request and
run, secrets masked in errors, bad data from the API.

The bad-input matrix (tests/test_bad_input.py) holds the user mistakes; the secret scan
(tests/test_secret_scan.py) looks for every secret in everything the session left behind,
including what the echoing server below put into Prefect's database.
"""

from __future__ import annotations

import base64
import json
import logging
import socket
import stat
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from pydantic import SecretStr

from prefect_dintero.auth.client_credentials import ClientCredentials
from prefect_dintero.auth.grants import fetch_client_credentials_token
from prefect_dintero.auth.store import DEFAULT_STORE, InMemoryTokenStore
from prefect_dintero.auth.tokens import MissingExpiryWarning, Token
from prefect_dintero.client import AsyncDinteroClient, DinteroClient
from prefect_dintero.emulator import EmulatorConfig, running_emulator
from prefect_dintero.errors import DeadlineExceeded, DinteroError
from prefect_dintero.http.retry import RetryPolicy
from prefect_dintero.redact import MASK
from prefect_dintero.sink import Sink
from prefect_dintero.streams.catalog import CATALOG
from prefect_dintero.sync.options import SyncRequest
from prefect_dintero.sync.stream_sync import sync_account_stream

from .helpers import creds_for

AID = "T12345678"
SMALL = dict(transactions=40, sessions=10, settlements=5, customers=5, transfers_per_destination=5)
FAST = RetryPolicy(max_attempts=3, backoff_base=0.01, backoff_cap=0.05, retry_after_cap=0.2)


@pytest.fixture(autouse=True)
def _fresh_tokens():
    DEFAULT_STORE.clear()


# -- identity -------------------------------------------------------------------------------------


def _user_token(access: str, session_id: str | None = None) -> Token:
    now = datetime.now(UTC)
    return Token(
        access_token=SecretStr(access),
        issued_at=now,
        expires_at=now + timedelta(hours=1),
        session_id=session_id,
    )


def _bearer_seen(client: DinteroClient, seen: list[str]) -> None:
    client.get_json("/v1/transactions", host="checkout")
    assert seen, "no request was sent"


@pytest.mark.parametrize("with_session_ids", [False, True])
def test_two_sessions_never_share_a_token_whatever_their_names(with_session_ids):
    """A client built with bob's session sends bob's bearer, even when alice's session was
    cached first under the same (default) name."""
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["authorization"])
        return httpx.Response(200, json=[])

    creds = ClientCredentials(
        account_id=AID,
        client_id="c",
        client_secret=SecretStr("s" * 12),
        api_url="http://127.0.0.1:9",
        checkout_url="http://127.0.0.1:9",
    )
    alice = _user_token("alice-access-token", "alice-login" if with_session_ids else None)
    bob = _user_token("bob-access-token", "bob-login" if with_session_ids else None)
    transport = httpx.MockTransport(handler)
    with DinteroClient(creds, session=alice, transport=transport) as client:
        client.get_json("/v1/transactions", host="checkout")
    with DinteroClient(creds, session=bob, transport=transport) as client:
        client.get_json("/v1/transactions", host="checkout")
    with DinteroClient(creds, session=alice, session_name="default", transport=transport) as c:
        c.get_json("/v1/transactions", host="checkout")
    assert seen == [
        "Bearer alice-access-token",
        "Bearer bob-access-token",
        "Bearer alice-access-token",
    ]


def test_a_refreshed_token_keeps_its_login_and_a_new_login_gets_its_own(dintero_emulator_factory):
    from prefect_dintero.auth.grants import exchange_authorization_code
    from prefect_dintero.auth.provider import OIDCSessionProvider

    emu = dintero_emulator_factory(refresh_tokens=True, **SMALL)
    creds = creds_for(emu)
    service = fetch_client_credentials_token(creds)
    first = exchange_authorization_code(creds, emu.authorization_code(), service_token=service)
    second = exchange_authorization_code(creds, emu.authorization_code(), service_token=service)
    assert first.session_id and second.session_id and first.session_id != second.session_id
    provider = OIDCSessionProvider(
        creds, "ada", initial=first, store=InMemoryTokenStore(), leeway=1e6
    )
    renewed = provider.get_token()  # the leeway makes it renew at once
    assert renewed.session_id == first.session_id
    assert not renewed.same_access_token(first)
    other = OIDCSessionProvider(creds, "ada", initial=second, store=provider.store)
    assert other.key != provider.key


# -- deadlines ------------------------------------------------------------------------------------


def _quick(emu, seconds: float) -> ClientCredentials:
    return creds_for(emu, request_deadline_seconds=seconds)


def test_a_trickling_body_fails_at_the_deadline_not_the_read_timeout(
    dintero_emulator_factory, evidence
):
    emu = dintero_emulator_factory(**SMALL)
    # One byte every 0.4 s: each read succeeds long before httpx's 30 s read timeout.
    emu.set_faults({"route": "transactions", "probability": 1.0, "trickle": 0.4})
    started = time.monotonic()
    with (
        DinteroClient(_quick(emu, 2.0), retry_policy=FAST) as client,
        pytest.raises(DeadlineExceeded, match="deadline of 2 s") as info,
    ):
        client.get_json("/v1/transactions", host="checkout", params={"limit": 50})
    elapsed = time.monotonic() - started
    assert 2.0 <= elapsed < 4.0, elapsed
    evidence.note(
        f"deadline · body trickled a byte every 0.4 s (read timeout 30 s): "
        f"{type(info.value).__name__} after {elapsed:.1f} s, deadline 2 s"
    )
    # A request that hit its deadline is not sent again by the client (a trickling server
    # would hold every attempt); the task around it may retry later.
    assert emu.stats()["requests"]["transactions"] == {"200": 1}
    assert info.value.retryable


async def test_the_async_client_has_the_same_deadline(dintero_emulator_factory):
    emu = dintero_emulator_factory(**SMALL)
    emu.set_faults({"route": "transactions", "probability": 1.0, "trickle": 0.4})
    started = time.monotonic()
    async with AsyncDinteroClient(_quick(emu, 2.0), retry_policy=FAST) as client:
        with pytest.raises(DeadlineExceeded):
            await client.get_json("/v1/transactions", host="checkout", params={"limit": 50})
    assert 2.0 <= time.monotonic() - started < 4.0


def test_waiting_for_a_token_does_not_count_against_the_request_deadline(
    dintero_emulator_factory,
):
    from prefect_dintero.auth.provider import ClientCredentialsProvider

    emu = dintero_emulator_factory(**SMALL)
    creds = _quick(emu, 1.0)

    class SlowToRenew(ClientCredentialsProvider):
        def _renew(self, current):  # another process's renewal held the slot for a while
            time.sleep(1.5)
            return super()._renew(current)

    provider = SlowToRenew(creds, store=InMemoryTokenStore())
    with DinteroClient(creds, token_provider=provider, retry_policy=FAST) as client:
        assert client.get_json("/v1/transactions", host="checkout", params={"limit": 2})


def test_a_trickling_token_endpoint_fails_at_the_deadline(dintero_emulator_factory):
    emu = dintero_emulator_factory(**SMALL)
    emu.set_faults({"route": "token", "probability": 1.0, "trickle": 0.5})
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        fetch_client_credentials_token(_quick(emu, 1.5))
    assert time.monotonic() - started < 3.5
    assert emu.stats()["requests"]["token"] == {"200": 1}


class _TricklingHeaders:
    """A raw server that sends its status line and headers one byte a second (no ASGI server
    can), to show the deadline covers the headers too."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.recv(65536)
                for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]":
                    if self.stop.is_set():
                        return
                    try:
                        conn.sendall(bytes([byte]))
                    except OSError:
                        break
                    time.sleep(1.0)

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


def test_trickling_headers_fail_at_the_deadline_too(evidence):
    server = _TricklingHeaders()
    try:
        url = f"http://127.0.0.1:{server.port}"
        creds = ClientCredentials(
            account_id=AID,
            client_id="c",
            client_secret=SecretStr("s" * 12),
            api_url=url,
            checkout_url=url,
            request_deadline_seconds=2.0,
        )
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            fetch_client_credentials_token(creds)
        elapsed = time.monotonic() - started
        assert elapsed < 3.5
        evidence.note(
            f"deadline · headers trickled a byte a second: DeadlineExceeded after "
            f"{elapsed:.1f} s, deadline 2 s"
        )
    finally:
        server.close()


# -- secrets outside the logs ---------------------------------------------------------------------


def test_an_echoed_request_never_reaches_an_error_message(dintero_emulator_factory):
    emu = dintero_emulator_factory(**SMALL)
    creds = creds_for(emu)
    basic = base64.b64encode(f"{creds.client_id}:{emu.config.client_secret}".encode()).decode()
    emu.set_faults(
        {"route": "token", "sequence": [{"status": 400, "echo": True}]},
        {"route": "transactions", "sequence": [{"status": 403, "echo": True}]},
    )
    with pytest.raises(DinteroError) as token_error:
        fetch_client_credentials_token(creds)
    token = fetch_client_credentials_token(creds).access_token.get_secret_value()
    with DinteroClient(creds) as client, pytest.raises(DinteroError) as data_error:
        client.get_json("/v1/transactions", host="checkout")
    for error in (token_error.value, data_error.value):
        text = f"{error} {error.args} {vars(error)}"
        assert basic not in text and emu.config.client_secret not in text
        assert token not in text and "Bearer e" not in text
        # Where the (cut) message still shows the echoed Authorization header, it is masked.
        assert "authorization" not in text.lower() or MASK in text
        assert "\n" not in str(error)


def test_a_token_with_a_line_break_is_refused_without_quoting_it(dintero_emulator):
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"access_token": "abc.def\r\nX-Evil: 1", "expires_in": 60})

    creds = ClientCredentials(account_id=AID, client_id="c", client_secret=SecretStr("s" * 12))
    with (
        httpx.Client(transport=httpx.MockTransport(handler)) as http,
        pytest.raises(DinteroError) as info,
    ):
        fetch_client_credentials_token(creds, http=http)
    assert "abc.def" not in str(info.value) and "header cannot carry" in str(info.value)
    # And a damaged token already saved somewhere is refused by httpx without being quoted.
    damaged = _user_token("x" * 20 + "\r\nInjected: yes")
    with (
        DinteroClient(creds_for(dintero_emulator), session=damaged, retry_policy=FAST) as client,
        pytest.raises(DinteroError) as info,
    ):
        client.get_json("/v1/transactions", host="checkout")
    assert "Injected" not in str(info.value) and "not valid HTTP" in str(info.value)
    assert info.value.__cause__ is None


# -- bad data from the API ------------------------------------------------------------------------


def test_values_that_do_not_fit_their_column_are_null_with_a_warning(tmp_path, caplog):
    spec = CATALOG["transactions"]
    sink = Sink(tmp_path / "d.db")
    sink.prepare([spec])
    base = {"created_at": "2026-01-01T00:00:00.000Z", "updated_at": "2026-01-02T00:00:00.000Z"}
    rows = [
        {**base, "id": "T12345678.huge", "amount": 10**20},
        {**base, "id": "T12345678.float", "amount": 1e20},
        {**base, "id": "T12345678.inf", "amount": "Infinity"},
        {**base, "id": "T12345678.nan", "amount": "NaN"},
        {**base, "id": "T12345678.decimal", "amount": 338.9},
        {**base, "id": "T12345678.string", "amount": "338.90"},
        {**base, "id": "T12345678.whole", "amount": 33890.0},
        {**base, "id": "T12345678.digits", "amount": "33890"},
        {**base, "id": "T12345678.bool", "amount": True},
        {**base, "id": "T12345678.far", "updated_at": "9999-12-31T23:59:59-05:00", "amount": 1},
    ]
    with caplog.at_level(logging.WARNING):
        sink.write_page(spec, AID, "", rows, lambda state, write: state)
    stored = {r["id"]: r for r in sink.rows(spec, AID)}
    assert len(stored) == len(rows)
    amounts = {k.split(".")[1]: v["amount"] for k, v in stored.items()}
    assert amounts == {
        "huge": None,
        "float": None,
        "inf": None,
        "nan": None,
        "decimal": None,
        "string": None,
        "whole": 33890,
        "digits": 33890,
        "bool": None,
        "far": 1,
    }
    assert stored["T12345678.far"]["updated_at"] is None
    assert stored["T12345678.decimal"]["raw"]["amount"] == 338.9  # the raw JSON keeps it
    # Named, stream, object and field, up to five a page; the rest counted.
    for key in ("huge", "float", "inf", "nan", "decimal"):
        assert f"transactions T12345678.{key}: amount" in caplog.text
    assert "3 more values on this page did not fit their columns" in caplog.text


def test_non_finite_numbers_from_the_api_are_kept_as_text(destination, dintero_emulator_factory):
    emu = dintero_emulator_factory(**SMALL)
    spec = CATALOG["transactions"]
    newest = max(emu.dump("transactions"), key=lambda t: t["created_at"])
    body = httpx.get(f"{emu.url}/_emulator/health").json()  # the emulator is up
    assert body["ok"]

    class NonFinite(httpx.HTTPTransport):
        def handle_request(self, request):
            response = super().handle_request(request)
            if request.url.path != "/v1/transactions":
                return response
            response.read()
            text = response.text.replace(f'"amount":{newest["amount"]}', '"amount":NaN', 1)
            text = text.replace('"amount":', '"amount":1e400,"x":', 1)
            return httpx.Response(
                200, content=text.encode(), headers={"content-type": "application/json"}
            )

    sink = Sink(destination)
    sink.prepare([spec])
    with DinteroClient(creds_for(emu), retry_policy=FAST, transport=NonFinite()) as client:
        [result] = sync_account_stream(client, sink, spec, AID, SyncRequest(page_size=100))
    assert result.inserted == 40
    raws = json.dumps([r["raw"] for r in sink.rows(spec, AID)])
    assert '"NaN"' in raws and '"1e400"' in raws


@pytest.mark.parametrize("expires_in", [1e12, float("inf"), -5, "3600", None, True])
def test_a_bad_expires_in_falls_back_like_a_missing_one(expires_in):
    payload = {"access_token": "a" * 20, "expires_in": expires_in}
    with pytest.warns(MissingExpiryWarning):
        token = Token.from_response(payload, datetime.now(UTC))
    assert token.lifetime == timedelta(seconds=300)


def test_a_page_with_more_rows_than_asked_for_is_refused(dintero_emulator_factory, tmp_path):
    from prefect_dintero.streams.paginators import MalformedPageError

    emu = dintero_emulator_factory(**SMALL)
    big = [{"id": f"{AID}.x{i}", "created_at": "2026-01-01T00:00:00Z"} for i in range(30_000)]

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=big)

    spec = CATALOG["transactions"]
    sink = Sink(tmp_path / "d.db")
    sink.prepare([spec])
    creds = creds_for(emu)
    DEFAULT_STORE.clear()
    with DinteroClient(creds, transport=httpx.MockTransport(handler)) as client:
        client.token_provider.use_transport(httpx.HTTPTransport())
        with pytest.raises(MalformedPageError, match="30000 rows, more than the 100 asked for"):
            sync_account_stream(client, sink, spec, AID, SyncRequest(page_size=100))
    assert sink.count(spec) == 0


def test_a_body_over_the_cap_is_refused_before_it_is_read(dintero_emulator_factory):
    from prefect_dintero.errors import MalformedResponseError

    emu = dintero_emulator_factory(**SMALL)
    chunk = b'{"id": "T12345678.padding-padding-padding", "x": "' + b"y" * 1000 + b'"},'
    body = b"[" + chunk * 30_000 + b'{"id": "T12345678.last"}]'  # about 31 MB

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body, headers={"content-type": "application/json"})

    with DinteroClient(creds_for(emu), transport=httpx.MockTransport(handler)) as client:
        client.token_provider.use_transport(httpx.HTTPTransport())
        with pytest.raises(MalformedResponseError, match="over the 16,777,216 allowed"):
            client.get_json("/v1/transactions", host="checkout")


# -- files and the emulator -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "form",
    ["path", "url", "uri", "absolute uri"],
)
def test_a_new_sqlite_destination_is_private(tmp_path, monkeypatch, form):
    """Whatever form names the file (a path, a URL, SQLite's file: URI), it is made 0600, and so
    are its -wal and -shm files."""
    monkeypatch.chdir(tmp_path)
    destination = {
        "path": str(tmp_path / "dintero.db"),
        "url": f"sqlite:///{tmp_path / 'dintero.db'}",
        "uri": "sqlite:///file:dintero.db?uri=true",
        "absolute uri": f"sqlite:///file:{tmp_path / 'dintero.db'}?uri=true&mode=rwc",
    }[form]
    sink = Sink(destination)
    sink.prepare([CATALOG["customers"]])
    sink.write_page(
        CATALOG["customers"],
        AID,
        "",
        [{"id": "c1", "updated_at": "2026-01-01T00:00:00Z", "email": "ada@example.com"}],
        lambda state, write: state,
    )
    assert (tmp_path / "dintero.db").exists()
    for name in ("dintero.db", "dintero.db-wal", "dintero.db-shm"):
        file = tmp_path / name
        if file.exists():
            assert stat.S_IMODE(file.stat().st_mode) == 0o600, name
    sink.dispose()


def test_the_emulator_binds_loopback_only_unless_told():
    from prefect_dintero.cli import main

    with pytest.raises(ValueError, match="loopback"):
        running_emulator(EmulatorConfig(), host="0.0.0.0").__enter__()
    assert main(["emulator", "--host", "0.0.0.0", "--port", "0"]) == 2
    help_text = subprocess.run(
        [sys.executable, "-m", "prefect_dintero.cli", "emulator", "--help"],
        capture_output=True,
        text=True,
    ).stdout
    assert "for tests" in help_text and "--allow-remote" in help_text
    # Every option that has a default says it.
    for option, default in [("--port", "8787"), ("--transactions", "250"), ("--seed", "42")]:
        options = help_text.split("options:", 1)[1]
        line = options[options.index(option) :].split("\n  --", 1)[0]
        assert f"(default: {default})" in " ".join(line.split()), (option, line)


def test_a_busy_port_is_one_line_before_any_banner():
    with running_emulator(EmulatorConfig()) as emu:
        port = emu.url.rsplit(":", 1)[1]
        done = subprocess.run(
            [sys.executable, "-m", "prefect_dintero.emulator", "--port", port],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2
    assert done.stdout == ""  # no banner for a server that never started
    assert done.stderr.strip().splitlines() == [
        f"emulator: error: 127.0.0.1:{port} is already in use (another emulator?); stop it or "
        "pass --port"
    ]


def test_the_emulator_control_routes_refuse_other_sites(dintero_emulator):
    """A web page must not reach the control routes through a user's browser: another host name
    (DNS rebinding) is refused, and so is a body a cross-site form or fetch can send without a
    preflight."""
    import httpx

    url = dintero_emulator.url
    rebinding = httpx.get(f"{url}/_emulator/issued", headers={"Host": "attacker.example"})
    assert rebinding.status_code == 403
    assert dintero_emulator.config.client_secret not in rebinding.text
    cross_site = httpx.post(
        f"{url}/_emulator/faults",
        content=json.dumps({"rules": [{"route": "*", "probability": 1.0, "status": 500}]}),
        headers={"Content-Type": "text/plain"},
    )
    assert cross_site.status_code == 415
    assert dintero_emulator.set_faults()["rules"] == []  # nothing was installed
    for host in ("localhost", f"127.0.0.1:{url.rsplit(':', 1)[1]}", "[::1]:8787"):
        assert httpx.get(f"{url}/_emulator/health", headers={"Host": host}).status_code == 200


def test_an_emulator_allowed_remote_answers_other_host_names():
    import httpx

    from prefect_dintero.emulator.server import EmulatorServer

    server = EmulatorServer(EmulatorConfig(), allow_remote=True).start()
    try:
        answer = httpx.get(f"{server.url}/_emulator/health", headers={"Host": "tests.internal"})
    finally:
        server.stop()
    assert answer.status_code == 200


def test_own_retries_never_hands_out_another_servers_settings():
    """The defect: the copy without retries was cached by ``id(settings)``; a freed settings
    object's id, reused by a new one, got the old server's URL and key (91 of 200 tries), and
    the cache grew without bound."""
    from prefect.settings import (
        PREFECT_API_KEY,
        PREFECT_API_URL,
        PREFECT_CLIENT_MAX_RETRIES,
        temporary_settings,
    )

    from prefect_dintero.blocks import prefect_api

    wrong = []
    for n in range(100):
        url, key = f"http://127.0.0.1:{10000 + n}/api", f"pnu_{n:036d}"
        updates = {PREFECT_API_URL: url, PREFECT_API_KEY: key}
        with temporary_settings(updates=updates), prefect_api.own_retries():
            seen = (PREFECT_API_URL.value(), PREFECT_API_KEY.value())
            assert PREFECT_CLIENT_MAX_RETRIES.value() == 0
        if seen != (url, key):
            wrong.append(n)
    assert wrong == []
    assert len(prefect_api._no_retry_settings) <= prefect_api.NO_RETRY_SETTINGS_KEPT


# -- the block store's slot: saves never outside it, a lost lease never refreshes ----------------


def _token(name: str, seconds: float) -> Token:
    now = datetime.now(UTC)
    return Token(
        access_token=SecretStr(f"{name}-" + "x" * 24),
        issued_at=now,
        expires_at=now + timedelta(seconds=seconds),
    )


class _FakeSlot:
    """A held renewal slot whose lease the test ends."""

    def __init__(self) -> None:
        self.lost = False
        self.released = False

    def holds(self) -> bool:
        return not self.lost

    def holds_until(self) -> float:
        return time.monotonic() + (0.0 if self.lost else 30.0)

    def release(self) -> None:
        self.released = True

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _memory_block_store(block_token):
    from prefect_dintero.blocks.token_store import BlockTokenStore

    class MemoryBlockStore(BlockTokenStore):
        """A block store over a dict: what a Prefect block holds, read and written."""

        label = "a test token"

        def __init__(self) -> None:
            super().__init__("dintero-test-renewal", 1.0, block_token)
            self.block = block_token
            self.writes: list = []
            self.on_read = lambda: None

        def _read(self):
            saved = self.block
            self.on_read()
            return None, saved

        def _write(self, handle, token) -> None:
            self.block = token
            self.writes.append(token)

        def _slot_timed_out(self) -> None:
            raise TimeoutError("slot taken")

    return MemoryBlockStore()


@pytest.mark.parametrize("slot", ["taken", "failing"])
def test_the_exit_save_never_runs_outside_its_slot(monkeypatch, caplog, slot):
    """The defect: flush() saved without the slot when it was not granted in time (a login
    holding it, or on Python 3.12 a thread that cannot start at exit); its read-compare-write
    outside the slot wrote an older renewal over the newer login that landed between them."""
    from prefect_dintero.blocks import token_store as module

    old, renewed, login = _token("old", 60), _token("renewed", 3600), _token("login", 3600)
    store = _memory_block_store(old)
    store._hold(renewed)  # renewed from `old`, not saved yet

    def login_lands_after_the_read() -> None:
        store.block = login

    store.on_read = login_lands_after_the_read

    def no_slot(*args, **kwargs):
        if slot == "failing":
            raise RuntimeError("can't create new thread at interpreter shutdown")
        return None

    monkeypatch.setattr(module, "wait_for_slot", no_slot)
    with caplog.at_level(logging.WARNING, logger="prefect_dintero"):
        assert store.flush(seconds=0.2) is False
    assert store.writes == [] and store._dirty  # pending, said so, nothing written
    assert "unsaved" in caplog.text or "not saved" in caplog.text
    # With the slot, the save compares and finds the newer login: it is kept.
    monkeypatch.setattr(module, "wait_for_slot", lambda *a, **k: _FakeSlot())
    store.on_read = lambda: None
    store.block = login
    store.flush(seconds=0.2)
    assert store.block is login and store.writes == []


def test_a_renewal_whose_lease_was_lost_reads_the_block_again_before_refreshing(monkeypatch):
    """The defect: a renewal never asked whether its slot still held, so after a read that
    outlasted its lease it refreshed with a token another process was refreshing too."""
    from prefect_dintero.auth.provider import ClientCredentialsProvider
    from prefect_dintero.blocks import token_store as module

    expired, theirs = _token("expired", -1), _token("theirs", 3600)
    store = _memory_block_store(expired)
    slots = [_FakeSlot(), _FakeSlot()]
    monkeypatch.setattr(module, "wait_for_slot", lambda *a, **k: slots.pop(0))
    first = slots[0]

    def slow_read() -> None:  # the read outlasts the lease; another process renews meanwhile
        first.lost = True
        store.block = theirs
        store.on_read = lambda: None

    store.on_read = slow_read
    grants = []

    def handler(request: httpx.Request) -> httpx.Response:
        grants.append(request.url.path)
        return httpx.Response(200, json={"access_token": "mine-" + "x" * 24, "expires_in": 3600})

    creds = ClientCredentials(account_id=AID, client_id="c", client_secret=SecretStr("s" * 10))
    provider = ClientCredentialsProvider(creds, store=store)
    provider.use_transport(httpx.MockTransport(handler))
    token = provider.get_token()
    assert grants == []  # no refresh on a turn that was lost
    assert token.same_access_token(theirs) and not slots  # a second turn read theirs
    # A lease lost during the refresh itself: the new token is used, saved later in the slot.
    store._token = store.block = _token("expired-again", -1)
    lost_in_refresh = _FakeSlot()
    monkeypatch.setattr(module, "wait_for_slot", lambda *a, **k: lost_in_refresh)

    def refresh(request: httpx.Request) -> httpx.Response:
        lost_in_refresh.lost = True
        return handler(request)

    provider.use_transport(httpx.MockTransport(refresh))
    mine = provider.get_token()
    assert mine.access_token.get_secret_value().startswith("mine-")
    assert store.writes == [] and store._dirty
