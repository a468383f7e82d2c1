"""Values a database cannot store, and rows a database refuses: nothing fails on every run, and
nothing of a customer's row reaches an error message.

A NUL (``\\u0000``) or a lone surrogate (``\\ud800``) is valid in Dintero's JSON. PostgreSQL stores
neither in text or JSONB, SQLite's driver cannot encode a lone surrogate, DuckDB refuses it as
invalid UTF-8: such strings are stored cleaned, on every dialect.
"""

from __future__ import annotations

import json
import logging

import httpx
import pytest

from prefect_dintero.client import DinteroClient
from prefect_dintero.errors import PageRefused
from prefect_dintero.sink import Sink
from prefect_dintero.sink.values import ESCAPED, unescape_text
from prefect_dintero.streams.catalog import CATALOG
from prefect_dintero.sync.options import SyncRequest
from prefect_dintero.sync.stream_sync import sync_account_stream

from .helpers import AID, FAST, creds_for, refuse_rows

ODD_FIRST = "A\ud800da"
ODD_LAST = "Love\x00lace"


class OddValues(httpx.HTTPTransport):
    """Passes requests to the emulator; the first customer of each page gets a first name with
    a lone surrogate and a last name with a NUL, and a key with a NUL, written as JSON escapes
    (the only way they travel in JSON)."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if "/customers" not in request.url.path:
            return response
        response.read()
        body = response.json()
        items = body if isinstance(body, list) else body.get("customers", [])
        if items:
            items[0]["first_name"] = ODD_FIRST
            items[0]["last_name"] = ODD_LAST
            items[0]["metadata"] = {"note\x00": "x"}
        return httpx.Response(
            response.status_code,
            headers={"content-type": "application/json"},
            content=json.dumps(body).encode(),
        )


def test_odd_characters_are_stored_cleaned_with_a_warning(dintero_emulator, destination, caplog):
    spec = CATALOG["customers"]
    sink = Sink(destination)
    sink.prepare([spec])
    client = DinteroClient(creds_for(dintero_emulator), transport=OddValues(), retry_policy=FAST)
    with caplog.at_level(logging.WARNING, logger="prefect_dintero"), client:
        [result] = sync_account_stream(client, sink, spec, AID, SyncRequest(page_size=25))
    assert result.fetched and sink.count(spec, AID) == len(dintero_emulator.dump("customers"))
    odd = [r for r in sink.rows(spec, AID) if ESCAPED in json.dumps(r["raw"])]
    assert odd, "no odd row was stored"
    for row in odd:
        # The typed columns hold U+FFFD in place of each odd character.
        assert row["first_name"] == "A\ufffdda" and row["last_name"] == "Love\ufffdlace"
        # raw holds them escaped; the original comes back whole.
        raw = row["raw"]
        assert unescape_text(raw["first_name"][ESCAPED]) == ODD_FIRST
        assert unescape_text(raw["last_name"][ESCAPED]) == ODD_LAST
        assert f"{ESCAPED}:note\\u0000" in raw["metadata"]
    warning = caplog.text
    assert "customers" in warning and "first_name" in warning and "last_name" in warning
    assert odd[0]["id"] in warning
    # A second run of the same page changes nothing: the cleaned copy compares equal.
    with DinteroClient(
        creds_for(dintero_emulator), transport=OddValues(), retry_policy=FAST
    ) as client:
        [again] = sync_account_stream(
            client, sink, spec, AID, SyncRequest(page_size=25, full_refresh=True)
        )
    assert again.updated == 0


def test_a_refused_row_is_named_by_its_id_never_by_its_values(dintero_emulator, destination):
    from sqlalchemy import create_engine

    from prefect_dintero.sink import resolve_destination

    spec = CATALOG["customers"]
    if destination.startswith("duckdb"):
        sink = Sink(destination)
    else:
        # An engine made elsewhere, as a connector block's is: it would print parameters.
        sink = Sink(engine=create_engine(resolve_destination(destination)))
    sink.prepare([spec])
    refuse_rows(sink, destination)
    client = DinteroClient(creds_for(dintero_emulator), retry_policy=FAST)
    with client, pytest.raises(PageRefused) as refused:
        sync_account_stream(client, sink, spec, AID, SyncRequest(page_size=25))
    message = str(refused.value)
    customers = dintero_emulator.dump("customers")
    assert "customers" in message and "dintero_customers" in message
    assert any(c["id"] in message for c in customers)
    for customer in customers:
        for field in ("email", "first_name", "last_name", "phone_number"):
            value = customer.get(field)
            if value:
                assert value not in message, field
    # Nothing chained to it either: a traceback would print the database's text.
    assert refused.value.__cause__ is None and refused.value.__suppress_context__
    assert sink.count(spec) == 0


@pytest.mark.parametrize("mode", ["hash", "drop"])
def test_every_policy_survives_what_keep_survives(dintero_emulator, destination, mode):
    """The defect: ``hash`` encoded a lone surrogate as UTF-8 and failed the stream on every
    run, where ``keep`` stored the value cleaned."""
    from pydantic import SecretStr

    from prefect_dintero.streams.personal_data import PersonalDataPolicy

    key = SecretStr("k" * 32)
    spec = CATALOG["customers"]
    sink = Sink(destination)
    sink.prepare([spec])
    request = SyncRequest(page_size=25, personal_data=mode)
    with DinteroClient(
        creds_for(dintero_emulator), transport=OddValues(), retry_policy=FAST
    ) as client:
        [result] = sync_account_stream(
            client, sink, spec, AID, request, personal_data_key=key if mode == "hash" else None
        )
    assert result.fetched and sink.count(spec, AID) == len(dintero_emulator.dump("customers"))
    names = {r["first_name"] for r in sink.rows(spec, AID)}
    if mode == "drop":
        assert names == {None}
    else:
        policy = PersonalDataPolicy("hash", key)
        odd, near = policy.hash_value(ODD_FIRST), policy.hash_value("A\ufffdda")
        assert odd in names and odd != near  # hashed, and unlike the cleaned text's hash
    sink.dispose()
