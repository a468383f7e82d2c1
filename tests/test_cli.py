"""The prefect-dintero command: help, one-line errors, and each subcommand against a server."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from prefect_dintero.emulator import EmulatorConfig, running_emulator

CLI = [sys.executable, "-m", "prefect_dintero.cli"]


@pytest.mark.parametrize("command", ["emulator", "demo", "login", "sync"])
def test_every_subcommand_has_complete_help(command):
    out = subprocess.run(
        [*CLI, command, "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert out.startswith("usage: prefect-dintero " + command) and len(out.splitlines()) > 3


def test_top_level_help_lists_the_subcommands():
    out = subprocess.run([*CLI, "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("emulator", "demo", "login", "sync"):
        assert command in out


@pytest.fixture
def server_env(prefect_server):
    from prefect.settings import PREFECT_API_URL

    return {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}


def cli(env, *args, stdin=None):
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, env=env, input=stdin, timeout=180
    )


def test_user_mistakes_are_one_line_and_exit_2(server_env, tmp_path):
    for args in (
        ["sync", "--credentials-block", "no-such-block", "--destination", str(tmp_path / "x.db")],
        ["sync", "--credentials-block", "x", "--stream", "refunds"],
        ["sync", "--credentials-block", "x", "--destination", "postgresql://u:secret@127.0.0.1/db"],
    ):
        result = cli(server_env, *args)
        assert result.returncode == 2, result.stderr[-2000:]
        error_lines = [
            line
            for line in result.stderr.splitlines()
            if line.startswith("prefect-dintero sync: error:")
        ]
        assert len(error_lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]


def test_register_login_and_sync(server_env, tmp_path):
    # The block types are registered with Prefect's own command, from the blocks' module.
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("prefect")),
            "block",
            "register",
            "-m",
            "prefect_dintero.blocks",
        ],
        env=server_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    for name in ("Dintero Credentials", "Dintero OIDC Session", "Dintero Service Token"):
        assert name in result.stdout, result.stdout[-2000:]
    with running_emulator(
        EmulatorConfig(
            transactions=25, sessions=5, settlements=3, customers=4, transfers_per_destination=2
        )
    ) as emu:
        save = (
            "from pydantic import SecretStr\nfrom prefect_dintero import DinteroCredentials\n"
            f"DinteroCredentials(account_id='T12345678', client_id='{emu.config.client_id}', "
            f"client_secret=SecretStr('{emu.config.client_secret}'), api_url='{emu.url}', "
            f"checkout_url='{emu.url}', oidc_authorize_url='{emu.url}/oidc/authorize', "
            f"redirect_uri='{emu.config.redirect_uris[0]}').save('cli-creds', overwrite=True)\n"
        )
        subprocess.run([sys.executable, "-c", save], env=server_env, check=True, timeout=120)
        # Interactive: the command prints the link; the "user" pastes back a redirect from a
        # different login attempt (wrong state), which is refused in one line.
        wrong = cli(
            server_env,
            "login",
            "--credentials-block",
            "cli-creds",
            "--session-block",
            "cli-session",
            stdin=emu.login(state="other") + "\n",
        )
        assert (
            wrong.returncode == 2 and "state" in wrong.stderr and "/oidc/authorize?" in wrong.stdout
        )
        ok = cli(
            server_env,
            "login",
            "--credentials-block",
            "cli-creds",
            "--session-block",
            "cli-session",
            "--code-stdin",
            stdin=emu.authorization_code() + "\n",
        )
        assert ok.returncode == 0 and "Ada Lovelace" in ok.stdout, ok.stderr[-2000:]
        on_command_line = cli(
            server_env,
            "login",
            "--credentials-block",
            "cli-creds",
            "--session-block",
            "cli-session",
            "--code",
            "a-code-in-shell-history",
        )
        assert on_command_line.returncode == 2 and "--code-stdin" in on_command_line.stderr
        database = tmp_path / "cli.db"
        synced = cli(
            server_env,
            "sync",
            "--credentials-block",
            "cli-creds",
            "--session-block",
            "cli-session",
            "--stream",
            "transactions",
            "--destination",
            str(database),
        )
        assert (
            synced.returncode == 0
            and "transactions: 25 rows: 25 new, 0 updated, 0 unchanged" in synced.stdout
        ), synced.stderr[-2000:]
    with sqlite3.connect(database) as conn:
        assert conn.execute("select count(*) from dintero_transactions").fetchone()[0] == 25


def test_init_writes_the_deployments_for_a_pip_user(tmp_path, monkeypatch, capsys):
    """`prefect-dintero init` writes the package's prefect.yaml (the one the clone's root links
    to), and never over one already there unless told."""
    from pathlib import Path

    from prefect_dintero.cli import main

    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(tmp_path)
    assert main(["init"]) == 0
    assert (tmp_path / "prefect.yaml").read_text() == (root / "prefect.yaml").read_text()
    assert "prefect --no-prompt deploy --all" in capsys.readouterr().out
    assert main(["init"]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert main(["init", "--force"]) == 0
