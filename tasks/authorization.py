"""Prefect tasks for Dintero authentication: the OIDC code exchange and bearer tokens."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import SecretStr

from prefect_dintero.bearer import DinteroBearer
from prefect_dintero.blocks import DinteroCredentials, DinteroOIDCSession
from prefect_dintero.blocks.prefect_api import load_block
from prefect_dintero.blocks.session import save_login
from prefect_dintero.errors import ConfigurationError
from prefect_dintero.redact import install_log_filter, register_secret


@task(
    name="Exchange Dintero authorization code",
    description="Exchange a user's OIDC authorization code for a session and save it as a block.",
    # No task retries: its token requests are retried by the credentials' retry policy, and a
    # task retry on top would multiply the attempts.
    persist_result=False,
    cache_policy=NO_CACHE,
)
def exchange_authorization_code(
    credentials_block: str,
    session_block: str,
    code: SecretStr | str,
    redirect_uri: str | None = None,
) -> dict[str, Any]:
    """Exchange the code, save the session block, and return who logged in (no secrets).

    Only transient failures (rate limits, 5xx, network) are retried; a used or expired code, a
    wrong client secret or a mismatched redirect URI fail at once with a clear message.

    Args:
        credentials_block: name of the saved ``DinteroCredentials`` block.
        session_block: name to save the ``DinteroOIDCSession`` block under (overwritten).
        code: the authorization code from the identity provider's redirect.
        redirect_uri: the redirect URI used to log in; defaults to the block's.

    Returns:
        ``account_id``, ``session_block``, ``user_sub``, ``user_name``, ``expires_at`` (ISO 8601)
        and ``refreshable`` (whether Dintero issued a refresh token).

    Examples:
        ```python
        from prefect import flow
        from prefect_dintero.tasks import exchange_authorization_code

        @flow
        def finish_login(code: str):
            return exchange_authorization_code("dintero", "dintero-ada", code)
        ```
    """
    install_log_filter()
    logger = get_run_logger()
    credentials = load_block(DinteroCredentials, credentials_block)
    plain = code.get_secret_value() if isinstance(code, SecretStr) else str(code)
    register_secret(plain)
    token = credentials.exchange_authorization_code(plain, redirect_uri=redirect_uri)
    # In the session's renewal slot, so a renewal of the previous login never writes over it,
    # and retried while the Prefect API fails: the code is spent.
    save_login(credentials, session_block, token)
    user = token.user_info
    facts = {
        "account_id": credentials.account_id,
        "session_block": session_block,
        "user_sub": user.sub if user else None,
        "user_name": user.name if user else None,
        "expires_at": token.expires_at.isoformat(),
        "refreshable": token.refresh_token is not None,
    }
    logger.info(
        "Logged in %s to Dintero account %s; session saved as block %r, valid until %s",
        facts["user_name"] or facts["user_sub"] or "a user",
        facts["account_id"],
        session_block,
        facts["expires_at"],
    )
    return facts


@task(
    name="Get Dintero bearer token",
    description="A self-renewing bearer for downstream tasks (never persisted or cached).",
    # No task retries: its token requests are retried by the credentials' retry policy, and a
    # task retry on top would multiply the attempts.
    persist_result=False,
    cache_policy=NO_CACHE,
)
def get_bearer_token(
    credentials_block: str, session_block: str | None = None, check_token: bool = True
) -> DinteroBearer:
    """The bearer that downstream tasks call Dintero with.

    With ``session_block`` it speaks for the logged-in user (renewed with the refresh token; an
    expired session without one raises ``ReauthorizationRequired``, never falling back to the
    service identity). Without it, the API client's own service token is used. The token is
    obtained here, so bad credentials fail in this task, and renewed on use when it nears expiry.

    Args:
        credentials_block: name of the saved ``DinteroCredentials`` block.
        session_block: name of a saved ``DinteroOIDCSession`` block, for user sessions.
        check_token: obtain the token here (bad credentials fail this task). False leaves it
            to the first use: the sync flow asks for it itself, to fail the run with the
            error said once, without a task's traceback.

    Returns:
        A :class:`~prefect_dintero.bearer.DinteroBearer`; its repr shows no secret and it
        refuses to be pickled.
    """
    install_log_filter()
    logger = get_run_logger()
    if session_block:
        session = load_block(DinteroOIDCSession, session_block)
        # A session logged in through this credentials block holds it by reference: no second
        # read (a Prefect API request) is needed to know it belongs to the same account.
        same_block = getattr(session.credentials, "_block_document_name", None) == (
            credentials_block
        )
        if (
            not same_block
            and session.credentials.account_id
            != load_block(DinteroCredentials, credentials_block).account_id
        ):
            raise ConfigurationError(
                f"session block {session_block!r} belongs to account "
                f"{session.credentials.account_id}, not to the account of {credentials_block!r}: "
                "pass the session block that was logged in through these credentials"
            )
        bearer = session.get_bearer()
    else:
        credentials = load_block(DinteroCredentials, credentials_block)
        bearer = DinteroBearer(credentials.service_token_provider())
    if check_token:
        bearer.token()  # fail here, clearly, rather than in every downstream task
        logger.info("Bearer ready for account %s as %s", bearer.account_id, bearer.identity)
    return bearer
