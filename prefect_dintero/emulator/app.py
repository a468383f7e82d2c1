"""The emulator's HTTP surface: api.dintero.com and checkout.dintero.com on one origin.

Routes, shapes and errors follow ../shared/reference/dintero-api.md; where Dintero's docs are
silent (list order, where a paging token lives) the choice is written next to the route.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import zlib
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from .data import SortedCollection, iso, to_ms
from .faults import FaultAction, FaultConfigError
from .state import EmulatorState
from .tokens import CodeRecord, RefreshRecord

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


class EmulatorApp:
    """Builds the Starlette app around one :class:`EmulatorState`."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state
        routes = [
            Route("/v1/accounts/{oid}/auth/token", self.token, methods=["POST"]),
            Route("/v1/accounts/{oid}/auth/oidc/token", self.oidc_token, methods=["POST"]),
            Route("/oidc/authorize", self.authorize, methods=["GET"]),
            Route("/v1/transactions", self.transactions, methods=["GET"]),
            Route("/v1/sessions", self.sessions, methods=["GET"]),
            Route("/v1/accounts/{aid}/settlements", self.settlements, methods=["GET"]),
            Route("/v1/accounts/{aid}/customers/users", self.customers, methods=["GET"]),
            Route(
                "/v2/accounts/{aid}/payout/payout-destinations/{pd}/transfers",
                self.payout_transfers,
                methods=["GET"],
            ),
            Route("/_emulator/stats", self.ctl_stats, methods=["GET", "DELETE"]),
            Route("/_emulator/faults", self.ctl_faults, methods=["GET", "POST", "DELETE"]),
            Route("/_emulator/clock", self.ctl_clock, methods=["GET", "POST"]),
            Route("/_emulator/mutate", self.ctl_mutate, methods=["POST"]),
            Route("/_emulator/dump/{stream}", self.ctl_dump, methods=["GET"]),
            Route("/_emulator/issued", self.ctl_issued, methods=["GET"]),
            Route("/_emulator/health", self.ctl_health, methods=["GET"]),
        ]
        self.app = Starlette(
            routes=routes,
            exception_handlers={HTTPException: self._http_exception},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)

    async def _http_exception(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(exc.status_code, "ERROR")
        return self._error(exc.status_code, code, str(exc.detail))

    def _error(self, status: int, code: str, message: str, headers: dict | None = None) -> Response:
        """Dintero's error body; under ``error_codes="generic"`` an uninformative one."""
        if self.state.config.error_codes == "generic" and status in GENERIC_ERROR_STATUSES:
            code, message = f"E{status}", "The request could not be processed"
        return error_response(status, code, message, headers)

    async def _serve(self, route: str, request: Request, handler) -> Response:
        """Apply faults, run the handler, turn ApiError into Dintero's body, count the result."""
        self.state.in_flight[route] += 1
        try:
            action = self.state.faults.pick(route)
            response = await self._faulted(action, request) if action else None
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

    @staticmethod
    def _with_extra_rows(route: str, response: Response, extra: tuple[dict, ...]) -> Response:
        body = json.loads(bytes(response.body))
        # First in the page, so the page's last row (the next page's cursor) stays a real one.
        if isinstance(body, list):
            body = [*extra, *body]
        elif isinstance(body, dict):
            key = "entries" if route == "payout_transfers" else "items"
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

    def _audience_account(self, audience: Any, request: Request) -> str | None:
        """The account an audience names, when it is a grant of the emulator's client."""
        if not isinstance(audience, str):
            return None
        origin = f"{request.url.scheme}://{request.url.netloc}"
        for base in ("https://api.dintero.com", origin):
            prefix = f"{base}/v1/accounts/"
            if audience.startswith(prefix):
                account = audience[len(prefix) :]
                return account if account in self.state.accounts else None
        return None

    def _check_oid(self, oid: str) -> None:
        if not OID_RE.fullmatch(oid):
            raise ApiError(
                400, "BAD_REQUEST", "account id must be P or T followed by 3 or 8 digits"
            )

    def _authenticate(self, request: Request, account_id: str | None = None) -> dict:
        token = bearer_token(request)
        if token is None:
            raise ApiError(401, "unauthorized", "Missing Authorization: Bearer <token> header")
        claims, why = self.state.check_access_token(token)
        if claims is None:
            raise ApiError(401, "unauthorized", why)
        if account_id is not None and claims.get("account_id") != account_id:
            raise ApiError(403, "forbidden", f"the token does not grant access to {account_id}")
        return claims

    def _account(self, request: Request) -> tuple[str, Any]:
        aid = request.path_params["aid"]
        if not AID_RE.fullmatch(aid):
            raise ApiError(400, "BAD_REQUEST", "account id must be P or T followed by 8 digits")
        self._authenticate(request, aid)
        if aid not in self.state.accounts:
            raise ApiError(404, "NOT_FOUND", f"account {aid} not found")
        return aid, self.state.accounts[aid]

    # -- auth ----------------------------------------------------------------------------------

    async def token(self, request: Request) -> Response:
        return await self._serve("token", request, self._token)

    async def _token(self, request: Request) -> Response:
        oid = request.path_params["oid"]
        self._check_oid(oid)
        body = await json_body(request)
        grant = body.get("grant_type")
        if grant == "client_credentials":
            return self._client_credentials(request, oid, body)
        if grant == "refresh_token":
            return self._refresh(request, oid, body)
        self.state.token_grant_failures[str(grant)] += 1
        raise ApiError(400, "unsupported_grant_type", f"grant_type {grant!r} is not supported here")

    def _client_credentials(self, request: Request, oid: str, body: dict) -> Response:
        state = self.state
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        try:
            user, _, password = base64.b64decode(encoded).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            user = password = ""
        if scheme.lower() != "basic" or not user:
            state.token_grant_failures["client_credentials"] += 1
            raise ApiError(401, "unauthorized", "client credentials need HTTP Basic authentication")
        if user != state.config.client_id or password != state.config.client_secret:
            state.token_grant_failures["client_credentials"] += 1
            raise ApiError(401, "unauthorized", "Invalid client credentials")
        audience = body.get("audience")
        account = self._audience_account(audience, request)
        if account is None or (account != oid and oid in state.accounts):
            state.token_grant_failures["client_credentials"] += 1
            raise ApiError(
                403, "forbidden", "The audience is not a grant associated with the client"
            )
        token, lifetime = state.issue_access_token(
            client_id=user,
            account_id=account,
            audience=audience,
            sub=user,
            grant="client-credentials",
        )
        state.token_grants["client_credentials"] += 1
        return JSONResponse({"access_token": token, "token_type": "Bearer", "expires_in": lifetime})

    def _service_claims(self, request: Request) -> dict:
        """The client-credentials token that must authorise OIDC and refresh grants."""
        claims = self._authenticate(request)
        if claims.get("gty") != "client-credentials":
            raise ApiError(403, "forbidden", "a client-credentials access token is required")
        return claims

    def _refresh(self, request: Request, oid: str, body: dict) -> Response:
        state = self.state
        try:
            service = self._service_claims(request)
        except ApiError:
            state.token_grant_failures["refresh_token"] += 1
            raise
        raw = body.get("refresh_token")
        with state.lock:
            record = state.refresh_tokens.get(raw) if isinstance(raw, str) else None
            problem = None
            if record is None:
                problem = "The refresh token is invalid"
            elif record.revoked and not self._within_reuse_interval(record):
                problem = "The refresh token has been revoked or already used"
            elif record.expires_at <= state.clock.timestamp():
                problem = "The refresh token has expired"
            elif record.client_id != service["client_id"]:
                problem = "The refresh token was issued to another client"
            if problem:
                state.token_grant_failures["refresh_token"] += 1
                raise ApiError(400, "invalid_grant", problem)
            assert record is not None
            token, lifetime = state.issue_access_token(
                client_id=record.client_id,
                account_id=record.account_id,
                audience=record.audience,
                sub=record.sub,
                grant="authorization_code",
            )
            payload: dict[str, Any] = {
                "access_token": token,
                "token_type": "Bearer",
                "expires_in": lifetime,
            }
            if state.config.rotate_refresh_tokens:
                if not record.revoked:
                    record.revoked = True
                    record.rotated_at = state.clock.timestamp()
                payload["refresh_token"] = state.issue_refresh_token(
                    RefreshRecord(
                        client_id=record.client_id,
                        account_id=record.account_id,
                        audience=record.audience,
                        sub=record.sub,
                        user_info=record.user_info,
                        expires_at=state.clock.timestamp() + state.config.refresh_token_lifetime,
                    )
                )
            state.token_grants["refresh_token"] += 1
        return JSONResponse(payload)

    def _within_reuse_interval(self, record: RefreshRecord) -> bool:
        interval = self.state.config.refresh_token_reuse_interval
        return (
            record.rotated_at is not None
            and self.state.clock.timestamp() - record.rotated_at <= interval
        )

    async def oidc_token(self, request: Request) -> Response:
        return await self._serve("oidc_token", request, self._oidc_token)

    async def _oidc_token(self, request: Request) -> Response:
        state = self.state
        oid = request.path_params["oid"]
        self._check_oid(oid)
        try:
            service = self._service_claims(request)
            body = await json_body(request)
            if body.get("grant_type") != "authorization_code":
                raise ApiError(400, "BAD_REQUEST", "grant_type must be authorization_code")
            missing = [f for f in ("code", "client_id", "audience") if not body.get(f)]
            if missing:
                raise ApiError(400, "BAD_REQUEST", f"missing required fields: {', '.join(missing)}")
            if body["client_id"] != service["client_id"]:
                raise ApiError(
                    403, "forbidden", "client_id does not match the bearer token's client"
                )
            account = self._audience_account(body["audience"], request)
            if account is None:
                raise ApiError(
                    400,
                    "BAD_REQUEST",
                    "audience must be a grant of the client that has oidc configured",
                )
            with state.lock:
                record = state.codes.get(body["code"])
                if record is None:
                    raise ApiError(400, "invalid_grant", "The authorization code is invalid")
                if record.used:
                    raise ApiError(
                        400, "invalid_grant", "The authorization code has already been used"
                    )
                if record.expires_at <= state.clock.timestamp():
                    raise ApiError(400, "invalid_grant", "The authorization code has expired")
                if record.client_id != body["client_id"]:
                    raise ApiError(
                        400, "invalid_grant", "The authorization code belongs to another client"
                    )
                redirect_uri = body.get("redirect_uri")
                if redirect_uri is not None and redirect_uri != record.redirect_uri:
                    raise ApiError(
                        400,
                        "invalid_grant",
                        "redirect_uri does not match the one used to authorize",
                    )
                record.used = True
        except ApiError:
            state.token_grant_failures["authorization_code"] += 1
            raise
        user = state.config.user
        user_info = {"authority": user.authority, "value": {"sub": user.sub, "name": user.name}}
        token, lifetime = state.issue_access_token(
            client_id=body["client_id"],
            account_id=account,
            audience=body["audience"],
            sub=user.sub,
            grant="authorization_code",
        )
        payload: dict[str, Any] = {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": lifetime,
            "user_info": user_info,
        }
        if state.config.refresh_tokens:
            payload["refresh_token"] = state.issue_refresh_token(
                RefreshRecord(
                    client_id=body["client_id"],
                    account_id=account,
                    audience=body["audience"],
                    sub=user.sub,
                    user_info=user_info,
                    expires_at=state.clock.timestamp() + state.config.refresh_token_lifetime,
                )
            )
        state.token_grants["authorization_code"] += 1
        return JSONResponse(payload)

    async def authorize(self, request: Request) -> Response:
        return await self._serve("authorize", request, self._authorize)

    async def _authorize(self, request: Request) -> Response:
        """The simulated identity provider: logs the test user in at once and redirects."""
        q = request.query_params
        if q.get("response_type") != "code":
            raise ApiError(400, "unsupported_response_type", "response_type must be code")
        if q.get("client_id") != self.state.config.client_id:
            raise ApiError(400, "invalid_client", "unknown client_id")
        redirect_uri = q.get("redirect_uri", "")
        if redirect_uri not in self.state.config.redirect_uris:
            # Like a real IdP, never redirect to an address that was not registered.
            raise ApiError(400, "invalid_request", "redirect_uri is not registered for this client")
        if "openid" not in q.get("scope", "").split():
            raise ApiError(400, "invalid_scope", "scope must include openid")
        state_param = q.get("state")
        code = self.state.issue_code(
            CodeRecord(
                client_id=q["client_id"],
                redirect_uri=redirect_uri,
                state=state_param,
                expires_at=self.state.clock.timestamp() + self.state.config.code_lifetime,
            )
        )
        parts = urlsplit(redirect_uri)
        extra = {"code": code, **({"state": state_param} if state_param is not None else {})}
        query = f"{parts.query}&{urlencode(extra)}" if parts.query else urlencode(extra)
        return RedirectResponse(urlunsplit(parts._replace(query=query)), status_code=302)

    # -- data ----------------------------------------------------------------------------------

    async def transactions(self, request: Request) -> Response:
        return await self._serve("transactions", request, self._transactions)

    async def _transactions(self, request: Request) -> Response:
        claims = self._authenticate(request)
        data = self.state.accounts[claims["account_id"]]
        statuses = request.query_params.getlist("status")
        unknown = set(statuses) - TRANSACTION_STATUSES
        if unknown:
            raise ApiError(400, "BAD_REQUEST", f"unknown status: {', '.join(sorted(unknown))}")
        return self._list_checkout(request, data.transactions, set(statuses))

    async def sessions(self, request: Request) -> Response:
        return await self._serve("sessions", request, self._sessions)

    async def _sessions(self, request: Request) -> Response:
        claims = self._authenticate(request)
        return self._list_checkout(request, self.state.accounts[claims["account_id"]].sessions)

    # -- paging helpers -------------------------------------------------------------------------

    @property
    def _order(self) -> str:
        return self.state.config.list_order

    def _page_size(self, request: Request, limit: int) -> int:
        """The rows this page holds: ``limit``, or under ``short_pages`` a stable 1..limit."""
        if not self.state.config.short_pages or limit <= 1:
            return limit
        marker = f"{request.url.path}?{request.url.query}".encode()
        return 1 + zlib.crc32(marker) % limit

    @staticmethod
    def _page(collection: SortedCollection, **kwargs: Any) -> list[dict]:
        try:
            return collection.page(**kwargs)
        except KeyError:
            raise ApiError(
                400, "BAD_REQUEST", "starting_after refers to an unknown object"
            ) from None

    def _optional(self, body: dict[str, Any], key: str, value: Any) -> None:
        """Set an optional key of an envelope, or leave it out (``omit_optional_keys``)."""
        if value or not self.state.config.omit_optional_keys:
            body[key] = value

    # -- data routes ------------------------------------------------------------------------------

    def _list_checkout(
        self, request: Request, collection: SortedCollection, statuses: set[str] | None = None
    ) -> Response:
        """A bare array paged by ``starting_after=<id of the last object>``. Dintero documents
        neither the order nor when a page is the last (``list_order``, ``short_pages``)."""
        limit = self._page_size(request, parse_limit(request, 100))
        gte, lte = parse_time(request, "created_at.gte"), parse_time(request, "created_at.lte")
        after = request.query_params.get("starting_after")
        window = dict(order=self._order, gte_ms=gte, lte_ms=lte)
        if not statuses:
            page = self._page(collection, limit=limit, after_id=after, **window)
        else:
            page = []
            while len(page) < limit:
                chunk = self._page(collection, limit=limit * 4, after_id=after, **window)
                if not chunk:
                    break
                page.extend(o for o in chunk if o["status"] in statuses)
                after = chunk[-1]["id"]
            page = page[:limit]
        return JSONResponse(page)

    async def settlements(self, request: Request) -> Response:
        return await self._serve("settlements", request, self._settlements)

    async def _settlements(self, request: Request) -> Response:
        """``{items, last_evaluated_key}``; the order is undocumented (``list_order``)."""
        aid, data = self._account(request)
        q = request.query_params
        limit = self._page_size(request, parse_limit(request, 1000))
        by_created = any(k.startswith("item_created_at.") for k in q)
        if by_created and any(k.startswith("created_at.") for k in q):
            raise ApiError(
                400, "BAD_REQUEST", "item_created_at.* cannot be combined with created_at.*"
            )
        prefix = "item_created_at" if by_created else "created_at"
        gte, lte = parse_time(request, f"{prefix}.gte"), parse_time(request, f"{prefix}.lte")
        after_id, after_date = q.get("starting_after_id"), q.get("starting_after_date")
        if (after_id is None) != (after_date is None):
            raise ApiError(
                400,
                "BAD_REQUEST",
                "starting_after_id and starting_after_date must be used together",
            )
        if after_id is not None:
            parse_time(request, "starting_after_date")
        collection = data.settlements_by_created if by_created else data.settlements_by_settled
        rows = self._page(
            collection,
            order=self._order,
            limit=limit + 1,
            gte_ms=gte,
            lte_ms=lte,
            after_id=after_id,
        )
        body: dict[str, Any] = {}
        self._optional(body, "items", rows[:limit])
        key = None
        if len(rows) > limit:
            last = rows[limit - 1]
            key = {
                "id": last["id"],
                "account_id": aid,
                "settled_at": last["settled_at"],
                "created_at": last["created_at"],
            }
        self._optional(body, "last_evaluated_key", key)
        return JSONResponse(body)

    async def customers(self, request: Request) -> Response:
        return await self._serve("customers", request, self._customers)

    async def _customers(self, request: Request) -> Response:
        """A bare array. With ``since_datetime``: the earliest ``limit`` customers updated at or
        after it (after it under ``since_exclusive``), which is what Dintero's documented way of
        paging ("update since_datetime to the latest updated_at value found in the result")
        needs; the order within the page is undocumented. Without it: every customer in an
        undocumented order, paged by ``starting_after=<id of the last customer>``."""
        _, data = self._account(request)
        q = request.query_params
        limit = parse_limit(request, 100)
        if "since_datetime" in q and "starting_after" in q:
            raise ApiError(
                400, "BAD_REQUEST", "since_datetime can't be combined with starting_after"
            )
        since = parse_time(request, "since_datetime")
        if since is not None:
            if self.state.config.since_exclusive:
                since += 1  # timestamps have millisecond precision
            rows = data.customers.page(order="oldest", limit=limit, gte_ms=since)
            if self._order == "newest":
                rows.reverse()
            elif self._order == "shuffled":
                rows.sort(key=lambda r: data.customers.shuffle_key(r["id"]))
        else:
            rows = self._page(
                data.customers,
                order=self._order,
                limit=self._page_size(request, limit),
                after_id=q.get("starting_after"),
            )
        headers = {"total-count": str(len(data.customers))} if q.get("total") == "true" else None
        return JSONResponse(rows, headers=headers)

    async def payout_transfers(self, request: Request) -> Response:
        return await self._serve("payout_transfers", request, self._payout_transfers)

    async def _payout_transfers(self, request: Request) -> Response:
        """``{entries, next_page_token}``; no date filter and no documented order
        (``list_order``); the token is opaque."""
        _, data = self._account(request)
        pd = request.path_params["pd"]
        if pd not in data.transfers:
            raise ApiError(404, "NOT_FOUND", f"payout destination {pd} not found")
        limit = self._page_size(request, parse_limit(request, 1000))
        after = None
        token = request.query_params.get("page")
        if token:
            try:
                after = base64.urlsafe_b64decode(token.encode()).decode().partition(":")[2]
            except (ValueError, binascii.Error, UnicodeDecodeError):
                raise ApiError(400, "BAD_REQUEST", "page is not a valid page token") from None
        currency = request.query_params.get("currency")
        rows = self._page(data.transfers[pd], order=self._order, limit=limit + 1, after_id=after)
        if currency:
            rows = [r for r in rows if r["currency"] == currency]
        body: dict[str, Any] = {}
        self._optional(body, "entries", rows[:limit])
        next_token = None
        if len(rows) > limit:
            last = rows[limit - 1]
            raw = f"{to_ms(datetime.fromisoformat(last['created_at']))}:{last['ledger_entry_id']}"
            next_token = base64.urlsafe_b64encode(raw.encode()).decode()
        self._optional(body, "next_page_token", next_token)
        return JSONResponse(body)

    # -- control (not Dintero's API) ------------------------------------------------------------

    async def ctl_health(self, request: Request) -> Response:
        return JSONResponse({"ok": True, "accounts": list(self.state.accounts)})

    async def ctl_stats(self, request: Request) -> Response:
        if request.method == "DELETE":
            self.state.reset_stats()
        return JSONResponse(self.state.stats())

    async def ctl_faults(self, request: Request) -> Response:
        state = self.state
        if request.method == "DELETE":
            state.faults.clear()
        elif request.method == "POST":
            try:
                body = await json_body(request)
                if body.get("revoke_all_tokens"):
                    state.revoke_all_tokens()
                if body.get("clear"):
                    state.faults.clear()
                if "rules" in body:
                    state.faults.configure(body)
            except (FaultConfigError, ApiError) as exc:
                return error_response(400, "BAD_REQUEST", str(exc))
        return JSONResponse({"rules": state.faults.describe()})

    async def ctl_clock(self, request: Request) -> Response:
        changed: dict[str, dict] = {}
        if request.method == "POST":
            body = await json_body(request)
            try:
                self.state.clock.advance(float(body.get("advance_seconds", 0)))
            except ValueError as exc:
                return error_response(400, "BAD_REQUEST", str(exc))
            if body.get("mutate"):
                changed = self._mutate(body["mutate"])
        return JSONResponse({"now": self.state.clock.now().isoformat(), "changed": changed})

    async def ctl_mutate(self, request: Request) -> Response:
        body = await json_body(request)
        return JSONResponse(
            {"now": self.state.clock.now().isoformat(), "changed": self._mutate(body)}
        )

    def _mutate(self, body: dict) -> dict[str, dict]:
        accounts = body.get("account_ids") or list(self.state.accounts)
        counts = {
            k: int(v)
            for k, v in body.items()
            if k.startswith(("new_", "update_")) or k == "same_updated_at"
        }
        recent = body.get("recent_days")
        now = self.state.clock.now()
        with self.state.lock:
            changed = {
                aid: self.state.accounts[aid].mutate(
                    now, counts, float(recent) if recent is not None else None
                )
                for aid in accounts
            }
            # Changes are a millisecond apart: let the clock catch up with the last one, so no
            # object is ever dated after the emulator's "now".
            ahead = max(self.state.accounts[aid].last_change_ms for aid in accounts) - to_ms(now)
            if ahead > 0:
                self.state.clock.advance(ahead / 1000)
        return changed

    async def ctl_dump(self, request: Request) -> Response:
        q = request.query_params
        aid = q.get("account_id") or next(iter(self.state.accounts))
        if aid not in self.state.accounts:
            return error_response(404, "NOT_FOUND", f"account {aid} not found")
        try:
            rows = self.state.accounts[aid].dump(
                request.path_params["stream"], q.get("destination")
            )
        except KeyError:
            return error_response(404, "NOT_FOUND", "unknown stream")
        return JSONResponse(rows)

    async def ctl_issued(self, request: Request) -> Response:
        """Every secret the emulator handed out, so tests can scan for leaks."""
        return JSONResponse(
            {
                "client_secret": self.state.config.client_secret,
                **{k: list(v) for k, v in self.state.issued.items()},
            }
        )


def create_app(state: EmulatorState) -> EmulatorApp:
    return EmulatorApp(state)


__all__ = ["DroppedConnection", "EmulatorApp", "create_app", "iso"]
