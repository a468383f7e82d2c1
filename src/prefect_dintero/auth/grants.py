"""The three token grants Dintero offers us.

Requests are built by pure functions and parsed by one; only ``_post`` does I/O (an async
client's renewal runs the same code in a thread). Token
endpoint bodies and Authorization headers are never logged.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime

import httpx
from pydantic import SecretStr

from .. import times
from ..errors import Endpoint, InvalidGrantError, MalformedResponseError
from ..http import deadline
from ..http.retry import RetryPolicy
from ..http.transport import (
    DEFAULT_TIMEOUT,
    ClientStats,
    check_response,
    decode_json,
    default_headers,
    on_retry_counter,
    send_sync,
    ssl_context,
)
from ..redact import register_secret
from .client_credentials import ClientCredentials
from .tokens import Token

# -- request builders (pure) ---------------------------------------------------------------------


def _headers(creds: ClientCredentials, authorization: str) -> dict[str, str]:
    return {
        **default_headers(creds.system_name),
        "Content-Type": "application/json",
        "Authorization": authorization,
    }


def client_credentials_request(creds: ClientCredentials) -> httpx.Request:
    """``POST {api_url}/v1/accounts/{aid}/auth/token`` with HTTP Basic and the audience."""
    pair = base64.b64encode(f"{creds.client_id}:{creds.client_secret.get_secret_value()}".encode())
    register_secret(pair.decode())  # the secret in another form: masked wherever it shows
    basic = "Basic " + pair.decode()
    body = {"grant_type": "client_credentials", "audience": creds.resolved_audience}
    return httpx.Request("POST", creds.token_url, headers=_headers(creds, basic), json=body)


def authorization_code_request(
    creds: ClientCredentials, service_token: Token, code: str, redirect_uri: str | None = None
) -> httpx.Request:
    """``POST {api_url}/v1/accounts/{oid}/auth/oidc/token``: the seed's OIDC exchange.

    Authorised by a client-credentials Bearer token of the same client; the JSON body carries
    ``grant_type="authorization_code"``, ``code``, ``client_id``, ``audience`` and, when given,
    ``redirect_uri``.
    """
    body: dict[str, str] = {
        "grant_type": "authorization_code",
        "code": code,
        "client_id": creds.client_id,
        "audience": creds.resolved_audience,
    }
    if redirect_uri:
        body["redirect_uri"] = redirect_uri
    bearer = f"Bearer {service_token.access_token.get_secret_value()}"
    return httpx.Request("POST", creds.oidc_token_url, headers=_headers(creds, bearer), json=body)


def refresh_token_request(
    creds: ClientCredentials, service_token: Token, refresh_token: SecretStr
) -> httpx.Request:
    """The refresh grant: same token path, Bearer = a service token of the same client."""
    body = {"grant_type": "refresh_token", "refresh_token": refresh_token.get_secret_value()}
    bearer = f"Bearer {service_token.access_token.get_secret_value()}"
    return httpx.Request("POST", creds.token_url, headers=_headers(creds, bearer), json=body)


def parse_token_response(
    response: httpx.Response,
    sent_at: datetime,
    previous: Token | None = None,
    stats: ClientStats | None = None,
    endpoint: Endpoint = "client_credentials",
) -> Token:
    """The token in a response, or the mapped error. Keeps ``previous``'s refresh token and
    user when a refresh response omits them."""
    check_response(response, stats, endpoint=endpoint)
    try:
        payload = decode_json(response.content)
    except ValueError:
        raise MalformedResponseError(
            "the token endpoint answered 2xx with a body that is not JSON",
            status_code=response.status_code,
            method=response.request.method,
            url=str(response.request.url),
        ) from None
    return Token.from_response(
        payload,
        sent_at,
        previous_refresh_token=previous.refresh_token if previous else None,
        previous_user_info=previous.user_info if previous else None,
        previous_session_id=previous.identity if previous else None,
    )


# -- I/O ------------------------------------------------------------------------------------------


@contextmanager
def _sync_http(http: httpx.Client | None) -> Iterator[httpx.Client]:
    if http is not None:
        yield http
        return
    with deadline.install(httpx.Client(timeout=DEFAULT_TIMEOUT, verify=ssl_context())) as client:
        yield client


def _post(
    build: Callable[[], httpx.Request],
    creds: ClientCredentials,
    http: httpx.Client | None,
    policy: RetryPolicy | None,
    stats: ClientStats | None,
    previous: Token | None = None,
    endpoint: Endpoint = "client_credentials",
) -> Token:
    """Send the request ``build`` makes (a new one per attempt) under ``policy`` (the
    credentials' by default), each attempt within the credentials' request deadline."""
    deadline_seconds = creds.request_deadline_seconds
    with _sync_http(http) as client:

        def attempt() -> Token:
            request = build()
            sent_at = times.now()
            response = send_sync(client, request, auth=None, deadline=deadline_seconds)
            return parse_token_response(response, sent_at, previous, stats, endpoint)

        return (policy or creds.retry_policy).call(attempt, on_retry_counter(stats))


def fetch_client_credentials_token(
    creds: ClientCredentials,
    *,
    http: httpx.Client | None = None,
    policy: RetryPolicy | None = None,
    stats: ClientStats | None = None,
) -> Token:
    """Ask Dintero for a service (client-credentials) access token.

    Raises:
        AuthenticationError: the client id or secret is wrong (never retried).
        PermissionDeniedError: the audience is not a grant of this client.
    """
    return _post(lambda: client_credentials_request(creds), creds, http, policy, stats)


def _new_login(token: Token) -> Token:
    """A fresh login gets a session id of its own: caches, locks and saved sessions tell
    logins apart by it, whatever name they are stored under."""
    return token.model_copy(update={"session_id": secrets.token_hex(16)})


def _code_hint(exc: InvalidGrantError, attempts_made: bool) -> InvalidGrantError:
    if attempts_made:
        exc.hint = (
            (exc.hint or "")
            + ". An earlier attempt of this exchange may have used the code before its answer was "
            "lost in transit"
        ).lstrip(". ")
        exc.args = (exc._render(),)
    return exc


def exchange_authorization_code(
    creds: ClientCredentials,
    code: str,
    *,
    service_token: Token,
    redirect_uri: str | None = None,
    http: httpx.Client | None = None,
    policy: RetryPolicy | None = None,
    stats: ClientStats | None = None,
) -> Token:
    """Exchange an OIDC authorization code for a user session token.

    Args:
        creds: the API client (with OIDC configured on its grant).
        code: the code from the identity provider's redirect; single use.
        service_token: a client-credentials token of the same client (the Bearer).
        redirect_uri: the redirect URI used to log in, when one was.

    Raises:
        InvalidGrantError: the code is used, expired or was issued for another redirect URI.
    """
    register_secret(code)
    local = ClientStats()

    try:
        token = _post(
            lambda: authorization_code_request(creds, service_token, code, redirect_uri),
            creds,
            http,
            policy,
            _Tee(stats, local),
            endpoint="code_exchange",
        )
    except InvalidGrantError as exc:
        raise _code_hint(exc, local.retries > 0) from None
    return _new_login(token)


def refresh_session_token(
    creds: ClientCredentials,
    session: Token,
    *,
    service_token: Token,
    http: httpx.Client | None = None,
    policy: RetryPolicy | None = None,
    stats: ClientStats | None = None,
) -> Token:
    """Renew a user session with its refresh token; keeps the old refresh token if none comes
    back.

    Raises:
        InvalidGrantError: the refresh token is revoked, used (rotation) or expired.
    """
    if session.refresh_token is None:
        raise ValueError("this session has no refresh token")
    refresh = session.refresh_token

    return _post(
        lambda: refresh_token_request(creds, service_token, refresh),
        creds,
        http,
        policy,
        stats,
        previous=session,
        endpoint="refresh",
    )


class _Tee(ClientStats):
    """Counts into the caller's stats and a local one at once."""

    def __init__(self, *targets: ClientStats | None) -> None:
        super().__init__()
        self._targets = [t for t in targets if t is not None]

    def add(self, **counts: int) -> None:
        for target in self._targets:
            target.add(**counts)
