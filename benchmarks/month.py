"""A month unattended: hourly ``dintero-sync`` runs against a month of simulated shop traffic.

The emulator runs in this process and its clock is driven through ``--days`` simulated days in
hourly steps; the sync reads the same clock (``prefect_dintero.times.use_clock``), so nothing
really waits. Each simulated hour:

- traffic that looks like a shop's: new transactions, sessions and customers, customer updates,
  and late changes to transactions (captures within days, settlements within two weeks, refunds
  up to 90 days); each night settlements and payout transfers;
- the ``dintero-sync`` flow runs as the hourly deployment would, reading as a logged-in user;
  each night (03:00) the reconcile run re-reads 92 days (as the reconcile deployment does);
- Dintero's lifetimes: service tokens for 4 hours, the user session for its ``expires_in`` (a
  day) without a refresh token, as documented. When a run emits ``dintero.session.expiring``
  with an hour left, the simulation plays the person the automation notifies and logs in (a
  manual step, counted);
- the faults of a normal month: a few 429 bursts, an hour of 5xx, dropped connections now and
  then.

Staleness is, for every change in the source, the simulated hours from the change until the
destination held it. After the last day the night's reconcile and the next hourly run happen,
then the destination is compared with the source.

Run: ``.venv/bin/python benchmarks/month.py [--days 30] [--destination URL]``. The last line:
``month: days=30 runs=N failed=N rows=N stale_rows_end=N max_staleness_h=X p95_staleness_h=X
token_grants=N manual_logins=N requests_per_run=X``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

AID = "T12345678"
DESTINATIONS = ["PD-main"]
#: Traffic per simulated hour, and per night.
HOURLY = dict(
    new_transactions=60, update_transactions=40, new_sessions=30, new_customers=10,
    update_customers=15,
)  # fmt: skip
NIGHTLY = dict(new_settlements=5, new_transfers=10)
RECONCILE_HOUR = 3
#: As the dintero-sync/reconcile deployment: refunds up to 90 days, read the night after.
RECONCILE_DAYS = 92
#: Hours with faults: (day, hour) -> the emulator's fault rules for that hour's run.
BURST_429 = {"route": "*", "probability": 0.5, "status": 429, "retry_after": 1}
HOUR_5XX = {"route": "*", "probability": 0.3, "status": 503}
DROPS = {"route": "*", "probability": 0.01, "drop": True}


def fault_hours(days: int) -> dict[tuple[int, int], list[dict]]:
    plan: dict[tuple[int, int], list[dict]] = {}
    for day in range(days):
        if day % 7 == 1:
            plan[(day, 10)] = [BURST_429]
            plan[(day, 11)] = [BURST_429]
        if day % 10 == 2:
            plan[(day, 15)] = [HOUR_5XX]
    return plan


@dataclass
class Month:
    """What the simulation saw."""

    days: int
    runs: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)
    rows: int = 0
    stale_rows_end: int = 0
    #: Per stream, the rows that differ from the source at the end.
    stale: dict[str, list[str]] = field(default_factory=dict)
    staleness_h: list[float] = field(default_factory=list)
    #: Changes inside the hourly lookback that took longer than an hour, and changes within the
    #: reconcile window that took longer than a day.
    late_in_lookback: int = 0
    late_in_reconcile: int = 0
    token_grants: int = 0
    manual_logins: int = 0
    requests: int = 0
    max_run_seconds: float = 0.0
    per_day: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """The figures of the last line, and the rest, as numbers."""
        ordered = sorted(self.staleness_h) or [0.0]
        return {
            "days": self.days,
            "runs": self.runs,
            "failed": self.failed,
            "rows": self.rows,
            "stale_rows_end": self.stale_rows_end,
            "max_staleness_h": round(max(ordered), 1),
            "p95_staleness_h": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 1),
            "token_grants": self.token_grants,
            "manual_logins": self.manual_logins,
            "requests_per_run": round(self.requests / max(1, self.runs), 1),
            "changes": len(self.staleness_h),
            "late_in_lookback": self.late_in_lookback,
            "late_in_reconcile": self.late_in_reconcile,
            "max_run_seconds": round(self.max_run_seconds, 1),
        }

    def unmet_goals(self) -> list[str]:
        """The issue's goals this month missed (none, when it went as it should)."""
        hours = self.days * 24 + RECONCILE_HOUR
        checks = {
            "every run completed": self.failed == 0,
            "no stale row at the end": self.stale_rows_end == 0,
            "changes within the lookback held after the next hourly run": (
                self.late_in_lookback == 0
            ),
            "changes within the reconcile window held within 24 h": self.late_in_reconcile == 0,
            "every change held within 24 h": max(self.staleness_h, default=0.0) <= 24.05,
            # hourly, one reconcile a night, and the first run and the last night's two
            "each hour and each night ran": self.runs == self.days * 25 + 3,
            # 4-hour service tokens renewed 10 % early, plus the first and a spare
            "one service token per lifetime": self.token_grants <= math.ceil(hours / 3.6) + 2,
            # day-long sessions: a login when one ends, never more often
            "a login only when a session ends": (
                self.days <= self.manual_logins <= math.ceil(hours / 23) + 1
            ),
        }
        return [goal for goal, met in checks.items() if not met]

    def line(self) -> str:
        s = self.summary()
        return (
            f"month: days={s['days']} runs={s['runs']} failed={s['failed']} rows={s['rows']} "
            f"stale_rows_end={s['stale_rows_end']} max_staleness_h={s['max_staleness_h']:.1f} "
            f"p95_staleness_h={s['p95_staleness_h']:.1f} token_grants={s['token_grants']} "
            f"manual_logins={s['manual_logins']} requests_per_run={s['requests_per_run']:.1f}"
        )


class Pending:
    """Changes the destination does not hold yet, and how long each took once it does."""

    def __init__(self, sink: Any) -> None:
        from prefect_dintero.streams.catalog import CATALOG

        self.sink = sink
        self.catalog = CATALOG
        self.waiting: dict[str, dict[str, int]] = defaultdict(dict)  # stream -> key -> ms

    def add(self, changes: list[tuple[str, str, int]]) -> None:
        for stream, key, ms in changes:
            self.waiting[stream].setdefault(key, ms)

    def settle(self, now: datetime) -> list[tuple[str, str, int, float]]:
        """Changes now held by the destination: (stream, key, changed ms, hours it took)."""
        from sqlalchemy import select

        done = []
        for stream, keys in self.waiting.items():
            if not keys:
                continue
            spec = self.catalog[stream]
            table = self.sink.table_for(spec)
            pk = table.c[spec.primary_key]
            version = table.c[spec.version_field] if spec.version_field else None
            held: dict[str, Any] = {}
            items = list(keys)
            for i in range(0, len(items), 500):
                query = select(pk, version if version is not None else pk).where(
                    pk.in_(items[i : i + 500])
                )
                with self.sink.engine.connect() as conn:
                    held.update(dict(conn.execute(query).all()))
            for key, ms in list(keys.items()):
                if key not in held:
                    continue
                value = held[key]
                if version is not None and (value is None or _ms(value) < ms):
                    continue  # an older copy
                hours = (now - _from_ms(ms)).total_seconds() / 3600
                done.append((stream, key, ms, max(0.0, hours)))
                del keys[key]
        return done


def _ms(value: datetime) -> int:
    return int((value - datetime(1970, 1, 1, tzinfo=UTC)) / timedelta(milliseconds=1))


def _from_ms(ms: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)


def simulate(days: int, destination: str, *, traffic: float = 1.0, log=print) -> Month:
    """Run the month against a Prefect API already configured (PREFECT_API_URL or a harness).

    ``traffic`` scales the hourly traffic (the test suite's short month uses half, for CI's
    time budget: every hourly run then reads about half the pages)."""
    from pydantic import SecretStr

    from prefect_dintero import DinteroCredentials
    from prefect_dintero.emulator import EmulatorConfig, running_emulator
    from prefect_dintero.flows import dintero_login, dintero_sync
    from prefect_dintero.flows import events as sync_events
    from prefect_dintero.sink import Sink
    from prefect_dintero.times import use_clock

    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=days + 3)
    config = EmulatorConfig(
        account_ids=[AID],
        token_lifetime=4 * 3600,
        session_lifetime=24 * 3600,
        refresh_tokens=False,
        transactions=3000,
        sessions=800,
        settlements=60,
        customers=800,
        transfers_per_destination=100,
        payout_destinations=DESTINATIONS,
        start_time=start,
        seed=30,
    )
    month = Month(days)
    hourly = {kind: max(1, round(n * traffic)) for kind, n in HOURLY.items()}
    name = f"month-{int(time.time())}"
    session = f"{name}-session"
    need_login: list[bool] = []

    def on_event(event: str, resource: str, payload: dict) -> None:
        if event == "dintero.session.expiring" and payload.get("threshold") == "hour":
            need_login.append(True)  # the notification reached someone

    sync_events.TEST_LISTENERS.append(on_event)
    try:
        with running_emulator(config) as emu, use_clock(emu.state.clock.now):
            DinteroCredentials(
                **emu.credential_fields(AID),
                request_deadline_seconds=20,
            ).save(name, overwrite=True)

            def login() -> None:
                dintero_login(
                    name, session, authorization_response=SecretStr(emu.authorization_code())
                )
                month.manual_logins += 1

            def run(**kwargs: Any) -> None:
                started = time.monotonic()
                state = dintero_sync(
                    name,
                    session_block=session,
                    destination=destination,
                    payout_destinations=DESTINATIONS,
                    timeout_minutes=10,
                    return_state=True,
                    **kwargs,
                )
                month.runs += 1
                month.max_run_seconds = max(month.max_run_seconds, time.monotonic() - started)
                if not state.is_completed():
                    month.failed += 1
                    month.failures.append(f"{emu.state.clock.now():%d %H:%M} {state.message}")

            login()
            run(full_refresh=True)  # the first sync: everything so far
            sink = Sink(destination)
            pending = Pending(sink)
            data = emu.state.accounts[AID]
            seen_log = len(data.change_log)
            emu.reset_stats()
            faults = fault_hours(days)
            for day in range(days):
                day_runs, day_failed = month.runs, month.failed
                day_stale: list[float] = []
                for hour in range(24):
                    emu.advance_clock(3600)
                    emu.mutate(**hourly, **(NIGHTLY if hour == 0 else {}))
                    pending.add(data.change_log[seen_log:])
                    seen_log = len(data.change_log)
                    emu.set_faults(DROPS, *faults.get((day, hour), []))
                    if need_login:
                        need_login.clear()
                        login()
                    run()
                    if hour == RECONCILE_HOUR:
                        run(reconcile_days=RECONCILE_DAYS)
                    emu.clear_faults()
                    now = emu.state.clock.now()
                    for stream, key, _ms, hours in pending.settle(now):
                        day_stale.append(hours)
                        month.staleness_h.append(hours)
                        age = _age_days(data, stream, key, now)
                        if age is not None and age <= 3 and hours > 1.05:
                            month.late_in_lookback += 1
                        elif hours > 24.05:
                            month.late_in_reconcile += 1
                month.per_day.append(
                    {
                        "day": day + 1,
                        "runs": month.runs - day_runs,
                        "failed": month.failed - day_failed,
                        "changes": len(day_stale),
                        "max_staleness_h": round(max(day_stale, default=0), 1),
                        "logins": month.manual_logins,
                    }
                )
                log(
                    f"day {day + 1:>2}: {month.runs - day_runs} runs, "
                    f"{month.failed - day_failed} failed, {len(day_stale)} changes arrived, "
                    f"max staleness {max(day_stale, default=0):.1f} h"
                )
            # The night after the last day: its reconcile, then the next hourly run.
            emu.advance_clock(RECONCILE_HOUR * 3600)
            if need_login:
                need_login.clear()
                login()
            run(reconcile_days=RECONCILE_DAYS)
            run()
            for _stream, _key, _ms, hours in pending.settle(emu.state.clock.now()):
                month.staleness_h.append(hours)
            month.stale = _stale_rows(emu, sink)
            month.stale_rows_end = sum(len(keys) for keys in month.stale.values())
            month.rows = sum(sink.count(spec, AID) for spec in pending.catalog.values())
            stats = emu.stats()
            month.token_grants = stats["token_grants"]["client_credentials"]
            month.requests = stats["requests_total"]
            sink.dispose()
    finally:
        sync_events.TEST_LISTENERS.remove(on_event)
    return month


def _age_days(data: Any, stream: str, key: str, now: datetime) -> float | None:
    if stream != "transactions":
        return None
    obj = data.find(stream, key)
    created = datetime.fromisoformat(obj["created_at"].replace("Z", "+00:00"))
    return (now - created) / timedelta(days=1)


def _stale_rows(emu: Any, sink: Any) -> dict[str, list[str]]:
    """Per stream, the keys whose row differs from the source (or is missing)."""
    from prefect_dintero.streams.catalog import CATALOG

    stale: dict[str, list[str]] = {}
    for spec in CATALOG.values():
        if spec.incremental == "snapshot":  # read whole by every run, stamped with it
            continue
        source = {o[spec.primary_key]: o for o in emu.dump(spec.name, account_id=AID)}
        table = {r[spec.primary_key]: r["raw"] for r in sink.rows(spec, AID)}
        keys = [k for k, o in source.items() if table.get(k) != o]
        if keys:
            stale[spec.name] = keys
    return stale


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--destination", help="a database URL (default: a new SQLite file)")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from _emulator import start_prefect_server

    started = time.monotonic()
    with tempfile.TemporaryDirectory() as home:
        server, env = start_prefect_server(Path(home))
        try:
            import os

            os.environ.update({k: v for k, v in env.items() if k.startswith("PREFECT_")})
            destination = args.destination or str(Path(home) / "month.db")
            month = simulate(args.days, destination)
        finally:
            server.terminate()
            server.wait(timeout=30)
    print("\n| day | runs | failed | changes arrived | max staleness (h) | logins so far |")
    print("|---|---|---|---|---|---|")
    for d in month.per_day:
        print(
            f"| {d['day']} | {d['runs']} | {d['failed']} | {d['changes']} | "
            f"{d['max_staleness_h']} | {d['logins']} |"
        )
    print(
        f"\nchanges inside the 3-day lookback later than the next hourly run: "
        f"{month.late_in_lookback}; changes later than a day: {month.late_in_reconcile}; "
        f"longest run {month.max_run_seconds:.1f} s (real); simulated in "
        f"{time.monotonic() - started:.0f} s"
    )
    for failure in month.failures[:10]:
        print("failed run:", failure)
    for goal in month.unmet_goals():
        print("goal missed:", goal)
    for stream, keys in month.stale.items():
        print(f"stale at the end: {stream}: {len(keys)} rows, e.g. {', '.join(keys[:5])}")
    print("RESULT " + json.dumps(month.summary()))
    print(month.line())


if __name__ == "__main__":
    main()
