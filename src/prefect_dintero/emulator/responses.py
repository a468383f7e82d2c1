"""What every route of the emulator shares: Dintero's error body, slow and dropped
responses, and request parsing."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from .data import to_ms

OID_RE = re.compile(r"[PT](?:[0-9]{3}|[0-9]{8})")
AID_RE = re.compile(r"[PT][0-9]{8}")
TRANSACTION_STATUSES = {
    "AUTHORIZATION_VOIDED",
    "AUTHORIZED",
    "CAPTURED",
    "DECLINED",
    "FAILED",
    "INITIATED",
    "ON_HOLD",
    "PARTIALLY_CAPTURED",
    "PARTIALLY_REFUNDED",
    "PARTIALLY_CAPTURED_REFUNDED",
    "REFUNDED",
    "UNKNOWN",
}


#: A route's handler: a request in, a response out.
Handler = Callable[[Request], Awaitable[Response]]


class DroppedConnection(Exception):
    """Raised after a partial response so the server closes the connection mid-body."""


class ApiError(Exception):
    """An error answered with Dintero's body: ``{"error": {"code", "message"}}``."""

    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def error_response(status: int, code: str, message: str, headers: dict | None = None) -> Response:
    return JSONResponse({"error": {"code": code, "message": message}}, status, headers=headers)


#: Dintero documents the error body ({"error": {"code", "message", "errors"?}},
#: https://docs.dintero.com/docs/errors) but no codes for a used code, a revoked refresh token
#: or bad client credentials. ``--error-codes generic`` answers 400/401/403 with a code and a
#: message a client cannot know, so it must classify by endpoint and status.
GENERIC_ERROR_STATUSES = (400, 401, 403)


def trickling(response: Response, interval: float) -> StreamingResponse:
    """The same response, its body sent one byte every ``interval`` seconds (headers at once).
    Starlette's streaming stops when the client goes away."""
    body = bytes(response.body)

    async def bytes_slowly():
        for i in range(len(body)):
            yield body[i : i + 1]
            await asyncio.sleep(interval)

    headers = {k: v for k, v in response.headers.items() if k.lower() != "content-length"}
    headers["content-length"] = str(len(body))
    return StreamingResponse(bytes_slowly(), response.status_code, headers=headers)


class DroppingResponse(Response):
    """Announces a full body, sends part of it, then drops the connection."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"4096")],
            }
        )
        await send({"type": "http.response.body", "body": b'[{"id": "T1234', "more_body": True})
        raise DroppedConnection


# -- parameter parsing ---------------------------------------------------------------------------


def parse_limit(request: Request, maximum: int, default: int = 10) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= maximum:
        raise ApiError(400, "BAD_REQUEST", f"limit must be an integer between 1 and {maximum}")
    return value


def parse_time(request: Request, name: str) -> int | None:
    """An ISO 8601 query parameter as epoch ms; no timezone means UTC, as Dintero documents."""
    raw = request.query_params.get(name)
    if raw is None:
        return None
    try:
        dt = datetime.fromisoformat(raw.replace("Z", "+00:00").replace(" ", "+"))
    except ValueError:
        raise ApiError(400, "BAD_REQUEST", f"{name} must be an ISO 8601 date-time") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return to_ms(dt)


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


async def json_body(request: Request) -> dict:
    try:
        body = json.loads(await request.body() or b"{}")
    except json.JSONDecodeError:
        raise ApiError(400, "BAD_REQUEST", "the request body must be JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "BAD_REQUEST", "the request body must be a JSON object")
    return body


# -- the app -------------------------------------------------------------------------------------
