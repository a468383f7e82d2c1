"""A real ``prefect server start`` on loopback, for the tests that need more than the harness:
workers, several processes, or the UI in a browser."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

PREFECT = [sys.executable, "-m", "prefect"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def prefect_server_process(workdir: Path, *, ui: bool = False) -> Iterator[dict[str, str]]:
    """Start a server with its own home and database under ``workdir``; yield the environment a
    subprocess needs to talk to it (``PREFECT_API_URL`` and friends)."""
    port = free_port()
    home = workdir / "prefect-home"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
    }
    env.pop("PREFECT_TEST_MODE", None)
    log_path = workdir / "server.log"
    command = [*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--ui" if ui else "--no-ui", "--no-scheduler"]
    with open(log_path, "w") as log:
        server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while True:
                with contextlib.suppress(httpx.TransportError):
                    health = httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2)
                    if health.status_code == 200:
                        break
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        "prefect server did not start: " + log_path.read_text()[-3000:]
                    )
                time.sleep(0.5)
            yield env
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def run(cmd: list[str], env: dict[str, str], timeout: float = 180, cwd: Path | None = None) -> str:
    """Run a command against the server; fail the test with its output if it fails."""
    result = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{cmd}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout
