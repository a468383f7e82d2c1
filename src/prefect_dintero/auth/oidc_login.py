"""The headless OIDC login: the authorize URL to open, and reading back what the user pasted."""

from __future__ import annotations

import secrets
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from ..errors import ConfigurationError, LoginError
from ..redact import register_secret


def new_state() -> str:
    """A random ``state`` that ties the pasted redirect to this login attempt."""
    return secrets.token_urlsafe(24)


def build_authorize_url(
    authorize_url: str | None, client_id: str, redirect_uri: str | None, state: str
) -> str:
    """The identity provider's login page for this client, asking for a code."""
    if not authorize_url:
        raise ConfigurationError(
            "oidc_authorize_url is not set on the credentials: set it to the login page of the "
            "identity provider configured for the client's OIDC grant, or pass the code directly"
        )
    params = {"response_type": "code", "client_id": client_id, "scope": "openid", "state": state}
    if redirect_uri:
        params["redirect_uri"] = redirect_uri
    parts = urlsplit(authorize_url)
    query = f"{parts.query}&{urlencode(params)}" if parts.query else urlencode(params)
    return urlunsplit(parts._replace(query=query))


def parse_authorization_response(text: str, expected_state: str | None = None) -> str:
    """The code from a pasted redirect URL (checking ``state``), or a bare code where no state
    is expected (a non-interactive login that built no login link).

    Raises:
        LoginError: the provider refused the login, the URL has no code, or the state differs.
    """
    text = (text or "").strip()
    if not text:
        raise LoginError("nothing was pasted: paste the URL you were redirected to, or the code")
    looks_like_url = "://" in text or text.startswith("?") or "code=" in text or "error=" in text
    if not looks_like_url:
        register_secret(text)
        if expected_state is not None:
            # A bare code carries no state: nothing would tie it to this login attempt.
            raise LoginError(
                "a code alone was pasted, but this login checks its state: paste the whole "
                "URL your browser was redirected to (it carries the code and the state)"
            )
        return text
    query = urlsplit(text).query if "://" in text else text.lstrip("?")
    params = {k: v[0] for k, v in parse_qs(query).items()}
    if "code" in params:
        register_secret(params["code"])
    if "error" in params:
        detail = params.get("error_description", "")
        raise LoginError(
            f"the identity provider refused the login: {params['error']} {detail}".strip()
        )
    if "code" not in params:
        raise LoginError("the pasted URL has no code parameter; paste the whole redirect URL")
    if expected_state is not None and params.get("state") != expected_state:
        raise LoginError(
            "the state in the pasted URL does not match this login attempt (a different or "
            "forged login): start the login again and paste the URL from that attempt"
        )
    return params["code"]
