"""client.iter_records: any stream for a flow of your own, sync and async, whatever Dintero
leaves undocumented (order, optional keys, short pages, the payout destinations envelope)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from prefect_dintero.client import AsyncDinteroClient, DinteroClient
from prefect_dintero.errors import ConfigurationError
from prefect_dintero.streams.catalog import CATALOG
from prefect_dintero.streams.paginators import MalformedPageError
from prefect_dintero.times import parse_datetime

from .helpers import FAST, creds_for

DATA = dict(
    transactions=90, sessions=30, settlements=25, customers=45, transfers_per_destination=12
)
CHOICES = {
    "convenient": {},
    "least-convenient": dict(
        list_order="shuffled",
        omit_optional_keys=True,
        since_exclusive=True,
        short_pages=True,
        payout_destination_list="array",
    ),
}


def source(emu, stream: str) -> dict[str, dict]:
    spec = CATALOG[stream]
    if spec.per_destination:
        rows = [
            r for pd in emu.config.payout_destinations for r in emu.dump(stream, destination=pd)
        ]
    else:
        rows = emu.dump(stream)
    return {key_of(stream, r): r for r in rows}


def key_of(stream: str, record: dict) -> str:
    """A record's key as Dintero sends it (a balance's is its destination and currency)."""
    spec = CATALOG[stream]
    return "/".join(record[f] for f in spec.history_of or (spec.primary_key,))


def keyed(stream: str, records: list[dict]) -> dict[str, dict]:
    by_key = {key_of(stream, r): r for r in records}
    assert len(by_key) == len(records), f"{stream}: a record came twice"
    return by_key


@pytest.mark.parametrize("choice", list(CHOICES))
def test_every_stream_reads_exactly_the_source_sync_and_async(dintero_emulator_factory, choice):
    emu = dintero_emulator_factory(**DATA, **CHOICES[choice])
    creds = creds_for(emu)

    async def read_async(stream: str) -> list[dict]:
        async with AsyncDinteroClient(creds, retry_policy=FAST) as client:
            return [r async for r in client.iter_records(stream, page_size=7)]

    with DinteroClient(creds, retry_policy=FAST) as client:
        for stream in CATALOG:
            records = list(client.iter_records(stream, page_size=7))
            assert keyed(stream, records) == source(emu, stream), stream
            assert keyed(stream, asyncio.run(read_async(stream))) == source(emu, stream), stream


@pytest.mark.parametrize(
    "stream", [s.name for s in CATALOG.values() if s.incremental != "snapshot"]
)
def test_created_bounds_filter_every_stream(dintero_emulator_factory, stream):
    emu = dintero_emulator_factory(**DATA, list_order="shuffled")
    now = emu.now()
    start, end = now - timedelta(days=60), now - timedelta(days=20)
    expected = {
        k: r
        for k, r in source(emu, stream).items()
        if start <= parse_datetime(r["created_at"]) <= end
    }
    assert expected, "the window should hold some records"
    with DinteroClient(creds_for(emu), retry_policy=FAST) as client:
        got = list(client.iter_records(stream, created_from=start, created_to=end))
    assert keyed(stream, got) == expected
    if CATALOG[stream].filtered_by_api:  # the API filtered: fewer requests than reading all
        # Pages answered (a retried request, on a loaded machine, is not another page).
        reads = emu.stats()["requests"][stream].get("200", 0)
        assert reads <= len(expected) // 100 + 2


def test_mistakes_are_clear_and_a_bad_page_stops_the_reading(dintero_emulator_factory):
    emu = dintero_emulator_factory(**DATA)
    with DinteroClient(creds_for(emu), retry_policy=FAST) as client:
        with pytest.raises(ConfigurationError, match="valid streams: transactions"):
            list(client.iter_records("refunds"))
        with pytest.raises(ConfigurationError, match="created_from must be a datetime"):
            list(client.iter_records("transactions", created_from="yesterday"))
        with pytest.raises(ConfigurationError, match="payout_balances is read as it is now"):
            list(client.iter_records("payout_balances", created_to=emu.now()))
        emu.set_faults({"route": "sessions", "probability": 1.0, "extra_rows": [{"no": "id"}]})
        before = sum(emu.stats()["requests"].get("sessions", {}).values())
        with pytest.raises(MalformedPageError, match="no usable 'id'"):
            list(client.iter_records("sessions", page_size=100))
        assert sum(emu.stats()["requests"]["sessions"].values()) - before == 1
