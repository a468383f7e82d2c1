"""The emulator's auth server: client credentials, the OIDC code and refresh grants, and the
login page."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from .pages import callback_page, login_page
from .responses import (
    AID_RE,
    OID_RE,
    ApiError,
    Handler,
    bearer_token,
    json_body,
)
from .signed_tokens import CodeRecord, RefreshRecord
from .world import EmulatorState

#: The emulator's own redirect URI's path: always registered, it shows what to paste.
CALLBACK_PATH = "/oidc/callback"


class AuthRoutes:
    """Token and login routes (``/v1/accounts/{oid}/auth/*``, ``/oidc/authorize``)."""

    state: EmulatorState
    # Mixed in beside this class by the app (``EmulatorApp``).
    _served: Callable[[str, Handler], Callable[[Request], Awaitable[Response]]]

    def auth_routes(self) -> list[Route]:
        served, post = self._served, ["POST"]
        return [
            Route("/v1/accounts/{oid}/auth/token", served("token", self._token), methods=post),
            Route(
                "/v1/accounts/{oid}/auth/oidc/token",
                served("oidc_token", self._oidc_token),
                methods=post,
            ),
            Route("/oidc/authorize", served("authorize", self._authorize), methods=["GET", "POST"]),
            Route(CALLBACK_PATH, self.callback, methods=["GET"]),
        ]

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
            audience=str(audience),
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
            rotate = state.config.rotate_refresh_tokens
            if rotate and not record.revoked:
                record.revoked = True
                record.rotated_at = state.clock.timestamp()
            payload = self._session_tokens(record, refresh=rotate)
            state.token_grants["refresh_token"] += 1
        return JSONResponse(payload)

    def _session_tokens(self, login: RefreshRecord, *, refresh: bool) -> dict[str, Any]:
        """A user session's token response: an access token for ``login``'s user and, when
        ``refresh``, a new refresh token for the same login."""
        state = self.state
        token, lifetime = state.issue_access_token(
            client_id=login.client_id,
            account_id=login.account_id,
            audience=login.audience,
            sub=login.sub,
            grant="authorization_code",
        )
        payload: dict[str, Any] = {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": lifetime,
        }
        if refresh:
            expires_at = state.clock.timestamp() + state.config.refresh_token_lifetime
            payload["refresh_token"] = state.issue_refresh_token(
                replace(login, expires_at=expires_at, revoked=False, rotated_at=None)
            )
        return payload

    def _within_reuse_interval(self, record: RefreshRecord) -> bool:
        interval = self.state.config.refresh_token_reuse_interval
        return (
            record.rotated_at is not None
            and self.state.clock.timestamp() - record.rotated_at <= interval
        )

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
        login = RefreshRecord(
            client_id=body["client_id"],
            account_id=account,
            audience=body["audience"],
            sub=user.sub,
            user_info=user_info,
            expires_at=0.0,
        )
        payload = self._session_tokens(login, refresh=state.config.refresh_tokens)
        state.token_grants["authorization_code"] += 1
        return JSONResponse({**payload, "user_info": user_info})

    async def _authorize(self, request: Request) -> Response:
        """The simulated identity provider. GET shows its login page (who logs in, one button);
        the button POSTs the same parameters back, and the test user is logged in and sent to
        the redirect URI with a code."""
        if request.method == "POST":
            params = {k: v[-1] for k, v in parse_qs((await request.body()).decode()).items()}
        else:
            params = dict(request.query_params)
        if params.get("response_type") != "code":
            raise ApiError(400, "unsupported_response_type", "response_type must be code")
        if params.get("client_id") != self.state.config.client_id:
            raise ApiError(400, "invalid_client", "unknown client_id")
        redirect_uri = params.get("redirect_uri", "")
        if redirect_uri not in self._registered_redirects(request):
            # Like a real IdP, never redirect to an address that was not registered.
            raise ApiError(400, "invalid_request", "redirect_uri is not registered for this client")
        if "openid" not in params.get("scope", "").split():
            raise ApiError(400, "invalid_scope", "scope must include openid")
        if request.method == "GET":
            accounts = list(self.state.accounts)
            return HTMLResponse(login_page(params, self.state.config.user.name, accounts))
        state_param = params.get("state")
        code = self.state.issue_code(
            CodeRecord(
                client_id=params["client_id"],
                redirect_uri=redirect_uri,
                state=state_param,
                expires_at=self.state.clock.timestamp() + self.state.config.code_lifetime,
            )
        )
        parts = urlsplit(redirect_uri)
        extra = {"code": code, **({"state": state_param} if state_param is not None else {})}
        query = f"{parts.query}&{urlencode(extra)}" if parts.query else urlencode(extra)
        # 303: the browser follows a form's POST with a GET.
        return RedirectResponse(urlunsplit(parts._replace(query=query)), status_code=303)

    def _registered_redirects(self, request: Request) -> list[str]:
        """The configured redirect URIs, and the emulator's own callback page."""
        own = f"{request.url.scheme}://{request.url.netloc}{CALLBACK_PATH}"
        return [*self.state.config.redirect_uris, own]

    async def callback(self, request: Request) -> Response:
        """The emulator's own redirect URI: a page showing the URL (and code) to paste."""
        code = request.query_params.get("code")
        if not code:
            raise ApiError(400, "invalid_request", "no code in the callback URL")
        return HTMLResponse(callback_page(str(request.url), code))

    # -- data ----------------------------------------------------------------------------------
