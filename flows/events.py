"""Prefect events of prefect-dintero, for automations and downstream deployments.

Every event names its resource in the ``dintero.*`` namespace and carries only counts, names
and times: no token, no secret, no customer data.

- ``dintero.sync.completed`` on ``dintero.account.<account id>``: ``streams`` (per stream:
  fetched, inserted, updated, pages), ``fetched``, ``inserted``, ``updated``,
  ``credentials_block``, ``session_block``;
- ``dintero.sync.failed``, the same resource: the same payload, with ``failed_streams`` and
  ``error``;
- ``dintero.session.expiring`` on ``dintero.session.<session block>``: ``session_block``,
  ``account_id``, ``expires_at``, ``hours_left``, ``threshold`` (``day`` or ``hour``),
  ``login_deployment``, ``login_url``;
- ``dintero.session.expired``, the same resource: ``session_block``, ``account_id``,
  ``expires_at``, ``login_deployment``, ``login_url``.

The account is a related resource of the session events, and the credentials block of the
sync events.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from prefect.events import emit_event
from prefect.variables import Variable

from prefect_dintero import times
from prefect_dintero.redact import get_logger, redact
from prefect_dintero.sync.stream_summary import StreamSummary

logger = get_logger(__name__)

#: The deployment that logs a user in again, named in the session events.
LOGIN_DEPLOYMENT = "dintero-login/manual"
#: Warn this long before a session that cannot be renewed ends.
WARN_AHEAD = (("day", timedelta(days=1)), ("hour", timedelta(hours=1)))

#: A test seam, empty in normal use: called with every event emitted here (name, resource id,
#: payload), for the month simulation, which plays the person an automation would notify.
TEST_LISTENERS: list[Callable[[str, str, dict[str, Any]], None]] = []


def _emit(event: str, resource: dict[str, str], payload: dict, related: list[dict]) -> None:
    for listener in TEST_LISTENERS:
        listener(event, resource["prefect.resource.id"], payload)
    try:
        emit_event(event=event, resource=resource, payload=payload, related=related)
    except Exception as exc:  # an event never fails the sync that emits it
        logger.warning("could not emit %s: %s", event, redact(str(exc)))


def account_resource(account_id: str) -> dict[str, str]:
    return {
        "prefect.resource.id": f"dintero.account.{account_id}",
        "prefect.resource.name": f"Dintero account {account_id}",
        "dintero.account.id": account_id,
    }


def _related_account(account_id: str) -> dict[str, str]:
    return {**account_resource(account_id), "prefect.resource.role": "dintero-account"}


def emit_sync_result(
    account_id: str,
    credentials_block: str,
    session_block: str | None,
    summaries: dict[str, StreamSummary],
    failures: dict[str, str],
    error: str | None = None,
    destination: dict[str, str] | None = None,
) -> None:
    """``dintero.sync.completed`` or ``dintero.sync.failed`` for one account's run.

    ``destination`` (``destination`` and ``destination_block``: where the run wrote, never with
    a secret: the run refuses those in its parameters) goes into the payload with the run's
    id, so a deployment it triggers (``after-sync``) reads what this run wrote."""
    streams = {
        name: {"fetched": s.fetched, "inserted": s.inserted, "updated": s.updated, "pages": s.pages}
        for name, s in summaries.items()
    }
    payload: dict[str, Any] = {
        "credentials_block": credentials_block,
        "session_block": session_block,
        "streams": streams,
        "fetched": sum(s["fetched"] for s in streams.values()),
        "inserted": sum(s["inserted"] for s in streams.values()),
        "updated": sum(s["updated"] for s in streams.values()),
        "destination": "",
        "destination_block": "",
        **(destination or {}),
        "flow_run_id": _flow_run_id(),
    }
    failed = bool(failures or error)
    if failed:
        payload["failed_streams"] = sorted(failures)
        payload["error"] = redact(error or "; ".join(f"{k}: {v}" for k, v in failures.items()))
    related = [
        {
            "prefect.resource.id": f"dintero.credentials.{credentials_block}",
            "prefect.resource.name": credentials_block,
            "prefect.resource.role": "dintero-credentials-block",
        }
    ]
    _emit(
        "dintero.sync.failed" if failed else "dintero.sync.completed",
        account_resource(account_id),
        payload,
        related,
    )


def _flow_run_id() -> str:
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    return str(context.flow_run.id) if context and context.flow_run else ""


def _login_url() -> str | None:
    """The login deployment's page in the Prefect UI, when both exist."""
    try:
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_UI_URL

        base = PREFECT_UI_URL.value()
        if not base:
            return None
        with get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name(LOGIN_DEPLOYMENT)
        return f"{base.rstrip('/')}/deployments/deployment/{deployment.id}"
    except Exception:  # no such deployment, or no UI: the deployment's name says enough
        return None


def _session_payload(session_block: str, account_id: str, expires_at: datetime) -> dict:
    return {
        "session_block": session_block,
        "account_id": account_id,
        "expires_at": expires_at.isoformat(),
        "login_deployment": LOGIN_DEPLOYMENT,
        "login_url": _login_url(),
    }


def _session_resource(session_block: str) -> dict[str, str]:
    return {
        "prefect.resource.id": f"dintero.session.{session_block}",
        "prefect.resource.name": f"Dintero login session {session_block}",
        "dintero.session.block": session_block,
    }


def warn_if_session_ends_soon(
    session_block: str, account_id: str, session_id: str, expires_at: datetime
) -> str | None:
    """Emit ``dintero.session.expiring`` a day and an hour before a session that cannot be
    renewed ends, once each per login (a Prefect variable remembers which were sent).
    Returns the threshold emitted, if any."""
    left = expires_at - times.now()
    due = [name for name, ahead in WARN_AHEAD if left <= ahead]
    if not due or left <= timedelta(0):
        return None
    threshold = due[-1]  # the nearest one: "hour" once an hour is left
    name = f"dintero-session-warnings-{session_block}"
    sent: dict[str, Any] = Variable.get(name, default={}) or {}
    if sent.get("session_id") != session_id:
        sent = {"session_id": session_id, "sent": []}
    if threshold in sent["sent"]:
        return None
    payload = {
        **_session_payload(session_block, account_id, expires_at),
        "hours_left": round(left.total_seconds() / 3600, 2),
        "threshold": threshold,
    }
    _emit(
        "dintero.session.expiring",
        _session_resource(session_block),
        payload,
        [_related_account(account_id)],
    )
    sent["sent"] = [*sent["sent"], threshold]
    Variable.set(name, sent, overwrite=True)
    return threshold


def emit_session_expired(session_block: str, account_id: str, expires_at: datetime | None) -> None:
    """``dintero.session.expired``: a run found the session over; someone must log in."""
    payload = _session_payload(session_block, account_id, expires_at or times.now())
    _emit(
        "dintero.session.expired",
        _session_resource(session_block),
        payload,
        [_related_account(account_id)],
    )
