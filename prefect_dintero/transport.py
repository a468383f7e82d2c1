"""Sending one request: HTTP settings, error mapping, counters. Retries wrap this, not pages."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from ._version import __version__
from .errors import DinteroError, Endpoint, TransientError, error_from_response
from .retry import parse_retry_after

DEFAULT_TIMEOUT = httpx.Timeout(connect=5.0, read=30.0, write=30.0, pool=30.0)
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
    if isinstance(exc, RETRYABLE_TRANSPORT):
        url = str(request.url.copy_with(query=None)) if request is not None else None
        return TransientError(
            f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__,
            method=request.method if request is not None else None,
            url=url,
        )
    raise exc


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


def send_sync(http: httpx.Client, request: httpx.Request, **kwargs: Any) -> httpx.Response:
    """One attempt: send, read, map errors. Transport errors become ``TransientError``."""
    try:
        response = http.send(request, **kwargs)
        response.read()
    except httpx.TransportError as exc:
        raise transport_error(exc, request) from exc
    return response


async def send_async(
    http: httpx.AsyncClient, request: httpx.Request, **kwargs: Any
) -> httpx.Response:
    try:
        response = await http.send(request, **kwargs)
        await response.aread()
    except httpx.TransportError as exc:
        raise transport_error(exc, request) from exc
    return response
