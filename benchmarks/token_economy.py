"""Token grants per token lifetime under heavy concurrent load.

64 threads (each with its own ``DinteroClient``) and 64 coroutines (each with its own
``AsyncDinteroClient``) call the emulator for ``--seconds`` while tokens live ``--lifetime``
seconds. A good token manager asks for one token per lifetime, however many callers there are.

Run: ``.venv/bin/python benchmarks/token_economy.py [--seconds 30] [--lifetime 5]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import threading
import time

import httpx
from _emulator import start_emulator
from pydantic import SecretStr

from prefect_dintero.client import AsyncDinteroClient, DinteroClient
from prefect_dintero.credentials import ClientCredentials
from prefect_dintero.emulator.config import EmulatorConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--lifetime", type=int, default=5)
    parser.add_argument("--threads", type=int, default=64)
    parser.add_argument("--coroutines", type=int, default=64)
    args = parser.parse_args()

    proc, url = start_emulator("--token-lifetime", str(args.lifetime), "--transactions", "200")
    config = EmulatorConfig()
    creds = ClientCredentials(
        account_id=config.account_ids[0],
        client_id=config.client_id,
        client_secret=SecretStr(config.client_secret),
        api_url=url,
        checkout_url=url,
    )
    stop = time.monotonic() + args.seconds
    served = {"threads": 0, "coroutines": 0}
    lock = threading.Lock()

    def thread_load() -> None:
        with DinteroClient(creds) as client:
            n = 0
            while time.monotonic() < stop:
                client.get_json("/v1/sessions", host="checkout", params={"limit": 1})
                n += 1
        with lock:
            served["threads"] += n

    async def coroutine_load(client: AsyncDinteroClient) -> int:
        n = 0
        while time.monotonic() < stop:
            await client.get_json("/v1/sessions", host="checkout", params={"limit": 1})
            n += 1
        return n

    async def all_coroutines() -> None:
        clients = [AsyncDinteroClient(creds) for _ in range(args.coroutines)]
        counts = await asyncio.gather(*(coroutine_load(c) for c in clients))
        for c in clients:
            await c.aclose()
        served["coroutines"] = sum(counts)

    try:
        threads = [threading.Thread(target=thread_load) for _ in range(args.threads)]
        threads.append(threading.Thread(target=lambda: asyncio.run(all_coroutines())))
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - t0
        stats = httpx.get(f"{url}/_emulator/stats").json()
    finally:
        proc.terminate()
        proc.wait(timeout=10)

    grants = stats["token_grants"]["client_credentials"]
    lifetimes = elapsed / args.lifetime
    unauthorized = stats["requests"].get("sessions", {}).get("401", 0)
    total = served["threads"] + served["coroutines"]
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print(
        f"load: {args.threads} threads + {args.coroutines} coroutines, {elapsed:.1f} s, token lifetime {args.lifetime} s"
    )
    print(
        f"requests served: {total} ({served['threads']} from threads, {served['coroutines']} from coroutines), 401s: {unauthorized}"
    )
    print(
        f"client-credentials grants: {grants} over {lifetimes:.1f} lifetimes = {grants / lifetimes:.2f} per lifetime"
    )
    print(f"requests per grant: {total / max(grants, 1):.0f}")


if __name__ == "__main__":
    main()
