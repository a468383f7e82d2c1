"""Helpers the test modules share (test modules never import from each other)."""

from __future__ import annotations

from pydantic import SecretStr

from prefect_dintero.auth.client_credentials import ClientCredentials
from prefect_dintero.client import DinteroClient
from prefect_dintero.http.retry import RetryPolicy
from prefect_dintero.streams.catalog import CATALOG
from prefect_dintero.sync.options import SyncRequest
from prefect_dintero.sync.stream_sync import sync_account_stream
from prefect_dintero.times import parse_datetime

AID = "T12345678"
#: Retries as the client makes them, with waits short enough for tests.
FAST = RetryPolicy(max_attempts=8, backoff_base=0.01, backoff_cap=0.05, retry_after_cap=0.2)


def creds_for(emu, **overrides) -> ClientCredentials:
    fields = dict(
        account_id=AID,
        client_id=emu.config.client_id,
        client_secret=SecretStr(emu.config.client_secret),
        api_url=emu.url,
        checkout_url=emu.url,
    )
    fields.update(overrides)
    return ClientCredentials(**fields)


def options(emu, **kw) -> SyncRequest:
    return SyncRequest(
        page_size=kw.pop("page_size", 17), payout_destinations=emu.config.payout_destinations, **kw
    )


def sync_all(emu, sink, opts=None, policy=FAST, streams=None):
    results = {}
    with DinteroClient(creds_for(emu), retry_policy=policy) as client:
        for spec in streams or CATALOG.values():
            results[spec.name] = sync_account_stream(client, sink, spec, AID, opts or options(emu))
    return results


def source_key(spec, obj: dict) -> str:
    """An object's key as Dintero sends it (a balance's: its destination and currency)."""
    return "/".join(obj[f] for f in spec.history_of or (spec.primary_key,))


def table_as_sent(spec, rows: list[dict]) -> dict[str, dict]:
    """A table's objects by their source key, as Dintero sent them: a snapshot's rows without
    the run's time (and a history's key) the sync adds, and of a history only the last run's."""
    if spec.incremental != "snapshot":
        return {r[spec.primary_key]: r["raw"] for r in rows}
    if spec.history_of and rows:
        newest = max(r["taken_at"] for r in rows)
        rows = [r for r in rows if r["taken_at"] == newest]
    added = {"taken_at", spec.primary_key} if spec.history_of else {"taken_at"}
    return {
        source_key(spec, r["raw"]): {k: v for k, v in r["raw"].items() if k not in added}
        for r in rows
    }


def assert_equals_source(emu, sink, streams=None):
    for spec in streams or CATALOG.values():
        source = {source_key(spec, o): o for o in emu.dump(spec.name)}
        rows = sink.rows(spec, AID)
        table = table_as_sent(spec, rows)
        if not spec.history_of:
            assert len(rows) == len(table), f"{spec.name}: duplicate keys"
        assert table.keys() == source.keys(), (
            f"{spec.name}: {len(table)} rows, source has {len(source)}"
        )
        assert table == source, f"{spec.name}: content differs"


def check_cursor_not_ahead_of_data(emu, sink):
    """Every source object at or before a committed cursor is in the table."""
    for spec in CATALOG.values():
        if spec.incremental == "snapshot":  # read whole every run: no cursor to be ahead
            continue
        for partition in emu.config.payout_destinations if spec.per_destination else [""]:
            state = sink.read_state(AID, spec.name, partition)
            if state.cursor is None:
                continue
            have = {r[spec.primary_key] for r in sink.rows(spec, AID)}
            source = emu.dump(spec.name, destination=partition or None)
            missing = [
                o
                for o in source
                if parse_datetime(o[spec.cursor_field]) <= state.cursor
                and o[spec.primary_key] not in have
            ]
            assert not missing, (
                f"{spec.name}/{partition}: cursor {state.cursor} is ahead of {len(missing)} missing rows"
            )


def refuse_rows(sink, destination: str) -> None:
    """Make the database refuse every customer row: a changed column type, whose error quotes
    the value (PostgreSQL: 'invalid input syntax for type integer: "…"'), or on SQLite, which
    converts anything, a trigger (its message cannot quote a value, but the statement's
    parameters would be printed by an engine that does not hide them)."""
    from sqlalchemy import text

    with sink.engine.begin() as conn:
        if sink.dialect.name == "sqlite":
            conn.execute(
                text(
                    "CREATE TRIGGER refuse_customers BEFORE INSERT ON dintero_customers BEGIN "
                    "SELECT RAISE(ABORT, 'refused'); END"
                )
            )
        elif sink.dialect.name == "postgresql":
            conn.execute(
                text("ALTER TABLE dintero_customers ALTER COLUMN email TYPE integer USING NULL")
            )
        else:
            conn.execute(text("ALTER TABLE dintero_customers ALTER email TYPE INTEGER"))


def unique(prefix: str) -> str:
    """A name no other test uses (blocks and sessions live on one test server)."""
    import uuid

    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def save_credentials(emu, name: str | None = None, **overrides) -> str:
    """A DinteroCredentials block for the emulator, with its login page: its name."""
    from prefect_dintero import DinteroCredentials

    name = name or unique("dintero")
    fields = dict(
        account_id=AID,
        client_id=emu.config.client_id,
        client_secret=SecretStr(emu.config.client_secret),
        api_url=emu.url,
        checkout_url=emu.url,
        oidc_authorize_url=f"{emu.url}/oidc/authorize",
        redirect_uri=emu.config.redirect_uris[0],
    )
    fields.update(overrides)
    DinteroCredentials(**fields).save(name, overwrite=True, _sync=True)
    return name
