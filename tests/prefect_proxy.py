"""A Prefect API as a worker far from Prefect Cloud sees it: slow, rate-limited, failing, counted.

Test support (beside the tests, not in the installed package): the tests and
``benchmarks/prefect_api_cost.py`` run the Prefect side through it.

Put :class:`PrefectApiProxy` in front of a real Prefect server (the test harness's, or
``prefect server start``) and point ``PREFECT_API_URL`` at it. Every request is forwarded, and
on the way:

- ``latency`` seconds are added to every HTTP request (Prefect Cloud is tens of milliseconds
  from a worker);
- ``api_per_minute`` applies a per-minute limit to API requests, as Prefect Cloud does per account
  (https://docs.prefect.io/v3/concepts/rate-limits): past it the answer is 429 with a
  ``Retry-After`` saying when a request fits again. Log lines (``POST /logs/``) and events
  (messages on the ``/events/in`` websocket) count in their own bucket, as on Cloud;
- fault rules answer chosen routes with 429 (with ``Retry-After``), 500, 503 or a dropped
  connection, for a number of requests or seconds;
- ``down()`` stops listening, so connections are refused, until ``up()``;
- every request is counted by route (``GET /block_documents/{id}``), with the 429s sent.

Examples:
    ```python
    import httpx
    from prefect_dintero.emulator import running_emulator
    from tests.prefect_proxy import running_prefect_proxy

    with running_emulator() as upstream, running_prefect_proxy(upstream.url) as proxy:
        proxy.add_fault(route="GET /_emulator/health", status=503, retry_after=1, times=1)
        assert httpx.get(f"{proxy.url}/_emulator/health").status_code == 503
        assert httpx.get(f"{proxy.url}/_emulator/health").status_code == 200
        assert proxy.counts()["routes"]["GET /_emulator/health"] == 2
    ```
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn

_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)
#: Path segments after these name an object: counted under one route.
_NAMED_AFTER = {"name", "slug"}
_HOP_BY_HOP = {
    b"host",
    b"content-length",
    b"transfer-encoding",
    b"connection",
    b"keep-alive",
    b"upgrade",
    b"accept-encoding",
}


def route_of(method: str, path: str) -> str:
    """``GET /api/block_documents/0b5e…`` → ``GET /block_documents/{id}``: one name per route."""
    parts = [p for p in path.split("/") if p]
    if parts and parts[0] == "api":
        parts = parts[1:]
    out: list[str] = []
    for i, part in enumerate(parts):
        if _UUID.match(part):
            out.append("{id}")
        elif i and parts[i - 1] in _NAMED_AFTER:
            out.append(f"{{{parts[i - 1]}}}")
        else:
            out.append(part)
    return f"{method} /" + "/".join(out)


@dataclass
class Fault:
    """Answer requests whose route matches ``route`` (a regular expression searched in
    ``"METHOD /route"``) with ``status`` (or drop the connection, or forward them ``delay``
    seconds late), ``times`` times or for ``seconds`` seconds from now, whichever ends first
    (neither: until cleared)."""

    route: str
    status: int | None = None
    retry_after: float | None = None
    drop: bool = False
    delay: float = 0.0
    times: int | None = None
    seconds: float | None = None
    started: float = field(default_factory=time.monotonic)
    used: int = 0

    def applies(self, route: str, now: float) -> bool:
        if self.times is not None and self.used >= self.times:
            return False
        if self.seconds is not None and now - self.started > self.seconds:
            return False
        return re.search(self.route, route) is not None


class _Window:
    """What was let through in the last minute, to answer 429 past a per-minute limit."""

    def __init__(self, per_minute: int | None) -> None:
        self.per_minute = per_minute
        self.times: deque[float] = deque()

    def take(self, n: int, now: float) -> float | None:
        """Count ``n`` if they fit; else the seconds until they would (nothing counted)."""
        while self.times and now - self.times[0] >= 60.0:
            self.times.popleft()
        if self.per_minute is None or len(self.times) + n <= self.per_minute:
            self.times.extend([now] * n)
            return None
        index = min(len(self.times) - 1, len(self.times) + n - self.per_minute - 1)
        return max(0.05, 60.0 - (now - self.times[index]))


class _Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.routes: Counter[str] = Counter()
        self.answered: Counter[str] = Counter()  # "429", "500", "drop", "refused"...
        self.requests = 0
        self.log_lines = 0
        self.events = 0
        self.rate_limited = 0
        self.history: deque[tuple[float, str, str]] = deque(maxlen=10_000)


class ProxyApp:
    """The ASGI app: forwards HTTP and websockets to ``upstream``, with the proxy's faults."""

    def __init__(self, upstream: str, proxy: PrefectApiProxy) -> None:
        self.upstream = upstream.rstrip("/")
        self.proxy = proxy
        #: One client per event loop: each start of the server runs a new loop.
        self._http: tuple[asyncio.AbstractEventLoop, httpx.AsyncClient] | None = None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await self._http_request(scope, receive, send)
        elif scope["type"] == "websocket":
            await self._websocket(scope, receive, send)

    async def _http_request(self, scope: dict, receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        method, path = scope["method"], scope["path"]
        route = route_of(method, path)
        proxy = self.proxy
        lines = 0
        if method == "POST" and route.endswith("/logs"):
            with contextlib.suppress(ValueError):
                parsed = json.loads(body or b"[]")
                lines = len(parsed) if isinstance(parsed, list) else 1
        if proxy.latency:
            await asyncio.sleep(proxy.latency)
        verdict = proxy._admit(route, lines)
        if verdict is not None and verdict[0] == -1:  # forwarded late
            await asyncio.sleep(verdict[1] or 0.0)
            verdict = None
        if verdict is not None:
            status, retry_after = verdict
            if status == 0:  # drop: announce a body, send none, close
                await send(
                    {
                        "type": "http.response.start",
                        "status": 200,
                        "headers": [(b"content-length", b"64")],
                    }
                )
                raise _Dropped
            headers = [(b"content-type", b"application/json")]
            if retry_after is not None:
                headers.append((b"retry-after", str(math.ceil(retry_after)).encode()))
            payload = json.dumps({"detail": f"injected {status} by the proxy"}).encode()
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": payload})
            return
        loop = asyncio.get_running_loop()
        if self._http is None or self._http[0] is not loop:
            self._http = (loop, httpx.AsyncClient(timeout=120.0))
        client = self._http[1]
        query = scope.get("query_string", b"")
        url = self.upstream + path + (("?" + query.decode()) if query else "")
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in _HOP_BY_HOP]
        try:
            response = await client.request(method, url, content=body, headers=headers)
        except httpx.TransportError:
            await send({"type": "http.response.start", "status": 502, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        out_headers = [
            (k.encode(), v.encode())
            for k, v in response.headers.multi_items()
            if k.lower().encode() not in _HOP_BY_HOP and k.lower() != "content-encoding"
        ]
        out_headers.append((b"content-length", str(len(response.content)).encode()))
        await send(
            {"type": "http.response.start", "status": response.status_code, "headers": out_headers}
        )
        await send({"type": "http.response.body", "body": response.content})

    async def _websocket(self, scope: dict, receive: Any, send: Any) -> None:
        from websockets.asyncio.client import connect

        message = await receive()
        if message["type"] != "websocket.connect":
            return
        path = scope["path"]
        query = scope.get("query_string", b"")
        url = (
            self.upstream.replace("http", "ws", 1)
            + path
            + (("?" + query.decode()) if query else "")
        )
        counts_events = path.rstrip("/").endswith("/events/in")
        # Prefect's clients ask for the "prefect" subprotocol, which changes the handshake.
        from websockets.typing import Subprotocol

        offered = [Subprotocol(p) for p in scope.get("subprotocols", [])]
        try:
            upstream = await connect(
                url, max_size=None, open_timeout=30, subprotocols=offered or None
            )
        except Exception:
            await send({"type": "websocket.close", "code": 1011})
            return
        accept: dict[str, Any] = {"type": "websocket.accept"}
        if upstream.subprotocol:
            accept["subprotocol"] = upstream.subprotocol
        await send(accept)

        async def client_to_upstream() -> None:
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    return
                data = (
                    message.get("text") if message.get("text") is not None else message.get("bytes")
                )
                if counts_events:
                    self.proxy._count_event(data)
                await upstream.send(data)

        async def upstream_to_client() -> None:
            async for data in upstream:
                key = "text" if isinstance(data, str) else "bytes"
                await send({"type": "websocket.send", key: data})

        tasks = [
            asyncio.ensure_future(client_to_upstream()),
            asyncio.ensure_future(upstream_to_client()),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            with contextlib.suppress(Exception):
                await upstream.close()
            with contextlib.suppress(Exception):
                await send({"type": "websocket.close", "code": 1000})


class _Dropped(Exception):
    """Raised after a response's start: the server closes the connection without a body."""


class _QuietDrops:
    def filter(self, record: Any) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, _Dropped)


class PrefectApiProxy:
    """A proxy in front of the Prefect API at ``upstream`` (``http://127.0.0.1:4200``, no
    ``/api``). Use :func:`running_prefect_proxy`; its ``api_url`` is what ``PREFECT_API_URL``
    takes.

    Args:
        upstream: the real server's base URL.
        latency: seconds added to every HTTP request.
        api_per_minute: API requests let through per minute (None: no limit). Prefect Cloud's
            2026 plans: 625 (Hobby), 1,250 (Starter), 2,500 (Team), 5,000 (Pro).
        logs_events_per_minute: log lines and events counted per minute; past it, log posts are
            answered 429 (events are counted, never refused).
    """

    def __init__(
        self,
        upstream: str,
        *,
        latency: float = 0.0,
        api_per_minute: int | None = None,
        logs_events_per_minute: int | None = None,
        port: int = 0,
    ) -> None:
        self.upstream = upstream.rstrip("/")
        if self.upstream.endswith("/api"):
            self.upstream = self.upstream[: -len("/api")]
        self.latency = latency
        self._lock = threading.Lock()
        self._api = _Window(api_per_minute)
        self._logs_events = _Window(logs_events_per_minute)
        self._faults: list[Fault] = []
        self._stats = _Stats()
        self._app = ProxyApp(self.upstream, self)
        self._port = port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self.url = ""

    # -- settings --------------------------------------------------------------------------------

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    def set_api_limit(self, per_minute: int | None) -> None:
        with self._lock:
            self._api = _Window(per_minute)

    def add_fault(self, route: str = ".", **fields: Any) -> Fault:
        """Add a :class:`Fault` (``route`` is a regular expression); returns it."""
        fault = Fault(route=route, **fields)
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    # -- counting ----------------------------------------------------------------------------------

    def _admit(self, route: str, log_lines: int) -> tuple[int, float | None] | None:
        """None to forward the request; else (status, Retry-After): status 0 for a drop, -1
        to forward it that many seconds late."""
        now = time.monotonic()
        stats = self._stats
        with self._lock, stats.lock:
            stats.requests += 1
            stats.routes[route] += 1
            stats.log_lines += log_lines
            for fault in self._faults:
                if fault.applies(route, now):
                    fault.used += 1
                    if fault.delay and not fault.status and not fault.drop:
                        stats.history.append((now, route, "delayed"))
                        return -1, fault.delay
                    answer = "drop" if fault.drop else str(fault.status or 503)
                    stats.answered[answer] += 1
                    stats.history.append((now, route, answer))
                    return (0, None) if fault.drop else (fault.status or 503, fault.retry_after)
            window, n = (self._logs_events, log_lines) if log_lines else (self._api, 1)
            wait = window.take(n, now)
            if wait is not None:
                stats.rate_limited += 1
                stats.answered["429"] += 1
                stats.history.append((now, route, "429"))
                return 429, wait
            stats.history.append((now, route, "forwarded"))
        return None

    def history(self, route: str = ".") -> list[tuple[float, str, str]]:
        """The last requests (up to 10,000) whose route matches ``route``: (``time.monotonic()``
        when they arrived, route, what the proxy did: ``forwarded``, ``delayed``, ``429``…)."""
        with self._stats.lock:
            return [h for h in self._stats.history if re.search(route, h[1])]

    def _count_event(self, data: Any) -> None:
        try:
            message = json.loads(data)
        except (TypeError, ValueError):
            return
        if isinstance(message, dict) and message.get("type") == "auth":
            return
        with self._lock, self._stats.lock:
            self._stats.events += 1
            self._logs_events.take(1, time.monotonic())

    def counts(self) -> dict[str, Any]:
        """Requests by route, in all, answered by the proxy (by status), log lines, events."""
        stats = self._stats
        with stats.lock:
            return {
                "requests": stats.requests,
                "routes": dict(stats.routes),
                "answered": dict(stats.answered),
                "rate_limited": stats.rate_limited,
                "log_lines": stats.log_lines,
                "events": stats.events,
            }

    def reset_counts(self) -> dict[str, Any]:
        counts = self.counts()
        with self._stats.lock:
            self._stats.reset()
        return counts

    # -- running -----------------------------------------------------------------------------------

    def start(self, timeout: float = 15.0) -> PrefectApiProxy:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(("127.0.0.1", self._port))
        sock.listen(1024)
        self._port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self._port}"
        self._sock = sock
        config = uvicorn.Config(
            self._app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            ws="websockets-sansio",
            timeout_keep_alive=30,
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [sock]},
            daemon=True,
            name=f"prefect-proxy-{self._port}",
        )
        import logging

        logging.getLogger("uvicorn.error").addFilter(_QuietDrops())
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the Prefect API proxy did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._sock is not None:
            self._sock.close()
        self._server = self._thread = self._sock = None

    def down(self) -> None:
        """Stop listening: every new connection is refused, open ones are closed."""
        self.stop()

    def up(self) -> None:
        """Listen again on the same port."""
        self.start()

    def __enter__(self) -> PrefectApiProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @contextlib.contextmanager
    def outage(self) -> Iterator[None]:
        """Refuse connections for the duration of the ``with`` block."""
        self.down()
        try:
            yield
        finally:
            self.up()


@contextlib.contextmanager
def running_prefect_proxy(upstream: str, **settings: Any) -> Iterator[PrefectApiProxy]:
    """A :class:`PrefectApiProxy` on a free loopback port for a ``with`` block."""
    proxy = PrefectApiProxy(upstream, **settings).start()
    try:
        yield proxy
    finally:
        proxy.stop()
