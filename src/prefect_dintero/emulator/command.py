"""``prefect-dintero emulator`` and ``python -m prefect_dintero.emulator``: serve the emulator.

The emulator is core (no Prefect import), so its command line lives here; the Prefect-side CLI
(``prefect_dintero.cli``) adds it as one of its commands.
"""

from __future__ import annotations

import argparse
import errno
import json
import socket
import sys
from collections.abc import Sequence
from datetime import datetime

#: Appended to an option's help: argparse fills in its default.
DEFAULT = " (default: %(default)s)"


class UsageError(Exception):
    """A mistake in the command line: printed as one line, exit status 2, no traceback."""


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``emulator`` command to a parent parser's subcommands."""
    from .config import (
        DEFAULT_ACCOUNT_ID,
        DEFAULT_CLIENT_ID,
        DEFAULT_CLIENT_SECRET,
        DEFAULT_REDIRECT_URI,
    )

    p = sub.add_parser(
        "emulator",
        help="run the bundled Dintero emulator on loopback (for tests)",
        description=(
            "Serve an offline stand-in for api.dintero.com and checkout.dintero.com on one origin, "
            "for tests and demos: it prints its client secret, and its /_emulator/* control "
            "routes (fault injection, clock, data dumps, every issued token) need no "
            "authentication. Point a credentials block's api_url and checkout_url at the "
            "printed base URL."
        ),
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="loopback address to bind" + DEFAULT + "; others need --allow-remote",
    )
    p.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a non-loopback --host: anyone who can reach it can read every token it "
        "issued; only on a network of your own tests",
    )
    p.add_argument("--port", type=int, default=8787, help="port to bind" + DEFAULT)
    p.add_argument(
        "--account-id",
        action="append",
        dest="account_ids",
        metavar="AID",
        help=f"merchant account to serve; repeat for several (default: {DEFAULT_ACCOUNT_ID})",
    )
    p.add_argument(
        "--client-id", default=DEFAULT_CLIENT_ID, help="API client id (default: %(default)s)"
    )
    p.add_argument(
        "--client-secret",
        default=DEFAULT_CLIENT_SECRET,
        help="API client secret (default: %(default)s)",
    )
    p.add_argument(
        "--redirect-uri",
        action="append",
        dest="redirect_uris",
        metavar="URI",
        help=f"registered OIDC redirect URI; repeatable (default: {DEFAULT_REDIRECT_URI})",
    )
    p.add_argument(
        "--token-lifetime",
        type=int,
        default=3600,
        help="access token lifetime, s (default: %(default)s)",
    )
    p.add_argument(
        "--session-lifetime",
        type=int,
        help="lifetime of a user session's tokens, s (default: the token lifetime)",
    )
    p.add_argument(
        "--code-lifetime",
        type=int,
        default=60,
        help="authorization code lifetime, s (default: %(default)s)",
    )
    p.add_argument(
        "--refresh-tokens", action="store_true", help="issue refresh tokens from the OIDC exchange"
    )
    p.add_argument(
        "--no-rotate-refresh-tokens",
        dest="rotate_refresh_tokens",
        action="store_false",
        help="reuse refresh tokens instead of rotating them on every refresh",
    )
    p.add_argument(
        "--refresh-token-reuse-interval",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="accept a rotated-out refresh token for this long (default 0: strictly single use)",
    )
    p.add_argument(
        "--transactions",
        type=int,
        default=250,
        help="transactions per account (default: %(default)s)",
    )
    p.add_argument(
        "--sessions",
        type=int,
        default=120,
        help="checkout sessions per account (default: %(default)s)",
    )
    p.add_argument(
        "--settlements",
        type=int,
        default=40,
        help="generated settlements per account, besides the daily ones of its payments "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--customers", type=int, default=80, help="customers per account (default: %(default)s)"
    )
    p.add_argument(
        "--payout-destination",
        action="append",
        dest="payout_destinations",
        metavar="ID",
        help="payout destination id; repeatable (default: PD-main and PD-store-2)",
    )
    p.add_argument(
        "--transfers-per-destination",
        type=int,
        default=60,
        help="generated payout ledger entries per destination, besides those of the payments' "
        "settlements (default: %(default)s)",
    )
    p.add_argument(
        "--history-days",
        type=int,
        default=180,
        metavar="N",
        help="the generated objects are spread over the N days before the start (default: "
        "%(default)s)",
    )
    p.add_argument(
        "--seed", type=int, default=42, help="seed of the data generator (default: %(default)s)"
    )
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
    silent = p.add_argument_group(
        "where Dintero's reference is silent",
        "Each undocumented behaviour can be switched, so flows can be tested against every "
        "plausible choice.",
    )
    p.add_argument(
        "--latency-ms",
        type=float,
        default=0.0,
        help="milliseconds added to every data page (default: none)",
    )
    p.add_argument(
        "--rate-limit",
        type=float,
        default=0.0,
        metavar="N",
        help="data requests a second per account; beyond it 429 with Retry-After (default: none)",
    )
    silent.add_argument(
        "--list-order",
        choices=("newest", "oldest", "shuffled"),
        default="newest",
        help="order of every list Dintero does not document the order of (default: newest; "
        "shuffled: a stable random permutation per data set)",
    )
    silent.add_argument(
        "--null-optional-keys",
        dest="omit_optional_keys",
        action="store_false",
        help="send items/entries as [] when empty, and last_evaluated_key/next_page_token and a "
        "session's transaction_id as null, where the schemas leave them out",
    )
    silent.add_argument(
        "--deletions-only-in-full-lists",
        dest="deletions_in_since",
        action="store_false",
        help="since_datetime never returns deleted customers (include_deleted=true lists them "
        "only without since_datetime)",
    )
    silent.add_argument(
        "--refuse-filter",
        dest="refused_transaction_filters",
        action="append",
        default=[],
        choices=("captured_at", "refunded_at"),
        help="answer GET /v1/transactions with 400 when this filter (.gte/.lte) is used "
        "(documented, but subject to change); repeat for both",
    )
    silent.add_argument(
        "--refunded-at-first-refund-only",
        action="store_true",
        help="refunded_at matches a transaction by its first refund only",
    )
    silent.add_argument(
        "--since-exclusive",
        action="store_true",
        help="customers' since_datetime returns rows updated after it, not at or after it",
    )
    silent.add_argument(
        "--short-pages",
        action="store_true",
        help="pages may hold fewer rows than asked for even when more follow",
    )
    silent.add_argument(
        "--settlement-keeps-updated-at",
        action="store_true",
        help="a settlement adds its entries to a payment's events without moving the payment's "
        "updated_at (default: it moves it)",
    )
    silent.add_argument(
        "--late-changes-days",
        type=int,
        default=90,
        metavar="N",
        help="transactions change up to N days after creation: captured within days, settled "
        "within two weeks, refunded up to N (default: 90)",
    )
    silent.add_argument(
        "--error-codes",
        choices=("dintero", "generic"),
        default="dintero",
        help="generic: 400/401/403 bodies whose code and message the client cannot know",
    )
    silent.add_argument(
        "--payout-destination-list",
        choices=("object", "array", "missing"),
        default="object",
        help='the payout destinations list as {"payout_destinations": [...]}, a bare array, or '
        "not served (404)" + DEFAULT,
    )
    p.add_argument(
        "--no-read-accounts",
        dest="read_accounts_scope",
        action="store_false",
        help="the API client lacks read:accounts: listing payout destinations answers 403",
    )
    p.set_defaults(handler=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Serve until Ctrl-C, after checking the arguments and that the port is free."""
    from ..validation import is_loopback
    from .config import EmulatorConfig
    from .faults import FaultConfigError, FaultInjector
    from .server import serve_forever

    if not is_loopback(args.host) and not args.allow_remote:
        raise UsageError(
            f"--host {args.host} is not a loopback address: the emulator's control routes are "
            "open to anyone who reaches it; add --allow-remote if that is what you want"
        )
    if port_in_use(args.host, args.port):
        raise UsageError(
            f"{args.host}:{args.port} is already in use (another emulator?); stop it or pass --port"
        )

    config = EmulatorConfig(
        client_id=args.client_id,
        client_secret=args.client_secret,
        token_lifetime=args.token_lifetime,
        session_lifetime=args.session_lifetime,
        code_lifetime=args.code_lifetime,
        refresh_tokens=args.refresh_tokens,
        rotate_refresh_tokens=args.rotate_refresh_tokens,
        refresh_token_reuse_interval=args.refresh_token_reuse_interval,
        transactions=args.transactions,
        sessions=args.sessions,
        settlements=args.settlements,
        customers=args.customers,
        transfers_per_destination=args.transfers_per_destination,
        history_days=args.history_days,
        seed=args.seed,
        start_time=args.start_time,
        list_order=args.list_order,
        omit_optional_keys=args.omit_optional_keys,
        since_exclusive=args.since_exclusive,
        deletions_in_since=args.deletions_in_since,
        refused_transaction_filters=tuple(args.refused_transaction_filters),
        refunded_at_first_refund_only=args.refunded_at_first_refund_only,
        page_latency=args.latency_ms / 1000,
        rate_limit=args.rate_limit,
        short_pages=args.short_pages,
        late_changes_days=args.late_changes_days,
        settlement_touches_updated_at=not args.settlement_keeps_updated_at,
        error_codes=args.error_codes,
        payout_destination_list=args.payout_destination_list,
        read_accounts_scope=args.read_accounts_scope,
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
            if not isinstance(faults, dict):
                raise FaultConfigError('expected an object such as {"rules": [...]}')
            FaultInjector().configure(faults)  # reject bad rules before serving
        except (json.JSONDecodeError, FaultConfigError) as exc:
            raise UsageError(f"--faults: {exc}") from None
    base = f"http://{args.host}:{args.port}"
    print(
        f"Dintero emulator on {base}  (api_url and checkout_url)\n"
        f"  account ids:    {', '.join(config.account_ids)}\n"
        f"  client id:      {config.client_id}\n"
        f"  client secret:  {config.client_secret}\n"
        f"  redirect URIs:  {', '.join(config.redirect_uris)}, and the emulator's own page\n"
        f"                  {base}/oidc/callback (shows what to paste into Prefect)\n"
        f"  authorize URL:  {base}/oidc/authorize (a login page with one button)\n"
        f"  token lifetime: {config.token_lifetime} s; refresh tokens: "
        f"{'on' if config.refresh_tokens else 'off'}\n"
        f"  control:        {base}/_emulator/stats, /_emulator/faults, /_emulator/clock\n"
        "Ctrl-C to stop.",
        flush=True,
    )
    serve_forever(config, args.host, args.port, faults=faults, allow_remote=args.allow_remote)
    return 0


def port_in_use(host: str, port: int) -> bool:
    """Whether something already listens on ``host:port`` (checked before the banner, so a
    second emulator says so in one line instead of printing its banner and then failing)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # As uvicorn binds: a port in TIME_WAIT after an emulator stopped is free to reuse.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m prefect_dintero.emulator")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = parser.parse_args(["emulator", *(sys.argv[1:] if argv is None else argv)])
    try:
        return run(args)
    except KeyboardInterrupt:
        return 130
    except UsageError as exc:
        print(f"emulator: error: {exc}", file=sys.stderr)
        return 2
