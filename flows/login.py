"""The ``dintero-login`` flow: a user logs in once, from the Prefect UI or non-interactively."""

import contextlib
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.context import FlowRunContext
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput, delete_flow_run_input, keyset_from_base_key
from pydantic import Field, SecretStr

from prefect_dintero.auth.oidc_login import (
    build_authorize_url,
    new_state,
    parse_authorization_response,
)
from prefect_dintero.blocks import DinteroCredentials
from prefect_dintero.blocks.prefect_api import load_block
from prefect_dintero.errors import LoginError
from prefect_dintero.flows.parameters import MaskedFlow
from prefect_dintero.redact import MASK, install_log_filter, register_secret
from prefect_dintero.tasks import exchange_authorization_code

PAUSE_KEY = "dintero-login"


class LoginInput(RunInput):
    """What the user pastes into the Prefect UI's resume form."""

    authorization_response: SecretStr = Field(
        title="Redirect URL",
        description=(
            "After logging in, your browser went to the redirect URI: paste that whole URL. "
            "It carries the code and the state that ties it to this login (a code alone is "
            "refused)."
        ),
    )


def _delete_pasted_input() -> None:
    """Prefect stores the resume form's values in plaintext; the code is spent, remove it."""
    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return
    for key in keyset_from_base_key(f"paused-{PAUSE_KEY}").values():
        # Already gone, or never written: nothing to remove.
        with contextlib.suppress(Exception):
            delete_flow_run_input(key=key, flow_run_id=context.flow_run.id)


def _dintero_login(
    credentials_block: str,
    session_block: str,
    authorization_response: SecretStr | None = None,
    timeout_seconds: int = 900,
    poll_interval_seconds: int = 5,
    state: str | None = None,
) -> dict[str, Any]:
    """Log in once; every later flow loads the saved session by name.

    Args:
        credentials_block: name of the saved ``DinteroCredentials`` block (with
            ``oidc_authorize_url`` set, for the interactive login).
        session_block: name to save the ``DinteroOIDCSession`` block under.
        authorization_response: for non-interactive use, the redirect URL or the bare code.
            It is a secret: the run stores it masked, whether it is passed as a ``SecretStr``
            or a plain string. Pass it when calling the flow in process, not as a deployment
            parameter (deployments use the pause form).
        timeout_seconds: how long to wait for the pasted code before failing.
        poll_interval_seconds: how often the paused run checks for the resume.
        state: the ``state`` of the login link the user followed, when you built it: a pasted
            redirect URL must then carry the same one (the interactive login always checks
            its own). A bare code carries no state, so nothing ties it to a login link: it is
            taken only when no state is expected, never in the interactive login.

    Returns:
        Who logged in and until when (no secrets).
    """
    install_log_filter()
    logger = get_run_logger()
    credentials = load_block(DinteroCredentials, credentials_block)
    paused = False
    expected_state = state
    if authorization_response is None:
        expected_state = new_state()
        url = build_authorize_url(
            credentials.oidc_authorize_url,
            credentials.client_id,
            credentials.redirect_uri,
            expected_state,
        )
        logger.info(
            "Log in to Dintero: open %s , log in, then resume this run and paste the URL you "
            "were redirected to",
            url,
        )
        create_link_artifact(
            link=url,
            link_text="Log in to Dintero",
            description="Open, log in, then resume the run and paste the redirect URL.",
        )
        try:
            answer = pause_flow_run(
                wait_for_input=LoginInput.with_initial_data(
                    description="Paste the URL your browser was redirected to after logging in."
                ),
                timeout=timeout_seconds,
                poll_interval=poll_interval_seconds,
                key=PAUSE_KEY,
            )
        except FlowPauseTimeout:
            raise LoginError(
                f"nobody pasted a redirect URL within {timeout_seconds} s; run the login again"
            ) from None
        paused = True
        pasted = answer.authorization_response.get_secret_value()
    else:
        pasted = (
            authorization_response.get_secret_value()
            if isinstance(authorization_response, SecretStr)
            else str(authorization_response)
        )
        if pasted == MASK:
            raise LoginError(
                "the authorization response arrived masked (it was stored as a deployment "
                "parameter): start the login without it and paste the code into the pause form"
            )
    register_secret(pasted)
    try:
        code = parse_authorization_response(pasted, expected_state)
        facts = exchange_authorization_code(credentials_block, session_block, SecretStr(code))
    finally:
        if paused:
            _delete_pasted_input()
    who = facts["user_name"] or facts["user_sub"] or "unknown user"
    renewable = (
        "yes (refresh token)" if facts["refreshable"] else "no: log in again when it expires"
    )
    create_markdown_artifact(
        markdown=(
            f"## Dintero login\n\n"
            f"| | |\n|---|---|\n"
            f"| User | {who} (`{facts['user_sub']}`) |\n"
            f"| Account | {facts['account_id']} |\n"
            f"| Session block | `{session_block}` |\n"
            f"| Valid until | {facts['expires_at']} |\n"
            f"| Renewable | {renewable} |\n"
        ),
        description="Who logged in to Dintero, and until when.",
    )
    return facts


dintero_login = MaskedFlow(
    _dintero_login,
    name="dintero-login",
    description=(
        "Log a user in to Dintero through the API client's OIDC identity provider and save the "
        "session as a Dintero OIDC Session block. Without an authorization response the run "
        "pauses: open the login link from the logs or artifacts, log in, and paste the redirect "
        "URL into the resume form."
    ),
    log_prints=False,
)
