"""Slots of Prefect global concurrency limits, held under a lease that a thread renews.

A sync run holds its account's slot (one sync of an account at a time) and a token renewal holds
its credential's (one renewal at a time, across processes). Prefect's ``concurrency()`` context
does the same, but in a flow run here it took 0.27 s to take a slot and 0.09 s to free it (a
service thread with an event loop and a client of its own to acquire, a renewal thread that
renews at once with another client, an event-loop round trip to release): a fifth of a 1.6 s
flow run. Here a slot costs two requests on one client, about 0.02 s each.

Prefect is a remote service that can be slow, rate-limited or down, so:

- a waiter keeps one client for its whole wait and asks again after 0.5, 1, 2, 4, 8, then every
  10 s (at most 10 requests a minute), longer when a 429 or 503 says ``Retry-After``;
- the lease is renewed every ``renew_every`` seconds, and after a failed renewal again with the
  same backoff, so a lease outlives minutes of 429s and 503s when it is long enough;
- a holder knows when its lease may have run out (no renewal succeeded for the lease's length,
  less a margin, or the server said 410): :meth:`HeldSlot.holds` turns false *before* the
  server can give the slot to someone else, and the holder stops (a sync at its next page).

A holder that dies must not hold the slot for good, whatever the server. Prefect frees an
expired lease's slot only through a background service (the repossessor), which an ephemeral
server (a flow called from a script) does not run, and a restarted ``prefect server start``
forgets its leases (kept in memory by default) but not the slots they hold. So each holder
also beats: a Prefect variable named after the limit (:func:`heartbeat_name`) holds its lease's
id and is written when the slot is taken and at each renewal, and deleted when it is freed. A
waiter told the slot is taken reads it now and then; once it has not been written for the
holder's lease and a margin (or, with none written, once the waiter itself has waited that
long), the holder is dead, and the waiter frees its slot (:func:`_free_dead_holder`), then asks
again. So a dead holder blocks its account for about its lease, never for good.

Concurrency-limit events (``prefect.concurrency-limit.acquired``) are not emitted for these
slots.
"""

from __future__ import annotations

import atexit
import contextlib
import threading
import time
import uuid
import weakref
from datetime import UTC, datetime
from types import TracebackType
from typing import Any
from uuid import UUID

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.actions import (
    GlobalConcurrencyLimitCreate,
    VariableCreate,
    VariableUpdate,
)
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.settings import PREFECT_API_URL

from prefect_dintero.blocks.prefect_api import (
    Backoff,
    PrefectUnavailable,
    background,
    describe,
    is_transient,
    own_retries,
    retry_after_of,
    status_of,
)
from prefect_dintero.redact import get_logger

logger = get_logger(__name__)

#: How long a release waits for a renewal in flight before freeing the slot anyway.
RENEWAL_JOIN_SECONDS = 2.0

_held: weakref.WeakSet[HeldSlot] = weakref.WeakSet()


def heartbeat_name(limit_name: str) -> str:
    """The Prefect variable where a slot's holder beats (variable names are lower case)."""
    return f"{limit_name.lower()}-holder"[:255]


def _beat(client: SyncPrefectClient, limit_name: str, value: dict[str, Any]) -> None:
    """Write the limit's heartbeat variable (one request; two the first time)."""
    name = heartbeat_name(limit_name)
    try:
        with own_retries():
            client.update_variable(VariableUpdate(name=name, value=value))
    except Exception as exc:
        if status_of(exc) != 404 and not isinstance(exc, ObjectNotFound):
            raise
        with contextlib.suppress(ObjectAlreadyExists), own_retries():
            client.create_variable(VariableCreate(name=name, value=value))


def _read_beat(client: SyncPrefectClient, limit_name: str) -> tuple[dict | None, float | None]:
    """The heartbeat's value and its age in seconds (the server's ``updated``), or Nones."""
    with own_retries():
        variable = client.read_variable_by_name(heartbeat_name(limit_name))
    if variable is None or not isinstance(variable.value, dict) or variable.updated is None:
        return None, None
    updated = variable.updated
    if updated.tzinfo is None:
        updated = updated.replace(tzinfo=UTC)
    return variable.value, (datetime.now(UTC) - updated).total_seconds()


def lease_margin(lease: float) -> float:
    """How long before its lease may run out a holder stops counting on it: a tenth of the
    lease, at least 5 s (clocks, the server's repossessor loop, a page already in flight)."""
    return max(5.0, lease / 10)


class HeldSlot:
    """A slot taken under a lease; leaving the ``with`` block frees it.

    A daemon thread renews the lease every ``renew_every`` seconds (a third of the lease by
    default). A renewal that fails is tried again with backoff, honouring ``Retry-After``, until
    the lease may have run out; a lease the server no longer knows (410: it ran out, or someone
    freed the slot by hand) is not renewed again. Either way :meth:`holds` turns false, with the
    reason in :attr:`lost`, and a warning is logged.
    """

    def __init__(
        self,
        client: SyncPrefectClient,
        limit_name: str,
        lease_id: UUID,
        lease: float,
        renew_every: float | None = None,
        *,
        taken_at: float | None = None,
        renew: bool = True,
    ) -> None:
        self.limit_name = limit_name
        self.lease_id = lease_id
        self.lease = lease
        self.renew_every = lease / 3 if renew_every is None else renew_every
        self.renewals = 0
        self.failed_renewals = 0
        #: Why the holder may no longer hold the slot, once it may not.
        self.lost: str | None = None
        # Counted from when the request that took or renewed the lease was sent: the server's
        # clock started no earlier.
        self._valid_until = (taken_at or time.monotonic()) + lease
        self._client = client
        self._stop = threading.Event()
        self._release_lock = threading.Lock()
        # Without renewals (a short job, such as the exit's save: a thread cannot start in an
        # atexit hook on Python 3.12), the slot is the lease's, and holds() says when it ends.
        self._thread = background(self._renew, f"dintero-slot-{limit_name}") if renew else None
        _held.add(self)

    def holds_until(self) -> float:
        """The monotonic time until which the slot surely holds, as known now (later once a
        renewal succeeds)."""
        return self._valid_until - lease_margin(self.lease)

    def holds(self) -> bool:
        """Whether the lease surely still holds the slot (checked on every page of a sync)."""
        if self.lost is None and time.monotonic() >= self._valid_until - lease_margin(self.lease):
            self._lose(
                f"no renewal of its lease succeeded for {self.lease:.0f} s, so Prefect may "
                "have given the slot to another holder"
            )
        return self.lost is None

    def lost_reason(self) -> str | None:
        """None while the slot surely holds; else why it may not (for ``stop_reason``)."""
        if self.holds():
            return None
        return f"the {self.limit_name!r} slot may no longer be held: {self.lost}"

    def _lose(self, why: str) -> None:
        if self.lost is None:
            self.lost = why
            logger.warning(
                "the lease on a slot of the %r concurrency limit may be gone: %s",
                self.limit_name,
                why,
            )

    def _beat(self) -> None:
        """Say that the holder lives (see the module's docstring); a failure is only logged:
        the next renewal beats again."""
        try:
            _beat(
                self._client, self.limit_name, {"lease_id": str(self.lease_id), "lease": self.lease}
            )
        except Exception as exc:
            logger.debug("could not write the %r heartbeat (%s)", self.limit_name, describe(exc))

    def _renew(self) -> None:
        self._beat()
        wait = self.renew_every
        backoff = Backoff()
        while not self._stop.wait(wait):
            sent = time.monotonic()
            try:
                with own_retries():
                    self._client.renew_concurrency_lease(self.lease_id, lease_duration=self.lease)
            except Exception as exc:
                if self._stop.is_set():  # released meanwhile: nothing to warn about
                    return
                if status_of(exc) == 410:
                    self._lose("Prefect no longer knows it (it ran out, or was freed by hand)")
                    return
                self.failed_renewals += 1
                retry = backoff.next(retry_after_of(exc))
                if not self.holds():
                    return
                if self.failed_renewals == 1 or not is_transient(exc):
                    logger.warning(
                        "could not renew the lease on a slot of the %r concurrency limit (%s); "
                        "trying again, until its %.0f s run out",
                        self.limit_name,
                        describe(exc),
                        self.lease,
                    )
                wait = min(retry, max(0.5, self._valid_until - time.monotonic()))
                continue
            self.renewals += 1
            self._valid_until = sent + self.lease
            if self.failed_renewals:
                logger.info(
                    "renewed the lease on a slot of the %r concurrency limit after %d failed tries",
                    self.limit_name,
                    self.failed_renewals,
                )
                self.failed_renewals = 0
            backoff = Backoff()
            wait = self.renew_every
            self._beat()

    def release(self) -> None:
        """Stop renewing and free the slot. A release that fails is logged, not raised: the
        lease frees the slot when it runs out. A second call does nothing."""
        with self._release_lock:  # the end of a run and its cleanup may both call it
            if self._stop.is_set():
                return
            self._stop.set()
        if self._thread is not None:
            self._thread.join(RENEWAL_JOIN_SECONDS)
        try:
            with own_retries():
                self._client.release_concurrency_slots_with_lease(self.lease_id)
            if self._thread is not None:  # it beat: the heartbeat goes with the slot
                with contextlib.suppress(Exception), own_retries():
                    self._client.delete_variable_by_name(heartbeat_name(self.limit_name))
        except Exception as exc:
            logger.warning(
                "could not free a slot of the %r concurrency limit (%s); it frees itself "
                "within %.0f s, when its lease runs out",
                self.limit_name,
                describe(exc),
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


@atexit.register
def _free_at_exit() -> None:
    """A process that ends frees the slots it still holds (a background renewal cut short, say)
    rather than keeping them until their leases run out. Registered before the token stores'
    exit hook, so it runs after it: a save still in flight keeps its slot until it is done.
    Not with Prefect's ephemeral server (no ``PREFECT_API_URL``), which has stopped by now."""
    if not PREFECT_API_URL.value():
        return
    for held in list(_held):
        held.release()


def wait_for_slot(
    limit_name: str,
    *,
    timeout: float,
    lease: float,
    renew_every: float | None = None,
    error_grace: float | None = None,
    create_missing: int | None = None,
    cancel: threading.Event | None = None,
    renew: bool = True,
) -> HeldSlot | None:
    """A slot of the global concurrency limit ``limit_name``, asked for until ``timeout``
    seconds have passed; None if it stayed taken. A limit that does not exist is created with
    ``create_missing`` slots; without it, it holds no one back (as Prefect's
    ``concurrency(strict=False)``). Checking for the limit costs nothing: the answer to a slot's
    request names the limits it counted against, none when there is no such limit.

    One client serves the whole wait (and then the held slot). Prefect's own waiting sleeps for
    a ``Retry-After`` that grows to 30 s when several processes wait, far past the moment the
    slot frees; here the waits are 0.5, 1, 2, 4, 8, then 10 s: at most 10 requests a minute.

    Args:
        limit_name: the global concurrency limit's name.
        timeout: seconds to keep asking; 0 asks once.
        lease: seconds the slot stays held if its holder dies (at least 60: Prefect's minimum).
        renew_every: seconds between lease renewals; a third of the lease by default.
        error_grace: how long to keep asking through 429s, 5xx and network errors, in
            seconds from now; ``timeout`` by default.
        create_missing: the limit to create (its number of slots) when none exists.
        cancel: set by another thread to stop waiting (None is returned).
        renew: renew the lease while the slot is held (a thread); False for a job shorter
            than the lease.

    Raises:
        PrefectUnavailable: the Prefect API failed (429, 5xx, no answer) and its grace ran out.
    """
    deadline = time.monotonic() + timeout
    errors_until = deadline if error_grace is None else time.monotonic() + error_grace
    backoff = Backoff()
    taken = False  # a holder was seen: a timeout then means the slot stayed taken
    taken_since: float | None = None  # when this waiter first found it taken
    next_look = 0.0  # when to read the holder's heartbeat next
    client = get_client(sync_client=True)
    client.__enter__()
    handed_over = False  # once a slot is held, the held slot owns the client
    try:
        while True:
            sent = time.monotonic()
            try:
                with own_retries():
                    response = client.increment_concurrency_slots_with_lease(
                        names=[limit_name], slots=1, mode="concurrency", lease_duration=lease
                    )
            except Exception as exc:
                if status_of(exc) == 423:  # another holder has it
                    failure, taken = None, True
                    wait = backoff.next()
                    now = time.monotonic()
                    taken_since = now if taken_since is None else taken_since
                    if now >= next_look:
                        next_look = now + lease_margin(lease)
                        if _free_if_dead(client, limit_name, lease, now - taken_since):
                            backoff = Backoff()
                            continue
                elif is_transient(exc):
                    failure = exc
                    wait = backoff.next(retry_after_of(exc))
                else:
                    raise
                left = (deadline if failure is None else errors_until) - time.monotonic()
                if left <= 0:
                    if failure is not None and not taken:
                        raise PrefectUnavailable(
                            f"the Prefect API did not answer a request for a slot of the "
                            f"{limit_name!r} concurrency limit ({describe(failure)}); nothing "
                            "was sent to Dintero because of it"
                        ) from None
                    return None
                # A last try at the deadline.
                if cancel is not None and cancel.wait(min(wait, left)):
                    return None
                if cancel is None:
                    time.sleep(min(wait, left))
                continue
            granted = response.json()
            if create_missing is not None and not granted.get("limits"):
                # No such limit: the lease counts against nothing. Made, then asked again.
                with contextlib.suppress(Exception), own_retries():
                    client.release_concurrency_slots_with_lease(UUID(granted["lease_id"]))
                with contextlib.suppress(ObjectAlreadyExists), own_retries():
                    client.create_global_concurrency_limit(
                        GlobalConcurrencyLimitCreate(name=limit_name, limit=create_missing)
                    )
                create_missing = None  # made, or made by someone else meanwhile
                continue
            held = HeldSlot(
                client,
                limit_name,
                UUID(granted["lease_id"]),
                lease,
                renew_every,
                taken_at=sent,
                renew=renew,
            )
            handed_over = True
            return held
    finally:
        if not handed_over:
            client.__exit__(None, None, None)


def _free_if_dead(client: SyncPrefectClient, limit_name: str, lease: float, waited: float) -> bool:
    """Free the slot of a holder that stopped beating (killed, its machine lost), if it has;
    say whether one was freed. Never raises: a waiter that cannot tell waits on."""
    try:
        beat, age = _read_beat(client, limit_name)
        if beat is not None and beat.get("recovering"):
            return False  # another waiter is freeing it (its claim is fresh, or it is dead too)
        their_lease = float(beat.get("lease", lease)) if beat is not None else lease
        silent = age if age is not None else waited
        if silent <= their_lease + lease_margin(their_lease):
            return False
        return _free_dead_holder(client, limit_name, beat, silent)
    except Exception as exc:
        logger.debug("could not check the %r holder (%s)", limit_name, describe(exc))
        return False


#: How long a waiter that claimed a dead holder's slot waits before reading its claim back.
CLAIM_SETTLE_SECONDS = 1.0


def _free_dead_holder(
    client: SyncPrefectClient, limit_name: str, beat: dict | None, silent: float
) -> bool:
    """Free a dead holder's slot: claim the job in the heartbeat (so that other waiters see
    a fresh one and leave it), then free the dead lease if the server still knows it (which
    revokes it too, so the server's repossessor cannot free the slot a second time), else
    one slot of the limit by name (a server that forgot its leases: restarted, or an
    ephemeral one)."""
    claim = uuid.uuid4().hex
    _beat(client, limit_name, {"recovering": claim})
    time.sleep(CLAIM_SETTLE_SECONDS)
    mine, _ = _read_beat(client, limit_name)
    if mine is None or mine.get("recovering") != claim:
        return False  # another waiter claimed it after this one: it frees the slot
    dead = beat.get("lease_id") if beat is not None else None
    known = False
    if dead:
        try:
            with own_retries():
                client.renew_concurrency_lease(UUID(dead), lease_duration=60)
            known = True
        except Exception as exc:
            if status_of(exc) != 410 and not isinstance(exc, ObjectNotFound):
                raise
    with own_retries():
        if known:
            client.release_concurrency_slots_with_lease(UUID(str(dead)))
        else:
            client.release_concurrency_slots(names=[limit_name], slots=1, occupancy_seconds=silent)
    with contextlib.suppress(Exception), own_retries():
        client.delete_variable_by_name(heartbeat_name(limit_name))
    logger.warning(
        "freed the slot of the %r concurrency limit: its holder has not renewed it for %.0f s "
        "(killed, or its machine lost)",
        limit_name,
        silent,
    )
    return True
