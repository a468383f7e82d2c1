"""Checks on settings, made before any request so mistakes fail fast and clearly."""

from __future__ import annotations

import ipaddress
import re

import httpx

from .errors import ConfigurationError

# Whole-string matches of ASCII digits: ``$`` also matches before a final newline, and ``\d``
# matches every Unicode digit (fullwidth ones, say).
OWNER_ID_RE = re.compile(r"[PT](?:[0-9]{3}|[0-9]{8})")
ACCOUNT_ID_RE = re.compile(r"[PT][0-9]{8}")
#: A payout destination id as one URL path segment: no slash, no dot segments, no controls.
PAYOUT_DESTINATION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")


def validate_owner_id(value: str) -> str:
    """An account or partner id for the auth endpoints (``oid``): P/T + 3 or 8 digits."""
    if not isinstance(value, str) or not OWNER_ID_RE.fullmatch(value):
        raise ConfigurationError(
            f"{value!r} is not a Dintero account id: expected T (test) or P (production) followed "
            "by 8 digits, e.g. T12345678 (or 3 digits for a partner id)"
        )
    return value


def validate_account_id(value: str) -> str:
    """A merchant account id (``aid``): P/T + 8 digits."""
    if not isinstance(value, str) or not ACCOUNT_ID_RE.fullmatch(value):
        raise ConfigurationError(
            f"{value!r} is not a Dintero merchant account id: expected T (test) or P (production) "
            "followed by 8 digits, e.g. T12345678"
        )
    return value


def validate_payout_destination(value: str) -> str:
    """A payout destination id, safe to put in a URL path as one segment.

    Dintero does not document the format; the ids it shows are letters, digits and dashes. An
    id with a slash or a dot segment would send the authenticated request to another path.
    """
    if not isinstance(value, str) or not PAYOUT_DESTINATION_RE.fullmatch(value) or ".." in value:
        raise ConfigurationError(
            f"{value!r} is not a payout destination id: expected letters, digits, '-', '_', '.' "
            "or ':' (at most 128), as Dintero Backoffice shows it"
        )
    return value


def is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def validate_base_url(value: str, name: str = "url") -> str:
    """An absolute https:// URL, or http:// to a loopback address (the emulator)."""
    try:
        url = httpx.URL(value)
    except (httpx.InvalidURL, TypeError) as exc:
        raise ConfigurationError(f"{name} {value!r} is not a valid URL: {exc}") from None
    if url.scheme not in ("https", "http") or not url.host:
        raise ConfigurationError(f"{name} must be an absolute http(s) URL, got {value!r}")
    if url.scheme == "http" and not is_loopback(url.host):
        raise ConfigurationError(
            f"{name} {value!r} uses plain http to a remote host; Dintero credentials must only "
            "travel over https (http is allowed for loopback addresses such as the emulator)"
        )
    if url.query or url.fragment:
        raise ConfigurationError(f"{name} must not carry a query or fragment, got {value!r}")
    return str(url).rstrip("/")
