"""Slots of Prefect global concurrency limits, held under a lease that a thread renews.

A sync run holds its account's slot (one sync of an account at a time) and a token renewal holds
its credential's (one renewal at a time, across processes). Prefect's ``concurrency()`` context
does the same, but in a flow run here it took 0.27 s to take a slot and 0.09 s to free it (a
service thread with an event loop and a client of its own to acquire, a renewal thread that
renews at once with another client, an event-loop round trip to release): a fifth of a 1.6 s
flow run. Here a slot costs two requests on the run's client, about 0.02 s each, and the lease is
renewed every third of its length.

A holder that dies holds the slot until its lease runs out (at least a minute: Prefect's
shortest lease). Concurrency-limit events (``prefect.concurrency-limit.acquired``) are not
emitted for these slots.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any
from uuid import UUID

import httpx
from prefect.client.orchestration import SyncPrefectClient, get_client

from prefect_dintero.redact import get_logger

logger = get_logger(__name__)

#: How long a release waits for a renewal in flight before freeing the slot anyway.
RENEWAL_JOIN_SECONDS = 2.0


def _status(exc: BaseException) -> int | None:
    """The HTTP status behind an error from Prefect's client, if there is one."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, httpx.HTTPStatusError):
            return cause.response.status_code
        cause = cause.__cause__
    return None


class HeldSlot:
    """A slot taken under a lease; leaving the ``with`` block frees it.

    A daemon thread renews the lease every ``renew_every`` seconds (a third of the lease by
    default: a renewal that fails, say while the Prefect server restarts, has two more chances
    before the lease runs out). A lease the server no longer knows (410: it ran out, or someone
    freed the slot by hand) is not renewed again: the holder goes on, with a warning that
    another run may take the slot.
    """

    def __init__(
        self,
        client: SyncPrefectClient,
        limit_name: str,
        lease_id: UUID,
        lease: float,
        renew_every: float | None = None,
    ) -> None:
        self.limit_name = limit_name
        self.lease_id = lease_id
        self.lease = lease
        self.renew_every = lease / 3 if renew_every is None else renew_every
        self.renewals = 0
        self._client = client
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._renew, name=f"dintero-slot-{limit_name}", daemon=True
        )
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.renew_every):
            try:
                self._client.renew_concurrency_lease(self.lease_id, lease_duration=self.lease)
                self.renewals += 1
            except Exception as exc:
                if self._stop.is_set():  # released meanwhile: nothing to warn about
                    return
                if _status(exc) == 410:
                    logger.warning(
                        "the lease on a slot of the %r concurrency limit is gone (it ran out or "
                        "was freed by hand): another holder may take the slot while this one "
                        "goes on",
                        self.limit_name,
                    )
                    return
                logger.warning(
                    "could not renew the lease on a slot of the %r concurrency limit (%s); "
                    "trying again in %.0f s, before the lease of %.0f s runs out",
                    self.limit_name,
                    type(exc).__name__,
                    self.renew_every,
                    self.lease,
                )

    def release(self) -> None:
        """Stop renewing and free the slot. A release that fails is logged, not raised: the
        lease frees the slot when it runs out. A second call does nothing."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(RENEWAL_JOIN_SECONDS)
        try:
            self._client.release_concurrency_slots_with_lease(self.lease_id)
        except Exception as exc:
            logger.warning(
                "could not free a slot of the %r concurrency limit (%s); it frees itself "
                "within %.0f s, when its lease runs out",
                self.limit_name,
                type(exc).__name__,
                self.lease,
            )
        finally:
            self._client.__exit__(None, None, None)

    def __enter__(self) -> HeldSlot:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    async def __aenter__(self) -> HeldSlot:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await asyncio.to_thread(self.release)


def try_slot(limit_name: str, lease: float, renew_every: float | None = None) -> HeldSlot | None:
    """A slot of the global concurrency limit ``limit_name`` if one is free now, else None.

    Never waits for the server's Retry-After: callers poll. A limit that does not exist holds
    no one back (as Prefect's ``concurrency(strict=False)``): the slot is granted.

    Args:
        limit_name: the global concurrency limit's name.
        lease: seconds the slot stays held if its holder dies (at least 60: Prefect's minimum).
        renew_every: seconds between lease renewals; a third of the lease by default.
    """
    client = get_client(sync_client=True)
    client.__enter__()
    try:
        response = client.increment_concurrency_slots_with_lease(
            names=[limit_name], slots=1, mode="concurrency", lease_duration=lease
        )
    except BaseException as exc:
        client.__exit__(None, None, None)
        if isinstance(exc, Exception) and _status(exc) == 423:  # another holder has it
            return None
        raise
    return HeldSlot(client, limit_name, UUID(response.json()["lease_id"]), lease, renew_every)


async def atry_slot(
    limit_name: str, lease: float, renew_every: float | None = None
) -> HeldSlot | None:
    """:func:`try_slot` from a coroutine (in a worker thread: the slot's client is a sync one,
    shared with its renewal thread); use the result with ``async with``."""
    return await asyncio.to_thread(try_slot, limit_name, lease, renew_every)


@contextmanager
def slot(limit_name: str, timeout: float, lease: float, poll: float = 0.5) -> Iterator[None]:
    """Hold a slot of a global concurrency limit, asking for it every ``poll`` seconds for at
    most ``timeout``: Prefect's own waiting sleeps for a Retry-After that grows to 30 s when
    several processes wait, far past the moment the slot frees.

    Raises:
        TimeoutError: the slot stayed taken for ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while (held := try_slot(limit_name, lease)) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the {limit_name!r} slot stayed taken for {timeout:.0f} s")
        time.sleep(poll)
    with held:
        yield
