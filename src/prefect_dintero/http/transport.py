"""Sending one request: HTTP settings, error mapping, counters. Retries wrap this, not pages."""

from __future__ import annotations

import asyncio
import json
import math
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from .._version import __version__
from ..errors import (
    DeadlineExceeded,
    DinteroAPIError,
    DinteroError,
    Endpoint,
    MalformedResponseError,
    TransientError,
    error_from_response,
)
from .deadline import (
    DEFAULT_REQUEST_DEADLINE,
    ResponseTooLarge,
    aread_within,
    read_within,
    request_deadline,
)
from .retry import parse_retry_after

DEFAULT_TIMEOUT = httpx.Timeout(connect=5.0, read=30.0, write=30.0, pool=30.0)
#: The largest response body read: a page of 1,000 settlements is about 2 MB.
MAX_BODY_BYTES = 16 * 1024 * 1024
USER_AGENT = f"prefect-dintero/{__version__}"

_ssl_lock = threading.Lock()
_ssl_context: ssl.SSLContext | None = None


def ssl_context() -> ssl.SSLContext:
    """One shared verifying context: building one costs ~50 ms, too much per token request."""
    global _ssl_context
    with _ssl_lock:
        if _ssl_context is None:
            _ssl_context = httpx.create_ssl_context()
        return _ssl_context


def _finite_or_text(text: str) -> float | str:
    number = float(text)
    return number if math.isfinite(number) else text


def decode_json(content: bytes) -> Any:
    """JSON as Dintero sends it, with ``NaN``, ``Infinity`` and numbers too large for a float
    kept as the text they were: no database's JSON can hold them as numbers, and one such
    value must not fail a stream on every run.

    orjson (Prefect's own dependency) decodes pages several times faster than ``json``; it
    refuses those numbers, and only then does the slower decoder with its hooks run.
    """
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError:
        try:
            return json.loads(content, parse_constant=str, parse_float=_finite_or_text)
        except RecursionError:  # thousands of nested brackets: no Dintero page
            raise ValueError("JSON nested deeper than Python can read") from None


def default_headers(system_name: str | None = None) -> dict[str, str]:
    """The headers Dintero recommends on every request (Dintero-System-*)."""
    return {
        "User-Agent": USER_AGENT,
        "Accept": "application/json",
        "Dintero-System-Name": system_name or "prefect",
        "Dintero-System-Version": _prefect_version(),
        "Dintero-System-Plugin-Name": "prefect-dintero",
        "Dintero-System-Plugin-Version": __version__,
    }


def _prefect_version() -> str:
    # Read from the installed metadata: the core must not import Prefect itself.
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("prefect")
    except PackageNotFoundError:  # pragma: no cover - prefect is a dependency
        return "unknown"


@dataclass
class ClientStats:
    """Counters for logs and artifacts. Safe to update from many threads."""

    requests: int = 0
    retries: int = 0
    rate_limited: int = 0
    server_errors: int = 0
    transport_errors: int = 0
    auth_retries: int = 0
    token_renewals: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {
                "requests": self.requests,
                "retries": self.retries,
                "rate_limited": self.rate_limited,
                "server_errors": self.server_errors,
                "transport_errors": self.transport_errors,
                "auth_retries": self.auth_retries,
                "token_renewals": self.token_renewals,
            }


#: Network failures worth retrying: the request may not have arrived or its answer was lost.
RETRYABLE_TRANSPORT = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)


def transport_error(exc: httpx.TransportError, request: httpx.Request | None) -> DinteroError:
    """The error to raise for a failed send, in words that carry no secret.

    httpx's own errors must not travel further: "Illegal header value" quotes the header (a
    token with a line break in it), and every httpx error holds the request, Authorization
    header included, which pickling the exception would keep.
    """
    method = request.method if request is not None else None
    url = str(request.url.copy_with(query=None)) if request is not None else None
    if isinstance(exc, RETRYABLE_TRANSPORT):
        return TransientError(
            f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__,
            method=method,
            url=url,
        )
    if isinstance(exc, httpx.LocalProtocolError):
        return DinteroAPIError(
            "the request could not be sent: a header value is not valid HTTP (a token or "
            "secret with a line break or another control character in it?)",
            hint="Check the credentials block's values and log in again if a session's token "
            "is damaged",
            method=method,
            url=url,
        )
    return DinteroAPIError(f"{type(exc).__name__}: {exc}", method=method, url=url)


def check_response(
    response: httpx.Response, stats: ClientStats | None = None, *, endpoint: Endpoint = "data"
) -> httpx.Response:
    """Return a 2xx response; raise the mapped error for anything else (after reading it)."""
    if stats is not None:
        stats.add(requests=1)
    if response.is_success:
        return response
    retry_after = None
    if response.status_code in (429, 503):
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
    if stats is not None:
        if response.status_code == 429:
            stats.add(rate_limited=1)
        elif response.status_code >= 500:
            stats.add(server_errors=1)
    raise error_from_response(response, retry_after=retry_after, endpoint=endpoint)


def on_retry_counter(stats: ClientStats | None) -> Callable[[BaseException, float], None]:
    def count(exc: BaseException, wait: float) -> None:
        if stats is not None:
            stats.add(retries=1)
            if isinstance(exc, TransientError) and exc.status_code is None:
                stats.add(transport_errors=1)

    return count


def _deadline_error(request: httpx.Request, deadline: float) -> DeadlineExceeded:
    return DeadlineExceeded(
        f"no complete answer within the request's deadline of {deadline:g} s (connect, send "
        "and the whole response)",
        method=request.method,
        url=str(request.url.copy_with(query=None)),
        hint="The server is hanging or trickling its answer; the deadline is the credentials "
        "block's request_deadline_seconds",
    )


def _too_large(request: httpx.Request, exc: ResponseTooLarge) -> MalformedResponseError:
    return MalformedResponseError(
        f"the response body is {exc.size:,} bytes or more, over the {exc.limit:,} allowed",
        status_code=exc.status_code,
        method=request.method,
        url=str(request.url.copy_with(query=None)),
        hint="Nothing from it was used; a page that big is not a Dintero page",
    )


def send_sync(
    http: httpx.Client,
    request: httpx.Request,
    *,
    deadline: float | None = DEFAULT_REQUEST_DEADLINE,
    max_bytes: int = MAX_BODY_BYTES,
    **kwargs: Any,
) -> httpx.Response:
    """One attempt: send, read (within ``deadline`` seconds in all and ``max_bytes``), map
    errors. Transport errors become ``TransientError``, a deadline ``DeadlineExceeded``."""
    clock = None
    try:
        with request_deadline(deadline) as clock:
            response = http.send(request, stream=True, **kwargs)
            try:
                read_within(response, max_bytes)
            finally:
                response.close()
    except ResponseTooLarge as exc:
        raise _too_large(request, exc) from None
    except httpx.TransportError as exc:
        if deadline is not None and clock is not None and clock.expired():
            raise _deadline_error(request, deadline) from None
        raise transport_error(exc, request) from None
    return response


async def send_async(
    http: httpx.AsyncClient,
    request: httpx.Request,
    *,
    deadline: float | None = DEFAULT_REQUEST_DEADLINE,
    max_bytes: int = MAX_BODY_BYTES,
    **kwargs: Any,
) -> httpx.Response:
    """Async form of :func:`send_sync`: the deadline is an ``asyncio.timeout``."""
    try:
        async with asyncio.timeout(deadline) as timeout:
            with request_deadline(deadline) as clock:
                clock.timeout = timeout  # the auth flow restarts it once it has a token
                response = await http.send(request, stream=True, **kwargs)
                try:
                    await aread_within(response, max_bytes)
                finally:
                    await response.aclose()
    except TimeoutError:
        raise _deadline_error(request, deadline or 0) from None
    except ResponseTooLarge as exc:
        raise _too_large(request, exc) from None
    except httpx.TransportError as exc:
        raise transport_error(exc, request) from None
    return response
