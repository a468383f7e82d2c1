"""The API client's credentials as the core uses them (the Prefect block converts into this)."""

from __future__ import annotations

import hashlib
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from ..errors import ConfigurationError
from ..http.deadline import DEFAULT_REQUEST_DEADLINE
from ..http.retry import RetryPolicy
from ..redact import register_secret
from ..validation import validate_base_url, validate_owner_id

DEFAULT_API_URL = "https://api.dintero.com"
DEFAULT_CHECKOUT_URL = "https://checkout.dintero.com"


class ClientFields(BaseModel):
    """A Dintero API client's fields and what each means: one definition for the core's
    :class:`ClientCredentials` and the Prefect block (``DinteroCredentials``), which shows these
    titles and descriptions in the UI."""

    account_id: str = Field(
        title="Account ID",
        description="The Dintero account id: T (test) or P (production) followed by 8 digits.",
        examples=["T12345678"],
    )
    client_id: str = Field(title="Client ID", description="The API client's id from Backoffice.")
    client_secret: SecretStr = Field(description="The API client's secret from Backoffice.")
    audience: str | None = Field(
        default=None,
        description="The token audience; leave empty for {api_url}/v1/accounts/{account_id}.",
    )
    api_url: str = Field(
        default=DEFAULT_API_URL,
        title="API URL",
        description="Base URL of the Dintero API (change only to use the bundled emulator).",
    )
    checkout_url: str = Field(
        default=DEFAULT_CHECKOUT_URL,
        title="Checkout URL",
        description="Base URL of the Dintero Checkout API (transactions and sessions).",
    )
    system_name: str | None = Field(
        default=None,
        description="Your system's name, sent to Dintero as the Dintero-System-Name header.",
    )
    request_deadline_seconds: float = Field(
        default=DEFAULT_REQUEST_DEADLINE,
        gt=0,
        le=3600,
        description=(
            "The most one request may take in all: connecting, sending, and reading the whole "
            "response. A server that hangs or trickles its answer fails the request then."
        ),
    )
    retry_attempts: int = Field(
        default=RetryPolicy.max_attempts,
        ge=1,
        le=20,
        description=(
            "Attempts per request, the first included, when Dintero answers 429 or 5xx or the "
            "network fails; token requests alike. Bad credentials and bad input are never "
            "retried. A sync stream whose request runs out of attempts resumes from its last "
            "committed page, twice at most."
        ),
    )
    retry_max_wait_seconds: float = Field(
        default=RetryPolicy.retry_after_cap,
        gt=0,
        le=900,
        description=(
            "The longest one wait between attempts may be, a Retry-After asked by Dintero "
            "included (waits start at 0.5 s and double, with jitter)."
        ),
    )
    max_concurrent_requests: int = Field(
        default=8,
        ge=1,
        le=64,
        title="Max Concurrent Requests",
        description=(
            "The most requests to Dintero in flight at once for this account in one process. "
            "A backfill starts at 2 and adds one after a run of answers without 429 or 5xx, "
            "and halves on a 429; 1 reads one page after another."
        ),
    )

    @field_validator("account_id")
    @classmethod
    def _account(cls, value: str) -> str:
        return validate_owner_id(value)

    @field_validator("api_url")
    @classmethod
    def _api_url(cls, value: str) -> str:
        return validate_base_url(value, "api_url")

    @field_validator("checkout_url")
    @classmethod
    def _checkout_url(cls, value: str) -> str:
        return validate_base_url(value, "checkout_url")

    def client_fields(self) -> dict[str, Any]:
        """These fields' values, as :class:`ClientCredentials` takes them."""
        return {name: getattr(self, name) for name in ClientFields.model_fields}


class ClientCredentials(ClientFields):
    """A Dintero API client: account, client id and secret, and the hosts to use.

    Raises:
        ConfigurationError: on a malformed account id or an http:// URL to a remote host.
    """

    model_config = ConfigDict(frozen=True)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ConfigurationError(validation_message(exc)) from None

    @model_validator(mode="after")
    def _non_empty(self) -> ClientCredentials:
        if not self.client_id.strip():
            raise ConfigurationError("client_id is empty: copy it from Backoffice → API clients")
        if not self.client_secret.get_secret_value().strip():
            raise ConfigurationError(
                "client_secret is empty: copy it from Backoffice → API clients"
            )
        register_secret(self.client_secret.get_secret_value())
        return self

    @property
    def retry_policy(self) -> RetryPolicy:
        """How every request made with these credentials is retried (data and tokens)."""
        return RetryPolicy.from_limits(self.retry_attempts, self.retry_max_wait_seconds)

    @property
    def token_url(self) -> str:
        return f"{self.api_url}/v1/accounts/{self.account_id}/auth/token"

    @property
    def oidc_token_url(self) -> str:
        return f"{self.api_url}/v1/accounts/{self.account_id}/auth/oidc/token"

    @property
    def resolved_audience(self) -> str:
        """The audience to ask for: given, or ``{api_url}/v1/accounts/{account_id}``."""
        return self.audience or f"{self.api_url}/v1/accounts/{self.account_id}"

    def cache_key(self, session: str | None = None) -> str:
        """Identifies one credential (and one user session of it) for caches and locks.

        The secret is hashed in, so a client with a wrong secret never reuses a token that the
        right one obtained (httpx-auth 0.23.0 shipped that bug).
        """
        secret = hashlib.sha256(self.client_secret.get_secret_value().encode()).hexdigest()
        parts = (
            self.token_url,
            self.account_id,
            self.client_id,
            self.resolved_audience,
            session or "",
            secret,
        )
        return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


def validation_message(exc: ValidationError) -> str:
    """Pydantic's errors as one readable line, without its boilerplate."""
    parts = []
    for error in exc.errors():
        message = str(error.get("msg", "")).removeprefix("Value error, ")
        field = ".".join(str(p) for p in error.get("loc", ()))
        parts.append(f"{field}: {message}" if field else message)
    return "; ".join(parts)
