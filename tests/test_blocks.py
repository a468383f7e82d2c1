"""The blocks: standards, validation, and behaviour without a Prefect server."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from prefect.testing.standard_test_suites import BlockStandardTestSuite
from pydantic import SecretStr, ValidationError

from prefect_dintero import DinteroCredentials, DinteroOIDCSession, DinteroServiceToken
from prefect_dintero.client import AsyncDinteroClient, DinteroClient


@pytest.mark.parametrize("block", [DinteroCredentials, DinteroOIDCSession, DinteroServiceToken])
class TestBlockStandards(BlockStandardTestSuite):
    @pytest.fixture
    def block(self, block):
        return block

    def test_has_a_valid_image(self, block):
        pytest.skip("the logo check downloads the image; this machine has no network")


def creds(**overrides) -> DinteroCredentials:
    fields = dict(
        account_id="T12345678", client_id="cid", client_secret=SecretStr("a-client-secret")
    )
    fields.update(overrides)
    return DinteroCredentials(**fields)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"account_id": "12345678"}, "not a Dintero account id"),
        ({"account_id": "T1234"}, "not a Dintero account id"),
        ({"api_url": "http://api.dintero.com"}, "plain http to a remote host"),
        ({"checkout_url": "http://checkout.example.com"}, "plain http to a remote host"),
        ({"oidc_authorize_url": "http://idp.example.com/authorize"}, "plain http to a remote host"),
        ({"api_url": "not a url"}, "absolute http"),
        ({"token_leeway_seconds": -1}, "greater than or equal to 0"),
    ],
)
def test_credentials_validation_is_clear(overrides, message):
    with pytest.raises(ValidationError, match=message):
        creds(**overrides)


def test_credentials_defaults_and_clients():
    block = creds()
    assert (
        block.api_url == "https://api.dintero.com"
        and block.checkout_url == "https://checkout.dintero.com"
    )
    assert block.to_core().resolved_audience == "https://api.dintero.com/v1/accounts/T12345678"
    assert isinstance(block.get_client(), DinteroClient)
    assert isinstance(block.get_client("async"), AsyncDinteroClient)
    assert isinstance(block.get_async_client(), AsyncDinteroClient)
    assert "a-client-secret" not in repr(block) and "a-client-secret" not in str(block)


def test_session_block_converts_to_and_from_tokens():
    from prefect_dintero.auth.tokens import Token

    token = Token.from_response(
        {
            "access_token": "user-access-token-1",
            "expires_in": 600,
            "refresh_token": "user-refresh-1",
            "user_info": {"authority": "https://idp", "value": {"sub": "u1", "name": "Ada"}},
        },
        datetime.now(UTC),
    )
    session = DinteroOIDCSession.from_token(creds(), token)
    assert session.to_token() == token
    assert session.user_info == {"authority": "https://idp", "value": {"sub": "u1", "name": "Ada"}}
    for text in (repr(session), str(session)):
        assert "user-access-token-1" not in text and "user-refresh-1" not in text
    with pytest.raises(ValueError, match="not saved"):
        session.get_client()
    assert session.expires_at - datetime.now(UTC) < timedelta(seconds=601)


def test_core_never_imports_prefect():
    code = (
        "import sys\n"
        "import prefect_dintero, prefect_dintero.client, prefect_dintero.emulator, prefect_dintero.cli\n"
        "import prefect_dintero.bearer, prefect_dintero.auth.oidc_login, prefect_dintero.auth.grants\n"
        "assert 'prefect' not in sys.modules, [m for m in sys.modules if m.startswith('prefect.')][:5]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("block", [DinteroCredentials, DinteroOIDCSession, DinteroServiceToken])
def test_every_field_has_a_human_title_and_a_description(block):
    # What the block's page in the Prefect UI shows: never a bare class or attribute name.
    schema = block.model_json_schema()
    for name, field in schema["properties"].items():
        # A nested block's field without a title is labelled with the class name.
        assert field.get("title") and field["title"] != "DinteroCredentials", (name, field)
        assert field.get("description"), name
