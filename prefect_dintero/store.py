"""Where tokens live between requests: a pluggable store with compare-and-swap."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

from .tokens import Token


def same_token(a: Token | None, b: Token | None) -> bool:
    if a is None or b is None:
        return a is b
    return a.same_access_token(b)


class TokenStore:
    """Holds one token per credential key.

    Subclasses that persist tokens (a Prefect block, a file) override ``get`` with ``reload`` to
    re-read the persisted copy, ``compare_and_swap`` to write it, and ``renewal_lock`` to
    serialise renewals across processes. The async methods default to the sync ones, which is
    right for in-memory stores.
    """

    def get(self, key: str, *, reload: bool = False) -> Token | None:
        raise NotImplementedError

    def compare_and_swap(self, key: str, expected: Token | None, new: Token | None) -> bool:
        """Store ``new`` only if the current token is still ``expected``; say whether it was."""
        raise NotImplementedError

    @contextmanager
    def renewal_lock(self, key: str) -> Iterator[None]:
        """Held around a renewal; a no-op here, the process-wide locks already serialise."""
        yield

    async def aget(self, key: str, *, reload: bool = False) -> Token | None:
        return self.get(key, reload=reload)

    async def acompare_and_swap(self, key: str, expected: Token | None, new: Token | None) -> bool:
        return self.compare_and_swap(key, expected, new)

    @asynccontextmanager
    async def arenewal_lock(self, key: str) -> AsyncIterator[None]:
        yield


class InMemoryTokenStore(TokenStore):
    """Tokens in this process's memory (the default, shared by every client of the process)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tokens: dict[str, Token] = {}

    def get(self, key: str, *, reload: bool = False) -> Token | None:
        return self._tokens.get(key)

    def compare_and_swap(self, key: str, expected: Token | None, new: Token | None) -> bool:
        with self._lock:
            if not same_token(self._tokens.get(key), expected):
                return False
            if new is None:
                self._tokens.pop(key, None)
            else:
                self._tokens[key] = new
            return True

    def clear(self) -> None:
        with self._lock:
            self._tokens.clear()

    def __repr__(self) -> str:
        return f"InMemoryTokenStore({len(self._tokens)} tokens)"


#: The process-wide default: two clients built from the same credentials share one token.
DEFAULT_STORE = InMemoryTokenStore()
