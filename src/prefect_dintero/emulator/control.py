"""The emulator's control routes (``/_emulator/*``): stats, faults, clock, data changes,
dumps and every issued token. Unauthenticated: the emulator binds loopback only."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .data import to_ms
from .faults import FaultConfigError
from .responses import (
    ApiError,
    error_response,
    json_body,
)
from .world import EmulatorState


class ControlRoutes:
    """``/_emulator/*``: what tests and benchmarks steer and read."""

    state: EmulatorState

    def control_routes(self) -> list[Route]:
        return [
            Route("/_emulator/stats", self.ctl_stats, methods=["GET", "DELETE"]),
            Route("/_emulator/faults", self.ctl_faults, methods=["GET", "POST", "DELETE"]),
            Route("/_emulator/clock", self.ctl_clock, methods=["GET", "POST"]),
            Route("/_emulator/mutate", self.ctl_mutate, methods=["POST"]),
            Route("/_emulator/dump/{stream}", self.ctl_dump, methods=["GET"]),
            Route("/_emulator/issued", self.ctl_issued, methods=["GET"]),
            Route("/_emulator/health", self.ctl_health, methods=["GET"]),
        ]

    async def ctl_health(self, request: Request) -> Response:
        return JSONResponse({"ok": True, "accounts": list(self.state.accounts)})

    async def ctl_stats(self, request: Request) -> Response:
        if request.method == "DELETE":
            self.state.reset_stats()
        return JSONResponse(self.state.stats())

    async def ctl_faults(self, request: Request) -> Response:
        state = self.state
        if request.method == "DELETE":
            state.faults.clear()
        elif request.method == "POST":
            try:
                body = await json_body(request)
                if body.get("revoke_all_tokens"):
                    state.revoke_all_tokens()
                if body.get("clear"):
                    state.faults.clear()
                if "rules" in body:
                    state.faults.configure(body)
            except (FaultConfigError, ApiError) as exc:
                return error_response(400, "BAD_REQUEST", str(exc))
        return JSONResponse({"rules": state.faults.describe()})

    async def ctl_clock(self, request: Request) -> Response:
        changed: dict[str, dict] = {}
        if request.method == "POST":
            body = await json_body(request)
            try:
                self.state.clock.advance(float(body.get("advance_seconds", 0)))
            except ValueError as exc:
                return error_response(400, "BAD_REQUEST", str(exc))
            if body.get("mutate"):
                changed = self._mutate(body["mutate"])
        return JSONResponse({"now": self.state.clock.now().isoformat(), "changed": changed})

    async def ctl_mutate(self, request: Request) -> Response:
        body = await json_body(request)
        return JSONResponse(
            {"now": self.state.clock.now().isoformat(), "changed": self._mutate(body)}
        )

    def _mutate(self, body: dict) -> dict[str, dict]:
        accounts = body.get("account_ids") or list(self.state.accounts)
        counts = {
            k: int(v)
            for k, v in body.items()
            if k.startswith(("new_", "update_", "delete_"))
            or k in ("same_updated_at", "capture_late", "refund_any_age", "older_than_days")
            or k == "settle"
        }
        recent = body.get("recent_days")
        now = self.state.clock.now()
        with self.state.lock:
            changed = {
                aid: self.state.accounts[aid].mutate(
                    now, counts, float(recent) if recent is not None else None
                )
                for aid in accounts
            }
            # Changes are a millisecond apart: let the clock catch up with the last one, so no
            # object is ever dated after the emulator's "now".
            ahead = max(self.state.accounts[aid].last_change_ms for aid in accounts) - to_ms(now)
            if ahead > 0:
                self.state.clock.advance(ahead / 1000)
        return changed

    async def ctl_dump(self, request: Request) -> Response:
        q = request.query_params
        aid = q.get("account_id") or next(iter(self.state.accounts))
        if aid not in self.state.accounts:
            return error_response(404, "NOT_FOUND", f"account {aid} not found")
        try:
            rows = self.state.accounts[aid].dump(
                request.path_params["stream"], q.get("destination")
            )
        except KeyError:
            return error_response(404, "NOT_FOUND", "unknown stream")
        return JSONResponse(rows)

    async def ctl_issued(self, request: Request) -> Response:
        """Every secret the emulator handed out, so tests can scan for leaks."""
        return JSONResponse(
            {
                "client_secret": self.state.config.client_secret,
                **{k: list(v) for k, v in self.state.issued.items()},
            }
        )
