"""A month unattended, shortened: a simulated day of hourly runs (benchmarks/month.py), and
the events other flows and people react to, read back from a Prefect server."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL
from pydantic import SecretStr

from prefect_dintero import DinteroCredentials, DinteroOIDCSession
from prefect_dintero.emulator import EmulatorConfig, running_emulator
from prefect_dintero.flows import dintero_login, dintero_sync
from prefect_dintero.flows.automations import FILE_HEADER, automation_yaml
from prefect_dintero.times import use_clock

pytestmark = pytest.mark.usefixtures("prefect_server")
ROOT = Path(__file__).resolve().parents[1]
AID = "T12345678"


def events(name: str, since: datetime, keep=lambda event: True, expect: int = 1) -> list[dict]:
    """Events of one name since a moment that ``keep`` accepts, read back through Prefect's
    events API once ``expect`` of them are there (or after 20 s): events reach the database a
    moment after they are emitted, one by one, so the first read may hold only some."""
    body = {
        "filter": {
            "occurred": {"since": since.isoformat()},
            "event": {"name": [name]},
            "order": "ASC",
        },
        "limit": 50,
    }
    found: list[dict] = []
    for _ in range(40):
        page = httpx.post(f"{PREFECT_API_URL.value()}/events/filter", json=body).json()
        found = [e for e in page.get("events", []) if keep(e)]
        if len(found) >= expect:
            break
        time.sleep(0.5)
    return found


@pytest.mark.slow
def test_a_day_unattended_on_sqlite(month_benchmark, tmp_path, evidence):
    # On PostgreSQL (a day took 2 to 3 minutes of CI): benchmarks/month.py --destination URL.
    month = month_benchmark.simulate(
        1, str(tmp_path / "month.db"), traffic=0.5, log=lambda line: None
    )
    evidence.note("sqlite · " + month.line())
    assert not month.unmet_goals(), (month.unmet_goals(), month.failures, month.stale)


def test_sync_and_session_events_with_their_payloads(tmp_path):
    since = datetime.now(UTC) - timedelta(seconds=5)
    config = EmulatorConfig(
        transactions=20, sessions=5, settlements=3, customers=4, session_lifetime=3 * 3600
    )
    with running_emulator(config) as emu:
        creds = f"events-{uuid.uuid4().hex[:8]}"
        session = f"{creds}-session"
        DinteroCredentials(
            account_id=AID,
            client_id=config.client_id,
            client_secret=SecretStr(config.client_secret),
            api_url=emu.url,
            checkout_url=emu.url,
        ).save(creds, overwrite=True)
        with use_clock(emu.state.clock.now):
            dintero_login(
                creds, session, authorization_response=SecretStr(emu.authorization_code())
            )
            result = dintero_sync(
                creds,
                session_block=session,
                streams=["transactions"],
                destination=str(tmp_path / "e.db"),
            )
            emu.advance_clock(2.5 * 3600)  # an hour is left
            dintero_sync(
                creds,
                session_block=session,
                streams=["transactions"],
                destination=str(tmp_path / "e.db"),
            )
            emu.advance_clock(1 * 3600)  # over
            with pytest.raises(Exception, match=r"[Ll]og in again"):
                dintero_sync(
                    creds,
                    session_block=session,
                    streams=["transactions"],
                    destination=str(tmp_path / "e.db"),
                )

    mine = events(
        "dintero.sync.completed",
        since,
        keep=lambda e: e["payload"].get("credentials_block") == creds,
        expect=2,
    )
    assert len(mine) == 2
    first = mine[0]
    assert first["resource"]["prefect.resource.id"] == f"dintero.account.{AID}"
    assert first["payload"]["streams"]["transactions"]["fetched"] == result[0]["fetched"] == 20
    assert first["payload"]["inserted"] == 20 and first["payload"]["session_block"] == session
    assert any(r["prefect.resource.role"] == "dintero-credentials-block" for r in first["related"])

    expiring = events(
        "dintero.session.expiring",
        since,
        keep=lambda e: e["payload"]["session_block"] == session,
        expect=2,
    )
    assert [e["payload"]["threshold"] for e in expiring] == ["day", "hour"]
    assert expiring[1]["payload"]["hours_left"] <= 1
    assert expiring[0]["payload"]["login_deployment"] == "dintero-login/manual"
    assert expiring[0]["resource"]["prefect.resource.id"] == f"dintero.session.{session}"
    assert any(r["prefect.resource.id"] == f"dintero.account.{AID}" for r in expiring[0]["related"])

    expired = events(
        "dintero.session.expired", since, keep=lambda e: e["payload"]["session_block"] == session
    )
    failed = events(
        "dintero.sync.failed", since, keep=lambda e: e["payload"]["credentials_block"] == creds
    )
    assert len(expired) == 1 and len(failed) == 1
    assert "ReauthorizationRequired" in failed[0]["payload"]["error"]
    assert expired[0]["payload"]["login_deployment"] == "dintero-login/manual"
    blob = json.dumps([*mine, *expiring, *expired, *failed])
    assert config.client_secret not in blob
    assert DinteroOIDCSession.load(session).access_token.get_secret_value() not in blob


def test_the_automation_file_is_accepted_by_the_server(tmp_path):
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    env = {"PREFECT_API_URL": PREFECT_API_URL.value()}
    import os

    env = {**os.environ, **env}
    # The repository's copy, as shipped, is what the generator writes.
    shipped = (ROOT / "automations" / "dintero-session-expiring.yaml").read_text()
    assert shipped == FILE_HEADER + automation_yaml()
    CustomWebhookNotificationBlock(name="ops", url="http://127.0.0.1:9/hook").save(
        "dintero-ops", overwrite=True
    )
    written = tmp_path / "automation.yaml"
    made = subprocess.run(
        [
            sys.executable,
            "-m",
            "prefect_dintero.cli",
            "automation",
            "--notification-block",
            "custom-webhook/dintero-ops",
            "--output",
            str(written),
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert made.returncode == 0, made.stderr[-2000:]
    created = subprocess.run(
        [sys.executable, "-m", "prefect", "automation", "create", "--from-file", str(written)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert created.returncode == 0, created.stdout[-2000:] + created.stderr[-2000:]
    with get_client(sync_client=True) as client:
        automations = client.read_automations_by_name("dintero-session-expiring")
        block = CustomWebhookNotificationBlock.load("dintero-ops")
    assert automations and automations[0].trigger.expect == {"dintero.session.expiring"}
    assert str(automations[0].actions[0].block_document_id) == str(block._block_document_id)
