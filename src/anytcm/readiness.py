"""The readiness gate: `GET /ready` on the manager before every (re)connect (contract §1, §7).

After a restart or a drain, the manager's WebSocket may accept connections before it can serve;
`/ready` is the manager's own statement that it can. `/health` only says the process is up, which
is what tells "starting/broken" apart from "gone" in logs and errors.

The gate reaches the manager the way the WebSocket does: the same TLS context (so the same CA
store), the same extra headers, and no proxy from the environment (the WebSocket transport
honours none, so a `HTTP_PROXY` meant for other traffic must not send only the gate elsewhere).
One gate, with one HTTP client kept for its life, serves every connection of a pool: building an
HTTP client loads a CA store, far more than a check on a kept-alive connection costs.

Only 503 is worth waiting for. A 4xx answer (404: wrong URL path, or not a TCM manager) cannot
fix itself, so it is reported as `HandshakeRejected`, which ends `connect` at once.
"""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import httpx

from ._backend import clock
from .errors import ConnectError, HandshakeRejected, NotReady, permanent_http_status

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

    @property
    def permanent(self) -> bool:
        """The answer says the URL is wrong, not that the manager is busy: waiting cannot help."""
        return self.status_code is not None and permanent_http_status(self.status_code)

    def as_error(self) -> ConnectError:
        if self.permanent:
            return HandshakeRejected(
                f"{self.detail}: wrong URL path, or not a TCM manager (a TCM manager answers "
                "/ready and /health beside its WebSocket at /ws); check the URL",
                status_code=self.status_code or 0,
            )
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
        headers: Mapping[str, str] | None = None,
        timeout: float = 5.0,
        cache_seconds: float = 1.0,
    ) -> None:
        self.base_url = http_base_url(ws_url)
        self._ssl_context = ssl_context
        self._headers = dict(headers or {})
        self._timeout = timeout
        self._cache_seconds = cache_seconds
        self._ready_until = -1.0
        self._lock = anyio.Lock()
        self._http: httpx.AsyncClient | None = None
        self._reported: str | None = None  # the last state logged: one line per change

    def __repr__(self) -> str:  # the headers may carry credentials
        return f"<ReadinessGate {self.base_url}>"

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            secure = self.base_url.startswith("https:")
            if secure and self._ssl_context is None:
                self._ssl_context = ssl.create_default_context()  # what websockets would use
            self._http = httpx.AsyncClient(
                base_url=self.base_url,
                # No TLS for http://: skip loading a CA store that nothing would use.
                verify=self._ssl_context if secure and self._ssl_context else False,
                headers=self._headers,
                timeout=self._timeout,
                trust_env=False,  # no proxy, no SSL_CERT_FILE of its own: as the WebSocket
            )
        return self._http

    async def aclose(self) -> None:
        """Close the kept HTTP connection (the client closing)."""
        http, self._http = self._http, None
        if http is not None:
            with anyio.CancelScope(shield=True):
                await http.aclose()

    async def check(self) -> ReadyState:
        """Ask `/ready` once; never raises for HTTP or network failures."""
        async with self._lock:
            now = clock()
            if now() < self._ready_until:
                return ReadyState(True, 200, {}, True, "ready (cached)")
            state = await self._ask()
            if state.ready:
                self._ready_until = now() + self._cache_seconds
            self._report(state)
            return state

    def _report(self, state: ReadyState) -> None:
        """Log a change of the manager's readiness once, not every poll of every connection."""
        summary = "ready" if state.ready else state.detail
        if summary == self._reported:
            return
        if state.ready:
            if self._reported is not None:
                logger.warning("manager at %s is ready again", self.base_url)
        else:
            logger.warning("manager not ready: %s", state.detail)
        self._reported = summary

    def forget(self) -> None:
        """Drop the cached success (a connection just failed)."""
        self._ready_until = -1.0

    async def _ask(self) -> ReadyState:
        http = self._client()
        try:
            status, text = await _get(http, "/ready")
        except httpx.HTTPError as exc:
            return ReadyState(False, None, {}, False, f"GET /ready failed: {_describe(exc)}")
        body = _json_object(text)
        if status == 200:
            return ReadyState(True, 200, body, True, "ready")
        if permanent_http_status(status):
            return ReadyState(False, status, body, True, f"GET /ready answered {status}")
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
