"""The token model: access token, optional refresh token, expiry and the user it speaks for."""

from __future__ import annotations

import hashlib
import math
import re
import warnings
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from .. import times
from ..errors import MalformedResponseError
from ..redact import register_secret

#: Used when a token response has no ``expires_in``: short, so a wrong guess costs one renewal,
#: never a token treated as eternal (singer-sdk #612, authlib's "never expires").
DEFAULT_LIFETIME_SECONDS = 300
#: The longest lifetime believed: Dintero documents 4 hours (examples say a day). A longer
#: ``expires_in`` (``1e12``) is treated as a missing one.
MAX_LIFETIME_SECONDS = 366 * 86400
#: What an access token may hold to go into an Authorization header: visible ASCII.
HEADER_SAFE = re.compile(r"[\x21-\x7e]+")
MIN_LEEWAY_SECONDS = 60.0
LEEWAY_FRACTION = 0.10
MAX_LEEWAY_FRACTION = 0.20


class MissingExpiryWarning(UserWarning):
    """A token response had no ``expires_in``; a short default lifetime was assumed."""


class UserInfo(BaseModel):
    """Who an OIDC session speaks for, as Dintero reports it (``user_info``). Not secret."""

    model_config = ConfigDict(frozen=True)

    authority: str | None = Field(default=None, description="The identity provider's URL.")
    value: dict[str, Any] = Field(default_factory=dict, description="Claims such as sub, name.")

    @property
    def sub(self) -> str | None:
        return self.value.get("sub")

    @property
    def name(self) -> str | None:
        return self.value.get("name")


class Token(BaseModel):
    """An access token with its expiry; secrets are ``SecretStr`` and never shown.

    ``expires_at`` is computed from the moment the request was *sent* plus ``expires_in``, so
    network time only ever makes the token look older than it is, never younger.
    """

    model_config = ConfigDict(frozen=True)

    access_token: SecretStr
    token_type: str = "Bearer"
    issued_at: datetime
    expires_at: datetime
    refresh_token: SecretStr | None = None
    scope: str | None = None
    user_info: UserInfo | None = None
    #: Identifies one login (not secret): set when a code is exchanged, kept through refreshes.
    #: Caches and locks key a user's token by it, so two sessions never share a token.
    session_id: str | None = None

    @field_validator("issued_at", "expires_at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("token times must be timezone-aware")
        return value

    def model_post_init(self, __context: Any) -> None:
        register_secret(self.access_token.get_secret_value())
        if self.refresh_token is not None:
            register_secret(self.refresh_token.get_secret_value())

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def from_response(
        cls,
        payload: Any,
        sent_at: datetime,
        *,
        previous_refresh_token: SecretStr | None = None,
        previous_user_info: UserInfo | None = None,
        previous_session_id: str | None = None,
    ) -> Token:
        """Parse a token endpoint's JSON body.

        Args:
            payload: the decoded JSON body.
            sent_at: when the request was sent (timezone-aware).
            previous_refresh_token: kept when a refresh response omits ``refresh_token``.
            previous_user_info: kept when a refresh response omits ``user_info``.
            previous_session_id: the login a refreshed token continues.
        """
        if not isinstance(payload, dict) or not isinstance(payload.get("access_token"), str):
            raise MalformedResponseError(
                "the token endpoint answered without an access_token",
                hint="This is not a token response; check api_url",
            )
        if not HEADER_SAFE.fullmatch(payload["access_token"]):
            # It would go into an Authorization header, where httpx would refuse it and quote it.
            raise MalformedResponseError(
                "the token endpoint answered with an access_token that an HTTP header cannot "
                "carry (empty, or with spaces, line breaks or other control characters)",
                hint="This is not a usable token response; check api_url",
            )
        expires_in = payload.get("expires_in")
        if (
            not isinstance(expires_in, (int, float))
            or isinstance(expires_in, bool)
            or not math.isfinite(expires_in)
            or not 0 < expires_in <= MAX_LIFETIME_SECONDS
        ):
            warnings.warn(
                f"Dintero's token response had no usable expires_in ({expires_in!r:.40}); "
                f"assuming {DEFAULT_LIFETIME_SECONDS} s",
                MissingExpiryWarning,
                stacklevel=2,
            )
            expires_in = DEFAULT_LIFETIME_SECONDS
        refresh = payload.get("refresh_token")
        user_info = payload.get("user_info")
        return cls(
            access_token=SecretStr(payload["access_token"]),
            token_type=str(payload.get("token_type") or "Bearer"),
            issued_at=sent_at,
            expires_at=sent_at + timedelta(seconds=float(expires_in)),
            refresh_token=SecretStr(refresh)
            if isinstance(refresh, str) and refresh
            else previous_refresh_token,
            scope=payload.get("scope") if isinstance(payload.get("scope"), str) else None,
            user_info=UserInfo.model_validate(user_info)
            if isinstance(user_info, dict)
            else previous_user_info,
            session_id=previous_session_id,
        )

    # -- as a Prefect block stores it -------------------------------------------------------------

    def stored(self) -> dict[str, Any]:
        """The token as a block's data holds it: JSON values, secrets in the clear (the server
        stores block data encrypted); the scope is not kept."""
        return {
            "access_token": self.access_token.get_secret_value(),
            "refresh_token": self.refresh_token.get_secret_value() if self.refresh_token else None,
            "token_type": self.token_type,
            "issued_at": self.issued_at.isoformat(),
            "expires_at": self.expires_at.isoformat(),
            "user_info": self.user_info.model_dump() if self.user_info else None,
            "session_id": self.session_id,
        }

    @classmethod
    def from_stored(cls, data: Mapping[str, Any]) -> Token:
        """The token a block holds: its document's data (read with its secrets) or its fields.
        Empty values count as missing; a token saved without ``issued_at`` is dated by its
        expiry."""
        given = {n: data[n] for n in cls.model_fields if n != "scope" and data.get(n)}
        return cls.model_validate({"issued_at": data["expires_at"], **given})

    # -- expiry ---------------------------------------------------------------------------------

    @property
    def lifetime(self) -> timedelta:
        return self.expires_at - self.issued_at

    def leeway(self, configured: float | None = None) -> timedelta:
        """How long before expiry the token counts as stale.

        max(60 s, 10 % of the lifetime), at most 20 % of the lifetime; ``configured`` overrides.
        """
        if configured is not None:
            return timedelta(seconds=configured)
        lifetime = self.lifetime.total_seconds()
        seconds = max(MIN_LEEWAY_SECONDS, LEEWAY_FRACTION * lifetime)
        # Tokens living under 300 s would spend most of their life "stale" under a 60 s floor
        # (a 5 s token would never be fresh): cap the leeway at a fifth of the lifetime.
        return timedelta(seconds=min(seconds, MAX_LEEWAY_FRACTION * lifetime))

    def is_fresh(self, now: datetime | None = None, leeway: float | None = None) -> bool:
        now = now or times.now()
        return now < self.expires_at - self.leeway(leeway)

    def is_expired(self, now: datetime | None = None) -> bool:
        return (now or times.now()) >= self.expires_at

    @property
    def identity(self) -> str:
        """Which login this token belongs to: its ``session_id``, or for a token made without
        one (a service token, a session built by hand), a one-way fingerprint of its access
        token."""
        if self.session_id:
            return self.session_id
        digest = hashlib.sha256(self.access_token.get_secret_value().encode()).hexdigest()
        return f"fp-{digest[:32]}"

    def same_access_token(self, other: Token | None) -> bool:
        return other is not None and (
            other.access_token.get_secret_value() == self.access_token.get_secret_value()
        )

    # -- display --------------------------------------------------------------------------------

    def __repr__(self) -> str:
        who = f", user={self.user_info.name!r}" if self.user_info and self.user_info.name else ""
        refresh = ", refresh_token=SecretStr('**********')" if self.refresh_token else ""
        return (
            f"Token(access_token=SecretStr('**********'), token_type={self.token_type!r}, "
            f"expires_at={self.expires_at.isoformat()!r}{refresh}{who})"
        )

    __str__ = __repr__
