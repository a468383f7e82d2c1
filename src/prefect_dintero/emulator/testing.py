"""pytest fixtures for testing your own flows against the emulator.

Opt in from your ``conftest.py`` (it is not loaded into every pytest run of every project that
installs the package)::

    pytest_plugins = ["prefect_dintero.emulator.testing"]

then::

    def test_my_flow(dintero_emulator):
        creds = DinteroCredentials(**dintero_emulator.credential_fields())
        ...
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from .config import EmulatorConfig
from .server import EmulatorServer


@pytest.fixture
def dintero_emulator_factory() -> Iterator[Callable[..., EmulatorServer]]:
    """Start emulators with your own :class:`EmulatorConfig` fields; all stop after the test."""
    started: list[EmulatorServer] = []

    def start(config: EmulatorConfig | None = None, **fields) -> EmulatorServer:
        server = EmulatorServer(config or EmulatorConfig(**fields)).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def dintero_emulator(dintero_emulator_factory) -> EmulatorServer:
    """A running emulator with the default configuration (account ``T12345678``)."""
    return dintero_emulator_factory()
