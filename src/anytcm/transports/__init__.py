"""The transport plugin interface: text frames over one WebSocket connection.

A transport knows nothing of TCM. It opens a socket, sends and receives text messages, keeps
the connection alive, and reports how it ended. Transport errors are translated here, at the
boundary, into anytcm's error tree: `ConnectError`/`HandshakeRejected` while opening,
`ConnectionLost` (with the close code, 1006 when no close frame came) once open.

Transports are found through the `anytcm.transports` entry-point group; the built-in one,
`websockets`, runs websockets' sans-IO `ClientProtocol` over anyio streams.
"""

from __future__ import annotations

import ssl
import sys
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import anyio

from ..errors import ConnectError, ConnectionLost, ServerShutdown

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

DEFAULT_MAX_MESSAGE_SIZE = 256 * 1024 * 1024
"""Replies have no size cap on the manager's side (contract §1): receive generously."""


# What each close code means for the user, and what to do (RFC 6455 codes the manager uses).
CLOSE_CODE_HINTS: dict[int, str] = {
    1000: "the connection was closed normally",
    1001: "the server is going away; reconnect",
    1003: "the server sent data the client cannot accept; reconnect",
    1006: "no close frame arrived: the server died or the network dropped; reconnect",
    1008: "the server refused a frame (policy violation); read the error frame sent before it",
    1009: "a message exceeded the size limit; raise TransportOptions.max_message_size or keep "
    "outgoing frames under the server's cap",
    1011: "the server failed, or stopped answering keepalive pings; reconnect",
    1012: "the server is restarting; reconnect once GET /ready answers 200",
}


_SERVICE_RESTART = 1012


def connection_lost(
    url: str, end: tuple[int, str] | None, *, outcome_unknown: bool = False
) -> ConnectionLost:
    """The error a transport raises once its connection is over (or closing, `end` None).

    Every transport maps the end of a connection the same way, so the layers above (and users)
    see one error shape whatever transport runs underneath. `outcome_unknown` is for a send
    that failed once bytes may have left: the manager may have received the whole message and
    acted on it (a management action must then not be reported as "not run").
    """
    if end is None:  # closing (aclose in progress): nothing can be sent any more
        return ConnectionLost(
            f"the WebSocket connection to {url} is closing; open a new connection",
            outcome_unknown=outcome_unknown,
        )
    code, reason = end
    detail = f" ({reason})" if reason else ""
    hint = CLOSE_CODE_HINTS.get(code, "reconnect")
    # 1012 is the manager restarting, whether or not a SYSTEM_SHUTDOWN frame came first: the
    # same error, and the same backoff floor, either way.
    cls = ServerShutdown if code == _SERVICE_RESTART else ConnectionLost
    return cls(
        f"the WebSocket connection to {url} closed with code {code}{detail}: {hint}",
        close_code=code,
        reason=reason,
        outcome_unknown=outcome_unknown,
    )


def collapse_exception_group(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one exception to raise for a group: its only non-cancellation leaf, else its first
    cancellation; None when several real failures must stay grouped.

    A single failure is never surfaced as an ExceptionGroup (anyio and trio wrap even one).
    Must be called inside an async context (it asks anyio for the cancellation class).
    """
    leaves: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        exc = stack.pop()
        if isinstance(exc, BaseExceptionGroup):
            stack.extend(reversed(exc.exceptions))
        else:
            leaves.append(exc)
    cancelled = anyio.get_cancelled_exc_class()
    failures = [exc for exc in leaves if not isinstance(exc, cancelled)]
    if len(failures) == 1:
        return failures[0]
    if not failures and leaves:
        return leaves[0]
    return None


def tls_connect_error(url: str, exc: BaseException) -> ConnectError | None:
    """The ConnectError for a TLS failure while opening `url` (None if `exc` is not one)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return ConnectError(
            f"TLS certificate verification failed for {url} ({exc.verify_message}): pass "
            "TransportOptions(ssl_context=ssl.create_default_context(cafile=...)) trusting the "
            "server's CA, or fix the server certificate (host name, expiry, chain)"
        )
    if isinstance(exc, ssl.SSLError):
        return ConnectError(
            f"TLS handshake with {url} failed ({exc}): check that the server speaks TLS on "
            "that port (wss:// vs ws://) and its TLS setup"
        )
    return None


@dataclass(frozen=True)
class TransportOptions:
    """How to open and keep a connection.

    `ssl_context` is used for `wss://` URLs; None means a default context that verifies the
    certificate. Compression (permessage-deflate) is off by default: near the manager's 64 KiB
    cap it doubles latency and client CPU, and the cap applies to the decompressed text anyway.
    """

    ssl_context: ssl.SSLContext | None = None
    # May carry credentials (a proxy's Authorization header): never in a repr.
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    open_timeout: float = 10.0
    ping_interval: float | None = 20.0
    ping_timeout: float = 20.0
    close_timeout: float = 5.0
    compression: bool = False


@runtime_checkable
class Transport(Protocol):
    """One open WebSocket connection carrying text frames.

    `receive` is called by one task at a time (the session's reader); `send_text` may be called
    concurrently from several tasks. Keepalive pongs are noticed while `receive` is running.
    """

    async def send_text(self, data: bytes) -> None:
        """Send one text message; `data` is UTF-8. Raises ConnectionLost if closed.

        The ConnectionLost says `outcome_unknown=True` when the connection failed once bytes
        of this message may have left (the manager may have acted on it), False when it
        failed before anything was written.
        """
        ...

    async def receive(self) -> bytes:
        """The next text message as UTF-8 bytes. Raises ConnectionLost when the connection ends."""
        ...

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        """Close with a close frame (bounded by close_timeout); idempotent."""
        ...

    @property
    def close_code(self) -> int | None:
        """The close code once closed (1006 when no close frame was received), else None."""
        ...

    @property
    def close_reason(self) -> str:
        """The close reason once closed, else ''."""
        ...


@runtime_checkable
class MessageSink(Protocol):
    """An optional transport capability: text messages delivered by callback, not `receive()`.

    A transport whose network layer runs callbacks (asyncio's protocols) can parse frames and
    hand each message over right there, sparing a task wake-up per message; one that reads in
    a task can hand them over from inside `receive()`, sparing a return per message.
    `deliver_to` returns False when it cannot; the caller then keeps calling `receive()`. When
    it returns True, messages already received are handed over first, and `receive()` returns
    no more messages: it waits until the connection ends and raises `ConnectionLost` as usual.
    The handler may run outside any task or in the task inside `receive()`: either way it must
    not block or await. It is a fast path: with `ANYTCM_NO_FAST_PATHS=1` the session never
    calls `deliver_to` and reads every message through `receive()`.
    """

    def deliver_to(self, handler: Callable[[bytes], None]) -> bool:
        """Hand every later text message to `handler`; False if this transport cannot."""
        ...


class TransportFactory(Protocol):
    """What an `anytcm.transports` entry point provides."""

    name: str

    def connect(
        self, url: str, options: TransportOptions
    ) -> AbstractAsyncContextManager[Transport]:
        """Open a connection to a ws:// or wss:// URL; the context manager owns its tasks."""
        ...


__all__ = [
    "CLOSE_CODE_HINTS",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "MessageSink",
    "Transport",
    "TransportFactory",
    "TransportOptions",
    "collapse_exception_group",
    "connection_lost",
    "tls_connect_error",
]
