"""A dead holder never blocks an account for good: its heartbeat stops, and the next waiter
frees its slot once the heartbeat is older than the holder's lease and a margin.

The quick tests here run on the session's test server, with the heartbeat's age as the one
seam (Prefect's shortest lease is a minute). The proof with a real SIGKILL and a real next run,
on an ephemeral server and on ``prefect server start`` restarted in between, waits out that
minute on each: it is marked ``soak`` and runs in ``make bench`` (and by hand with
``pytest -m soak tests/test_dead_holder.py``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

import prefect_dintero.blocks.slots as slots
from prefect_dintero.blocks.slots import heartbeat_name, wait_for_slot

from ._servers import prefect_server_process


def _limit(name: str) -> None:
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))


def _active(name: str) -> int:
    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name(name).active_slots


def _kill_quietly(held: slots.HeldSlot) -> None:
    """What SIGKILL leaves: the lease stays, no renewal and no heartbeat any more."""
    held._stop.set()
    held._thread.join(5)
    slots._held.discard(held)


@pytest.mark.usefixtures("prefect_server")
def test_a_holder_beats_while_it_holds_and_clears_its_beat_when_it_frees():
    name = f"dintero-test-{uuid.uuid4().hex[:8]}"
    _limit(name)
    held = wait_for_slot(name, timeout=5, lease=60, renew_every=0.5)
    assert held is not None
    time.sleep(1.5)
    with get_client(sync_client=True) as client:
        beat = client.read_variable_by_name(heartbeat_name(name))
        assert beat is not None and beat.value["lease_id"] == str(held.lease_id)
        first = beat.updated
        time.sleep(1.0)
        assert client.read_variable_by_name(heartbeat_name(name)).updated > first  # renewed
    held.release()
    with get_client(sync_client=True) as client:
        assert client.read_variable_by_name(heartbeat_name(name)) is None
    assert _active(name) == 0


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.parametrize("server_knows_the_lease", [True, False])
def test_a_waiter_frees_a_dead_holders_slot_and_takes_it(monkeypatch, server_knows_the_lease):
    """A holder that stopped beating (killed) for longer than its lease and a margin: the
    waiter frees its slot (by its lease when the server still knows it, so the server's
    repossessor cannot free it again; by the limit's name when the server forgot its leases,
    as a restarted or ephemeral one does), then takes it."""
    name = f"dintero-test-{uuid.uuid4().hex[:8]}"
    _limit(name)
    dead = wait_for_slot(name, timeout=5, lease=60)
    time.sleep(0.5)  # its first beat
    _kill_quietly(dead)
    if not server_knows_the_lease:  # as after a restart: the lease is gone, the slot is not
        with get_client(sync_client=True) as client:
            client.update_variable(
                slots.VariableUpdate(
                    name=heartbeat_name(name),
                    value={"lease_id": str(uuid.uuid4()), "lease": 60},
                )
            )
    assert _active(name) == 1
    real_read = slots._read_beat

    def an_hour_later(client, limit_name):  # the one seam: the beat's age
        value, age = real_read(client, limit_name)
        return value, None if age is None else age + 3600

    monkeypatch.setattr(slots, "_read_beat", an_hour_later)
    monkeypatch.setattr(slots, "CLAIM_SETTLE_SECONDS", 0.1)
    started = time.monotonic()
    held = wait_for_slot(name, timeout=30, lease=60)
    assert held is not None and time.monotonic() - started < 10
    assert _active(name) == 1  # the dead slot freed, this one taken: one, not two or zero
    held.release()
    assert _active(name) == 0


@pytest.mark.usefixtures("prefect_server")
def test_a_live_holder_is_never_freed_and_no_beat_waits_out_a_lease(monkeypatch):
    monkeypatch.setattr(slots, "CLAIM_SETTLE_SECONDS", 0.1)
    name = f"dintero-test-{uuid.uuid4().hex[:8]}"
    _limit(name)
    live = wait_for_slot(name, timeout=5, lease=60, renew_every=0.5)
    time.sleep(0.5)
    with get_client(sync_client=True) as client:
        assert not slots._free_if_dead(client, name, 60, waited=3600)  # it beats
        live.release()
        assert slots._free_if_dead(client, name, 60, waited=10) is False  # nothing held
        # A holder that never beat (killed before its first beat): only a waiter that has
        # itself waited past the lease and its margin frees it.
        dead = wait_for_slot(name, timeout=5, lease=60, renew=False)
        slots._held.discard(dead)
        assert slots._free_if_dead(client, name, 60, waited=30) is False
        assert _active(name) == 1
    with get_client(sync_client=True) as client:
        assert slots._free_if_dead(client, name, 60, waited=67)
    assert _active(name) == 0


# -- the proof: SIGKILL, then the next run, on each kind of server this machine can run ---------

HOLD_THEN_SYNC = textwrap.dedent(
    """
    import sys, time
    from pydantic import SecretStr
    import prefect_dintero.flows.sync as sync_flow
    from prefect_dintero import DinteroCredentials
    from prefect_dintero.flows import dintero_sync

    # Prefect's shortest lease, so the proof waits a minute rather than five.
    sync_flow.ACCOUNT_SLOT_LEASE = 60.0
    sync_flow.ACCOUNT_SLOT_RENEW_SECONDS = 10.0
    api, client_id, secret, block, destination = sys.argv[1:6]
    DinteroCredentials(
        account_id="T12345678", client_id=client_id, client_secret=SecretStr(secret),
        api_url=api, checkout_url=api,
    ).save(block, overwrite=True)
    started = time.monotonic()
    dintero_sync(block, streams=["transactions"], destination=destination, page_size=10,
                 full_refresh=True, timeout_minutes=5)
    print(f"SYNCED in {time.monotonic() - started:.1f} s", flush=True)
    """
)


def _run_then_kill(env: dict, args: list[str], emu) -> None:
    """Start a sync, SIGKILL it while it holds the account's slot and syncs."""
    before = emu.stats()["requests"].get("transactions", {})
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD_THEN_SYNC, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 120
    while sum(emu.stats()["requests"].get("transactions", {}).values()) < sum(before.values()) + 5:
        assert child.poll() is None and time.monotonic() < deadline, child.stdout.read()[-3000:]
        time.sleep(0.2)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()


def _next_run(env: dict, args: list[str]) -> float:
    out = subprocess.run(
        [sys.executable, "-c", HOLD_THEN_SYNC, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert "SYNCED" in out.stdout, (out.stdout + out.stderr)[-4000:]
    return float(out.stdout.split("SYNCED in ")[1].split(" s")[0])


@pytest.mark.soak
@pytest.mark.parametrize("server", ["ephemeral", "prefect server start, restarted"])
def test_sigkill_then_the_next_run_takes_the_account_within_its_lease(
    dintero_emulator_factory, tmp_path: Path, server, evidence
):
    emu = dintero_emulator_factory(transactions=3000)
    emu.set_faults({"route": "transactions", "probability": 1.0, "latency": 0.2})
    config = emu.config
    block = f"dintero-{uuid.uuid4().hex[:6]}"
    args = [emu.url, config.client_id, config.client_secret, block, str(tmp_path / "d.db")]
    if server == "ephemeral":
        env = {
            **os.environ,
            "PREFECT_HOME": str(tmp_path / "home"),
            "PREFECT_SERVER_ALLOW_EPHEMERAL_MODE": "true",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }
        for key in ("PREFECT_API_URL", "PREFECT_TEST_MODE"):
            env.pop(key, None)
        _run_then_kill(env, args, emu)
        emu.clear_faults()
        seconds = _next_run(env, args)
    else:
        with prefect_server_process(tmp_path) as env:
            _run_then_kill(env, args, emu)
        emu.clear_faults()
        with prefect_server_process(tmp_path) as env:  # the same home: a restart
            seconds = _next_run(env, args)
    # The slot's lease is 60 s; the next run waited about that (plus the margin and a poll),
    # never for good.
    evidence.note(f"dead holder · {server}: the next run synced in {seconds:.0f} s")
    assert seconds < 60 + 6 + 30 + 60
