"""``prefect-dintero demo``: the main job end to end against the bundled emulator."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the main job end to end against the bundled emulator",
        description=(
            "Start the emulator on loopback, log its test user in with the dintero-login flow, "
            "sync every stream with the dintero-sync flow into a SQLite file, print what was "
            "synced, and stop. Run it twice to see an incremental run. No credentials needed."
        ),
    )
    p.add_argument(
        "--destination",
        default="dintero-demo.db",
        help="SQLite file (default: dintero-demo.db; the deployments write elsewhere)",
    )
    p.add_argument("--transactions", type=int, default=2000, help="transactions in the emulator")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import os
    import time
    from datetime import UTC, datetime, timedelta

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from pydantic import SecretStr

    from prefect_dintero.auth.oidc_login import new_state, parse_authorization_response
    from prefect_dintero.emulator import EmulatorConfig, running_emulator

    started = time.monotonic()
    # Anchored to today, so two demo runs on a day see the same history (and the second one is
    # incremental).
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    config = EmulatorConfig(
        refresh_tokens=True,
        start_time=today - timedelta(days=30),
        transactions=args.transactions,
        sessions=args.transactions // 2,
        settlements=120,
        customers=args.transactions // 4,
        transfers_per_destination=200,
    )
    with running_emulator(config) as emulator:
        from prefect_dintero.blocks import DinteroCredentials
        from prefect_dintero.blocks.prefect_api import save_block
        from prefect_dintero.flows import dintero_login, dintero_sync

        print(f"Dintero emulator on {emulator.url} (account {config.account_ids[0]})", flush=True)
        save_block(
            DinteroCredentials(
                **emulator.credential_fields(),
                oidc_authorize_url=f"{emulator.url}/oidc/authorize",
                redirect_uri=emulator.callback_url,
                system_name="prefect-dintero-demo",
            ),
            "dintero-demo",
        )
        # The demo plays the user: open the login page, come back with the redirect URL.
        state = new_state()
        redirect = emulator.login(state=state, redirect_uri=emulator.callback_url)
        code = parse_authorization_response(redirect, expected_state=state)
        who = dintero_login(
            "dintero-demo", "dintero-demo-session", authorization_response=SecretStr(code)
        )
        # No payout destinations given: the sync reads the account's list.
        results = dintero_sync(
            "dintero-demo", session_block="dintero-demo-session", destination=args.destination
        )
    elapsed = time.monotonic() - started
    print(f"\nLogged in as {who['user_name']}; synced account {config.account_ids[0]}:\n")
    print(
        f"{'stream':<20}{'read':>8}{'new':>8}{'updated':>9}{'unchanged':>11}{'pages':>7}"
        f"{'seconds':>9}"
    )
    for r in results:
        print(
            f"{r['stream']:<20}{r['fetched']:>8}{r['inserted']:>8}{r['updated']:>9}"
            f"{r['unchanged']:>11}{r['pages']:>7}{r['seconds']:>9.1f}"
        )
    print(
        "\nread: rows Dintero sent; new, updated and unchanged: what they did to the tables. "
        "A row can be read twice (customers are paged by updated_at, each page starting at the "
        "last one's newest time, and a window's edge is read again): it is stored once, and "
        "counts as unchanged the second time. The emulator's clock runs 30 days behind today "
        f"(its 'now' is {config.resolved_start_time():%Y-%m-%d}); times are stored in UTC."
    )
    from prefect_dintero.sink import resolve_destination

    incremental = any(r["cursor_before"] for r in results)
    if incremental:
        rows = sum(r["fetched"] for r in results)
        unchanged = sum(r["unchanged"] for r in results)
        what = (
            f"This was an incremental run: only the lookback was read again ({rows} rows, "
            f"{unchanged} of them unchanged)."
        )
    else:
        what = "Run it again for an incremental sync."
    print(
        f"\nData: {resolve_destination(args.destination)} (tables dintero_*, state in "
        f"dintero_sync_state). Demo took {elapsed:.0f} s. {what}"
    )
    return 0
