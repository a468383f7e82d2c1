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


def _postgres_url() -> str | None:
    return os.environ.get("DINTERO_TEST_POSTGRES_URL")


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The test PostgreSQL (.ci/postgres.sh starts one). Skipped only outside CI."""
    url = _postgres_url()
    problem = None
    if not url:
        problem = "DINTERO_TEST_POSTGRES_URL is not set (source .ci/postgres.sh to start one)"
    else:
        try:
            from sqlalchemy import create_engine, text

            engine = create_engine(url)
            with engine.connect() as conn:
                conn.execute(text("select 1"))
            engine.dispose()
        except Exception as exc:
            problem = f"PostgreSQL at {url} is not reachable: {exc}"
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"CI must test PostgreSQL: {problem}")
        pytest.skip(problem)
    return url


def _drop_dintero_tables(url: str) -> None:
    from sqlalchemy import create_engine, inspect, text

    engine = create_engine(url)
    with engine.begin() as conn:
        for name in inspect(conn).get_table_names():
            if name.startswith("dintero_"):
                conn.execute(text(f'DROP TABLE "{name}" CASCADE'))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def destination(request, tmp_path) -> str:
    """A fresh destination of each dialect: a SQLite file, or an emptied PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "dintero.db")
    url = request.getfixturevalue("postgres_url")
    _drop_dintero_tables(url)
    return url
