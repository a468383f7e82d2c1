"""Sync throughput, its overhead over a bare HTTP loop, memory, and a no-change re-run.

For 10 000 and 100 000 transactions served by the emulator (in its own process), each in a
fresh child process that reports its own peak RSS:

- a bare httpx loop over the same 100-row pages that stores nothing (the ceiling);
- the core sync into a new SQLite file;
- the ``dintero-sync`` flow into another new file, on a ``prefect server start`` of its own
  (timed from the flow's call to its return: blocks, tasks, artifacts and logs included,
  the server's start-up not);
- the incremental re-run with no changes (requests made, rows fetched).

Run: ``.venv/bin/python benchmarks/sync_throughput.py [--sizes 10000 100000]``. The last line is a
JSON summary (``RESULT [...]``) for ``benchmarks/report.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import httpx
from _emulator import start_emulator, start_prefect_server

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
    from pydantic import SecretStr
    from prefect_dintero.client import DinteroClient
    from prefect_dintero.credentials import ClientCredentials
    from prefect_dintero.sink import Sink
    from prefect_dintero.streams import CATALOG
    from prefect_dintero.request import SyncRequest
    from prefect_dintero.sync import sync_stream
    url, db = sys.argv[1], sys.argv[2]
    creds = ClientCredentials(account_id="T12345678", client_id="emulator-client",
        client_secret=SecretStr("emulator-secret"), api_url=url, checkout_url=url)
    sink = Sink(db)
    spec = CATALOG["transactions"]
    sink.prepare([spec])
    t0 = time.perf_counter()
    with DinteroClient(creds) as client:
        [result] = sync_stream(client, sink, spec, "T12345678", SyncRequest(page_size=100))
    seconds = time.perf_counter() - t0
    print(json.dumps({"rows": result.fetched, "inserted": result.inserted, "requests": result.requests,
                      "pages": result.pages, "seconds": seconds, "table_rows": sink.count(spec),
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
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

SAVE_CREDENTIALS = textwrap.dedent(
    """
    import sys
    from pydantic import SecretStr
    from prefect_dintero import DinteroCredentials
    DinteroCredentials(account_id="T12345678", client_id="emulator-client",
        client_secret=SecretStr("emulator-secret"), api_url=sys.argv[1],
        checkout_url=sys.argv[1]).save(sys.argv[2], overwrite=True)
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
    args = parser.parse_args()
    lines, results = [], []
    with tempfile.TemporaryDirectory() as home:
        server, env = start_prefect_server(Path(home))
        try:
            for size in args.sizes:
                lines_and_result = measure(size, env)
                lines.append(lines_and_result[0])
                results.append(lines_and_result[1])
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    for line in lines:
        print(line)
    print("RESULT " + json.dumps(results))


def measure(size: int, env: dict) -> tuple[str, dict]:
    """Bare loop, core sync, flow and a no-change re-run, one after another, at ``size``."""
    proc, url = start_emulator(
        "--transactions", str(size), "--token-lifetime", "86400", timeout=300
    )
    try:
        with tempfile.TemporaryDirectory() as tmp:
            db = os.path.join(tmp, "bench.db")
            bare = child(BARE, url)
            sync = child(SYNC, url, db)
            stats_before = httpx.get(f"{url}/_emulator/stats").json()["requests_total"]
            rerun = child(SYNC, url, db)
            stats_after = httpx.get(f"{url}/_emulator/stats").json()["requests_total"]
            db_mb = os.path.getsize(db) / 1e6
            name = f"bench-{size}"
            child(SAVE_CREDENTIALS + "\nprint('{}')", url, name, env=env)  # prints {} for child()
            flow = child(FLOW, name, os.path.join(tmp, "flow.db"), env=env)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert sync["table_rows"] == size, sync
    assert flow["rows"] == size, flow
    bare_rate = bare["rows"] / bare["seconds"]
    sync_rate = sync["rows"] / sync["seconds"]
    flow_rate = flow["rows"] / flow["seconds"]
    result = {
        "rows": size,
        "bare_rows_per_s": round(bare_rate),
        "sync_rows_per_s": round(sync_rate),
        "flow_rows_per_s": round(flow_rate),
        "ratio": round(sync_rate / bare_rate, 2),
        "flow_ratio": round(flow_rate / sync_rate, 2),
        "bare_peak_rss_mb": round(bare["peak_rss_mb"]),
        "sync_peak_rss_mb": round(sync["peak_rss_mb"]),
        "flow_peak_rss_mb": round(flow["peak_rss_mb"]),
        "no_change_requests": stats_after - stats_before,
        "no_change_rows_fetched": rerun["rows"],
        "no_change_inserted": rerun["inserted"],
        "pages": sync["pages"],
    }
    line = (
        f"{size:>7,} rows | bare httpx {bare_rate:>7,.0f} rows/s | core {sync_rate:>7,.0f} rows/s "
        f"| flow {flow_rate:>7,.0f} rows/s | core/bare {sync_rate / bare_rate:.2f} | flow/core "
        f"{flow_rate / sync_rate:.2f} | peak RSS bare {bare['peak_rss_mb']:.0f} MB, core "
        f"{sync['peak_rss_mb']:.0f} MB, flow {flow['peak_rss_mb']:.0f} MB | no-change re-run: "
        f"{stats_after - stats_before} requests (incl. token), {rerun['rows']} rows fetched, "
        f"{rerun['inserted']} inserted | SQLite {db_mb:.0f} MB"
    )
    return line, result


if __name__ == "__main__":
    main()
