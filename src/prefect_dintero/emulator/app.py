"""The emulator's HTTP surface: api.dintero.com and checkout.dintero.com on one origin.

Routes, shapes and errors follow Dintero's API reference (https://docs.dintero.com/api-reference,
errors: https://docs.dintero.com/docs/errors); where it is silent (list order, where a paging
token lives) the choice is written next to the route, and the README lists them.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from email.utils import format_datetime

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from ..validation import is_loopback
from .auth_server import AuthRoutes
from .control import ControlRoutes
from .faults import DATA_ROUTES, FaultAction
from .lists import ListRoutes
from .responses import (
    GENERIC_ERROR_STATUSES,
    ApiError,
    DroppingResponse,
    Handler,
    error_response,
    trickling,
)
from .world import EmulatorState

#: Where the emulator's control routes live.
CONTROL_PREFIX = "/_emulator/"


class EmulatorApp(AuthRoutes, ListRoutes, ControlRoutes):
    """Builds the Starlette app around one :class:`EmulatorState`."""

    def __init__(self, state: EmulatorState, *, allow_remote: bool = False) -> None:
        self.state = state
        self.allow_remote = allow_remote
        routes = [*self.auth_routes(), *self.list_routes(), *self.control_routes()]
        self.app = Starlette(
            routes=routes,
            exception_handlers={HTTPException: self._http_exception},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(CONTROL_PREFIX):
            refusal = self._control_refusal(scope)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _control_refusal(self, scope: Scope) -> Response | None:
        """The control routes hand out every token and change what the emulator answers, so a
        web page must not reach them through the user's browser. A page of another site that
        makes its name resolve to 127.0.0.1 (DNS rebinding) still sends its own name as Host;
        a cross-site form or ``fetch`` without a preflight can only send a form or
        ``text/plain`` body."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "")
        name = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
        if not self.allow_remote and not is_loopback(name):
            return error_response(
                403,
                "FORBIDDEN",
                "the emulator's control routes answer loopback host names only (127.0.0.1, "
                "localhost); start it with --allow-remote for a network of your own tests",
            )
        if scope["method"] in ("POST", "PUT", "PATCH", "DELETE"):
            kind = headers.get("content-type", "").split(";")[0].strip().lower()
            body_expected = scope["method"] != "DELETE"
            if body_expected and kind != "application/json":
                return error_response(
                    415,
                    "UNSUPPORTED_MEDIA_TYPE",
                    "the emulator's control routes take application/json bodies only",
                )
        return None

    async def _http_exception(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(exc.status_code, "ERROR")
        return self._error(exc.status_code, code, str(exc.detail))

    def _error(self, status: int, code: str, message: str, headers: dict | None = None) -> Response:
        """Dintero's error body; under ``error_codes="generic"`` an uninformative one."""
        if self.state.config.error_codes == "generic" and status in GENERIC_ERROR_STATUSES:
            code, message = f"E{status}", "The request could not be processed"
        return error_response(status, code, message, headers)

    def _served(self, route: str, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        """The endpoint of a Dintero route: ``handler`` behind the route's faults and counts."""

        async def endpoint(request: Request) -> Response:
            return await self._serve(route, request, handler)

        return endpoint

    async def _serve(self, route: str, request: Request, handler: Handler) -> Response:
        """Apply faults, run the handler, turn ApiError into Dintero's body, count the result."""
        self.state.in_flight[route] += 1
        peak = self.state.peak_in_flight
        peak[route] = max(peak[route], self.state.in_flight[route])
        try:
            action = self.state.faults.pick(route)
            response = await self._faulted(action, request) if action else None
            if response is None and route in DATA_ROUTES:
                response = await self._paced(request)
            if response is None:
                try:
                    response = await handler(request)
                except ApiError as exc:
                    response = self._error(exc.status, exc.code, exc.message, exc.headers)
                if action is not None and action.malformed and response.status_code == 200:
                    response = Response(b'{"items": [{"id": ', 200, media_type="application/json")
                if action is not None and action.extra_rows and response.status_code == 200:
                    response = self._with_extra_rows(route, response, action.extra_rows)
                if action is not None and action.trickle:
                    response = trickling(response, action.trickle)
                if action is not None and action.delay_response:
                    # The work is done (a token rotated, say); the client just hears late.
                    await asyncio.sleep(action.delay_response)
            dropped = isinstance(response, DroppingResponse)
            self.state.count_request(route, "dropped" if dropped else response.status_code)
            return response
        finally:
            self.state.in_flight[route] -= 1

    async def _paced(self, request: Request) -> Response | None:
        """The data routes' page latency and rate limit (``page_latency``, ``rate_limit``)."""
        config = self.state.config
        if config.rate_limit:
            key = request.path_params.get("aid") or request.headers.get("authorization", "")
            wait = self.state.rate_buckets.take(key, config.rate_limit)
            if wait:
                self.state.rate_limited_total += 1
                return self._error(
                    429,
                    "TOO_MANY_REQUESTS",
                    f"more than {config.rate_limit:g} requests a second",
                    {"Retry-After": str(max(1, math.ceil(wait)))},
                )
        if config.page_latency:
            await asyncio.sleep(config.page_latency)
        return None

    @staticmethod
    def _with_extra_rows(route: str, response: Response, extra: tuple[dict, ...]) -> Response:
        body = json.loads(bytes(response.body))
        # First in the page, so the page's last row (the next page's cursor) stays a real one.
        if isinstance(body, list):
            body = [*extra, *body]
        elif isinstance(body, dict):
            key = {
                "payout_transfers": "entries",
                "payout_destinations": "payout_destinations",
                "payout_balances": "payout_destination_balances",
            }.get(route, "items")
            body[key] = [*extra, *(body.get(key) or [])]
        return JSONResponse(body, response.status_code)

    async def _faulted(self, action: FaultAction, request: Request) -> Response | None:
        if action.latency:
            await asyncio.sleep(action.latency)
        if action.drop:
            return DroppingResponse()
        if action.status and action.echo:
            # What a debugging proxy answers: the request it got, credentials and all.
            lines = [f"{request.method} {request.url.path}?{request.url.query} HTTP/1.1"]
            lines += [f"{k}: {v}" for k, v in request.headers.items()]
            lines.append((await request.body()).decode("utf-8", "replace"))
            return error_response(action.status, "ECHO", "\n".join(lines))
        if action.status:
            headers = {}
            if action.retry_after is not None:
                if action.retry_after_format == "http-date":
                    when = datetime.now(UTC).timestamp() + float(action.retry_after)
                    headers["Retry-After"] = format_datetime(
                        datetime.fromtimestamp(when, UTC), usegmt=True
                    )
                else:
                    headers["Retry-After"] = str(action.retry_after)
            messages = {
                401: ("unauthorized", "Access forbidden, invalid JWT token was used"),
                429: ("TOO_MANY_REQUESTS", "Too many requests, slow down"),
                503: ("SERVICE_UNAVAILABLE", "Processor temporarily unavailable"),
            }
            code, message = messages.get(action.status, ("SERVER_ERROR", "Injected failure"))
            return self._error(action.status, code, message, headers)
        return None  # latency only, or malformed: answer normally, then maybe break the body
