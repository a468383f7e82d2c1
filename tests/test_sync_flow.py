"""The dintero-sync flow and sync_stream task on a Prefect test server."""

from __future__ import annotations

import json
import re
import time
import uuid

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from pydantic import SecretStr

from prefect_dintero import DinteroCredentials
from prefect_dintero.emulator import EmulatorConfig, running_emulator
from prefect_dintero.errors import ConfigurationError
from prefect_dintero.flows import dintero_login, dintero_sync
from prefect_dintero.flows.sync import SyncFailed
from prefect_dintero.sink import Sink, redact_url, resolve_destination
from prefect_dintero.streams.catalog import CATALOG

from .helpers import save_credentials, source_key, table_as_sent

pytestmark = pytest.mark.usefixtures("prefect_server")
AID = "T12345678"


@pytest.fixture(scope="module")
def emu():
    config = EmulatorConfig(
        refresh_tokens=True,
        transactions=120,
        sessions=40,
        settlements=30,
        customers=35,
        transfers_per_destination=25,
    )
    with running_emulator(config) as server:
        yield server


@pytest.fixture
def creds(emu) -> str:
    name = f"dintero-{uuid.uuid4().hex[:8]}"
    DinteroCredentials(
        account_id=AID,
        client_id=emu.config.client_id,
        client_secret=SecretStr(emu.config.client_secret),
        api_url=emu.url,
        checkout_url=emu.url,
        oidc_authorize_url=f"{emu.url}/oidc/authorize",
        redirect_uri=emu.config.redirect_uris[0],
    ).save(name, overwrite=True, _sync=True)
    return name


def equals_source(emu, sink: Sink, names) -> bool:
    for name in names:
        spec = CATALOG[name]
        table = table_as_sent(spec, sink.rows(spec, AID))
        if table != {source_key(spec, o): o for o in emu.dump(name)}:
            return False
    return True


# The flow end to end on SQLite and PostgreSQL; DuckDB's share (the sink) is test_sync.py's, on
# every dialect (CI's time budget).
@pytest.mark.parametrize("destination", ["sqlite", "postgres"], indirect=True)
def test_sync_flow_all_streams_then_incremental(emu, creds, destination):
    emu.clear_faults()
    # No payout destinations given: the flow reads the account's list.
    result = dintero_sync(creds, destination=destination, page_size=25)
    assert [r["stream"] for r in result] == list(CATALOG)
    sink = Sink(destination)
    assert equals_source(emu, sink, CATALOG)
    with get_client(sync_client=True) as client:
        artifact = client.read_latest_artifacts()
        table = [a for a in artifact if a.key == "dintero-sync-t12345678"]
    assert table and "transactions" in str(table[0].data)
    # The table says where the data went (the absolute file, or the URL without a password).
    where = redact_url(resolve_destination(destination))
    assert f"into {where}," in table[0].description, table[0].description
    emu.advance_clock(3600, new_transactions=4, new_customers=2)
    again = {
        r["stream"]: r
        for r in dintero_sync(
            creds,
            destination=destination,
            page_size=25,
            payout_destinations=emu.config.payout_destinations,
        )
    }
    assert again["transactions"]["inserted"] == 4 and again["customers"]["inserted"] == 2
    assert again["transactions"]["fetched"] < 120 / 4
    assert equals_source(emu, Sink(destination), CATALOG)
    # Changes to transactions months old: the hourly lookback misses them, the reconcile run
    # (the nightly deployment's reconcile_days) takes them in.
    late = emu.mutate(update_transactions=10, recent_days=170)["changed"][AID]["transactions"]
    hourly = dintero_sync(creds, streams=["transactions"], destination=destination)
    assert hourly[0]["updated"] < late
    reconcile = dintero_sync(
        creds, streams=["transactions"], destination=destination, reconcile_days=400
    )
    assert hourly[0]["updated"] + reconcile[0]["updated"] == late
    assert equals_source(emu, Sink(destination), ["transactions"])


def test_payout_transfers_are_skipped_with_a_reason_when_destinations_cannot_be_listed(
    tmp_path, caplog
):
    # An API client without read:accounts: the list of payout destinations answers 403.
    config = EmulatorConfig(read_accounts_scope=False, transactions=20, sessions=5)
    with running_emulator(config) as server:
        name = f"noscope-{uuid.uuid4().hex[:8]}"
        DinteroCredentials(
            account_id=AID,
            client_id=config.client_id,
            client_secret=SecretStr(config.client_secret),
            api_url=server.url,
            checkout_url=server.url,
        ).save(name, overwrite=True, _sync=True)
        result = dintero_sync(name, destination=str(tmp_path / "s.db"))
    rows = {r["stream"]: r for r in result}
    assert rows["transactions"]["inserted"] == 20  # the run went on
    assert "read:accounts" in rows["payout_transfers"]["skipped"]
    assert any("payout_transfers skipped" in r.getMessage() for r in caplog.records)
    with get_client(sync_client=True) as client:
        [table] = [a for a in client.read_latest_artifacts() if a.key == "dintero-sync-t12345678"]
    [row] = [r for r in json.loads(table.data) if r["stream"] == "payout_transfers"]
    assert row["status"] == "skipped" and "read:accounts" in row["error"]


def test_sync_as_the_logged_in_user(emu, creds, tmp_path):
    session = f"session-{uuid.uuid4().hex[:8]}"
    dintero_login(creds, session, authorization_response=SecretStr(emu.authorization_code()))
    before = emu.stats()["token_grants"]["client_credentials"]
    result = dintero_sync(
        creds,
        session_block=session,
        streams=["transactions", "customers"],
        destination=str(tmp_path / "u.db"),
    )
    assert [r["inserted"] for r in result] == [
        len(emu.dump("transactions")),
        len(emu.dump("customers")),
    ]
    assert emu.stats()["token_grants"]["client_credentials"] == before  # read with the user's token


def test_unknown_streams_are_rejected_before_any_request(emu, creds, tmp_path):
    emu.reset_stats()
    with pytest.raises(ConfigurationError, match="valid streams: transactions, sessions"):
        dintero_sync(creds, streams=["transactions", "refunds"], destination=str(tmp_path / "x.db"))
    assert emu.stats()["requests_total"] == 0


def test_a_malformed_payout_destination_is_refused_before_any_request(emu, creds, tmp_path):
    emu.reset_stats()
    with pytest.raises(ConfigurationError, match="payout destination"):
        dintero_sync(
            creds,
            streams=["payout_transfers"],
            destination=str(tmp_path / "x.db"),
            payout_destinations=["PD-main/../other"],
        )
    assert emu.stats()["requests_total"] == 0


def test_a_password_in_the_destination_url_is_refused_and_never_stored(emu, creds):
    """Refused before any request, and the run's stored parameters hold the URL masked: Prefect
    stores them when it creates the run, before the flow can refuse anything."""
    from prefect_dintero.flows import AccountTarget, dintero_sync_accounts

    emu.reset_stats()
    password = f"hunter2-{uuid.uuid4().hex[:8]}"
    with pytest.raises(ConfigurationError, match="SqlAlchemyConnector"):
        dintero_sync(creds, destination=f"postgresql://user:{password}@127.0.0.1/db")
    with pytest.raises(ConfigurationError, match="SqlAlchemyConnector"):
        dintero_sync_accounts(
            [AccountTarget(credentials_block=creds)],
            destination=f"postgresql://user@127.0.0.1/db?password={password}",
        )
    # Any database's secret query keys, judged by their names (MotherDuck's documented form).
    with pytest.raises(ConfigurationError, match="motherduck_token"):
        dintero_sync(creds, destination=f"duckdb:///md:db?motherduck_token={password}x")
    assert emu.stats()["requests_total"] == 0
    with get_client(sync_client=True) as client:
        stored = json.dumps([r.parameters for r in client.read_flow_runs()])
    assert "user:***@127.0.0.1" in stored  # the run is there, its URL masked
    assert password.encode() not in _prefect_database_text()


def test_a_retry_after_of_an_hour_never_holds_the_run_past_its_budget(emu, creds, tmp_path):
    """The defect: one 429 with Retry-After: 3600 paused the account for an hour; the flow run
    went on past timeout_minutes, its task runner waiting for the streams that waited."""
    emu.set_faults({"route": "*", "probability": 1.0, "status": 429, "retry_after": 3600})
    budget = 0.1  # minutes: 6 s
    started = time.monotonic()
    try:
        state = dintero_sync(
            creds,
            streams=["transactions", "sessions"],
            destination=str(tmp_path / "budget.db"),
            timeout_minutes=budget,
            return_state=True,
        )
    finally:
        emu.clear_faults()
    elapsed = time.monotonic() - started
    assert state.is_failed()
    assert elapsed < budget * 60 + 10, f"the run ended {elapsed:.1f} s after it started"


def test_one_failing_stream_does_not_stop_the_others(emu, creds, tmp_path):
    destination = str(tmp_path / "partial.db")
    emu.set_faults({"route": "settlements", "probability": 1.0, "status": 400})
    try:
        with pytest.raises(
            SyncFailed, match=r"1 of 7 streams failed: settlements \(DinteroAPIError"
        ):
            dintero_sync(creds, destination=destination)
        settlements_requests = sum(emu.stats()["requests"]["settlements"].values())
    finally:
        emu.clear_faults()
    assert settlements_requests >= 1
    sink = Sink(destination)
    assert equals_source(emu, sink, ["transactions", "sessions", "customers"])
    assert sink.count(CATALOG["settlements"]) == 0


def test_sync_into_postgres_through_a_connector_block(emu, creds, postgres_url):
    from prefect_sqlalchemy import ConnectionComponents, SqlAlchemyConnector
    from sqlalchemy.engine import make_url

    from tests.conftest import _drop_dintero_tables

    _drop_dintero_tables(postgres_url)
    url = make_url(postgres_url)
    SqlAlchemyConnector(
        connection_info=ConnectionComponents(
            driver="postgresql+psycopg",
            username=url.username,
            password=SecretStr("not-needed-trust-auth"),
            host=url.host,
            port=url.port,
            database=url.database,
        )
    ).save("warehouse", overwrite=True, _sync=True)
    result = dintero_sync(creds, streams=["settlements"], destination_block="warehouse")
    assert result[0]["inserted"] == len(emu.dump("settlements"))
    assert equals_source(emu, Sink(postgres_url), ["settlements"])


def _prefect_database_text() -> bytes:
    """Everything the test server's database holds on disk, its write-ahead log included."""
    from pathlib import Path

    from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL

    path = Path(str(PREFECT_SERVER_DATABASE_CONNECTION_URL.value()).split(":///", 1)[1])
    return b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal")) if p.exists())


@pytest.mark.parametrize("destination", ["sqlite", "postgres", "duckdb"], indirect=True)
def test_a_refused_row_leaves_no_customer_value_in_prefect(emu, creds, destination):
    """The database refuses a customer's row, quoting it: the run fails naming the object, and
    no name, e-mail or phone number of any customer reaches Prefect's database (state messages,
    artifacts, logs, events). PostgreSQL goes through a connector block, whose engine would
    print a statement's parameters."""
    import httpx
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.settings import PREFECT_API_URL
    from prefect_sqlalchemy import ConnectionComponents, SqlAlchemyConnector
    from sqlalchemy.engine import make_url

    from .helpers import refuse_rows

    sink = Sink(destination)
    sink.prepare([CATALOG["customers"]])
    refuse_rows(sink, destination)
    sink.dispose()
    where = {"destination": destination}
    if destination.startswith("postgresql"):
        url = make_url(destination)
        block = f"warehouse-{uuid.uuid4().hex[:6]}"
        SqlAlchemyConnector(
            connection_info=ConnectionComponents(
                driver="postgresql+psycopg",
                username=url.username,
                password=SecretStr("not-needed-trust-auth"),
                host=url.host,
                port=url.port,
                database=url.database,
            )
        ).save(block, overwrite=True, _sync=True)
        where = {"destination_block": block}
    state = dintero_sync(creds, streams=["customers"], return_state=True, **where)
    assert state.is_failed()
    run_id = state.state_details.flow_run_id
    # Logs and events reach the server a moment after the run: wait for both.
    api = PREFECT_API_URL.value()
    deadline = time.monotonic() + 30
    while True:
        with get_client(sync_client=True) as client:
            logs = [
                log.message
                for log in client.read_logs(
                    log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id]))
                )
            ]
        events = httpx.post(
            f"{api}/events/filter",
            json={"filter": {"event": {"name": ["dintero.sync.failed"]}}, "limit": 50},
            timeout=30,
        ).json()["events"]
        failed = [e for e in events if str(run_id) in json.dumps(e)]
        if failed and any("PageRefused" in m for m in logs):
            break
        assert time.monotonic() < deadline, (logs, events)
        time.sleep(0.5)
    assert "PageRefused" in json.dumps(failed)
    customers = emu.dump("customers")
    assert any(c["id"] in json.dumps(failed) for c in customers)
    # E-mails and phone numbers are each customer's own (a name such as Lovelace is also the
    # emulator's logged-in user's, in other tests' logs).
    stored = _prefect_database_text()
    leaked = [
        f"{customer['id']}.{field}"
        for customer in customers
        for field in ("email", "phone_number")
        if customer.get(field) and customer[field].encode() in stored
    ]
    assert not leaked, f"customers' values in Prefect's database: {leaked}"


# -- deadlines and echoing servers ----------------------------------------------------------------


@pytest.fixture
def quick_creds(emu) -> str:
    """Credentials whose requests must finish within 1.5 s."""
    name = f"quick-{uuid.uuid4().hex[:8]}"
    DinteroCredentials(
        account_id=AID,
        client_id=emu.config.client_id,
        client_secret=SecretStr(emu.config.client_secret),
        api_url=emu.url,
        checkout_url=emu.url,
        request_deadline_seconds=1.5,
    ).save(name, overwrite=True, _sync=True)
    return name


def test_a_trickling_server_fails_the_run_naming_it_and_the_next_run_proceeds(
    emu, quick_creds, tmp_path, monkeypatch
):
    from prefect_dintero.http.retry import RetryPolicy

    # Stream resumes are tested elsewhere; here one attempt shows the request's own deadline.
    # The flow takes them from the credentials' policy, so that is where they are switched off.
    monkeypatch.setattr(
        RetryPolicy,
        "from_limits",
        classmethod(lambda cls, attempts, wait: cls(max_attempts=attempts, stream_resumes=0)),
    )
    destination = str(tmp_path / "trickle.db")
    emu.set_faults({"route": "transactions", "probability": 1.0, "trickle": 0.3})
    started = time.monotonic()
    try:
        with pytest.raises(SyncFailed) as info:
            dintero_sync(quick_creds, streams=["transactions"], destination=destination)
    finally:
        emu.clear_faults()
    assert time.monotonic() - started < 30
    assert re.search(r"transactions \(DeadlineExceeded: .*deadline of 1.5 s", str(info.value))
    again = dintero_sync(quick_creds, streams=["transactions"], destination=destination)
    assert again[0]["inserted"] == len(emu.dump("transactions"))


def test_a_run_stops_at_its_budget_naming_the_streams_still_running(emu, creds, tmp_path):
    emu.set_faults({"route": "sessions", "probability": 1.0, "trickle": 0.3})
    started = time.monotonic()
    try:
        # Stopped at its budget either way: the stream still running when it ran out, or its
        # request's deadline (cut to the budget) reached first, with no time left to resume.
        with pytest.raises(
            SyncFailed,
            match=r"sessions \((did not finish within the run's budget|RunBudgetExceeded: "
            r"sessions failed .*the run's budget)",
        ):
            dintero_sync(
                creds,
                streams=["sessions", "settlements"],
                destination=str(tmp_path / "budget.db"),
                timeout_minutes=0.1,
            )
    finally:
        emu.clear_faults()
    assert time.monotonic() - started < 40


def test_an_echoing_server_leaves_no_secret_in_states_artifacts_or_events(
    emu, creds, tmp_path, evidence
):
    """A proxy that echoes the request (Authorization header and all) into its error body: the
    run fails, and no state message, artifact or event carries the bearer token."""
    import httpx
    from prefect.settings import PREFECT_API_URL

    emu.set_faults(
        {"route": "transactions", "probability": 1.0, "status": 400, "echo": True},
    )
    try:
        with pytest.raises(SyncFailed) as info:
            dintero_sync(creds, streams=["transactions"], destination=str(tmp_path / "e.db"))
    finally:
        emu.clear_faults()
    issued = emu.issued()
    secrets = [issued["client_secret"], *issued["access_tokens"]]
    texts = [str(info.value)]
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs()
        texts += [r.state.message or "" for r in runs if r.state]
        texts += [r.state.message or "" for r in client.read_task_runs() if r.state]
        texts += [str(a.data) for a in client.read_artifacts()]
    api = PREFECT_API_URL.value()
    events = httpx.post(f"{api}/events/filter", json={"limit": 200}, timeout=30).json()
    texts.append(json.dumps(events))
    blob = "\n".join(texts)
    assert "ECHO" in blob  # the echo did reach the run's failure
    assert not [s for s in secrets if s in blob]
    assert "Bearer ey" not in blob
    evidence.text(blob)


def test_two_overlapping_runs_of_one_account_never_sync_at_once(emu, creds, tmp_path):
    """The second run waits for the first, whichever deployment or worker starts them and
    whatever its credentials block is called (the slot is the account's), and no limit needs
    creating beforehand."""
    import threading

    from prefect_dintero.flows.sync import account_limit_name

    # The same account under another block name: the slot was once keyed by the block's name.
    names = {"first": creds, "second": save_credentials(emu, f"{creds}-copy")}

    destination = str(tmp_path / "overlap.db")
    # Slow pages: the first run is still syncing when the second one starts.
    emu.set_faults({"route": "transactions", "probability": 1.0, "latency": 0.5})
    states = {}

    def start(label: str) -> None:
        states[label] = dintero_sync(
            names[label],
            streams=["transactions"],
            destination=destination,
            page_size=40,
            return_state=True,
        )

    try:
        first = threading.Thread(target=start, args=("first",))
        first.start()
        time.sleep(2.0)
        second = threading.Thread(target=start, args=("second",))
        second.start()
        first.join(120)
        second.join(120)
    finally:
        emu.clear_faults()
    assert states["first"].is_completed() and states["second"].is_completed()
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(account_limit_name(AID, emu.url))
        spans = []
        for state in states.values():
            tasks = client.read_task_runs(
                flow_run_filter=FlowRunFilter(
                    id=FlowRunFilterId(any_=[state.state_details.flow_run_id])
                )
            )
            syncs = [t for t in tasks if t.name.startswith("sync-")]
            spans.append((min(t.start_time for t in syncs), max(t.end_time for t in syncs)))
    assert limit.limit == 1
    (_, first_end), (second_start, _) = sorted(spans)
    assert first_end <= second_start, f"the syncs overlapped: {spans}"


# -- where the data lands ------------------------------------------------------------------------


def test_relative_files_are_placed_in_a_stable_folder_and_others_left_alone(tmp_path):
    from prefect_dintero.sink.destination import Destination

    def relative_file(target: str) -> str | None:
        return Destination(target).relative_file

    def anchor_destination(target: str, folder) -> str:
        return Destination(target).anchored(folder).target

    assert relative_file("dintero.db") == "dintero.db"
    assert relative_file("sqlite:///data/dintero.db") == "data/dintero.db"
    assert relative_file("duckdb:///d.duckdb") == "d.duckdb"
    assert Destination("dintero.db", block="warehouse").relative_file is None
    for kept in (
        "/srv/dintero.db",
        "~/prefect-dintero/dintero.db",
        "sqlite:////srv/dintero.db",
        "sqlite://",
        "sqlite:///file:dintero.db?uri=true",
        "postgresql://u@host/db",
    ):
        assert relative_file(kept) is None, kept
        assert anchor_destination(kept, tmp_path) == kept
    assert anchor_destination("dintero.db", tmp_path) == str(tmp_path / "dintero.db")
    assert anchor_destination("duckdb:///d.duckdb", tmp_path) == f"duckdb:///{tmp_path}/d.duckdb"


def test_a_destination_inside_a_temporary_working_folder_is_warned_about(
    emu, creds, tmp_path, monkeypatch, caplog
):
    import logging
    import tempfile

    folder = tempfile.mkdtemp(suffix="prefect")  # as a process worker makes one
    monkeypatch.chdir(folder)
    with caplog.at_level(logging.WARNING):
        dintero_sync(creds, streams=["settlements"], destination="here.db")
    assert "inside the temporary working folder" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        dintero_sync(creds, streams=["settlements"], destination=str(tmp_path / "elsewhere.db"))
        # An absolute path inside the temporary folder is where its user said: no warning.
        dintero_sync(creds, streams=["settlements"], destination=f"{folder}/absolute.db")
    assert "temporary working folder" not in caplog.text


def test_sync_flow_hashes_personal_data_with_a_secret_blocks_key(emu, creds, tmp_path):
    """The key comes from a Secret block named by the run (never a parameter); a block that
    does not exist fails the run before any Dintero request; hashed values join."""
    from prefect.blocks.system import Secret

    from prefect_dintero.streams.personal_data import PersonalDataPolicy

    emu.clear_faults()
    key_block = f"dintero-hmac-{uuid.uuid4().hex[:8]}"
    key = "k" * 16 + uuid.uuid4().hex
    Secret(value=key).save(key_block, overwrite=True, _sync=True)
    destination = str(tmp_path / "hashed.db")
    before = emu.stats()["requests_total"]
    with pytest.raises(ConfigurationError, match="no Secret block named 'nope'"):
        dintero_sync(
            creds,
            destination=destination,
            streams=["customers"],
            personal_data="hash",
            personal_data_key_block="nope",
        )
    assert emu.stats()["requests_total"] == before
    dintero_sync(
        creds,
        destination=destination,
        streams=["customers", "transactions"],
        personal_data="hash",
        personal_data_key_block=key_block,
    )
    policy = PersonalDataPolicy("hash", SecretStr(key))
    sink = Sink(destination)
    source = {c["id"]: c for c in emu.dump("customers")}
    rows = sink.rows(CATALOG["customers"], AID)
    assert len(rows) == len(source)
    assert all(r["email"] == policy.hash_value(source[r["id"]]["email"], "email") for r in rows)
    # The run's parameters name the block; the key is nowhere in them.
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(limit=5)
    assert all(key not in json.dumps(r.parameters, default=str) for r in runs)
    # Another policy on the same destination is refused, naming what it was filled with.
    with pytest.raises(SyncFailed, match="must not mix"):
        dintero_sync(creds, destination=destination, streams=["customers"])
    sink.dispose()


def test_a_wrong_secret_is_said_once_with_the_block_and_no_traceback(emu, tmp_path, caplog):
    import logging

    from prefect_dintero.errors import AuthenticationError

    name = save_credentials(emu, client_secret=SecretStr("not-the-secret"))
    with caplog.at_level(logging.INFO), pytest.raises(AuthenticationError):
        dintero_sync(name, destination=str(tmp_path / "never.db"))
    said = [
        r.getMessage() for r in caplog.records if "Invalid client credentials" in r.getMessage()
    ]
    assert len(said) == 1, said
    assert f"credentials block {name!r}" in said[0] and "Check the API client's id" in said[0]
    # What a user sees (Prefect's own debug records of its internals aside): no traceback.
    shown = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert not [r for r in shown if r.exc_info and r.exc_info[0] is not None]
    assert not [r for r in shown if "Traceback" in r.getMessage()]
