"""Contract tests of the bundled Dintero emulator: every route, shape, paging style and fault."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from email.utils import parsedate_to_datetime

import httpx
import pytest

from prefect_dintero.emulator import EmulatorConfig, running_emulator

AID = "T12345678"
AUD = f"https://api.dintero.com/v1/accounts/{AID}"
# One client for the whole module: a new httpx client per call costs ~50 ms of SSL setup.
HTTP = httpx.Client(timeout=30)
SMALL = dict(
    transactions=57, sessions=33, settlements=25, customers=41, transfers_per_destination=23
)


def service_token(emu, account: str = AID, audience: str | None = None) -> str:
    r = HTTP.post(
        f"{emu.url}/v1/accounts/{account}/auth/token",
        auth=(emu.config.client_id, emu.config.client_secret),
        json={
            "grant_type": "client_credentials",
            "audience": audience or f"https://api.dintero.com/v1/accounts/{account}",
        },
    )
    assert r.status_code == 200, r.text
    return r.json()["access_token"]


def claims_of(jwt: str) -> dict:
    payload = jwt.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def assert_dintero_error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"]["message"], str)
    assert "code" in body["error"]
    return body["error"]


@pytest.fixture(scope="module")
def emu():
    """A read-only emulator shared by the module's paging and filter tests."""
    with running_emulator(EmulatorConfig(account_ids=[AID, "T87654321"], **SMALL)) as server:
        yield server


@pytest.fixture(scope="module")
def token(emu) -> str:
    return service_token(emu)


# -- client credentials ----------------------------------------------------------------------


def test_client_credentials_shape_and_jwt(emu):
    r = HTTP.post(
        f"{emu.url}/v1/accounts/{AID}/auth/token",
        auth=("emulator-client", "emulator-secret"),
        json={"grant_type": "client_credentials", "audience": AUD},
    )
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"access_token", "token_type", "expires_in"}
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600
    claims = claims_of(body["access_token"])
    assert claims["aud"] == AUD and claims["exp"] - claims["iat"] == 3600 and claims["scope"]


def test_local_origin_audience_is_accepted(emu):
    token = service_token(emu, audience=f"{emu.url}/v1/accounts/{AID}")
    assert claims_of(token)["account_id"] == AID


@pytest.mark.parametrize(
    ("auth", "body", "path_account", "status"),
    [
        (
            ("emulator-client", "wrong"),
            {"grant_type": "client_credentials", "audience": AUD},
            AID,
            401,
        ),
        (None, {"grant_type": "client_credentials", "audience": AUD}, AID, 401),
        (
            ("nobody", "emulator-secret"),
            {"grant_type": "client_credentials", "audience": AUD},
            AID,
            401,
        ),
        (
            ("emulator-client", "emulator-secret"),
            {
                "grant_type": "client_credentials",
                "audience": "https://api.dintero.com/v1/accounts/T11111111",
            },
            AID,
            403,
        ),
        (("emulator-client", "emulator-secret"), {"grant_type": "client_credentials"}, AID, 403),
        (
            ("emulator-client", "emulator-secret"),
            {"grant_type": "client_credentials", "audience": AUD},
            "X123",
            400,
        ),
        (
            ("emulator-client", "emulator-secret"),
            {"grant_type": "password", "audience": AUD},
            AID,
            400,
        ),
    ],
)
def test_client_credentials_errors(emu, auth, body, path_account, status):
    r = HTTP.post(f"{emu.url}/v1/accounts/{path_account}/auth/token", auth=auth, json=body)
    assert_dintero_error(r, status)


def test_token_endpoint_rejects_non_json(emu):
    r = HTTP.post(f"{emu.url}/v1/accounts/{AID}/auth/token", content=b"grant_type=x")
    assert_dintero_error(r, 400)


# -- data auth ------------------------------------------------------------------------------


def test_data_requires_a_valid_token(emu, token):
    assert_dintero_error(HTTP.get(f"{emu.url}/v1/transactions"), 401)
    assert_dintero_error(HTTP.get(f"{emu.url}/v1/transactions", headers=bearer("a.b.c")), 401)
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    assert_dintero_error(HTTP.get(f"{emu.url}/v1/transactions", headers=bearer(forged)), 401)


def test_token_for_another_account_is_forbidden(emu, token):
    other = "T87654321"
    r = HTTP.get(f"{emu.url}/v1/accounts/{other}/settlements", headers=bearer(token))
    assert_dintero_error(r, 403)
    r = HTTP.get(f"{emu.url}/v1/accounts/T1234/settlements", headers=bearer(token))
    assert_dintero_error(r, 400)


def test_expired_and_revoked_tokens_get_401(dintero_emulator_factory):
    emu = dintero_emulator_factory(token_lifetime=60, **SMALL)
    token = service_token(emu)
    assert HTTP.get(f"{emu.url}/v1/transactions", headers=bearer(token)).status_code == 200
    emu.advance_clock(61)
    err = assert_dintero_error(HTTP.get(f"{emu.url}/v1/transactions", headers=bearer(token)), 401)
    assert "expired" in err["message"]
    fresh = service_token(emu)
    emu.revoke_all_tokens()
    err = assert_dintero_error(HTTP.get(f"{emu.url}/v1/transactions", headers=bearer(fresh)), 401)
    assert "revoked" in err["message"]
    assert (
        HTTP.get(f"{emu.url}/v1/transactions", headers=bearer(service_token(emu))).status_code
        == 200
    )


# -- pagination: every object exactly once ----------------------------------------------------


def page_bare_array(emu, token, path, limit, params=None):
    """Page a bare array with starting_after until an empty page (a short page proves nothing)."""
    seen, after, requests = [], None, 0
    while True:
        q = {"limit": limit, **(params or {})}
        if after:
            q["starting_after"] = after
        rows = HTTP.get(f"{emu.url}{path}", params=q, headers=bearer(token)).json()
        requests += 1
        assert isinstance(rows, list) and len(rows) <= limit
        if not rows:
            return seen, requests
        seen.extend(rows)
        after = rows[-1]["id"]


def page_envelope(emu, token, path, limit, rows_key, next_params, params=None):
    """Page an envelope until its cursor is missing; returns the rows and every body."""
    seen, bodies, q = [], [], {"limit": limit, **(params or {})}
    while True:
        body = HTTP.get(f"{emu.url}{path}", params=q, headers=bearer(token)).json()
        bodies.append(body)
        seen.extend(body.get(rows_key) or [])
        nxt = next_params(body)
        if not nxt:
            return seen, bodies
        q = {"limit": limit, **(params or {}), **nxt}


def assert_order(values: list, order: str) -> None:
    """newest: descending; oldest: ascending; shuffled: neither (a permutation)."""
    if order == "newest":
        assert values == sorted(values, reverse=True)
    elif order == "oldest":
        assert values == sorted(values)
    else:
        assert values not in (sorted(values), sorted(values, reverse=True))


#: Optional keys sent as null here, so these tests see every envelope key; leaving them out
#: (the schemas' way, the default) has its own test below.
SWITCHES = {
    "newest": dict(list_order="newest", omit_optional_keys=False),
    "oldest": dict(list_order="oldest", omit_optional_keys=False),
    "shuffled": dict(list_order="shuffled", omit_optional_keys=False),
    "shuffled-short-pages": dict(list_order="shuffled", short_pages=True, omit_optional_keys=False),
}


@pytest.fixture(scope="module", params=list(SWITCHES))
def switched(request):
    """A read-only emulator for each list order (and one with short pages), and a token."""
    config = EmulatorConfig(account_ids=[AID], **SMALL, **SWITCHES[request.param])
    with running_emulator(config) as server:
        yield server, service_token(server), config


@pytest.mark.parametrize(
    ("path", "stream"), [("/v1/transactions", "transactions"), ("/v1/sessions", "sessions")]
)
def test_checkout_lists_page_exactly_once_in_every_order(switched, path, stream):
    emu, token, config = switched
    rows, requests = page_bare_array(emu, token, path, 7)
    source = emu.dump(stream)
    assert sorted(r["id"] for r in rows) == sorted(s["id"] for s in source)
    assert len({r["id"] for r in rows}) == len(rows)
    assert_order([r["created_at"] for r in rows], config.list_order)
    if config.short_pages:
        assert requests > len(source) // 7 + 2  # some pages held fewer than 7 rows
    else:
        assert requests == len(source) // 7 + 2  # the last page is the empty one
    # The order is stable: the same read gives the same sequence.
    assert [r["id"] for r in page_bare_array(emu, token, path, 7)[0]] == [r["id"] for r in rows]
    assert all(r["id"].startswith(f"{AID}.") and len(r["id"]) == len(AID) + 1 + 22 for r in rows)


def test_default_limit_is_10(emu, token):
    assert len(HTTP.get(f"{emu.url}/v1/transactions", headers=bearer(token)).json()) == 10


def test_settlements_last_evaluated_key_pages_exactly_once(switched):
    emu, token, config = switched
    path = f"/v1/accounts/{AID}/settlements"
    for params, date_field in (
        ({}, "settled_at"),
        ({"item_created_at.gte": "2000-01-01T00:00:00Z"}, "created_at"),
    ):

        def after(body, date_field=date_field):
            key = body["last_evaluated_key"]
            if not key:
                return None
            assert set(key) == {"id", "account_id", "settled_at", "created_at"}
            return {"starting_after_id": key["id"], "starting_after_date": key[date_field]}

        seen, bodies = page_envelope(emu, token, path, 6, "items", after, params)
        assert all(set(b) == {"items", "last_evaluated_key"} for b in bodies)
        assert bodies[-1]["last_evaluated_key"] is None  # sent as null unless omitted
        assert sorted(s["id"] for s in seen) == sorted(s["id"] for s in emu.dump("settlements"))
        assert_order([s[date_field] for s in seen], config.list_order)


def test_customers_without_since_datetime_page_every_customer_once(switched):
    emu, token, config = switched
    rows, _ = page_bare_array(emu, token, f"/v1/accounts/{AID}/customers/users", 9)
    assert sorted(r["id"] for r in rows) == sorted(c["id"] for c in emu.dump("customers"))
    assert len({r["id"] for r in rows}) == len(rows)
    assert_order([r["updated_at"] for r in rows], config.list_order)


@pytest.mark.parametrize("exclusive", [False, True])
def test_customers_since_datetime_returns_the_earliest_rows_in_any_order(
    dintero_emulator_factory, exclusive
):
    emu = dintero_emulator_factory(
        **SMALL, list_order="shuffled", short_pages=True, since_exclusive=exclusive
    )
    token = service_token(emu)
    source = sorted(emu.dump("customers"), key=lambda c: (c["updated_at"], c["id"]))
    since = source[10]["updated_at"]
    rows = HTTP.get(
        f"{emu.url}/v1/accounts/{AID}/customers/users",
        params={"limit": 10, "since_datetime": since},
        headers=bearer(token),
    ).json()
    # A whole page (short pages never apply here) of the earliest rows at (or after) since.
    start = 11 if exclusive else 10
    assert {r["id"] for r in rows} == {c["id"] for c in source[start : start + 10]}
    assert [r["updated_at"] for r in rows] != sorted(r["updated_at"] for r in rows)


def test_customers_since_datetime_paged_as_documented_reads_everyone(emu, token):
    """Dintero's procedure: since_datetime = the latest updated_at in the result (inclusive)."""
    source = emu.dump("customers")
    seen: dict[str, dict] = {}
    since = "2000-01-01T00:00:00Z"
    for _ in range(100):
        rows = HTTP.get(
            f"{emu.url}/v1/accounts/{AID}/customers/users",
            params={"limit": 10, "since_datetime": since},
            headers=bearer(token),
        ).json()
        new = [r for r in rows if r["id"] not in seen]
        seen.update((r["id"], r) for r in rows)
        if not new:
            break
        since = max(r["updated_at"] for r in rows)
    assert sorted(seen) == sorted(c["id"] for c in source)


def test_payout_transfers_next_page_token_pages_exactly_once(switched):
    emu, token, config = switched
    for pd in emu.config.payout_destinations:
        path = f"/v2/accounts/{AID}/payout/payout-destinations/{pd}/transfers"
        seen, bodies = page_envelope(
            emu,
            token,
            path,
            5,
            "entries",
            lambda body: {"page": body["next_page_token"]} if body["next_page_token"] else None,
        )
        assert all(set(b) == {"entries", "next_page_token"} for b in bodies)
        assert sorted(e["ledger_entry_id"] for e in seen) == sorted(
            e["ledger_entry_id"] for e in emu.dump("payout_transfers", destination=pd)
        )
        assert {e["payout_destination_id"] for e in seen} == {pd}
        assert_order([e["created_at"] for e in seen], config.list_order)


@pytest.mark.parametrize("shape", ["object", "array"])
def test_payout_destinations_list_in_either_undocumented_envelope(dintero_emulator_factory, shape):
    emu = dintero_emulator_factory(payout_destination_list=shape)
    path = f"{emu.url}/v1/accounts/{AID}/payout-destinations"
    assert_dintero_error(HTTP.get(path), 401)
    body = HTTP.get(path, headers=bearer(service_token(emu))).json()
    items = body["payout_destinations"] if shape == "object" else body
    assert [i["payout_destination_id"] for i in items] == emu.config.payout_destinations


def test_payout_destinations_need_the_read_accounts_scope(dintero_emulator_factory):
    emu = dintero_emulator_factory(read_accounts_scope=False)
    token = service_token(emu)
    assert "read:accounts" not in claims_of(token)["scope"]
    path = f"{emu.url}/v1/accounts/{AID}/payout-destinations"
    assert_dintero_error(HTTP.get(path, headers=bearer(token)), 403)


def test_omit_optional_keys_leaves_out_empty_lists_and_last_cursors(dintero_emulator_factory):
    emu = dintero_emulator_factory(**SMALL, omit_optional_keys=True)
    token = service_token(emu)
    body = HTTP.get(
        f"{emu.url}/v1/accounts/{AID}/settlements",
        params={"limit": 1000, "item_created_at.gte": "2000-01-01T00:00:00Z"},
        headers=bearer(token),
    ).json()
    assert set(body) == {"items"} and len(body["items"]) == len(emu.dump("settlements"))
    empty = HTTP.get(
        f"{emu.url}/v1/accounts/{AID}/settlements",
        params={"item_created_at.gte": "2099-01-01T00:00:00Z"},
        headers=bearer(token),
    ).json()
    assert empty == {}
    path = f"/v2/accounts/{AID}/payout/payout-destinations/PD-main/transfers"
    limit = len(emu.dump("payout_transfers", destination="PD-main")) - 3  # two pages
    first = HTTP.get(f"{emu.url}{path}", params={"limit": limit}, headers=bearer(token)).json()
    assert set(first) == {"entries", "next_page_token"}
    last = HTTP.get(
        f"{emu.url}{path}",
        params={"limit": limit, "page": first["next_page_token"]},
        headers=bearer(token),
    ).json()
    assert set(last) == {"entries"} and len(last["entries"]) == 3


def test_generic_error_codes_tell_the_client_nothing(dintero_emulator_factory):
    emu = dintero_emulator_factory(**SMALL, error_codes="generic")
    url = f"{emu.url}/v1/accounts/{AID}/auth/token"
    body = {"grant_type": "client_credentials", "audience": AUD}
    assert assert_dintero_error(HTTP.post(url, auth=("emulator-client", "no"), json=body), 401) == {
        "code": "E401",
        "message": "The request could not be processed",
    }
    token = service_token(emu)
    code = emu.authorization_code()
    oidc = f"{emu.url}/v1/accounts/{AID}/auth/oidc/token"
    assert HTTP.post(oidc, headers=bearer(token), json=oidc_body(emu, code)).status_code == 200
    used = HTTP.post(oidc, headers=bearer(token), json=oidc_body(emu, code))
    assert assert_dintero_error(used, 400)["code"] == "E400"
    other = HTTP.get(f"{emu.url}/v1/accounts/T87654321/settlements", headers=bearer(token))
    assert assert_dintero_error(other, 403)["code"] == "E403"
    # 404, 429 and 5xx keep their codes: only what the client could misread is hidden.
    assert assert_dintero_error(HTTP.get(f"{emu.url}/v1/nowhere"), 404)["code"] == "NOT_FOUND"


def test_late_changes_reach_back_months_by_kind(dintero_emulator_factory):
    from datetime import datetime, timedelta

    emu = dintero_emulator_factory(transactions=3000, late_changes_days=60)
    now = datetime.fromisoformat(emu.stats()["now"])
    before = {t["id"]: t for t in emu.dump("transactions")}
    emu.mutate(update_transactions=400)
    ages = {"CAPTURE": [], "REFUND": [], "SETTLEMENT": [], "AUTHORIZE": [], "VOID": []}
    for t in emu.dump("transactions"):
        if t["updated_at"] == before[t["id"]]["updated_at"]:
            continue
        created = datetime.fromisoformat(t["created_at"].replace("Z", "+00:00"))
        ages[t["events"][-1]["event"]].append((now - created) / timedelta(days=1))
    assert sum(map(len, ages.values())) == 400
    assert ages["REFUND"] and max(ages["REFUND"]) > 30 and max(ages["REFUND"]) <= 60
    assert all(a <= 30 for a in ages["CAPTURE"]) and all(a <= 7 for a in ages["VOID"])
    assert all(a <= 14 for a in ages["SETTLEMENT"])
    assert all(a <= 1 for a in ages["AUTHORIZE"])
    # Most changes land outside a 3-day lookback: the reconcile run's reason to exist.
    assert sum(a > 3 for v in ages.values() for a in v) > 200


def test_extra_rows_fault_adds_rows_whatever_the_filter(dintero_emulator):
    emu = dintero_emulator
    token = service_token(emu)
    stray = {"id": f"{AID}.stray", "created_at": "2099-01-01T00:00:00.000Z"}
    emu.set_faults({"route": "transactions", "sequence": [{"extra_rows": [stray]}]})
    rows = HTTP.get(
        f"{emu.url}/v1/transactions",
        params={"limit": 3, "created_at.lte": "2000-01-01T00:00:00Z"},
        headers=bearer(token),
    ).json()
    assert rows == [stray]
    assert emu.stats()["faults_injected"] == {"extra rows": 1}


# -- filters and parameter errors -------------------------------------------------------------


def test_created_at_window_filters(emu, token):
    source = sorted(emu.dump("transactions"), key=lambda t: t["created_at"])
    lo, hi = source[10]["created_at"], source[30]["created_at"]
    rows, _ = page_bare_array(
        emu, token, "/v1/transactions", 100, {"created_at.gte": lo, "created_at.lte": hi}
    )
    assert sorted(r["id"] for r in rows) == sorted(t["id"] for t in source[10:31])


def test_status_filter_is_repeatable(emu, token):
    rows = HTTP.get(
        f"{emu.url}/v1/transactions",
        params=[("limit", "100"), ("status", "CAPTURED"), ("status", "REFUNDED")],
        headers=bearer(token),
    ).json()
    expected = [t for t in emu.dump("transactions") if t["status"] in ("CAPTURED", "REFUNDED")]
    assert sorted(r["id"] for r in rows) == sorted(t["id"] for t in expected)


def test_settlement_item_created_at_filter(emu, token):
    source = sorted(emu.dump("settlements"), key=lambda s: s["created_at"])
    lo = source[5]["created_at"]
    body = HTTP.get(
        f"{emu.url}/v1/accounts/{AID}/settlements",
        params={"limit": 1000, "item_created_at.gte": lo},
        headers=bearer(token),
    ).json()
    assert sorted(s["id"] for s in body["items"]) == sorted(s["id"] for s in source[5:])


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/v1/transactions", {"limit": 0}),
        ("/v1/transactions", {"limit": 101}),
        ("/v1/transactions", {"limit": "ten"}),
        ("/v1/transactions", {"created_at.gte": "yesterday"}),
        ("/v1/transactions", {"starting_after": f"{AID}.doesnotexist"}),
        ("/v1/transactions", {"status": "PAID"}),
        ("/v1/sessions", {"limit": 1000}),
        (f"/v1/accounts/{AID}/settlements", {"limit": 1001}),
        (f"/v1/accounts/{AID}/settlements", {"starting_after_id": "x"}),
        (
            f"/v1/accounts/{AID}/settlements",
            {"created_at.gte": "2020-01-01", "item_created_at.gte": "2020-01-01"},
        ),
        (
            f"/v1/accounts/{AID}/customers/users",
            {"since_datetime": "2020-01-01", "starting_after": "x"},
        ),
        (f"/v1/accounts/{AID}/customers/users", {"limit": 101}),
        (
            f"/v2/accounts/{AID}/payout/payout-destinations/PD-main/transfers",
            {"page": "!!notatoken"},
        ),
        (f"/v2/accounts/{AID}/payout/payout-destinations/PD-main/transfers", {"limit": 1001}),
    ],
)
def test_bad_parameters_get_400_with_dintero_body(emu, token, path, params):
    assert_dintero_error(HTTP.get(f"{emu.url}{path}", params=params, headers=bearer(token)), 400)


def test_unknown_payout_destination_and_route_get_404(emu, token):
    r = HTTP.get(
        f"{emu.url}/v2/accounts/{AID}/payout/payout-destinations/nope/transfers",
        headers=bearer(token),
    )
    assert_dintero_error(r, 404)
    assert_dintero_error(HTTP.get(f"{emu.url}/v1/nothing-here", headers=bearer(token)), 404)


# -- the OIDC seed contract ---------------------------------------------------------------------


def oidc_body(emu, code: str, **extra) -> dict:
    return {
        "grant_type": "authorization_code",
        "code": code,
        "client_id": emu.config.client_id,
        "audience": AUD,
        **extra,
    }


def test_authorize_shows_a_login_page_whose_button_redirects_with_code_and_state(
    dintero_emulator,
):
    emu = dintero_emulator
    url = httpx.URL(emu.authorize_url(state="xyz"))
    page = HTTP.get(url, follow_redirects=False)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert f"Log in as {emu.config.user.name}" in page.text
    assert emu.config.redirect_uris[0] in page.text and emu.config.client_id in page.text
    assert emu.stats()["requests"]["authorize"] == {"200": 1}  # no code issued by the page
    r = HTTP.post(
        f"{emu.url}/oidc/authorize",
        content=url.query,
        headers={"content-type": "application/x-www-form-urlencoded"},
        follow_redirects=False,
    )
    assert r.status_code == 303
    location = httpx.URL(r.headers["location"])
    assert str(location).startswith(emu.config.redirect_uris[0])
    assert location.params["state"] == "xyz" and len(location.params["code"]) > 20


def test_the_emulators_own_callback_shows_what_to_paste(dintero_emulator):
    emu = dintero_emulator
    location = emu.login(state="s1", redirect_uri=emu.callback_url)
    assert location.startswith(emu.callback_url + "?")
    page = HTTP.get(location)
    assert page.status_code == 200 and "Logged in to Dintero" in page.text
    code = httpx.URL(location).params["code"]
    assert code in page.text and "Resume" in page.text
    # The code on the page is a real one.
    assert (
        HTTP.post(
            f"{emu.url}/v1/accounts/{AID}/auth/oidc/token",
            json=oidc_body(emu, code, redirect_uri=emu.callback_url),
            headers=bearer(service_token(emu)),
        ).status_code
        == 200
    )


@pytest.mark.parametrize(
    "override",
    [
        {"response_type": "token"},
        {"client_id": "other"},
        {"redirect_uri": "https://evil.example/cb"},
        {"scope": "profile"},
    ],
)
def test_authorize_rejects_bad_requests_without_redirecting(dintero_emulator, override):
    emu = dintero_emulator
    params = {
        "response_type": "code",
        "client_id": emu.config.client_id,
        "redirect_uri": emu.config.redirect_uris[0],
        "state": "s",
        "scope": "openid",
        **override,
    }
    r = HTTP.get(f"{emu.url}/oidc/authorize", params=params, follow_redirects=False)
    assert_dintero_error(r, 400)


def test_oidc_exchange_exact_shapes_and_single_use(dintero_emulator):
    emu = dintero_emulator
    token = service_token(emu)
    code = emu.authorization_code()
    url = f"{emu.url}/v1/accounts/{AID}/auth/oidc/token"
    r = HTTP.post(
        url,
        headers=bearer(token),
        json=oidc_body(emu, code, redirect_uri=emu.config.redirect_uris[0]),
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {
        "access_token",
        "token_type",
        "expires_in",
        "user_info",
    }  # no refresh token by default
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600
    assert body["user_info"] == {
        "authority": emu.config.user.authority,
        "value": {"sub": emu.config.user.sub, "name": emu.config.user.name},
    }
    user_token = body["access_token"]
    assert claims_of(user_token)["sub"] == emu.config.user.sub
    assert HTTP.get(f"{emu.url}/v1/transactions", headers=bearer(user_token)).status_code == 200
    err = assert_dintero_error(
        HTTP.post(url, headers=bearer(token), json=oidc_body(emu, code)), 400
    )
    assert err["code"] == "invalid_grant" and "already been used" in err["message"]
    # A user token is not a client-credentials token: it cannot authorise an exchange.
    assert_dintero_error(
        HTTP.post(url, headers=bearer(user_token), json=oidc_body(emu, emu.authorization_code())),
        403,
    )


def test_oidc_exchange_errors(dintero_emulator):
    emu = dintero_emulator
    token = service_token(emu)
    url = f"{emu.url}/v1/accounts/{AID}/auth/oidc/token"
    assert_dintero_error(HTTP.post(url, json=oidc_body(emu, emu.authorization_code())), 401)
    assert_dintero_error(
        HTTP.post(
            url, headers=bearer(token), json={**oidc_body(emu, "c"), "grant_type": "refresh_token"}
        ),
        400,
    )
    err = assert_dintero_error(
        HTTP.post(
            url, headers=bearer(token), json={"grant_type": "authorization_code", "code": "x"}
        ),
        400,
    )
    assert "client_id" in err["message"] and "audience" in err["message"]
    assert_dintero_error(
        HTTP.post(url, headers=bearer(token), json=oidc_body(emu, "made-up-code")), 400
    )
    assert_dintero_error(
        HTTP.post(
            url,
            headers=bearer(token),
            json={**oidc_body(emu, emu.authorization_code()), "client_id": "other"},
        ),
        403,
    )
    assert_dintero_error(
        HTTP.post(
            url,
            headers=bearer(token),
            json={
                **oidc_body(emu, emu.authorization_code()),
                "audience": "https://api.dintero.com/v1/accounts/T99999999",
            },
        ),
        400,
    )
    code = emu.authorization_code()
    err = assert_dintero_error(
        HTTP.post(
            url,
            headers=bearer(token),
            json=oidc_body(emu, code, redirect_uri="http://127.0.0.1:1/other"),
        ),
        400,
    )
    assert "redirect_uri" in err["message"]
    # The mismatch did not burn the code: the right redirect URI still works.
    assert (
        HTTP.post(
            url,
            headers=bearer(token),
            json=oidc_body(emu, code, redirect_uri=emu.config.redirect_uris[0]),
        ).status_code
        == 200
    )


def test_codes_expire(dintero_emulator_factory):
    emu = dintero_emulator_factory(code_lifetime=60, token_lifetime=3600, **SMALL)
    code = emu.authorization_code()
    emu.advance_clock(61)
    r = HTTP.post(
        f"{emu.url}/v1/accounts/{AID}/auth/oidc/token",
        headers=bearer(service_token(emu)),
        json=oidc_body(emu, code),
    )
    err = assert_dintero_error(r, 400)
    assert "expired" in err["message"]


def refresh(emu, service: str, refresh_token: str) -> httpx.Response:
    return HTTP.post(
        f"{emu.url}/v1/accounts/{AID}/auth/token",
        headers=bearer(service),
        json={"grant_type": "refresh_token", "refresh_token": refresh_token},
    )


def test_refresh_rotation_over_five_rotations(dintero_emulator_factory):
    emu = dintero_emulator_factory(refresh_tokens=True, rotate_refresh_tokens=True, **SMALL)
    service = service_token(emu)
    body = HTTP.post(
        f"{emu.url}/v1/accounts/{AID}/auth/oidc/token",
        headers=bearer(service),
        json=oidc_body(emu, emu.authorization_code()),
    ).json()
    current, used = body["refresh_token"], []
    for _ in range(5):
        r = refresh(emu, service, current)
        assert r.status_code == 200, r.text
        new = r.json()
        assert set(new) == {"access_token", "token_type", "expires_in", "refresh_token"}
        assert new["refresh_token"] != current
        assert claims_of(new["access_token"])["sub"] == emu.config.user.sub
        used.append(current)
        current = new["refresh_token"]
    for old in used:
        err = assert_dintero_error(refresh(emu, service, old), 400)
        assert err["code"] == "invalid_grant"
    assert emu.stats()["token_grants"]["refresh_token"] == 5
    # The refresh grant needs a service token of the client, not the user's own token.
    assert_dintero_error(refresh(emu, new["access_token"], current), 403)
    assert_dintero_error(refresh(emu, "not-a-token", current), 401)


def test_refresh_without_rotation_omits_refresh_token(dintero_emulator_factory):
    emu = dintero_emulator_factory(refresh_tokens=True, rotate_refresh_tokens=False, **SMALL)
    service = service_token(emu)
    rt = HTTP.post(
        f"{emu.url}/v1/accounts/{AID}/auth/oidc/token",
        headers=bearer(service),
        json=oidc_body(emu, emu.authorization_code()),
    ).json()["refresh_token"]
    for _ in range(3):
        r = refresh(emu, service, rt)
        assert r.status_code == 200 and "refresh_token" not in r.json()


def test_a_rotated_out_refresh_token_is_accepted_within_the_reuse_interval(
    dintero_emulator_factory,
):
    emu = dintero_emulator_factory(refresh_tokens=True, refresh_token_reuse_interval=30, **SMALL)
    service = service_token(emu)
    first = HTTP.post(
        f"{emu.url}/v1/accounts/{AID}/auth/oidc/token",
        headers=bearer(service),
        json=oidc_body(emu, emu.authorization_code()),
    ).json()["refresh_token"]
    second = refresh(emu, service, first).json()["refresh_token"]
    # A client that died before saving `second` still holds `first`: accepted, for a while.
    again = refresh(emu, service, first)
    assert again.status_code == 200 and again.json()["refresh_token"] not in (first, second)
    emu.advance_clock(31)
    err = assert_dintero_error(refresh(emu, service, first), 400)
    assert err["code"] == "invalid_grant"
    assert refresh(emu, service, again.json()["refresh_token"]).status_code == 200


def test_a_delayed_response_does_the_work_first_and_shows_in_flight(dintero_emulator_factory):
    emu = dintero_emulator_factory(refresh_tokens=True, **SMALL)
    service = service_token(emu)
    rt = HTTP.post(
        f"{emu.url}/v1/accounts/{AID}/auth/oidc/token",
        headers=bearer(service),
        json=oidc_body(emu, emu.authorization_code()),
    ).json()["refresh_token"]
    emu.set_faults({"route": "token", "sequence": [{"delay_response": 1.0}]})
    done: dict = {}
    worker = threading.Thread(target=lambda: done.update(r=refresh(emu, service, rt)))
    worker.start()
    deadline = time.monotonic() + 5
    while emu.stats()["token_grants"]["refresh_token"] == 0:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    # Rotated already, while the client is still waiting for the answer.
    assert emu.stats()["in_flight"] == {"token": 1} and "r" not in done
    worker.join()
    assert done["r"].status_code == 200
    assert emu.stats()["in_flight"] == {}
    assert emu.stats()["faults_injected"] == {"delayed response": 1}


# -- faults -------------------------------------------------------------------------------------


def test_each_fault_kind(dintero_emulator):
    emu = dintero_emulator
    h = bearer(service_token(emu))
    emu.set_faults(
        {
            "route": "transactions",
            "sequence": [
                {"status": 429, "retry_after": 2},
                {"status": 429, "retry_after": 3, "retry_after_format": "http-date"},
                {"status": 500},
                {"status": 502},
                {"status": 503},
                {"status": 401},
                {"drop": True},
                {"malformed": True},
                {"latency": 0.3},
                "ok",
            ],
        }
    )
    url = f"{emu.url}/v1/transactions"
    r = HTTP.get(url, headers=h)
    assert_dintero_error(r, 429)
    assert r.headers["retry-after"] == "2"
    r = HTTP.get(url, headers=h)
    assert r.status_code == 429
    delay = parsedate_to_datetime(r.headers["retry-after"]).timestamp() - time.time()
    assert 1 <= delay <= 4
    for status in (500, 502, 503, 401):
        assert_dintero_error(HTTP.get(url, headers=h), status)
    with pytest.raises(httpx.RemoteProtocolError):
        HTTP.get(url, headers=h)
    r = HTTP.get(url, headers=h)
    assert r.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        r.json()
    t0 = time.monotonic()
    assert HTTP.get(url, headers=h).status_code == 200
    assert time.monotonic() - t0 >= 0.3
    assert HTTP.get(url, headers=h).status_code == 200  # "ok", then the sequence is spent
    assert HTTP.get(url, headers=h).status_code == 200
    stats = emu.stats()
    assert stats["faults_injected"] == {
        "429": 2,
        "500": 1,
        "502": 1,
        "503": 1,
        "401": 1,
        "drop": 1,
        "malformed": 1,
        "latency": 1,
    }
    assert stats["requests"]["transactions"]["dropped"] == 1
    # Faults on one route leave the others alone.
    assert HTTP.get(f"{emu.url}/v1/sessions", headers=h).status_code == 200


def test_probability_rules_share_one_draw(dintero_emulator):
    emu = dintero_emulator
    h = bearer(service_token(emu))
    emu.set_faults(
        {"route": "sessions", "probability": 0.2, "status": 429, "retry_after": 0},
        {"route": "*", "probability": 0.1, "status": 503},
    )
    statuses = [
        HTTP.get(f"{emu.url}/v1/sessions", headers=h, params={"limit": 1}).status_code
        for _ in range(400)
    ]
    faulted = sum(s != 200 for s in statuses)
    assert 0.2 * 400 < faulted < 0.4 * 400  # 30 % expected
    assert {429, 503, 200} == set(statuses)
    emu.clear_faults()
    assert all(HTTP.get(f"{emu.url}/v1/sessions", headers=h).status_code == 200 for _ in range(20))


def test_faults_on_the_token_route(dintero_emulator):
    emu = dintero_emulator
    emu.set_faults({"route": "token", "sequence": [{"status": 503}]})
    r = HTTP.post(
        f"{emu.url}/v1/accounts/{AID}/auth/token",
        auth=("emulator-client", "emulator-secret"),
        json={"grant_type": "client_credentials", "audience": AUD},
    )
    assert_dintero_error(r, 503)
    assert service_token(emu)


@pytest.mark.parametrize(
    "rules",
    [
        [{"route": "nowhere", "status": 500}],
        [{"status": 200}],
        [{"probability": 2, "status": 500}],
        [{"sequence": "x"}],
        [{"status": 500, "bogus": 1}],
    ],
)
def test_bad_fault_rules_are_rejected(dintero_emulator, rules):
    r = HTTP.post(f"{dintero_emulator.url}/_emulator/faults", json={"rules": rules})
    assert_dintero_error(r, 400)


# -- counters, clock, mutations, determinism ------------------------------------------------


def test_counters_by_grant_route_and_status(dintero_emulator):
    emu = dintero_emulator
    emu.reset_stats()
    token = service_token(emu)
    service_token(emu)
    HTTP.post(
        f"{emu.url}/v1/accounts/{AID}/auth/token",
        auth=("emulator-client", "bad"),
        json={"grant_type": "client_credentials", "audience": AUD},
    )
    HTTP.post(
        f"{emu.url}/v1/accounts/{AID}/auth/oidc/token",
        headers=bearer(token),
        json=oidc_body(emu, emu.authorization_code()),
    )
    HTTP.get(f"{emu.url}/v1/transactions", headers=bearer(token))
    HTTP.get(f"{emu.url}/v1/transactions")
    stats = emu.stats()
    assert stats["token_grants"] == {
        "client_credentials": 2,
        "refresh_token": 0,
        "authorization_code": 1,
    }
    assert stats["token_grant_failures"] == {"client_credentials": 1}
    assert stats["requests"]["token"] == {"200": 2, "401": 1}
    assert stats["requests"]["transactions"] == {"200": 1, "401": 1}
    assert stats["requests"]["authorize"] == {"200": 1, "303": 1}
    assert stats["requests_total"] == 8  # the login page and its button count as two
    assert emu.reset_stats()["requests_total"] == 0


def test_clock_and_mutations(dintero_emulator):
    emu = dintero_emulator
    before = {t["id"]: t for t in emu.dump("transactions")}
    transfers = len(emu.dump("payout_transfers"))
    newest = max(t["created_at"] for t in before.values())
    result = emu.advance_clock(
        86_400,
        new_transactions=5,
        new_customers=2,
        update_customers=2,
        new_settlements=1,
        new_sessions=2,
        new_transfers=1,
    )
    changed = result["changed"][AID]
    assert changed["transactions"] == 5 and changed["customers"] == 4
    # Only transactions still in motion change; the window reaches back over the whole history
    # (the ones just made included: compared with the list as it was right before).
    mid = {t["id"]: t for t in emu.dump("transactions")}
    changed = emu.mutate(update_transactions=3, recent_days=400)["changed"][AID]
    assert changed == {"transactions": 3}
    after = {t["id"]: t for t in emu.dump("transactions")}
    new_ids = set(after) - set(before)
    assert len(new_ids) == 5 and all(after[i]["created_at"] > newest for i in new_ids)
    before = mid
    updated = [i for i in before if after[i]["updated_at"] != before[i]["updated_at"]]
    assert all(
        before[i]["status"] in ("INITIATED", "AUTHORIZED", "CAPTURED", "PARTIALLY_REFUNDED")
        for i in updated
    )
    assert len(updated) == 3
    assert all(
        (
            after[i]["status"] != before[i]["status"]
            or after[i]["settlement_status"] != before[i]["settlement_status"]
        )
        and len(after[i]["events"]) > len(before[i]["events"])
        for i in updated
    )
    token = service_token(emu)  # the day that passed expired the old one
    first_page = HTTP.get(
        f"{emu.url}/v1/transactions", params={"limit": 5}, headers=bearer(token)
    ).json()
    assert {t["id"] for t in first_page} == new_ids
    # Updated and new customers come first (newest first by updated_at, the default order).
    rows, _ = page_bare_array(emu, token, f"/v1/accounts/{AID}/customers/users", 100)
    assert all(r["updated_at"] > newest for r in rows[:4])
    assert [r["updated_at"] for r in rows] == sorted((r["updated_at"] for r in rows), reverse=True)
    assert len(emu.dump("payout_transfers")) == transfers + 2  # one per payout destination
    assert_dintero_error(HTTP.post(f"{emu.url}/_emulator/clock", json={"advance_seconds": -5}), 400)


def test_same_seed_same_data_other_seed_other_data():
    cfg = dict(transactions=20, sessions=5, settlements=5, customers=5, transfers_per_destination=5)
    from datetime import UTC, datetime

    start = datetime(2026, 6, 1, tzinfo=UTC)
    with (
        running_emulator(EmulatorConfig(seed=7, start_time=start, **cfg)) as a,
        running_emulator(EmulatorConfig(seed=7, start_time=start, **cfg)) as b,
        running_emulator(EmulatorConfig(seed=8, start_time=start, **cfg)) as c,
    ):
        assert a.dump("transactions") == b.dump("transactions")
        assert a.dump("customers") == b.dump("customers")
        assert a.dump("transactions") != c.dump("transactions")


def test_object_shapes_are_realistic(emu):
    t = emu.dump("transactions")[0]
    assert {
        "id",
        "session_id",
        "created_at",
        "updated_at",
        "amount",
        "currency",
        "status",
        "payment_product",
        "payment_product_type",
        "items",
        "events",
        "merchant_reference",
    } <= set(t)
    assert isinstance(t["amount"], int) and t["amount"] == sum(i["amount"] for i in t["items"])
    assert t["currency"] in {"NOK", "SEK", "DKK", "EUR"} and t["created_at"].endswith("Z")
    created = {x["created_at"][:7] for x in emu.dump("transactions")}
    assert len(created) >= 4  # spread over months
    s = emu.dump("settlements")[0]
    a = s["amounts"][0]
    assert a["amount"] == a["capture"] - a["refund"] - a["fee"]


def test_issued_lists_every_secret_handed_out(dintero_emulator):
    emu = dintero_emulator
    token = service_token(emu)
    code = emu.authorization_code()
    issued = emu.issued()
    assert token in issued["access_tokens"] and code in issued["codes"]
    assert issued["client_secret"] == emu.config.client_secret


# -- the command ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_emulator_serves_with_flags():
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "prefect_dintero.cli",
        "emulator",
        "--port",
        str(port),
        "--account-id",
        "T11112222",
        "--client-id",
        "cli-client",
        "--client-secret",
        "cli-secret",
        "--redirect-uri",
        "http://127.0.0.1:9/cb",
        "--token-lifetime",
        "120",
        "--refresh-tokens",
        "--transactions",
        "12",
        "--seed",
        "3",
        "--list-order",
        "oldest",
        "--null-optional-keys",
        "--since-exclusive",
        "--late-changes-days",
        "30",
        "--error-codes",
        "generic",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        banner = [proc.stdout.readline() for _ in range(3)]
        assert (
            f"http://127.0.0.1:{port}" in banner[0]
            and "T11112222" in banner[1]
            and "cli-client" in banner[2]
        )
        url = f"http://127.0.0.1:{port}"
        for _ in range(200):
            try:
                HTTP.get(f"{url}/_emulator/health")
                break
            except httpx.TransportError:
                time.sleep(0.05)
        r = HTTP.post(
            f"{url}/v1/accounts/T11112222/auth/token",
            auth=("cli-client", "cli-secret"),
            json={"grant_type": "client_credentials", "audience": f"{url}/v1/accounts/T11112222"},
        )
        assert r.json()["expires_in"] == 120
        rows = HTTP.get(
            f"{url}/v1/transactions",
            params={"limit": 100},
            headers=bearer(r.json()["access_token"]),
        ).json()
        assert len(rows) == 12
        assert [t["created_at"] for t in rows] == sorted(t["created_at"] for t in rows)
        settlements = HTTP.get(
            f"{url}/v1/accounts/T11112222/settlements",
            params={"item_created_at.gte": "2099-01-01T00:00:00Z"},
            headers=bearer(r.json()["access_token"]),
        ).json()
        assert settlements == {"items": [], "last_evaluated_key": None}  # --null-optional-keys
        refused = HTTP.post(
            f"{url}/v1/accounts/T11112222/auth/token",
            auth=("cli-client", "wrong"),
            json={"grant_type": "client_credentials", "audience": f"{url}/v1/accounts/T11112222"},
        )
        assert refused.json()["error"]["code"] == "E401"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=10)


def test_cli_rejects_bad_fault_json():
    r = subprocess.run(
        [sys.executable, "-m", "prefect_dintero.cli", "emulator", "--faults", "{nope"],
        capture_output=True,
        text=True,
        env={**os.environ},
    )
    assert r.returncode == 2 and "--faults" in r.stderr and "Traceback" not in r.stderr
