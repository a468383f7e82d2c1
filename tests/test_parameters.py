"""The sync's parameters are defined once (``SYNC_PARAMETERS``): the flow, the fan-out, the CLI
and ``SyncRequest`` all follow it, so none of them drifts."""

from __future__ import annotations

import inspect
from datetime import UTC, datetime

import pytest

from prefect_dintero.cli import build_parser
from prefect_dintero.errors import ConfigurationError
from prefect_dintero.flows import dintero_sync, dintero_sync_accounts
from prefect_dintero.sync.options import SYNC_PARAMETERS, SyncRequest

NAMES = [p.name for p in SYNC_PARAMETERS]


def test_the_sync_flow_takes_every_parameter_with_its_default_and_documents_it() -> None:
    signature = inspect.signature(dintero_sync.fn).parameters
    for parameter in SYNC_PARAMETERS:
        assert signature[parameter.name].default == parameter.default, parameter.name
        assert f"{parameter.name}:" in (dintero_sync.fn.__doc__ or ""), parameter.name
    # In the definition's order, so the UI's form and the CLI's help read alike.
    assert [n for n in signature if n in NAMES] == NAMES


def test_the_fan_out_passes_on_every_parameter_but_the_per_account_ones() -> None:
    signature = inspect.signature(dintero_sync_accounts.fn).parameters
    per_account = {"payout_destinations"}  # each account names its own
    for name in NAMES:
        if name in per_account:
            assert name not in signature
            continue
        # None means "not given": the deployment's own value stays.
        assert signature[name].default is None, name
        assert name in (dintero_sync_accounts.fn.__doc__ or ""), name


def test_the_cli_has_an_option_per_parameter_and_builds_the_same_request() -> None:
    parser = build_parser()
    args = parser.parse_args(
        [
            "sync",
            "--credentials-block",
            "acme",
            "--stream",
            "transactions",
            "--stream",
            "sessions",
            "--lookback-hours",
            "6",
            "--page-size",
            "50",
            "--full-refresh",
            "--payout-destination",
            "PD-main",
            "--start-date",
            "2024-01-02",
            "--reconcile-days",
            "92",
            "--max-pages",
            "7",
            "--personal-data",
            "hash",
            "--personal-data-key-block",
            "dintero-hmac-key",
        ]
    )
    assert {n for n in NAMES} <= set(vars(args))
    request = SyncRequest.build(**{n: getattr(args, n) for n in NAMES})
    assert request.flow_parameters() == {
        "streams": ["transactions", "sessions"],
        "destination": "dintero.db",
        "destination_block": None,
        "lookback_hours": 6,
        "page_size": 50,
        "full_refresh": True,
        "payout_destinations": ["PD-main"],
        "start_date": datetime(2024, 1, 2, tzinfo=UTC),
        "reconcile_days": 92,
        "max_pages": 7,
        "personal_data": "hash",
        "personal_data_key_block": "dintero-hmac-key",
    }
    # Left out, each option is the parameter's default.
    bare = parser.parse_args(["sync", "--credentials-block", "acme"])
    assert {n: getattr(bare, n) for n in NAMES} == {p.name: p.default for p in SYNC_PARAMETERS}


def test_a_request_round_trips_through_its_flow_parameters() -> None:
    request = SyncRequest.build(
        streams=["customers"], lookback_hours=1.5, reconcile_days=3, max_pages=9
    )
    parameters = request.flow_parameters()
    assert list(parameters) == NAMES
    assert SyncRequest.build(**parameters) == request


def test_an_unknown_parameter_is_named_with_the_known_ones() -> None:
    with pytest.raises(
        ConfigurationError, match=r"unknown sync parameter.*lookback_days.*expected"
    ):
        SyncRequest.build(lookback_days=3)
