"""prefect.yaml is real: deploy it to a Prefect server and let a process worker run a sync."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from prefect_dintero.emulator import EmulatorConfig, running_emulator

from ._servers import PREFECT, prefect_server_process
from ._servers import run as run_command

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def prefect_server(tmp_path):
    """A real `prefect server start` on loopback, with its own home and database."""
    with prefect_server_process(tmp_path) as env:
        yield env


@pytest.fixture(scope="module")
def installed_python() -> Iterator[str]:
    """A Python with prefect-dintero installed as a user installs it (a wheel, not the editable
    source tree), its dependencies borrowed from .venv (a path line: .venv's editable finder
    is not loaded): what `prefect deploy` and a worker started in the clone must import.

    Outside pytest's temporary folders, which the secret scan reads: the installed package is
    the source itself, and holds the emulator's published default secret."""
    import shutil
    import sysconfig
    import tempfile

    where = Path(tempfile.mkdtemp(prefix="prefect-dintero-installed-"))
    try:
        yield _install_wheel(where, sysconfig.get_paths()["purelib"])
    finally:
        shutil.rmtree(where, ignore_errors=True)


def _install_wheel(where: Path, dependencies: str) -> str:
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(where / "dist"), str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    venv = where / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    [wheel] = (where / "dist").glob("prefect_dintero-*.whl")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps",
         str(wheel)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    Path(site, "zz-dependencies.pth").write_text(dependencies + "\n")
    return python


def fast_worker(env: dict[str, str]) -> dict[str, str]:
    """A worker that asks for runs every 2 s instead of Prefect's 10 (CI's time budget)."""
    return {**env, "PREFECT_WORKER_QUERY_SECONDS": "2"}


def run(cmd, env, timeout=180, cwd=ROOT) -> str:
    return run_command(cmd, env, timeout=timeout, cwd=cwd)


@pytest.mark.slow
def test_deploy_all_and_a_worker_runs_the_backfill(prefect_server, installed_python, tmp_path):
    """From the clone's root, with the package installed from its wheel (not editable): the
    root holds no prefect_dintero/ folder to hide the installed package."""
    env = prefect_server
    prefect_cli = [installed_python, "-m", "prefect"]
    assert not (ROOT / "prefect_dintero").exists()
    with running_emulator(
        EmulatorConfig(
            transactions=60, sessions=20, settlements=10, customers=15, transfers_per_destination=5
        )
    ) as emu:
        # The block the deployments name, pointing at the emulator.
        save = (
            "from pydantic import SecretStr\n"
            "from prefect_dintero import DinteroCredentials\n"
            f"DinteroCredentials(account_id='T12345678', client_id='{emu.config.client_id}', "
            f"client_secret=SecretStr('{emu.config.client_secret}'), api_url='{emu.url}', "
            f"checkout_url='{emu.url}').save('dintero', overwrite=True)\n"
        )
        run([sys.executable, "-c", save], env)
        run([*prefect_cli, "work-pool", "create", "dintero-process", "--type", "process"], env)
        out = run([*prefect_cli, "--no-prompt", "deploy", "--all"], env)
        for name in (
            "dintero-sync/hourly",
            "dintero-sync/reconcile",
            "dintero-sync/backfill",
            "dintero-login/manual",
            "dintero-sync-accounts/nightly",
        ):
            assert name in out, out
        database = tmp_path / "backfill.db"
        params = json.dumps({"destination": str(database), "payout_destinations": ["PD-main"]})
        out = run(
            [*prefect_cli, "deployment", "run", "dintero-sync/backfill", "--params", params], env
        )
        worker = run(
            [*prefect_cli, "worker", "start", "--pool", "dintero-process", "--run-once"],
            env,
            timeout=300,
            cwd=tmp_path,
        )
        runs = httpx.post(f"{env['PREFECT_API_URL']}/flow_runs/filter", json={}).json()
        deployments = {
            d["id"]: d["name"]
            for d in httpx.post(f"{env['PREFECT_API_URL']}/deployments/filter", json={}).json()
        }
        by_deployment = {}
        for r in runs:
            by_deployment.setdefault(deployments.get(r["deployment_id"]), []).append(r)
        states = {r["name"]: r["state_type"] for r in by_deployment["backfill"]}
        assert list(states.values()) == ["COMPLETED"], (states, worker[-2000:])
        # The sync's dintero.sync.completed event triggered the downstream deployment.
        deadline = time.monotonic() + 60
        while "after-sync" not in by_deployment and time.monotonic() < deadline:
            time.sleep(1)
            runs = httpx.post(f"{env['PREFECT_API_URL']}/flow_runs/filter", json={}).json()
            for r in runs:
                if deployments.get(r["deployment_id"]) == "after-sync":
                    by_deployment["after-sync"] = [r]
        [triggered] = by_deployment["after-sync"]
        assert triggered["parameters"]["account_id"] == "T12345678"
        # It reads what the triggering run wrote: its file, its id, its counts.
        assert triggered["parameters"]["destination"] == f"sqlite:///{database}"
        assert triggered["parameters"]["sync_run_id"] == by_deployment["backfill"][0]["id"]
        assert int(triggered["parameters"]["inserted"]) > 0
        with sqlite3.connect(database) as conn:
            counts = {
                t: conn.execute(f"select count(*) from dintero_{t}").fetchone()[0]
                for t in (
                    "transactions",
                    "sessions",
                    "settlements",
                    "customers",
                    "payout_transfers",
                )
            }
        assert counts == {
            "transactions": 60,
            "sessions": 20,
            # The generated ones, and those of the payments' daily settlements.
            "settlements": len(emu.dump("settlements")),
            "customers": 15,
            "payout_transfers": len(emu.dump("payout_transfers", destination="PD-main")),
        }
        # The deployments carry what prefect.yaml says.
        deployments = httpx.post(f"{env['PREFECT_API_URL']}/deployments/filter", json={}).json()
        hourly = next(d for d in deployments if d["name"] == "hourly")
        assert hourly["entrypoint"] == "prefect_dintero.flows.sync.dintero_sync"
        # No pull step: not even one into the folder it was deployed from.
        assert all(not d["pull_steps"] for d in deployments), [d["pull_steps"] for d in deployments]
        assert hourly["schedules"][0]["schedule"]["timezone"] == "Europe/Oslo"
        assert hourly["global_concurrency_limit"]["limit"] == 1
        assert hourly["parameters"] == {
            "credentials_block": "dintero",
            "destination": "~/prefect-dintero/dintero.db",
            "personal_data": "keep",
        }
        reconcile = next(d for d in deployments if d["name"] == "reconcile")
        assert reconcile["parameters"]["reconcile_days"] == 35
        assert reconcile["parameters"]["personal_data"] == hourly["parameters"]["personal_data"]
        assert reconcile["schedules"][0]["schedule"]["cron"] == "15 3 * * *"
        assert reconcile["global_concurrency_limit"]["limit"] == 1


@pytest.mark.slow
def test_fan_out_to_deployments_shared_by_a_worker(prefect_server, tmp_path):
    """dintero-sync-accounts/nightly starts one dintero-sync/hourly run per account; a process
    worker picks up the fan-out and every account's run (workers on many machines would share
    them the same way)."""
    env = prefect_server
    accounts = ["T12345678", "T87654321"]
    config = EmulatorConfig(
        account_ids=accounts,
        transactions=30,
        sessions=10,
        settlements=6,
        customers=8,
        transfers_per_destination=4,
    )
    with running_emulator(config) as emu:
        save = "from pydantic import SecretStr\nfrom prefect_dintero import DinteroCredentials\n"
        for account in accounts:
            save += (
                f"DinteroCredentials(account_id='{account}', client_id='{emu.config.client_id}', "
                f"client_secret=SecretStr('{emu.config.client_secret}'), api_url='{emu.url}', "
                f"checkout_url='{emu.url}').save('merchant-{account.lower()}', overwrite=True)\n"
            )
        run([sys.executable, "-c", save], env)
        run([*PREFECT, "work-pool", "create", "dintero-process", "--type", "process"], env)
        run([*PREFECT, "--no-prompt", "deploy", "--all"], env)
        # The syncs' events would start after-sync runs for the same worker (tested in
        # test_deploy_all_and_a_worker_runs_the_backfill's file): paused here, for CI's time.
        api = env["PREFECT_API_URL"]
        after_sync = httpx.get(f"{api}/deployments/name/dintero-sync-summary/after-sync").json()
        httpx.patch(
            f"{api}/deployments/{after_sync['id']}", json={"paused": True}
        ).raise_for_status()
        # No destination given: each account's run writes where dintero-sync/hourly says,
        # ~/prefect-dintero/dintero.db (the worker's home is a folder of this test's).
        home = tmp_path / "home"
        home.mkdir()
        database = home / "prefect-dintero" / "dintero.db"
        params = {
            "accounts": [{"credentials_block": f"merchant-{a.lower()}"} for a in accounts],
            "mode": "deployments",
            "deployment_name": "dintero-sync/hourly",
            "streams": ["transactions", "settlements"],
        }
        run(
            [
                *PREFECT,
                "deployment",
                "run",
                "dintero-sync-accounts/nightly",
                "--params",
                json.dumps(params),
            ],
            env,
        )
        # A relative destination in a deployment run: the worker's working folder is temporary
        # (and deleted after the run), so it is written to ~/prefect-dintero.
        relative = {
            "credentials_block": "merchant-t12345678",
            "streams": ["settlements"],
            "destination": "relative.db",
        }
        run(
            [
                *PREFECT,
                "deployment",
                "run",
                "dintero-sync/hourly",
                "--params",
                json.dumps(relative),
            ],
            env,
        )
        worker = subprocess.Popen(
            [*PREFECT, "worker", "start", "--pool", "dintero-process", "--limit", "4"],
            env={**fast_worker(env), "HOME": str(home)},
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            deadline = time.monotonic() + 300
            states: dict = {}
            while time.monotonic() < deadline:
                runs = httpx.post(f"{env['PREFECT_API_URL']}/flow_runs/filter", json={}).json()
                # The syncs' events also trigger the after-sync deployment: not counted here.
                states = {
                    r["name"]: r["state_type"]
                    for r in runs
                    if not r["parameters"].get("account_id")
                }
                if len(states) == 4 and all(
                    s in ("COMPLETED", "FAILED", "CRASHED") for s in states.values()
                ):
                    break
                time.sleep(2)
        finally:
            worker.terminate()
            try:
                output, _ = worker.communicate(timeout=60)
            except subprocess.TimeoutExpired:  # a loaded machine: the states are what count
                worker.kill()
                output, _ = worker.communicate()
        assert sorted(states.values()) == ["COMPLETED"] * 4, (states, output[-4000:])
        with sqlite3.connect(database) as conn:
            per_account = dict(
                conn.execute(
                    "select account_id, count(*) from dintero_transactions group by account_id"
                ).fetchall()
            )
        assert per_account == {a: 30 for a in accounts}
        with sqlite3.connect(home / "prefect-dintero" / "relative.db") as conn:
            settlements = conn.execute("select count(*) from dintero_settlements").fetchone()
        assert settlements == (len(emu.dump("settlements", account_id="T12345678")),)
        assert "is written to" in output and "relative.db" in output
