"""The bad-input matrix: every mistake a user can make gives one clear error, is not retried when
it is permanent, and writes nothing.

Each case drives the same code a flow runs (credentials → token → client → stream → sink) against
the emulator, then checks three things: the error's class and message, the emulator's request
counts (a permanent error is sent once), and the destination (no rows, no cursor).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import create_engine, inspect, text

from prefect_dintero.auth.grants import exchange_authorization_code, fetch_client_credentials_token
from prefect_dintero.auth.oidc_login import parse_authorization_response
from prefect_dintero.auth.store import DEFAULT_STORE
from prefect_dintero.auth.tokens import Token
from prefect_dintero.client import DinteroClient
from prefect_dintero.errors import (
    AuthenticationError,
    ConfigurationError,
    InvalidGrantError,
    LoginError,
    MalformedResponseError,
    ReauthorizationRequired,
)
from prefect_dintero.sink import STATE_TABLE, DestinationError, Sink
from prefect_dintero.sink.destination import Destination
from prefect_dintero.streams.catalog import CATALOG, resolve_streams
from prefect_dintero.streams.paginators import MalformedPageError
from prefect_dintero.sync.options import SyncRequest
from prefect_dintero.sync.stream_sync import sync_account_stream

from .helpers import AID, FAST, creds_for


@dataclass
class Case:
    """One mistake: what the user does, and what must come of it."""

    run: Callable[..., None]
    error: type[Exception]
    message: str
    #: Emulator requests by route and status after the mistake: a permanent error is sent once.
    requests: dict[str, dict[str, int]] = field(default_factory=dict)


def sync(emu, destination, creds=None, streams=("transactions",), **client_kwargs) -> None:
    """What the dintero-sync flow does: resolve streams, prepare the sink, sync each stream."""
    specs = resolve_streams(list(streams))
    sink = Sink(destination)
    sink.prepare(specs)
    client = DinteroClient(creds or creds_for(emu), retry_policy=FAST, **client_kwargs)
    with client:
        for spec in specs:
            sync_account_stream(client, sink, spec, AID, SyncRequest(page_size=25))


def exchange(emu, code: str, redirect_uri: str | None = None) -> Token:
    creds = creds_for(emu)
    service = fetch_client_credentials_token(creds)
    return exchange_authorization_code(
        creds,
        code,
        service_token=service,
        redirect_uri=redirect_uri or emu.config.redirect_uris[0],
    )


class StripFirstId(httpx.HTTPTransport):
    """Passes requests to the emulator but removes ``id`` from the first object of each page."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if "/transactions" not in request.url.path:
            return response
        response.read()
        body = response.json()
        items = body if isinstance(body, list) else body.get("transactions", [])
        if items:
            items[0].pop("id", None)
        return httpx.Response(response.status_code, headers=response.headers, json=body)


class Inflate(httpx.HTTPTransport):
    """Passes requests to the emulator, then blows up the transactions page it answers: 30,000
    rows (a limit of 25 was asked for), or 30 MB of body."""

    def __init__(self, what: str) -> None:
        super().__init__()
        self.what = what

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if "/transactions" not in request.url.path:
            return response
        response.read()
        row = response.json()[0]
        if self.what == "rows":
            body = json.dumps(
                [{"id": f"{row['id']}{i}", "created_at": row["created_at"]} for i in range(30_000)]
            )
        else:
            body = json.dumps([{**row, "padding": "x" * 30_000_000}])
        return httpx.Response(
            200, content=body.encode(), headers={"content-type": "application/json"}
        )


def inflated_page(emu, destination, what: str) -> None:
    specs = resolve_streams(["transactions"])
    sink = Sink(destination)
    sink.prepare(specs)
    with DinteroClient(creds_for(emu), retry_policy=FAST, transport=Inflate(what)) as client:
        sync_account_stream(client, sink, specs[0], AID, SyncRequest(page_size=25))


def destination_with_a_query_password(emu, destination) -> None:
    url = "postgresql://nobody@127.0.0.1:1/nothing?password=db-password&sslmode=disable"
    Destination(url)
    sync(emu, url)


def payout_destination_outside_its_path(emu, destination) -> None:
    specs = resolve_streams(["payout_transfers"])
    options = SyncRequest(page_size=25, payout_destinations=["PD-main/../PD-store-2"])
    sink = Sink(destination)
    sink.prepare(specs)
    with DinteroClient(creds_for(emu), retry_policy=FAST) as client:
        sync_account_stream(client, sink, specs[0], AID, options)


def used_code(emu, destination) -> None:
    code = emu.authorization_code()
    exchange(emu, code)
    exchange(emu, code)


def expired_code(emu, destination) -> None:
    code = emu.authorization_code()
    emu.advance_clock(emu.config.code_lifetime + 5)
    exchange(emu, code)


def redirect_mismatch(emu, destination) -> None:
    exchange(emu, emu.authorization_code(), redirect_uri="http://127.0.0.1:9/elsewhere")


def state_mismatch(emu, destination) -> None:
    redirect = emu.login(state="the-state-we-sent")
    code = parse_authorization_response(redirect, expected_state="another-attempt")
    exchange(emu, code)


def expired_session_without_refresh(emu, destination) -> None:
    now = datetime.now(UTC)
    session = Token(
        access_token=SecretStr("an-expired-user-token"),
        issued_at=now - timedelta(hours=2),
        expires_at=now - timedelta(hours=1),
    )
    sync(emu, destination, session=session, session_name="ada")


def missing_primary_key(emu, destination) -> None:
    creds = creds_for(emu)
    specs = resolve_streams(["transactions"])
    sink = Sink(destination)
    sink.prepare(specs)
    with DinteroClient(creds, retry_policy=FAST, transport=StripFirstId()) as client:
        sync_account_stream(client, sink, specs[0], AID, SyncRequest(page_size=25))


class DeeplyNested(httpx.HTTPTransport):
    """Passes requests to the emulator; a transactions page comes back as 50,000 nested
    brackets (valid JSON, deeper than Python's parser goes)."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if "/transactions" not in request.url.path:
            return response
        response.read()
        return httpx.Response(
            200,
            content=b"[" * 50_000 + b"]" * 50_000,
            headers={"content-type": "application/json"},
        )


def deeply_nested_page(emu, destination) -> None:
    specs = resolve_streams(["transactions"])
    sink = Sink(destination)
    sink.prepare(specs)
    with DinteroClient(creds_for(emu), retry_policy=FAST, transport=DeeplyNested()) as client:
        sync_account_stream(client, sink, specs[0], AID, SyncRequest(page_size=25))


def bare_code_where_a_state_is_expected(emu, destination) -> None:
    code = parse_authorization_response(emu.authorization_code(), expected_state="we-sent-this")
    exchange(emu, code)


def malformed_json_page(emu, destination) -> None:
    emu.set_faults({"route": "transactions", "sequence": [{"malformed": True}]})
    sync(emu, destination)


# The user logged in at the identity provider, and a service token was fetched for the exchange.
LOGGED_IN = {"authorize": {"200": 1, "303": 1}, "token": {"200": 1}}

CASES: dict[str, Case] = {
    "malformed account id": Case(
        lambda emu, d: sync(emu, d, creds_for(emu, account_id="12345678")),
        ConfigurationError,
        "account id",
    ),
    "wrong client secret": Case(
        lambda emu, d: sync(emu, d, creds_for(emu, client_secret=SecretStr("not-the-secret"))),
        AuthenticationError,
        "Check the API client's id and secret",
        {"token": {"401": 1}},
    ),
    "used code": Case(
        used_code,
        InvalidGrantError,
        "single use",
        {
            "authorize": {"200": 1, "303": 1},
            "token": {"200": 2},
            "oidc_token": {"200": 1, "400": 1},
        },
    ),
    "expired code": Case(
        expired_code, InvalidGrantError, "log in again", {**LOGGED_IN, "oidc_token": {"400": 1}}
    ),
    "redirect URI mismatch": Case(
        redirect_mismatch,
        InvalidGrantError,
        "redirect",
        {**LOGGED_IN, "oidc_token": {"400": 1}},
    ),
    "state mismatch": Case(
        state_mismatch,
        LoginError,
        "state in the pasted URL does not match",
        {"authorize": {"200": 1, "303": 1}},
    ),
    "unknown stream": Case(
        lambda emu, d: sync(emu, d, streams=("transactions", "refunds")),
        ConfigurationError,
        "unknown stream 'refunds'; valid streams: transactions",
    ),
    "misspelt stream": Case(
        lambda emu, d: sync(emu, d, streams=("transaction",)),
        ConfigurationError,
        r"unknown stream 'transaction' \(did you mean 'transactions'\?\); valid streams",
    ),
    "malformed JSON page": Case(
        malformed_json_page,
        MalformedResponseError,
        "not valid JSON|not JSON|malformed",
        {"token": {"200": 1}, "transactions": {"200": 1}},
    ),
    "page missing its primary key": Case(
        missing_primary_key,
        MalformedPageError,
        "id",
        {"token": {"200": 1}, "transactions": {"200": 1}},
    ),
    "http:// to a remote host": Case(
        lambda emu, d: sync(emu, d, creds_for(emu, api_url="http://api.dintero.com")),
        ConfigurationError,
        "https",
    ),
    "unreachable destination database": Case(
        lambda emu, d: sync(emu, "postgresql+psycopg://nobody:db-password@127.0.0.1:1/nothing"),
        DestinationError,
        "cannot use the destination database",
    ),
    "account id with a trailing newline": Case(
        lambda emu, d: sync(emu, d, creds_for(emu, account_id="T12345678\n")),
        ConfigurationError,
        "account id",
    ),
    "payout destination id leaving its path": Case(
        payout_destination_outside_its_path, ConfigurationError, "not a payout destination id"
    ),
    "password in the destination URL's query": Case(
        destination_with_a_query_password, ConfigurationError, r"\?password\b"
    ),
    "page with 30,000 rows for a limit of 25": Case(
        lambda emu, d: inflated_page(emu, d, "rows"),
        MalformedPageError,
        "more than the 25 asked for",
        {"token": {"200": 1}, "transactions": {"200": 1}},
    ),
    "page of 30 MB": Case(
        lambda emu, d: inflated_page(emu, d, "bytes"),
        MalformedResponseError,
        "allowed",
        {"token": {"200": 1}, "transactions": {"200": 1}},
    ),
    "page of 50,000 nested brackets": Case(
        deeply_nested_page,
        MalformedResponseError,
        "not valid JSON",
        {"token": {"200": 1}, "transactions": {"200": 1}},
    ),
    "start date before any Dintero data": Case(
        lambda emu, d: SyncRequest.build(start_date=datetime(1, 1, 1)),
        ConfigurationError,
        "before 2010",
    ),
    "a bare code pasted where a state is expected": Case(
        bare_code_where_a_state_is_expected,
        LoginError,
        "paste the whole URL",
        {"authorize": {"200": 1, "303": 1}},
    ),
    "expired OIDC session without a refresh token": Case(
        expired_session_without_refresh,
        ReauthorizationRequired,
        "log in again|dintero_login",
    ),
}


def written(destination: str) -> dict[str, int]:
    """Rows in every Dintero table, and saved cursors or resume points, at the destination."""
    engine = create_engine(Sink(destination).url)
    try:
        with engine.connect() as conn:
            names = [n for n in inspect(conn).get_table_names() if n.startswith("dintero_")]
            counts = {
                name: conn.execute(text(f'SELECT count(*) FROM "{name}"')).scalar_one()
                for name in names
                if name != STATE_TABLE
            }
            if STATE_TABLE in names:
                counts["saved cursors"] = conn.execute(
                    text(
                        f"SELECT count(*) FROM {STATE_TABLE} "
                        "WHERE cursor IS NOT NULL OR resume IS NOT NULL"
                    )
                ).scalar_one()
        return {name: count for name, count in counts.items() if count}
    finally:
        engine.dispose()


@pytest.fixture(autouse=True)
def _fresh_tokens():
    DEFAULT_STORE.clear()


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_clear_error_not_retried_and_writes_nothing(
    name, dintero_emulator_factory, tmp_path, evidence
):
    case = CASES[name]
    emu = dintero_emulator_factory(transactions=60, sessions=10, settlements=5, customers=5)
    destination = str(tmp_path / "dintero.db")
    with pytest.raises(case.error) as info:
        case.run(emu, destination)
    message = str(info.value)
    evidence.text(message)
    assert re.search(case.message, message), message
    # One clear error: the user's own words are enough, no traceback needed to act on it.
    assert "\n" not in message and len(message) < 600, message
    assert "db-password" not in message and "not-the-secret" not in message
    assert not getattr(info.value, "retryable", False)

    stats = emu.stats()
    served = {route: counts for route, counts in stats["requests"].items() if counts}
    assert served == case.requests, json.dumps(served)
    assert (tmp_path / "dintero.db").exists() is False or written(destination) == {}
    evidence.note(f"bad input · {name}: {type(info.value).__name__}: {message[:160]}")


def test_the_unknown_stream_error_lists_the_whole_catalog():
    """The unknown-stream message lists exactly the catalog, so users can copy a valid name."""
    with pytest.raises(ConfigurationError) as info:
        resolve_streams(["refunds"])
    assert str(info.value).endswith(", ".join(CATALOG))


@pytest.mark.parametrize(
    "url",
    [
        "duckdb:///md:db?motherduck_token=SECRETVALUE1",
        "duckdb:///data.db?s3_secret_access_key=SECRETVALUE1&s3_region=eu-north-1",
        "duckdb:///data.db?s3_access_key_id=SECRETVALUE1",
        "postgresql://u@h/db?sslpassword=SECRETVALUE1",
        "postgresql://u@h/db?api_credential=SECRETVALUE1",
        "duckdb:///data.db?azure_sas=SECRETVALUE1",
        "duckdb:///data.db?sig=SECRETVALUE1",
        "postgresql://u@h/db?Request_Signature=SECRETVALUE1",
    ],
)
def test_a_destination_url_s_secret_query_keys_are_refused_and_masked(url):
    """The defect: only a fixed list of keys was refused, so MotherDuck's token or an S3
    secret passed the check and was logged, put in the artifact and the run's parameters."""
    from prefect_dintero.redact import redact
    from prefect_dintero.sink import redact_url

    with pytest.raises(ConfigurationError, match="carries a secret") as refused:
        Destination(url)
    assert "SECRETVALUE1" not in str(refused.value)
    assert "SECRETVALUE1" not in redact_url(url)
    assert "SECRETVALUE1" not in redact(f"Syncing transactions into {url}")


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u@h/db?sslmode=require&sslkey=/etc/client.key&sslcert=/etc/client.crt",
        "duckdb:///data.db?s3_region=eu-north-1&threads=4",
    ],
)
def test_a_destination_url_without_secrets_passes_and_stays_readable(url):
    from prefect_dintero.redact import redact
    from prefect_dintero.sink import redact_url

    Destination(url)
    assert "***" not in redact_url(url) and redact(url) == url


def test_a_destination_in_a_missing_folder_is_created_and_said(tmp_path, caplog):
    """A folder that does not exist yet is made for the database, with a warning naming it (a
    misspelt folder would otherwise start a new database silently)."""
    import logging

    from prefect_dintero.sink import Sink

    target = tmp_path / "new" / "folder" / "dintero.db"
    with caplog.at_level(logging.WARNING, logger="prefect_dintero"):
        sink = Sink(str(target))
        sink.prepare([])
    assert target.parent.is_dir()
    assert f"created the folder {target.parent} for the destination database" in caplog.text
    sink.dispose()
