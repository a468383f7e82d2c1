"""How many requests one account may have in flight: a limit that adapts to Dintero.

Dintero documents 429 with ``Retry-After`` and publishes no rate limit, so the limit is found by
asking: additive increase, multiplicative decrease, as TCP finds a link's capacity.

- It starts at 2 requests in flight (1 when the credentials allow only 1).
- Until it first meets a 429, a 5xx or a slow answer, each round without one doubles it
  ("slow start", as TCP's): 2, 4, 8 in two rounds, where one more a round took six rounds of
  a backfill's first second at 150 ms a page. After that, each round without one allows one
  more. A "round" is as many answers in a row as requests are allowed in flight; the limit
  never passes ``maximum`` (``max_concurrent_requests``).
  Near the level that last met a 429, it waits ``PROBE_ROUNDS`` rounds before trying one more:
  a limit found is probed now and then, not every round.
- On a 429 it halves (at least 1), and nobody sends for the ``Retry-After`` the server asked,
  capped by the caller (the credentials' ``retry_max_wait_seconds``) and by ``MAX_PAUSE``: one
  answer never freezes an account for an hour. On a 5xx it halves too. Each decrease waits a
  round before the next one, so one burst of 429s (every request in flight meets the same
  limit) halves it once.
- When answers slow down to more than four times the quickest seen (and over a second), it
  allows one fewer: a server that queues requests is a server at its limit.

One limit per account in a process (:func:`limit_for`): every stream of the account shares it,
the sequential reads included (which never hold more than one slot).

Every wait for a slot is bounded: the caller's ``check`` is asked at least every
``CHECK_EVERY`` seconds while it waits (the client's ``check_run``, which raises once the run's
budget is spent or the run must stop), so no run waits here past its own end. A slot given
back without an answer for a reason that is not the network's (the run stopped, a bug, a
cancellation) says nothing about Dintero and leaves the limit as it was.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager

from ..errors import TransientError

#: Where the limit starts.
START = 2
#: Rounds without a 429 before trying the level that last met one again.
PROBE_ROUNDS = 16
#: Slower than this many times the quickest answer (and than ``SLOW_FLOOR`` seconds): one fewer.
SLOW_FACTOR = 4.0
SLOW_FLOOR = 1.0
#: The longest pause one 429 can impose on an account, whatever its ``Retry-After`` says.
MAX_PAUSE = 300.0
#: How often a waiter asks its ``check`` whether it may still wait, seconds.
CHECK_EVERY = 0.5


class AdaptiveLimit:
    """The requests one account may have in flight.

    Examples:
        ```python
        from prefect_dintero.http.adaptive_limit import AdaptiveLimit

        limit = AdaptiveLimit(maximum=8)
        assert limit.limit == 2
        for _ in range(2):
            with limit.slot() as answer:
                answer(200, 0.15)
        assert limit.limit == 4  # a round without 429: doubled, until the first decrease
        with limit.slot() as answer:
            answer(429, 0.15, retry_after=0.0)
        assert limit.limit == 2  # halved
        ```
    """

    def __init__(self, maximum: int, start: int = START) -> None:
        self.maximum = max(1, maximum)
        self.limit = min(start, self.maximum)
        self.in_flight = 0
        self._successes = 0
        self._calm_after = 0  # answers to wait before another decrease
        self._paused_until = 0.0
        self._quickest: float | None = None
        #: The level that last met a 429 (None: none met yet, or passed since).
        self._ceiling: int | None = None
        #: Doubling per round until the first decrease (slow start).
        self._slow_start = True
        self._cond = threading.Condition()
        #: For benchmarks and tests: the highest limit reached, and the decreases made.
        self.peak = self.limit
        self.decreases = 0

    @contextmanager
    def slot(self, check: Callable[[], None] | None = None) -> Iterator[Callable[..., None]]:
        """Hold one of the account's slots for one request; call what it yields with the
        answer's status, its seconds and its ``Retry-After`` (already capped by the caller).

        ``check`` is asked while waiting for the slot; whatever it raises ends the wait. A
        slot given back without an answer counts as a dropped connection only when the
        request failed on the network (``TransientError``); otherwise nothing is learnt.
        """
        self._acquire(check)
        with self._held() as answered:
            yield answered

    @asynccontextmanager
    async def aslot(
        self, check: Callable[[], None] | None = None
    ) -> AsyncIterator[Callable[..., None]]:
        """:meth:`slot` for a coroutine: the wait for a slot sleeps without holding a thread
        (and a cancelled wait holds nothing)."""
        delay = 0.005  # a freed slot wakes no coroutine: ask again, less often as it waits
        while not self._try_acquire(check):
            await asyncio.sleep(min(CHECK_EVERY, max(delay, self.paused_for())))
            delay = min(delay * 2, 0.1)
        with self._held() as answered:
            yield answered

    @contextmanager
    def _held(self) -> Iterator[Callable[..., None]]:
        """A slot taken: given back with what its request learnt."""
        answered: list[tuple[int | None, float, float | None]] = []
        failure: BaseException | None = None
        try:
            yield lambda status, seconds, retry_after=None: answered.append(
                (status, seconds, retry_after)
            )
        except BaseException as exc:
            failure = exc
            raise
        finally:
            if answered:
                self._release(*answered[0])
            elif isinstance(failure, TransientError):
                self._release(None, 0.0, None)
            else:
                self._give_back()

    def paused_for(self) -> float:
        """Seconds every request of the account still waits for a ``Retry-After``."""
        return max(0.0, self._paused_until - time.monotonic())

    def _acquire(self, check: Callable[[], None] | None) -> None:
        with self._cond:  # re-entrant: _try_acquire takes it again
            while not self._try_acquire(check):
                wait = self._paused_until - time.monotonic()
                timeout = wait if wait > 0 else None
                if check is not None:
                    timeout = CHECK_EVERY if timeout is None else min(timeout, CHECK_EVERY)
                self._cond.wait(timeout=timeout)

    def _try_acquire(self, check: Callable[[], None] | None) -> bool:
        with self._cond:
            if check is not None:
                check()
            if self._paused_until <= time.monotonic() and self.in_flight < self.limit:
                self.in_flight += 1
                return True
            return False

    def _give_back(self) -> None:
        with self._cond:
            self.in_flight -= 1
            self._cond.notify_all()

    def _release(self, status: int | None, seconds: float, retry_after: float | None) -> None:
        with self._cond:
            self.in_flight -= 1
            if status == 429:
                if retry_after is not None and math.isfinite(retry_after) and retry_after > 0:
                    pause = min(retry_after, MAX_PAUSE)
                    self._paused_until = max(self._paused_until, time.monotonic() + pause)
                if self._calm_after == 0:
                    self._ceiling = self.limit
                self._decrease(halve=True)
            elif status is None or status >= 500:
                self._decrease(halve=True)
            else:
                if self._quickest is None or seconds < self._quickest:
                    self._quickest = seconds
                slow = seconds > max(SLOW_FLOOR, SLOW_FACTOR * (self._quickest or seconds))
                if slow:
                    self._decrease(halve=False)
                else:
                    self._calm_after = max(0, self._calm_after - 1)
                    self._successes += 1
                    near = self._ceiling is not None and self.limit + 1 >= self._ceiling
                    rounds = PROBE_ROUNDS if near else 1
                    if self._successes >= rounds * self.limit and self.limit < self.maximum:
                        step = self.limit if self._slow_start else 1
                        self.limit = min(self.maximum, self.limit + step)
                        self.peak = max(self.peak, self.limit)
                        self._successes = 0
                        if self._ceiling is not None and self.limit > self._ceiling:
                            self._ceiling = None  # more than the old level works now
            self._cond.notify_all()

    def _decrease(self, *, halve: bool) -> None:
        self._successes = 0
        self._slow_start = False
        if self._calm_after > 0:
            self._calm_after -= 1
            return  # the same burst: one decrease per round
        before = self.limit
        self.limit = max(1, before // 2 if halve else before - 1)
        # The answers to requests sent under the old limit are the same burst: not counted.
        self._calm_after = before - 1
        self.decreases += 1


_LIMITS: dict[str, AdaptiveLimit] = {}
_LIMITS_LOCK = threading.Lock()


def limit_for(account_id: str, api_url: str, maximum: int) -> AdaptiveLimit:
    """The process's one limit for an account of one API (its maximum follows the latest
    caller's)."""
    key = f"{api_url}|{account_id}"
    with _LIMITS_LOCK:
        limit = _LIMITS.get(key)
        if limit is None:
            limit = _LIMITS[key] = AdaptiveLimit(maximum)
        else:
            limit.maximum = max(1, maximum)
            limit.limit = min(limit.limit, limit.maximum)
        return limit
