"""Incremental sync into SQLite and PostgreSQL against the emulator (no Prefect)."""

from __future__ import annotations

import logging
import os
import random
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import create_engine, text

from prefect_dintero.auth.store import DEFAULT_STORE
from prefect_dintero.client import DinteroClient
from prefect_dintero.errors import ConfigurationError, MalformedResponseError, StreamSkipped
from prefect_dintero.sink import DestinationError, Sink
from prefect_dintero.streams.catalog import CATALOG, resolve_streams
from prefect_dintero.streams.paginators import (
    LastEvaluatedKeyPaginator,
    MalformedPageError,
    NextPageTokenPaginator,
    PaginationError,
    SinceDatetimePaginator,
    StartingAfterPaginator,
    pages,
)
from prefect_dintero.streams.state import StreamState
from prefect_dintero.sync.options import SyncRequest
from prefect_dintero.sync.stream_sync import sync_account_stream
from prefect_dintero.times import parse_datetime

from .helpers import (
    AID,
    FAST,
    assert_equals_source,
    check_cursor_not_ahead_of_data,
    creds_for,
    options,
    sync_all,
)

DATA = dict(
    transactions=180, sessions=70, settlements=45, customers=60, transfers_per_destination=35
)


@pytest.fixture(autouse=True)
def _fresh_tokens():
    DEFAULT_STORE.clear()


@pytest.fixture
def emu(dintero_emulator_factory):
    return dintero_emulator_factory(**DATA)


# -- the catalog and paginators -------------------------------------------------------------------


def test_unknown_stream_lists_the_valid_ones():
    with pytest.raises(
        ConfigurationError,
        match="unknown stream 'payments'; valid streams: transactions, sessions, settlements, customers, payout_transfers",
    ):
        resolve_streams(["transactions", "payments"])
    assert [s.name for s in resolve_streams(None)] == list(CATALOG)


def fake_fetch(bodies):
    calls = []

    def fetch(params):
        calls.append(params)
        return bodies[min(len(calls) - 1, len(bodies) - 1)]

    return fetch, calls


def test_repeated_cursor_is_detected():
    page = [{"id": "a"}, {"id": "b"}]
    fetch, calls = fake_fetch([page])
    with pytest.raises(PaginationError, match="same page cursor twice"):
        list(pages(fetch, StartingAfterPaginator(2)))
    assert len(calls) == 2


def test_page_cap_stops_with_an_error():
    n = iter(range(10**6))

    def fetch(params):
        i = next(n)
        return [{"id": f"x{i}-0"}, {"id": f"x{i}-1"}]

    with pytest.raises(PaginationError, match="page cap of 5"):
        list(pages(fetch, StartingAfterPaginator(2), max_pages=5))


def test_envelope_without_a_key_stops_and_wrong_shapes_are_malformed():
    fetch, _ = fake_fetch([{"items": [{"id": "1"}]}])
    assert [p.rows for p in pages(fetch, LastEvaluatedKeyPaginator(5))] == [[{"id": "1"}]]
    # items and entries are optional in Dintero's schemas: a missing list is an empty page.
    for body in ({}, {"items": None}, {"last_evaluated_key": None}):
        fetch, _ = fake_fetch([body])
        assert [p.rows for p in pages(fetch, LastEvaluatedKeyPaginator(5))] == [[]]
    fetch, _ = fake_fetch([{"next_page_token": ""}])
    assert [p.rows for p in pages(fetch, NextPageTokenPaginator(5))] == [[]]
    for body, paginator in (
        ([{"id": "1"}], LastEvaluatedKeyPaginator(5)),
        ({"items": "x"}, LastEvaluatedKeyPaginator(5)),
        ({"entries": [1]}, NextPageTokenPaginator(5)),
        ([1, 2], StartingAfterPaginator(5)),
        ({"x": 1}, StartingAfterPaginator(5)),
    ):
        fetch, _ = fake_fetch([body])
        with pytest.raises(MalformedPageError):
            list(pages(fetch, paginator))


def test_a_short_page_is_not_the_last_one():
    fetch, calls = fake_fetch([[{"id": "a"}], [{"id": "b"}, {"id": "c"}], []])
    assert [len(p.rows) for p in pages(fetch, StartingAfterPaginator(5))] == [1, 2, 0]
    assert [c.get("starting_after") for c in calls] == [None, "a", "c"]


def customer(i: int, at: str) -> dict:
    return {"id": f"c{i:03d}", "updated_at": at}


def test_since_datetime_pages_by_the_newest_value_whatever_the_order_within_a_page():
    until = datetime(2026, 2, 1, tzinfo=UTC)
    page1 = [customer(2, "2026-01-02T00:00:00.000Z"), customer(1, "2026-01-01T00:00:00.000Z")]
    page2 = [customer(2, "2026-01-02T00:00:00.000Z"), customer(3, "2026-01-03T00:00:00.000Z")]
    page3 = [customer(3, "2026-01-03T00:00:00.000Z")]
    fetch, calls = fake_fetch([page1, page2, page3])
    paginator = SinceDatetimePaginator(2, None, until)
    assert [len(p.rows) for p in pages(fetch, paginator)] == [2, 2, 1]
    # From the epoch, then one millisecond before the newest value: inclusive or exclusive,
    # the rows sharing it come back.
    assert [c["since_datetime"] for c in calls] == [
        "1969-12-31T23:59:59.999Z",
        "2026-01-01T23:59:59.999Z",
        "2026-01-02T23:59:59.999Z",
    ]


def test_since_datetime_ignores_future_rows_for_paging():
    until = datetime(2026, 2, 1, tzinfo=UTC)
    page1 = [customer(9, "2099-01-01T00:00:00.000Z"), customer(1, "2026-01-01T00:00:00.000Z")]
    fetch, calls = fake_fetch([page1, [customer(1, "2026-01-01T00:00:00.000Z")]])
    assert len(list(pages(fetch, SinceDatetimePaginator(2, None, until)))) == 2
    assert calls[1]["since_datetime"] == "2025-12-31T23:59:59.999Z"


def test_since_datetime_grows_the_page_then_reads_the_whole_list_past_a_cluster():
    until = datetime(2026, 2, 1, tzinfo=UTC)
    same = [customer(i, "2026-01-01T00:00:00.000Z") for i in range(150)]
    fetch, calls = fake_fetch([same[:10], same[:10], same[:100], same[:100], same[100:], []])
    paginator = SinceDatetimePaginator(10, None, until)
    got = list(pages(fetch, paginator))
    assert [c.get("limit") for c in calls] == [10, 10, 100, 100, 100, 100]
    # The fourth request reads the whole list (no since_datetime), then pages by id.
    assert "since_datetime" not in calls[3] and "starting_after" not in calls[3]
    assert [c.get("starting_after") for c in calls[4:]] == ["c099", "c149"]
    assert paginator.scanning and len(got) == 6


# -- full and incremental sync ------------------------------------------------------------------


def test_full_sync_equals_the_source_for_every_stream(emu, destination, monkeypatch):
    from prefect_dintero.sync import window_reader as window_slices

    # The page count below is that of one read in turn (test_concurrent_slices.py has slices).
    monkeypatch.setattr(window_slices, "MIN_PAGES_TO_CUT", 10**9)
    sink = Sink(destination)
    sink.prepare(list(CATALOG.values()))
    results = sync_all(emu, sink)
    assert_equals_source(emu, sink)
    tx = results["transactions"][0]
    assert tx.inserted == 180 and tx.pages == 180 // 17 + 2 and tx.cursor_before is None
    assert parse_datetime(tx.cursor_after) == max(
        parse_datetime(t["created_at"]) for t in emu.dump("transactions")
    )
    assert [r.partition for r in results["payout_transfers"]] == emu.config.payout_destinations
    state = sink.read_state(AID, "transactions")
    assert state.resume is None and state.rows_total == 180


def test_incremental_sync_fetches_only_the_lookback_window(emu, destination):
    sink = Sink(destination)
    sink.prepare(list(CATALOG.values()))
    sync_all(emu, sink)
    changed = emu.advance_clock(
        6 * 3600,
        new_transactions=6,
        new_sessions=3,
        new_settlements=2,
        new_customers=4,
        update_customers=5,
        new_transfers=2,
    )["changed"][AID]
    emu.mutate(update_transactions=4, recent_days=2)
    results = sync_all(emu, sink)
    assert_equals_source(emu, sink)
    tx = results["transactions"][0]
    source = emu.dump("transactions")
    window_start = parse_datetime(results["transactions"][0].cursor_before) - timedelta(days=3)
    in_window = [t for t in source if parse_datetime(t["created_at"]) >= window_start]
    assert tx.fetched == len(in_window) < len(source) / 4
    assert tx.inserted == changed["transactions"]
    assert results["customers"][0].inserted == 4 and results["customers"][0].updated == 5
    assert results["settlements"][0].inserted == 2
    # A third run with nothing new fetches only the window again, and changes nothing.
    again = sync_all(emu, sink)
    assert all(
        r.inserted == 0 and r.updated == 0
        for name, rs in again.items()
        if CATALOG[name].incremental != "snapshot"  # a snapshot is taken by every run
        for r in rs
    )


def test_changed_transactions_inside_the_lookback_are_updated(emu, destination):
    sink = Sink(destination)
    sink.prepare([CATALOG["transactions"]])
    sync_all(emu, sink, streams=[CATALOG["transactions"]])
    emu.advance_clock(3600)
    changed = emu.mutate(update_transactions=3, recent_days=400)["changed"][AID]["transactions"]
    results = sync_all(
        emu, sink, options(emu, lookback=timedelta(days=400)), streams=[CATALOG["transactions"]]
    )
    assert results["transactions"][0].updated == changed == 3
    assert_equals_source(emu, sink, [CATALOG["transactions"]])


def test_full_refresh_ignores_the_cursor(emu, destination):
    sink = Sink(destination)
    sink.prepare([CATALOG["sessions"]])
    sync_all(emu, sink, streams=[CATALOG["sessions"]])
    results = sync_all(emu, sink, options(emu, full_refresh=True), streams=[CATALOG["sessions"]])
    assert results["sessions"][0].fetched == 70 and results["sessions"][0].inserted == 0


def test_a_state_row_deleted_mid_run_is_recreated_and_nothing_is_lost(emu, destination):
    # Deleting a stream's state row is how a user would reset it by hand; the page being
    # written finds no row, makes one, and the run still ends with the whole window stored.
    sink = Sink(destination)
    spec = CATALOG["transactions"]
    sink.prepare([spec])
    engine = create_engine(sink.url)

    def delete_state_after_page_three(result) -> None:
        if result.pages == 3:
            with engine.begin() as conn:
                conn.execute(text("DELETE FROM dintero_sync_state"))

    with DinteroClient(creds_for(emu), retry_policy=FAST) as client:
        [result] = sync_account_stream(
            client, sink, spec, AID, options(emu), on_page=delete_state_after_page_three
        )
    engine.dispose()
    assert result.pages > 3
    assert_equals_source(emu, sink, [spec])
    state = sink.read_state(AID, "transactions")
    assert state.cursor is not None and not state.in_progress
    # The next run is incremental again: only the lookback is read.
    again = sync_all(emu, sink, streams=[spec])["transactions"][0]
    assert again.fetched < len(emu.dump("transactions")) / 2 and again.inserted == 0


def test_older_copies_never_replace_newer_rows(destination):
    sink = Sink(destination)
    spec = CATALOG["transactions"]
    sink.prepare([spec])
    newer = {
        "id": f"{AID}.aaaa",
        "created_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-03T00:00:00Z",
        "status": "CAPTURED",
    }
    older = {**newer, "updated_at": "2026-01-02T00:00:00Z", "status": "AUTHORIZED"}
    keep = lambda state, write: state  # noqa: E731
    sink.write_page(spec, AID, "", [newer], keep)
    write, _ = sink.write_page(spec, AID, "", [older, older], keep)
    assert write.unchanged == 1 and write.duplicates == 1
    [row] = sink.rows(spec, AID)
    assert row["status"] == "CAPTURED" and row["raw"]["updated_at"] == "2026-01-03T00:00:00Z"
    assert row["updated_at"] == datetime(2026, 1, 3, tzinfo=UTC)


def test_a_page_missing_its_primary_key_is_refused_before_the_next_request_and_the_sink():
    # The paginator checks each page's keys (the stream's check_keys) before it asks for the
    # next page or hands the page on: the sink only ever sees checked rows.
    spec = CATALOG["transactions"]
    fetch, calls = fake_fetch([[{"id": f"{AID}.ok"}, {"created_at": "2026-01-01T00:00:00Z"}], []])
    with pytest.raises(MalformedPageError, match="has no usable 'id'"):
        list(pages(fetch, StartingAfterPaginator(2), check_rows=spec.check_keys))
    assert len(calls) == 1


def test_a_malformed_page_is_a_clear_error_and_nothing_of_it_is_written(emu, destination):
    sink = Sink(destination)
    spec = CATALOG["transactions"]
    sink.prepare([spec])
    emu.set_faults({"route": "transactions", "sequence": ["ok", {"malformed": True}]})
    # One page after another (test_concurrent_slices.py has the same with slices).
    with (
        pytest.raises(MalformedResponseError, match="not valid JSON"),
        DinteroClient(creds_for(emu, max_concurrent_requests=1), retry_policy=FAST) as client,
    ):
        sync_account_stream(client, sink, spec, AID, options(emu))
    assert sink.count(spec) == 17  # the first page only
    state = sink.read_state(AID, "transactions")
    assert state.cursor is None and state.resume is not None  # not advanced; resumes at page 2
    results = sync_all(emu, sink, streams=[spec])
    assert results["transactions"][0].resumed and results["transactions"][0].inserted == 180 - 17
    assert_equals_source(emu, sink, [spec])


def test_a_refused_resume_cursor_restarts_the_window(emu, destination):
    sink = Sink(destination)
    spec = CATALOG["sessions"]
    sink.prepare([spec])
    sink.write_page(
        spec,
        AID,
        "",
        [],
        lambda s, w: StreamState(
            resume={"limit": 17, "starting_after": f"{AID}.gone"},
            window_lower=None,
            window_upper=datetime.now(UTC),
        ),
    )
    results = sync_all(emu, sink, streams=[spec])
    assert not results["sessions"][0].resumed
    assert_equals_source(emu, sink, [spec])


def test_faults_during_sync_give_the_same_data(emu, destination):
    sink = Sink(destination)
    sink.prepare(list(CATALOG.values()))
    emu.set_faults(
        {"route": "*", "probability": 0.15, "status": 429, "retry_after": 0},
        {"route": "*", "probability": 0.05, "status": 503},
        {"route": "*", "probability": 0.05, "drop": True},
        # A 401 from the token endpoint is the client's credentials: permanent, not a fault.
        *(
            {"route": route, "probability": 0.03, "status": 401}
            for route in (
                "transactions",
                "sessions",
                "settlements",
                "customers",
                "payout_transfers",
            )
        ),
    )
    results = sync_all(emu, sink)
    emu.clear_faults()
    assert_equals_source(emu, sink)
    injected = emu.stats()["faults_injected"]
    assert injected.get("429", 0) > 0 and sum(injected.values()) > 5
    assert sum(r.retries for rs in results.values() for r in rs) > 0


def test_two_syncs_at_once_do_not_corrupt_each_other(emu, destination):
    sink_a, sink_b = Sink(destination), Sink(destination)
    sink_a.prepare(list(CATALOG.values()))
    errors = []

    def run(sink):
        try:
            sync_all(emu, sink)
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(s,)) for s in (sink_a, sink_b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert_equals_source(emu, sink_a)
    for spec in CATALOG.values():
        for partition in emu.config.payout_destinations if spec.per_destination else [""]:
            state = sink_a.read_state(AID, spec.name, partition)
            assert state.resume is None and state.cursor is not None


def test_streams_creating_a_new_duckdb_file_at_once_all_get_it(tmp_path):
    # The flow's stream tasks each create their sink at once. DuckDB refuses, within a process,
    # a connection to a file whose configuration differs from the open ones (CI caught a bare
    # duckdb.connect of the file racing the engines' connections): the file is made elsewhere
    # and linked into place before any engine connects to it.
    for attempt in range(15):
        url = f"duckdb:///{tmp_path / f'new-{attempt}.duckdb'}"
        start = threading.Barrier(len(CATALOG))
        errors: list[Exception] = []

        def open_sink(spec, start=start, errors=errors, url=url) -> None:
            start.wait()
            try:
                sink = Sink(url)
                sink.prepare([spec])
                sink.dispose()
            except Exception as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=open_sink, args=(spec,)) for spec in CATALOG.values()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
    assert stat.S_IMODE((tmp_path / "new-0.duckdb").stat().st_mode) == 0o600


def test_a_new_duckdb_file_is_made_private_before_it_is_where_others_look(tmp_path, monkeypatch):
    pytest.importorskip("duckdb")
    import duckdb

    database = tmp_path / "private.duckdb"
    written_at: list[tuple[str, bool]] = []
    connect = duckdb.connect

    def spying_connect(*args, **kwargs):
        path = kwargs.get("database", args[0] if args else ":memory:")
        written_at.append((str(path), database.exists()))
        return connect(*args, **kwargs)

    monkeypatch.setattr(duckdb, "connect", spying_connect)
    old_umask = os.umask(0o022)
    try:
        sink = Sink(f"duckdb:///{database}")
        sink.prepare(list(CATALOG.values()))
        sink.dispose()
    finally:
        os.umask(old_umask)
    # DuckDB wrote the new file elsewhere (a private folder beside it), before it existed here.
    [(path, existed)] = [w for w in written_at if w[0] not in (str(database), ":memory:")]
    assert os.path.dirname(path) != str(tmp_path) and not existed
    assert stat.S_IMODE(database.stat().st_mode) == 0o600
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".dintero-new-")]


EXIT_AS_THE_IDLE_CONNECTIONS_CLOSE = textwrap.dedent(
    """
    import sys, time
    from prefect_dintero.sink import Sink
    from prefect_dintero.sink.duckdb import IDLE_RELEASE_SECONDS
    from prefect_dintero.streams.catalog import CATALOG
    sink = Sink("duckdb:///" + sys.argv[1])
    sink.prepare([CATALOG["transactions"]])  # connections checked in: the idle timer starts
    time.sleep(IDLE_RELEASE_SECONDS + float(sys.argv[2]))  # exit as it closes them
    """
)


def test_a_process_exiting_as_its_idle_duckdb_connections_close_exits_cleanly(tmp_path):
    # Before: the idle-release timer thread closed DuckDB's connections while the interpreter
    # shut down, and the process aborted ("terminate called ...", exit status 134): here at
    # offsets 0 and 0.01 s, and in about half of the pytest runs of the DuckDB tests.
    pytest.importorskip("duckdb")
    for offset in (-0.01, 0.0, 0.01, 0.02, 0.03):
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                EXIT_AS_THE_IDLE_CONNECTIONS_CLOSE,
                str(tmp_path / f"{offset}.duckdb"),
                str(offset),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, (offset, done.returncode, done.stderr[-2000:])
        assert "terminate called" not in done.stderr


def test_a_duckdb_file_that_cannot_be_made_is_a_clear_error(tmp_path):
    pytest.importorskip("duckdb")
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(
        DestinationError, match=r"cannot create the DuckDB file .*a-file/d\.duckdb: Not a directory"
    ):
        Sink(f"duckdb:///{tmp_path / 'a-file' / 'd.duckdb'}")


def test_duckdb_says_when_others_could_read_its_write_ahead_log(tmp_path, caplog):
    pytest.importorskip("duckdb")
    shared, private = tmp_path / "shared", tmp_path / "private"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    private.mkdir(mode=0o700)
    old_umask = os.umask(0o022)
    try:
        with caplog.at_level(logging.WARNING, logger="prefect_dintero.sink.duckdb"):
            sink = Sink(f"duckdb:///{shared / 'd.duckdb'}")
            sink.prepare([CATALOG["transactions"]])
            with sink.engine.connect() as conn:  # a write not yet checkpointed: the WAL
                conn.execute(text("CHECKPOINT"))
                conn.execute(text("CREATE TABLE probe (a INTEGER)"))
                conn.commit()
                wal = shared / "d.duckdb.wal"
                # The fact the warning is about: DuckDB's WAL follows the umask, not the file.
                assert stat.S_IMODE(wal.stat().st_mode) == 0o644
            sink.dispose()
            assert "d.duckdb.wal" in caplog.text and "other users" in caplog.text
            assert f"chmod 700 {shared}" in caplog.text
            caplog.clear()
            quiet = Sink(f"duckdb:///{private / 'd.duckdb'}")
            quiet.prepare([CATALOG["transactions"]])
            quiet.dispose()
            assert "wal" not in caplog.text
    finally:
        os.umask(old_umask)


def test_streams_opening_a_new_sqlite_file_at_once_all_get_it(tmp_path):
    # The flow's stream tasks each open the destination; on a new file they race to switch it to
    # WAL, which SQLite refuses ("locked") without waiting. Before the fix 4 rounds in 40 failed.
    for attempt in range(100):
        path = str(tmp_path / f"new-{attempt}.db")
        sinks = [Sink(path) for _ in CATALOG]
        start = threading.Barrier(len(sinks))
        errors: list[Exception] = []

        def open_sink(sink: Sink, spec, start=start, errors=errors) -> None:
            start.wait()
            try:
                sink.prepare([spec])
            except Exception as exc:  # surfaced below
                errors.append(exc)

        threads = [
            threading.Thread(target=open_sink, args=(sink, spec))
            for sink, spec in zip(sinks, CATALOG.values(), strict=True)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        for sink in sinks:
            sink.engine.dispose()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_newly_declared_column_is_added_as_nullable(destination):
    spec = CATALOG["settlements"]
    engine = create_engine(Sink(destination).url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "CREATE TABLE dintero_settlements (account_id VARCHAR(32) NOT NULL, id VARCHAR(255) NOT NULL, created_at TIMESTAMP, raw TEXT NOT NULL, synced_at TIMESTAMP NOT NULL, PRIMARY KEY (account_id, id))"
            )
        )
        conn.execute(
            text(
                "INSERT INTO dintero_settlements VALUES ('T12345678', 'old', NULL, '{}', '2026-01-01 00:00:00')"
            )
        )
    engine.dispose()
    sink = Sink(destination)
    sink.prepare([spec])
    with sink.engine.connect() as conn:
        columns = sink.dialect.existing_columns(conn, "dintero_settlements")
    assert {"provider", "amount", "currency", "settled_at"} <= columns
    # Added to a table holding a row: only a nullable column can be, and the row has NULL.
    [old] = sink.rows(spec)
    assert old["provider"] is None and old["amount"] is None


def test_an_unreachable_database_is_a_clear_error():
    sink = Sink("postgresql://nobody@127.0.0.1:1/nothing")
    with pytest.raises(DestinationError, match="cannot use the destination database") as info:
        sink.prepare([CATALOG["transactions"]])
    assert not info.value.retryable


@pytest.mark.parametrize("shape", ["object", "array"])
def test_payout_destinations_are_discovered_whatever_the_list_looks_like(
    dintero_emulator_factory, shape
):
    # The reference documents the objects, not the envelope: both are read.
    emu = dintero_emulator_factory(payout_destination_list=shape, transfers_per_destination=7)
    sink = Sink("sqlite://")
    spec = CATALOG["payout_transfers"]
    sink.prepare([spec])
    with DinteroClient(creds_for(emu)) as client:
        results = sync_account_stream(client, sink, spec, AID, SyncRequest())
    assert [r.partition for r in results] == emu.config.payout_destinations
    assert_equals_source(emu, sink, [spec])


def test_a_payout_destinations_list_that_says_more_pages_follow_is_refused(
    dintero_emulator_factory,
):
    # No paging is documented for this list: a body that says more follows fails clearly, in
    # discovery and in the stream alike, and nothing of it is used.
    emu = dintero_emulator_factory(payout_destination_list="paged")
    sink = Sink("sqlite://")
    specs = [CATALOG["payout_transfers"], CATALOG["payout_destinations"]]
    sink.prepare(specs)
    with DinteroClient(creds_for(emu), retry_policy=FAST) as client:
        for spec in specs:
            with pytest.raises(MalformedResponseError, match="says more pages follow") as info:
                sync_account_stream(client, sink, spec, AID, SyncRequest())
            assert "next_page_token" in str(info.value)
            assert not info.value.retryable
            assert sink.count(spec) == 0


@pytest.mark.parametrize(
    ("emulator", "status", "says"),
    [
        ({"read_accounts_scope": False}, "403", "needs the scope read:accounts"),
        ({"payout_destination_list": "missing"}, "404", r"cannot be listed \(404 from"),
    ],
    ids=["no-scope", "not-served"],
)
def test_payout_transfers_are_skipped_when_destinations_cannot_be_listed(
    dintero_emulator_factory, emulator, status, says
):
    emu = dintero_emulator_factory(**emulator)
    sink = Sink("sqlite://")
    spec = CATALOG["payout_transfers"]
    sink.prepare([spec])
    with (
        DinteroClient(creds_for(emu), retry_policy=FAST) as client,
        pytest.raises(StreamSkipped, match=says) as info,
    ):
        sync_account_stream(client, sink, spec, AID, SyncRequest())
    assert "payout_destinations=[...]" in str(info.value)
    assert not info.value.retryable
    assert emu.stats()["requests"]["payout_destinations"] == {status: 1}  # never retried
    assert sink.count(spec) == 0


# -- crashes --------------------------------------------------------------------------------------

CRASHER = textwrap.dedent(
    """
    import sys
    from pydantic import SecretStr
    from prefect_dintero.client import DinteroClient
    from prefect_dintero.auth.client_credentials import ClientCredentials
    from prefect_dintero.http.retry import RetryPolicy
    from prefect_dintero.sink import Sink
    from prefect_dintero.streams.catalog import CATALOG
    from prefect_dintero.sync.options import SyncRequest
    from prefect_dintero.sync.stream_sync import sync_account_stream
    url, destination = sys.argv[1], sys.argv[2]
    creds = ClientCredentials(account_id="T12345678", client_id="emulator-client",
        client_secret=SecretStr("emulator-secret"), api_url=url, checkout_url=url)
    sink = Sink(destination)
    sink.prepare(list(CATALOG.values()))
    opts = SyncRequest(page_size=7, payout_destinations=["PD-main", "PD-store-2"])
    policy = RetryPolicy(max_attempts=8, backoff_base=0.01, backoff_cap=0.05, retry_after_cap=0.2)
    with DinteroClient(creds, retry_policy=policy) as client:
        for spec in CATALOG.values():
            sync_account_stream(client, sink, spec, "T12345678", opts)
    print("DONE", flush=True)
    """
)


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume(emu, destination):
    # Slow enough (~7 s for a whole sync) that every kill below lands mid-sync.
    emu.set_faults({"route": "*", "probability": 1.0, "latency": 0.05})
    Sink(destination).prepare(list(CATALOG.values()))
    rng = random.Random(7)
    kills = 0
    for _ in range(5):
        proc = subprocess.Popen(
            [sys.executable, "-c", CRASHER, emu.url, destination],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(rng.uniform(0.6, 1.8))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=30)
        check_cursor_not_ahead_of_data(emu, Sink(destination))
    assert kills >= 4
    emu.clear_faults()
    done = subprocess.run(
        [sys.executable, "-c", CRASHER, emu.url, destination],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "DONE" in done.stdout, done.stderr[-3000:]
    sink = Sink(destination)
    assert_equals_source(emu, sink)
    check_cursor_not_ahead_of_data(emu, sink)


def test_a_missing_driver_is_a_clear_error():
    with pytest.raises(DestinationError, match=r"no database driver.*prefect-dintero\[postgres\]"):
        Sink("postgresql+nosuchdriver://x@127.0.0.1/db")
    with pytest.raises(DestinationError, match="unsupported destination dialect 'oracle': use "):
        Sink("oracle://x@127.0.0.1/db")
