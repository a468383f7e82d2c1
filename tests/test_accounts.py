"""Many accounts: dintero-sync-accounts as subflows and through a served deployment."""

from __future__ import annotations

import uuid

import pytest
from prefect.client.orchestration import get_client
from pydantic import SecretStr

from prefect_dintero import DinteroCredentials
from prefect_dintero.emulator import EmulatorConfig, running_emulator
from prefect_dintero.errors import ConfigurationError
from prefect_dintero.flows import AccountTarget, dintero_sync_accounts
from prefect_dintero.flows.sync import account_limit_name
from prefect_dintero.sink import Sink
from prefect_dintero.streams.catalog import CATALOG

pytestmark = pytest.mark.usefixtures("prefect_server")
ACCOUNTS = ["T12345678", "T87654321", "T11223344"]


@pytest.fixture(scope="module")
def emu():
    config = EmulatorConfig(
        account_ids=ACCOUNTS,
        transactions=40,
        sessions=10,
        settlements=8,
        customers=12,
        transfers_per_destination=5,
    )
    with running_emulator(config) as server:
        yield server


@pytest.fixture(scope="module")
def blocks(emu) -> list[str]:
    tag = uuid.uuid4().hex[:6]
    names = []
    for account in ACCOUNTS:
        name = f"merchant-{account.lower()}-{tag}"
        DinteroCredentials(
            account_id=account,
            client_id=emu.config.client_id,
            client_secret=SecretStr(emu.config.client_secret),
            api_url=emu.url,
            checkout_url=emu.url,
        ).save(name, overwrite=True, _sync=True)
        names.append(name)
    return names


def assert_each_account_synced(emu, destination, streams):
    sink = Sink(destination)
    for account in ACCOUNTS:
        for stream in streams:
            spec = CATALOG[stream]
            table = {r[spec.primary_key] for r in sink.rows(spec, account)}
            assert table == {o[spec.primary_key] for o in emu.dump(stream, account_id=account)}, (
                account,
                stream,
            )


def test_fan_out_as_subflows(emu, blocks, tmp_path):
    destination = str(tmp_path / "accounts.db")
    rows = dintero_sync_accounts(
        [AccountTarget(credentials_block=b) for b in blocks],
        streams=["transactions", "customers"],
        destination=destination,
    )
    assert [r["state"] for r in rows] == ["COMPLETED"] * 3
    assert all(r["fetched"] > 0 for r in rows)
    assert_each_account_synced(emu, destination, ["transactions", "customers"])
    with get_client(sync_client=True) as client:
        account = DinteroCredentials.load(blocks[0], _sync=True).account_id
        limit = client.read_global_concurrency_limit_by_name(account_limit_name(account, emu.url))
    assert limit.limit == 1


def test_fan_out_rejects_duplicates(blocks, tmp_path):
    with pytest.raises(ConfigurationError, match="listed twice"):
        dintero_sync_accounts(
            [AccountTarget(credentials_block=blocks[0])] * 2, destination=str(tmp_path / "x.db")
        )
