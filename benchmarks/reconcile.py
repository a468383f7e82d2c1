"""The reconcile run's cost: requests and time to re-read 92 days at 100 000 transactions.

The emulator (in its own process, its clock at the real time) holds N transactions spread over
180 days. A child process syncs them all into a new SQLite file, then, as the schedule would:

- an hourly run (each stream's lookback: transactions 3 days);
- the daily reconcile run (``reconcile_days=92``, as the deployment), after late changes
  (refunds of transactions up to 90 days old, captures and settlements) that the hourly run
  cannot see.

It reports each run's requests (its late-change reads' included), rows read and seconds, and checks that after the reconcile run
the table equals the source.

Run: ``.venv/bin/python benchmarks/reconcile.py [--transactions 100000]``. The last line is a
JSON summary (``RESULT {...}``) for ``benchmarks/report.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from datetime import UTC, datetime

import httpx
from _emulator import start_emulator, sync_transactions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--transactions", type=int, default=100_000)
    parser.add_argument("--late-changes", type=int, default=2_000)
    args = parser.parse_args()
    now = datetime.now(UTC).replace(microsecond=0).isoformat()
    proc, url = start_emulator(
        "--transactions", str(args.transactions), "--token-lifetime", "86400",
        "--start-time", now, timeout=300,
    )  # fmt: skip
    try:
        with tempfile.TemporaryDirectory() as tmp:
            db = os.path.join(tmp, "reconcile.db")
            full = sync_transactions(url, db)
            changed = httpx.post(
                f"{url}/_emulator/mutate", json={"update_transactions": args.late_changes}
            ).json()["changed"]
            hourly = sync_transactions(url, db)
            reconcile = sync_transactions(url, db, reconcile="92")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    stale = len(reconcile["stale"])
    result = {
        "transactions": args.transactions,
        "late_changes": sum(c.get("transactions", 0) for c in changed.values()),
        "full_requests": full["requests"],
        "full_seconds": round(full["seconds"], 1),
        "hourly_requests": hourly["requests"],
        "hourly_rows": hourly["rows"],
        "hourly_updated": hourly["updated"],
        "hourly_seconds": round(hourly["seconds"], 2),
        "reconcile_requests": reconcile["requests"],
        "reconcile_rows": reconcile["rows"],
        "reconcile_updated": reconcile["updated"],
        "reconcile_seconds": round(reconcile["seconds"], 1),
        "stale_after_reconcile": stale,
    }
    print(
        f"{args.transactions:,} transactions over 180 days; {result['late_changes']} late "
        f"changes\n"
        f"full sync:  {full['requests']:>5} requests, {full['seconds']:>6.1f} s\n"
        f"hourly run: {hourly['requests']:>5} requests, {hourly['rows']:>6} rows read, "
        f"{hourly['updated']} updated, {hourly['seconds']:.2f} s\n"
        f"reconcile:  {reconcile['requests']:>5} requests, {reconcile['rows']:>6} rows read, "
        f"{reconcile['updated']} updated, {reconcile['seconds']:.1f} s; "
        f"{stale} rows differ from the source afterwards"
    )
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
