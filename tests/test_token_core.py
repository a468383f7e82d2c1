"""The token core against the emulator (and respx where the wire must be checked exactly)."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import warnings
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import respx
from pydantic import SecretStr

from prefect_dintero.auth.client_credentials import ClientCredentials
from prefect_dintero.auth.grants import (
    exchange_authorization_code,
    fetch_client_credentials_token,
)
from prefect_dintero.auth.provider import ClientCredentialsProvider, OIDCSessionProvider
from prefect_dintero.auth.store import DEFAULT_STORE, InMemoryTokenStore
from prefect_dintero.auth.tokens import MissingExpiryWarning, Token
from prefect_dintero.client import AsyncDinteroClient, DinteroClient
from prefect_dintero.errors import (
    AuthenticationError,
    ConfigurationError,
    DinteroAPIError,
    InvalidGrantError,
    MalformedResponseError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitedError,
    ReauthorizationRequired,
    TransientError,
)
from prefect_dintero.http.retry import RetryPolicy, parse_retry_after
from prefect_dintero.redact import MASK, get_logger, redact

from .helpers import AID, creds_for

SMALL = dict(transactions=30, sessions=10, settlements=5, customers=5, transfers_per_destination=5)
FAST = RetryPolicy(max_attempts=6, backoff_base=0.01, backoff_cap=0.05, retry_after_cap=3)


@pytest.fixture(autouse=True)
def _fresh_default_store():
    DEFAULT_STORE.clear()
    yield
    DEFAULT_STORE.clear()


@pytest.fixture
def emu(dintero_emulator_factory):
    return dintero_emulator_factory(**SMALL)


# -- tokens -----------------------------------------------------------------------------------


def test_token_expiry_from_send_time_and_masked_repr():
    sent = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    token = Token.from_response(
        {
            "access_token": "secret-access-123",
            "token_type": "Bearer",
            "expires_in": 3600,
            "refresh_token": "secret-refresh-456",
            "user_info": {"authority": "https://idp", "value": {"sub": "u1", "name": "Ada"}},
        },
        sent,
    )
    assert token.expires_at == sent + timedelta(hours=1)
    assert token.leeway() == timedelta(seconds=360)  # 10 % of an hour beats 60 s
    for text in (repr(token), str(token), f"{token}", repr([token])):
        assert "secret-access-123" not in text and "secret-refresh-456" not in text
    assert "Ada" in repr(token) and token.user_info.sub == "u1"


def test_leeway_is_max_of_60s_and_10_percent_capped_at_a_fifth():
    sent = datetime.now(UTC)
    short = Token.from_response({"access_token": "a" * 20, "expires_in": 300}, sent)
    assert short.leeway() == timedelta(seconds=60)
    tiny = Token.from_response({"access_token": "b" * 20, "expires_in": 5}, sent)
    assert tiny.leeway() == timedelta(seconds=1)  # capped at a fifth of a short lifetime
    assert short.leeway(10) == timedelta(seconds=10)


def test_missing_expires_in_warns_and_uses_a_short_default():
    sent = datetime.now(UTC)
    with pytest.warns(MissingExpiryWarning):
        token = Token.from_response({"access_token": "c" * 20}, sent)
    assert token.expires_at == sent + timedelta(seconds=300)
    with pytest.raises(MalformedResponseError):
        Token.from_response({"token_type": "Bearer"}, sent)


def test_naive_times_are_rejected():
    with pytest.raises(ValueError):
        Token(
            access_token=SecretStr("x" * 10),
            issued_at=datetime(2026, 1, 1),
            expires_at=datetime(2026, 1, 2),
        )


def test_parse_retry_after_both_forms():
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_retry_after("3", now) == 3.0
    assert parse_retry_after("Thu, 01 Jan 2026 00:00:05 GMT", now) == 5.0
    assert parse_retry_after("Wed, 31 Dec 2025 00:00:00 GMT", now) == 0.0
    assert parse_retry_after("soon", now) is None and parse_retry_after(None) is None


# -- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "account", ["12345678", "X12345678", "T1234567", "T123456789", "t12345678", "", "T12"]
)
def test_bad_account_ids_fail_before_any_request(account):
    with respx.mock(assert_all_called=False) as mock:
        with pytest.raises(ConfigurationError, match="account id"):
            ClientCredentials(account_id=account, client_id="c", client_secret=SecretStr("s" * 10))
        assert mock.calls.call_count == 0


def test_partner_owner_id_with_three_digits_is_accepted():
    assert (
        ClientCredentials(
            account_id="P123", client_id="c", client_secret=SecretStr("s" * 10)
        ).account_id
        == "P123"
    )


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://api.dintero.com", True),
        ("http://127.0.0.1:8787", True),
        ("http://localhost:8787", True),
        ("http://[::1]:8787", True),
        ("http://api.dintero.com", False),
        ("http://10.0.0.5", False),
        ("ftp://api.dintero.com", False),
        ("api.dintero.com", False),
        ("https://api.dintero.com?x=1", False),
    ],
)
def test_https_is_required_except_for_loopback(url, ok):
    def make() -> ClientCredentials:
        return ClientCredentials(
            account_id=AID, client_id="c", client_secret=SecretStr("s" * 10), api_url=url
        )

    if ok:
        assert make().api_url == url.rstrip("/")
    else:
        with pytest.raises(ConfigurationError):
            make()


def test_empty_client_secret_is_rejected():
    with pytest.raises(ConfigurationError, match="client_secret"):
        ClientCredentials(account_id=AID, client_id="c", client_secret=SecretStr(" "))


def test_credentials_repr_hides_the_secret():
    creds = ClientCredentials(
        account_id=AID, client_id="c", client_secret=SecretStr("very-secret-value")
    )
    assert "very-secret-value" not in repr(creds) and "very-secret-value" not in str(creds)
    assert creds.resolved_audience == f"https://api.dintero.com/v1/accounts/{AID}"


# -- grants -----------------------------------------------------------------------------------


def test_wrong_secret_is_an_authentication_error_after_one_attempt(emu):
    creds = creds_for(emu, client_secret=SecretStr("definitely-wrong"))
    with pytest.raises(AuthenticationError, match="client's id and secret") as info:
        fetch_client_credentials_token(creds)
    assert not info.value.retryable and info.value.status_code == 401
    assert emu.stats()["requests"]["token"] == {"401": 1}


def test_audience_not_granted_is_permission_denied(emu):
    creds = creds_for(emu, audience="https://api.dintero.com/v1/accounts/T99999999")
    with pytest.raises(PermissionDeniedError):
        fetch_client_credentials_token(creds)
    assert emu.stats()["requests"]["token"] == {"403": 1}


def test_token_endpoint_transient_failures_are_retried(emu):
    emu.set_faults(
        {
            "route": "token",
            "sequence": [{"status": 503}, {"drop": True}, {"status": 429, "retry_after": 0}],
        }
    )
    token = fetch_client_credentials_token(creds_for(emu), policy=FAST)
    assert token.access_token.get_secret_value()
    assert emu.stats()["requests"]["token"] == {"503": 1, "dropped": 1, "429": 1, "200": 1}


OIDC_URL = "https://api.dintero.com/v1/accounts/T12345678/auth/oidc/token"


def test_oidc_exchange_sends_exactly_the_seed_request():
    creds = ClientCredentials(
        account_id=AID, client_id="my-client", client_secret=SecretStr("my-secret-value")
    )
    service = Token.from_response(
        {"access_token": "service-token-abcdef", "expires_in": 3600}, datetime.now(UTC)
    )
    response = {
        "access_token": "user-token-abcdef",
        "token_type": "Bearer",
        "expires_in": 86400,
        "user_info": {
            "authority": "https://identityserver.example.com/access",
            "value": {"sub": "c06c", "name": "Ada Lovelace"},
        },
    }
    with respx.mock() as mock:
        route = mock.post(OIDC_URL).respond(200, json=response)
        token = exchange_authorization_code(
            creds, "the-code-123", service_token=service, redirect_uri="https://app.example/cb"
        )
    request = route.calls.last.request
    assert request.headers["authorization"] == "Bearer service-token-abcdef"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"].startswith("prefect-dintero/")
    assert request.headers["dintero-system-plugin-name"] == "prefect-dintero"
    assert json.loads(request.content) == {
        "grant_type": "authorization_code",
        "code": "the-code-123",
        "client_id": "my-client",
        "audience": "https://api.dintero.com/v1/accounts/T12345678",
        "redirect_uri": "https://app.example/cb",
    }
    assert token.user_info.name == "Ada Lovelace" and token.refresh_token is None
    assert token.lifetime == timedelta(seconds=86400)


def test_oidc_exchange_without_redirect_uri_omits_it():
    creds = ClientCredentials(
        account_id=AID, client_id="my-client", client_secret=SecretStr("my-secret-value")
    )
    service = Token.from_response(
        {"access_token": "service-token-abcdef", "expires_in": 3600}, datetime.now(UTC)
    )
    with respx.mock() as mock:
        route = mock.post(OIDC_URL).respond(
            200, json={"access_token": "u" * 20, "expires_in": 60, "refresh_token": "r" * 20}
        )
        token = exchange_authorization_code(creds, "code-1", service_token=service)
    assert "redirect_uri" not in json.loads(route.calls.last.request.content)
    assert token.refresh_token.get_secret_value() == "r" * 20


def test_reused_code_is_invalid_grant_after_one_attempt(emu):
    creds = creds_for(emu)
    service = fetch_client_credentials_token(creds)
    code = emu.authorization_code()
    first = exchange_authorization_code(creds, code, service_token=service)
    assert first.user_info.sub == emu.config.user.sub
    with pytest.raises(InvalidGrantError, match="already been used") as info:
        exchange_authorization_code(creds, code, service_token=service, policy=FAST)
    assert not info.value.retryable and "log in again" in str(info.value)
    assert emu.stats()["requests"]["oidc_token"] == {"200": 1, "400": 1}


def test_exchange_with_another_redirect_uri_is_refused(emu):
    creds = creds_for(emu)
    service = fetch_client_credentials_token(creds)
    code = emu.authorization_code()
    with pytest.raises(InvalidGrantError, match="redirect_uri"):
        exchange_authorization_code(
            creds, code, service_token=service, redirect_uri="http://127.0.0.1:1/wrong"
        )
    token = exchange_authorization_code(
        creds, code, service_token=service, redirect_uri=emu.config.redirect_uris[0]
    )
    assert token.user_info.name == emu.config.user.name


def test_expired_code_is_invalid_grant(dintero_emulator_factory):
    emu = dintero_emulator_factory(code_lifetime=60, **SMALL)
    creds = creds_for(emu)
    code = emu.authorization_code()
    emu.advance_clock(61)
    with pytest.raises(InvalidGrantError, match="expired"):
        exchange_authorization_code(
            creds, code, service_token=fetch_client_credentials_token(creds)
        )


# -- single flight ------------------------------------------------------------------------------


def test_64_threads_and_64_coroutines_make_one_grant(dintero_emulator_factory):
    emu = dintero_emulator_factory(**SMALL)
    emu.set_faults({"route": "token", "probability": 1.0, "latency": 0.2})  # widen the race
    creds = creds_for(emu)
    start = threading.Barrier(65)
    tokens: list[str] = []

    def thread_worker():
        provider = ClientCredentialsProvider(
            creds
        )  # a provider per thread: locks are not per object
        start.wait()
        tokens.append(provider.get_token().access_token.get_secret_value())

    async def coroutines():
        start.wait()
        provider = ClientCredentialsProvider(creds)
        got = await asyncio.gather(*(provider.aget_token() for _ in range(64)))
        tokens.extend(t.access_token.get_secret_value() for t in got)

    threads = [threading.Thread(target=thread_worker) for _ in range(64)]
    for t in threads:
        t.start()
    asyncio.run(coroutines())
    for t in threads:
        t.join()
    assert len(tokens) == 128 and len(set(tokens)) == 1
    assert emu.stats()["token_grants"]["client_credentials"] == 1


def test_coroutines_in_two_event_loops_and_threads_share_one_renewal(dintero_emulator_factory):
    emu = dintero_emulator_factory(**SMALL)
    emu.set_faults({"route": "token", "probability": 1.0, "latency": 0.2})
    creds = creds_for(emu)

    def loop_worker():
        async def many():
            provider = ClientCredentialsProvider(creds)
            await asyncio.gather(*(provider.aget_token() for _ in range(16)))

        asyncio.run(many())

    threads = [threading.Thread(target=loop_worker) for _ in range(4)]
    threads += [
        threading.Thread(target=ClientCredentialsProvider(creds).get_token) for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert emu.stats()["token_grants"]["client_credentials"] == 1


@pytest.mark.slow
def test_one_grant_per_lifetime_under_30s_of_load(dintero_emulator_factory):
    lifetime, duration, leeway = 5, 30.0, 1.0
    emu = dintero_emulator_factory(token_lifetime=lifetime, **SMALL)
    creds = creds_for(emu)
    stop = time.monotonic() + duration
    served = [0]

    def thread_load():
        with DinteroClient(creds, leeway=leeway) as client:
            while time.monotonic() < stop:
                client.get_json("/v1/sessions", host="checkout", params={"limit": 1})
                served[0] += 1

    async def async_load():
        async with AsyncDinteroClient(creds, leeway=leeway) as client:
            while time.monotonic() < stop:
                await client.get_json("/v1/sessions", host="checkout", params={"limit": 1})
                served[0] += 1

    threads = [threading.Thread(target=thread_load) for _ in range(8)]
    threads.append(
        threading.Thread(
            target=lambda: asyncio.run(
                asyncio.wait_for(asyncio.gather(*(async_load() for _ in range(8))), duration + 30)
            )
        )
    )
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    grants = emu.stats()["token_grants"]["client_credentials"]
    renew_every = lifetime - leeway
    assert duration / renew_every <= grants <= duration / renew_every + 2, grants
    assert emu.stats()["requests"]["sessions"].get("401", 0) == 0
    assert served[0] > 20 * grants


# -- refresh on expiry ------------------------------------------------------------------------


def login(emu, creds) -> Token:
    return exchange_authorization_code(
        creds, emu.authorization_code(), service_token=fetch_client_credentials_token(creds)
    )


def test_refresh_with_rotation_keeps_working_over_five_rotations(dintero_emulator_factory):
    emu = dintero_emulator_factory(refresh_tokens=True, rotate_refresh_tokens=True, **SMALL)
    creds = creds_for(emu)
    session = login(emu, creds)
    store = InMemoryTokenStore()
    # A leeway longer than the lifetime makes every request renew: five rotations in five calls.
    provider = OIDCSessionProvider(creds, "ada", initial=session, store=store, leeway=10 * 3600)
    seen_refresh = {session.refresh_token.get_secret_value()}
    with DinteroClient(creds, token_provider=provider) as client:
        for _ in range(5):
            assert client.get_json("/v1/transactions", host="checkout", params={"limit": 1})
            current = store.get(provider.key)
            seen_refresh.add(current.refresh_token.get_secret_value())
            assert current.user_info.name == emu.config.user.name
    assert len(seen_refresh) == 6
    assert emu.stats()["token_grants"]["refresh_token"] == 5
    assert provider.renewals == 5


def test_omitted_refresh_token_is_kept(dintero_emulator_factory):
    emu = dintero_emulator_factory(refresh_tokens=True, rotate_refresh_tokens=False, **SMALL)
    creds = creds_for(emu)
    session = login(emu, creds)
    store = InMemoryTokenStore()
    provider = OIDCSessionProvider(creds, "ada", initial=session, store=store, leeway=10 * 3600)
    for _ in range(3):
        provider.get_token()
        assert store.get(provider.key).refresh_token == session.refresh_token
    assert emu.stats()["token_grants"]["refresh_token"] == 3


def test_expired_session_without_refresh_token_requires_login():
    creds = ClientCredentials(account_id=AID, client_id="c", client_secret=SecretStr("s" * 10))
    past = datetime.now(UTC) - timedelta(hours=2)
    expired = Token.from_response(
        {
            "access_token": "old-user-token",
            "expires_in": 3600,
            "user_info": {"value": {"name": "Ada"}},
        },
        past,
    )
    provider = OIDCSessionProvider(
        creds, "ada-session", initial=expired, store=InMemoryTokenStore()
    )
    with respx.mock() as mock, pytest.raises(ReauthorizationRequired) as info:
        provider.get_token()
    assert mock.calls.call_count == 0  # never a silent fallback to the service identity
    message = str(info.value)
    assert "Ada" in message and "dintero_login" in message and "ada-session" in message


def test_stale_session_without_refresh_token_is_used_until_it_expires():
    creds = ClientCredentials(account_id=AID, client_id="c", client_secret=SecretStr("s" * 10))
    nearly = Token.from_response(
        {"access_token": "user-token-nearly", "expires_in": 3600},
        datetime.now(UTC) - timedelta(seconds=3590),
    )
    provider = OIDCSessionProvider(creds, "s", initial=nearly, store=InMemoryTokenStore())
    assert provider.get_token() == nearly


def test_revoked_refresh_token_requires_login(dintero_emulator_factory):
    emu = dintero_emulator_factory(refresh_tokens=True, **SMALL)
    creds = creds_for(emu)
    session = login(emu, creds)
    provider = OIDCSessionProvider(
        creds, "ada", initial=session, store=InMemoryTokenStore(), leeway=10 * 3600
    )
    provider.get_token()  # rotates: the original refresh token is now revoked
    other = OIDCSessionProvider(
        creds, "ada-copy", initial=session, store=InMemoryTokenStore(), leeway=10 * 3600
    )
    with pytest.raises(ReauthorizationRequired, match="could not be renewed"):
        other.get_token()


# -- 401, retries, errors -----------------------------------------------------------------------


def test_revoked_tokens_get_one_renewal_and_one_retry(emu):
    with DinteroClient(creds_for(emu), retry_policy=FAST) as client:
        client.get_json("/v1/transactions", host="checkout")
        emu.revoke_all_tokens()
        assert client.get_json("/v1/transactions", host="checkout")
        assert client.stats.auth_retries == 1
    stats = emu.stats()
    assert stats["token_grants"]["client_credentials"] == 2
    assert stats["requests"]["transactions"] == {"200": 2, "401": 1}


def test_a_revoked_fresh_token_gets_one_more_renewal(emu):
    emu.set_faults({"route": "transactions", "sequence": [{"status": 401}, {"status": 401}]})
    with DinteroClient(creds_for(emu), retry_policy=FAST) as client:
        assert client.get_json("/v1/transactions", host="checkout")
        assert client.stats.auth_retries == 2
    assert emu.stats()["requests"]["transactions"] == {"401": 2, "200": 1}
    assert emu.stats()["token_grants"]["client_credentials"] == 3


def test_401_after_bounded_renewals_is_an_authentication_error_not_a_loop(emu):
    emu.set_faults({"route": "transactions", "sequence": [{"status": 401}] * 5})
    with (
        DinteroClient(creds_for(emu), retry_policy=FAST) as client,
        pytest.raises(AuthenticationError, match="rejected freshly issued tokens") as info,
    ):
        client.get_json("/v1/transactions", host="checkout")
    assert not info.value.retryable
    # One attempt and two renewals, then the error: never a loop, never a tenacity retry.
    assert emu.stats()["requests"]["transactions"] == {"401": 3}


async def test_async_client_renews_on_401(emu):
    async with AsyncDinteroClient(creds_for(emu), retry_policy=FAST) as client:
        await client.get_json("/v1/transactions", host="checkout")
        emu.revoke_all_tokens()
        assert await client.get_json("/v1/transactions", host="checkout")
        assert client.stats.auth_retries == 1


def test_a_401_on_a_non_replayable_body_is_not_retried():
    creds = ClientCredentials(account_id=AID, client_id="c", client_secret=SecretStr("s" * 10))
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if request.url.path.endswith("/auth/token"):
            return httpx.Response(200, json={"access_token": "tok-" + "x" * 20, "expires_in": 3600})
        return httpx.Response(401, json={"error": {"message": "no"}})

    with DinteroClient(creds, transport=httpx.MockTransport(handler), retry_policy=FAST) as client:
        request = client._http.build_request(
            "POST", client.url("/v1/things"), content=iter([b"chunk"])
        )
        response = client._http.send(request)
    assert response.status_code == 401
    assert calls.count("/v1/things") == 1


def test_429_with_seconds_and_http_date_then_503_burst_and_a_drop_recover(emu):
    emu.set_faults(
        {
            "route": "transactions",
            "sequence": [
                {"status": 429, "retry_after": 1},
                {"status": 429, "retry_after": 1, "retry_after_format": "http-date"},
                {"status": 503},
                {"status": 503},
                {"drop": True},
            ],
        }
    )
    t0 = time.monotonic()
    with DinteroClient(creds_for(emu), retry_policy=FAST) as client:
        assert len(client.get_json("/v1/transactions", host="checkout")) == 10
        stats = client.stats.snapshot()
    assert time.monotonic() - t0 >= 1.0  # the Retry-After waits were honoured
    assert stats["retries"] == 5 and stats["rate_limited"] == 2 and stats["server_errors"] == 2
    assert stats["transport_errors"] == 1
    assert emu.stats()["requests"]["transactions"] == {"429": 2, "503": 2, "dropped": 1, "200": 1}


def test_retries_are_bounded_and_raise_the_real_error(emu):
    emu.set_faults({"route": "transactions", "probability": 1.0, "status": 503})
    with (
        DinteroClient(creds_for(emu), retry_policy=FAST) as client,
        pytest.raises(TransientError) as info,
    ):
        client.get_json("/v1/transactions", host="checkout")
    assert info.value.retryable and info.value.status_code == 503
    assert emu.stats()["requests"]["transactions"] == {"503": FAST.max_attempts}


def test_the_credentials_retry_settings_govern_data_and_token_requests(emu):
    # One policy, set on the credentials (the block's retry_attempts / retry_max_wait_seconds).
    creds = creds_for(emu, retry_attempts=3, retry_max_wait_seconds=0.05)
    assert creds.retry_policy.max_attempts == 3 and creds.retry_policy.retry_after_cap == 0.05
    emu.set_faults(
        {"route": "token", "probability": 1.0, "status": 503, "retry_after": 30},
        {"route": "transactions", "probability": 1.0, "status": 503, "retry_after": 30},
    )
    t0 = time.monotonic()
    with DinteroClient(creds) as client, pytest.raises(TransientError):
        client.get_json("/v1/transactions", host="checkout")
    # Three token attempts, capped waits (30 s asked for, 0.05 s allowed), no data request.
    assert emu.stats()["requests"]["token"] == {"503": 3}
    assert time.monotonic() - t0 < 5
    emu.set_faults({"route": "transactions", "probability": 1.0, "status": 503, "retry_after": 30})
    with DinteroClient(creds) as client, pytest.raises(TransientError):
        client.get_json("/v1/transactions", host="checkout")
    assert emu.stats()["requests"]["transactions"] == {"503": 3}
    assert time.monotonic() - t0 < 10
    with pytest.raises(ConfigurationError):
        creds_for(emu, retry_attempts=0)


def test_rate_limited_error_when_429s_outlast_the_attempts(emu):
    emu.set_faults({"route": "sessions", "probability": 1.0, "status": 429, "retry_after": 0})
    with (
        DinteroClient(creds_for(emu), retry_policy=FAST) as client,
        pytest.raises(RateLimitedError),
    ):
        client.get_json("/v1/sessions", host="checkout")


@pytest.mark.parametrize(
    ("path", "params", "error", "route"),
    [
        ("/v1/transactions", {"limit": 0}, DinteroAPIError, "transactions"),
        (f"/v1/accounts/{AID}/settlements", {"limit": 5000}, DinteroAPIError, "settlements"),
        (
            "/v2/accounts/T12345678/payout/payout-destinations/nope/transfers",
            None,
            NotFoundError,
            "payout_transfers",
        ),
    ],
)
def test_400_and_404_are_never_retried(emu, path, params, error, route):
    host = "checkout" if path == "/v1/transactions" else "api"
    with DinteroClient(creds_for(emu), retry_policy=FAST) as client, pytest.raises(error) as info:
        client.get_json(path, host=host, params=params)
    assert not info.value.retryable
    statuses = emu.stats()["requests"][route]
    assert sum(statuses.values()) == 1


def test_403_for_another_account_is_never_retried(dintero_emulator_factory):
    emu = dintero_emulator_factory(account_ids=[AID, "T87654321"], **SMALL)
    with (
        DinteroClient(creds_for(emu), retry_policy=FAST) as client,
        pytest.raises(PermissionDeniedError),
    ):
        client.get_json("/v1/accounts/T87654321/settlements")
    assert emu.stats()["requests"]["settlements"] == {"403": 1}


def test_malformed_json_is_a_clear_permanent_error(emu):
    emu.set_faults({"route": "transactions", "sequence": [{"malformed": True}]})
    with (
        DinteroClient(creds_for(emu), retry_policy=FAST) as client,
        pytest.raises(MalformedResponseError, match="not valid JSON"),
    ):
        client.get_json("/v1/transactions", host="checkout")
    assert emu.stats()["requests"]["transactions"] == {"200": 1}


def test_non_json_error_bodies_are_tolerated():
    creds = ClientCredentials(account_id=AID, client_id="c", client_secret=SecretStr("s" * 10))

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/auth/token"):
            return httpx.Response(200, json={"access_token": "tok-" + "y" * 20, "expires_in": 3600})
        return httpx.Response(400, text="<html>Bad gateway config</html>")

    with (
        DinteroClient(creds, transport=httpx.MockTransport(handler), retry_policy=FAST) as client,
        pytest.raises(DinteroAPIError, match="Bad gateway config"),
    ):
        client.get_json("/v1/x")


def test_clients_send_user_agent_and_system_headers(emu):
    seen = []
    creds = creds_for(emu, system_name="my-shop")
    with DinteroClient(creds, transport=httpx.HTTPTransport()) as client:
        client._http.event_hooks["request"].append(seen.append)
        client.get_json("/v1/sessions", host="checkout")
    headers = seen[-1].headers
    assert headers["user-agent"].startswith("prefect-dintero/")
    assert headers["dintero-system-name"] == "my-shop" and headers["dintero-system-version"]
    assert client._timeout.connect == 5.0 and client._timeout.read == 30.0


# -- secrets stay out of logs and reprs ------------------------------------------------------------


def test_no_secret_in_logs_or_reprs(dintero_emulator_factory, caplog):
    emu = dintero_emulator_factory(refresh_tokens=True, **SMALL)
    creds = creds_for(emu)
    # The user's browser brings the code; the test helper playing it logs the redirect itself.
    code = emu.authorization_code()
    caplog.set_level(logging.DEBUG)
    session = exchange_authorization_code(
        creds, code, service_token=fetch_client_credentials_token(creds)
    )
    provider = OIDCSessionProvider(
        creds, "ada", initial=session, store=InMemoryTokenStore(), leeway=10 * 3600
    )
    emu.set_faults(
        {
            "route": "transactions",
            "sequence": [{"status": 429, "retry_after": 0}, {"status": 401}, {"drop": True}],
        }
    )
    with DinteroClient(creds, token_provider=provider, retry_policy=FAST) as client:
        for _ in range(3):
            client.get_json("/v1/transactions", host="checkout")
        objects = [
            client,
            provider,
            provider.service,
            creds,
            session,
            provider.store.get(provider.key),
            client._http.auth,
        ]
        texts = [repr(o) for o in objects] + [str(o) for o in objects]
    with pytest.raises(AuthenticationError) as info:
        fetch_client_credentials_token(creds_for(emu, client_secret=SecretStr("a-wrong-secret")))
    texts.append(str(info.value))
    get_logger("prefect_dintero.test").warning(
        "leaking %s", session.access_token.get_secret_value()
    )
    texts.extend(r.getMessage() for r in caplog.records)
    issued = emu.issued()
    secrets = [
        issued["client_secret"],
        "a-wrong-secret",
        *issued["access_tokens"],
        *issued.get("refresh_tokens", []),
        *issued["codes"],
    ]
    assert len(secrets) > 8
    blob = "\n".join(texts)
    assert MASK in blob  # the planted leak was masked
    leaked = [s for s in secrets if s in blob]
    assert leaked == []


def test_redact_masks_registered_values_only():
    Token.from_response(
        {"access_token": "registered-token-value", "expires_in": 60}, datetime.now(UTC)
    )
    assert redact("a registered-token-value b") == f"a {MASK} b"
    assert redact("nothing secret here") == "nothing secret here"


def test_missing_expires_in_from_a_server_warns(emu):
    creds = ClientCredentials(account_id=AID, client_id="c", client_secret=SecretStr("s" * 10))

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"access_token": "no-expiry-token-value"})

    with (
        httpx.Client(transport=httpx.MockTransport(handler)) as http,
        warnings.catch_warnings(record=True) as caught,
    ):
        warnings.simplefilter("always")
        token = fetch_client_credentials_token(creds, http=http)
    assert any(issubclass(w.category, MissingExpiryWarning) for w in caught)
    assert token.lifetime == timedelta(seconds=300)
