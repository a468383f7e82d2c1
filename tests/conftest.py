"""Test settings: Prefect never touches ~/.prefect, never phones home, starts one server at most."""

from __future__ import annotations

import os
import tempfile

# Set before anything imports prefect: its settings are read once, at import.
_PREFECT_HOME = tempfile.mkdtemp(prefix="prefect-dintero-tests-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ["PREFECT_TEST_MODE"] = "1"
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def prefect_home() -> str:
    """The temporary PREFECT_HOME every test in this session shares."""
    return _PREFECT_HOME


@pytest.fixture(scope="session")
def prefect_server():
    """The one Prefect test server of the session, started only by the tests that need it."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield
