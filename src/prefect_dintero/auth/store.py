"""Where tokens live between requests, and how a renewal is shared.

A store serves tokens from memory: no request waits on the store's I/O. A renewal opens a
:class:`Renewal` (``TokenStore.begin_renewal``): a store shared between processes takes its
cross-process lock there, reads the shared copy (``Renewal.latest``), and takes the renewed token
(``Renewal.commit``) into memory before it writes it back, so a renewed token is used at once and
never lost, whatever the shared copy's server does.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from types import TracebackType

from .tokens import Token

#: How many refused access tokens a store remembers (a few per renewal at most).
REJECTED_KEPT = 64


def same_token(a: Token | None, b: Token | None) -> bool:
    if a is None or b is None:
        return a is b
    return a.same_access_token(b)


def fingerprint(token: Token) -> str:
    """A one-way name for an access token, to remember it without keeping it."""
    return hashlib.sha256(token.access_token.get_secret_value().encode()).hexdigest()


class Renewal:
    """One renewal's turn with a store. Here, in memory, there is nothing to share: the latest
    token is the one held, and a commit holds the new one."""

    def __init__(self, store: TokenStore, key: str) -> None:
        self.store = store
        self.key = key

    def latest(self) -> Token | None:
        """The token to renew from: another process's renewal, if it saved one meanwhile."""
        return self.store.get(self.key)

    def still_held(self) -> bool:
        """Whether the turn is still this renewal's alone (a shared store's lease may run
        out): a renewal that lost it reads the shared copy again before refreshing."""
        return True

    def commit(self, old: Token | None, new: Token) -> None:
        """Hold ``new`` (renewed from ``old``) from now on. Never raises for the shared copy: a
        store that cannot write it now keeps trying later."""
        self.store.put(self.key, old, new)

    def end(self) -> None:
        """Leave the turn (a shared store frees its cross-process lock)."""

    def __enter__(self) -> Renewal:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.end()


class TokenStore:
    """Holds one token per credential key, in memory.

    Stores that share tokens between processes (a Prefect block) open a :class:`Renewal` that
    takes a cross-process lock and reads and writes the shared copy, and may know of a newer
    login when Dintero refuses a token (``recheck``). ``does_io`` says whether their renewals
    touch the network (an async caller then runs them in a thread).
    """

    does_io = False

    def __init__(self) -> None:
        self._rejected: OrderedDict[str, None] = OrderedDict()
        self._rejected_lock = threading.Lock()

    def get(self, key: str) -> Token | None:
        """The token held for ``key``; never waits on I/O."""
        raise NotImplementedError

    def put(self, key: str, expected: Token | None, new: Token | None) -> bool:
        """Hold ``new`` only if the token held is still ``expected``; say whether it was."""
        raise NotImplementedError

    def begin_renewal(self, key: str, *, wait: bool) -> Renewal:
        """Start a renewal's turn (held by one renewal at a time across processes, for shared
        stores).

        Args:
            key: the credential's key.
            wait: whether the caller cannot go on without the store (its token is expired): a
                shared store then waits a while for its server rather than failing at once.

        Raises:
            StoreUnavailable: the shared copy cannot be reached now.
        """
        return Renewal(self, key)

    def keep_unsaved(self, key: str, old: Token | None, new: Token) -> None:
        """Hold ``new``, renewed while the shared copy could not be reached; a shared store
        saves it once it can."""
        self.put(key, old, new)

    def recheck(self, key: str, refused: Token) -> Token | None:
        """Dintero refused ``refused`` (403): another login the shared copy holds now, if any."""
        return None

    # -- tokens Dintero refused (401) ----------------------------------------------------------

    def reject(self, key: str, token: Token) -> bool:
        """Remember that Dintero refused ``token``: it is never handed out again, from memory
        or from a shared copy that still holds it. Says whether it was news."""
        name = fingerprint(token)
        with self._rejected_lock:
            if name in self._rejected:
                return False
            self._rejected[name] = None
            while len(self._rejected) > REJECTED_KEPT:
                self._rejected.popitem(last=False)
        return True

    def is_rejected(self, token: Token) -> bool:
        with self._rejected_lock:
            return bool(self._rejected) and fingerprint(token) in self._rejected


class InMemoryTokenStore(TokenStore):
    """Tokens in this process's memory (the default, shared by every client of the process)."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._tokens: dict[str, Token] = {}

    def get(self, key: str) -> Token | None:
        return self._tokens.get(key)

    def put(self, key: str, expected: Token | None, new: Token | None) -> bool:
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
