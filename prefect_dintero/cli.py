"""The ``prefect-dintero`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import datetime

from ._version import __version__


class CliError(Exception):
    """A user mistake: printed as one line, exit status 2, no traceback."""


def _emulator_parser(sub: argparse._SubParsersAction) -> None:
    from .emulator.config import (
        DEFAULT_ACCOUNT_ID,
        DEFAULT_CLIENT_ID,
        DEFAULT_CLIENT_SECRET,
        DEFAULT_REDIRECT_URI,
    )

    p = sub.add_parser(
        "emulator",
        help="run the bundled Dintero emulator on loopback",
        description=(
            "Serve an offline stand-in for api.dintero.com and checkout.dintero.com on one origin. "
            "Point a credentials block's api_url and checkout_url at the printed base URL."
        ),
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8787, help="port to bind (default: 8787)")
    p.add_argument(
        "--account-id",
        action="append",
        dest="account_ids",
        metavar="AID",
        help=f"merchant account to serve; repeat for several (default: {DEFAULT_ACCOUNT_ID})",
    )
    p.add_argument("--client-id", default=DEFAULT_CLIENT_ID, help="API client id")
    p.add_argument("--client-secret", default=DEFAULT_CLIENT_SECRET, help="API client secret")
    p.add_argument(
        "--redirect-uri",
        action="append",
        dest="redirect_uris",
        metavar="URI",
        help=f"registered OIDC redirect URI; repeatable (default: {DEFAULT_REDIRECT_URI})",
    )
    p.add_argument("--token-lifetime", type=int, default=3600, help="access token lifetime, s")
    p.add_argument("--code-lifetime", type=int, default=60, help="authorization code lifetime, s")
    p.add_argument(
        "--refresh-tokens", action="store_true", help="issue refresh tokens from the OIDC exchange"
    )
    p.add_argument(
        "--no-rotate-refresh-tokens",
        dest="rotate_refresh_tokens",
        action="store_false",
        help="reuse refresh tokens instead of rotating them on every refresh",
    )
    p.add_argument("--transactions", type=int, default=250, help="transactions per account")
    p.add_argument("--sessions", type=int, default=120, help="checkout sessions per account")
    p.add_argument("--settlements", type=int, default=40, help="settlements per account")
    p.add_argument("--customers", type=int, default=80, help="customers per account")
    p.add_argument(
        "--payout-destination",
        action="append",
        dest="payout_destinations",
        metavar="ID",
        help="payout destination id; repeatable (default: PD-main and PD-store-2)",
    )
    p.add_argument(
        "--transfers-per-destination", type=int, default=60, help="payout transfers per destination"
    )
    p.add_argument("--seed", type=int, default=42, help="seed of the data generator")
    p.add_argument(
        "--start-time",
        type=datetime.fromisoformat,
        help="the emulator's 'now' at start (ISO 8601; default: 30 days ago)",
    )
    p.add_argument(
        "--faults",
        metavar="JSON",
        help="fault rules to start with, as POST /_emulator/faults takes them",
    )
    p.set_defaults(handler=_run_emulator)


def _run_emulator(args: argparse.Namespace) -> int:
    from .emulator.config import EmulatorConfig
    from .emulator.faults import FaultConfigError
    from .emulator.server import serve_forever
    from .emulator.state import EmulatorState

    config = EmulatorConfig(
        client_id=args.client_id,
        client_secret=args.client_secret,
        token_lifetime=args.token_lifetime,
        code_lifetime=args.code_lifetime,
        refresh_tokens=args.refresh_tokens,
        rotate_refresh_tokens=args.rotate_refresh_tokens,
        transactions=args.transactions,
        sessions=args.sessions,
        settlements=args.settlements,
        customers=args.customers,
        transfers_per_destination=args.transfers_per_destination,
        seed=args.seed,
        start_time=args.start_time,
    )
    if args.account_ids:
        config.account_ids = args.account_ids
    if args.redirect_uris:
        config.redirect_uris = args.redirect_uris
    if args.payout_destinations:
        config.payout_destinations = args.payout_destinations
    faults = None
    if args.faults:
        try:
            faults = json.loads(args.faults)
            EmulatorState(
                EmulatorConfig(
                    transactions=0,
                    sessions=0,
                    settlements=0,
                    customers=0,
                    transfers_per_destination=0,
                )
            ).faults.configure(faults)
        except (json.JSONDecodeError, FaultConfigError) as exc:
            raise CliError(f"--faults: {exc}") from None
    base = f"http://{args.host}:{args.port}"
    print(
        f"Dintero emulator on {base}  (api_url and checkout_url)\n"
        f"  account ids:    {', '.join(config.account_ids)}\n"
        f"  client id:      {config.client_id}\n"
        f"  client secret:  {config.client_secret}\n"
        f"  redirect URIs:  {', '.join(config.redirect_uris)}\n"
        f"  authorize URL:  {base}/oidc/authorize\n"
        f"  token lifetime: {config.token_lifetime} s; refresh tokens: "
        f"{'on' if config.refresh_tokens else 'off'}\n"
        f"  control:        {base}/_emulator/stats, /_emulator/faults, /_emulator/clock\n"
        "Ctrl-C to stop.",
        flush=True,
    )
    serve_forever(config, args.host, args.port, faults=faults)
    return 0


def _demo_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the main job against the bundled emulator",
        description="Start the emulator on loopback and show what prefect-dintero reads from it.",
    )
    p.set_defaults(handler=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    import httpx

    from .emulator import running_emulator

    with running_emulator() as emulator:
        cfg = emulator.config
        aid = cfg.account_ids[0]
        token = httpx.post(
            f"{emulator.url}/v1/accounts/{aid}/auth/token",
            auth=(cfg.client_id, cfg.client_secret),
            json={
                "grant_type": "client_credentials",
                "audience": f"{emulator.url}/v1/accounts/{aid}",
            },
        ).json()["access_token"]
        page = httpx.get(
            f"{emulator.url}/v1/transactions",
            params={"limit": 10},
            headers={"Authorization": f"Bearer {token}"},
        ).json()
        print(f"Emulator on {emulator.url}; first page of transactions for {aid}:")
        print(f"{'id':<42} {'created_at':<26} {'status':<22} {'amount':>9} cur")
        for t in page:
            row = (t["id"], t["created_at"], t["status"], t["amount"], t["currency"])
            print("{:<42} {:<26} {:<22} {:>9} {}".format(*row))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prefect-dintero",
        description="Prefect integration for the Dintero payments API.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _emulator_parser(sub)
    _demo_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except CliError as exc:
        print(f"prefect-dintero {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
