"""The emulator and a Prefect server in their own processes, for benchmarks (so they never
share the measured process's GIL)."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx


def run_script(code: str, *args: str) -> dict:
    """Run ``code`` in a fresh Python with ``args``; its last line of output, as JSON (a
    failure ends the benchmark with the script's error)."""
    import json

    out = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, check=False
    )
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


#: One transactions sync of the emulator's account in a fresh process. Arguments: the emulator's
#: URL, the SQLite file, the late-change reads ``on`` or ``off`` (as before them), the reconcile
#: days (or ``none``), the requests in flight at most. Prints the run's figures and the ids of
#: the payments that differ from the source afterwards.
TRANSACTIONS_SYNC = textwrap.dedent(
    """
    import dataclasses, json, sys, time
    from datetime import timedelta
    import httpx
    from prefect_dintero.client import DinteroClient
    from prefect_dintero.auth.client_credentials import ClientCredentials
    from prefect_dintero.emulator import EmulatorClient
    from prefect_dintero.sink import Sink
    from prefect_dintero.streams.catalog import CATALOG
    from prefect_dintero.sync.options import SyncRequest
    from prefect_dintero.sync.stream_sync import sync_account_stream
    url, db, filters, reconcile_days, in_flight = sys.argv[1:6]
    emulator = EmulatorClient(url)
    creds = ClientCredentials(**emulator.credential_fields(),
                              max_concurrent_requests=int(in_flight))
    sink = Sink(db)
    spec = CATALOG["transactions"]
    if filters == "off":  # as before the late-change reads
        spec = dataclasses.replace(spec, late_filters=())
    sink.prepare([spec])
    reconcile = timedelta(days=float(reconcile_days)) if reconcile_days != "none" else None
    t0 = time.perf_counter()
    with DinteroClient(creds) as client:
        [r] = sync_account_stream(client, sink, spec, "T12345678",
                                  SyncRequest(page_size=100, reconcile=reconcile))
    seconds = time.perf_counter() - t0
    source = httpx.get(url + "/_emulator/dump/transactions", timeout=300).json()
    table = {row["id"]: row["raw"] for row in sink.rows(spec)}
    stale = sorted(t["id"] for t in source if table.get(t["id"]) != t)
    requests = r.requests + sum(late.requests for late in r.late_reads)
    print(json.dumps({"seconds": seconds, "requests": requests, "rows": r.fetched,
                      "inserted": r.inserted, "updated": r.updated,
                      "late_requests": [late.requests for late in r.late_reads],
                      "stale": stale}))
    """
)


def sync_transactions(
    url: str, db: str, filters: str = "on", reconcile: str = "none", in_flight: int = 8
) -> dict:
    """:data:`TRANSACTIONS_SYNC` in a fresh Python."""
    return run_script(TRANSACTIONS_SYNC, url, db, filters, reconcile, str(in_flight))


def machine() -> str:
    """The machine a benchmark ran on, for its output's first line."""
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_emulator(*flags: str, timeout: float = 120.0) -> tuple[subprocess.Popen, str]:
    """``prefect-dintero emulator`` with these flags on a free port; returns it and its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "prefect_dintero.cli", "emulator", "--port", str(port), *flags]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{url}/_emulator/health")
            return proc, url
        except httpx.TransportError:
            time.sleep(0.1)
    proc.terminate()
    raise RuntimeError("the emulator did not start")


def start_prefect_server(home: Path, timeout: float = 120.0) -> tuple[subprocess.Popen, dict]:
    """``prefect server start`` on loopback with its own home; returns it and the environment
    a process needs to use it."""
    port = free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
    }
    env.pop("PREFECT_TEST_MODE", None)
    cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--no-ui", "--no-scheduler"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health").status_code == 200:
                return proc, env
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    proc.terminate()
    raise RuntimeError("prefect server did not start")
