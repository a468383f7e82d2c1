"""Token stores kept in Prefect blocks: shared by every process, renewed by one at a time.

A store serves its token from memory: a request never waits on the Prefect API. A renewal runs
in a slot of a Prefect global concurrency limit named after the credential (one holder across
every process and worker) and re-reads the block inside the slot, so another process's renewal
is picked up rather than repeated.

The renewed token is held in memory first, so it is used at once, and then saved while the
slot is still held: the save applies only if the block still holds what the renewal started
from (read and written inside the slot, which a new login takes too), so a newer renewal or
login is never overwritten. It is tried once at once; a save the Prefect API refuses (429, 5xx,
no answer) is retried in the background with backoff, honouring ``Retry-After``, for up to
``SAVE_WHILE_HELD_SECONDS``; then again, slot and all, at later requests, and once more when the
process exits. The renewed token is never thrown away: with Dintero rotating single-use refresh
tokens, it is the session.

When the Prefect API does not answer a renewal, the token in memory is used while it has not
expired (said once in the log); the provider decides what happens after that.
"""

from __future__ import annotations

import atexit
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from prefect.settings import PREFECT_API_URL

from prefect_dintero import budget
from prefect_dintero.auth.provider import finish_renewals
from prefect_dintero.auth.store import Renewal, TokenStore, same_token
from prefect_dintero.auth.tokens import Token
from prefect_dintero.blocks.prefect_api import (
    Backoff,
    PrefectUnavailable,
    background,
    call,
    describe,
    is_transient,
    own_retries,
    retry_after_of,
)
from prefect_dintero.blocks.slots import HeldSlot, wait_for_slot
from prefect_dintero.redact import get_logger

logger = get_logger(__name__)

# The shortest lease Prefect allows. A process killed mid-renewal holds the slot until its lease
# expires (and the server's repossessor runs): this bounds that wait at about a minute.
RENEWAL_SLOT_LEASE = 60.0
#: How long a renewed token's save is retried while its renewal slot is held.
SAVE_WHILE_HELD_SECONDS = 30.0
#: Waits between later tries of a save that failed, at requests (the last one repeats).
SAVE_RETRY_WAITS = (5.0, 10.0, 20.0, 40.0, 60.0)
#: How long a renewal that can go on without the Prefect API (a service token's, renewed alone
#: then) waits out its failures: long enough for a blip (a busy server answers 503), short
#: enough that an unreachable API costs a request little.
QUICK_GRACE_SECONDS = 5.0
#: After the Prefect API failed a renewal, renewals use memory without asking it again for
#: this long, doubling up to the second figure while it keeps failing.
OUTAGE_PAUSE = (5.0, 60.0)
#: How long the process's exit waits for unsaved tokens to be saved.
EXIT_SAVE_SECONDS = 30.0

_stores: weakref.WeakSet[BlockTokenStore] = weakref.WeakSet()


class BlockTokenStore(TokenStore):
    """Base of the block-backed stores: memory, the renewal's slot and the block, saves that
    are never lost.

    Subclasses read and write their block (``_read``/``_write``: one attempt each, with
    Prefect's own retries off; the caller retries), name it (``label``) and say what a waiter
    does when the slot stays taken (``_slot_timed_out``).
    """

    does_io = True

    def __init__(self, limit_name: str, slot_timeout: float, token: Token | None) -> None:
        super().__init__()
        self.limit_name = limit_name
        self.slot_timeout = slot_timeout
        self._lock = threading.Lock()
        self._token = token
        #: What the block holds, as far as this process knows (the base a save compares to).
        self._base = token
        #: Whether memory holds a token the block should get.
        self._dirty = False
        self._saving = False
        self._save_tries = 0
        self._next_save_at = 0.0
        self._paused_until = 0.0
        self._pause = 0.0
        self._outage: str | None = None
        _stores.add(self)

    # -- the block: subclasses ------------------------------------------------------------------

    label = "a token"

    def _read(self) -> tuple[Any, Token | None]:
        """The block as stored (a handle for ``_write``) and the token it holds."""
        raise NotImplementedError

    def _write(self, handle: Any, token: Token) -> None:
        """Save ``token`` into the block read as ``handle`` (None: there was none)."""
        raise NotImplementedError

    def _load(self) -> Token | None:
        return self._read()[1]

    def _slot_timed_out(self) -> None:
        """The slot stayed taken for ``slot_timeout``: raise, or return to renew without it."""
        raise NotImplementedError

    def _superseded(self, saved: Token | None, mine: Token) -> None:
        """The block holds something other than what a renewal started from: it is kept."""
        logger.info(
            "%s was saved by another process while this one renewed it; that one is used",
            self.label,
        )

    def busy(self) -> bool:
        """Whether a background read of the block is running (subclasses that have one)."""
        return False

    # -- memory ------------------------------------------------------------------------------------

    def get(self, key: str) -> Token | None:
        if self._dirty and not self._saving and time.monotonic() >= self._next_save_at:
            self._in_background("save", self._save_later)
        return self._token

    def put(self, key: str, expected: Token | None, new: Token | None) -> bool:
        with self._lock:
            if not same_token(self._token, expected):
                return False
            self._token = new
            return True

    def _hold(self, new: Token) -> None:
        """Hold a renewed token: used from now on, saved to the block when it can be."""
        with self._lock:
            self._token = new
            self._dirty = True

    def _adopt(self, saved: Token | None) -> Token | None:
        """Take what the block holds into memory, unless memory holds a renewal of it that is
        not saved yet (then the block is behind, and memory is right)."""
        with self._lock:
            if self._dirty and same_token(saved, self._base):
                return self._token
            self._token = saved
            self._base = saved
            self._dirty = False
            return saved

    def keep_unsaved(self, key: str, old: Token | None, new: Token) -> None:
        self._hold(new)
        self._next_save_at = time.monotonic() + SAVE_RETRY_WAITS[0]

    # -- the Prefect API's health, as renewals see it -------------------------------------------

    def _prefect_failed(self, exc: PrefectUnavailable) -> None:
        self._pause = min(OUTAGE_PAUSE[1], max(OUTAGE_PAUSE[0], self._pause * 2))
        self._paused_until = time.monotonic() + self._pause
        if self._outage is None:
            self._outage = str(exc)
            token = self._token
            until = f", valid until {token.expires_at:%H:%M:%S} UTC" if token else ""
            logger.warning(
                "%s; %s is used from this process's memory%s until it answers",
                exc,
                self.label,
                until,
            )

    def _prefect_answered(self) -> None:
        self._pause = 0.0
        self._paused_until = 0.0
        if self._outage is not None:
            self._outage = None
            logger.info("the Prefect API answers again; %s is shared through it", self.label)

    # -- renewals ----------------------------------------------------------------------------------

    def begin_renewal(self, key: str, *, wait: bool) -> Renewal:
        now = time.monotonic()
        if not wait and now < self._paused_until and self._outage is not None:
            raise PrefectUnavailable(self._outage)
        timeout = self.slot_timeout
        left = budget.time_left()
        if left is not None:  # inside a run with a budget: no wait outlives it
            timeout = min(timeout, left)
        grace = timeout if wait else min(timeout, QUICK_GRACE_SECONDS)
        until = now + grace
        try:
            held = wait_for_slot(
                self.limit_name,
                timeout=timeout,
                lease=RENEWAL_SLOT_LEASE,
                error_grace=grace,
                create_missing=1,
            )
        except PrefectUnavailable as exc:
            self._prefect_failed(exc)
            raise
        self._prefect_answered()
        if held is None:
            self._slot_timed_out()  # raises, or returns to renew without the slot
        return BlockRenewal(self, key, held, until)

    # -- saves ---------------------------------------------------------------------------------

    def _save_if_unchanged(self) -> None:
        """Save memory's token if the block still holds the base it was renewed from (one try;
        read and write happen inside the renewal slot, which a new login takes too)."""
        with self._lock:
            token, base, dirty = self._token, self._base, self._dirty
        if not dirty or token is None:
            return
        handle, saved = self._read()
        if not same_token(saved, base):
            with self._lock:
                if self._token is token:
                    self._token, self._base, self._dirty = saved, saved, False
            self._superseded(saved, token)
            return
        self._write(handle, token)
        with self._lock:
            self._base = token
            if self._token is token:
                self._dirty = False

    def _save_while_held(
        self, held: HeldSlot | None, seconds: float, failed: BaseException | None = None
    ) -> bool:
        """Try to save until it works, ``seconds`` pass, or the slot may be lost; say whether
        memory and the block agree at the end. ``failed``: a first try's error, already met
        (its ``Retry-After`` is waited first)."""
        until = time.monotonic() + seconds
        backoff = Backoff()
        if failed is not None:
            if not is_transient(failed):
                return self._refused_save(failed)
            time.sleep(min(backoff.next(retry_after_of(failed)), seconds))
        while True:
            if held is not None and not held.holds():
                return False
            try:
                with own_retries():
                    self._save_if_unchanged()
                self._save_tries = 0
                return True
            except Exception as exc:
                if not is_transient(exc):
                    return self._refused_save(exc)
                wait = backoff.next(retry_after_of(exc))
                if time.monotonic() + wait > until:
                    if self._save_tries == 0:
                        logger.warning(
                            "could not save %s to Prefect (%s): it is used from this process's "
                            "memory, and saved as soon as the Prefect API answers",
                            self.label,
                            describe(exc),
                        )
                    return False
                time.sleep(wait)

    def _refused_save(self, exc: BaseException) -> bool:
        logger.error(
            "the Prefect API refused to save %s (%s); it is used from this process's memory, "
            "and its save is tried again later",
            self.label,
            describe(exc),
        )
        return False

    def _after_failed_save(self) -> None:
        wait = SAVE_RETRY_WAITS[min(self._save_tries, len(SAVE_RETRY_WAITS) - 1)]
        self._save_tries += 1
        self._next_save_at = time.monotonic() + wait

    def _save_renewed(self, held: HeldSlot | None, failed: BaseException) -> None:
        """The renewal's save after its first try ``failed``, in the background, then the slot
        is freed."""
        try:
            if not self._save_while_held(held, SAVE_WHILE_HELD_SECONDS, failed):
                self._after_failed_save()
        finally:
            if held is not None:
                held.release()

    def _save_later(self) -> None:
        """A save that failed before, tried again in the renewal slot (if it is free now)."""
        try:
            held = wait_for_slot(
                self.limit_name, timeout=0, lease=RENEWAL_SLOT_LEASE, create_missing=1
            )
        except Exception:
            self._after_failed_save()
            return
        if held is None:  # someone is renewing: they read the block; try again later
            self._after_failed_save()
            return
        with held:
            if not self._save_while_held(held, SAVE_WHILE_HELD_SECONDS):
                self._after_failed_save()

    def flush(self, seconds: float = EXIT_SAVE_SECONDS) -> bool:
        """Save an unsaved token now, in the renewal slot, waiting up to ``seconds``; say
        whether none is left.

        Never without the slot: the save compares the block with what the renewal started
        from and writes, two requests that only the slot makes one step (a new login takes it
        too). A slot that cannot be had leaves the token pending, said so, rather than written
        over a newer login. The slot is held without a renewal thread (the save is shorter
        than its lease; and a thread cannot start in an atexit hook on Python 3.12)."""
        if not self._dirty:
            return True
        try:
            held = wait_for_slot(
                self.limit_name,
                timeout=seconds / 2,
                lease=RENEWAL_SLOT_LEASE,
                create_missing=1,
                renew=False,
            )
        except Exception as exc:
            logger.warning(
                "could not take the renewal slot to save %s (%s): it stays unsaved",
                self.label,
                describe(exc),
            )
            return False
        if held is None:
            logger.warning(
                "the renewal slot of %s stayed taken for %.0f s (a login or a renewal in "
                "another process): the renewed token is not saved over what that one writes",
                self.label,
                seconds / 2,
            )
            return False
        with held:
            left = held.holds_until() - time.monotonic()
            return self._save_while_held(held, min(seconds / 2, left))

    def _in_background(self, name: str, job: Callable[[], None]) -> None:
        """Run ``job`` in a daemon thread unless one of this store's is running."""
        with self._lock:
            if self._saving:
                return
            self._saving = True

        def run() -> None:
            try:
                job()
            except Exception as exc:  # a background job never takes the process down
                logger.warning("%s: %s", name, describe(exc))
            finally:
                self._saving = False

        background(run, f"dintero-{name}")


class BlockRenewal(Renewal):
    """One renewal's turn: the slot, the block's latest copy, and the save."""

    def __init__(
        self, store: BlockTokenStore, key: str, held: HeldSlot | None, until: float | None
    ) -> None:
        super().__init__(store, key)
        self.block_store = store
        self.held = held
        self.until = until

    def latest(self) -> Token | None:
        store = self.block_store
        until = self.until
        if self.held is not None:
            # Its retries never outlast the slot's lease: a read that ends after another
            # process could have taken the slot is a read of what may be stale by then.
            until = (
                self.held.holds_until() if until is None else min(until, self.held.holds_until())
            )
        try:
            saved = call(store._load, until=until, what=f"a read of {store.label}")
        except PrefectUnavailable as exc:
            store._prefect_failed(exc)
            raise
        return store._adopt(saved)

    def still_held(self) -> bool:
        return self.held is None or self.held.holds()

    def commit(self, old: Token | None, new: Token) -> None:
        store = self.block_store
        if not self.still_held():
            # The lease ran out during the refresh: another process may hold the slot and be
            # writing. The new token is held and used, and saved later, in the slot.
            store.keep_unsaved(self.key, old, new)
            logger.warning(
                "the renewal slot of %s was lost while it was renewed: the new token is used "
                "from memory and saved once the slot can be had again",
                store.label,
            )
            return
        store._hold(new)
        # One try at once (a renewal's single round trip, and other processes find the token
        # in the block at their next renewal); if it fails, the tries go on in the background,
        # holding the slot, and the caller goes on with `new`.
        try:
            with own_retries():
                store._save_if_unchanged()
            return
        except Exception as exc:
            first = exc
        held, self.held = self.held, None
        with store._lock:
            store._saving = True
        background(self._save_then_free, "dintero-token-save", held, first)

    def _save_then_free(self, held: HeldSlot | None, first: BaseException) -> None:
        try:
            self.block_store._save_renewed(held, first)
        finally:
            self.block_store._saving = False

    def end(self) -> None:
        if self.held is not None:
            self.held.release()
            self.held = None


def save_pending(seconds: float = EXIT_SAVE_SECONDS) -> bool:
    """Wait until every token this process renewed is saved to its block, for at most about
    ``seconds`` each; say whether all were. A process does it when it exits; call it to read
    the block right after a renewal (a renewed token is saved in the background)."""
    # A renewal running ahead of expiry saves what it renews: let it finish first.
    finish_renewals(seconds)
    saved = True
    for store in list(_stores):
        # A save in flight holds the slot, and a check for a new login reads the block: give
        # them their time first.
        deadline = time.monotonic() + seconds
        while (store._saving or store.busy()) and time.monotonic() < deadline:
            time.sleep(0.05)
        if store._dirty and not store.flush(seconds):
            saved = False
            logger.error(
                "%s was renewed but could not be saved to Prefect; the next run renews it "
                "again (a rotated refresh token is lost with this process: log in again if "
                "that fails)",
                store.label,
            )
    return saved


@atexit.register
def _save_before_exit() -> None:
    """A renewed token not saved yet is saved before the process ends: with rotating refresh
    tokens, losing it would end the session. Not with Prefect's ephemeral server (no
    ``PREFECT_API_URL``): it has stopped by now, and a call would start another one."""
    if PREFECT_API_URL.value():
        save_pending()
