"""Token stores kept in Prefect blocks: shared by every process, renewed by one at a time.

A store serves its token from memory. A renewal runs in a slot of a Prefect global concurrency
limit named after the credential (one holder across every process and worker), re-reads the
saved token inside the slot so another process's renewal is picked up rather than repeated,
and saves the renewed token before it is handed out, so it is never lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectAlreadyExists

from prefect_dintero.blocks.slots import HeldSlot, atry_slot, try_slot
from prefect_dintero.redact import get_logger
from prefect_dintero.store import TokenStore, same_token
from prefect_dintero.tokens import Token

logger = get_logger(__name__)

# The shortest lease Prefect allows. A process killed mid-renewal holds the slot until its lease
# expires (and the server's repossessor runs): this bounds that wait at about a minute.
RENEWAL_SLOT_LEASE = 60.0
#: How often a process waiting for another's renewal asks for the slot again.
RENEWAL_POLL_SECONDS = 0.25


def _changed(old: Token | None, new: Token) -> bool:
    return old is None or not new.same_access_token(old) or new.expires_at != old.expires_at


class BlockTokenStore(TokenStore):
    """Base of the block-backed stores: memory, compare-and-swap through the block, the slot.

    Subclasses load and save their block (``_load``/``_save`` and async forms) and say what a
    waiter does when the slot stays taken (``_slot_timed_out``).
    """

    _limits_ready: set[str] = set()

    def __init__(self, limit_name: str, slot_timeout: float, token: Token | None) -> None:
        self.limit_name = limit_name
        self.slot_timeout = slot_timeout
        self._token = token
        self._lock = threading.Lock()

    # -- the block ------------------------------------------------------------------------------

    def _load(self) -> Token | None:
        raise NotImplementedError

    async def _aload(self) -> Token | None:
        raise NotImplementedError

    def _save(self, token: Token) -> None:
        raise NotImplementedError

    async def _asave(self, token: Token) -> None:
        raise NotImplementedError

    def get(self, key: str, *, reload: bool = False) -> Token | None:
        if reload:
            saved = self._load()
            with self._lock:
                self._token = saved
        return self._token

    async def aget(self, key: str, *, reload: bool = False) -> Token | None:
        if reload:
            saved = await self._aload()
            with self._lock:
                self._token = saved
        return self._token

    # -- writes ---------------------------------------------------------------------------------

    def _swap_in_memory(self, expected: Token | None, new: Token | None) -> bool:
        with self._lock:
            if not same_token(self._token, expected):
                return False
            self._token = new
            return True

    def compare_and_swap(self, key: str, expected: Token | None, new: Token | None) -> bool:
        # Saved before it is used: a renewed token, and a token Dintero refused (401), marked
        # expired, so no process takes it from the block again; every process renews instead,
        # one at a time.
        if new is not None and _changed(expected, new):
            if not same_token(self._load(), expected):
                return False
            self._save(new)
        return self._swap_in_memory(expected, new)

    async def acompare_and_swap(self, key: str, expected: Token | None, new: Token | None) -> bool:
        if new is not None and _changed(expected, new):
            if not same_token(await self._aload(), expected):
                return False
            await self._asave(new)
        return self._swap_in_memory(expected, new)

    # -- cross-process serialisation --------------------------------------------------------------

    # Prefect's upsert reads, then creates: two processes renewing at once for the first time
    # can both try to create the limit, and the second is told it exists, which is the point.

    def _ensure_limit(self) -> None:
        if self.limit_name in self._limits_ready:
            return
        with get_client(sync_client=True) as client, contextlib.suppress(ObjectAlreadyExists):
            client.upsert_global_concurrency_limit_by_name(self.limit_name, limit=1)
        self._limits_ready.add(self.limit_name)

    async def _aensure_limit(self) -> None:
        if self.limit_name in self._limits_ready:
            return
        async with get_client() as client:
            with contextlib.suppress(ObjectAlreadyExists):
                await client.upsert_global_concurrency_limit_by_name(self.limit_name, limit=1)
        self._limits_ready.add(self.limit_name)

    # Another process holding the slot is renewing this token. Prefect would make a waiter
    # sleep for the server's Retry-After, which grows to 30 s under contention, while its token
    # is expired; instead, ask for the slot without waiting, every RENEWAL_POLL_SECONDS. Inside
    # the slot the caller re-reads the block and finds the other process's renewal there.

    def _try_slot(self) -> HeldSlot | None:
        return try_slot(self.limit_name, RENEWAL_SLOT_LEASE)

    async def _atry_slot(self) -> HeldSlot | None:
        return await atry_slot(self.limit_name, RENEWAL_SLOT_LEASE)

    def _slot_timed_out(self) -> None:
        """The slot stayed taken for ``slot_timeout``: raise, or return to renew without it."""
        raise NotImplementedError

    @contextmanager
    def renewal_lock(self, key: str) -> Iterator[None]:
        self._ensure_limit()
        deadline = time.monotonic() + self.slot_timeout
        while (slot := self._try_slot()) is None:
            if time.monotonic() > deadline:
                self._slot_timed_out()
                yield  # renew without the slot
                return
            time.sleep(RENEWAL_POLL_SECONDS)
        with slot:
            yield

    @asynccontextmanager
    async def arenewal_lock(self, key: str) -> AsyncIterator[None]:
        await self._aensure_limit()
        deadline = time.monotonic() + self.slot_timeout
        while (slot := await self._atry_slot()) is None:
            if time.monotonic() > deadline:
                self._slot_timed_out()
                yield
                return
            await asyncio.sleep(RENEWAL_POLL_SECONDS)
        async with slot:
            yield
