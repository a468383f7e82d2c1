"""What the late-change reads cost and what they bring, at a year of payments.

The emulator (in its own process, its clock at the real time) holds N transactions spread over
365 days, settled daily by their providers. A child process syncs them all into a SQLite file;
each scenario then runs on its own copy of that file:

- **hourly, nothing changed**: an hourly run without the ``captured_at``/``refunded_at`` reads
  (before) and with them (now): the requests each makes (the token request included). A read
  whose 15-minute overlap with the last run holds rows costs two requests: the overlap, and
  the empty page that ends it (a short page is not taken for the last: nothing documents it);
- **hourly, 1 % changed**: refunds of payments of any age (up to a year) and captures up to
  30 days late, 1 % of the payments in all; the same two runs: requests, and how many changed
  payments the table still lacks afterwards;
- **nightly reconcile**: 92 days without the filters (before) and 35 days with them (now), after
  the same changes and the settlements that follow them: requests, and the payments still
  stale afterwards.

Run: ``.venv/bin/python benchmarks/money.py [--transactions 100000]``. The last line is a JSON
summary (``RESULT {...}``) for ``benchmarks/report.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from datetime import UTC, datetime

import httpx
from _emulator import start_emulator, sync_transactions


def child(url: str, db: str, filters: str, reconcile: str = "none") -> dict:
    # One request at a time: the requests counted are the reads' own, not slices'.
    return sync_transactions(url, db, filters, reconcile, in_flight=1)


def copy(base: str, name: str) -> str:
    path = os.path.join(os.path.dirname(base), name)
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(base + suffix):
            shutil.copy(base + suffix, path + suffix)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--transactions", type=int, default=100_000)
    parser.add_argument("--changed-percent", type=float, default=1.0)
    args = parser.parse_args()
    now = datetime.now(UTC).replace(microsecond=0).isoformat()
    proc, url = start_emulator(
        "--transactions", str(args.transactions), "--history-days", "365",
        "--sessions", "0", "--customers", "0", "--settlements", "0",
        "--transfers-per-destination", "0", "--late-changes-days", "365",
        "--token-lifetime", "86400", "--start-time", now, timeout=600,
    )  # fmt: skip
    changed_n = int(args.transactions * args.changed_percent / 100)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            base = os.path.join(tmp, "base.db")
            full = child(url, base, "on")
            quiet_before = child(url, copy(base, "quiet-before.db"), "off")
            quiet_now = child(url, copy(base, "quiet-now.db"), "on")
            changed = httpx.post(
                f"{url}/_emulator/mutate",
                json={"refund_any_age": changed_n // 2, "capture_late": changed_n - changed_n // 2},
                timeout=300,
            ).json()["changed"]
            n_changed = sum(c.get("transactions", 0) for c in changed.values())
            busy_before = child(url, copy(base, "busy-before.db"), "off")
            busy_now = child(url, copy(base, "busy-now.db"), "on")
            # The settlements that follow (days later): what only a reconcile brings.
            httpx.post(
                f"{url}/_emulator/clock",
                json={"advance_seconds": 4 * 86_400, "mutate": {"settle": 1}},
                timeout=300,
            )
            nightly_before = child(url, copy(base, "busy-before.db"), "off", "92")
            nightly_now = child(url, copy(base, "busy-now.db"), "on", "35")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    result = {
        "transactions": args.transactions,
        "changed": n_changed,
        "full_requests": full["requests"],
        "quiet_requests_before": quiet_before["requests"],
        "quiet_requests_now": quiet_now["requests"],
        "busy_requests_before": busy_before["requests"],
        "busy_requests_now": busy_now["requests"],
        "busy_missing_before": len(busy_before["stale"]),
        "busy_missing_now": len(busy_now["stale"]),
        "nightly_requests_before": nightly_before["requests"],
        "nightly_requests_now": nightly_now["requests"],
        "nightly_stale_before": len(nightly_before["stale"]),
        "nightly_stale_now": len(nightly_now["stale"]),
        "nightly_seconds_before": round(nightly_before["seconds"], 1),
        "nightly_seconds_now": round(nightly_now["seconds"], 1),
    }
    print(
        f"{args.transactions:,} payments over 365 days; {n_changed} changed "
        f"({args.changed_percent:g} %: refunds of any age, captures up to 30 days late)\n"
        f"hourly, nothing changed: {quiet_before['requests']} requests before, "
        f"{quiet_now['requests']} now\n"
        f"hourly, 1 % changed:     {busy_before['requests']} requests before "
        f"({len(busy_before['stale'])} changed payments missing), {busy_now['requests']} now "
        f"({len(busy_now['stale'])} missing)\n"
        f"nightly reconcile:       92 days {nightly_before['requests']} requests "
        f"({len(nightly_before['stale'])} stale after), 35 days with the filters "
        f"{nightly_now['requests']} requests ({len(nightly_now['stale'])} stale after)"
    )
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
