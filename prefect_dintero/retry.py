"""Per-request retries: transient failures only, bounded, with Retry-After honoured."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TypeVar

from tenacity import AsyncRetrying, RetryCallState, Retrying, retry_if_exception, stop_after_attempt

from .errors import DeadlineExceeded, DinteroError

T = TypeVar("T")


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds to wait: delta-seconds or an HTTP date; None if unusable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
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
    return isinstance(exc, DinteroError) and exc.retryable and not isinstance(exc, DeadlineExceeded)


@dataclass(frozen=True)
class RetryPolicy:
    """How one request is retried.

    Attributes:
        max_attempts: attempts in all, the first included.
        backoff_base: seconds; attempt n waits up to ``base * 2**(n-1)`` (full jitter).
        backoff_cap: the most one backoff wait can be.
        retry_after_cap: the most a server-requested ``Retry-After`` wait can be.
        retry_after_jitter: fraction of the Retry-After wait added at most on top; small, since
            full jitter on a header wait breaks what the server asked (meltano/sdk #1477).
    """

    max_attempts: int = 6
    backoff_base: float = 0.5
    backoff_cap: float = 20.0
    retry_after_cap: float = 60.0
    retry_after_jitter: float = 0.1

    def wait_seconds(self, attempt: int, exc: BaseException | None) -> float:
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:  # 429, or 503 with Retry-After: wait what the server asked
            wait = min(retry_after, self.retry_after_cap)
            return wait + random.uniform(0, self.retry_after_jitter * max(wait, 0.5))
        return random.uniform(0, min(self.backoff_cap, self.backoff_base * 2 ** (attempt - 1)))

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        return self.wait_seconds(state.attempt_number, exc)

    def _kwargs(self, on_retry: Callable[[BaseException, float], None] | None) -> dict:
        def before_sleep(state: RetryCallState) -> None:
            if on_retry and state.outcome is not None and state.next_action is not None:
                on_retry(state.outcome.exception(), state.next_action.sleep)

        return {
            "stop": stop_after_attempt(self.max_attempts),
            "wait": self._wait,
            "retry": retry_if_exception(is_retryable),
            "reraise": True,  # callers see the real error, never tenacity's RetryError
            "before_sleep": before_sleep,
        }

    def call(
        self, fn: Callable[[], T], on_retry: Callable[[BaseException, float], None] | None = None
    ) -> T:
        """Run ``fn`` until it succeeds, fails permanently, or attempts run out."""
        for attempt in Retrying(**self._kwargs(on_retry)):
            with attempt:
                return fn()
        raise AssertionError("unreachable")  # pragma: no cover

    async def acall(
        self,
        fn: Callable[[], Awaitable[T]],
        on_retry: Callable[[BaseException, float], None] | None = None,
    ) -> T:
        async for attempt in AsyncRetrying(**self._kwargs(on_retry)):
            with attempt:
                return await fn()
        raise AssertionError("unreachable")  # pragma: no cover


NO_RETRY = RetryPolicy(max_attempts=1)
