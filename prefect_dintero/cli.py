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
        help="loopback address to bind (default: 127.0.0.1); others need --allow-remote",
    )
    p.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a non-loopback --host: anyone who can reach it can read every token it "
        "issued; only on a network of your own tests",
    )
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
    p.add_argument(
        "--session-lifetime",
        type=int,
        help="lifetime of a user session's tokens, s (default: the token lifetime)",
    )
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
    p.add_argument(
        "--refresh-token-reuse-interval",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="accept a rotated-out refresh token for this long (default 0: strictly single use)",
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
    silent = p.add_argument_group(
        "where Dintero's reference is silent",
        "Each undocumented behaviour can be switched, so flows can be tested against every "
        "plausible choice.",
    )
    silent.add_argument(
        "--list-order",
        choices=("newest", "oldest", "shuffled"),
        default="newest",
        help="order of every list Dintero does not document the order of (default: newest; "
        "shuffled: a stable random permutation per data set)",
    )
    silent.add_argument(
        "--omit-optional-keys",
        action="store_true",
        help="leave out items/entries when empty and last_evaluated_key/next_page_token on the "
        "last page (the schemas allow it)",
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
    p.set_defaults(handler=_run_emulator)


def _run_emulator(args: argparse.Namespace) -> int:
    from .emulator.config import EmulatorConfig
    from .emulator.faults import FaultConfigError, FaultInjector
    from .emulator.server import serve_forever
    from .validation import is_loopback

    if not is_loopback(args.host) and not args.allow_remote:
        raise CliError(
            f"--host {args.host} is not a loopback address: the emulator's control routes are "
            "open to anyone who reaches it; add --allow-remote if that is what you want"
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
        seed=args.seed,
        start_time=args.start_time,
        list_order=args.list_order,
        omit_optional_keys=args.omit_optional_keys,
        since_exclusive=args.since_exclusive,
        short_pages=args.short_pages,
        late_changes_days=args.late_changes_days,
        error_codes=args.error_codes,
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
    serve_forever(config, args.host, args.port, faults=faults, allow_remote=args.allow_remote)
    return 0


def _demo_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the main job end to end against the bundled emulator",
        description=(
            "Start the emulator on loopback, log its test user in with the dintero-login flow, "
            "sync every stream with the dintero-sync flow into a SQLite file, print what was "
            "synced, and stop. Run it twice to see an incremental run. No credentials needed."
        ),
    )
    p.add_argument("--destination", default="dintero.db", help="SQLite file (default: dintero.db)")
    p.add_argument("--transactions", type=int, default=2000, help="transactions in the emulator")
    p.set_defaults(handler=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    import os
    import time
    from datetime import UTC, datetime, timedelta

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from pydantic import SecretStr

    from .emulator import EmulatorConfig, running_emulator
    from .login import new_state, parse_authorization_response

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
        from .blocks import DinteroCredentials
        from .flows import dintero_login, dintero_sync

        print(f"Dintero emulator on {emulator.url} (account {config.account_ids[0]})", flush=True)
        DinteroCredentials(
            account_id=config.account_ids[0],
            client_id=config.client_id,
            client_secret=SecretStr(config.client_secret),
            api_url=emulator.url,
            checkout_url=emulator.url,
            oidc_authorize_url=f"{emulator.url}/oidc/authorize",
            redirect_uri=config.redirect_uris[0],
            system_name="prefect-dintero-demo",
        ).save("dintero-demo", overwrite=True, _sync=True)
        # The demo plays the user: open the login page, come back with the redirect URL.
        state = new_state()
        code = parse_authorization_response(emulator.login(state=state), expected_state=state)
        who = dintero_login(
            "dintero-demo", "dintero-demo-session", authorization_response=SecretStr(code)
        )
        results = dintero_sync(
            "dintero-demo",
            session_block="dintero-demo-session",
            destination=args.destination,
            payout_destinations=config.payout_destinations,
        )
    elapsed = time.monotonic() - started
    print(f"\nLogged in as {who['user_name']}; synced account {config.account_ids[0]}:\n")
    print(f"{'stream':<18}{'rows':>8}{'inserted':>10}{'updated':>9}{'pages':>7}{'seconds':>9}")
    for r in results:
        print(
            f"{r['stream']:<18}{r['fetched']:>8}{r['inserted']:>10}{r['updated']:>9}"
            f"{r['pages']:>7}{r['seconds']:>9.1f}"
        )
    from .sink import resolve_destination

    print(
        f"\nData: {resolve_destination(args.destination)} (tables dintero_*, state in "
        f"dintero_sync_state). Demo took {elapsed:.0f} s; run it again for an incremental sync."
    )
    return 0


def _login_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "login",
        help="log a user in and save the session block",
        description=(
            "Print the identity provider's login link for the API client, read back the URL "
            "you were redirected to (or the code), check its state, exchange the code with the "
            "dintero-login flow, and save a Dintero OIDC Session block."
        ),
    )
    p.add_argument("--credentials-block", required=True, help="Dintero Credentials block name")
    p.add_argument("--session-block", required=True, help="name to save the session block under")
    p.add_argument(
        "--code-stdin",
        action="store_true",
        help="read an authorization code (or redirect URL) you already have from standard "
        "input instead of printing a login link; its state cannot be checked",
    )
    # A code on the command line lands in shell history and in every process listing.
    p.add_argument("--code", help=argparse.SUPPRESS)
    p.set_defaults(handler=_run_login)


def _run_login(args: argparse.Namespace) -> int:
    from pydantic import SecretStr

    from .blocks import DinteroCredentials
    from .flows import dintero_login
    from .login import build_authorize_url, new_state, parse_authorization_response

    if args.code is not None:
        raise CliError(
            "--code puts the code in your shell history and process list: pipe it instead, "
            "e.g. `prefect-dintero login ... --code-stdin < code.txt`, or answer the prompt"
        )
    creds = DinteroCredentials.load(args.credentials_block, _sync=True)
    if args.code_stdin:
        code = parse_authorization_response(sys.stdin.readline())
    else:
        state = new_state()
        url = build_authorize_url(
            creds.oidc_authorize_url, creds.client_id, creds.redirect_uri, state
        )
        print(f"Open this link, log in, and paste the URL you are redirected to:\n\n  {url}\n")
        pasted = input("Redirect URL (or code): ")
        code = parse_authorization_response(pasted, expected_state=state)
    facts = dintero_login(
        args.credentials_block, args.session_block, authorization_response=SecretStr(code)
    )
    print(
        f"Logged in {facts['user_name'] or facts['user_sub']}; session saved as block "
        f"{args.session_block!r}, valid until {facts['expires_at']}"
    )
    return 0


def _sync_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sync",
        help="run the dintero-sync flow",
        description="Sync Dintero streams of one account into SQLite or PostgreSQL.",
    )
    p.add_argument("--credentials-block", required=True, help="Dintero Credentials block name")
    p.add_argument("--session-block", help="Dintero OIDC Session block name (sync as the user)")
    p.add_argument(
        "--stream",
        action="append",
        dest="streams",
        metavar="NAME",
        help="a stream to sync; repeatable (default: all)",
    )
    p.add_argument(
        "--destination",
        default="dintero.db",
        help="SQLite file or SQLAlchemy URL without a password (default: dintero.db)",
    )
    p.add_argument("--destination-block", help="a SqlAlchemyConnector block name instead")
    p.add_argument("--lookback-hours", type=float, help="re-read this far before the cursor")
    p.add_argument("--page-size", type=int, default=100, help="rows per request (default: 100)")
    p.add_argument("--full-refresh", action="store_true", help="ignore the saved cursors")
    p.add_argument(
        "--payout-destination",
        action="append",
        dest="payout_destinations",
        metavar="ID",
        help="payout destination id for payout_transfers; repeatable",
    )
    p.add_argument(
        "--start-date",
        type=datetime.fromisoformat,
        help="oldest data a first sync reads (ISO 8601)",
    )
    p.add_argument(
        "--reconcile-days",
        type=float,
        help="re-read at least the last N days, whatever the cursor (catches late refunds)",
    )
    p.set_defaults(handler=_run_sync)


def _run_sync(args: argparse.Namespace) -> int:
    from .blocks import DinteroCredentials
    from .flows import dintero_sync
    from .streams import resolve_streams
    from .sync import sync_options
    from .tasks.destinations import check_destination

    # Mistakes are reported before a flow run starts (and logs a traceback of its own).
    resolve_streams(args.streams)
    check_destination(args.destination, args.destination_block)
    sync_options(
        page_size=args.page_size,
        lookback_hours=args.lookback_hours,
        reconcile_days=args.reconcile_days,
        start_date=args.start_date,
    )
    DinteroCredentials.load(args.credentials_block, _sync=True)

    results = dintero_sync(
        args.credentials_block,
        session_block=args.session_block,
        streams=args.streams,
        destination=args.destination,
        destination_block=args.destination_block,
        lookback_hours=args.lookback_hours,
        page_size=args.page_size,
        full_refresh=args.full_refresh,
        payout_destinations=args.payout_destinations,
        start_date=args.start_date,
        reconcile_days=args.reconcile_days,
    )
    for r in results:
        print(f"{r['stream']}: {r['fetched']} rows, {r['inserted']} new, {r['updated']} updated")
    return 0


def _register_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "register",
        help="register the block types on the current Prefect API",
        description=(
            "Register the Dintero Credentials and Dintero OIDC Session block types with the "
            "Prefect API in use (PREFECT_API_URL), so they appear in its UI."
        ),
    )
    p.set_defaults(handler=_run_register)


def _run_register(args: argparse.Namespace) -> int:
    from .blocks import DinteroCredentials, DinteroOIDCSession, DinteroServiceToken

    for block in (DinteroCredentials, DinteroOIDCSession, DinteroServiceToken):
        block.register_type_and_schema()
        print(f"registered block type {block.get_block_type_name()!r}")
    return 0


def _automation_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "automation",
        help="write the session-expiring automation for your notification block",
        description=(
            "Write the automation that, on dintero.session.expiring, sends a notification "
            "through your notification block with the link to run dintero-login/manual. Feed "
            "it to: prefect automation create --from-file FILE."
        ),
    )
    p.add_argument(
        "--notification-block",
        required=True,
        metavar="TYPE/NAME",
        help="the notification block, as its type slug and name (e.g. slack-webhook/team)",
    )
    p.add_argument("--output", default="-", help="file to write (default: standard output)")
    p.set_defaults(handler=_run_automation)


def _run_automation(args: argparse.Namespace) -> int:
    from prefect.blocks.core import Block

    from .flows.automations import automation_yaml

    if "/" not in args.notification_block:
        raise CliError(
            "--notification-block takes the block's type slug and name, e.g. slack-webhook/team"
        )
    block = Block.load(args.notification_block, _sync=True)
    text = automation_yaml(str(block._block_document_id))
    if args.output == "-":
        print(text, end="")
    else:
        with open(args.output, "w") as out:
            out.write(text)
        print(f"wrote {args.output}: prefect automation create --from-file {args.output}")
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
    _login_parser(sub)
    _sync_parser(sub)
    _register_parser(sub)
    _automation_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if not _is_user_error(exc):
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"prefect-dintero {args.command}: error: {message}", file=sys.stderr)
        return 2


def _is_user_error(exc: BaseException) -> bool:
    """Mistakes a user can fix: bad input, bad credentials, a missing block, a failed sync."""
    from .errors import DinteroError

    if isinstance(exc, (CliError, DinteroError, ValueError, EOFError)):
        return True
    name = type(exc).__name__
    return name in {"ObjectNotFound", "PrefectHTTPStatusError"}


if __name__ == "__main__":
    sys.exit(main())
