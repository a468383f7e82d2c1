"""The errors prefect-dintero raises: one hierarchy, each saying whether a retry can help."""

from __future__ import annotations

import json
from typing import Any, Literal

import httpx

from .redact import redact


class DinteroError(Exception):
    """Base of every prefect-dintero error.

    Its message is masked when the error is built (``redact``): errors become Prefect state
    messages, artifacts, events and persisted exceptions, which log filters never see, and a
    server or proxy may echo a request, Authorization header and all, into an error body.

    Attributes:
        retryable: True when the same call may succeed later (rate limits, 5xx, network);
            False for mistakes a retry cannot fix (bad credentials, used codes, bad input).
    """

    retryable: bool = False
    #: Set on an error that used up a retry policy's attempts: no policy around it retries it.
    attempts_exhausted: bool = False

    def __init__(self, *args: Any) -> None:
        super().__init__(*(redact(a) if isinstance(a, str) else a for a in args))


class ConfigurationError(DinteroError, ValueError):
    """Invalid settings, caught before any request is sent (bad account id, http:// to a host)."""


class DinteroAPIError(DinteroError):
    """Dintero answered with an error status.

    Attributes:
        status_code: the HTTP status.
        code: Dintero's ``error.code``, when the body carried one.
        message: Dintero's ``error.message``, or a short excerpt of a non-JSON body.
        method: the HTTP method of the failed request.
        url: the request URL, without its query string (queries can carry cursors, never secrets,
            but stay short in logs).
        retry_after: seconds the server asked to wait (``Retry-After`` on 429 and 503).
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        code: str | None = None,
        method: str | None = None,
        url: str | None = None,
        hint: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.retry_after = retry_after
        self.status_code = status_code
        self.code = redact(code) if code else code
        self.message = redact(message)
        self.method = method
        self.url = redact(url) if url else url
        self.hint = hint
        super().__init__(self._render())

    def _render(self) -> str:
        where = f" ({self.method} {self.url})" if self.method and self.url else ""
        if self.status_code is None:
            text = f"Request to Dintero failed: {self.message}{where}"
        else:
            code = f"[{self.code}] " if self.code else ""
            text = f"Dintero answered {self.status_code} {code}{self.message}{where}"
        return f"{text}. {self.hint}" if self.hint else text


class AuthenticationError(DinteroAPIError):
    """The API client's id or secret was refused, or a renewed token was refused again."""


class PermissionDeniedError(DinteroAPIError):
    """403: the credentials are valid but not for this account, audience or operation."""


class NotFoundError(DinteroAPIError):
    """404: the resource does not exist (an unknown account or payout destination)."""


class InvalidGrantError(DinteroAPIError):
    """A used, expired or mismatched authorization code or refresh token."""


class StreamSkipped(DinteroError):
    """A stream cannot be read with these credentials, and the run goes on without it (the
    reason is logged and shown in the run's table artifact)."""


class ReauthorizationRequired(DinteroError):
    """The user's session expired and cannot be renewed: the user must log in again.

    Attributes:
        expires_at: when the session ended, when known.
    """

    expires_at: Any = None


class LoginError(DinteroError):
    """The interactive login could not finish: no code, a refused login, a state mismatch."""


class RateLimitedError(DinteroAPIError):
    """429 Too Many Requests, after the client's own retries ran out."""

    retryable = True


class TransientError(DinteroAPIError):
    """A 5xx answer or a network failure (timeout, refused or dropped connection)."""

    retryable = True


class DeadlineExceeded(TransientError):
    """A request did not finish (connect, send, whole response) within its total deadline.

    Retryable as a whole (a task retry may find the server well again), but a request is not
    retried on its own: a server that trickles would hold every attempt to the deadline.
    """


class RunInterrupted(DinteroError):
    """The run was told to stop before it finished: nothing more is sent or written, what was
    committed stays, and the next run resumes from it. Not retried: whatever stopped the run
    (its budget, or another run that may now hold the account) would stop a retry too."""


class RunBudgetExceeded(RunInterrupted):
    """The run's time budget is spent: nothing more is sent, what was committed stays."""


class PageRefused(DinteroError):
    """The destination database refused a page: nothing of it was written, and the stream's
    cursor did not move. The message names the stream, the table, the object the database
    refused and the database's error type and SQLSTATE, never a value: a database's own text
    can quote a whole row, customers' names and e-mails included."""


class StoreUnavailable(DinteroError):
    """The store that shares tokens between processes (a Prefect server, for the blocks) did not
    answer, and the token in memory could not be used. Nothing was sent to Dintero; a later
    attempt may succeed."""

    retryable = True


class MalformedResponseError(DinteroAPIError):
    """Dintero answered 2xx with a body that is not the documented shape (or not JSON)."""


#: An error message longer than this is cut: a body that echoes the request can be long.
MAX_MESSAGE_CHARS = 300


def _error_fields(response: httpx.Response) -> tuple[str | None, str]:
    """Dintero's ``{"error": {"code", "message"}}``, tolerant of anything else, and short."""
    code, message = _raw_error_fields(response)
    message = " ".join(message.split())  # one line, whatever the body held
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[:MAX_MESSAGE_CHARS] + " [...]"
    return (code[:80] if code else code), message


def _raw_error_fields(response: httpx.Response) -> tuple[str | None, str]:
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, RecursionError):
        return None, (response.text.strip()[:200] or response.reason_phrase or "no body")
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        message = error.get("message") or response.reason_phrase or "no message"
        code = error.get("code")
        return (str(code) if code is not None else None), str(message)
    if isinstance(error, str):  # OAuth style: {"error": "invalid_grant", "error_description": …}
        return error, str(body.get("error_description") or error)
    return None, response.reason_phrase or "unexpected error body"


#: Which kind of Dintero endpoint answered: the same status means different things on each.
#: Dintero documents the error body's shape (``{"error": {"code", "message"}}``,
#: https://docs.dintero.com/docs/errors) but not its codes, so classification goes by endpoint
#: and status; a code is only quoted back to the user.
Endpoint = Literal["data", "client_credentials", "code_exchange", "refresh"]

_CREDENTIALS_HINT = (
    "Check the API client's id and secret (Dintero Backoffice → Settings → API clients) and that "
    "they belong to this environment (T = test, P = production)"
)


def error_from_response(
    response: httpx.Response,
    *,
    retry_after: float | None = None,
    endpoint: Endpoint = "data",
) -> DinteroAPIError:
    """Turn a non-2xx response into the right error class, by endpoint and status.

    Args:
        response: the failed response.
        retry_after: the parsed ``Retry-After`` wait, for 429s and 503s.
        endpoint: which endpoint answered. A 4xx from the code exchange is a login problem (the
            user logs in again); a 4xx from the refresh grant means the session is over; a 401
            from the client-credentials grant means the client id or secret.
    """
    code, message = _error_fields(response)
    status = response.status_code
    kwargs: dict[str, Any] = {
        "status_code": status,
        "code": code,
        "method": response.request.method,
        "url": str(response.request.url.copy_with(query=None)),
    }
    if status == 429:
        return RateLimitedError(message, retry_after=retry_after, **kwargs)
    if status >= 500:
        return TransientError(message, retry_after=retry_after, **kwargs)
    if endpoint == "code_exchange" and 400 <= status < 500:
        return InvalidGrantError(
            message,
            hint="Dintero refused the authorization code. Codes are single use, expire within "
            "minutes and must be exchanged with the redirect URI used to log in: log in again. "
            "If a fresh code is refused too, check that OIDC is configured on the API client's "
            "grant in Backoffice",
            **kwargs,
        )
    if endpoint == "refresh" and 400 <= status < 500:
        return InvalidGrantError(
            message,
            hint="Dintero refused the session's refresh token: the session is over (revoked, "
            "expired or already rotated); the user must log in again",
            **kwargs,
        )
    if status == 401 and endpoint == "client_credentials":
        return AuthenticationError(message, hint=_CREDENTIALS_HINT, **kwargs)
    if status == 401:
        return AuthenticationError(
            message,
            hint="Dintero rejected freshly issued tokens for this request: the tokens are being "
            "revoked, or the API client is not valid for this host (T = test, P = production); "
            "check the client in Dintero Backoffice → Settings → API clients",
            **kwargs,
        )
    if status == 403:
        return PermissionDeniedError(
            message,
            hint="The client is not granted this account or audience; check its grants in "
            "Backoffice",
            **kwargs,
        )
    if status == 404:
        return NotFoundError(message, **kwargs)
    return DinteroAPIError(message, **kwargs)


#: Errors only their user can mend (a wrong secret, a missing scope, an expired login, a
#: bad parameter): said once, with what to do, and never with a traceback.
USER_ERRORS: tuple[type[DinteroError], ...] = (
    ConfigurationError,
    AuthenticationError,
    PermissionDeniedError,
    InvalidGrantError,
    ReauthorizationRequired,
    LoginError,
)
