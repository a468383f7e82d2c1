"""A logged-in user's Dintero session as a Prefect block, and the token store built on it."""

from __future__ import annotations

import threading
import time
from datetime import datetime
from typing import Any, Literal

import httpx
from prefect.blocks.core import Block
from prefect.client.schemas.actions import BlockDocumentUpdate
from prefect.exceptions import ObjectNotFound
from pydantic import Field, HttpUrl, SecretStr

from prefect_dintero.auth.provider import OIDCSessionProvider
from prefect_dintero.auth.tokens import Token
from prefect_dintero.bearer import DinteroBearer
from prefect_dintero.blocks.credentials import DinteroCredentials
from prefect_dintero.blocks.prefect_api import (
    background,
    call,
    describe,
    drop_kept_client,
    kept_client,
    own_retries,
    save_block,
)
from prefect_dintero.blocks.service_token import LOGO_URL
from prefect_dintero.blocks.slots import wait_for_slot
from prefect_dintero.blocks.token_store import RENEWAL_SLOT_LEASE, BlockTokenStore
from prefect_dintero.client import AsyncDinteroClient, DinteroClient
from prefect_dintero.errors import ReauthorizationRequired
from prefect_dintero.redact import get_logger

logger = get_logger(__name__)

#: The block type's slug, to read a session block's non-secret fields cheaply.
SESSION_BLOCK_SLUG = "dintero-oidc-session"


class DinteroOIDCSession(Block):
    """A user's Dintero session, saved by the ``dintero_login`` flow and renewed in place.

    Flows use it to call Dintero as the user who logged in. When its access token nears expiry it
    is renewed with the refresh token once across every thread, process and worker: the renewal
    runs in a slot of a Prefect global concurrency limit named after the credential, re-reads
    this block inside the slot, and saves the renewed session back, retrying while the Prefect
    API fails and never over a newer login, so a rotated refresh token is never lost.

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
    _documentation_url = HttpUrl(
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
        return Token.from_stored(dict(self))

    @classmethod
    def from_token(cls, credentials: DinteroCredentials, token: Token) -> DinteroOIDCSession:
        return cls(credentials=credentials, **token.stored())

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


def refresh_limit_name(cache_key: str) -> str:
    """The global concurrency limit that serialises one session's renewals (no secret in it)."""
    return f"dintero-session-refresh-{cache_key[:16]}"


#: How often a process using a session block asks which login the block holds, at most.
LOGIN_CHECK_SECONDS = 60.0


class BlockSessionStore(BlockTokenStore):
    """The core's token store for one saved session block.

    Reads are served from memory. At most once a minute, in the background, the store asks
    Prefect which login the block holds (its ``session_id``, read without secrets): when someone
    logged in again into the block, the new login replaces the old one in this process within
    a minute, at once when Dintero refuses the old one (401 or 403). Renewals run in the block's
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
        self.label = f"the Dintero session {block_name!r}"
        self._login_checked_at = time.monotonic()
        self._checking = False

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
        """Hold ``saved`` if it is another login than the one held; say whether it was. A
        renewal of the previous login that is not saved yet is dropped: it is over."""
        with self._lock:
            if self._token is not None and self._token.identity == saved.identity:
                return False
            self._token = self._base = saved
            self._dirty = False
        logger.info("a new login into the session block %r is used from now on", self.block_name)
        return True

    # -- the block ------------------------------------------------------------------------------

    def _read(self) -> tuple[Any, Token | None]:
        client = kept_client()
        try:
            document = client.read_block_document_by_name(
                self.block_name, SESSION_BLOCK_SLUG, include_secrets=True
            )
        except RuntimeError:  # a kept client that was closed under us
            drop_kept_client(client)
            raise
        except ObjectNotFound:
            raise ReauthorizationRequired(
                f"The Dintero session block {self.block_name!r} no longer exists in Prefect. Log "
                f"in again: run the 'dintero_login' flow (or 'prefect-dintero login') to save "
                f"it anew."
            ) from None
        return document, Token.from_stored(document.data)

    def _write(self, handle: Any, token: Token) -> None:
        # Only the token's fields change. Block references (the nested credentials) are not in
        # a document's stored data, so they are sent back as they are, or an update drops them.
        references = {
            name: {"$ref": {"block_document_id": str(reference["block_document"]["id"])}}
            for name, reference in handle.block_document_references.items()
        }
        kept_client().update_block_document(
            handle.id,
            BlockDocumentUpdate(data={**token.stored(), **references}),
        )

    def _superseded(self, saved: Token | None, mine: Token) -> None:
        if saved is None or saved.identity != mine.identity:
            logger.warning(
                "a new login was saved into the session block %r while this process renewed "
                "the previous one: the renewal was not saved over it, and the new login is "
                "used from now on",
                self.block_name,
            )
        else:
            super()._superseded(saved, mine)

    # -- which login the block holds --------------------------------------------------------

    def _saved_login(self) -> str | None:
        client = kept_client()
        try:
            with own_retries():
                document = client.read_block_document_by_name(
                    self.block_name, SESSION_BLOCK_SLUG, include_secrets=False
                )
        except (httpx.TransportError, RuntimeError):
            drop_kept_client(client)  # its server may have gone and come back
            raise
        return document.data.get("session_id")

    def _new_login(self) -> Token | None:
        """The block's login if it is another than the one held (two reads at most)."""
        saved_id, held = self._saved_login(), self._token
        if saved_id is None or (held is not None and saved_id == held.identity):
            return None
        with own_retries():
            _, saved = self._read()
        if saved is not None and self._take_login(saved):
            return saved
        return None

    def get(self, key: str) -> Token | None:
        if not self._checking and time.monotonic() - self._login_checked_at >= LOGIN_CHECK_SECONDS:
            self._checking = True
            background(self._check_login, "dintero-login-check")
        return super().get(key)

    def busy(self) -> bool:
        return self._checking

    def _check_login(self) -> None:
        try:
            self._new_login()
        except Exception as exc:
            # The renewal path says when the Prefect API is down; this check just tries later.
            logger.debug("could not ask which login %r holds: %s", self.block_name, describe(exc))
        finally:
            self._login_checked_at = time.monotonic()
            self._checking = False

    def recheck(self, key: str, refused: Token) -> Token | None:
        try:
            return self._new_login()
        except Exception as exc:
            logger.info(
                "Dintero refused the session's token, and Prefect could not say whether the "
                "block %r holds a newer login (%s)",
                self.block_name,
                describe(exc),
            )
            return None

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


#: How long a new login's save keeps trying while the Prefect API fails: its code is spent.
LOGIN_SAVE_SECONDS = 120.0


def save_login(credentials: DinteroCredentials, session_block: str, token: Token) -> None:
    """Save a new login into ``session_block``, in the session's renewal slot, so that a renewal
    of the previous login in flight never writes over it, and retrying the Prefect API's
    transient failures for up to ``LOGIN_SAVE_SECONDS`` (the code it came from is spent).

    Raises:
        PrefectUnavailable: the Prefect API failed for that long (the user logs in again).
    """
    limit = refresh_limit_name(credentials.to_core().cache_key(session=session_block))
    deadline = time.monotonic() + LOGIN_SAVE_SECONDS
    timeout = 2 * credentials.request_deadline_seconds + 10.0
    held = wait_for_slot(limit, timeout=timeout, lease=RENEWAL_SLOT_LEASE, create_missing=1)
    if held is None:
        logger.warning(
            "the renewal slot of the session %r stayed taken for %.0f s; saving the new login "
            "without it",
            session_block,
            timeout,
        )
    try:
        call(
            lambda: save_block(DinteroOIDCSession.from_token(credentials, token), session_block),
            until=deadline,
            what=f"the save of the new login into {session_block!r}",
        )
    finally:
        if held is not None:
            held.release()
    with BlockSessionStore._instances_lock:
        stores = list(BlockSessionStore._instances.values())
    for store in stores:
        if store.block_name == session_block and store.limit_name == limit:
            store._take_login(token)
