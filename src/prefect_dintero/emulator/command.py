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
from dataclasses import Field, fields

#: Appended to an option's help: argparse fills in its default.
DEFAULT = " (default: %(default)s)"


class UsageError(Exception):
    """A mistake in the command line: printed as one line, exit status 2, no traceback."""


def config_options() -> list[Field]:
    """The :class:`~.config.EmulatorConfig` fields the command sets (``config.option``)."""
    from .config import EmulatorConfig

    return [f for f in fields(EmulatorConfig) if "help" in f.metadata]


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``emulator`` command to a parent parser's subcommands."""
    from .config import DEFAULT_ACCOUNT_ID, EmulatorConfig

    defaults = EmulatorConfig()
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
    for flag, dest, metavar, what, default in (
        ("--account-id", "account_ids", "AID", "merchant account to serve", DEFAULT_ACCOUNT_ID),
        ("--redirect-uri", "redirect_uris", "URI", "registered OIDC redirect URI", None),
        ("--payout-destination", "payout_destinations", "ID", "payout destination id", None),
    ):
        default = default or " and ".join(getattr(defaults, dest))
        help = f"{what}; repeatable (default: {default})"
        p.add_argument(flag, action="append", dest=dest, metavar=metavar, help=help)
    p.add_argument(
        "--latency-ms", type=float, default=0.0, help="milliseconds added to every data page"
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
        "--refuse-filter",
        dest="refused_transaction_filters",
        action="append",
        default=[],
        choices=("captured_at", "refunded_at"),
        help="answer GET /v1/transactions with 400 when this filter (.gte/.lte) is used "
        "(documented, but subject to change); repeat for both",
    )
    for option in config_options():
        meta, default = dict(option.metadata), getattr(defaults, option.name)
        help, flag, quiet = meta.pop("help"), meta.pop("flag", None), meta.pop("silent", False)
        if isinstance(default, bool):
            meta["action"] = "store_false" if default else "store_true"
        elif default is not None and "choices" not in meta:
            meta.setdefault("type", type(default))
        said = "" if "action" in meta or default is None else DEFAULT
        (silent if quiet else p).add_argument(
            flag or "--" + option.name.replace("_", "-"),
            dest=option.name,
            default=default,
            help=help + said,
            **meta,
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
        **{option.name: getattr(args, option.name) for option in config_options()},
        refused_transaction_filters=tuple(args.refused_transaction_filters),
        page_latency=args.latency_ms / 1000,
    )
    for listed in ("account_ids", "redirect_uris", "payout_destinations"):
        if getattr(args, listed):
            setattr(config, listed, getattr(args, listed))
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
