"""The Prefect auth layer on a Prefect test server and the emulator.

Runs in order: the last test scans everything the earlier ones left behind for secrets.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import pickle
import re
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.flow_runs import resume_flow_run
from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL, PREFECT_API_URL, PREFECT_HOME
from pydantic import SecretStr

from prefect_dintero import DinteroCredentials, DinteroOIDCSession, DinteroServiceToken
from prefect_dintero.emulator import EmulatorConfig, running_emulator
from prefect_dintero.errors import (
    AuthenticationError,
    ConfigurationError,
    InvalidGrantError,
    LoginError,
    ReauthorizationRequired,
)
from prefect_dintero.flows import dintero_login
from prefect_dintero.redact import MASK
from prefect_dintero.tasks import exchange_authorization_code, get_bearer_token, read_records

from .helpers import save_credentials, unique

pytestmark = pytest.mark.usefixtures("prefect_server")

ISSUED: list = []  # every emulator of this module, for the final secret scan
LOG_LINES: list[str] = []


class _Collect(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            LOG_LINES.append(self.format(record))
        except Exception:
            LOG_LINES.append(str(record.msg))


@pytest.fixture(scope="module", autouse=True)
def capture_all_logs():
    handler = _Collect(level=logging.DEBUG)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield
    root.removeHandler(handler)
    root.setLevel(old_level)


@pytest.fixture(scope="module")
def emu():
    with running_emulator(
        EmulatorConfig(
            refresh_tokens=True,
            transactions=40,
            sessions=10,
            settlements=5,
            customers=5,
            transfers_per_destination=5,
        )
    ) as server:
        ISSUED.append(server)
        yield server
        ISSUED[ISSUED.index(server)] = server.issued()  # keep what it issued once it stops


def saved_block(load, timeout: float = 15.0):
    """``load()`` once it succeeds: a renewed token is used at once and saved to its block in
    the background a moment later."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return load()
        except ValueError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def login_session(emu, creds_name: str, session_name: str | None = None) -> str:
    session_name = session_name or unique("session")
    dintero_login(
        creds_name, session_name, authorization_response=SecretStr(emu.authorization_code())
    )
    return session_name


# -- blocks on a server ---------------------------------------------------------------------


def test_block_types_are_registered_by_the_entry_point():
    with get_client(sync_client=True) as client:
        slugs = {bt.slug for bt in client.read_block_types()}
    assert {"dintero-credentials", "dintero-oidc-session", "dintero-service-token"} <= slugs


def test_prefect_block_register_module_works():
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    result = subprocess.run(
        [sys.executable, "-m", "prefect", "block", "register", "-m", "prefect_dintero"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Dintero Credentials" in result.stdout and "Dintero OIDC Session" in result.stdout


def test_credentials_round_trip_and_client(emu):
    name = save_credentials(emu, system_name="shop-1")
    loaded = DinteroCredentials.load(name)
    assert loaded.client_secret.get_secret_value() == emu.config.client_secret
    assert loaded.system_name == "shop-1" and loaded.api_url == emu.url
    with loaded.get_client() as client:
        assert len(client.get_json("/v1/transactions", host="checkout", params={"limit": 3})) == 3


async def test_async_client_from_loaded_block(emu):
    name = save_credentials(emu)
    loaded = await DinteroCredentials.aload(name)
    async with loaded.get_async_client() as client:
        body = await client.get_json("/v1/accounts/T12345678/settlements")
    assert "items" in body


def test_session_block_round_trip_with_nested_credentials(emu):
    creds_name = save_credentials(emu)
    session_name = login_session(emu, creds_name)
    session = DinteroOIDCSession.load(session_name)
    assert session.credentials.client_id == emu.config.client_id
    assert session.user_info["value"]["name"] == emu.config.user.name
    assert session.refresh_token is not None and session.expires_at > datetime.now(UTC)
    with session.get_client() as client:
        assert client.get_json("/v1/transactions", host="checkout")


def test_block_docstring_examples_run(emu):
    # Block names are lowercase, so the examples' "BLOCK_NAME" placeholder becomes a real name.
    save_credentials(emu, name="example-block")
    login_session(emu, "example-block", "example-block")
    for cls in (DinteroCredentials, DinteroOIDCSession):
        code = re.search(r"```python\n(.*?)```", inspect.getdoc(cls), re.DOTALL).group(1)
        code = textwrap.dedent(code).replace('"BLOCK_NAME"', '"example-block"')
        namespace: dict = {}
        exec(compile(code, f"{cls.__name__} example", "exec"), namespace)
        assert namespace.get("transactions") or namespace.get("settlements")
    # The read_records task's example: a flow of the user's own.
    code = re.search(r"```python\n(.*?)```", inspect.getdoc(read_records), re.DOTALL).group(1)
    code = textwrap.dedent(code).replace('"BLOCK_NAME"', '"example-block"')
    namespace = {}
    exec(compile(code, "read_records example", "exec"), namespace)
    since = (datetime.now(UTC) - timedelta(days=90)).isoformat()[:19]
    recent = [t["amount"] for t in emu.dump("transactions") if t["created_at"][:19] >= since]
    assert namespace["total"] == sum(recent) > 0


# -- the exchange task -------------------------------------------------------------------------


def test_exchange_task_saves_session_and_returns_no_secrets(emu):
    creds_name = save_credentials(emu)

    @flow
    def finish(code: SecretStr) -> dict:
        return exchange_authorization_code(creds_name, "exchange-test", code)

    facts = finish(SecretStr(emu.authorization_code()))
    assert facts["user_name"] == emu.config.user.name and facts["refreshable"] is True
    assert set(facts) == {
        "account_id",
        "session_block",
        "user_sub",
        "user_name",
        "expires_at",
        "refreshable",
    }
    assert DinteroOIDCSession.load("exchange-test").user_info["value"]["sub"] == emu.config.user.sub


def oidc_requests(emu) -> int:
    return sum(emu.stats()["requests"].get("oidc_token", {}).values())


def test_used_code_fails_at_once_without_task_retries(emu):
    creds_name = save_credentials(emu)
    code = emu.authorization_code()
    task = exchange_authorization_code.with_options(retry_delay_seconds=0)

    @flow
    def twice() -> None:
        task(creds_name, unique("s"), SecretStr(code))
        task(creds_name, unique("s"), SecretStr(code))

    before = oidc_requests(emu)
    with pytest.raises(InvalidGrantError, match="already been used"):
        twice()
    assert oidc_requests(emu) - before == 2  # one success, one refusal, no retries


def test_bad_secret_fails_at_once(emu):
    creds_name = save_credentials(emu, client_secret=SecretStr("wrong-secret-value"))

    @flow
    def exchange() -> None:
        exchange_authorization_code.with_options(retry_delay_seconds=0)(
            creds_name, unique("s"), SecretStr(emu.authorization_code())
        )

    before = emu.stats()["requests"]["token"].get("401", 0)
    with pytest.raises(AuthenticationError):
        exchange()
    assert emu.stats()["requests"]["token"].get("401", 0) - before == 1


def test_transient_failures_are_retried_by_the_task(emu):
    creds_name = save_credentials(emu)
    code = emu.authorization_code()
    # Four 503s outlast the client's own attempts; the task's retry then succeeds.
    emu.set_faults({"route": "oidc_token", "sequence": [{"status": 503}] * 4})

    @flow
    def exchange() -> dict:
        return exchange_authorization_code.with_options(retry_delay_seconds=0)(
            creds_name, unique("s"), SecretStr(code)
        )

    try:
        facts = exchange()
    finally:
        emu.clear_faults()
    assert facts["user_sub"] == emu.config.user.sub


def test_mismatched_redirect_uri_fails_at_once(emu):
    creds_name = save_credentials(emu)

    @flow
    def exchange() -> None:
        exchange_authorization_code.with_options(retry_delay_seconds=0)(
            creds_name,
            unique("s"),
            SecretStr(emu.authorization_code()),
            redirect_uri="http://127.0.0.1:9/elsewhere",
        )

    before = oidc_requests(emu)
    with pytest.raises(InvalidGrantError, match="redirect_uri"):
        exchange()
    assert oidc_requests(emu) - before == 1


# -- get_bearer_token ----------------------------------------------------------------------------


def test_bearer_for_service_and_user(emu):
    creds_name = save_credentials(emu)
    session_name = login_session(emu, creds_name)

    @flow
    def use() -> list:
        service = get_bearer_token(creds_name)
        user = get_bearer_token(creds_name, session_name)
        out = []
        for bearer in (service, user):
            with bearer.client() as client:
                out.append(
                    (repr(bearer), len(client.get_json("/v1/transactions", host="checkout")))
                )
        out.append(user.user_info.name)
        with pytest.raises(TypeError, match="never serialised"):
            pickle.dumps(user)
        return out

    (service_repr, n1), (user_repr, n2), name = use()
    assert n1 == n2 == 10 and name == emu.config.user.name
    assert "service" in service_repr and "user session" in user_repr


def test_bearer_refuses_a_session_of_another_account(dintero_emulator_factory):
    emu = dintero_emulator_factory(
        account_ids=["T12345678", "T87654321"],
        transactions=5,
        sessions=5,
        settlements=2,
        customers=2,
        transfers_per_destination=2,
    )
    merchant_a = save_credentials(emu)
    session_b = login_session(emu, save_credentials(emu, account_id="T87654321"))

    @flow
    def use() -> None:
        get_bearer_token(merchant_a, session_b)

    with pytest.raises(ConfigurationError, match="belongs to account T87654321") as info:
        use()
    assert not info.value.retryable
    assert emu.stats()["requests"].get("sessions", {}) == {}


def test_bearer_renews_itself_during_a_long_task(emu):
    creds_name = save_credentials(emu, token_leeway_seconds=7200)  # every use counts as stale
    session_name = login_session(emu, creds_name)

    @flow
    def long_task() -> int:
        bearer = get_bearer_token(creds_name, session_name)
        before = bearer.renewals
        deadline = time.monotonic() + 30
        with bearer.client() as client:
            # A stale token that has not expired is renewed in the background, the requests
            # going on with it meanwhile.
            while bearer.renewals - before < 3 and time.monotonic() < deadline:
                client.get_json("/v1/sessions", host="checkout")
                time.sleep(0.05)
        return bearer.renewals - before

    before = emu.stats()["token_grants"]["refresh_token"]
    assert long_task() >= 3
    assert emu.stats()["token_grants"]["refresh_token"] - before >= 3
    # The renewed (rotated) session was written back to the block.
    assert DinteroOIDCSession.load(session_name).expires_at > datetime.now(UTC)


def test_expired_session_without_refresh_token_needs_login(emu):
    creds_name = save_credentials(emu)
    session_name = login_session(emu, creds_name)
    session = DinteroOIDCSession.load(session_name)
    session.refresh_token = None
    session.expires_at = datetime.now(UTC) - timedelta(minutes=1)
    session.save(session_name, overwrite=True)

    @flow
    def use() -> None:
        get_bearer_token.with_options(retry_delay_seconds=0)(creds_name, session_name)

    with pytest.raises(ReauthorizationRequired, match="dintero_login"):
        use()


# -- the login flow ----------------------------------------------------------------------------


def test_login_non_interactive_with_a_bare_code(emu):
    creds_name = save_credentials(emu)
    facts = dintero_login(
        creds_name, "ada-login", authorization_response=SecretStr(emu.authorization_code())
    )
    assert facts["user_name"] == emu.config.user.name
    assert DinteroOIDCSession.load("ada-login").user_info["value"]["name"] == emu.config.user.name


def test_login_non_interactive_with_a_redirect_url(emu):
    creds_name = save_credentials(emu)
    facts = dintero_login(
        creds_name, unique("s"), authorization_response=SecretStr(emu.login(state="anything"))
    )
    assert facts["user_sub"] == emu.config.user.sub


def _stored_parameters(flow_name: str) -> list[dict]:
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs()
    return [r.parameters for r in runs if r.name and r.parameters.get("session_block")]


def test_login_stores_a_plain_string_code_masked(emu):
    """Called with a plain str, not a SecretStr, the code still never reaches the run's
    stored parameters."""
    creds_name = save_credentials(emu)
    session = unique("plain")
    redirect = emu.login(state="s-plain")
    facts = dintero_login(creds_name, session, authorization_response=redirect, state="s-plain")
    assert facts["user_sub"] == emu.config.user.sub
    with get_client(sync_client=True) as client:
        runs = [r for r in client.read_flow_runs() if r.parameters.get("session_block") == session]
    assert len(runs) == 1
    assert runs[0].parameters["authorization_response"] == MASK
    assert redirect not in json.dumps(runs[0].parameters)


def test_login_checks_the_state_when_the_caller_knows_it(emu):
    creds_name = save_credentials(emu)
    with pytest.raises(LoginError, match="state"):
        dintero_login(
            creds_name,
            unique("s"),
            authorization_response=SecretStr(emu.login(state="from-another-attempt")),
            state="the-one-we-sent",
        )


def test_a_second_login_reaches_every_user_of_the_block_at_its_next_request(emu):
    creds_name = save_credentials(emu)
    session_name = login_session(emu, creds_name)
    bearer = DinteroOIDCSession.load(session_name).get_bearer()
    first = bearer.token()
    with DinteroOIDCSession.load(session_name).get_client() as client:
        client.get_json("/v1/transactions", host="checkout", params={"limit": 1})
    login_session(emu, creds_name, session_name)  # someone logs in again into the same block
    saved = DinteroOIDCSession.load(session_name)
    assert saved.access_token.get_secret_value() != first
    # The bearer and a client built before the new login both use it from their next request.
    assert bearer.token() == saved.access_token.get_secret_value()
    assert DinteroOIDCSession.load(session_name).get_bearer().token() == bearer.token()


HOLDER = textwrap.dedent(
    """
    import sys, time
    from prefect_dintero import DinteroOIDCSession
    started = time.monotonic()
    try:
        DinteroOIDCSession.load(sys.argv[1]).get_bearer().token()
        outcome = "OK"
    except Exception as exc:
        outcome = type(exc).__name__
    print(f"{outcome} {time.monotonic() - started:.1f}")
    """
)


def test_a_hung_token_request_holding_the_renewal_slot_holds_no_one_past_the_deadline(
    dintero_emulator_factory,
):
    # Refresh tokens that do not rotate: the hung answer came after the work was done, and a
    # rotated-out refresh token would end the session (see the crash loop for that case).
    emu = dintero_emulator_factory(refresh_tokens=True, rotate_refresh_tokens=False, transactions=5)
    creds_name = save_credentials(emu, request_deadline_seconds=3.0)
    session_name = login_session(emu, creds_name)
    session = DinteroOIDCSession.load(session_name)
    session.expires_at = datetime.now(UTC) - timedelta(seconds=1)
    session.save(session_name, overwrite=True)
    # Whoever renews first gets a service token, then a refresh answer that trickles (one byte
    # a second: each read is quick, the whole answer never is).
    emu.set_faults({"route": "token", "sequence": ["ok", {"trickle": 1.0}]})
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", HOLDER, session_name],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    outcomes = sorted(p.communicate(timeout=180)[0].split() for p in procs)
    # One held the slot and failed at its deadline; the other waited no longer than that,
    # then renewed the session itself.
    assert [o[0] for o in outcomes] == ["DeadlineExceeded", "OK"], outcomes
    waited = float(outcomes[1][1]) - float(outcomes[0][1])
    assert waited < 10, outcomes
    assert DinteroOIDCSession.load(session_name).expires_at > datetime.now(UTC)


SYNC_RUN = textwrap.dedent(
    """
    import sys
    from prefect_dintero.flows import dintero_sync
    result = dintero_sync(sys.argv[1], streams=["transactions"], destination=sys.argv[2])
    # One write: print("OK", n) writes its parts one by one, and a Prefect logging thread
    # writing to the same file can land between them (CI saw "OK<log line>20").
    print(f"OK {result[0]['fetched']}", flush=True)
    """
)


def test_sync_runs_in_many_processes_share_one_service_token(dintero_emulator_factory, tmp_path):
    """Four dintero-sync runs one after another, each its own process, then three at once,
    within one token lifetime: one client-credentials grant in all."""
    emu = dintero_emulator_factory(transactions=20, sessions=3, settlements=3, customers=3)
    creds_name = save_credentials(emu)
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}

    def start(i: int) -> subprocess.Popen:
        # Output to a file, not a pipe: a run waiting for another's account slot must not keep
        # that one blocked on a full pipe nobody reads yet.
        with open(tmp_path / f"run-{i}.log", "w") as log:
            return subprocess.Popen(
                [sys.executable, "-c", SYNC_RUN, creds_name, str(tmp_path / f"run-{i}.db")],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )

    def output(i: int, process: subprocess.Popen) -> str:
        process.wait(timeout=180)
        return (tmp_path / f"run-{i}.log").read_text()

    outputs = [output(i, start(i)) for i in range(4)]
    concurrent = {i: start(i) for i in range(4, 7)}
    outputs += [output(i, p) for i, p in concurrent.items()]
    assert all("OK 20" in out for out in outputs), [o[-1500:] for o in outputs]
    grants = emu.stats()["token_grants"]["client_credentials"]
    assert grants == 1, grants
    saved = DinteroServiceToken.load(f"{creds_name}-service-token")
    assert saved.expires_at > datetime.now(UTC)


def test_a_shared_service_token_never_serves_other_credentials(dintero_emulator_factory):
    emu = dintero_emulator_factory(account_ids=["T12345678", "T87654321"], transactions=5)
    first = save_credentials(emu)
    second = save_credentials(emu, account_id="T87654321")
    token_a = DinteroCredentials.load(first).service_token_provider().get_token()
    # Someone saves the first credentials' token under the second's name: it is refused, since
    # it was issued to other credentials, and the second gets a token of its own.
    saved_block(lambda: DinteroServiceToken.load(f"{first}-service-token")).save(
        f"{second}-service-token", overwrite=True
    )
    token_b = DinteroCredentials.load(second).service_token_provider().get_token()
    assert not token_b.same_access_token(token_a)
    with DinteroCredentials.load(second).get_client() as client:
        assert client.get_json("/v1/accounts/T87654321/settlements", params={"limit": 1})
    assert emu.stats()["token_grants"]["client_credentials"] == 2
    # With sharing off, a process keeps its own token, and the block is left alone.
    private = save_credentials(emu, share_service_token=False)
    DinteroCredentials.load(private).service_token_provider().get_token()
    with pytest.raises(ValueError):
        DinteroServiceToken.load(f"{private}-service-token")


GRANT_AND_DIE = textwrap.dedent(
    """
    import sys
    from prefect_dintero import DinteroCredentials
    DinteroCredentials.load(sys.argv[1]).service_token_provider().get_token()
    """
)


def test_a_process_killed_while_renewing_the_service_token_holds_no_one(
    dintero_emulator_factory,
):
    emu = dintero_emulator_factory(transactions=5)
    creds_name = save_credentials(emu, request_deadline_seconds=3.0)
    # The grant is answered late: the process holds the renewal slot when it is killed.
    emu.set_faults({"route": "token", "sequence": [{"delay_response": 30}]})
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    holder = subprocess.Popen([sys.executable, "-c", GRANT_AND_DIE, creds_name], env=env)
    deadline = time.monotonic() + 60
    while emu.stats()["in_flight"].get("token") != 1:
        assert time.monotonic() < deadline and holder.poll() is None
        time.sleep(0.1)
    holder.kill()
    holder.wait()
    started = time.monotonic()
    token = DinteroCredentials.load(creds_name).service_token_provider().get_token()
    waited = time.monotonic() - started
    assert token.is_fresh() and waited < 20, waited
    deadline = time.monotonic() + 15
    while saved_block(
        lambda: DinteroServiceToken.load(f"{creds_name}-service-token")
    ).access_token != (token.access_token):
        assert time.monotonic() < deadline, "the renewed token was not saved"
        time.sleep(0.05)


def test_login_refuses_a_masked_code(emu):
    creds_name = save_credentials(emu)
    with pytest.raises(LoginError, match="masked"):
        dintero_login(creds_name, unique("s"), authorization_response=SecretStr(MASK))


def test_login_without_authorize_url_or_code_is_a_clear_error(emu):
    creds_name = save_credentials(emu, oidc_authorize_url=None)
    with pytest.raises(ConfigurationError, match="oidc_authorize_url"):
        dintero_login(creds_name, unique("s"))


def run_in_thread(fn, *args, **kwargs):
    box: dict = {}

    def target():
        try:
            box["result"] = fn(*args, **kwargs)
        except BaseException as exc:  # re-raised in the test thread
            box["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    return thread, box


def wait_for_paused_login(
    flow_name: str = "dintero-login", timeout: float = 60
) -> tuple[uuid.UUID, str]:
    """The paused login run, and the authorize URL from its link artifact."""
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            runs = client.read_flow_runs(limit=50)
            for run in runs:
                if run.state and run.state.is_paused() and run.id not in SEEN_PAUSED:
                    artifacts = client.read_artifacts(
                        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id]))
                    )
                    links = [
                        a
                        for a in artifacts
                        if a.type == "markdown" and "oidc/authorize" in (a.data or "")
                    ] or [a for a in artifacts if "oidc/authorize" in str(a.data)]
                    if links:
                        SEEN_PAUSED.add(run.id)
                        url = re.search(r"\((http[^)]+)\)", str(links[0].data)).group(1)
                        return run.id, url
            time.sleep(0.5)
    raise AssertionError("the login never paused")


SEEN_PAUSED: set = set()


def assert_pasted_input_deleted(run_id) -> None:
    """Prefect keeps the resume form's values in plaintext; the login flow must remove them."""
    from prefect.exceptions import PrefectHTTPStatusError

    with get_client(sync_client=True) as client:
        for suffix in ("response", "schema", "description"):
            with pytest.raises(PrefectHTTPStatusError) as info:
                client.read_flow_run_input(run_id, f"paused-dintero-login-{suffix}")
            assert info.value.response.status_code == 404


def test_login_interactive_resumed_from_the_ui(emu):
    creds_name = save_credentials(emu)
    thread, box = run_in_thread(
        dintero_login, creds_name, "ada-interactive", timeout_seconds=120, poll_interval_seconds=1
    )
    run_id, authorize_url = wait_for_paused_login()
    # The user opens the link, logs in, and pastes the redirect URL into the resume form.
    redirect = emu.open_authorize_url(authorize_url)
    resume_flow_run(run_id, run_input={"authorization_response": redirect})
    thread.join(timeout=90)
    assert "error" not in box, box.get("error")
    assert box["result"]["user_name"] == emu.config.user.name
    assert DinteroOIDCSession.load("ada-interactive").refresh_token is not None
    assert_pasted_input_deleted(run_id)
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))
        )
    summary = [a for a in artifacts if a.type == "markdown" and "Dintero login" in (a.data or "")]
    assert summary and emu.config.user.name in summary[0].data


def test_login_state_mismatch_is_rejected(emu):
    creds_name = save_credentials(emu)
    thread, box = run_in_thread(
        dintero_login, creds_name, unique("s"), timeout_seconds=120, poll_interval_seconds=1
    )
    run_id, _ = wait_for_paused_login()
    forged = emu.login(state="not-the-state-we-sent")
    before = oidc_requests(emu)
    resume_flow_run(run_id, run_input={"authorization_response": forged})
    thread.join(timeout=90)
    assert isinstance(box.get("error"), LoginError) and "state" in str(box["error"])
    assert oidc_requests(emu) == before  # nothing was exchanged
    assert_pasted_input_deleted(run_id)


def test_login_interactive_refuses_a_bare_code(emu):
    """The run made a state: a code pasted alone carries none, so nothing ties it to the run's
    login link. It is refused, and nothing is exchanged."""
    creds_name = save_credentials(emu)
    thread, box = run_in_thread(
        dintero_login, creds_name, unique("s"), timeout_seconds=120, poll_interval_seconds=1
    )
    run_id, _ = wait_for_paused_login()
    code = emu.authorization_code(state="whatever")
    before = oidc_requests(emu)
    resume_flow_run(run_id, run_input={"authorization_response": code})
    thread.join(timeout=90)
    assert isinstance(box.get("error"), LoginError) and "whole URL" in str(box["error"])
    assert oidc_requests(emu) == before
    assert_pasted_input_deleted(run_id)


def test_login_pause_timeout_is_a_clear_error(emu):
    creds_name = save_credentials(emu)
    with pytest.raises(LoginError, match="within 2 s"):
        dintero_login(creds_name, unique("s"), timeout_seconds=2, poll_interval_seconds=1)


# -- refresh across processes -------------------------------------------------------------------

WORKER = textwrap.dedent(
    """
    import sys, threading
    from prefect_dintero import DinteroOIDCSession
    session = DinteroOIDCSession.load(sys.argv[1])
    errors, done = [], []
    def work():
        try:
            with session.get_client() as client:
                for _ in range(3):
                    client.get_json("/v1/transactions", host="checkout", params={"limit": 1})
            done.append(1)
        except Exception as exc:
            errors.append(repr(exc))
    threads = [threading.Thread(target=work) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    print("OK" if len(done) == 4 else "FAILED " + "; ".join(errors))
    """
)


def test_refresh_across_processes_happens_once(emu):
    creds_name = save_credentials(emu)
    session_name = login_session(emu, creds_name)
    session = DinteroOIDCSession.load(session_name)
    old_refresh = session.refresh_token.get_secret_value()
    # Force expiry: every process and thread now finds the session stale at the same time.
    session.expires_at = datetime.now(UTC) - timedelta(seconds=1)
    session.save(session_name, overwrite=True)
    before = emu.stats()["token_grants"]["refresh_token"]
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, session_name],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    thread, box = run_in_thread(
        lambda: (
            DinteroOIDCSession.load(session_name)
            .get_client()
            .get_json("/v1/sessions", host="checkout")
        )
    )
    outputs = [p.communicate(timeout=180) for p in procs]
    thread.join(timeout=60)
    for out, err in outputs:
        assert out.strip().endswith("OK"), out + err[-2000:]
    assert "error" not in box, box.get("error")
    assert emu.stats()["token_grants"]["refresh_token"] - before == 1
    saved = DinteroOIDCSession.load(session_name)
    assert saved.refresh_token.get_secret_value() != old_refresh  # the rotated token was kept
    assert saved.expires_at > datetime.now(UTC)
    # And the session keeps working from a fresh process.
    again = subprocess.run(
        [sys.executable, "-c", WORKER, session_name],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert again.stdout.strip().endswith("OK"), again.stdout + again.stderr[-2000:]


# -- the secret scan: runs last ----------------------------------------------------------------


def _db_rows(path: Path) -> str:
    """Every live row of the Prefect database, except encrypted block document data."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    out = []
    tables = [r[0] for r in conn.execute("select name from sqlite_master where type='table'")]
    for table in tables:
        columns = [r[1] for r in conn.execute(f'pragma table_info("{table}")')]
        if table == "block_document":
            columns = [c for c in columns if c != "data"]  # Fernet-encrypted by the server
        if not columns:
            continue
        for row in conn.execute(
            f'select {", ".join(chr(34) + c + chr(34) for c in columns)} from "{table}"'
        ):
            out.append(
                " ".join(
                    v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in row
                )
            )
    conn.close()
    return "\n".join(out)


def test_no_secret_in_what_this_module_left(emu, prefect_home):
    # The last test of this module; the whole session's scan is tests/test_secret_scan.py.
    issued = emu.issued()
    secrets = {
        issued["client_secret"],
        *issued["access_tokens"],
        *issued["refresh_tokens"],
        *issued["codes"],
        "wrong-secret-value",
    }
    assert len(secrets) > 20
    db_url = PREFECT_API_DATABASE_CONNECTION_URL.value()
    db_path = Path(db_url.split("///", 1)[1])
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts()
        logs = client.read_logs()
    haystacks = {
        "database": _db_rows(db_path),
        "artifacts": json.dumps([a.model_dump(mode="json") for a in artifacts]),
        "api logs": "\n".join(log.message for log in logs),
        "captured logs": "\n".join(LOG_LINES),
    }
    for home in {Path(prefect_home), Path(str(PREFECT_HOME.value()))}:
        storage = home / "storage"
        if storage.exists():
            haystacks[f"{storage}"] = "\n".join(
                p.read_bytes().decode("utf-8", "replace") for p in storage.rglob("*") if p.is_file()
            )
    assert haystacks["api logs"] and haystacks["database"]
    found = {
        where: [s[:12] + "…" for s in secrets if s in text] for where, text in haystacks.items()
    }
    assert all(not hits for hits in found.values()), found


def test_a_login_paused_in_the_ui_is_finished_from_the_terminal(emu, monkeypatch, capsys):
    """``prefect-dintero login --resume <run>``: the paused run's link, the redirect URL read
    from standard input, the run resumed with it and followed to its end."""
    import io

    from prefect_dintero.cli import main as cli_main

    creds_name = save_credentials(emu)
    session = unique("terminal")
    thread, box = run_in_thread(
        dintero_login, creds_name, session, timeout_seconds=120, poll_interval_seconds=1
    )
    run_id, authorize_url = wait_for_paused_login()
    redirect = emu.open_authorize_url(authorize_url)
    monkeypatch.setattr("sys.stdin", io.StringIO(redirect + "\n"))
    assert cli_main(["login", "--resume", str(run_id), "--code-stdin"]) == 0
    thread.join(timeout=90)
    assert "error" not in box, box.get("error")
    assert "Logged in" in capsys.readouterr().out
    assert DinteroOIDCSession.load(session).access_token is not None
    # A run that is not paused is refused, in one line.
    assert cli_main(["login", "--resume", str(run_id)]) == 2
    assert "is not waiting for a login" in capsys.readouterr().err
