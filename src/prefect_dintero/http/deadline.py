"""A total deadline for each request: connect, send, and the whole response, headers and body.

httpx's timeouts bound each socket operation, not the request: a server that sends one byte
every few seconds never trips a 30 s read timeout and can hold a request, and the flow run and
the schedule behind it, for ever. Here every socket read, write and connect of a request is
given at most the time its deadline has left:

- sync clients: the connection pool's network backend is wrapped (``install``), so each socket
  operation's timeout is cut to what the request's deadline (a context variable set around the
  request by ``request_deadline``) has left;
- async clients: the whole request runs under ``asyncio.timeout``.

Either way the request fails, at most a moment after its deadline, with ``DeadlineExceeded``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx

from ..errors import DeadlineExceeded

__all__ = [
    "DeadlineExceeded",
    "install",
    "request_deadline",
    "restart",
]

#: The default total deadline of one request, seconds (the credentials block can change it).
DEFAULT_REQUEST_DEADLINE = 60.0


@dataclass
class Deadline:
    """One request's deadline: ``seconds`` from when it (re)started."""

    seconds: float | None
    at: float | None = None
    #: The async request's ``asyncio.timeout``, moved along when the deadline restarts.
    timeout: asyncio.Timeout | None = None

    def __post_init__(self) -> None:
        self.restart()

    def restart(self) -> None:
        """Start the clock again: once the request has its token, it gets the whole deadline.
        Waiting for a token (another process's renewal, the token request and its own
        deadline) is bounded on its own."""
        if self.seconds is None:
            return
        self.at = time.monotonic() + self.seconds
        if self.timeout is not None:
            self.timeout.reschedule(asyncio.get_running_loop().time() + self.seconds)

    def remaining(self) -> float | None:
        return None if self.at is None else self.at - time.monotonic()

    def expired(self) -> bool:
        left = self.remaining()
        return left is not None and left <= 0


_deadline: ContextVar[Deadline | None] = ContextVar("dintero_request_deadline", default=None)


@contextlib.contextmanager
def request_deadline(seconds: float | None) -> Iterator[Deadline]:
    """Give the socket operations inside the block at most ``seconds`` in all."""
    deadline = Deadline(seconds)
    token = _deadline.set(deadline)
    try:
        yield deadline
    finally:
        _deadline.reset(token)


def restart() -> None:
    """Restart the current request's deadline (the auth flow calls it once it has a token)."""
    deadline = _deadline.get()
    if deadline is not None:
        deadline.restart()


def remaining() -> float | None:
    """Seconds the current request's deadline has left (None: no deadline)."""
    deadline = _deadline.get()
    return None if deadline is None else deadline.remaining()


def expired() -> bool:
    deadline = _deadline.get()
    return deadline is not None and deadline.expired()


def _bounded(timeout: float | None, error: type[Exception]) -> float | None:
    left = remaining()
    if left is None:
        return timeout
    if left <= 0:
        raise error("the request's deadline has passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _bounded(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _bounded(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        bounded = _bounded(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._stream.start_tls(ssl_context, server_hostname, bounded))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's network backend with every socket operation cut to the request's deadline."""

    def __init__(self, inner: httpcore.NetworkBackend) -> None:
        self._inner = inner

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        bounded = _bounded(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(
            self._inner.connect_tcp(host, port, bounded, local_address, socket_options)
        )

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        bounded = _bounded(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.connect_unix_socket(path, bounded, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def install(client: httpx.Client) -> httpx.Client:
    """Wrap the network backend of every connection pool of a sync client (its transport and
    the proxy mounts httpx made from the environment).

    httpx builds these pools itself and offers no way to pass a backend, so this reaches its
    ``_pool`` and httpcore's ``_network_backend``; the deadline tests fail loudly if a release
    moves them. A transport without them (a mock, a test double) is left as it is: requests
    through it still stop between chunks once the deadline passed (``read_within``).
    """
    transports = [client._transport, *client._mounts.values()]
    for transport in transports:
        pool = getattr(transport, "_pool", None)
        backend = getattr(pool, "_network_backend", None)
        if backend is not None and not isinstance(backend, DeadlineBackend):
            pool._network_backend = DeadlineBackend(backend)  # type: ignore[union-attr]
    return client


def _check_declared(response: httpx.Response, max_bytes: int) -> None:
    declared = response.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise ResponseTooLarge(int(declared), max_bytes, response.status_code)


def read_within(response: httpx.Response, max_bytes: int) -> None:
    """Read a streamed response's body, refusing one past ``max_bytes`` and stopping between
    chunks once the deadline passed (for transports whose sockets were not wrapped). The
    caller closes the response, whatever this raises."""
    _check_declared(response, max_bytes)
    chunks, size = [], 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > max_bytes:
            raise ResponseTooLarge(size, max_bytes, response.status_code)
        if expired():
            raise httpx.ReadTimeout("the request's deadline has passed")
        chunks.append(chunk)
    # What Response.read() does, with the limits above: the body is then read as usual.
    response._content = b"".join(chunks)


async def aread_within(response: httpx.Response, max_bytes: int) -> None:
    """Async form of :func:`read_within` (the deadline is ``asyncio.timeout``'s)."""
    _check_declared(response, max_bytes)
    chunks, size = [], 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > max_bytes:
            raise ResponseTooLarge(size, max_bytes, response.status_code)
        chunks.append(chunk)
    response._content = b"".join(chunks)


class ResponseTooLarge(Exception):
    """Raised while reading a body larger than the cap (turned into a clear error)."""

    def __init__(self, size: int, limit: int, status_code: int) -> None:
        super().__init__(f"{size} bytes, more than the {limit} allowed")
        self.size, self.limit, self.status_code = size, limit, status_code
