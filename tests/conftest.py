"""Test settings: Prefect never touches ~/.prefect, never phones home, starts one server at most."""

from __future__ import annotations

import os
import sys
import tempfile

# Set before anything imports prefect: its settings are read once, at import.
_PREFECT_HOME = tempfile.mkdtemp(prefix="prefect-dintero-tests-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ["PREFECT_TEST_MODE"] = "1"
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")

# The emulator's fixtures, opted in as a user's conftest would (the package loads no pytest
# plugin by itself).
pytest_plugins = ["prefect_dintero.emulator.testing"]

import base64  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from prefect_dintero.emulator.server import EmulatorServer  # noqa: E402


class Evidence:
    """What the whole session leaves behind, for the final secret scan and the summary.

    Every in-process emulator hands over its client secret and everything it issued when it
    stops; tests register the places they wrote to (Prefect databases, logs, sync databases) and
    the error texts users would see; pytest's captured output of every test is added as text.
    """

    def __init__(self) -> None:
        #: Every secret to look for, and what it is ("access token", "spent code", ...).
        self.secrets: dict[str, str] = {}
        self.emulators = 0
        self.paths: set[Path] = set()
        self.texts: list[str] = []
        self.notes: list[str] = []

    def remember_emulator(self, server: EmulatorServer) -> None:
        self.emulators += 1
        self.secrets[server.config.client_secret] = "client secret"
        pair = f"{server.config.client_id}:{server.config.client_secret}".encode()
        self.secrets[base64.b64encode(pair).decode()] = "Basic credentials"
        state = server.state
        with state.lock:
            for token in state.issued["access_tokens"]:
                self.secrets[token] = "access token"
            for token in state.issued["refresh_tokens"]:
                self.secrets[token] = "refresh token"
            for code in state.issued["codes"]:
                self.secrets[code] = "spent code" if state.codes[code].used else "unused code"

    def scan_path(self, path: str | Path) -> None:
        self.paths.add(Path(path))

    def text(self, text: str) -> None:
        self.texts.append(text)

    def note(self, line: str) -> None:
        """A figure or fact worth reading in the test summary (fault counts, kills, ...)."""
        self.notes.append(line)

    # ``make test`` runs the suite in two processes (pytest-xdist), then the secret scan on its
    # own: each process leaves what it saw in DINTERO_EVIDENCE_DIR, and the scan reads it all.

    def dump(self, directory: Path, name: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"{name}.json").write_text(
            json.dumps(
                {
                    "secrets": self.secrets,
                    "emulators": self.emulators,
                    "paths": sorted(str(p) for p in self.paths),
                    "texts": self.texts,
                    "notes": self.notes,
                }
            )
        )

    def load(self, directory: Path) -> None:
        for file in sorted(directory.glob("*.json")):
            data = json.loads(file.read_text())
            self.secrets.update(data["secrets"])
            self.emulators += data["emulators"]
            self.paths.update(Path(p) for p in data["paths"])
            self.texts.extend(data["texts"])
            self.notes.extend(data["notes"])


EVIDENCE = Evidence()
_EVIDENCE_DIR = os.environ.get("DINTERO_EVIDENCE_DIR")
_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
EVIDENCE.scan_path(_PREFECT_HOME)
_stop_emulator = EmulatorServer.stop


def _stop_and_remember(self: EmulatorServer) -> None:
    EVIDENCE.remember_emulator(self)
    _stop_emulator(self)


EmulatorServer.stop = _stop_and_remember  # type: ignore[method-assign]


@pytest.fixture(scope="session")
def evidence() -> Evidence:
    """The session's :class:`Evidence`."""
    return EVIDENCE


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files holding slow tests first, the rest in their order: pytest-xdist hands files to its
    processes in this order, so the longest start at once instead of ending the run alone. The
    secret scan (marked ``secret_scan``) always last: it reads what every other test left."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(
        key=lambda item: (
            item.get_closest_marker("secret_scan") is not None,
            item.path not in slow_files,
        )
    )


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    for _, content in report.sections:
        EVIDENCE.text(content)
    if report.failed:
        EVIDENCE.text(report.longreprtext)


def pytest_sessionstart(session: pytest.Session) -> None:
    # The secret scan run on its own: take in what the parallel run's processes left.
    if _EVIDENCE_DIR and not _WORKER and Path(_EVIDENCE_DIR).is_dir():
        args = [str(a) for a in session.config.args]
        if args and all("test_secret_scan" in a for a in args):
            EVIDENCE.load(Path(_EVIDENCE_DIR))


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _EVIDENCE_DIR and _WORKER:
        # This process's temporary files (sync databases, server logs) are scanned too.
        EVIDENCE.scan_path(session.config._tmp_path_factory.getbasetemp())
        EVIDENCE.dump(Path(_EVIDENCE_DIR), _WORKER)


def pytest_terminal_summary(terminalreporter) -> None:
    if EVIDENCE.notes:
        terminalreporter.section("prefect-dintero evidence")
        for line in EVIDENCE.notes:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def prefect_home() -> str:
    """The temporary PREFECT_HOME every test in this session shares."""
    return _PREFECT_HOME


@pytest.fixture(scope="session")
def prefect_server():
    """The one Prefect test server of the session, started only by the tests that need it."""
    import prefect.settings
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        url = prefect.settings.PREFECT_SERVER_DATABASE_CONNECTION_URL.value()
        EVIDENCE.scan_path(Path(str(url).split(":///", 1)[1]).parent)
        yield


@pytest.fixture(scope="session")
def prefect_api_proxy(prefect_server):
    """A :class:`PrefectApiProxy` in front of the test server, up for the whole session: Prefect
    keeps process-wide workers (events, logs) on the API URL they first saw, so a proxy they
    used must outlive them."""
    from prefect.settings import PREFECT_API_URL

    from tests.prefect_proxy import PrefectApiProxy

    # Never stopped: the test server's teardown drains Prefect's workers through it.
    yield PrefectApiProxy(PREFECT_API_URL.value()).start()


def _postgres_url() -> str | None:
    """The test database: one per xdist worker (created on demand), so workers never drop each
    other's tables."""
    url = os.environ.get("DINTERO_TEST_POSTGRES_URL")
    # Or one per run named by DINTERO_TEST_DB_SUFFIX: CI runs two Pythons' suites at once.
    suffix = _WORKER or os.environ.get("DINTERO_TEST_DB_SUFFIX")
    if not url or not suffix:
        return url
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    base = make_url(url)
    name = f"{base.database}_{suffix}"
    engine = create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            exists = conn.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}
            ).first()
            if not exists:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception:  # unreachable: the postgres_url fixture says so
        return url
    finally:
        engine.dispose()
    return base.set(database=name).render_as_string(hide_password=False)


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


@pytest.fixture(params=["sqlite", "postgres", "duckdb"])
def destination(request, tmp_path) -> str:
    """A fresh destination of each dialect: a SQLite file, an emptied PostgreSQL database, or
    a DuckDB file."""
    if request.param == "sqlite":
        return str(tmp_path / "dintero.db")
    if request.param == "duckdb":
        return f"duckdb:///{tmp_path / 'dintero.duckdb'}"
    url = request.getfixturevalue("postgres_url")
    _drop_dintero_tables(url)
    return url


@pytest.fixture(scope="session")
def month_benchmark():
    """``benchmarks/month.py`` loaded as a module (the benchmarks are not a package)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "month.py"
    spec = importlib.util.spec_from_file_location("month", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["month"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _slices_everywhere(monkeypatch):
    """Backfills are read in concurrent slices wherever their first page leaves more, however
    small the test data and fast the emulator (in production: a dense account on a slow
    network), so every suite (the undocumented choices, the crash loop, the fault soak, cursor
    safety) runs with concurrency on. Tests of one-page-after-another behaviour say
    ``max_concurrent_requests=1``."""
    from prefect_dintero.sync import window_reader as window_slices

    monkeypatch.setattr(window_slices, "MIN_PAGES_TO_CUT", 2)
    monkeypatch.setattr(window_slices, "MIN_WAIT_TO_CUT", 0.0)
