"""The emulator's mutable world: its clock, accounts, issued credentials and counters."""

from __future__ import annotations

import secrets
import threading
import time
from collections import Counter, defaultdict
from datetime import datetime, timedelta

from .config import EmulatorConfig
from .data import AccountData
from .faults import FaultInjector
from .signed_tokens import CodeRecord, RefreshRecord, TokenSigner


class Clock:
    """Emulator time: the configured start plus real elapsed time plus any advances."""

    def __init__(self, start: datetime) -> None:
        self._start = start
        self._t0 = time.monotonic()
        self._advanced = 0.0

    def now(self) -> datetime:
        return self._start + timedelta(seconds=time.monotonic() - self._t0 + self._advanced)

    def timestamp(self) -> float:
        return self.now().timestamp()

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        self._advanced += seconds


class RateBuckets:
    """A token bucket per key (an account): ``rate`` requests a second, bursts of up to one
    second's worth; on real time, as a server's limit is."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str, rate: float) -> float:
        """0 when a request may pass now (and counts it), else the seconds until one may."""
        with self._lock:
            now = time.monotonic()
            tokens, at = self._buckets.get(key, (rate, now))
            tokens = min(rate, tokens + (now - at) * rate)
            if tokens >= 1:
                self._buckets[key] = (tokens - 1, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1 - tokens) / rate


class EmulatorState:
    """Everything the routes read and write. One per running emulator."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.clock = Clock(config.resolved_start_time())
        self.accounts = {
            aid: AccountData(aid, config, self.clock.now()) for aid in config.account_ids
        }
        self.signer = TokenSigner()
        self.faults = FaultInjector(config.seed)
        self.lock = threading.RLock()
        #: Tokens with a generation below this are revoked ("revoke all tokens now").
        self.min_generation = 0
        self._generation = 0
        self.codes: dict[str, CodeRecord] = {}
        self.refresh_tokens: dict[str, RefreshRecord] = {}
        #: Every access token, refresh token and code issued, for secret scans in tests.
        self.issued: dict[str, list[str]] = defaultdict(list)
        self.token_grants: Counter[str] = Counter()
        self.token_grant_failures: Counter[str] = Counter()
        self.requests: dict[str, Counter[str]] = defaultdict(Counter)
        #: Requests being answered right now, by route, and the most there were at once.
        self.in_flight: Counter[str] = Counter()
        self.peak_in_flight: Counter[str] = Counter()
        self.rate_buckets = RateBuckets()
        self.rate_limited_total = 0

    # -- tokens ------------------------------------------------------------------------------

    def issue_access_token(
        self, *, client_id: str, account_id: str, audience: str, sub: str, grant: str
    ) -> tuple[str, int]:
        lifetime = self.config.token_lifetime
        if grant == "authorization_code" and self.config.session_lifetime is not None:
            lifetime = self.config.session_lifetime
        with self.lock:
            self._generation += 1
            now = self.clock.timestamp()
            claims = {
                "iss": "https://emulator.dintero.invalid",
                "sub": sub,
                "aud": audience,
                "account_id": account_id,
                "client_id": client_id,
                "gty": grant,
                "scope": "admin:checkout read:settlements read:customers read:payout"
                + (" read:accounts" if self.config.read_accounts_scope else ""),
                "iat": int(now),
                "exp": int(now) + lifetime,
                "gen": self._generation,
                "jti": secrets.token_hex(8),
            }
            token = self.signer.sign(claims)
            self.issued["access_tokens"].append(token)
            return token, lifetime

    def check_access_token(self, token: str) -> tuple[dict | None, str]:
        """The token's claims and "" when valid, else None and why not."""
        claims = self.signer.verify(token)
        if claims is None:
            return None, "Access forbidden, invalid JWT token was used"
        if claims.get("exp", 0) <= self.clock.timestamp():
            return None, "Access forbidden, the JWT token has expired"
        if claims.get("gen", 0) < self.min_generation:
            return None, "Access forbidden, the JWT token was revoked"
        return claims, ""

    def revoke_all_tokens(self) -> None:
        with self.lock:
            self.min_generation = self._generation + 1

    def issue_refresh_token(self, record: RefreshRecord) -> str:
        token = "rt_" + secrets.token_urlsafe(32)
        with self.lock:
            self.refresh_tokens[token] = record
            self.issued["refresh_tokens"].append(token)
        return token

    def issue_code(self, record: CodeRecord) -> str:
        code = secrets.token_urlsafe(24)
        with self.lock:
            self.codes[code] = record
            self.issued["codes"].append(code)
        return code

    # -- counters ------------------------------------------------------------------------------

    def count_request(self, route: str, status: int | str) -> None:
        self.requests[route][str(status)] += 1

    def stats(self) -> dict:
        grants = {g: self.token_grants.get(g, 0) for g in _GRANTS}
        return {
            "now": self.clock.now().isoformat(),
            "token_grants": grants,
            "token_grant_failures": dict(self.token_grant_failures),
            "requests": {route: dict(c) for route, c in self.requests.items()},
            "requests_total": sum(sum(c.values()) for c in self.requests.values()),
            "faults_injected": dict(self.faults.injected),
            "retry_after_forms": dict(self.faults.retry_after_forms),
            "in_flight": {route: n for route, n in self.in_flight.items() if n},
            "peak_in_flight": dict(self.peak_in_flight),
            "rate_limited": self.rate_limited_total,
        }

    def reset_stats(self) -> None:
        self.peak_in_flight.clear()
        self.rate_limited_total = 0
        self.token_grants.clear()
        self.token_grant_failures.clear()
        self.requests.clear()
        self.faults.injected.clear()
        self.faults.retry_after_forms.clear()


_GRANTS = ("client_credentials", "refresh_token", "authorization_code")
