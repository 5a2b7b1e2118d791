"""The readiness gate: `GET /ready` on the manager before every (re)connect (contract §1, §7).

After a restart or a drain, the manager's WebSocket may accept connections before it can serve;
`/ready` is the manager's own statement that it can. `/health` only says the process is up, which
is what tells "starting/broken" apart from "gone" in logs and errors.
"""

from __future__ import annotations

import json
import logging
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import httpx

from .errors import NotReady

logger = logging.getLogger("anytcm.readiness")


def http_base_url(ws_url: str) -> str:
    """`ws://h:p/prefix/ws` -> `http://h:p/prefix` (`wss` -> `https`)."""
    parts = urlsplit(ws_url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme)
    if scheme is None:
        raise ValueError(f"not a ws:// or wss:// URL: {ws_url!r}")
    path = parts.path[: -len("/ws")] if parts.path.endswith("/ws") else parts.path.rstrip("/")
    return urlunsplit((scheme, parts.netloc, path, "", ""))


@dataclass(frozen=True)
class ReadyState:
    """One answer of `/ready` (or the failure to get one)."""

    ready: bool
    status_code: int | None
    body: dict[str, Any]
    process_up: bool
    detail: str

    def as_error(self) -> NotReady:
        reason = self.body.get("reason") if isinstance(self.body.get("reason"), str) else None
        error_id = self.body.get("error_id") if isinstance(self.body.get("error_id"), str) else None
        return NotReady(
            f"the manager is not ready ({self.detail}); anytcm waits for GET /ready to answer 200",
            reason=reason,
            error_id=error_id,
            process_up=self.process_up,
        )


class ReadinessGate:
    """Asks `/ready` (and `/health` when not ready). Success is cached briefly for the pool."""

    def __init__(
        self,
        ws_url: str,
        *,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = 5.0,
        cache_seconds: float = 1.0,
    ) -> None:
        self.base_url = http_base_url(ws_url)
        self._verify: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self._timeout = timeout
        self._cache_seconds = cache_seconds
        self._ready_until = -1.0
        self._lock = anyio.Lock()

    async def check(self) -> ReadyState:
        """Ask `/ready` once; never raises for HTTP or network failures."""
        async with self._lock:
            if anyio.current_time() < self._ready_until:
                return ReadyState(True, 200, {}, True, "ready (cached)")
            state = await self._ask()
            if state.ready:
                self._ready_until = anyio.current_time() + self._cache_seconds
            return state

    def forget(self) -> None:
        """Drop the cached success (a connection just failed)."""
        self._ready_until = -1.0

    async def _ask(self) -> ReadyState:
        async with httpx.AsyncClient(
            base_url=self.base_url, verify=self._verify, timeout=self._timeout
        ) as http:
            try:
                status, text = await _get(http, "/ready")
            except httpx.HTTPError as exc:
                return ReadyState(False, None, {}, False, f"GET /ready failed: {_describe(exc)}")
            body = _json_object(text)
            if status == 200:
                return ReadyState(True, 200, body, True, "ready")
            try:
                health, _ = await _get(http, "/health")
                process_up = health == 200
            except httpx.HTTPError:
                process_up = False
            detail = (
                f"GET /ready answered {status}, reason={body.get('reason')!r}, "
                f"error_id={body.get('error_id')!r}; the process is "
                f"{'up' if process_up else 'not answering /health'}"
            )
            logger.warning("manager not ready: %s", detail)
            return ReadyState(False, status, body, process_up, detail)


def _describe(exc: BaseException) -> str:
    """An error with the causes behind it: httpx errors can be empty (e.g. on trio), while the
    cause (a refused connection, an untrusted certificate) is what the user needs to read."""
    parts: list[str] = []
    current: BaseException | None = exc
    while current is not None and len(parts) < 4:
        parts.append(
            f"{type(current).__name__}: {current}" if str(current) else type(current).__name__
        )
        current = current.__cause__ or current.__context__
    return " <- ".join(parts)


# The most of a /ready or /health body read: the manager's are a few dozen bytes, and whatever
# answers in its place (a proxy's error page, a hostile peer) must not make the gate buffer more.
_BODY_LIMIT = 16384


async def _get(http: httpx.AsyncClient, path: str) -> tuple[int, bytes]:
    """GET `path`: the status, and the body when it declares a length of at most `_BODY_LIMIT`.

    The status is what decides; the body only adds the manager's `reason` and `error_id`, and
    the manager always sends a Content-Length. Anything else (no length, a longer one) is not
    read at all: stopping part-way through httpx's body iterators leaves them unfinished.
    """
    async with http.stream("GET", path) as response:
        length = response.headers.get("content-length", "")
        if length.isdigit() and int(length) <= _BODY_LIMIT:
            return response.status_code, await response.aread()
        return response.status_code, b""


def _json_object(text: bytes) -> dict[str, Any]:
    try:
        body = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: a hostile, deeply nested body
        return {}
    return body if isinstance(body, dict) else {}
