"""Correct where Dintero's reference is silent: every undocumented choice, and hostile rows.

The emulator can take each choice Dintero leaves open (list order, optional keys, whether
``since_datetime`` is inclusive, short pages, late changes, error codes); the sync must give the
same tables under each, alone and all together, on SQLite and PostgreSQL. A misbehaving server
(a row dated 2099, a row outside the window asked for) must not stop a stream or freeze a row.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import respx
from pydantic import SecretStr

from prefect_dintero.auth.client_credentials import ClientCredentials
from prefect_dintero.auth.grants import exchange_authorization_code, fetch_client_credentials_token
from prefect_dintero.auth.provider import ClientCredentialsProvider, OIDCSessionProvider
from prefect_dintero.auth.store import DEFAULT_STORE, InMemoryTokenStore
from prefect_dintero.auth.tokens import Token
from prefect_dintero.client import DinteroClient
from prefect_dintero.errors import (
    AuthenticationError,
    ConfigurationError,
    InvalidGrantError,
    ReauthorizationRequired,
)
from prefect_dintero.sink import Sink
from prefect_dintero.streams.catalog import CATALOG, Stream
from prefect_dintero.streams.state import with_state
from prefect_dintero.sync.options import SyncRequest
from prefect_dintero.sync.stream_sync import sync_account_stream
from prefect_dintero.times import CLOCK_SKEW, parse_datetime, use_clock

from .helpers import FAST, creds_for, source_key, table_as_sent

AID = "T12345678"
DATA = dict(
    transactions=150, sessions=60, settlements=40, customers=150, transfers_per_destination=30
)
#: The convenient choice for every undocumented behaviour: what the emulator always did.
CONVENIENT = dict(late_changes_days=2)
SCENARIOS: dict[str, dict[str, Any]] = {
    "convenient": {},
    "oldest-first": dict(list_order="oldest"),
    "shuffled": dict(list_order="shuffled"),
    "null-optional-keys": dict(omit_optional_keys=False),
    "since-exclusive": dict(since_exclusive=True),
    "deletions-only-in-full-lists": dict(deletions_in_since=False),
    "short-pages": dict(short_pages=True),
    "late-changes-90-days": dict(late_changes_days=90),
    "generic-error-codes": dict(error_codes="generic"),
    "least-convenient": dict(
        list_order="shuffled",
        omit_optional_keys=True,
        since_exclusive=True,
        deletions_in_since=False,
        short_pages=True,
        late_changes_days=90,
        error_codes="generic",
    ),
}


@pytest.fixture(autouse=True)
def _fresh_tokens():
    DEFAULT_STORE.clear()


def options(emu, **kw) -> SyncRequest:
    return SyncRequest(
        page_size=kw.pop("page_size", 10), payout_destinations=emu.config.payout_destinations, **kw
    )


def sync_all(emu, sink, opts=None, streams=None) -> dict[str, list]:
    """Every stream, on the emulator's clock (it runs 30 days behind, so that advancing it
    never dates objects in the real future): windows such as the reconcile's 90 days count
    back from the time the data lives in, as they do against Dintero."""
    with (
        use_clock(emu.state.clock.now),
        DinteroClient(creds_for(emu), retry_policy=FAST) as client,
    ):
        return {
            spec.name: sync_account_stream(client, sink, spec, AID, opts or options(emu))
            for spec in streams or CATALOG.values()
        }


def expected_column(kind: str, value: Any) -> Any:
    """A typed column's value computed from the source object, independently of the sink."""
    if value is None:
        return None
    if kind == "datetime":
        return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)
    if kind == "int":
        return value
    return value


def assert_tables_equal_source(emu, sink, streams: list[Stream] | None = None) -> None:
    """By key, by the whole object, and by every typed column."""
    for spec in streams or CATALOG.values():
        source = {source_key(spec, o): o for o in emu.dump(spec.name)}
        all_rows = sink.rows(spec, AID)
        sent = table_as_sent(spec, all_rows)
        newest = max((r["taken_at"] for r in all_rows), default=None) if spec.history_of else None
        rows = {
            source_key(spec, r["raw"]): r
            for r in all_rows
            if newest is None or r["taken_at"] == newest
        }
        missing, extra = source.keys() - sent.keys(), sent.keys() - source.keys()
        assert not missing and not extra, f"{spec.name}: {len(missing)} missing, {len(extra)} extra"
        stale = [k for k in source if sent[k] != source[k]]
        assert not stale, f"{spec.name}: {len(stale)} rows differ from the source, e.g. {stale[0]}"
        for key, obj in source.items():
            for col in spec.columns:
                if col.name in ("taken_at", spec.primary_key) and spec.incremental == "snapshot":
                    continue
                want = expected_column(col.type, col.extract(obj))
                assert rows[key][col.name] == want, f"{spec.name} {key} {col.name}"


@pytest.mark.parametrize("scenario", list(SCENARIOS))
# API behaviours, on the two dialects that differ most (one writer vs row locks); DuckDB passes
# the dialect tests of test_sync.py (CI's time budget).
@pytest.mark.parametrize("destination", ["sqlite", "postgres"], indirect=True)
def test_the_tables_equal_the_source_under_every_undocumented_choice(
    scenario, destination, dintero_emulator_factory
):
    flags = {**CONVENIENT, **SCENARIOS[scenario]}
    emu = dintero_emulator_factory(**DATA, **flags)
    sink = Sink(destination)
    sink.prepare(list(CATALOG.values()))
    sync_all(emu, sink)
    assert_tables_equal_source(emu, sink)

    # A day of traffic: new objects, customer updates, a bulk update of more customers than a
    # page holds sharing one updated_at, and transactions changing as late as the flags allow.
    emu.advance_clock(
        86_400,
        new_transactions=12,
        new_sessions=6,
        new_settlements=3,
        new_customers=5,
        update_customers=7,
        new_transfers=4,
    )
    emu.mutate(update_customers=120, same_updated_at=1)
    emu.mutate(update_transactions=30)
    emu.mutate(delete_customers=3)  # erasures: the rows must lose everything personal
    # A token revoked mid-run: the data routes' 401 is answered in the flag's error style.
    emu.set_faults({"route": "sessions", "sequence": [{"status": 401}]})

    hourly = sync_all(emu, sink)
    within_lookback = [s for s in CATALOG.values() if s.name != "transactions"]
    if not flags.get("deletions_in_since", True):  # the reconcile below takes the deletions
        within_lookback.remove(CATALOG["customers"])
    assert_tables_equal_source(emu, sink, within_lookback)
    if flags["late_changes_days"] <= CATALOG["transactions"].lookback.days:
        assert_tables_equal_source(emu, sink, [CATALOG["transactions"]])
    customers = hourly["customers"][0]
    # (the bulk update may include some of the 5 new customers)
    assert customers.updated >= 115 and customers.inserted == 5

    # The daily reconcile run takes in every late change.
    sync_all(emu, sink, options(emu, reconcile=timedelta(days=90)))
    assert_tables_equal_source(emu, sink)

    # And a run with nothing new changes nothing (but the snapshots it takes).
    again = sync_all(emu, sink)
    changing = {"payout_destinations", "payout_balances"}
    assert all(
        r.inserted == 0 and r.updated == 0
        for name, rs in again.items()
        if name not in changing
        for r in rs
    )
    assert all(r.outside_window == 0 for rs in again.values() for r in rs)
    assert sum(r.inserted for r in again["payout_balances"]) == len(emu.dump("payout_balances"))


@pytest.mark.parametrize("order", ["newest", "oldest", "shuffled"])
@pytest.mark.parametrize("exclusive", [False, True])
def test_200_customers_sharing_one_updated_at_are_all_read(
    order, exclusive, dintero_emulator_factory, tmp_path
):
    emu = dintero_emulator_factory(
        customers=260, list_order=order, since_exclusive=exclusive, **CONVENIENT
    )
    emu.advance_clock(60)
    emu.mutate(update_customers=200, same_updated_at=1)
    sink = Sink(tmp_path / "d.db")
    spec = CATALOG["customers"]
    sink.prepare([spec])
    for _ in range(2):  # the second run meets the cluster again inside its lookback
        [result] = sync_all(emu, sink, streams=[spec])["customers"]
        assert_tables_equal_source(emu, sink, [spec])
    newest = max(parse_datetime(c["updated_at"]) for c in emu.dump("customers"))
    assert sink.read_state(AID, "customers").cursor == newest
    assert result.inserted == 0 and result.updated == 0


# -- hostile rows -------------------------------------------------------------------------------


def stray(emu, **fields) -> dict:
    """A copy of the newest transaction with some fields changed."""
    newest = max(emu.dump("transactions"), key=lambda t: t["created_at"])
    return {**newest, **fields}


def test_a_row_dated_2099_is_stored_but_never_moves_the_cursor(
    destination, dintero_emulator_factory, caplog
):
    emu = dintero_emulator_factory(**DATA, **CONVENIENT)
    spec = CATALOG["transactions"]
    sink = Sink(destination)
    sink.prepare([spec])
    future = stray(emu, id=f"{AID}.from2099", created_at="2099-01-01T00:00:00.000Z")
    # Into the second, short page: a page with more rows than asked for is refused outright.
    emu.set_faults({"route": "transactions", "sequence": ["ok", {"extra_rows": [future]}]})
    started = datetime.now(UTC)
    with caplog.at_level(logging.WARNING):
        [first] = sync_all(emu, sink, options(emu, page_size=100), streams=[spec])["transactions"]
    assert first.outside_window == 1
    assert f"{AID}.from2099" in caplog.text and "do not move the cursor" in caplog.text
    cursor = sink.read_state(AID, "transactions").cursor
    assert cursor < started + CLOCK_SKEW
    assert cursor == max(parse_datetime(t["created_at"]) for t in emu.dump("transactions"))
    assert sink.count(spec, AID) == 151  # stored: it is a valid row

    # Later transactions are still synced.
    emu.advance_clock(3600, new_transactions=4)
    [second] = sync_all(emu, sink, streams=[spec])["transactions"]
    assert second.inserted == 4


def test_a_cursor_carried_into_the_future_is_mended_and_full_refresh_resets_it(
    destination, dintero_emulator_factory, caplog
):
    emu = dintero_emulator_factory(**DATA, **CONVENIENT)
    spec = CATALOG["transactions"]
    sink = Sink(destination)
    sink.prepare([spec])
    sync_all(emu, sink, streams=[spec])
    # What an earlier version left behind after a row dated 2099: a cursor in 2099.
    poisoned = datetime(2099, 1, 1, tzinfo=UTC)
    sink.write_page(spec, AID, "", [], lambda state, write: with_state(state, cursor=poisoned))
    emu.advance_clock(3600, new_transactions=3)
    with caplog.at_level(logging.WARNING):
        [run] = sync_all(emu, sink, streams=[spec])["transactions"]
    assert run.inserted == 3 and "saved cursor" in caplog.text
    assert sink.read_state(AID, "transactions").cursor < datetime.now(UTC) + CLOCK_SKEW

    sink.write_page(spec, AID, "", [], lambda state, write: with_state(state, cursor=poisoned))
    [refresh] = sync_all(emu, sink, options(emu, full_refresh=True), streams=[spec])["transactions"]
    newest = max(parse_datetime(t["created_at"]) for t in emu.dump("transactions"))
    assert refresh.fetched == 153 and sink.read_state(AID, "transactions").cursor == newest


def test_a_future_updated_at_cannot_freeze_a_row(destination, dintero_emulator_factory):
    emu = dintero_emulator_factory(**DATA, **CONVENIENT)
    spec = CATALOG["transactions"]
    sink = Sink(destination)
    sink.prepare([spec])
    sync_all(emu, sink, streams=[spec])
    old_enough = datetime.now(UTC) - timedelta(days=40)
    changing = next(
        t
        for t in emu.dump("transactions")
        if t["status"] == "AUTHORIZED" and parse_datetime(t["created_at"]) < old_enough
    )
    frozen = {**changing, "updated_at": "2099-01-01T00:00:00.000Z", "status": "ON_HOLD"}
    emu.set_faults({"route": "transactions", "sequence": [{"extra_rows": [frozen]}]})
    sync_all(emu, sink, streams=[spec])  # the hourly run: the real copy is not in its window
    row = next(r for r in sink.rows(spec, AID) if r["id"] == changing["id"])
    assert row["status"] == "ON_HOLD"  # stored as sent...

    # ...but the next real copy replaces it, even an unchanged one.
    reconcile = options(emu, reconcile=timedelta(days=400))
    [run] = sync_all(emu, sink, reconcile, streams=[spec])["transactions"]
    row = next(r for r in sink.rows(spec, AID) if r["id"] == changing["id"])
    assert row["status"] == "AUTHORIZED" and run.updated == 1
    assert_tables_equal_source(emu, sink, [spec])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(lookback_hours=-130), "lookback_hours must not be negative"),
        (dict(lookback_hours=float("nan")), "lookback_hours must be a number"),
        (dict(lookback_hours=float("inf")), "lookback_hours must be a number"),
        (dict(lookback_hours=10**9), "longer than 3660 days"),
        (dict(reconcile_days=-1), "reconcile_days must not be negative"),
        (dict(page_size=0), "page_size must be at least 1"),
        (dict(page_size=True), "page_size must be an integer"),
        (dict(start_date=datetime(2999, 1, 1)), "in the future"),
    ],
)
def test_absurd_parameters_are_refused_before_any_request(kwargs, message):
    from prefect_dintero.flows.sync import dintero_sync

    with pytest.raises(ConfigurationError, match=message):
        SyncRequest.build(**kwargs)
    # The flow refuses them before it loads a block: this one does not exist, and no Prefect
    # API is running, so anything later would fail differently.
    with pytest.raises(ConfigurationError, match=message):
        dintero_sync.fn("never-saved", destination="unused.db", **kwargs)


# -- errors by endpoint and status, whatever the code -------------------------------------------


def login(emu, creds) -> Token:
    return exchange_authorization_code(
        creds, emu.authorization_code(), service_token=fetch_client_credentials_token(creds)
    )


def test_generic_codes_a_used_code_is_a_login_problem(dintero_emulator_factory):
    emu = dintero_emulator_factory(error_codes="generic", transactions=5)
    creds = creds_for(emu)
    service = fetch_client_credentials_token(creds)
    code = emu.authorization_code()
    exchange_authorization_code(creds, code, service_token=service)
    with pytest.raises(InvalidGrantError) as info:
        exchange_authorization_code(creds, code, service_token=service, policy=FAST)
    text = str(info.value)
    assert "[E400]" in text and "log in again" in text and "client id and secret" not in text
    assert not info.value.retryable


def test_generic_codes_a_revoked_session_requires_login(dintero_emulator_factory):
    emu = dintero_emulator_factory(error_codes="generic", refresh_tokens=True, transactions=5)
    creds = creds_for(emu)
    session = login(emu, creds)
    first = OIDCSessionProvider(
        creds, "ada", initial=session, store=InMemoryTokenStore(), leeway=1e6
    )
    first.get_token()  # rotates: the original refresh token is now revoked
    copy = OIDCSessionProvider(
        creds, "ada-copy", initial=session, store=InMemoryTokenStore(), leeway=1e6
    )
    with pytest.raises(ReauthorizationRequired, match="could not be renewed"):
        copy.get_token()


def test_generic_codes_a_wrong_secret_is_a_credentials_problem(dintero_emulator_factory):
    emu = dintero_emulator_factory(error_codes="generic", transactions=5)
    creds = creds_for(emu, client_secret=SecretStr("not-the-secret"))
    with pytest.raises(AuthenticationError, match="client's id and secret") as info:
        ClientCredentialsProvider(creds, store=InMemoryTokenStore()).get_token()
    assert "[E401]" in str(info.value)
    assert emu.stats()["requests"]["token"] == {"401": 1}


def mock_token_server(mock, exchange_statuses: list[int], refresh_statuses: list[int]):
    """A Dintero whose code exchange and refresh grant answer the given statuses in turn,
    with error codes no client knows; the client-credentials grant always succeeds."""
    calls: list[str] = []

    def token(request: httpx.Request) -> httpx.Response:
        if b'"refresh_token"' not in request.content:
            calls.append("service")
            n = calls.count("service")
            return httpx.Response(200, json={"access_token": f"svc-{n}", "expires_in": 3600})
        calls.append("refresh")
        return answer(refresh_statuses.pop(0))

    def exchange(request: httpx.Request) -> httpx.Response:
        calls.append("exchange")
        return answer(exchange_statuses.pop(0))

    def answer(status: int) -> httpx.Response:
        if status == 200:
            payload = {"access_token": "user-1", "expires_in": 3600, "refresh_token": "rt-2"}
            return httpx.Response(200, json=payload)
        return httpx.Response(status, json={"error": {"code": "ERR_7781", "message": "Denied"}})

    mock.post(url__regex=r"/auth/oidc/token$").mock(side_effect=exchange)
    mock.post(url__regex=r"/auth/token$").mock(side_effect=token)
    return calls


CREDS = dict(
    account_id=AID,
    client_id="c",
    client_secret=SecretStr("s" * 12),
    api_url="http://127.0.0.1:9",
    checkout_url="http://127.0.0.1:9",
)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422])
def test_every_4xx_from_the_code_exchange_is_a_login_problem(status):
    from prefect_dintero.blocks import DinteroCredentials

    block = DinteroCredentials(**CREDS)
    with respx.mock(assert_all_called=False) as mock:
        calls = mock_token_server(mock, [status, status], [])
        with pytest.raises(InvalidGrantError, match="log in again") as info:
            block.exchange_authorization_code("code-1")
    assert not info.value.retryable and info.value.status_code == status
    assert "client's id and secret" not in str(info.value)
    # A 401 may be the service token's: one more try with a new one, never more.
    assert calls.count("exchange") == (2 if status == 401 else 1)


@pytest.mark.parametrize(
    ("statuses", "ends"),
    [([400], True), ([403], True), ([404], True), ([401, 401], True), ([401, 200], False)],
)
def test_4xx_from_the_refresh_grant_ends_the_session_unless_the_service_token_was_stale(
    statuses, ends
):
    stale = Token.from_response(
        {"access_token": "user-0", "expires_in": 3600, "refresh_token": "rt-1"},
        datetime.now(UTC) - timedelta(hours=2),
    )
    provider = OIDCSessionProvider(
        ClientCredentials(**CREDS), "s", initial=stale, store=InMemoryTokenStore()
    )
    with respx.mock(assert_all_called=False) as mock:
        calls = mock_token_server(mock, [], list(statuses))
        if ends:
            with pytest.raises(ReauthorizationRequired, match="Log in again"):
                provider.get_token()
        else:
            assert provider.get_token().access_token.get_secret_value() == "user-1"
    assert calls.count("refresh") == len(statuses)
