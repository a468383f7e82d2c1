"""Running the emulator: in a background thread for tests, or in the foreground from the CLI."""

from __future__ import annotations

import contextlib
import http.client
import logging
import socket
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import uvicorn

from .app import EmulatorApp
from .config import EmulatorConfig
from .responses import DroppedConnection
from .world import EmulatorState


class _HideInjectedDrops(logging.Filter):
    """uvicorn logs every aborted response as an error; an injected drop is not one."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, DroppedConnection)


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted sockets inherit this; without it small responses wait ~40 ms on delayed ACKs.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(1024)
    return sock


class EmulatorClient:
    """Drives a running emulator over HTTP: its control routes and the simulated login.

    Works the same whether the emulator runs in this process or another one.
    """

    def __init__(self, url: str, config: EmulatorConfig | None = None) -> None:
        self.url = url.rstrip("/")
        self.config = config or EmulatorConfig()
        self._http = httpx.Client(base_url=self.url, timeout=30.0)

    def close(self) -> None:
        self._http.close()

    def credential_fields(self, account_id: str | None = None) -> dict[str, Any]:
        """What credentials need to call this emulator, for ``ClientCredentials(**...)`` or
        ``DinteroCredentials(**...)``: an account (its first by default), its API client, and
        its URL as both hosts."""
        return {
            "account_id": account_id or self.config.account_ids[0],
            "client_id": self.config.client_id,
            "client_secret": self.config.client_secret,
            "api_url": self.url,
            "checkout_url": self.url,
        }

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._http.request(method, path, **kwargs)
        response.raise_for_status()
        return response.json()

    def stats(self) -> dict:
        return self._call("GET", "/_emulator/stats")

    def reset_stats(self) -> dict:
        return self._call("DELETE", "/_emulator/stats")

    def set_faults(self, *rules: dict, replace: bool = True) -> dict:
        return self._call(
            "POST", "/_emulator/faults", json={"rules": list(rules), "replace": replace}
        )

    def clear_faults(self) -> dict:
        return self._call("DELETE", "/_emulator/faults")

    def revoke_all_tokens(self) -> dict:
        return self._call("POST", "/_emulator/faults", json={"revoke_all_tokens": True})

    def now(self) -> datetime:
        """The emulator's time (its data lives 30 days behind the real one by default)."""
        return datetime.fromisoformat(self._call("GET", "/_emulator/clock")["now"])

    def advance_clock(self, seconds: float, **mutations: int) -> dict:
        body: dict[str, Any] = {"advance_seconds": seconds}
        if mutations:
            body["mutate"] = mutations
        return self._call("POST", "/_emulator/clock", json=body)

    def mutate(self, **counts: Any) -> dict:
        return self._call("POST", "/_emulator/mutate", json=counts)

    def dump(
        self, stream: str, account_id: str | None = None, destination: str | None = None
    ) -> list:
        params = {k: v for k, v in (("account_id", account_id), ("destination", destination)) if v}
        return self._call("GET", f"/_emulator/dump/{stream}", params=params)

    def issued(self) -> dict:
        return self._call("GET", "/_emulator/issued")

    def authorize_url(self, state: str = "state-1", redirect_uri: str | None = None) -> str:
        params = httpx.QueryParams(
            response_type="code",
            client_id=self.config.client_id,
            redirect_uri=redirect_uri or self.config.redirect_uris[0],
            state=state,
            scope="openid",
        )
        return f"{self.url}/oidc/authorize?{params}"

    def login(self, state: str = "state-1", redirect_uri: str | None = None) -> str:
        """Play the user at the identity provider; return the redirect URL with the code."""
        return self.open_authorize_url(self.authorize_url(state, redirect_uri))

    def open_authorize_url(self, authorize_url: str) -> str:
        """Open a login link as the user's browser would: show the login page, click its
        button; return where the identity provider redirects.

        Sent with ``http.client``, like a browser outside the process: httpx's debug logging would
        otherwise record the code in the redirect's Location header.
        """
        url = httpx.URL(authorize_url)
        conn = http.client.HTTPConnection(url.host, url.port, timeout=30)
        try:
            conn.request("GET", url.raw_path.decode())
            response = conn.getresponse()
            page = response.read().decode("utf-8", "replace")
            if response.status != 200:
                raise RuntimeError(f"authorize answered {response.status}: {page}")
            # The button POSTs the authorize parameters back, form-encoded.
            conn.request(
                "POST",
                url.path,
                body=url.query,
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )
            response = conn.getresponse()
            body = response.read().decode("utf-8", "replace")
            if response.status not in (302, 303):
                raise RuntimeError(f"the login answered {response.status}: {body}")
            return response.getheader("location", "")
        finally:
            conn.close()

    @property
    def callback_url(self) -> str:
        """The emulator's own redirect URI: a page showing what to paste into Prefect."""
        return f"{self.url}/oidc/callback"

    def authorization_code(self, state: str = "state-1", redirect_uri: str | None = None) -> str:
        location = self.login(state, redirect_uri)
        return parse_qs(urlsplit(location).query)["code"][0]


def _require_loopback(host: str, allow_remote: bool) -> None:
    from ..validation import is_loopback

    if not allow_remote and not is_loopback(host):
        raise ValueError(
            f"the emulator binds loopback addresses only (got {host!r}): its /_emulator/* routes "
            "are unauthenticated; pass allow_remote=True for a network of your own tests"
        )


class EmulatorServer(EmulatorClient):
    """The emulator on 127.0.0.1 in a daemon thread. Use :func:`running_emulator`."""

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        allow_remote: bool = False,
    ) -> None:
        _require_loopback(host, allow_remote)
        self.config = config or EmulatorConfig()
        self.state = EmulatorState(self.config)
        self._sock = _bind(host, port)
        bound_host, bound_port = self._sock.getsockname()[:2]
        uv_config = uvicorn.Config(
            EmulatorApp(self.state, allow_remote=allow_remote),
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_keep_alive=30,
        )
        self._server = uvicorn.Server(uv_config)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._sock]},
            daemon=True,
            name=f"dintero-emulator-{bound_port}",
        )
        super().__init__(f"http://{bound_host}:{bound_port}", self.config)

    def start(self, timeout: float = 15.0) -> EmulatorServer:
        logging.getLogger("uvicorn.error").addFilter(_HideInjectedDrops())
        self._thread.start()
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self._http.get("/_emulator/health").status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the Dintero emulator did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()
        self.close()


@contextlib.contextmanager
def running_emulator(
    config: EmulatorConfig | None = None, host: str = "127.0.0.1", port: int = 0
) -> Iterator[EmulatorServer]:
    """Run the emulator on a free loopback port for the duration of a ``with`` block.

    Examples:
        ```python
        import httpx
        from prefect_dintero.emulator import running_emulator

        with running_emulator() as emulator:
            assert httpx.get(f"{emulator.url}/_emulator/health").json()["ok"]
        ```
    """
    server = EmulatorServer(config, host, port).start()
    try:
        yield server
    finally:
        server.stop()


def serve_forever(
    config: EmulatorConfig,
    host: str,
    port: int,
    faults: dict | None = None,
    *,
    allow_remote: bool = False,
) -> None:
    """Serve in the foreground until interrupted (the ``prefect-dintero emulator`` command)."""
    _require_loopback(host, allow_remote)
    state = EmulatorState(config)
    if faults:
        state.faults.configure(faults)
    logging.getLogger("uvicorn.error").addFilter(_HideInjectedDrops())
    uvicorn.run(
        EmulatorApp(state, allow_remote=allow_remote),
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
    )
