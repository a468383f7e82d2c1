"""The API client's service token as a Prefect block: one token per lifetime for every run."""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Any

from prefect.blocks.core import Block
from prefect.client.schemas.actions import BlockDocumentUpdate
from prefect.exceptions import ObjectNotFound
from pydantic import Field, HttpUrl, SecretStr

from prefect_dintero.auth.client_credentials import ClientCredentials
from prefect_dintero.auth.tokens import Token
from prefect_dintero.blocks.prefect_api import (
    describe,
    is_transient,
    kept_client,
    own_retries,
    save_block,
)
from prefect_dintero.blocks.token_store import BlockTokenStore
from prefect_dintero.redact import get_logger

logger = get_logger(__name__)

#: The blocks' logo in the Prefect UI, and the page on Dintero's authentication.
LOGO_URL = HttpUrl("https://github.com/Dintero.png")
AUTHENTICATION_DOCS = HttpUrl("https://docs.dintero.com/docs/checkout/authentication")


class DinteroServiceToken(Block):
    """The current client-credentials token of a Dintero Credentials block.

    Every ``dintero-sync`` run is a process of its own, and Dintero rate-limits its token
    endpoint: this block lets every run and worker using the same credentials share one token
    per lifetime. prefect-dintero saves and renews it itself (under ``<credentials>-service-token``)
    when the credentials block's ``share_service_token`` is on; nobody needs to edit it. The
    server stores it encrypted, like every block's secrets.

    Attributes:
        access_token: the service access token.
        token_type: the token type, always Bearer.
        issued_at: when the token was requested.
        expires_at: when it expires.
        credentials_fingerprint: a one-way fingerprint of the credentials it belongs to.

    Examples:
        See when the shared token expires:
        ```python
        from prefect_dintero.blocks import DinteroServiceToken

        service_token = DinteroServiceToken.load("BLOCK_NAME")
        print(service_token.expires_at)
        ```
    """

    _block_type_name = "Dintero Service Token"
    _logo_url = LOGO_URL
    _documentation_url = AUTHENTICATION_DOCS
    _description = "A Dintero API client's current service token, shared by every run."

    access_token: SecretStr = Field(description="The service (client-credentials) access token.")
    token_type: str = Field(default="Bearer", description="The token type, always Bearer.")
    issued_at: datetime = Field(description="When the token was requested.")
    expires_at: datetime = Field(description="When the token expires.")
    credentials_fingerprint: str = Field(
        description=(
            "A one-way fingerprint of the credentials (account, client, secret, audience) the "
            "token belongs to: a token is never used for other credentials."
        )
    )


#: The block type's slug, to read the shared token without Prefect's block machinery.
SERVICE_TOKEN_BLOCK_SLUG = "dintero-service-token"


class BlockServiceTokenStore(BlockTokenStore):
    """The core's token store for a credentials block's shared service token.

    Seeded from the saved block at start (so a run within the token's lifetime asks for none),
    renewed in the credential's slot. A waiter whose slot stays taken past two request deadlines
    renews on its own, and so does a process that cannot reach the Prefect API once its token
    expired: a second grant costs nothing but one request, unlike a refresh token. A token
    renewed so is saved when the Prefect API answers again.
    """

    _instances: dict[str, BlockServiceTokenStore] = {}
    _instances_lock = threading.Lock()

    def __init__(self, credentials_block: str, credentials: ClientCredentials) -> None:
        self.block_name = f"{credentials_block}-service-token"
        self.fingerprint = credentials.cache_key()
        super().__init__(
            # The global concurrency limit that serialises the credential's grants: named by a
            # one-way fingerprint, never a secret.
            f"dintero-token-grant-{self.fingerprint[:16]}",
            2 * credentials.request_deadline_seconds + 10.0,
            None,
        )
        self.label = f"the shared service token {self.block_name!r}"
        try:
            with own_retries():
                self._token = self._base = self._load()
        except Exception as exc:
            if not is_transient(exc):
                raise
            # Renewed when it is first needed, alone if Prefect still does not answer then.
            logger.info("could not read %s (%s)", self.label, describe(exc))

    @classmethod
    def for_credentials(
        cls, credentials_block: str, credentials: ClientCredentials
    ) -> BlockServiceTokenStore:
        """One store per credentials (block and fingerprint) in a process."""
        key = f"{credentials_block}\x1f{credentials.cache_key()}"
        with cls._instances_lock:
            store = cls._instances.get(key)
            if store is None:
                store = cls._instances[key] = cls(credentials_block, credentials)
            return store

    def _read(self) -> tuple[Any, Token | None]:
        try:
            document = kept_client().read_block_document_by_name(
                self.block_name, SERVICE_TOKEN_BLOCK_SLUG, include_secrets=True
            )
        except ObjectNotFound:
            return None, None
        if document.data.get("credentials_fingerprint") != self.fingerprint:
            # Saved for other credentials (a changed secret): never used, replaced on renewal.
            return document, None
        return document, Token.from_stored(document.data)

    def _write(self, handle: Any, token: Token) -> None:
        data = {
            **{k: v for k, v in token.stored().items() if k in DinteroServiceToken.model_fields},
            "credentials_fingerprint": self.fingerprint,
        }
        if handle is None:  # the first save: registers the block type too
            save_block(DinteroServiceToken(**data), self.block_name)
        else:
            kept_client().update_block_document(handle.id, BlockDocumentUpdate(data=data))

    def _slot_timed_out(self) -> None:
        logger.warning(
            "another process has held the service token's renewal slot %r for %.0f s; asking "
            "Dintero for a token without it",
            self.limit_name,
            self.slot_timeout,
        )

    def __repr__(self) -> str:
        return f"BlockServiceTokenStore(block={self.block_name!r}, limit={self.limit_name!r})"
