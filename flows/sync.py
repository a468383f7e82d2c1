"""The ``dintero-sync`` flow: keep Dintero's data fresh in your database."""

import contextlib
import hashlib
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextvars import copy_context
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from queue import Empty, Queue
from typing import Any, Literal

from prefect import get_run_logger
from prefect.artifacts import (
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.blocks.system import Secret
from prefect.context import FlowRunContext
from prefect.futures import PrefectFuture
from prefect.states import Failed
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import SecretStr

from prefect_dintero import budget
from prefect_dintero.auth.client_credentials import DEFAULT_API_URL
from prefect_dintero.bearer import DinteroBearer
from prefect_dintero.blocks import DinteroCredentials
from prefect_dintero.blocks.prefect_api import describe, load_block
from prefect_dintero.blocks.slots import HeldSlot, wait_for_slot
from prefect_dintero.errors import (
    USER_ERRORS,
    ConfigurationError,
    DinteroError,
    ReauthorizationRequired,
)
from prefect_dintero.flows import events
from prefect_dintero.flows.parameters import MaskedFlow
from prefect_dintero.redact import install_log_filter, redact
from prefect_dintero.sink.destination import Destination
from prefect_dintero.streams.paginators import DEFAULT_MAX_PAGES
from prefect_dintero.streams.personal_data import PersonalDataPolicy
from prefect_dintero.sync.options import SyncRequest, run_budget
from prefect_dintero.sync.stream_summary import StreamSummary
from prefect_dintero.tasks import get_bearer_token
from prefect_dintero.tasks.syncing import sync_stream

#: Streams run concurrently, bounded: each holds a database connection and an HTTP client.
MAX_CONCURRENT_STREAMS = 4


#: The run's budget by default: an hourly run ends before the next one starts.
DEFAULT_TIMEOUT_MINUTES = 50.0

#: The account slot's lease: a run keeps its slot through this long of Prefect API failures
#: (429s, 5xx, no answer) to its renewals, and a crashed run holds the account this long at most.
ACCOUNT_SLOT_LEASE = 300.0
#: How often a running sync renews its account slot's lease (one Prefect API request).
ACCOUNT_SLOT_RENEW_SECONDS = 30.0

#: How long the end of a run waits for its last Prefect calls (the artifacts), at most.
ENDING_WAIT_SECONDS = 10.0

#: How many syncs of one account may run at once, across every worker.
SYNCS_PER_ACCOUNT = 1


#: Where a relative SQLite or DuckDB destination goes when a worker runs the flow: a Prefect
#: process worker runs a deployment without pull steps in a temporary folder and deletes it
#: after the run, so a file relative to that folder would go with it.
DEPLOYMENT_DATA_FOLDER = "~/prefect-dintero"


def stable_destination(destination: Destination) -> Destination:
    """``destination``, with a relative SQLite or DuckDB file placed in
    ``DEPLOYMENT_DATA_FOLDER`` when a worker runs this flow (said in the log); elsewhere (a
    flow called from your own code) it stays relative to the working folder."""
    context = FlowRunContext.get()
    run = context.flow_run if context is not None else None
    # Workers and runners name the run they start in the environment (the fan-out's subflows
    # run in that process too); a deployment run started otherwise names its deployment.
    if not (os.environ.get("PREFECT__FLOW_RUN_ID") or (run is not None and run.deployment_id)):
        return destination
    anchored = destination.anchored(DEPLOYMENT_DATA_FOLDER)
    if anchored != destination:
        get_run_logger().info(
            "a worker runs this flow in a temporary folder that it deletes afterwards: the "
            "relative destination %r is written to %s instead",
            destination.target,
            Path(DEPLOYMENT_DATA_FOLDER).expanduser(),
        )
    return anchored


def account_limit_name(account_id: str, api_url: str = DEFAULT_API_URL) -> str:
    """The global concurrency limit bounding concurrent syncs of one account: named by the
    account, not by a credentials block, so two blocks of one account share it. An account of
    another API (the emulator, a staging host) is another account: its name carries a short
    digest of that API's URL."""
    if api_url.rstrip("/") == DEFAULT_API_URL:
        return f"dintero-account-{account_id}"
    digest = hashlib.sha256(api_url.rstrip("/").encode()).hexdigest()[:8]
    return f"dintero-account-{account_id}-{digest}"


class SyncFailed(DinteroError):
    """One or more streams failed; the others finished and were committed."""


def _dintero_sync(
    credentials_block: str,
    session_block: str | None = None,
    streams: list[str] | None = None,
    destination: str = "dintero.db",
    destination_block: str | None = None,
    lookback_hours: float | None = None,
    page_size: int = 100,
    full_refresh: bool = False,
    payout_destinations: list[str] | None = None,
    start_date: datetime | None = None,
    reconcile_days: float | None = None,
    max_pages: int = DEFAULT_MAX_PAGES,
    personal_data: Literal["keep", "hash", "drop"] = "keep",
    personal_data_key_block: str | None = None,
    timeout_minutes: float = DEFAULT_TIMEOUT_MINUTES,
    one_run_at_a_time: bool = True,
) -> list[dict[str, Any]]:
    """Sync the chosen streams of one account.

    Args:
        credentials_block: name of the ``DinteroCredentials`` block.
        session_block: name of a ``DinteroOIDCSession`` block, to read as the logged-in user;
            without it the API client's own (service) token is used.
        streams: stream names; None syncs all.
        destination: a SQLite file path (default ``dintero.db``) or a SQLAlchemy URL without a
            password. A relative SQLite or DuckDB file is relative to the working folder when
            you call the flow yourself, and to ``~/prefect-dintero`` when a worker runs it (a
            worker's working folder is temporary).
        destination_block: a prefect-sqlalchemy ``SqlAlchemyConnector`` block name, for
            databases that need a password.
        lookback_hours: re-read this far before each stream's cursor; None uses each stream's
            default (transactions: 3 days, since their status changes after creation).
        page_size: rows per request (capped at each endpoint's maximum).
        full_refresh: ignore saved cursors and read everything again (rows are upserted).
        payout_destinations: payout destination ids whose transfers to sync; None reads the
            account's list (the API client needs ``read:accounts``; without it the stream is
            skipped, and the log and the table artifact say why).
        start_date: the oldest data a first sync reads; None reads all history.
        reconcile_days: re-read at least the last N days of every stream, whatever the
            cursor. Captures and refunds of any age come with every run, by Dintero's
            ``captured_at`` and ``refunded_at`` filters; the daily ``reconcile`` deployment
            sets 35 for what no filter covers (voids, and settlements of captures up to 30
            days late). While Dintero refuses a filter, transactions' reconcile reads 92 days.
        max_pages: a hard cap of pages per window, a safety net against a server whose list
            never ends; a stream that reaches it fails, its committed pages kept.
        personal_data: what happens to the personal fields (customers' names, e-mails and
            phones; the buyer's contact details, addresses, IP address and browser on
            transactions and sessions; the receiving bank account, BIC and message of payout
            transfers) before anything is written or logged. ``keep`` stores what Dintero
            sends; ``hash`` stores an HMAC-SHA256 of each value (the same value hashes the
            same everywhere, so tables join on a hashed e-mail); ``drop`` leaves them out. A
            destination remembers its policy: another one is refused, unless with
            ``full_refresh`` (which deletes the old rows first).
        personal_data_key_block: the name of a Prefect ``Secret`` block holding the key for
            ``hash`` (at least 32 bytes, random; keep it: another key is refused too).
        timeout_minutes: the run's budget, waiting for the account's slot included: streams
            still running then are stopped and named in the failure, so a hung server never
            holds the next scheduled run (each request also has its own deadline, the
            credentials block's ``request_deadline_seconds``). The default ends an hourly
            run before the next one starts.
        one_run_at_a_time: wait (within the budget) while another run of the same account
            runs, whichever deployment, worker or credentials block started it: the hourly run
            and the nightly reconcile never overlap. A run that crashed holds the account for
            at most five minutes (the slot's lease, which lets a run keep its slot through
            minutes of Prefect API failures).

    Returns:
        One summary per stream: pages, fetched, inserted, updated, unchanged, cursor before and
        after, requests, retries, rate-limited responses, and ``skipped`` (why, when it was).
    """
    install_log_filter()
    # Checked here, once, before any block is loaded or request sent: a negative lookback, say,
    # would silently skip data.
    request = SyncRequest.build(
        streams=streams,
        destination=destination,
        destination_block=destination_block,
        lookback_hours=lookback_hours,
        page_size=page_size,
        full_refresh=full_refresh,
        payout_destinations=payout_destinations,
        start_date=start_date,
        reconcile_days=reconcile_days,
        max_pages=max_pages,
        personal_data=personal_data,
        personal_data_key_block=personal_data_key_block,
    )
    # Anchoring a checked destination adds no secret: the copy is not checked again.
    if (anchored := stable_destination(request.target)) != request.target:
        request = request.model_copy(update={"destination": anchored.target})
    allowed = run_budget(timeout_minutes)
    # Prefect API calls beside the run's own path (the slot, the artifacts): each is a round
    # trip to a server that may be tens of milliseconds away, so they overlap where they can.
    side = ThreadPoolExecutor(max_workers=3, thread_name_prefix="dintero-prefect")
    run = SyncRun(
        credentials_block,
        session_block,
        request,
        # Read once, before any request: a missing or short key fails the run here.
        personal_data_key=_personal_data_key(request),
        deadline=time.monotonic() + allowed.total_seconds(),
        side=side,
    )

    # One sync of an account at a time, across every worker and deployment (the hourly run
    # and the nightly reconcile included): a run waits for the one before it, within its budget.
    # A run that may have lost its slot (Prefect refused its lease renewals for the lease's
    # length) stops at its next page, before another run can take the slot.
    take_slot = None
    if one_run_at_a_time:

        def take_slot(cancel: threading.Event) -> HeldSlot | None:
            # Read here, beside the bearer's own read: the slot is the account's, whichever
            # block names it.
            credentials = load_block(DinteroCredentials, credentials_block)
            return wait_for_slot(
                account_limit_name(credentials.account_id, credentials.api_url),
                timeout=run.seconds_left(),
                lease=ACCOUNT_SLOT_LEASE,
                renew_every=ACCOUNT_SLOT_RENEW_SECONDS,
                create_missing=SYNCS_PER_ACCOUNT,  # made by the account's first run
                cancel=cancel,
            )

    try:
        # Every wait of the run, the token's included, ends with its budget.
        with budget.within(time.time() + allowed.total_seconds()):
            return [summary.as_dict() for summary in _sync(run, take_slot)]
    except USER_ERRORS as exc:
        # Said once, in the run's final state, with the block's name and what to do; no
        # traceback for an error only its user can mend.
        message = str(exc)
        if credentials_block not in message:
            message = f"credentials block {credentials_block!r}: {message}"
        return Failed(message=message, data=exc)  # type: ignore[return-value]
    finally:
        # Not joined: a Prefect call still hanging there (the end's artifact, say) must not
        # hold the run past its end; it finishes, or fails, on its own.
        side.shutdown(wait=False)


dintero_sync = MaskedFlow(
    _dintero_sync,
    name="dintero-sync",
    description=(
        "Sync Dintero transactions (and their money movements), checkout sessions, "
        "settlements, customers, payout destinations, transfers and balances into SQLite, "
        "PostgreSQL or DuckDB, incrementally: each page is committed "
        "together with the stream's cursor, so a crashed or retried run resumes without gaps or "
        "duplicates."
    ),
    task_runner=ThreadPoolTaskRunner(max_workers=MAX_CONCURRENT_STREAMS),  # type: ignore[arg-type]
)


def _best_effort(what: str, call_prefect: Callable[[], Any]) -> Any:
    """A Prefect API call the sync does not need (an artifact, the session's warning variable):
    a Prefect API that fails it, after its client's own retries, costs that, never the run."""
    try:
        return call_prefect()
    except Exception as exc:
        get_run_logger().warning("could not %s (%s)", what, describe(exc))
        return None


@dataclass(frozen=True)
class SyncRun:
    """One ``dintero-sync`` run: what its steps share."""

    credentials_block: str
    session_block: str | None
    request: SyncRequest
    #: The HMAC key for ``personal_data="hash"``, read from its Secret block.
    personal_data_key: SecretStr | None
    #: When the run's budget ends (``time.monotonic()``).
    deadline: float
    #: Where Prefect API calls the run does not wait for go (the slot, the artifacts).
    side: ThreadPoolExecutor

    def seconds_left(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def beside(self, fn: Callable[..., Any], *args: Any) -> Future:
        """``fn(*args)`` in a side thread, in this run's context (its logger, its API URL)."""
        return self.side.submit(copy_context().run, fn, *args)

    def written_to(self) -> dict[str, str]:
        """Where the run writes, as a downstream run takes it."""
        return self.request.target.for_event()


def _personal_data_key(request: SyncRequest) -> SecretStr | None:
    """The HMAC key for ``personal_data="hash"``, from its Secret block, checked."""
    if request.personal_data != "hash" or not request.personal_data_key_block:
        return None
    try:
        secret = load_block(Secret, request.personal_data_key_block)
    except ValueError:
        raise ConfigurationError(
            f"no Secret block named {request.personal_data_key_block!r} "
            "(personal_data_key_block): create one in the Prefect UI (Blocks, Secret) holding "
            "a random key of at least 32 bytes"
        ) from None
    key = SecretStr(str(secret.get()))
    PersonalDataPolicy("hash", key)  # refuses a short key before any request
    return key


def _sync(
    run: SyncRun, take_slot: Callable[[threading.Event], HeldSlot | None] | None
) -> list[StreamSummary]:
    # The slot is asked for while the bearer is made: neither writes anything.
    cancel = threading.Event()
    slot_wait = run.beside(take_slot, cancel) if take_slot is not None else None
    credentials_block, session_block = run.credentials_block, run.session_block
    try:
        bearer = get_bearer_token(credentials_block, session_block, check_token=False)
        # Asked for here, not in the task: a wrong secret fails the run with its error said
        # once (the run's final state), where a failed task would log it with a traceback.
        bearer.token()
        get_run_logger().info(
            "Bearer ready for account %s as %s", bearer.account_id, bearer.identity
        )
    except Exception as exc:
        if slot_wait is not None:
            cancel.set()
            with contextlib.suppress(Exception):
                if (held := slot_wait.result()) is not None:
                    held.release()
        # Only now is the block read here: the bearer names the account when there is one.
        account_id = load_block(DinteroCredentials, credentials_block).account_id
        if session_block and isinstance(exc, ReauthorizationRequired):
            events.emit_session_expired(session_block, account_id, exc.expires_at)
        events.emit_sync_result(
            account_id,
            credentials_block,
            session_block,
            {},
            {},
            f"{type(exc).__name__}: {exc}",
            destination=run.written_to(),
        )
        raise
    held = slot_wait.result() if slot_wait is not None else None
    if slot_wait is not None and held is None:
        slot = account_limit_name(bearer.account_id, bearer.credentials.api_url)
        raise TimeoutError(
            f"another run of account {bearer.account_id} held the account's slot ({slot!r}) "
            "for this run's whole budget (timeout_minutes)"
        )
    try:
        return _run_streams(run, bearer, held)
    finally:
        if held is not None:
            # Beside the run's end, not waited for (a second release does nothing): a run that
            # failed early frees it the same way.
            run.beside(held.release)


def _run_streams(run: SyncRun, bearer: DinteroBearer, held: HeldSlot | None) -> list[StreamSummary]:
    logger = get_run_logger()
    request, session_block = run.request, run.session_block
    account_id = bearer.account_id
    if session_block and not bearer.renewable:
        _best_effort(
            "check whether the session's end was announced",
            lambda: events.warn_if_session_ends_soon(
                session_block, account_id, bearer.login_id, bearer.expires_at
            ),
        )
    where = request.target.label()
    logger.info("Syncing Dintero account %s into %s", account_id, where)
    if folder := request.target.temporary_folder():
        logger.warning(
            "the destination lies inside the temporary working folder %s, which is usually "
            "deleted after the run: the data would go with it. Give an absolute path (the "
            "deployments in prefect.yaml use ~/prefect-dintero/dintero.db) or a database URL",
            folder,
        )
    ends_at = time.time() + max(1.0, run.seconds_left())
    stop_reason = held.lost_reason if held is not None else None
    # A stream resumes as often as the credentials block's retry settings say.
    policy = bearer.credentials.retry_policy
    stream_task = sync_stream.with_options(
        retries=policy.stream_resumes, retry_delay_seconds=policy.stream_resume_delays()
    )
    futures = {
        stream_task.submit(
            bearer,
            name,
            request,
            ends_at=ends_at,
            stop_reason=stop_reason,
            personal_data_key=run.personal_data_key,
        ): name
        for name in request.streams
    }
    # Made beside the streams: it is shown, never needed. Each update follows the one before
    # (updates in flight at once could land out of order).
    progress: Future = run.beside(
        _best_effort,
        "create the progress artifact",
        lambda: create_progress_artifact(
            0.0, description=f"Streams synced for Dintero account {account_id}"
        ),
    )
    made = progress

    def update_progress(before: Future, done: int) -> None:
        before.result()
        if (progress_id := made.result()) is not None:
            _best_effort(
                "update the progress artifact",
                lambda: update_progress_artifact(progress_id, 100.0 * done / len(futures)),
            )

    summaries: dict[str, StreamSummary] = {}
    failures: dict[str, str] = {}
    # Each stream's end as it comes, within the budget. Not Prefect's as_completed(timeout=):
    # its alarm stays armed while the loop's body runs, and once went off inside a finished
    # stream's result() as a CancelledError that nothing here could name.
    finished: Queue[PrefectFuture] = Queue()
    for future in futures:
        future.add_done_callback(finished.put)
    for done in range(1, len(futures) + 1):
        try:
            future = finished.get(timeout=run.seconds_left())
        except Empty:
            break
        name = futures[future]
        try:
            summaries[name] = future.result()
        except Exception as exc:  # the others go on; the run fails below, naming this one
            failures[name] = f"{type(exc).__name__}: {redact(str(exc))}"
            logger.error("stream %s failed: %s", name, failures[name])
        progress = run.beside(update_progress, progress, done)
    for name in futures.values():
        if name not in summaries and name not in failures:
            failures[name] = (
                "did not finish within the run's budget (timeout_minutes); its committed "
                "pages are kept and the next run resumes it"
            )
            logger.error("stream %s failed: %s", name, failures[name])

    rows = [
        _artifact_row(summaries.get(name) or StreamSummary(name, account_id), failures.get(name))
        for name in request.streams
    ]
    # Nothing writes now. The slot is freed when this returns (by ``_sync``), beside the table
    # artifact and the last progress, and not waited for: two writes to Prefect's database,
    # which took up to 1.5 s here under load; a run that follows at once meets a taken slot
    # for that long, and asks again.
    ending = [
        run.beside(
            _best_effort,
            "create the table artifact",
            lambda: create_table_artifact(
                rows,
                key=f"dintero-sync-{account_id.lower()}",
                description=(
                    f"Last Dintero sync of account {account_id} into {where}, one row per stream."
                ),
            ),
        )
    ]
    events.emit_sync_result(
        account_id,
        run.credentials_block,
        session_block,
        summaries,
        failures,
        destination=run.written_to(),
    )
    for pending in [*ending, progress]:
        try:
            pending.result(timeout=ENDING_WAIT_SECONDS)
        except FutureTimeout:
            logger.warning(
                "the Prefect API did not answer the run's last calls within %.0f s (the table "
                "and progress artifacts); the run ends without waiting for them",
                ENDING_WAIT_SECONDS,
            )
            break
    if failures:
        raise SyncFailed(
            f"{len(failures)} of {len(futures)} streams failed: "
            + "; ".join(f"{name} ({error})" for name, error in failures.items())
            + ". The other streams were synced and committed; a rerun resumes the failed ones."
        )
    return [summaries[name] for name in request.streams]


def _artifact_row(summary: StreamSummary, error: str | None) -> dict[str, Any]:
    """One stream's row of the run's table artifact."""
    return {
        "stream": summary.stream,
        "status": "failed" if error else summary.status,
        "rows_fetched": summary.fetched,
        "inserted": summary.inserted,
        "updated": summary.updated,
        "unchanged": summary.unchanged,
        "pages": summary.pages,
        "requests": summary.requests,
        "retries": summary.retries,
        "rate_limited": summary.rate_limited,
        "outside_window": summary.outside_window,
        "seconds": summary.seconds,
        "cursor_after": summary.cursor_after or "",
        "error": error or summary.skipped,
    }
