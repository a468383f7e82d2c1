"""Token grants per token lifetime under heavy concurrent load, across processes.

Each of ``--processes`` worker processes runs ``--threads`` threads (each with its own client) and
``--coroutines`` coroutines (each with its own async client) that call the emulator for
``--seconds`` while access tokens live ``--lifetime`` seconds. A good token manager asks for one
token per lifetime, however many callers there are.

Three identities:

- ``--identity service`` (default): the API client's own client-credentials token from a
  ``DinteroCredentials`` block on a real ``prefect server start``, shared by every process
  through a ``DinteroServiceToken`` block (renewed by one process at a time).
- ``--identity service-memory``: the same token kept in each process's memory (the core
  library without Prefect, or ``share_service_token=False``): processes keep their own.
- ``--identity session``: a logged-in user's session saved as a ``DinteroOIDCSession`` block on a
  real ``prefect server start``. Its refresh (with a rotating refresh token) is single-flight
  across processes through a Prefect global concurrency limit.

Run: ``.venv/bin/python benchmarks/token_economy.py [--processes 4] [--identity session]``.
The last line is a JSON summary (``RESULT {...}``) for ``benchmarks/report.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from _emulator import machine, start_emulator, start_prefect_server

ACCOUNT = "T12345678"


def worker(args: argparse.Namespace) -> None:
    """One process of load: threads and coroutines until the deadline; prints what it served."""
    if args.identity == "session":
        from prefect_dintero import DinteroOIDCSession

        session = DinteroOIDCSession.load("bench-session")
        make_client, make_async_client = session.get_client, session.get_async_client
    elif args.identity == "service":
        from prefect_dintero import DinteroCredentials

        credentials = DinteroCredentials.load("bench-creds")
        make_client, make_async_client = credentials.get_client, credentials.get_async_client
    else:
        from prefect_dintero.auth.client_credentials import ClientCredentials
        from prefect_dintero.client import AsyncDinteroClient, DinteroClient
        from prefect_dintero.emulator import EmulatorClient

        creds = ClientCredentials(**EmulatorClient(args.url).credential_fields(ACCOUNT))

        def make_client():
            return DinteroClient(creds)

        def make_async_client():
            return AsyncDinteroClient(creds)

    start = float(args.start_at)
    while time.time() < start:  # every process starts its load at the same moment
        time.sleep(0.01)
    began = time.monotonic()
    stop = began + args.seconds
    served: dict[str, float] = {"threads": 0, "coroutines": 0}
    lock = threading.Lock()

    def thread_load() -> None:
        with make_client() as client:
            n = 0
            while time.monotonic() < stop:
                client.get_json("/v1/sessions", host="checkout", params={"limit": 1})
                n += 1
        with lock:
            served["threads"] += n

    async def coroutine_load(client) -> int:
        n = 0
        while time.monotonic() < stop:
            await client.get_json("/v1/sessions", host="checkout", params={"limit": 1})
            n += 1
        return n

    async def all_coroutines() -> None:
        clients = [make_async_client() for _ in range(args.coroutines)]
        counts = await asyncio.gather(*(coroutine_load(c) for c in clients))
        for c in clients:
            await c.aclose()
        served["coroutines"] = sum(counts)

    threads = [threading.Thread(target=thread_load) for _ in range(args.threads)]
    threads.append(threading.Thread(target=lambda: asyncio.run(all_coroutines())))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    served["seconds"] = time.monotonic() - began
    print("SERVED " + json.dumps(served), flush=True)


def log_in(env: dict[str, str], url: str) -> None:
    """Save the credentials block and log the emulator's user in, as a user would once."""
    from prefect_dintero.emulator.server import EmulatorClient

    code = EmulatorClient(url).authorization_code()
    script = (
        "import sys\n"
        "from pydantic import SecretStr\n"
        "from prefect_dintero import DinteroCredentials\n"
        "from prefect_dintero.emulator import EmulatorClient\n"
        "from prefect_dintero.flows import dintero_login\n"
        "fields = EmulatorClient(sys.argv[1]).credential_fields()\n"
        "DinteroCredentials(**fields).save('bench-creds', overwrite=True)\n"
        "dintero_login('bench-creds', 'bench-session', authorization_response=SecretStr(sys.argv[2]))\n"
    )
    subprocess.run(
        [sys.executable, "-c", script, url, code], env=env, check=True, capture_output=True
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--lifetime", type=int, default=5)
    parser.add_argument("--threads", type=int, default=64)
    parser.add_argument("--coroutines", type=int, default=64)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument(
        "--identity", choices=["service", "service-memory", "session"], default="service"
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--start-at", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    flags = ["--token-lifetime", str(args.lifetime), "--transactions", "200"]
    if args.identity == "session":
        flags.append("--refresh-tokens")
    emulator, url = start_emulator(*flags)
    server = None
    env = dict(os.environ)
    try:
        with tempfile.TemporaryDirectory() as home:
            if args.identity in ("session", "service"):
                server, env = start_prefect_server(Path(home))
                log_in(env, url)
                # What the login cost is not the load's: count from here.
                httpx.delete(f"{url}/_emulator/stats")
            start_at = time.time() + 8  # time for every worker to import and load its block
            workers = [
                subprocess.Popen(
                    [
                        sys.executable,
                        __file__,
                        "--worker",
                        *("--url", url, "--start-at", str(start_at)),
                        *("--identity", args.identity, "--seconds", str(args.seconds)),
                        *("--threads", str(args.threads), "--coroutines", str(args.coroutines)),
                    ],
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                for _ in range(args.processes)
            ]
            outputs = [w.communicate(timeout=args.seconds + 300) for w in workers]
            for w, (out, err) in zip(workers, outputs, strict=True):
                if w.returncode != 0 or "SERVED " not in out:
                    raise SystemExit(f"a worker failed:\n{err[-3000:]}")
            stats = httpx.get(f"{url}/_emulator/stats").json()
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        emulator.terminate()
        emulator.wait(timeout=10)

    served = [json.loads(out.split("SERVED ", 1)[1].splitlines()[0]) for out, _ in outputs]
    total = sum(s["threads"] + s["coroutines"] for s in served)
    # The load window: every process started at the same moment; the longest one ran longest.
    elapsed = max(s["seconds"] for s in served)
    grant = "refresh_token" if args.identity == "session" else "client_credentials"
    grants = stats["token_grants"][grant]
    lifetimes = elapsed / args.lifetime
    result = {
        "identity": args.identity,
        "processes": args.processes,
        "threads": args.threads,
        "coroutines": args.coroutines,
        "seconds": round(elapsed, 1),
        "lifetime": args.lifetime,
        "grant": grant,
        "grants": grants,
        "grants_per_lifetime": round(grants / lifetimes, 2),
        "client_credentials_grants": stats["token_grants"]["client_credentials"],
        "refresh_failures": stats["token_grant_failures"].get("refresh_token", 0),
        "requests": total,
        "unauthorized": stats["requests"].get("sessions", {}).get("401", 0),
    }
    print(f"machine: {machine()}")
    print(
        f"load: {args.processes} process(es) x ({args.threads} threads + {args.coroutines} "
        f"coroutines), {elapsed:.1f} s, token lifetime {args.lifetime} s, identity {args.identity}"
    )
    print(f"requests served: {total}, 401s: {result['unauthorized']}")
    print(
        f"{grant} grants: {grants} over {lifetimes:.1f} lifetimes = "
        f"{grants / lifetimes:.2f} per lifetime"
    )
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
