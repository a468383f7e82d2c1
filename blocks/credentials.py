"""The Dintero API client's credentials as a Prefect block."""

from __future__ import annotations

from typing import Literal

from prefect.blocks.abstract import CredentialsBlock
from pydantic import Field, field_validator

from prefect_dintero.auth.client_credentials import ClientCredentials, ClientFields
from prefect_dintero.auth.grants import exchange_authorization_code
from prefect_dintero.auth.provider import ClientCredentialsProvider
from prefect_dintero.auth.tokens import Token
from prefect_dintero.blocks.service_token import (
    AUTHENTICATION_DOCS,
    LOGO_URL,
    BlockServiceTokenStore,
)
from prefect_dintero.client import AsyncDinteroClient, DinteroClient
from prefect_dintero.validation import validate_base_url


class DinteroCredentials(CredentialsBlock, ClientFields):
    """A Dintero API client: the account, the client id and secret, and the hosts to call.

    Create the API client in Dintero Backoffice (Settings → API clients), once for the test
    account (T…) and once for production (P…). Save the block once, from the Prefect UI or in
    Python, and load it by name from any flow.

    Attributes:
        account_id: the Dintero account id, T or P followed by 8 digits.
        client_id: the API client's id.
        client_secret: the API client's secret.
        audience: the token audience; empty means ``{api_url}/v1/accounts/{account_id}``.
        api_url: the api.dintero.com base URL.
        checkout_url: the checkout.dintero.com base URL.
        oidc_authorize_url: the identity provider's login page for user logins.
        redirect_uri: the redirect URI registered for user logins.
        token_leeway_seconds: renew tokens this long before they expire.
        system_name: sent as Dintero-System-Name on every request.
        request_deadline_seconds: the most one request may take in all.
        retry_attempts: attempts per request for transient failures, the first included.
        retry_max_wait_seconds: the longest one wait between attempts may be.
        max_concurrent_requests: the most requests in flight at once for the account in one
            process (a backfill reads windows in slices, concurrently, adapting to Dintero).
        share_service_token: share one service token per lifetime across runs and workers.

    Examples:
        Load saved credentials and list a page of transactions:
        ```python
        from prefect_dintero import DinteroCredentials

        dintero_credentials = DinteroCredentials.load("BLOCK_NAME")
        with dintero_credentials.get_client() as client:
            transactions = client.get_json("/v1/transactions", host="checkout")
        ```
    """

    _block_type_name = "Dintero Credentials"
    _logo_url = LOGO_URL
    _documentation_url = AUTHENTICATION_DOCS
    _description = "Credentials of a Dintero API client, used to call the Dintero payments API."

    # The API client's own fields (account, client, secret, hosts, deadlines, retries) and their
    # checks are ClientFields': one definition for this block and the core. The block adds what
    # only Prefect runs need: user logins from the UI, the leeway, and sharing the token.
    oidc_authorize_url: str | None = Field(
        default=None,
        title="OIDC authorize URL",
        description=(
            "The login page of the identity provider configured for the client's OIDC grant; "
            "needed for user logins from the Prefect UI."
        ),
    )
    redirect_uri: str | None = Field(
        default=None,
        title="Redirect URI",
        description="The redirect URI registered with the identity provider for user logins.",
    )
    token_leeway_seconds: float | None = Field(
        default=None,
        ge=0,
        description=(
            "Renew tokens this many seconds before they expire; empty means max(60 s, 10 % of "
            "the token's lifetime)."
        ),
    )
    share_service_token: bool = Field(
        default=True,
        description=(
            "Keep the client's service token in a Dintero Service Token block (encrypted) so "
            "every run and worker using these credentials shares one token per lifetime; off "
            "keeps a token in each process's memory."
        ),
    )

    @field_validator("oidc_authorize_url")
    @classmethod
    def _check_authorize_url(cls, value: str | None) -> str | None:
        return validate_base_url(value, "oidc_authorize_url") if value else value

    def to_core(self) -> ClientCredentials:
        """The core library's view of these credentials."""
        return ClientCredentials(**self.client_fields())

    def get_client(
        self, client_type: Literal["sync", "async"] = "sync"
    ) -> DinteroClient | AsyncDinteroClient:
        """A client authenticated with this API client's service (client-credentials) token.

        Args:
            client_type: ``"sync"`` for :class:`DinteroClient`, ``"async"`` for
                :class:`AsyncDinteroClient`.
        """
        cls = AsyncDinteroClient if client_type == "async" else DinteroClient
        provider = self.service_token_provider()
        return cls(provider.credentials, token_provider=provider)

    def get_async_client(self) -> AsyncDinteroClient:
        """An :class:`AsyncDinteroClient` authenticated with the service token."""
        provider = self.service_token_provider()
        return AsyncDinteroClient(provider.credentials, token_provider=provider)

    def service_token_provider(self) -> ClientCredentialsProvider:
        """The service token's provider: shared through a Dintero Service Token block when this
        block is saved and ``share_service_token`` is on, else this process's memory."""
        core = self.to_core()
        name = getattr(self, "_block_document_name", None)
        store = None
        if self.share_service_token and name:
            store = BlockServiceTokenStore.for_credentials(name, core)
        return ClientCredentialsProvider(core, store=store, leeway=self.token_leeway_seconds)

    def exchange_authorization_code(self, code: str, redirect_uri: str | None = None) -> Token:
        """Exchange a user's authorization code for a session token (single attempt per code).

        Args:
            code: the code from the identity provider's redirect.
            redirect_uri: the redirect URI used to log in; defaults to ``self.redirect_uri``.

        Raises:
            InvalidGrantError: the code was used, expired or issued for another redirect URI.
        """
        core = self.to_core()
        return self.service_token_provider().call_with_token(
            lambda service_token: exchange_authorization_code(
                core,
                code,
                service_token=service_token,
                redirect_uri=redirect_uri or self.redirect_uri,
            )
        )
