"""Sync throughput, its overhead over a bare HTTP loop, memory, and a no-change re-run.

For 10 000 and 100 000 transactions served by the emulator (in its own process), each in a
fresh child process that reports its own peak RSS:

- a bare httpx loop over the same 100-row pages that stores nothing (the ceiling);
- the core sync into a new SQLite file, opening and closing it included, as the flow's task
  does them (the last connection's close copies SQLite's write-ahead log into the file);
- the ``dintero-sync`` flow into another new file, on a ``prefect server start`` of its own
  (timed from the flow's call to its return: blocks, tasks, artifacts and logs included,
  the server's start-up not), in a new process as a scheduled run is: after a first run of
  the same credentials block (timed apart: it reads almost nothing, and creates the account's
  concurrency limit and shares the block's first token, once per block);
- the incremental re-run with no changes (requests made, rows fetched).

Bare loop, core and flow run in rounds (3 by default), one after another; each ratio is taken
within a round and the median round's is reported, with every round's.

Run: ``.venv/bin/python benchmarks/sync_throughput.py [--sizes 10000 100000] [--rounds 3]``. The last line is a
JSON summary (``RESULT [...]``) for ``benchmarks/report.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import httpx
from _emulator import machine, start_emulator, start_prefect_server

BARE = textwrap.dedent(
    """
    import json, resource, sys, time, httpx
    url = sys.argv[1]
    with httpx.Client(base_url=url, timeout=60) as http:
        token = http.post("/v1/accounts/T12345678/auth/token", auth=("emulator-client", "emulator-secret"),
            json={"grant_type": "client_credentials", "audience": url + "/v1/accounts/T12345678"}).json()["access_token"]
        headers = {"Authorization": "Bearer " + token}
        rows = requests = 0
        after = None
        t0 = time.perf_counter()
        while True:
            params = {"limit": 100, **({"starting_after": after} if after else {})}
            page = http.get("/v1/transactions", params=params, headers=headers).json()
            requests += 1
            rows += len(page)
            if len(page) < 100:
                break
            after = page[-1]["id"]
        seconds = time.perf_counter() - t0
    print(json.dumps({"rows": rows, "requests": requests, "seconds": seconds,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
    """
)

SYNC = textwrap.dedent(
    """
    import json, resource, sys, time
    from prefect_dintero.client import DinteroClient
    from prefect_dintero.auth.client_credentials import ClientCredentials
    from prefect_dintero.emulator import EmulatorClient
    from prefect_dintero.sink import Sink
    from prefect_dintero.streams.catalog import CATALOG
    from prefect_dintero.sync.options import SyncRequest
    from prefect_dintero.sync.stream_sync import sync_account_stream
    url, db = sys.argv[1], sys.argv[2]
    creds = ClientCredentials(**EmulatorClient(url).credential_fields())
    spec = CATALOG["transactions"]
    # Where the time goes (with a profile argument): the writer's busy time, the limit's
    # course, the requests in flight sampled every 10 ms.
    profile = len(sys.argv) > 3
    writing, course, flight = [0.0], [], []
    if profile:
        import threading
        from prefect_dintero.http import adaptive_limit
        write_page = Sink.write_page
        def timed_write(self, *args, **kwargs):
            started = time.perf_counter()
            try:
                return write_page(self, *args, **kwargs)
            finally:
                writing[0] += time.perf_counter() - started
        Sink.write_page = timed_write
        release = adaptive_limit.AdaptiveLimit._release
        def traced_release(self, *args):
            release(self, *args)
            if not course or course[-1][1] != self.limit:
                course.append((time.perf_counter(), self.limit))
        adaptive_limit.AdaptiveLimit._release = traced_release
        sampling = threading.Event()
        def sample():
            while not sampling.wait(0.01):
                limits = list(adaptive_limit._LIMITS.values())
                flight.append(sum(limit.in_flight for limit in limits))
        threading.Thread(target=sample, daemon=True).start()
    t0 = time.perf_counter()  # opening and closing the database timed, as in the flow's task
    sink = Sink(db)
    sink.prepare([spec])
    with DinteroClient(creds) as client:
        [result] = sync_account_stream(client, sink, spec, "T12345678", SyncRequest(page_size=100))
    sink.dispose()  # closing copies the write-ahead log into the file
    seconds = time.perf_counter() - t0
    out = {"rows": result.fetched, "inserted": result.inserted, "requests": result.requests,
           "pages": result.pages, "seconds": seconds, "table_rows": sink.count(spec),
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if profile:
        sampling.set()
        peak = max((limit for _, limit in course), default=0)
        out.update(
            writer_seconds=round(writing[0], 2),
            limit_peak=peak,
            seconds_to_peak=round(next(t for t, limit in course if limit == peak) - t0, 2)
            if course else None,
            mean_in_flight=round(sum(flight) / max(1, len(flight)), 2),
        )
    print(json.dumps(out))
    """
)


FLOW = textwrap.dedent(
    """
    import json, resource, sys, time
    from prefect_dintero.flows import dintero_sync
    creds, db = sys.argv[1], sys.argv[2]
    t0 = time.perf_counter()
    [result] = dintero_sync(creds, streams=["transactions"], destination=db, page_size=100)
    seconds = time.perf_counter() - t0
    print(json.dumps({"rows": result["fetched"], "seconds": seconds,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
    """
)

#: The first run of a new credentials block, reading (almost) nothing: what it costs once, on
#: top of every run, to create the account's limit and share the block's first token.
FIRST_FLOW = textwrap.dedent(
    """
    import json, sys, time
    from datetime import UTC, datetime
    from prefect_dintero.flows import dintero_sync
    creds, db = sys.argv[1], sys.argv[2]
    t0 = time.perf_counter()
    [result] = dintero_sync(creds, streams=["transactions"], destination=db,
                            start_date=datetime.now(UTC))
    print(json.dumps({"rows": result["fetched"], "seconds": time.perf_counter() - t0}))
    """
)

SAVE_CREDENTIALS = textwrap.dedent(
    """
    import sys
    from prefect_dintero import DinteroCredentials
    from prefect_dintero.emulator import EmulatorClient
    fields = EmulatorClient(sys.argv[1]).credential_fields()
    DinteroCredentials(**fields).save(sys.argv[2], overwrite=True)
    """
)


def child(code: str, *args: str, env: dict | None = None) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env
    )
    if out.returncode:
        raise SystemExit(f"a benchmark child failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument(
        "--rounds", type=int, default=3, help="bare, core and flow this many times, interleaved"
    )
    parser.add_argument(
        "--latency-ms",
        type=float,
        default=0.0,
        help="the emulator adds this to every data page: then bare, core and flow once each, "
        "and the core again under --rate-limit",
    )
    parser.add_argument(
        "--rate-limit",
        type=float,
        default=20.0,
        help="with --latency-ms: the emulator's requests a second per account (default 20)",
    )
    args = parser.parse_args()
    lines, results = [], []
    with tempfile.TemporaryDirectory() as home:
        server, env = start_prefect_server(Path(home))
        try:
            for size in args.sizes:
                if args.latency_ms:
                    lines_and_result = at_latency(size, args.latency_ms, args.rate_limit, env)
                else:
                    lines_and_result = measure(size, env, args.rounds)
                lines.append(lines_and_result[0])
                results.append(lines_and_result[1])
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(f"machine: {machine()}")
    for line in lines:
        print(line)
    print("RESULT " + json.dumps(results))


def at_latency(size: int, latency_ms: float, rate_limit: float, env: dict) -> tuple[str, dict]:
    """At ``size`` transactions, ``latency_ms`` added to every page: the bare loop (one request
    in flight), the core sync and the flow (slices under the adaptive limit, 8 at most), each
    once; then the core sync again on an emulator that answers 429 beyond ``rate_limit``
    requests a second."""

    def emulator_stats(url: str) -> dict:
        return httpx.get(f"{url}/_emulator/stats").json()

    flags = ["--transactions", str(size), "--token-lifetime", "86400"]
    flags += ["--latency-ms", str(latency_ms)]
    proc, url = start_emulator(*flags, timeout=300)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            before = emulator_stats(url)["requests_total"]
            bare = child(BARE, url)
            bare_requests = emulator_stats(url)["requests_total"] - before
            before = emulator_stats(url)["requests_total"]
            core = child(SYNC, url, os.path.join(tmp, "core.db"), "profile")
            core_requests = emulator_stats(url)["requests_total"] - before
            name = f"latency-{size}"
            child(SAVE_CREDENTIALS + "\nprint('{}')", url, name, env=env)
            flow = child(FLOW, name, os.path.join(tmp, "flow.db"), env=env)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    proc, url = start_emulator(*flags, "--rate-limit", str(rate_limit), timeout=300)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            limited = child(SYNC, url, os.path.join(tmp, "limited.db"))
            stats = emulator_stats(url)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert core["table_rows"] == limited["table_rows"] == size and flow["rows"] == size
    limited_requests = sum(stats["requests"].get("transactions", {}).values())
    answered = limited_requests - stats["rate_limited"]
    result = {
        "rows": size,
        "latency_ms": latency_ms,
        "bare_rows_per_s": round(size / bare["seconds"]),
        "core_rows_per_s": round(size / core["seconds"]),
        "flow_rows_per_s": round(size / flow["seconds"]),
        "core_vs_bare": round(bare["seconds"] / core["seconds"], 2),
        "flow_vs_bare": round(bare["seconds"] / flow["seconds"], 2),
        "bare_requests": bare_requests,
        "core_requests": core_requests,
        "rate_limit": rate_limit,
        "limited_requests": limited_requests,
        "limited_429": stats["rate_limited"],
        "limited_429_share": round(stats["rate_limited"] / max(1, limited_requests), 4),
        "limited_share_of_limit": round(answered / limited["seconds"] / rate_limit, 2),
        "limited_rows_per_s": round(size / limited["seconds"]),
        # Where the core sync's time goes: the ideal is every page at 150 ms, 8 at a time.
        "core_seconds": round(core["seconds"], 2),
        "ideal_seconds": round(core_requests * latency_ms / 1000 / 8, 2),
        "writer_seconds": core["writer_seconds"],
        "limit_peak": core["limit_peak"],
        "seconds_to_peak": core["seconds_to_peak"],
        "mean_in_flight": core["mean_in_flight"],
        "extra_requests": core_requests - bare_requests,
    }
    line = (
        f"{size:>7,} rows, {latency_ms:g} ms a page | bare loop {result['bare_rows_per_s']:,} "
        f"rows/s ({bare_requests} requests) | core {result['core_rows_per_s']:,} rows/s "
        f"({core_requests} requests, {result['core_vs_bare']}x bare) | flow "
        f"{result['flow_rows_per_s']:,} rows/s ({result['flow_vs_bare']}x bare) | under "
        f"{rate_limit:g} requests/s: core {result['limited_rows_per_s']:,} rows/s, "
        f"{limited_requests} requests, {stats['rate_limited']} answered 429 "
        f"({100 * result['limited_429_share']:.1f} %), {100 * result['limited_share_of_limit']:.0f} % "
        "of the limit\n"
        f"  where the core's {result['core_seconds']} s go (8 pages at a time would take "
        f"{result['ideal_seconds']} s): {result['mean_in_flight']} requests in flight on average; "
        f"the limit reached {result['limit_peak']} after {result['seconds_to_peak']} s; the "
        f"writer (one thread: upsert, events, state) busy {result['writer_seconds']} s; "
        f"{result['extra_requests']} requests more than the bare loop's (slice cuts re-read a "
        "page, each slice ends with its own last page)"
    )
    return line, result


def measure(size: int, env: dict, rounds: int) -> tuple[str, dict]:
    """At ``size``: a no-change re-run after a first sync, a first flow run of a new block, then
    ``rounds`` rounds of bare loop, core sync and flow run, one after another.

    The machine is shared: a neighbour's burst can slow one run by a fifth. Each ratio is taken
    within a round (its runs a minute apart at most), and the median round's is reported.
    """
    proc, url = start_emulator(
        "--transactions", str(size), "--token-lifetime", "86400", timeout=300
    )
    bares, syncs, flows = [], [], []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            db = os.path.join(tmp, "bench.db")
            syncs.append(child(SYNC, url, db))
            stats_before = httpx.get(f"{url}/_emulator/stats").json()["requests_total"]
            rerun = child(SYNC, url, db)
            stats_after = httpx.get(f"{url}/_emulator/stats").json()["requests_total"]
            db_mb = os.path.getsize(db) / 1e6
            os.remove(db)
            name = f"bench-{size}"
            child(SAVE_CREDENTIALS + "\nprint('{}')", url, name, env=env)  # prints {} for child()
            first = child(FIRST_FLOW, name, os.path.join(tmp, "first.db"), env=env)
            for i in range(rounds):
                bares.append(child(BARE, url))
                if i:  # the first round's core sync is the one above
                    syncs.append(child(SYNC, url, os.path.join(tmp, f"core-{i}.db")))
                flows.append(child(FLOW, name, os.path.join(tmp, f"flow-{i}.db"), env=env))
                for done in (f"core-{i}.db", f"flow-{i}.db"):  # 200 MB each at 100k rows
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(os.path.join(tmp, done))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert all(s["table_rows"] == size for s in syncs), syncs
    assert all(f["rows"] == size for f in flows), flows
    runs = list(zip(bares, syncs, flows, strict=True))

    def median_round(ratio_of) -> tuple[float, tuple[dict, dict, dict]]:
        ranked = sorted(runs, key=ratio_of)
        middle = ranked[len(ranked) // 2]
        return ratio_of(middle), middle

    def core_ratio(r):
        return r[0]["seconds"] / r[1]["seconds"]

    def flow_core_ratio(r):
        return r[1]["seconds"] / r[2]["seconds"]

    ratio, (bare, sync, _) = median_round(core_ratio)
    flow_ratio, (_, flow_sync, flow) = median_round(flow_core_ratio)
    ratios = sorted(round(core_ratio(r), 2) for r in runs)
    flow_ratios = sorted(round(flow_core_ratio(r), 2) for r in runs)
    bare_rate = bare["rows"] / bare["seconds"]
    sync_rate = sync["rows"] / sync["seconds"]
    flow_rate = flow["rows"] / flow["seconds"]
    result = {
        "rows": size,
        "rounds": rounds,
        "bare_rows_per_s": round(bare_rate),
        "sync_rows_per_s": round(sync_rate),
        "flow_rows_per_s": round(flow_rate),
        "ratio": round(ratio, 2),
        "ratios": ratios,
        "flow_ratio": round(flow_ratio, 2),
        "flow_ratios": flow_ratios,
        "flow_overhead_s": round(flow["seconds"] - flow_sync["seconds"], 1),
        "first_run_s": round(first["seconds"], 1),
        "first_run_rows": first["rows"],
        "bare_peak_rss_mb": round(max(b["peak_rss_mb"] for b in bares)),
        "sync_peak_rss_mb": round(max(s["peak_rss_mb"] for s in syncs)),
        "flow_peak_rss_mb": round(max(f["peak_rss_mb"] for f in flows)),
        "no_change_requests": stats_after - stats_before,
        "no_change_rows_fetched": rerun["rows"],
        "no_change_inserted": rerun["inserted"],
        "pages": sync["pages"],
    }
    line = (
        f"{size:>7,} rows, median of {rounds} rounds | bare httpx {bare_rate:>7,.0f} rows/s | "
        f"core {sync_rate:>7,.0f} rows/s | flow {flow_rate:>7,.0f} rows/s | core/bare "
        f"{ratio:.2f} (rounds: {', '.join(f'{r:.2f}' for r in ratios)}) | flow/core "
        f"{flow_ratio:.2f} (rounds: {', '.join(f'{r:.2f}' for r in flow_ratios)}; "
        f"{result['flow_overhead_s']:.1f} s over the core; a block's first run, "
        f"{first['rows']} rows: {first['seconds']:.1f} s) | peak RSS bare "
        f"{result['bare_peak_rss_mb']} MB, core {result['sync_peak_rss_mb']} MB, flow "
        f"{result['flow_peak_rss_mb']} MB | no-change re-run: {stats_after - stats_before} "
        f"requests (incl. token), {rerun['rows']} rows fetched, {rerun['inserted']} inserted | "
        f"SQLite {db_mb:.0f} MB"
    )
    return line, result


if __name__ == "__main__":
    main()
