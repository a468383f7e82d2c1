"""Every retry and resume in the package, on one page; the request policy's code below.

A failure meets these, innermost first. Each handles a different failure, and none multiplies
another's attempts:

1. **One request** (this module's :class:`RetryPolicy`, one per credential, set from the
   credentials block's ``retry_attempts`` and ``retry_max_wait_seconds``): transient failures
   only (429, 5xx, a dropped connection), with full-jitter backoff and ``Retry-After``
   honoured, for data and token requests alike. A request that used up its attempts is marked
   (``attempts_exhausted``) so a policy around it (a token request inside a data request) does
   not start over.
2. **A refused token** (``httpx_auth.DinteroAuth``): a 401 renews the token once for everyone
   and resends, at most twice; a 403 asks the token store once for a newer login. A token can
   be revoked between its issue and its use; a 401 is never retried by (1).
3. **A refused service token under a token request** (``ClientCredentialsProvider
   .call_with_token``): the code exchange and the refresh grant are authorised by the service
   token, so their 401 renews it once and sends the grant again. Dintero documents no code that
   tells a revoked service token from a bad code, and the code is only spent on success.
4. **A refused resume point** (``sync.window_reader.WindowReader``): a saved page cursor
   Dintero answers 400 to is dropped and its slice of the window read again from its start
   (the upserts dedupe). Nothing else in a window is retried there.
5. **A stream whose request ran out of attempts** (the ``sync_stream`` Prefect task's retries:
   ``RetryPolicy.stream_resumes``, twice, which the flow sets per run from the credentials):
   the stream runs again from its last committed page, so no page is read twice. Permanent
   errors (``retryable`` false: bad credentials, a used code, a malformed page) are never
   resumed. The other tasks have no retries: their requests already had (1).

A run with a budget (the sync flow's ``timeout_minutes``) bounds them all: no wait of (1) lasts
past the run's end and no attempt starts after it (``prefect_dintero.budget``, which every task
and thread of the run sees), and (5) does not resume a stream whose resume could not start
within it.

Nothing else in the package holds a retry number. The Prefect API's own calls (blocks, slots,
artifacts) retry apart from these, in ``prefect_dintero.blocks.prefect_api``.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TypeVar

from tenacity import AsyncRetrying, RetryCallState, Retrying, retry_if_exception

from .. import budget
from ..errors import DeadlineExceeded, DinteroError

T = TypeVar("T")


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds to wait: delta-seconds or an HTTP date; None if unusable.

    ``inf`` and ``nan`` are unusable (Python's ``float`` takes them; no server means them); a
    negative value or a past date is 0. What a caller waits is capped apart from this (the
    policy's ``retry_after_cap``, the run's budget).
    """
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def is_retryable(exc: BaseException) -> bool:
    """Whether one request is worth sending again: transient failures, except a deadline that
    ran out (a server that trickles would hold every attempt to the deadline)."""
    return (
        isinstance(exc, DinteroError)
        and exc.retryable
        and not isinstance(exc, DeadlineExceeded)
        and not getattr(exc, "attempts_exhausted", False)
    )


def _mark_exhausted(exc: BaseException) -> None:
    """An error that already used up a policy's attempts is not retried by another one around
    it (a token request inside a data request): attempts never multiply. The sync task may
    still resume its stream from it (``retryable`` is unchanged)."""
    if isinstance(exc, DinteroError) and exc.retryable:
        exc.attempts_exhausted = True


@dataclass(frozen=True)
class RetryPolicy:
    """How requests are retried, and streams resumed.

    Attributes:
        max_attempts: attempts per request in all, the first included.
        backoff_base: seconds; attempt n waits up to ``base * 2**(n-1)`` (full jitter).
        backoff_cap: the most one backoff wait can be.
        retry_after_cap: the most a server-requested ``Retry-After`` wait can be.
        retry_after_jitter: fraction of the Retry-After wait added at most on top; small, since
            full jitter on a header wait breaks what the server asked (meltano/sdk #1477).
        stream_resumes: how often the sync task runs a stream again after one of its requests
            ran out of attempts (a long 429 burst, an hour of 5xx). Each page is committed with
            the stream's cursor, so a resume repeats no page; other tasks are not retried, since
            their requests already were.
        stream_resume_wait: seconds before the first resume; doubled for each further one.
    """

    max_attempts: int = 6
    backoff_base: float = 0.5
    backoff_cap: float = 20.0
    retry_after_cap: float = 60.0
    retry_after_jitter: float = 0.1
    stream_resumes: int = 2
    stream_resume_wait: float = 5.0

    @classmethod
    def from_limits(cls, attempts: int, max_wait_seconds: float) -> RetryPolicy:
        """The policy a credentials block sets: attempts per request, and the longest one wait
        (a backoff or a server's Retry-After) may be."""
        return cls(
            max_attempts=attempts,
            backoff_cap=min(cls.backoff_cap, max_wait_seconds),
            retry_after_cap=max_wait_seconds,
        )

    def stream_resume_delays(self) -> list[float]:
        """The waits before each resume of a stream (for the sync task's retries)."""
        return [self.stream_resume_wait * 2**n for n in range(self.stream_resumes)]

    def wait_seconds(self, attempt: int, exc: BaseException | None) -> float:
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:  # 429, or 503 with Retry-After: wait what the server asked
            wait = min(retry_after, self.retry_after_cap)
            return wait + random.uniform(0, self.retry_after_jitter * max(wait, 0.5))
        return random.uniform(0, min(self.backoff_cap, self.backoff_base * 2 ** (attempt - 1)))

    def paced_wait(self, attempt: int, retry_after: float | None = None) -> float:
        """The wait after try ``attempt`` of a caller that paces itself (the Prefect API's
        calls): the backoff without full jitter (up to 10 % more, never less, so a rate stays
        within its bound), and at least what a ``Retry-After`` asked (capped)."""
        wait = min(self.backoff_cap, self.backoff_base * 2 ** (attempt - 1))
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.retry_after_cap))
        return wait * random.uniform(1.0, 1.1)

    def capped_retry_after(self, seconds: float | None) -> float | None:
        """A server's ``Retry-After`` as this policy would wait it (without jitter)."""
        return None if seconds is None else min(seconds, self.retry_after_cap)

    def _kwargs(
        self,
        on_retry: Callable[[BaseException, float], None] | None,
        ends_at: float | None = None,
    ) -> dict:
        # The run's end: given, or the one of the run this call is part of (a token request
        # inside a sync). No wait outlives it, and no attempt starts after it.
        ends_at = ends_at if ends_at is not None else budget.ends_at()

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            seconds = self.wait_seconds(state.attempt_number, exc)
            if ends_at is not None:
                seconds = max(0.0, min(seconds, ends_at - time.time()))
            return seconds

        def stop(state: RetryCallState) -> bool:
            if state.attempt_number >= self.max_attempts:
                return True
            return ends_at is not None and time.time() >= ends_at

        def before_sleep(state: RetryCallState) -> None:
            failure = state.outcome.exception() if state.outcome is not None else None
            if on_retry and failure is not None and state.next_action is not None:
                on_retry(failure, state.next_action.sleep)

        return {
            "stop": stop,
            "wait": wait,
            "retry": retry_if_exception(is_retryable),
            "reraise": True,  # callers see the real error, never tenacity's RetryError
            "before_sleep": before_sleep,
        }

    def call(
        self,
        fn: Callable[[], T],
        on_retry: Callable[[BaseException, float], None] | None = None,
        ends_at: float | None = None,
    ) -> T:
        """Run ``fn`` until it succeeds, fails permanently, or attempts run out; no wait
        between attempts lasts past ``ends_at`` (``time.time()``), when given."""
        try:
            for attempt in Retrying(**self._kwargs(on_retry, ends_at)):
                with attempt:
                    return fn()
        except BaseException as exc:
            _mark_exhausted(exc)
            raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def acall(
        self,
        fn: Callable[[], Awaitable[T]],
        on_retry: Callable[[BaseException, float], None] | None = None,
        ends_at: float | None = None,
    ) -> T:
        try:
            async for attempt in AsyncRetrying(**self._kwargs(on_retry, ends_at)):
                with attempt:
                    return await fn()
        except BaseException as exc:
            _mark_exhausted(exc)
            raise
        raise AssertionError("unreachable")  # pragma: no cover
