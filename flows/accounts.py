"""The ``dintero-sync-accounts`` flow: many merchant accounts, one ``dintero-sync`` run each."""

import time
from datetime import UTC, datetime
from typing import Any, Literal, cast
from uuid import UUID

from prefect import get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.states import Cancelling
from pydantic import BaseModel, Field

from prefect_dintero.blocks.prefect_api import Backoff, describe, is_transient, retry_after_of
from prefect_dintero.errors import ConfigurationError, DinteroError
from prefect_dintero.flows.parameters import MaskedFlow
from prefect_dintero.flows.sync import DEFAULT_TIMEOUT_MINUTES, dintero_sync
from prefect_dintero.sync.options import SYNC_PARAMETERS, SyncRequest, run_budget

#: How long the fan-out waits for queued runs while none of its runs starts or ends: then no
#: worker is taking them, and it stops waiting (they stay queued; none is cancelled).
PICKUP_GRACE_SECONDS = 600
#: Waits between reads of the runs' states (one request for all of them): from 2 s, doubling
#: to 10 s (at most 6 requests a minute, and the fan-out ends within 10 s of its last run).
POLL_FIRST_SECONDS = 2.0
POLL_MAX_SECONDS = 10.0


class AccountTarget(BaseModel):
    """One account to sync: its blocks, and optionally its own payout destinations."""

    credentials_block: str = Field(description="The account's Dintero Credentials block name.")
    session_block: str | None = Field(
        default=None, description="A Dintero OIDC Session block name, to sync as a user."
    )
    payout_destinations: list[str] | None = Field(
        default=None, description="Payout destination ids of this account."
    )


class AccountsFailed(DinteroError):
    """Some accounts' syncs failed; the others completed."""


def _dintero_sync_accounts(
    accounts: list[AccountTarget],
    mode: Literal["subflows", "deployments"] = "subflows",
    deployment_name: str = "dintero-sync/hourly",
    streams: list[str] | None = None,
    destination: str | None = None,
    destination_block: str | None = None,
    lookback_hours: float | None = None,
    page_size: int | None = None,
    full_refresh: bool | None = None,
    start_date: datetime | None = None,
    reconcile_days: float | None = None,
    max_pages: int | None = None,
    personal_data: Literal["keep", "hash", "drop"] | None = None,
    personal_data_key_block: str | None = None,
    timeout_minutes: float | None = None,
) -> list[dict[str, Any]]:
    """Fan out one sync per account.

    Args:
        accounts: the accounts, each with its credentials block (and optionally a session
            block and payout destinations).
        mode: ``"subflows"`` runs each account's sync here, one after another; ``"deployments"``
            starts a run of ``deployment_name`` per account and waits for all of them, so
            workers share the work.
        deployment_name: the ``dintero-sync`` deployment to run in ``"deployments"`` mode.
        streams, destination, destination_block, lookback_hours, page_size, full_refresh,
            start_date, reconcile_days, max_pages, personal_data, personal_data_key_block:
            passed to every account's ``dintero-sync``
            run when given (payout destinations come with each account); left
            out, each run uses its own (the deployment's parameters, say the ``destination``
            of ``dintero-sync/hourly``, or ``dintero-sync``'s defaults).
        timeout_minutes: each account's run's budget (its ``timeout_minutes``), when given; else
            the deployment's or the flow's. In ``"deployments"`` mode the fan-out cancels a run
            still going two minutes past its budget, counted from when it started; a run no
            worker starts while none of the fan-out's runs starts or ends for ten minutes is
            left queued, never cancelled, and reported as not started.

    Returns:
        One row per account: its credentials block, state and rows fetched.
    """
    logger = get_run_logger()
    if not accounts:
        raise ConfigurationError("no accounts given")
    names = [a.credentials_block for a in accounts]
    if len(set(names)) != len(names):
        raise ConfigurationError("an account is listed twice; each credentials block once")
    # Only what was given is passed on: a value left out must not replace the deployment's
    # (dintero-sync/hourly's destination, say) with a default of this flow's.
    called = locals()
    given: dict[str, Any] = {
        p.name: called[p.name]
        for p in SYNC_PARAMETERS
        if p.name in called and called[p.name] is not None
    }
    # Each account's request, checked here, before one run per account fails with it.
    for target in accounts:
        SyncRequest.build(**given, payout_destinations=target.payout_destinations)
    if timeout_minutes is not None:
        run_budget(timeout_minutes)
        given["timeout_minutes"] = timeout_minutes

    def parameters(target: AccountTarget) -> dict[str, Any]:
        own: dict[str, Any] = {"credentials_block": target.credentials_block}
        if target.session_block:
            own["session_block"] = target.session_block
        if target.payout_destinations:
            own["payout_destinations"] = target.payout_destinations
        return {**own, **given}

    rows: list[dict[str, Any]] = []
    if mode == "subflows":
        for target in accounts:
            state = dintero_sync(**parameters(target), return_state=True)
            rows.append(_row(target, state))
    elif mode == "deployments":
        # Each run is created (linked to this run as a subflow) without waiting for it: workers
        # take them as they have room, and one read a poll follows them all.
        started = {
            target.credentials_block: cast(
                FlowRun,
                run_deployment(  # from sync code: the flow run, never a coroutine
                    name=deployment_name,
                    parameters=parameters(target),
                    timeout=0,
                    as_subflow=True,
                ),
            ).id
            for target in accounts
        }
        budget = run_budget(
            timeout_minutes if timeout_minutes is not None else _deployment_timeout(deployment_name)
        )
        runs = _wait_for_runs(
            list(started.values()), budget.total_seconds() + RUN_END_SLACK_SECONDS
        )
        for target in accounts:
            flow_run = runs[started[target.credentials_block]]
            final = flow_run.state
            if final is not None and final.is_final():
                rows.append(_row(target, final))
            elif flow_run.start_time is None:
                rows.append({**_row(target, final), "state": "NOT_STARTED"})
                logger.error(
                    "%s: no worker started its run within %d s in which none of this fan-out's "
                    "runs started or ended; it stays queued (run %s) and runs when a worker "
                    "takes it",
                    target.credentials_block,
                    PICKUP_GRACE_SECONDS,
                    flow_run.id,
                )
            else:
                with get_client(sync_client=True) as client:  # it overran: cancelled
                    client.set_flow_run_state(flow_run.id, Cancelling(), force=True)
                rows.append({**_row(target, final), "state": "TIMED_OUT"})
                logger.error(
                    "%s: its run did not finish within %.0f minutes of starting; cancelled",
                    target.credentials_block,
                    budget.total_seconds() / 60,
                )
    else:
        raise ConfigurationError(f"mode must be 'subflows' or 'deployments', not {mode!r}")

    create_table_artifact(
        rows, key="dintero-sync-accounts", description="Last fan-out, per account."
    )
    failed = [r["credentials_block"] for r in rows if r["state"] != "COMPLETED"]
    for row in rows:
        logger.info(
            "%s: %s, %s rows fetched", row["credentials_block"], row["state"], row["fetched"]
        )
    if failed:
        raise AccountsFailed(f"{len(failed)} of {len(rows)} accounts failed: {', '.join(failed)}")
    return rows


def _deployment_timeout(name: str) -> float:
    """The ``timeout_minutes`` a deployment's runs get: its parameter, else the flow's."""
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(name)
    value = (deployment.parameters or {}).get("timeout_minutes")
    return float(value) if value is not None else DEFAULT_TIMEOUT_MINUTES


#: A run's own budget ends it; the fan-out gives it this much more before it cancels it.
RUN_END_SLACK_SECONDS = 120.0


def _wait_for_runs(ids: list[UUID], run_seconds: float) -> dict[UUID, FlowRun]:
    """Follow deployment runs until each has ended, ran ``run_seconds`` past its start, or sat
    queued while none of them started or ended for ``PICKUP_GRACE_SECONDS``.

    One request reads every run's state; the wait between reads grows from 2 to 10 s, and a
    Prefect API that fails (429, 5xx, no answer) is asked again later, honouring Retry-After.
    A run's budget counts from its start, never from its time in the queue.
    """
    runs: dict[UUID, FlowRun] = {}
    pending = set(ids)
    progress_at = time.monotonic()
    poll = Backoff(first=POLL_FIRST_SECONDS, cap=POLL_MAX_SECONDS)
    errors = Backoff()
    with get_client(sync_client=True) as client:
        while pending:
            try:
                read = client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=list(pending)))
                )
            except Exception as exc:
                if not is_transient(exc):
                    raise
                get_run_logger().warning("could not read the runs' states (%s)", describe(exc))
                time.sleep(errors.next(retry_after_of(exc)))
                continue
            now = time.monotonic()
            for flow_run in read:
                before = runs.get(flow_run.id)
                runs[flow_run.id] = flow_run
                if before is None or before.start_time != flow_run.start_time:
                    progress_at = now if flow_run.start_time is not None else progress_at
                if flow_run.state is not None and flow_run.state.is_final():
                    pending.discard(flow_run.id)
                    progress_at = now
                elif flow_run.start_time is not None and (
                    (datetime.now(UTC) - flow_run.start_time).total_seconds() > run_seconds
                ):
                    pending.discard(flow_run.id)  # over its budget: cancelled by the caller
            queued = all(runs[i].start_time is None for i in pending if i in runs)
            if pending and queued and now - progress_at > PICKUP_GRACE_SECONDS:
                break  # no worker is taking them: they stay queued
            time.sleep(poll.next())
    return runs


dintero_sync_accounts = MaskedFlow(
    _dintero_sync_accounts,
    name="dintero-sync-accounts",
    description=(
        "Sync many Dintero merchant accounts: one dintero-sync run per account, as subflows in "
        "this process or as runs of a dintero-sync deployment that Prefect workers on many "
        "machines pick up. A global concurrency limit per account keeps one sync per account "
        "at a time."
    ),
)


def _row(target: AccountTarget, state: Any) -> dict[str, Any]:
    fetched = 0
    if state is not None and state.is_completed():
        try:
            result = state.result(raise_on_failure=False)
            if isinstance(result, list):
                fetched = sum(r.get("fetched", 0) for r in result if isinstance(r, dict))
        except Exception:  # results of deployment runs live with the worker: counts unknown here
            fetched = 0
    return {
        "credentials_block": target.credentials_block,
        "state": state.type.value if state is not None else "UNKNOWN",
        "fetched": fetched,
    }
