"""JWT-shaped access tokens the emulator signs and checks, and its opaque refresh tokens."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenSigner:
    """HS256 signing with a key that lives only as long as the emulator."""

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)

    def sign(self, claims: dict) -> str:
        header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "emulator"}).encode())
        payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
        signing_input = f"{header}.{payload}".encode()
        signature = _b64(hmac.new(self._key, signing_input, hashlib.sha256).digest())
        return f"{header}.{payload}.{signature}"

    def verify(self, token: str) -> dict | None:
        """The claims of a token this emulator signed, or None for anything else."""
        try:
            header, payload, signature = token.split(".")
            expected = hmac.new(self._key, f"{header}.{payload}".encode(), hashlib.sha256).digest()
            if not hmac.compare_digest(expected, _unb64(signature)):
                return None
            claims = json.loads(_unb64(payload))
        except (ValueError, json.JSONDecodeError):
            return None
        return claims if isinstance(claims, dict) else None


@dataclass
class RefreshRecord:
    """What a refresh token stands for."""

    client_id: str
    account_id: str
    audience: str
    sub: str
    user_info: dict
    expires_at: float
    revoked: bool = False
    #: When rotation replaced it (emulator clock), for the reuse interval.
    rotated_at: float | None = None


@dataclass
class CodeRecord:
    """An authorization code issued by the simulated identity provider."""

    client_id: str
    redirect_uri: str
    state: str | None
    expires_at: float
    used: bool = False
