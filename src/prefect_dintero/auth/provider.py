"""Token providers: hand out a valid access token, renewing it once per credential when stale.

Renewal is single-flight per credential across every thread and coroutine of the process: one
token path (``get_token``; a coroutine runs it in a thread when a renewal is due), a lock per
credential in a process-wide registry (never on a client object, authlib #673), and the token is
re-checked after the lock is taken (airbyte-cdk #883). Stores that share tokens between
processes add a cross-process lock around the same section (a ``Renewal``).

A request never waits on the store's I/O unless its token must be renewed. When the store cannot
be reached then, the token in memory is used while it has not expired; an expired service token
is renewed alone (one more grant) and saved later; an expired session waits for the store, since
two renewals with one refresh token can end it.
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC
from typing import TypeVar

import httpx

from ..errors import (
    DinteroAPIError,
    InvalidGrantError,
    ReauthorizationRequired,
    StoreUnavailable,
)
from ..http import deadline
from ..http.transport import DEFAULT_TIMEOUT, ClientStats
from ..redact import get_logger
from .client_credentials import ClientCredentials
from .grants import (
    fetch_client_credentials_token,
    refresh_session_token,
)
from .store import DEFAULT_STORE, TokenStore
from .tokens import Token

logger = get_logger(__name__)
T = TypeVar("T")


#: Turns a renewal takes at most when its section's lease runs out while it reads.
RENEWAL_TURNS = 2


class LockRegistry:
    """Process-wide locks per credential key. Locks are never removed, so a waiter can never
    hold a lock that a newer caller replaced."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    def thread_lock(self, key: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())


LOCKS = LockRegistry()


class _Borrowed(httpx.BaseTransport):
    """A transport lent to a short-lived client: its close leaves the owner's open."""

    def __init__(self, transport: httpx.BaseTransport) -> None:
        self._transport = transport

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self._transport.handle_request(request)


#: Renewals ahead of expiry, by credential key: when the next may start (inf: one is running).
_AHEAD: dict[str, float] = {}
_AHEAD_LOCK = threading.Lock()
#: A renewal ahead that could not finish is tried again at a request this much later.
RENEW_AHEAD_RETRY_SECONDS = 10.0
_AHEAD_THREADS: set[threading.Thread] = set()
#: How long the process's exit waits for renewals ahead still running.
EXIT_WAIT_SECONDS = 30.0


def finish_renewals(seconds: float = EXIT_WAIT_SECONDS) -> None:
    """Wait, up to ``seconds`` in all, for renewals running ahead of expiry in the background.

    The process's exit does it: a renewal is one rotation of a refresh token, and a thread cut
    off at exit inside a compiled extension (pydantic's) aborts the whole process."""
    deadline = time.monotonic() + seconds
    with _AHEAD_LOCK:
        running = list(_AHEAD_THREADS)
    for thread in running:
        thread.join(max(0.0, deadline - time.monotonic()))


atexit.register(finish_renewals)


class TokenProvider:
    """Hands out a fresh token for one credential; subclasses say how to renew it."""

    def __init__(
        self,
        credentials: ClientCredentials,
        *,
        key: str,
        store: TokenStore | None = None,
        leeway: float | None = None,
        stats: ClientStats | None = None,
    ) -> None:
        self.credentials = credentials
        self.key = key
        self.store = store or DEFAULT_STORE
        self.leeway = leeway
        self.stats = stats or ClientStats()
        self.renewals = 0
        self._transport: httpx.BaseTransport | None = None

    def use_transport(self, transport: httpx.BaseTransport) -> None:
        """Send token requests through this transport (a sync client's mock or proxy)."""
        self._transport = transport

    @contextmanager
    def _sync_http(self) -> Iterator[httpx.Client | None]:
        """A client for one renewal over the borrowed transport (None: the grant functions
        open their own). Closing it leaves the transport, which is its owner's, open."""
        if self._transport is None:
            yield None
            return
        with deadline.install(
            httpx.Client(transport=_Borrowed(self._transport), timeout=DEFAULT_TIMEOUT)
        ) as http:
            yield http

    # -- subclass hooks ---------------------------------------------------------------------------

    #: Whether a token can be renewed without the store's cross-process lock when the store
    #: cannot be reached: true for service tokens (a second grant costs one request), false for
    #: sessions (two renewals with one refresh token can end the session).
    renews_alone = False

    def _usable(self, token: Token | None) -> bool:
        return (
            token is not None
            and token.is_fresh(leeway=self.leeway)
            and not self.store.is_rejected(token)
        )

    def _renew(self, current: Token | None) -> Token:
        raise NotImplementedError

    # -- the single-flight core ------------------------------------------------------------------

    def get_token(self) -> Token:
        """A token valid for at least the leeway; renews it (once, for everyone) if not."""
        token = self.store.get(self.key)
        if self._usable(token):
            assert token is not None
            return token
        if self._renews_ahead(token):
            assert token is not None
            return token
        with LOCKS.thread_lock(self.key):
            # A thread that held the lock before us may have renewed: that costs nothing to see,
            # while the store's cross-process lock and re-read can be network round trips.
            token = self.store.get(self.key)
            if self._usable(token):
                assert token is not None
                return token
            return self._renew_in_store(token)

    def _renew_in_store(self, token: Token | None) -> Token:
        """Renew ``token`` in the store's renewal section (the thread lock is held).

        A turn whose lease ran out while the shared copy was read (a slow or failing store)
        is not used to refresh: another process may hold the section by then and refresh
        with the same refresh token, and with rotating refresh tokens one of the two would be
        told to log in again. The section is taken and the copy read again, once more."""
        for _ in range(RENEWAL_TURNS):
            try:
                renewal = self.store.begin_renewal(self.key, wait=self._needs_store(token))
            except StoreUnavailable as exc:
                return self._without_store(token, exc)
            with renewal:
                try:
                    token = renewal.latest()
                except StoreUnavailable as exc:
                    return self._without_store(token, exc)
                if self._usable(token):
                    assert token is not None
                    return token
                if not renewal.still_held():
                    continue
                new = self._renew(token)
                # Held in memory first: used at once, saved by the store as soon as it can.
                renewal.commit(token, new)
            self._count()
            return new
        return self._without_store(
            token,
            StoreUnavailable(
                "the token store's renewal section was lost twice while its copy was read "
                "(the store is too slow to answer within its lease); nothing was refreshed"
            ),
        )

    def _renews_ahead(self, token: Token | None) -> bool:
        """With a store that shares tokens over the network, a token inside its renewal margin
        that has not expired is used while a background thread renews it: no request waits on
        the store (a Prefect API tens of milliseconds away, or failing). Says whether it is."""
        if not self.store.does_io or not self._usable_without_store(token):
            return False
        now = time.monotonic()
        with _AHEAD_LOCK:
            if _AHEAD.get(self.key, 0.0) > now:
                return True  # one is running, or the last one failed a moment ago
            _AHEAD[self.key] = math.inf
        # In a copy of the caller's context: a shared store talks to the server it names.
        context = contextvars.copy_context()
        thread = threading.Thread(
            target=context.run, args=(self._renew_ahead,), name="dintero-renewal", daemon=True
        )
        with _AHEAD_LOCK:
            _AHEAD_THREADS.add(thread)
        thread.start()
        return True

    def _renew_ahead(self) -> None:
        retry_at = 0.0
        renewed = self.renewals
        try:
            with LOCKS.thread_lock(self.key):
                token = self.store.get(self.key)
                if not self._usable(token):
                    self._renew_in_store(token)
            if self.renewals == renewed and not self._usable(self.store.get(self.key)):
                retry_at = time.monotonic() + RENEW_AHEAD_RETRY_SECONDS  # the store did not answer
        except Exception as exc:
            # Tried again at a later request; once the token has expired, a request renews it
            # itself and gets this error, if it persists.
            retryable = getattr(exc, "retryable", False)
            retry_at = time.monotonic() + RENEW_AHEAD_RETRY_SECONDS * (1 if retryable else 30)
            logger.warning(
                "could not renew a token ahead of its expiry (%s: %s); it is used until then",
                type(exc).__name__,
                exc,
            )
        finally:
            with _AHEAD_LOCK:
                _AHEAD[self.key] = retry_at
                _AHEAD_THREADS.discard(threading.current_thread())

    async def aget_token(self) -> Token:
        """:meth:`get_token` for coroutines. A renewal, rare, runs :meth:`get_token` in a
        thread: one token path for threads, event loops and coroutines alike, kept
        single-flight by the thread lock; the loop never waits on it."""
        token = self.store.get(self.key)
        if self._usable(token) or self._renews_ahead(token):
            assert token is not None
            return token
        return await asyncio.to_thread(self.get_token)

    def _needs_store(self, token: Token | None) -> bool:
        """Whether this renewal cannot go on without the store: a session whose token is gone
        or expired. A service token can always be asked for again."""
        if self.renews_alone:
            return False
        return token is None or token.is_expired() or self.store.is_rejected(token)

    def _usable_without_store(self, token: Token | None) -> bool:
        return token is not None and not token.is_expired() and not self.store.is_rejected(token)

    def _without_store(self, token: Token | None, exc: StoreUnavailable) -> Token:
        """The store cannot be reached: the token in memory while it lasts; then a service
        token is renewed alone (and saved when the store is back), a session waits for it."""
        if self._usable_without_store(token):
            assert token is not None
            return token
        if not self.renews_alone:
            raise exc
        new = self._renew(token)
        self.store.keep_unsaved(self.key, token, new)
        self._count()
        return new

    def _count(self) -> None:
        self.renewals += 1
        self.stats.add(token_renewals=1)

    def invalidate(self, rejected: Token) -> bool:
        """Dintero answered 401 to ``rejected``: it is never handed out again, and the next
        :meth:`get_token` renews (or takes a newer token from the store). Only memory changes:
        a shared copy is replaced by the renewal, never overwritten with a refused token.

        Returns whether this call was the first to reject it.
        """
        return self.store.reject(self.key, rejected)

    def recheck(self, refused: Token) -> Token | None:
        """Dintero answered 403 to ``refused``: another login the store holds now, if any (one
        read of the shared copy; a user may have logged in again with other rights)."""
        return self.store.recheck(self.key, refused)


class ClientCredentialsProvider(TokenProvider):
    """Service tokens: renewed by asking for a new one (no refresh token in this grant)."""

    renews_alone = True

    def __init__(
        self,
        credentials: ClientCredentials,
        *,
        store: TokenStore | None = None,
        leeway: float | None = None,
        stats: ClientStats | None = None,
    ) -> None:
        super().__init__(
            credentials, key=credentials.cache_key(), store=store, leeway=leeway, stats=stats
        )

    def _renew(self, current: Token | None) -> Token:
        logger.debug("requesting a client-credentials token for %s", self.credentials.account_id)
        with self._sync_http() as http:
            return fetch_client_credentials_token(self.credentials, http=http, stats=self.stats)

    def call_with_token(self, fn: Callable[[Token], T]) -> T:
        """Run ``fn`` with the service token; if Dintero answers 401 to it, renew once and rerun.

        The code exchange and the refresh grant are authorised by this token. A 401 there may
        mean the service token was revoked rather than that the code or refresh token is bad
        (Dintero documents no codes that tell them apart), and the bearer is checked before
        the grant, so one more attempt with a new service token spends nothing.
        """
        token = self.get_token()
        try:
            return fn(token)
        except DinteroAPIError as exc:
            if exc.status_code != 401:
                raise
            self.invalidate(token)
            logger.info("Dintero refused the service token of a token request; renewing it once")
        return fn(self.get_token())

    def __repr__(self) -> str:
        return f"ClientCredentialsProvider(account_id={self.credentials.account_id!r})"


class OIDCSessionProvider(TokenProvider):
    """A logged-in user's session: renewed with its refresh token, never by another identity.

    Args:
        credentials: the API client the user logged in through.
        session: a name for the session (the Prefect block name, or any stable id).
        initial: the session token, stored if the store holds none for this session yet. The
            token's login (``Token.identity``) is part of the key: two logins never share a
            cached token, whatever names they are given.
    """

    def __init__(
        self,
        credentials: ClientCredentials,
        session: str,
        *,
        initial: Token | None = None,
        store: TokenStore | None = None,
        service_store: TokenStore | None = None,
        leeway: float | None = None,
        stats: ClientStats | None = None,
    ) -> None:
        key_name = session if initial is None else f"{session}\x1f{initial.identity}"
        super().__init__(
            credentials,
            key=credentials.cache_key(session=key_name),
            store=store,
            leeway=leeway,
            stats=stats,
        )
        self.session = session
        self.service = ClientCredentialsProvider(credentials, store=service_store, stats=stats)
        if initial is not None and self.store.get(self.key) is None:
            self.store.put(self.key, None, initial)

    def use_transport(self, transport: httpx.BaseTransport) -> None:
        super().use_transport(transport)
        self.service.use_transport(transport)

    def _usable(self, token: Token | None) -> bool:
        if token is None or self.store.is_rejected(token):
            return False
        if token.is_fresh(leeway=self.leeway):
            return True
        # Without a refresh token a stale session is still worth using until it really expires.
        return token.refresh_token is None and not token.is_expired()

    def _reauthorize(self, current: Token | None, cause: str) -> ReauthorizationRequired:
        who = ""
        if current is not None and current.user_info is not None and current.user_info.name:
            who = f" of {current.user_info.name}"
        when = ""
        if current is not None:
            when = f" (it expired at {current.expires_at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC)"
        error = ReauthorizationRequired(
            f"The Dintero login session{who} for account {self.credentials.account_id} "
            f"{cause}{when}. Log in again: run the 'dintero_login' flow (or "
            f"'prefect-dintero login') to save a new session '{self.session}'."
        )
        error.expires_at = current.expires_at if current is not None else None
        return error

    def _check_renewable(self, current: Token | None) -> Token:
        if current is None:
            raise self._reauthorize(None, "has never been logged in")
        if current.refresh_token is None:
            raise self._reauthorize(current, "has expired and has no refresh token")
        return current

    def _renew(self, current: Token | None) -> Token:
        session = self._check_renewable(current)

        def refresh(service_token: Token) -> Token:
            with self._sync_http() as http:
                return refresh_session_token(
                    self.credentials,
                    session,
                    service_token=service_token,
                    http=http,
                    stats=self.stats,
                )

        try:
            return self.service.call_with_token(refresh)
        except InvalidGrantError as exc:
            raise self._reauthorize(session, f"could not be renewed ({exc.message})") from exc

    def __repr__(self) -> str:
        return (
            f"OIDCSessionProvider(account_id={self.credentials.account_id!r}, "
            f"session={self.session!r})"
        )
