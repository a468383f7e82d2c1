"""``make bench``: every benchmark in one run, one table.

Runs, one after another on this machine (each in fresh processes, the emulator and any Prefect
server in their own):

1. token economy, the API client's own token, 4 processes each with 64 threads and 64
   coroutines: kept in each process's memory, then shared through its Prefect block;
2. token economy, a user's session block with a rotating refresh token: 4 processes, each with
   64 threads and 64 coroutines, sharing the session through a Prefect server;
3. sync throughput and memory at 10 000 and 100 000 transactions, against a bare httpx loop over
   the same pages (three interleaved rounds, the median round's ratio), and the requests of a
   no-change incremental re-run;
4. the daily reconcile run (92 days re-read) at 100 000 transactions, after late changes;
   and the money reads (``money.py``): an hourly run's requests when nothing changed and when
   1 % of a year's payments changed, and the nightly reconcile's before and after the
   ``captured_at``/``refunded_at`` reads;
5. what a run costs a remote Prefect API (``prefect_api_cost.py``): requests per run and per page,
   logs and events, 80 ms per Prefect request, a Hobby-limited 100 000-row run, a 20 s outage;
6. a simulated month of hourly ``dintero-sync`` runs (``month.py``; 3 days with ``--quick``).

Figures are ratios and counts from this one run: the machine is shared, so absolute speeds move.

Run: ``make bench`` (or ``.venv/bin/python benchmarks/report.py [--quick]``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run(script: str, *args: str) -> dict | list:
    started = time.monotonic()
    print(f"… {script} {' '.join(args)}", file=sys.stderr, flush=True)
    out = subprocess.run(
        [sys.executable, str(HERE / script), *args], capture_output=True, text=True
    )
    if out.returncode != 0:
        raise SystemExit(f"{script} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    line = next(x for x in reversed(out.stdout.splitlines()) if x.startswith("RESULT "))
    print(f"  done in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    return json.loads(line.removeprefix("RESULT "))


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        mem = next(
            int(x.split()[1]) / 1024**2
            for x in Path("/proc/meminfo").read_text().splitlines()
            if x.startswith("MemTotal")
        )
        memory = f"{mem:.0f} GiB"
    except OSError:
        memory = "? GiB"
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores ({model}), {memory}, "
        f"Python {platform.python_version()}, load average before the run {load}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller loads, for a smoke run")
    args = parser.parse_args()
    seconds, lifetime, load, sizes = ("30", "5", "64", ["10000", "100000"])
    if args.quick:
        seconds, load, sizes = "10", "8", ["2000", "10000"]
    where = machine()
    common = ["--seconds", seconds, "--lifetime", lifetime, "--threads", load]
    common += ["--coroutines", load]
    memory_4 = run("token_economy.py", *common, "--processes", "4", "--identity", "service-memory")
    service_4 = run("token_economy.py", *common, "--processes", "4")
    session_4 = run("token_economy.py", *common, "--processes", "4", "--identity", "session")
    syncs = run("sync_throughput.py", "--sizes", *sizes)
    recon = run("reconcile.py", "--transactions", sizes[-1])
    money = run("money.py", "--transactions", sizes[-1])
    cloud = run("prefect_api_cost.py", *(["--quick"] if args.quick else []))
    month = run("month.py", "--days", "3" if args.quick else "30")

    rows: list[tuple[str, str, str]] = []

    def row(measure: str, value: str, detail: str) -> None:
        rows.append((measure, value, detail))

    for label, r in (
        ("client-credentials token kept per process, 4 processes", memory_4),
        ("client-credentials token shared through its block, 4 processes", service_4),
        ("user session block (rotating refresh token), 4 processes", session_4),
    ):
        row(
            f"Token grants per token lifetime: {label} x ({r['threads']} threads + "
            f"{r['coroutines']} coroutines)",
            f"{r['grants_per_lifetime']:.2f}",
            f"{r['grants']} {r['grant']} grants in {r['seconds']} s at a {r['lifetime']} s "
            f"lifetime; {r['requests']:,} requests, {r['unauthorized']} 401s, "
            f"{r['refresh_failures']} refused refreshes",
        )
    for s in syncs:
        row(
            f"Core sync records/s vs bare httpx loop, {s['rows']:,} transactions",
            f"{s['ratio']:.2f}x",
            f"median of {s['rounds']} rounds ({', '.join(map(str, s['ratios']))}); core "
            f"{s['sync_rows_per_s']:,} rows/s, bare {s['bare_rows_per_s']:,} rows/s, "
            f"{s['pages']} pages of 100",
        )
    for s in syncs:
        row(
            f"dintero-sync flow records/s vs the core, {s['rows']:,} transactions",
            f"{s['flow_ratio']:.2f}x",
            f"median of {s['rounds']} rounds ({', '.join(map(str, s['flow_ratios']))}); "
            f"flow {s['flow_rows_per_s']:,} rows/s as a scheduled run (its blocks, tasks, "
            f"artifacts and logs included), {s['flow_overhead_s']} s over the core; a "
            f"credentials block's first run, reading nothing: {s['first_run_s']} s",
        )
    for s in syncs:
        row(
            f"Peak RSS, {s['rows']:,} transactions",
            f"{s['sync_peak_rss_mb']} MB",
            f"flow {s['flow_peak_rss_mb']} MB, bare httpx loop {s['bare_peak_rss_mb']} MB "
            "(each in a fresh process)",
        )
    for s in syncs:
        row(
            f"Requests of a no-change incremental run, {s['rows']:,} transactions",
            str(s["no_change_requests"]),
            f"token request included; {s['no_change_rows_fetched']} rows re-read in the "
            f"lookback window, {s['no_change_inserted']} inserted",
        )
    row(
        f"Reconcile run (92 days re-read), {recon['transactions']:,} transactions over 180 days",
        f"{recon['reconcile_requests']} requests, {recon['reconcile_seconds']} s",
        f"{recon['reconcile_rows']:,} rows read, {recon['reconcile_updated']} of "
        f"{recon['late_changes']} late changes taken in ({recon['stale_after_reconcile']} "
        f"rows differ from the source after it); the hourly run before it: "
        f"{recon['hourly_requests']} requests, {recon['hourly_seconds']} s, "
        f"{recon['hourly_updated']} updated",
    )
    row(
        f"Hourly run's transactions requests, {money['transactions']:,} payments over a "
        "year, nothing changed",
        f"{money['quiet_requests_now']} (before the late-change reads: "
        f"{money['quiet_requests_before']})",
        "the captured_at and refunded_at reads cost one request each",
    )
    row(
        f"Hourly run after {money['changed']} payments changed (1 %: refunds of any age, "
        "captures up to 30 days late)",
        f"{money['busy_requests_now']} requests, {money['busy_missing_now']} changes missing",
        f"before: {money['busy_requests_before']} requests, "
        f"{money['busy_missing_before']} changes missing",
    )
    row(
        "Nightly reconcile of transactions, after those changes and their settlements",
        f"35 days + a week by the filters: {money['nightly_requests_now']} requests, "
        f"{money['nightly_stale_now']} stale after",
        f"before (92 days, no filters): {money['nightly_requests_before']} requests, "
        f"{money['nightly_stale_before']} stale after; "
        f"{money['nightly_seconds_now']} s vs {money['nightly_seconds_before']} s",
    )
    small, large = cloud["sizes"]
    for identity in ("session", "service"):
        c = cloud[identity]
        row(
            f"Prefect API requests of a dintero-sync run ({identity}), {small:,} / {large:,} "
            "transactions",
            f"{c['requests'][0]} / {c['requests'][1]}",
            f"{c['growth_per_page']} more per Dintero page ({c['pages'][0]} / "
            f"{c['pages'][1]} pages); {c['logs_events'][0]} / {c['logs_events'][1]} log "
            "lines and events per run",
        )
        row(
            f"{cloud['latency_ms']:.0f} ms added to every Prefect request ({identity}), "
            f"{small:,} transactions: its cost beyond an empty flow's",
            f"{max(c['beyond_empty_rounds'])} s at most (run)",
            f"{cloud['rounds']} interleaved rounds: run {c['beyond_empty_rounds']} s, caller "
            f"{c['wall_beyond_empty_rounds']} s; the empty flow's own cost "
            f"{cloud['empty']['run_cost_rounds']} s; {c['seconds_0ms']} s against "
            f"{c['seconds_slow']} s",
        )
    lim, out = cloud["limited"], cloud["outage"]
    row(
        f"Session sync of {lim['size']:,} transactions under {lim['limit']} Prefect API "
        "requests a minute (Prefect Cloud Hobby)",
        f"{lim['rate_limited']} answered 429",
        f"ok={lim['ok']}, {lim['requests']} requests, {lim['seconds']:.1f} s",
    )
    row(
        f"Dintero pages/s during a {out['seconds']:.0f} s Prefect API outage (session sync)",
        f"{out['pages_per_s_during']} vs {out['pages_per_s_before']} before",
        f"run ok={out['run'].get('ok')}, the stream ran through the outage: "
        f"{out['stream_ran_through_it']}",
    )
    row(
        f"A simulated month: {month['days']} days of hourly dintero-sync runs and a nightly "
        "reconcile",
        f"{month['failed']} of {month['runs']} runs failed, {month['stale_rows_end']} stale "
        "rows at the end",
        f"{month['changes']:,} changes arrived, max staleness {month['max_staleness_h']} h, "
        f"p95 {month['p95_staleness_h']} h; {month['token_grants']} token grants, "
        f"{month['manual_logins']} manual logins, {month['requests_per_run']} requests per "
        f"run, longest run {month['max_run_seconds']} s",
    )
    print(f"\nMachine: {where}\n")
    print("| Measure | Value | Detail |")
    print("|---|---|---|")
    for measure, value, detail in rows:
        print(f"| {measure} | {value} | {detail} |")


if __name__ == "__main__":
    main()
