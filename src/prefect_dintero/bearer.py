"""A live bearer token to hand to downstream code: renews itself, never serialises."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from .auth.client_credentials import ClientCredentials
from .auth.provider import OIDCSessionProvider, TokenProvider
from .auth.tokens import UserInfo
from .client import DinteroClient


class DinteroBearer:
    """Bearer authentication for one Dintero identity: a service client or a logged-in user.

    It holds a token provider, not a token: every :meth:`token` call (and every request of a
    client from :meth:`client`) gets a token valid for at least the leeway, renewed once for all
    its users when it nears expiry, however long the task runs. It refuses to be pickled, so it
    can never land in result storage or a cache by accident, and its repr shows no secret.
    """

    def __init__(self, provider: TokenProvider) -> None:
        self._provider = provider

    @property
    def credentials(self) -> ClientCredentials:
        return self._provider.credentials

    @property
    def account_id(self) -> str:
        return self._provider.credentials.account_id

    @property
    def is_user_session(self) -> bool:
        return isinstance(self._provider, OIDCSessionProvider)

    @property
    def identity(self) -> str:
        """Who the requests speak for, for logs: the API client, or the logged-in user."""
        if self.is_user_session and self.user_info is not None:
            return f"user {self.user_info.name or self.user_info.sub}"
        return "service client"

    @property
    def user_info(self) -> UserInfo | None:
        return self._provider.get_token().user_info if self.is_user_session else None

    @property
    def expires_at(self) -> datetime:
        return self._provider.get_token().expires_at

    @property
    def renewable(self) -> bool:
        """Whether the identity outlives its token: a service client, or a session with a
        refresh token. A session without one ends at ``expires_at``."""
        return not self.is_user_session or self._provider.get_token().refresh_token is not None

    @property
    def login_id(self) -> str:
        """Which login a user session is (not secret): a new login gets a new one."""
        return self._provider.get_token().identity

    @property
    def renewals(self) -> int:
        return self._provider.renewals

    def token(self) -> str:
        """The access token, valid for at least the leeway. Put it only in a header."""
        return self._provider.get_token().access_token.get_secret_value()

    def client(self, **kwargs: Any) -> DinteroClient:
        """A client that authenticates with this bearer (sharing its renewals)."""
        return DinteroClient(self.credentials, token_provider=self._provider, **kwargs)

    def __reduce__(self) -> Any:
        raise TypeError(
            "DinteroBearer holds live credentials and is never serialised; pass it between tasks "
            "of one flow run with persist_result=False and no cache policy"
        )

    def __copy__(self) -> DinteroBearer:
        return self

    def __deepcopy__(self, memo: dict) -> DinteroBearer:
        return self

    def __repr__(self) -> str:
        kind = "user session" if self.is_user_session else "service"
        return f"DinteroBearer(account_id={self.account_id!r}, identity={kind!r})"

    __str__ = __repr__
