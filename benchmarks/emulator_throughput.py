"""How fast the emulator generates data and serves 100-item transaction pages.

Run: ``.venv/bin/python benchmarks/emulator_throughput.py [--transactions N] [--seconds S]``.
The emulator runs in its own process (the ``prefect-dintero emulator`` command), so the load
generator here does not share its interpreter lock.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import httpx
from _emulator import start_emulator

from prefect_dintero.emulator.config import EmulatorConfig
from prefect_dintero.emulator.data import AccountData


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--transactions", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()

    config = EmulatorConfig(transactions=args.transactions)
    t0 = time.perf_counter()
    AccountData(config.account_ids[0], config, config.resolved_start_time())
    generate_s = time.perf_counter() - t0

    proc, url = start_emulator("--transactions", str(args.transactions), timeout=300)
    try:
        with httpx.Client(base_url=url, timeout=30) as http:
            token = http.post(
                f"/v1/accounts/{config.account_ids[0]}/auth/token",
                auth=(config.client_id, config.client_secret),
                json={
                    "grant_type": "client_credentials",
                    "audience": f"{url}/v1/accounts/{config.account_ids[0]}",
                },
            ).json()["access_token"]
            headers = {"Authorization": f"Bearer {token}"}
            requests = rows = 0
            after = None
            deadline = time.perf_counter() + args.seconds
            t0 = time.perf_counter()
            while time.perf_counter() < deadline:
                params = {"limit": 100, **({"starting_after": after} if after else {})}
                page = http.get("/v1/transactions", params=params, headers=headers).json()
                requests += 1
                rows += len(page)
                after = page[-1]["id"] if len(page) == 100 else None
            elapsed = time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait(timeout=10)

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print(f"generate {args.transactions:,} transactions: {generate_s:.2f} s")
    print(
        f"serve 100-item transaction pages, one client, {elapsed:.1f} s: "
        f"{requests / elapsed:.0f} requests/s, {rows / elapsed:,.0f} rows/s"
    )


if __name__ == "__main__":
    main()
