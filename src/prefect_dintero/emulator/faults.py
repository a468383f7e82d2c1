"""Fault injection for the emulator: per route, by probability or as an exact sequence.

A rule is posted to ``POST /_emulator/faults`` as JSON::

    {"rules": [
        {"route": "transactions", "probability": 0.2, "status": 429, "retry_after": 1},
        {"route": "*", "probability": 0.05, "drop": true},
        {"route": "token", "sequence": [{"status": 503}, {"status": 503}, "ok"]}
    ]}

An action is any of ``status`` (with ``retry_after`` seconds and ``retry_after_format``
``"seconds"`` or ``"http-date"`` for 429/503), ``drop`` (close the connection mid-response),
``latency`` (seconds, alone or before another action), ``delay_response`` (seconds: answer
normally, doing the work, but hold the response back, so a client that dies meanwhile never learns
the result), ``malformed`` (200 with broken JSON), ``extra_rows`` (objects added to a 200 page
whatever its filters say, as a server that ignores them would), ``trickle`` (seconds: answer
normally but send the body one byte at a time, that long apart, as a hung proxy might),
``echo`` (with ``status``: an error body that quotes the request, headers and all, as some
proxies and debug servers do), or the string ``"ok"`` in a sequence.
Probability rules matching a request share one draw, so their rates add up exactly (20 % + 10 % +
5 % = 35 % of requests faulted).
"""

from __future__ import annotations

import random
import threading
from collections import Counter, deque
from dataclasses import dataclass, fields
from typing import Any

ROUTES = (
    "token",
    "oidc_token",
    "authorize",
    "transactions",
    "sessions",
    "settlements",
    "customers",
    "payout_destinations",
    "payout_transfers",
    "payout_balances",
)

#: The routes that serve data pages (what ``page_latency`` and ``rate_limit`` apply to).
DATA_ROUTES = frozenset(ROUTES) - {"token", "oidc_token", "authorize"}


class FaultConfigError(ValueError):
    """A fault rule the emulator cannot understand."""


@dataclass(frozen=True)
class FaultAction:
    """What to do to one request instead of (or before) answering it normally."""

    status: int | None = None
    retry_after: float | None = None
    retry_after_format: str = "seconds"
    drop: bool = False
    latency: float = 0.0
    malformed: bool = False
    delay_response: float = 0.0
    extra_rows: tuple[dict, ...] = ()
    trickle: float = 0.0
    echo: bool = False

    @property
    def is_noop(self) -> bool:
        return self.kind == "ok"

    @property
    def kind(self) -> str:
        if self.drop:
            return "drop"
        if self.echo and self.status:
            return f"{self.status} echo"
        if self.malformed:
            return "malformed"
        if self.status:
            return str(self.status)
        if self.delay_response:
            return "delayed response"
        if self.extra_rows:
            return "extra rows"
        if self.trickle:
            return "trickle"
        return "latency" if self.latency else "ok"

    @classmethod
    def parse(cls, raw: Any) -> FaultAction:
        if raw == "ok" or raw is None:
            return cls()
        if not isinstance(raw, dict):
            raise FaultConfigError(f"a fault action must be an object or 'ok', got {raw!r}")
        names = {f.name for f in fields(cls)}
        unknown = set(raw) - names - {"route", "probability"}
        if unknown:
            raise FaultConfigError(f"unknown fault fields: {sorted(unknown)}")
        status = raw.get("status")
        if status is not None and (not isinstance(status, int) or not 400 <= status <= 599):
            raise FaultConfigError(f"status must be an HTTP error code (400-599), got {status!r}")
        extra = raw.get("extra_rows", [])
        if not isinstance(extra, list) or not all(isinstance(r, dict) for r in extra):
            raise FaultConfigError("extra_rows must be a list of objects")
        if raw.get("retry_after_format", "seconds") not in ("seconds", "http-date"):
            raise FaultConfigError("retry_after_format must be 'seconds' or 'http-date'")
        given = {k: v for k, v in raw.items() if k in names}
        seconds = {k: float(raw[k]) for k in ("latency", "delay_response", "trickle") if k in raw}
        return cls(**{**given, **seconds, "extra_rows": tuple(extra)})


@dataclass
class FaultRule:
    route: str
    action: FaultAction | None = None
    probability: float = 0.0
    sequence: deque[FaultAction] | None = None

    def matches(self, route: str) -> bool:
        return self.route in ("*", route)


class FaultInjector:
    """Holds the active rules and decides, per request, which fault (if any) applies."""

    def __init__(self, seed: int = 0) -> None:
        self._rules: list[FaultRule] = []
        self._rng = random.Random(f"faults:{seed}")
        self._lock = threading.Lock()
        self.injected: Counter[str] = Counter()
        #: How the injected Retry-After headers were written: "seconds" or "http-date".
        self.retry_after_forms: Counter[str] = Counter()

    def configure(self, body: dict) -> None:
        rules = []
        for raw in body.get("rules", []):
            if not isinstance(raw, dict):
                raise FaultConfigError("each rule must be an object")
            route = raw.get("route", "*")
            if route != "*" and route not in ROUTES:
                raise FaultConfigError(f"unknown route {route!r}; known: '*', {', '.join(ROUTES)}")
            if "sequence" in raw:
                seq = raw["sequence"]
                if not isinstance(seq, list):
                    raise FaultConfigError("sequence must be a list of actions")
                rules.append(FaultRule(route, sequence=deque(FaultAction.parse(a) for a in seq)))
            else:
                p = float(raw.get("probability", 1.0))
                if not 0.0 <= p <= 1.0:
                    raise FaultConfigError("probability must be between 0 and 1")
                action = FaultAction.parse({k: v for k, v in raw.items() if k != "sequence"})
                rules.append(FaultRule(route, action=action, probability=p))
        with self._lock:
            if body.get("replace", True):
                self._rules = rules
            else:
                self._rules.extend(rules)

    def clear(self) -> None:
        with self._lock:
            self._rules = []

    def describe(self) -> list[dict]:
        with self._lock:
            return [
                {
                    "route": r.route,
                    "probability": r.probability if r.sequence is None else None,
                    "remaining_sequence": len(r.sequence) if r.sequence is not None else None,
                    "action": r.action.kind if r.action else None,
                }
                for r in self._rules
            ]

    def pick(self, route: str) -> FaultAction | None:
        """The fault for this request, counting it, or None to answer normally."""
        with self._lock:
            for rule in self._rules:
                if rule.sequence and rule.matches(route):
                    action = rule.sequence.popleft()
                    return self._count(action)
            draw = self._rng.random()
            acc = 0.0
            for rule in self._rules:
                if rule.sequence is None and rule.matches(route) and rule.action is not None:
                    acc += rule.probability
                    if draw < acc:
                        return self._count(rule.action)
        return None

    def _count(self, action: FaultAction) -> FaultAction | None:
        if action.is_noop:
            return None
        self.injected[action.kind] += 1
        if action.status and action.retry_after is not None:
            self.retry_after_forms[action.retry_after_format] += 1
        return action
