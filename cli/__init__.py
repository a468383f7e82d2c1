"""The ``prefect-dintero`` command line: the Prefect side of the package (it saves blocks and runs
flows); the emulator's own command is core (``prefect_dintero.emulator.command``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from prefect_dintero._version import __version__
from prefect_dintero.cli import demo
from prefect_dintero.emulator import command as emulator_cli
from prefect_dintero.sync.options import SYNC_PARAMETERS, Parameter, SyncRequest


class CliError(Exception):
    """A user mistake: printed as one line, exit status 2, no traceback."""


def _login_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "login",
        help="log a user in and save the session block",
        description=(
            "Print the identity provider's login link for the API client, read back the URL "
            "you were redirected to, check its state, exchange the code with the "
            "dintero-login flow, and save a Dintero OIDC Session block."
        ),
    )
    p.add_argument("--credentials-block", help="Dintero Credentials block name")
    p.add_argument("--session-block", help="name to save the session block under")
    p.add_argument(
        "--resume",
        metavar="FLOW_RUN_ID",
        help="finish a login paused in the Prefect UI (a dintero-login run waiting for the "
        "redirect URL) from this terminal: prints its login link, reads the URL you were "
        "redirected to, and resumes the run with it",
    )
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

    from prefect_dintero.auth.oidc_login import (
        build_authorize_url,
        new_state,
        parse_authorization_response,
    )
    from prefect_dintero.blocks import DinteroCredentials
    from prefect_dintero.blocks.prefect_api import load_block
    from prefect_dintero.flows import dintero_login

    if args.code is not None:
        raise CliError(
            "--code puts the code in your shell history and process list: pipe it instead, "
            "e.g. `prefect-dintero login ... --code-stdin < code.txt`, or answer the prompt"
        )
    if args.resume:
        return _resume_login(args.resume, args.code_stdin)
    if not args.credentials_block or not args.session_block:
        raise CliError("login needs --credentials-block and --session-block (or --resume RUN_ID)")
    creds = load_block(DinteroCredentials, args.credentials_block)
    if args.code_stdin:
        code = parse_authorization_response(sys.stdin.readline())
    else:
        state = new_state()
        url = build_authorize_url(
            creds.oidc_authorize_url, creds.client_id, creds.redirect_uri, state
        )
        print(f"Open this link, log in, and paste the URL you are redirected to:\n\n  {url}\n")
        pasted = input("Redirect URL: ")
        code = parse_authorization_response(pasted, expected_state=state)
    facts = dintero_login(
        args.credentials_block, args.session_block, authorization_response=SecretStr(code)
    )
    print(
        f"Logged in {facts['user_name'] or facts['user_sub']}; session saved as block "
        f"{args.session_block!r}, valid until {facts['expires_at']}"
    )
    return 0


def _resume_login(run_id: str, from_stdin: bool, wait_seconds: float = 120.0) -> int:
    """Finish a ``dintero-login`` run paused for its redirect URL, from the terminal."""
    import re
    import time
    import uuid

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.flow_runs import resume_flow_run

    try:
        flow_run_id = uuid.UUID(run_id)
    except ValueError:
        raise CliError(f"--resume takes a flow run id (a UUID), not {run_id!r}") from None
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
        if run.state is None or not run.state.is_paused():
            now = run.state.name if run.state else "no state"
            raise CliError(f"flow run {run_id} is not waiting for a login ({now})")
        artifacts = client.read_artifacts(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    links = [
        m.group(1) for a in artifacts if (m := re.search(r"\((https?://[^)]+)\)", str(a.data)))
    ]
    if not from_stdin:
        if links:
            print("Open this link, log in, and paste the URL you are redirected to:")
            print(f"\n  {links[0]}\n")
        pasted = input("Redirect URL: ")
    else:
        pasted = sys.stdin.readline()
    resume_flow_run(flow_run_id, run_input={"authorization_response": pasted.strip()})
    print(f"Resumed flow run {run_id}; it exchanges the code now.")
    deadline = time.monotonic() + wait_seconds
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            final = client.read_flow_run(flow_run_id).state
            if final is not None and final.is_final():
                if not final.is_completed():
                    raise CliError(f"the login run ended {final.name}: {final.message or ''}")
                print("Logged in: the session block is saved.")
                return 0
            time.sleep(1)
    print("The run has not finished yet: follow it in the Prefect UI.")
    return 0


#: How the CLI reads a sync parameter that is not a plain string: lists are repeated options
#: named in the singular, flags take no value.
_REPEATED = {"streams": ("--stream", "NAME"), "payout_destinations": ("--payout-destination", "ID")}
_TYPES: dict[str, Any] = {
    "lookback_hours": float,
    "reconcile_days": float,
    "page_size": int,
    "max_pages": int,
    "start_date": datetime.fromisoformat,
}


def _add_sync_option(p: argparse.ArgumentParser, parameter: Parameter) -> None:
    name, default = parameter.name, parameter.default
    help = parameter.help + (f" (default: {default})" if default not in (None, False) else "")
    if name in _REPEATED:
        flag, metavar = _REPEATED[name]
        p.add_argument(
            flag, action="append", dest=name, metavar=metavar, help=help + "; repeatable"
        )
    elif isinstance(default, bool):
        p.add_argument("--" + name.replace("_", "-"), action="store_true", help=help)
    else:
        p.add_argument(
            "--" + name.replace("_", "-"), type=_TYPES.get(name, str), default=default, help=help
        )


def _sync_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sync",
        help="run the dintero-sync flow",
        description="Sync Dintero streams of one account into SQLite, PostgreSQL or DuckDB.",
    )
    p.add_argument("--credentials-block", required=True, help="Dintero Credentials block name")
    p.add_argument("--session-block", help="Dintero OIDC Session block name (sync as the user)")
    for parameter in SYNC_PARAMETERS:
        _add_sync_option(p, parameter)
    p.set_defaults(handler=_run_sync)


def _run_sync(args: argparse.Namespace) -> int:
    from prefect_dintero.blocks import DinteroCredentials
    from prefect_dintero.blocks.prefect_api import load_block
    from prefect_dintero.flows import dintero_sync

    # Mistakes are reported before a flow run starts (and logs a traceback of its own).
    request = SyncRequest.build(**{p.name: getattr(args, p.name) for p in SYNC_PARAMETERS})
    load_block(DinteroCredentials, args.credentials_block)

    results = dintero_sync(
        args.credentials_block, session_block=args.session_block, **request.flow_parameters()
    )
    for r in results:
        if r.get("skipped"):
            print(f"{r['stream']}: skipped: {r['skipped']}")
            continue
        print(
            f"{r['stream']}: {r['fetched']} rows: {r['inserted']} new, {r['updated']} updated, "
            f"{r['unchanged']} unchanged"
        )
    return 0


def _init_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "init",
        help="write the package's deployments (prefect.yaml) into this folder",
        description=(
            "Write prefect.yaml (the scheduled syncs, the nightly reconcile, the UI login, the "
            "backfill, the fan-out to many accounts) into the current folder, for "
            "`prefect --no-prompt deploy --all`: the flows come from the installed package, "
            "so no source is needed."
        ),
    )
    p.add_argument("--force", action="store_true", help="overwrite a prefect.yaml already here")
    p.set_defaults(handler=_run_init)


def _run_init(args: argparse.Namespace) -> int:
    from importlib.resources import files
    from pathlib import Path

    target = Path("prefect.yaml")
    if target.exists() and not args.force:
        raise CliError(f"{target.resolve()} exists; pass --force to overwrite it")
    target.write_text(files("prefect_dintero").joinpath("prefect.yaml").read_text())
    print(
        f"Wrote {target.resolve()}. Next:\n"
        "  prefect work-pool create dintero-process --type process\n"
        "  prefect --no-prompt deploy --all\n"
        "  prefect worker start --pool dintero-process"
    )
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

    from prefect_dintero.blocks.prefect_api import load_block
    from prefect_dintero.flows.automations import automation_yaml

    if "/" not in args.notification_block:
        raise CliError(
            "--notification-block takes the block's type slug and name, e.g. slack-webhook/team"
        )
    block = load_block(Block, args.notification_block)
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
    emulator_cli.add_parser(sub)
    demo.add_parser(sub)
    _init_parser(sub)
    _login_parser(sub)
    _sync_parser(sub)
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
    from prefect_dintero.errors import DinteroError

    if isinstance(exc, (CliError, emulator_cli.UsageError, DinteroError, ValueError, EOFError)):
        return True
    name = type(exc).__name__
    return name in {"ObjectNotFound", "PrefectHTTPStatusError"}


if __name__ == "__main__":
    sys.exit(main())
