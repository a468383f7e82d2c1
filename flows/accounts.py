"""The ``dintero-sync-accounts`` flow: many merchant accounts, one ``dintero-sync`` run each."""

from concurrent.futures import ThreadPoolExecutor
from contextvars import copy_context
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from pydantic import BaseModel, Field

from prefect_dintero.errors import ConfigurationError, DinteroError
from prefect_dintero.flows.sync import DEFAULT_TIMEOUT_MINUTES, dintero_sync, ensure_account_limit
from prefect_dintero.request import SyncRequest, run_budget

#: How long a deployment run may wait for a worker before the fan-out stops waiting for it.
PICKUP_GRACE_SECONDS = 600


class AccountTarget(BaseModel):
    """One account to sync: its blocks, and optionally its own payout destinations."""

    credentials_block: str = Field(description="The account's Dintero Credentials block name.")
    session_block: str | None = Field(
        default=None, description="A Dintero OIDC Session block name, to sync as a user."
    )
    payout_destinations: list[str] | None = Field(
        default=None, description="Payout destination ids of this account."
    )


def ensure_account_limits(targets: list[AccountTarget]) -> None:
    for target in targets:
        ensure_account_limit(target.credentials_block)


class AccountsFailed(DinteroError):
    """Some accounts' syncs failed; the others completed."""


@flow(
    name="dintero-sync-accounts",
    description=(
        "Sync many Dintero merchant accounts: one dintero-sync run per account, as subflows in "
        "this process or as runs of a dintero-sync deployment that Prefect workers on many "
        "machines pick up. A global concurrency limit per account keeps one sync per account "
        "at a time."
    ),
)
def dintero_sync_accounts(
    accounts: list[AccountTarget],
    mode: Literal["subflows", "deployments"] = "subflows",
    deployment_name: str = "dintero-sync/hourly",
    streams: list[str] | None = None,
    destination: str = "dintero.db",
    destination_block: str | None = None,
    lookback_hours: float | None = None,
    page_size: int = 100,
    full_refresh: bool = False,
    reconcile_days: float | None = None,
    timeout_minutes: float = DEFAULT_TIMEOUT_MINUTES,
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
            reconcile_days: passed to every account's ``dintero-sync`` run.
        timeout_minutes: each account's run's budget (its ``timeout_minutes``); in
            ``"deployments"`` mode the fan-out waits for a run that long plus a grace period
            for a worker to pick it up, then cancels it and reports it as timed out.

    Returns:
        One row per account: its credentials block, state and rows fetched.
    """
    logger = get_run_logger()
    if not accounts:
        raise ConfigurationError("no accounts given")
    names = [a.credentials_block for a in accounts]
    if len(set(names)) != len(names):
        raise ConfigurationError("an account is listed twice; each credentials block once")
    # Each account's request, checked here, before one run per account fails with it.
    requests = {
        target.credentials_block: SyncRequest.build(
            streams=streams,
            destination=destination,
            destination_block=destination_block,
            lookback_hours=lookback_hours,
            reconcile_days=reconcile_days,
            page_size=page_size,
            full_refresh=full_refresh,
            payout_destinations=target.payout_destinations,
        )
        for target in accounts
    }
    budget = run_budget(timeout_minutes)
    ensure_account_limits(accounts)

    def parameters(target: AccountTarget) -> dict[str, Any]:
        return {
            "credentials_block": target.credentials_block,
            "session_block": target.session_block,
            "timeout_minutes": timeout_minutes,
            **requests[target.credentials_block].flow_parameters(),
        }

    rows: list[dict[str, Any]] = []
    if mode == "subflows":
        for target in accounts:
            state = dintero_sync(**parameters(target), return_state=True)
            rows.append(_row(target, state))
    elif mode == "deployments":

        def start(target: AccountTarget) -> Any:
            return run_deployment(
                name=deployment_name,
                parameters=parameters(target),
                # Bounded: a run no worker picks up, or one that hangs, must not hold the
                # fan-out (and the next night's) for ever.
                timeout=budget.total_seconds() + PICKUP_GRACE_SECONDS,
                as_subflow=True,
            )

        # run_deployment waits for its run: start them all at once so workers share them. Each
        # thread runs in a copy of this run's context, so the runs are linked as its subflows.
        with ThreadPoolExecutor(max_workers=len(accounts)) as pool:
            futures = [pool.submit(copy_context().run, start, t) for t in accounts]
            flow_runs = [f.result() for f in futures]
        for target, flow_run in zip(accounts, flow_runs, strict=True):
            state = flow_run.state
            if state is None or not state.is_final():
                _cancel(flow_run.id)
                rows.append({**_row(target, state), "state": "TIMED_OUT"})
                logger.error(
                    "%s: its run did not finish within %s minutes (plus %d s to be picked up); "
                    "cancelled",
                    target.credentials_block,
                    timeout_minutes,
                    PICKUP_GRACE_SECONDS,
                )
                continue
            rows.append(_row(target, state))
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


def _cancel(flow_run_id: Any) -> None:
    """Ask Prefect to cancel a run the fan-out stopped waiting for."""
    from prefect.states import Cancelling

    with get_client(sync_client=True) as client:
        client.set_flow_run_state(flow_run_id, Cancelling(), force=True)


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
