"""What a ``dintero-sync`` run costs the Prefect API, and what a far, limited or failing API costs it.

Most users run on Prefect Cloud: tens of milliseconds from the worker, a per-minute request
limit per account, now and then a 429, a 5xx or nothing. Here a ``prefect server start`` of
its own sits behind :class:`tests.prefect_proxy.PrefectApiProxy`, which
counts every request by route and can add latency, a rate limit and an outage. Each run is
the ``dintero-sync`` flow in a new process (as a worker runs a deployment), every stream into
a new SQLite file, after a first run that created the account's limits and the shared
service token (as on any day but the first).

For a logged-in user's session and for the service token, at ``--sizes`` transactions (5,000
and 50,000 by default):

- the Prefect API requests of a run, and their growth per Dintero page between the sizes;
- the log lines and events a run sends (Prefect Cloud's second budget);
- the run's time with ``--latency-ms`` (80) added to every Prefect request, against none, in
  ``--rounds`` (3) interleaved rounds at the smaller size, each with an empty flow's pair too:
  the latency's cost beyond the empty flow's, round by round, both as Prefect records the run
  (Running to its final state) and as the caller waits for it; and the integration's own
  Prefect requests in order, with when each was sent. (Prefect's engine joins its heartbeat
  thread at every flow run's end, a thread that sleeps in 1 s steps: the caller's figure
  carries 0 to 1 s of that, in any flow longer than a trivial one.)

Then, for the session: a ``--limited-size`` (100,000) run under a ``--limit`` (625, Hobby's)
requests-a-minute limit (429s met, time), and a run during which the Prefect API refuses
every connection for ``--outage-seconds`` (20), its transactions pages answered 50 ms late so
the stream outlasts the outage: the rate of Dintero pages during the outage against the rate
before it, and whether the run succeeded.

Run: ``.venv/bin/python benchmarks/prefect_api_cost.py [--quick]``. The last line is a JSON summary
(``RESULT {...}``) for ``benchmarks/report.py``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import httpx
from _emulator import machine, start_emulator, start_prefect_server

# The proxy is test support: it lives beside the tests, not in the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.prefect_proxy import PrefectApiProxy

RUN = textwrap.dedent(
    """
    import json, sys, time
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect_dintero.flows import dintero_sync

    @flow(name="empty")
    def empty():
        return []

    session = sys.argv[2] or None
    t0 = time.perf_counter()
    sent_at = time.time()
    try:
        if sys.argv[3] == "empty":
            state = empty(return_state=True)
        else:
            state = dintero_sync("bench-creds", session_block=session, destination=sys.argv[1],
                                 return_state=True)
        result = state.result()
        outcome = {"ok": True, "fetched": sum(r["fetched"] for r in result),
                   "pages": sum(r["pages"] for r in result)}
    except Exception as exc:
        state, outcome = None, {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
    outcome["seconds"] = time.perf_counter() - t0
    outcome["started_at"] = sent_at
    if state is not None:
        # The run as Prefect records it (Running to its final state): what the UI shows.
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(state.state_details.flow_run_id)
        outcome["run_seconds"] = (run.end_time - run.start_time).total_seconds()
    print("RUN " + json.dumps(outcome), flush=True)
    """
)

SETUP = textwrap.dedent(
    """
    import sys
    from pydantic import SecretStr
    from prefect_dintero import DinteroCredentials
    from prefect_dintero.emulator import EmulatorClient
    from prefect_dintero.flows import dintero_login, dintero_sync
    url, code, db = sys.argv[1], sys.argv[2], sys.argv[3]
    fields = EmulatorClient(url).credential_fields()
    DinteroCredentials(**fields).save("bench-creds", overwrite=True)
    dintero_login("bench-creds", "bench-session", authorization_response=SecretStr(code))
    # A first run of each identity: the account's limit, the shared token, the block types.
    dintero_sync("bench-creds", streams=["settlements"], destination=db)
    dintero_sync("bench-creds", "bench-session", streams=["settlements"], destination=db)
    """
)


class PageWatch:
    """Samples the emulator's count of transactions pages served, to see the rate over time."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _count(self, http: httpx.Client) -> int:
        requests = http.get(f"{self.url}/_emulator/stats").json()["requests"]
        return sum(requests.get("transactions", {}).values())

    def _run(self) -> None:
        with httpx.Client(timeout=10) as http:
            while not self._stop.wait(0.25):
                self.samples.append((time.monotonic(), self._count(http)))

    def __enter__(self) -> PageWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def rate(self, start: float, end: float) -> float:
        inside = [(t, n) for t, n in self.samples if start <= t <= end]
        if len(inside) < 2:
            return 0.0
        (t0, n0), (t1, n1) = inside[0], inside[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0


def run_flow(env: dict[str, str], db: Path, session: str | None, kind: str = "sync") -> dict:
    out = subprocess.run(
        [sys.executable, "-c", RUN, str(db), session or "", kind],
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    line = next((x for x in out.stdout.splitlines() if x.startswith("RUN ")), None)
    if line is None:
        raise SystemExit(f"a run failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
    return json.loads(line.removeprefix("RUN "))


def measured(
    proxy: PrefectApiProxy, env: dict, db: Path, session: str | None, kind: str = "sync"
) -> dict:
    proxy.reset_counts()
    mark = time.monotonic() - time.time()  # the proxy's clock against the run's
    outcome = run_flow(env, db, session, kind)
    time.sleep(1.0)  # the last log batch and events reach the proxy after the process exits
    start = outcome["started_at"] + mark
    outcome["timeline"] = [
        (round(t - start, 3), route) for t, route, _ in proxy.history() if "/logs" not in route
    ]
    counts = proxy.reset_counts()
    outcome.update(
        requests=counts["requests"] - counts["routes"].get("POST /logs", 0),
        log_posts=counts["routes"].get("POST /logs", 0),
        log_lines=counts["log_lines"],
        events=counts["events"],
        rate_limited=counts["rate_limited"],
        routes=counts["routes"],
    )
    return outcome


def outage_run(env: dict, url: str, db: Path, proxy: PrefectApiProxy, seconds: float) -> dict:
    """A session sync during which the Prefect API refuses every connection for ``seconds``.

    Each transactions page is answered 50 ms late (a modest real API), so the stream outlasts
    the outage; the page rate is taken while the stream runs, before and during it.
    """
    from prefect_dintero.emulator.server import EmulatorClient

    emulator = EmulatorClient(url)
    emulator.set_faults({"route": "transactions", "probability": 1.0, "latency": 0.05})
    try:
        with PageWatch(url) as watch:
            result: dict = {}
            thread = threading.Thread(
                target=lambda: result.update(run_flow(env, db, "bench-session"))
            )
            thread.start()
            while not watch.samples or watch.samples[-1][1] < 20:
                time.sleep(0.1)
            before_start = time.monotonic()
            time.sleep(5.0)
            down_at = time.monotonic()
            proxy.down()
            time.sleep(seconds)
            up_at = time.monotonic()
            proxy.up()
            thread.join()
    finally:
        emulator.clear_faults()
    moving = [t for (t, n), (_, m) in zip(watch.samples, watch.samples[1:], strict=False) if m > n]
    end = min(up_at, max(moving, default=up_at))
    return {
        "seconds": seconds,
        "pages_per_s_before": round(watch.rate(before_start, down_at), 1),
        "pages_per_s_during": round(watch.rate(down_at, end), 1),
        "stream_ran_through_it": end >= up_at - 1.0,
        "run": result,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs=2, default=[5000, 50000])
    parser.add_argument("--latency-ms", type=float, default=80.0)
    parser.add_argument("--rounds", type=int, default=3, help="0 ms / latency pairs at the size")
    parser.add_argument("--limited-size", type=int, default=100000)
    parser.add_argument("--limit", type=int, default=625)
    parser.add_argument("--outage-seconds", type=float, default=20.0)
    parser.add_argument("--quick", action="store_true", help="sizes 2000 and 10000, 20,000 limited")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.limited_size, args.rounds = [2000, 10000], 20000, 1

    latency = args.latency_ms / 1000
    results: dict = {"sizes": {}}
    with tempfile.TemporaryDirectory() as home_dir:
        home = Path(home_dir)
        server, server_env = start_prefect_server(home / "prefect")
        proxy = PrefectApiProxy(server_env["PREFECT_API_URL"]).start()
        env = {**server_env, "PREFECT_API_URL": proxy.api_url, "PREFECT_LOGGING_LEVEL": "INFO"}
        runs = iter(range(10**6))

        def fresh_db() -> Path:
            return home / f"run-{next(runs)}.db"

        try:
            for size in [*args.sizes, args.limited_size]:
                emulator, url = start_emulator(
                    "--refresh-tokens",
                    *("--transactions", str(size), "--sessions", "200", "--customers", "200"),
                )
                try:
                    from prefect_dintero.emulator.server import EmulatorClient

                    code = EmulatorClient(url).authorization_code()
                    subprocess.run(
                        [sys.executable, "-c", SETUP, url, code, str(home / "setup.db")],
                        env=server_env,
                        check=True,
                        capture_output=True,
                    )
                    if size == args.limited_size:
                        proxy.set_api_limit(args.limit)
                        limited = measured(proxy, env, fresh_db(), "bench-session")
                        proxy.set_api_limit(None)
                        results["limited"] = {"size": size, "limit": args.limit, **limited}
                        print(f"limited: {_short(results['limited'])}", flush=True)
                        continue
                    row = results["sizes"][str(size)] = {}
                    # The rounds at the smaller size: the latency's cost does not grow with the
                    # data (no Prefect request per page), while a larger sync's own time varies
                    # by seconds on a busy machine and would hide it.
                    rounds = args.rounds if size == args.sizes[0] else 1
                    # Interleaved: each round runs an empty flow, then each identity's sync, at
                    # no added latency and then at the latency, so a slow spell of the machine
                    # touches both sides of each comparison.
                    kinds = (("empty", None, "empty"), ("session", "bench-session", "sync"))
                    kinds += (("service", None, "sync"),)
                    for n in range(rounds):
                        for identity, session, kind in kinds:
                            if kind == "empty" and size != args.sizes[0]:
                                continue
                            for ms, seconds in (
                                ("0ms", 0.0),
                                (f"{args.latency_ms:.0f}ms", latency),
                            ):
                                proxy.latency = seconds
                                key = f"{identity}_{ms}"
                                outcome = measured(proxy, env, fresh_db(), session, kind)
                                row.setdefault(key, []).append(outcome)
                                print(f"{size} {key} round {n + 1}: {_short(outcome)}", flush=True)
                    proxy.latency = 0.0
                    if size == args.sizes[1]:
                        results["outage"] = outage_run(
                            env, url, fresh_db(), proxy, args.outage_seconds
                        )
                        print(f"outage: {json.dumps(results['outage'])}", flush=True)
                finally:
                    emulator.terminate()
                    emulator.wait(timeout=10)
        finally:
            proxy.stop()
            server.terminate()
            server.wait(timeout=30)

    small, large = (results["sizes"][str(s)] for s in args.sizes)
    slow_key = f"{args.latency_ms:.0f}ms"
    summary: dict = {"latency_ms": args.latency_ms, "sizes": args.sizes, "rounds": args.rounds}
    empty_fast, empty_slow = small["empty_0ms"], small[f"empty_{slow_key}"]
    summary["empty"] = {
        "run_cost_rounds": [
            round(slow["run_seconds"] - fast["run_seconds"], 2)
            for fast, slow in zip(empty_fast, empty_slow, strict=True)
        ],
        "wall_cost_rounds": [
            round(slow["seconds"] - fast["seconds"], 2)
            for fast, slow in zip(empty_fast, empty_slow, strict=True)
        ],
        "requests": empty_fast[0]["requests"],
    }
    for identity in ("session", "service"):
        a, b = small[f"{identity}_0ms"][0], large[f"{identity}_0ms"][0]
        fast_runs, slow_runs = small[f"{identity}_0ms"], small[f"{identity}_{slow_key}"]
        # What the latency costs this sync beyond what it costs an empty flow, round by round.
        beyond_empty = [
            round((slow["run_seconds"] - fast["run_seconds"]) - empty, 2)
            for fast, slow, empty in zip(
                fast_runs, slow_runs, summary["empty"]["run_cost_rounds"], strict=True
            )
        ]
        wall_beyond_empty = [
            round((slow["seconds"] - fast["seconds"]) - empty, 2)
            for fast, slow, empty in zip(
                fast_runs, slow_runs, summary["empty"]["wall_cost_rounds"], strict=True
            )
        ]
        ratios = sorted(
            slow["seconds"] / fast["seconds"]
            for fast, slow in zip(fast_runs, slow_runs, strict=True)
        )
        summary[identity] = {
            "requests": [a["requests"], b["requests"]],
            "pages": [a["pages"], b["pages"]],
            "growth_per_page": round(
                (b["requests"] - a["requests"]) / max(1, b["pages"] - a["pages"]), 4
            ),
            "logs_events": [a["log_lines"] + a["events"], b["log_lines"] + b["events"]],
            "seconds_0ms": [round(r["seconds"], 1) for r in fast_runs],
            "seconds_slow": [round(r["seconds"], 1) for r in slow_runs],
            "latency_cost_rounds": [round(r, 2) for r in ratios],
            "latency_cost": round(ratios[len(ratios) // 2], 2),
            "beyond_empty_rounds": beyond_empty,
            "wall_beyond_empty_rounds": wall_beyond_empty,
            # The integration's requests, in order, in the first round at the latency.
            "timeline": [step for step in slow_runs[0]["timeline"] if step[1] not in _PREFECTS_OWN],
            "routes": b["routes"],
        }
    lim = results["limited"]
    summary["limited"] = {k: lim[k] for k in ("size", "limit", "ok", "seconds", "requests")}
    summary["limited"]["rate_limited"] = lim["rate_limited"]
    summary["outage"] = results["outage"]
    print(f"machine: {machine()}")
    e = summary["empty"]
    print(
        f"empty flow: {e['requests']} Prefect requests; {args.latency_ms:.0f} ms per request "
        f"costs its run (as Prefect records it) {e['run_cost_rounds']} s, the caller "
        f"{e['wall_cost_rounds']} s, round by round"
    )
    for identity in ("session", "service"):
        s = summary[identity]
        print(
            f"{identity}: beyond the empty flow's, the latency costs the run "
            f"{s['beyond_empty_rounds']} s and the caller {s['wall_beyond_empty_rounds']} s, "
            "round by round; the integration's requests at the latency (seconds from the "
            f"call, route): {s['timeline']}"
        )
        print(
            f"{identity}: Prefect requests {s['requests'][0]} at {args.sizes[0]:,} / "
            f"{s['requests'][1]} at {args.sizes[1]:,} transactions ({s['growth_per_page']} more "
            f"per page); logs + events {s['logs_events'][0]} / {s['logs_events'][1]}; "
            f"{args.sizes[0]:,} rows: {s['seconds_0ms']} s, with {args.latency_ms:.0f} ms per "
            f"Prefect request {s['seconds_slow']} s: {s['latency_cost']}x at the median round "
            f"(rounds {s['latency_cost_rounds']})"
        )
    lim = summary["limited"]
    print(
        f"session, {lim['size']:,} rows under {lim['limit']} requests a minute: ok={lim['ok']}, "
        f"{lim['seconds']:.1f} s, {lim['requests']} requests, {lim['rate_limited']} answered 429"
    )
    out = summary["outage"]
    print(
        f"session, {out['seconds']:.0f} s Prefect outage: {out['pages_per_s_during']} Dintero "
        f"pages/s during it vs {out['pages_per_s_before']} before (stream ran through it: "
        f"{out['stream_ran_through_it']}); run ok={out['run'].get('ok')}"
    )
    print("RESULT " + json.dumps(summary))


#: Requests an empty flow run makes too: the flow, its run and states, version and CSRF checks,
#: result storage (the timeline leaves them out).
_PREFECTS_OWN = frozenset(
    {
        "GET /admin/version",
        "GET /csrf-token",
        "POST /flows",
        "POST /flow_runs",
        "POST /flow_runs/{id}/set_state",
        "GET /flow_runs/{id}",
        "GET /admin/storage",
        "GET /flows/{id}",
    }
)


def _short(outcome: dict) -> str:
    return json.dumps({k: v for k, v in outcome.items() if k not in ("routes", "timeline")})


if __name__ == "__main__":
    main()
