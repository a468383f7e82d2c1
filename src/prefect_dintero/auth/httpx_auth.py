"""``httpx.Auth`` for Dintero: Bearer header, a bounded renewal and retry on 401."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncGenerator, Generator

import httpx

from ..http import deadline
from ..http.transport import ClientStats
from .provider import TokenProvider
from .tokens import Token


def is_replayable(request: httpx.Request) -> bool:
    """Whether the request's body can be sent again (bytes and JSON can; generators can't)."""
    return isinstance(request.stream, httpx.ByteStream)


class DinteroAuth(httpx.Auth):
    """Authenticates each request with the provider's current token.

    On a 401 the rejected token is never handed out again, a token is obtained (renewed once,
    for everyone, or a newer one another process saved), and the request is retried. A token
    can be revoked between its issue and its use, so a fresh token's 401 earns another renewal,
    up to ``max_renewals``; after that the 401 is returned to the caller, which raises
    ``AuthenticationError``: never an unbounded loop. On a 403 the provider is asked once
    whether its store holds another login now (a user logged in again, with other rights); if
    so the request is retried with it. Requests whose body can't be replayed are not retried.
    """

    def __init__(
        self,
        provider: TokenProvider,
        stats: ClientStats | None = None,
        max_renewals: int = 2,
    ) -> None:
        self.provider = provider
        self.stats = stats or provider.stats
        self.max_renewals = max_renewals

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        # Renewal does I/O, which httpx forbids in the shared auth_flow; both forms below override.
        raise RuntimeError("DinteroAuth implements sync_auth_flow and async_auth_flow only")

    def _authorize(self, request: httpx.Request, token: Token) -> httpx.Request:
        request.headers["Authorization"] = f"Bearer {token.access_token.get_secret_value()}"
        deadline.restart()  # the request's deadline counts from here, not from the token wait
        return request

    def _next_step(self, response: httpx.Response, token: Token, tried: Counter[str]) -> str | None:
        """What a refused request earns: ``"renew"`` (401, at most ``max_renewals`` times),
        ``"recheck"`` (403, once) or nothing (the response goes to the caller)."""
        if response.status_code == 401 and tried["renew"] < self.max_renewals:
            tried["renew"] += 1
            self.provider.invalidate(token)
            self.stats.add(auth_retries=1)
            return "renew"
        if response.status_code == 403 and not tried["recheck"]:
            tried["recheck"] += 1
            return "recheck"
        return None

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        # Judged before sending: a transport that buffers the body would make any body
        # look replayable afterwards.
        replayable = is_replayable(request)
        token = self.provider.get_token()
        response = yield self._authorize(request, token)
        tried: Counter[str] = Counter()
        while replayable and (step := self._next_step(response, token, tried)):
            newer = self.provider.get_token() if step == "renew" else self.provider.recheck(token)
            if newer is None:
                return
            token = newer
            response = yield self._authorize(request, token)

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        replayable = is_replayable(request)
        token = await self.provider.aget_token()
        response = yield self._authorize(request, token)
        tried: Counter[str] = Counter()
        while replayable and (step := self._next_step(response, token, tried)):
            if step == "renew":
                newer: Token | None = await self.provider.aget_token()
            else:
                newer = await asyncio.to_thread(self.provider.recheck, token)
            if newer is None:
                return
            token = newer
            response = yield self._authorize(request, token)

    def __repr__(self) -> str:
        return f"DinteroAuth({self.provider!r})"
