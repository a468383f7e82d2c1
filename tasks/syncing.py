"""Prefect tasks that sync Dintero streams into a database."""

from __future__ import annotations

import time
from collections.abc import Callable

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import SecretStr

from prefect_dintero.bearer import DinteroBearer
from prefect_dintero.errors import DinteroError, RunBudgetExceeded, StreamSkipped
from prefect_dintero.http.retry import RetryPolicy
from prefect_dintero.redact import install_log_filter
from prefect_dintero.sink import Sink
from prefect_dintero.streams.catalog import resolve_streams
from prefect_dintero.sync.options import SyncRequest
from prefect_dintero.sync.stream_summary import StreamSummary
from prefect_dintero.sync.stream_sync import sync_account_stream
from prefect_dintero.tasks._retry import retry_if_transient
from prefect_dintero.tasks.destinations import open_sink

#: The resume delays' jitter (Prefect's ``retry_jitter_factor``): up to half as long again.
RESUME_JITTER = 0.5

#: A progress line per stream at most this often: every log line is a Prefect API write, and
#: Prefect Cloud counts them (2,000 log lines and events a minute on its Hobby plan).
PROGRESS_EVERY_SECONDS = 30.0


@task(
    name="Sync Dintero stream",
    description="Page one Dintero stream of one account into the destination, incrementally.",
    task_run_name="sync-{stream}",
    # Resumes of a stream whose requests ran out of attempts: the default retry policy's here;
    # dintero-sync sets them per run from the credentials block's (RetryPolicy.stream_resumes).
    retries=RetryPolicy.stream_resumes,
    retry_delay_seconds=RetryPolicy().stream_resume_delays(),
    retry_jitter_factor=RESUME_JITTER,
    retry_condition_fn=retry_if_transient,
    persist_result=False,
    cache_policy=NO_CACHE,
)
def sync_stream(
    bearer: DinteroBearer,
    stream: str,
    request: SyncRequest,
    ends_at: float | None = None,
    stop_reason: Callable[[], str | None] | None = None,
    personal_data_key: SecretStr | None = None,
) -> StreamSummary:
    """Sync one stream of the bearer's account, committing each page with the stream's state.

    Transient HTTP failures are retried per request by the client (the credentials block's
    retry settings); this task is retried only when those ran out, and then resumes from the
    last committed page.

    Args:
        bearer: from ``get_bearer_token`` (never persisted).
        stream: one of ``request.streams``.
        request: the run's :class:`~prefect_dintero.sync.options.SyncRequest`: destination,
            lookback, page size, payout destinations.
        ends_at: when the run must be over (``time.time()``): no request outlasts it. Prefect's
            task timeouts cannot stop a thread waiting on the network; this can.
        stop_reason: asked before every request and commit: why the stream must stop (the run
            may no longer hold its account's slot), or None. The stream then fails with
            ``RunInterrupted``, keeping what it committed.
        personal_data_key: the HMAC key for ``request.personal_data == "hash"`` (this task
            neither persists its result nor caches on its inputs).

    Returns:
        The stream's :class:`~prefect_dintero.sync.stream_summary.StreamSummary`: pages,
        fetched, inserted, updated, unchanged, requests, retries, rate_limited, seconds,
        cursor_before, cursor_after, resumed, one part per payout destination, and ``skipped``:
        why the stream was skipped (payout destinations the credentials may not list).
    """
    install_log_filter()
    logger = get_run_logger()
    [spec] = resolve_streams([stream])
    sink: Sink = open_sink(request.target)

    last_said = time.monotonic()

    def progress(so_far: StreamSummary) -> None:
        nonlocal last_said
        if time.monotonic() - last_said >= PROGRESS_EVERY_SECONDS:
            last_said = time.monotonic()
            logger.info("%s: %d pages, %d rows so far", stream, so_far.pages, so_far.fetched)

    try:
        sink.prepare([spec])
        with bearer.client(run_ends_at=ends_at, stop_reason=stop_reason) as client:
            results = sync_account_stream(
                client,
                sink,
                spec,
                bearer.account_id,
                request,
                on_page=progress,
                personal_data_key=personal_data_key,
            )
    except StreamSkipped as skipped:
        logger.warning("%s", skipped)
        return StreamSummary.combined(stream, bearer.account_id, [], skipped=str(skipped))
    except DinteroError as exc:
        # A resume waits its delay first (and Prefect's task runner waits for it at the run's
        # end): one that could not start within the run's budget is not asked for.
        policy = bearer.credentials.retry_policy
        longest = max(policy.stream_resume_delays(), default=0.0) * (1 + RESUME_JITTER)
        if exc.retryable and ends_at is not None and ends_at - time.time() < longest:
            raise RunBudgetExceeded(
                f"{stream} failed ({type(exc).__name__}: {exc}), and the run's budget "
                "(timeout_minutes) leaves no time to resume it; its committed pages are kept "
                "and the next run resumes"
            ) from None
        raise
    finally:
        sink.dispose()
    summary = StreamSummary.combined(stream, bearer.account_id, results)
    logger.info(
        "%s: %d pages, %d rows read: %d new, %d updated, %d unchanged (a row read twice, at a "
        "page or window edge, is stored once), in %.1f s (%d retries, %d rate limited)",
        stream,
        summary.pages,
        summary.fetched,
        summary.inserted,
        summary.updated,
        summary.unchanged,
        summary.seconds,
        summary.retries,
        summary.rate_limited,
    )
    return summary
