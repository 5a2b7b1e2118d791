"""Who may talk to the server, and how fast (contract §3.1-§3.3, §6.2-§6.4).

Tokens, roles, the per-uuid failed-auth limit, the per-uuid message rate and the per-tenant
token bucket. Each check raises `Reject` with the real server's message and close code; the
caller decides nothing, it only sends the frame.
"""

from __future__ import annotations

import secrets
import time
from collections import deque
from typing import Any

from .config import ServerConfig
from .connection import CLOSE_POLICY, Client, Reject
from .metrics import ServerMetrics

AUTH_FAILURE_WINDOW = 60.0  # failed auths are counted per uuid over 60 s (ws.py:309-331)
RATE_WINDOW = 1.0  # the per-uuid message rate is a sliding 1 s window (ws.py:253-271)


class Admission:
    """The authentication and rate-limit state of one server."""

    def __init__(self, config: ServerConfig, metrics: ServerMetrics) -> None:
        self._config = config
        self._metrics = metrics
        self._auth_failures: dict[str, deque[float]] = {}
        self._message_times: dict[str, deque[float]] = {}
        self._tenant_buckets: dict[str, tuple[float, float]] = {}

    def token_problem(self, token: Any) -> str | None:
        if self._config.token is None:
            return None  # simple mode: any or no token
        if token is None or token == "":
            return "Missing token in auth payload"
        if not isinstance(token, str) or not secrets.compare_digest(token, self._config.token):
            return "Invalid token format"
        return None

    def roles(self, payload: dict[str, Any]) -> list[str]:
        default = ["inference", "management"]
        if self._config.token is not None:
            return default  # token mode: roles come from the token, client.roles is ignored
        client_info = payload.get("client")
        roles = client_info.get("roles") if isinstance(client_info, dict) else None
        # Development mode (ws.py:458-469): `if not roles: roles = [...]`, so an empty list or
        # string gets the defaults too. The vendor SDK sends `roles: []` with every token.
        if isinstance(roles, str) and roles:
            return [roles]
        if isinstance(roles, list) and roles:
            return [str(r) for r in roles]
        return default

    def check_auth_failures(self, uuid: str) -> None:
        limit = self._config.auth_failures_per_minute
        if limit <= 0:
            return
        window = _trim(self._auth_failures.setdefault(uuid, deque()), AUTH_FAILURE_WINDOW)
        if len(window) >= limit:
            self._metrics.auth_failures.inc()
            raise Reject("Too many failed auth attempts for this client", CLOSE_POLICY)

    def record_auth_failure(self, uuid: str) -> None:
        self._metrics.auth_failures.inc()
        if self._config.auth_failures_per_minute > 0:
            self._auth_failures.setdefault(uuid, deque()).append(time.monotonic())

    def check_client_rate(self, uuid: str) -> None:
        limit = self._config.rate_limit_per_client
        if limit <= 0:
            return
        window = _trim(self._message_times.setdefault(uuid, deque()), RATE_WINDOW)
        window.append(time.monotonic())
        if len(window) > limit:
            self._metrics.rate_limit_violations.labels("client").inc()
            raise Reject("Rate limit exceeded for this client (messages per second)", CLOSE_POLICY)

    def take_tenant_token(self, client: Client) -> None:
        rate = self._config.tenant_rate_limit
        if rate <= 0:
            return
        now = time.monotonic()
        tokens, last = self._tenant_buckets.get(client.tenant, (float(rate), now))
        tokens = min(float(rate), tokens + (now - last) * rate)
        if tokens < 1.0:
            self._tenant_buckets[client.tenant] = (tokens, now)
            self._metrics.rate_limit_violations.labels("tenant").inc()
            raise Reject(
                "Tenant message rate limit reached.",
                CLOSE_POLICY,
                {"code": "BACKPRESSURE_TENANT_LIMIT_REACHED"},
            )
        self._tenant_buckets[client.tenant] = (tokens - 1.0, now)

    def prune(self) -> None:
        """Forget expired window entries, and the uuids left with none: fresh uuids must not
        grow the tables without bound."""
        _prune_windows(self._auth_failures, AUTH_FAILURE_WINDOW)
        _prune_windows(self._message_times, RATE_WINDOW)


def _trim(window: deque[float], seconds: float) -> deque[float]:
    cutoff = time.monotonic() - seconds
    while window and window[0] < cutoff:
        window.popleft()
    return window


def _prune_windows(windows: dict[str, deque[float]], seconds: float) -> None:
    """Trim every uuid's window and forget the uuids left with nothing in theirs."""
    for uuid in [u for u, window in windows.items() if not _trim(window, seconds)]:
        del windows[uuid]
