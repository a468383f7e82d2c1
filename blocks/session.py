"""A logged-in user's Dintero session as a Prefect block, and the token store built on it."""

from __future__ import annotations

import contextlib
import threading
from datetime import datetime
from typing import Any, Literal

import httpx
from prefect.blocks.core import Block
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.settings import PREFECT_API_URL
from pydantic import Field, SecretStr

from prefect_dintero.bearer import DinteroBearer
from prefect_dintero.blocks.credentials import LOGO_URL, DinteroCredentials
from prefect_dintero.blocks.token_store import RENEWAL_SLOT_LEASE, BlockTokenStore
from prefect_dintero.client import AsyncDinteroClient, DinteroClient
from prefect_dintero.provider import OIDCSessionProvider
from prefect_dintero.redact import get_logger
from prefect_dintero.tokens import Token, UserInfo

logger = get_logger(__name__)

#: The block type's slug, to read a session block's non-secret fields cheaply.
SESSION_BLOCK_SLUG = "dintero-oidc-session"


class DinteroOIDCSession(Block):
    """A user's Dintero session, saved by the ``dintero_login`` flow and renewed in place.

    Flows use it to call Dintero as the user who logged in. When its access token nears expiry it
    is renewed with the refresh token once across every thread, process and worker: the renewal
    runs in a slot of a Prefect global concurrency limit named after the credential, re-reads
    this block inside the slot, and saves the renewed session before using it, so a rotated
    refresh token is never lost.

    Attributes:
        credentials: the API client the user logged in through.
        access_token: the user's access token.
        refresh_token: the refresh token, when Dintero issued one.
        expires_at: when the access token expires.
        user_info: who logged in, as Dintero reports it (not secret).
        session_id: identifies this login; a new login changes it (not secret).

    Examples:
        Call Dintero as the logged-in user:
        ```python
        from prefect_dintero import DinteroOIDCSession

        dintero_session = DinteroOIDCSession.load("BLOCK_NAME")
        with dintero_session.get_client() as client:
            settlements = client.get_json(
                f"/v1/accounts/{dintero_session.credentials.account_id}/settlements"
            )
        ```
    """

    _block_type_name = "Dintero OIDC Session"
    _logo_url = LOGO_URL
    _documentation_url = (
        "https://docs.dintero.com/management-auth-api/authenticate/aid_auths_oidc_token_post"
    )
    _description = "A user's Dintero login session, renewed in place when it nears expiry."

    credentials: DinteroCredentials = Field(
        # Without a title the UI labels the field with the class name ("DinteroCredentials").
        title="Dintero Credentials",
        description="The Dintero Credentials block of the API client the user logged in through.",
    )
    access_token: SecretStr = Field(description="The user's access token.")
    refresh_token: SecretStr | None = Field(
        default=None, description="The refresh token, when Dintero issued one."
    )
    token_type: str = Field(default="Bearer", description="The token type, always Bearer.")
    issued_at: datetime | None = Field(
        default=None, description="When the access token was requested."
    )
    expires_at: datetime = Field(description="When the access token expires.")
    user_info: dict[str, Any] | None = Field(
        default=None,
        description="Who logged in (authority, sub, name), as Dintero reports it; not secret.",
    )
    session_id: str | None = Field(
        default=None,
        description=(
            "Identifies this login (not secret). A new login into the block changes it, and "
            "every process using the block switches to the new login at its next request."
        ),
    )

    # -- conversions ----------------------------------------------------------------------------

    def to_token(self) -> Token:
        """The session as the core's token."""
        return Token(
            access_token=self.access_token,
            refresh_token=self.refresh_token,
            token_type=self.token_type,
            issued_at=self.issued_at or self.expires_at,
            expires_at=self.expires_at,
            user_info=UserInfo.model_validate(self.user_info) if self.user_info else None,
            session_id=self.session_id,
        )

    @classmethod
    def from_token(cls, credentials: DinteroCredentials, token: Token) -> DinteroOIDCSession:
        return cls(
            credentials=credentials,
            **_token_fields(token),
        )

    def _apply(self, token: Token) -> None:
        for name, value in _token_fields(token).items():
            setattr(self, name, value)

    # -- clients --------------------------------------------------------------------------------

    def session_name(self) -> str:
        """The saved block's name: it names the session's locks and its refresh limit."""
        name = getattr(self, "_block_document_name", None)
        if not name:
            raise ValueError(
                "this session block is not saved; save it (or load it by name) before using it, "
                "so renewals can be written back"
            )
        return name

    def token_provider(self) -> OIDCSessionProvider:
        name = self.session_name()
        core = self.credentials.to_core()
        store = BlockSessionStore.for_block(name, core.cache_key(session=name), self)
        return OIDCSessionProvider(
            core,
            name,
            store=store,
            leeway=self.credentials.token_leeway_seconds,
        )

    def get_bearer(self) -> DinteroBearer:
        """A self-renewing bearer for the user, to pass to downstream tasks."""
        return DinteroBearer(self.token_provider())

    def get_client(
        self, client_type: Literal["sync", "async"] = "sync"
    ) -> DinteroClient | AsyncDinteroClient:
        """A client that calls Dintero as the logged-in user."""
        provider = self.token_provider()
        cls = AsyncDinteroClient if client_type == "async" else DinteroClient
        return cls(provider.credentials, token_provider=provider)

    def get_async_client(self) -> AsyncDinteroClient:
        provider = self.token_provider()
        return AsyncDinteroClient(provider.credentials, token_provider=provider)


def _token_fields(token: Token) -> dict[str, Any]:
    return {
        "access_token": token.access_token,
        "refresh_token": token.refresh_token,
        "token_type": token.token_type,
        "issued_at": token.issued_at,
        "expires_at": token.expires_at,
        "user_info": token.user_info.model_dump() if token.user_info else None,
        "session_id": token.session_id,
    }


# The login check runs before every request. Opening a Prefect client builds an SSL context,
# which cost more than the read itself (py-spy on the month benchmark: 28 % of all samples), so
# the check keeps one client open per API URL for the life of the process.
_kept_clients: dict[str | None, SyncPrefectClient] = {}
_kept_clients_lock = threading.Lock()


def _read_with_kept_client(read: Any) -> Any:
    """``read(client)`` with this process's kept-open Prefect client for the current API URL;
    a client that failed is replaced once (its server may have gone and come back)."""
    url = PREFECT_API_URL.value()
    for attempt in range(2):
        with _kept_clients_lock:
            client = _kept_clients.get(url)
            if client is None:
                client = get_client(sync_client=True)
                client.__enter__()
                _kept_clients[url] = client
            try:
                return read(client)
            except (httpx.TransportError, RuntimeError):  # gone, or closed: not a refusal
                if attempt:
                    raise
                _kept_clients.pop(url, None)
                with contextlib.suppress(Exception):
                    client.__exit__(None, None, None)
    raise AssertionError("unreachable")


def refresh_limit_name(cache_key: str) -> str:
    """The global concurrency limit that serialises one session's renewals (no secret in it)."""
    return f"dintero-session-refresh-{cache_key[:16]}"


class BlockSessionStore(BlockTokenStore):
    """The core's token store for one saved session block.

    Reads are served from memory, after asking Prefect which login the block holds now (its
    ``session_id``, read without secrets): when someone logged in again into the block, the new
    login replaces the old one at this process's next request. Renewals run in the block's
    renewal slot (``BlockTokenStore``); one that waits longer than two request deadlines fails.
    """

    _instances: dict[str, BlockSessionStore] = {}
    _instances_lock = threading.Lock()

    def __init__(self, block_name: str, cache_key: str, block: DinteroOIDCSession) -> None:
        super().__init__(
            refresh_limit_name(cache_key),
            2 * block.credentials.request_deadline_seconds + 10.0,
            block.to_token(),
        )
        self.block_name = block_name

    @classmethod
    def for_block(
        cls, block_name: str, cache_key: str, block: DinteroOIDCSession
    ) -> BlockSessionStore:
        """One store per session block in a process, so every client of it shares one cache;
        a block loaded with another login than the store holds brings that login in."""
        with cls._instances_lock:
            store = cls._instances.get(cache_key)
            if store is None:
                store = cls._instances[cache_key] = cls(block_name, cache_key, block)
        store._take_login(block.to_token())
        return store

    def _take_login(self, saved: Token) -> bool:
        """Hold ``saved`` if it is another login than the one held; say whether it was."""
        with self._lock:
            if self._token is not None and self._token.identity == saved.identity:
                return False
            self._token = saved
        logger.info("a new login into the session block %r is used from now on", self.block_name)
        return True

    # -- the block ------------------------------------------------------------------------------

    def _load(self) -> Token | None:
        return DinteroOIDCSession.load(self.block_name, _sync=True).to_token()

    async def _aload(self) -> Token | None:
        return (await DinteroOIDCSession.aload(self.block_name)).to_token()

    def _save(self, token: Token) -> None:
        block = DinteroOIDCSession.load(self.block_name, _sync=True)
        block._apply(token)
        block.save(self.block_name, overwrite=True, _sync=True)

    async def _asave(self, token: Token) -> None:
        block = await DinteroOIDCSession.aload(self.block_name)
        block._apply(token)
        await block.asave(self.block_name, overwrite=True)

    # -- reads: which login the block holds --------------------------------------------------

    def _saved_login(self) -> str | None:
        document = _read_with_kept_client(
            lambda client: client.read_block_document_by_name(
                self.block_name, SESSION_BLOCK_SLUG, include_secrets=False
            )
        )
        return document.data.get("session_id")

    async def _asaved_login(self) -> str | None:
        async with get_client() as client:
            document = await client.read_block_document_by_name(
                self.block_name, SESSION_BLOCK_SLUG, include_secrets=False
            )
        return document.data.get("session_id")

    def _is_other_login(self, saved_id: str | None) -> bool:
        # A block saved before session ids has none; its login then never changed by one.
        token = self._token
        return saved_id is not None and (token is None or saved_id != token.identity)

    def get(self, key: str, *, reload: bool = False) -> Token | None:
        if reload:
            return super().get(key, reload=True)
        if self._is_other_login(self._saved_login()):
            saved = self._load()
            if saved is not None:
                self._take_login(saved)
        return self._token

    async def aget(self, key: str, *, reload: bool = False) -> Token | None:
        if reload:
            return await super().aget(key, reload=True)
        if self._is_other_login(await self._asaved_login()):
            saved = await self._aload()
            if saved is not None:
                self._take_login(saved)
        return self._token

    def _slot_timed_out(self) -> None:
        raise TimeoutError(
            f"another process has held the renewal slot of the Dintero session "
            f"{self.block_name!r} for {self.slot_timeout:.0f} s, longer than its token requests "
            f"may take (two request deadlines); if a worker died while renewing, its slot in "
            f"the {self.limit_name!r} concurrency limit frees itself within "
            f"{RENEWAL_SLOT_LEASE:.0f} s"
        )

    def __repr__(self) -> str:
        return f"BlockSessionStore(block={self.block_name!r}, limit={self.limit_name!r})"
