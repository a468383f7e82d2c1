"""Slots of Prefect global concurrency limits (``blocks/slots.py``) on the Prefect test server:
the account slot of every sync run and the renewal slot of every shared token."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

from prefect_dintero.blocks.slots import HeldSlot, wait_for_slot

pytestmark = pytest.mark.usefixtures("prefect_server")


def try_slot(limit_name: str, lease: float, renew_every: float | None = None) -> HeldSlot | None:
    """A slot of ``limit_name`` if one is free now, else None (one request)."""
    return wait_for_slot(limit_name, timeout=0, lease=lease, renew_every=renew_every)


@contextmanager
def slot(limit_name: str, timeout: float, lease: float) -> Iterator[HeldSlot]:
    """Hold a slot, waiting for it at most ``timeout`` seconds, as the sync flow does."""
    held = wait_for_slot(limit_name, timeout=timeout, lease=lease)
    if held is None:
        raise TimeoutError(f"the {limit_name!r} slot stayed taken for {timeout:.0f} s")
    with held:
        yield held


def new_limit(limit: int = 1) -> str:
    name = f"test-slot-{uuid.uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=limit))
    return name


def active_slots(name: str) -> int:
    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name(name).active_slots


def wait_until(condition, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_slot_is_held_and_renewed_until_it_is_freed():
    name = new_limit()
    held = try_slot(name, lease=60, renew_every=0.1)
    assert held is not None
    try:
        assert active_slots(name) == 1
        assert try_slot(name, lease=60) is None  # taken: no waiting for the server's Retry-After
        wait_until(lambda: held.renewals >= 3)  # each renewal a 204 from the server
        assert active_slots(name) == 1
    finally:
        held.release()
    held.release()  # a second release frees nothing more, and leaves the client alone
    assert active_slots(name) == 0
    assert not held._thread.is_alive()
    again = try_slot(name, lease=60)
    assert again is not None
    again.release()


def test_the_slot_context_waits_for_the_holder_and_times_out_clearly():
    name = new_limit()
    with slot(name, timeout=5, lease=60):
        started = time.monotonic()
        with (
            pytest.raises(TimeoutError, match=f"'{name}' slot stayed taken for 1 s"),
            slot(name, timeout=1, lease=60),
        ):
            pass
        assert 1 <= time.monotonic() - started < 5
    with slot(name, timeout=1, lease=60):
        assert active_slots(name) == 1
    assert active_slots(name) == 0


def test_a_lease_freed_behind_the_holders_back_is_warned_about_not_renewed(caplog):
    name = new_limit()
    held = try_slot(name, lease=60, renew_every=0.1)
    assert held is not None
    with get_client(sync_client=True) as client:  # someone frees it by hand
        client.release_concurrency_slots_with_lease(held.lease_id)
    with caplog.at_level(logging.WARNING, logger="prefect_dintero.blocks.slots"):
        wait_until(lambda: not held._thread.is_alive())
        held.release()  # the server no longer knows the lease: nothing to raise
    assert f"the lease on a slot of the {name!r} concurrency limit may be gone" in caplog.text
    assert "Prefect no longer knows it" in caplog.text
    assert not held.holds() and held.lost_reason() is not None
    assert active_slots(name) == 0


def test_a_release_that_fails_is_logged_and_the_lease_frees_the_slot(caplog, monkeypatch):
    name = new_limit()
    held = try_slot(name, lease=60)
    assert held is not None

    def unreachable(lease_id):
        raise httpx.ConnectError("the Prefect server is restarting")

    monkeypatch.setattr(held._client, "release_concurrency_slots_with_lease", unreachable)
    with caplog.at_level(logging.WARNING, logger="prefect_dintero.blocks.slots"):
        held.release()
    assert f"could not free a slot of the {name!r} concurrency limit (ConnectError)" in caplog.text
    assert "within 60 s" in caplog.text
    assert active_slots(name) == 1  # until the lease runs out
    with get_client(sync_client=True) as client:
        client.release_concurrency_slots_with_lease(held.lease_id)


def test_a_limit_that_does_not_exist_holds_no_one_back():
    name = f"test-slot-missing-{uuid.uuid4().hex[:8]}"
    # One ask each, with a grace for a busy test server's 503 (its database locked a moment).
    first, second = (
        wait_for_slot(name, timeout=0, lease=60, error_grace=15),
        wait_for_slot(name, timeout=0, lease=60, error_grace=15),
    )
    assert first is not None and second is not None
    first.release()
    second.release()
