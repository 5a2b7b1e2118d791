"""An anytcm transport plugin on trio-websocket (trio only).

Select it with `anytcm.connect(url, transport="trio-websocket")` or with the environment variable
`ANYTCM_TRANSPORT=trio-websocket`. It meets the same contract as the built-in `websockets`
transport (`anytcm.transport`): text frames over one connection, `ConnectError` /
`HandshakeRejected` while opening, `ConnectionLost` (close code and reason; 1006 when no close
frame came) once open, keepalive pings that fail the connection with 1011, and a context manager
that never lets an ExceptionGroup or a task escape.

It is slower than the built-in transport (design.md: ~4.3k against ~8.6k sequential round trips/s
on trio, ~67 against ~720 MB/s for 1 MiB messages) and runs on trio only: use it when a trio
application already depends on trio-websocket, or to cross-check the built-in transport.

How it uses trio-websocket:

* **We open the socket ourselves** (TCP, then TLS with an explicit handshake) and hand it to
  `trio_websocket.wrap_client_stream`. trio-websocket's own `open_websocket_url` does the TLS
  handshake lazily inside its reader task, where a certificate failure is swallowed and surfaces
  as a connect *timeout*; owning the stream also lets us close it forcefully, which trio-websocket
  offers no public way to do.
* **Its reader task runs in our nursery, watched.** `wrap_client_stream` waits for the opening
  handshake forever if the server closes the socket first; the watcher ends that wait as soon as
  the reader task ends, and turns `ConnectionRejected` (an HTTP answer instead of an upgrade) into
  `HandshakeRejected`. After the handshake, a reader failure ends the connection (1006) instead
  of escaping from the context manager.
* **We keep our own record of how the connection ended.** trio-websocket records 1000 as soon as
  the local side starts closing, whatever code was sent, and its keepalive-free API knows nothing
  of 1011: the first cause recorded here wins, as in the built-in transport.

Limits that come from trio-websocket: it has no permessage-deflate (`compression=True` is refused),
text messages are decoded to `str` and encoded back (a pass over each message in each direction),
and `max_message_size` counts characters, not bytes (the same for the ASCII JSON TCM sends).
"""

from __future__ import annotations

import contextlib
import ssl
import struct
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, NoReturn, cast
from urllib.parse import urlsplit

import sniffio
import trio
import trio_websocket
from anytcm.errors import ConnectError, HandshakeRejected
from anytcm.transport import (
    Transport,
    TransportOptions,
    collapse_exception_group,
    connection_lost,
    tls_connect_error,
)
from trio_websocket import ConnectionClosed, ConnectionRejected, WebSocketConnection

if sys.version_info < (3, 11):  # pragma: no cover - exercised on 3.10 only
    from exceptiongroup import BaseExceptionGroup  # type: ignore[import-not-found, unused-ignore]

__all__ = ("TrioWebsocketTransport", "TrioWebsocketTransportFactory", "__version__")

__version__ = "0.1.0"

# Perf: trio-websocket reads 4 KiB at a time by default; a multi-MB reply then takes thousands of
# reads. One large read per wake-up, as in the built-in transport.
_READ_SIZE = 65536
# Complete messages trio-websocket may hold before its reader task waits for `receive()`. The
# session's reader drains it continuously; a few slots spare a task switch per message.
_QUEUE_SIZE = 16

_ABNORMAL = 1006
_INTERRUPTED = (_ABNORMAL, "a write was cancelled part-way; the framing cannot be trusted")
_PING_TIMEOUT = (1011, "keepalive ping timeout")
_NO_CLOSE_REPLY = (_ABNORMAL, "no close frame received in reply")


class TrioWebsocketTransport:
    """One open WebSocket connection: a trio-websocket `WebSocketConnection` we opened.

    Create it with `TrioWebsocketTransportFactory.connect`; the context manager runs its reader
    and keepalive tasks and closes it. See `anytcm.transport.Transport` for each method's contract.
    """

    __slots__ = (
        "_close_timeout",
        "_closed",
        "_closing",
        "_connection",
        "_done",
        "_end",
        "_end_cause",
        "_send_lock",
        "_stream",
        "_url",
    )

    def __init__(
        self,
        connection: WebSocketConnection,
        stream: trio.abc.Stream,
        url: str,
        *,
        close_timeout: float,
    ) -> None:
        self._connection = connection
        self._stream = stream  # the socket under `connection`, ours to close
        self._url = url
        self._close_timeout = close_timeout
        self._send_lock = trio.Lock()
        self._closing = False  # aclose() was called
        self._closed = False  # the stream is closed
        self._done = trio.Event()  # set once the stream is closed
        self._end: tuple[int, str] | None = None  # (close code, reason) once the connection ended
        self._end_cause: BaseException | None = None

    # -- the Transport interface ------------------------------------------------------------

    @property
    def close_code(self) -> int | None:
        """The close code once closed (1006 when no close frame was received), else None."""
        return None if self._end is None else self._end[0]

    @property
    def close_reason(self) -> str:
        """The close reason once closed, else ''."""
        return "" if self._end is None else self._end[1]

    async def send_text(self, data: bytes) -> None:
        """Send one text message; `data` is UTF-8. Raises ConnectionLost if closed."""
        text = str(data, "utf-8")
        # Our lock, not only trio-websocket's: a cancellation that lands while waiting here has
        # written nothing, while one that comes out of `send_message` may have cut a frame.
        async with self._send_lock:
            if self._end is not None or self._closing:
                self._raise_lost()
            # Raise a pending cancellation before any byte leaves (see send_message below).
            await trio.lowlevel.checkpoint_if_cancelled()
            try:
                await self._connection.send_message(text)
            except ConnectionClosed as exc:
                # trio-websocket may raise this part-way through a write as well as before it.
                self._end_from(exc)
                self._raise_lost(outcome_unknown=True)
            except trio.Cancelled:
                # trio's send_all may have written part of the frame: nothing that follows could
                # be trusted, so the connection ends (as in the built-in transport).
                self._set_end(*_INTERRUPTED)
                await self._close_stream()
                raise

    async def receive(self) -> bytes:
        """The next text message as UTF-8 bytes. Raises ConnectionLost when the connection ends."""
        try:
            message = await self._connection.get_message()
        except ConnectionClosed as exc:
            if self._end is None and self._closing:
                # aclose() is waiting for the server's close frame: its code is the answer.
                await self._done.wait()
            self._end_from(exc)
            self._raise_lost()
        if not isinstance(message, str):
            await self._fail(1003, "binary frame received; the TCM protocol uses text frames only")
            self._raise_lost()
        return message.encode()

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        """Close with a close frame (bounded by close_timeout); idempotent."""
        if self._closing:
            await self._done.wait()  # the first call is bounded and always closes the stream
            return
        self._closing = True
        try:
            if self._end is None:
                with trio.move_on_after(self._close_timeout) as scope:
                    await self._connection.aclose(code, reason or None)
                closed = self._connection.closed
                # trio-websocket records (1000, None) when it starts closing and replaces it
                # with the server's close frame when one arrives: an unreplaced record for
                # another code means no reply came.
                replied = closed is not None and not (
                    closed.code == 1000 and closed.reason is None and code != 1000
                )
                if not scope.cancelled_caught and closed is not None and replied:
                    self._set_end(closed.code, closed.reason or "")
        finally:
            self._set_end(*_NO_CLOSE_REPLY)
            await self._close_stream()

    # -- internals ----------------------------------------------------------------------------

    def _raise_lost(self, *, outcome_unknown: bool = False) -> NoReturn:
        raise connection_lost(
            self._url, self._end, outcome_unknown=outcome_unknown
        ) from self._end_cause

    def _set_end(self, code: int, reason: str, cause: BaseException | None = None) -> None:
        """Record how the connection ended; the first cause wins."""
        if self._end is None:
            self._end = (code, reason)
            self._end_cause = cause

    def _end_from(self, exc: ConnectionClosed) -> None:
        """Record the end trio-websocket reports (a close frame's code, or 1006)."""
        closed = self._connection.closed or exc.reason
        if closed is None:
            self._set_end(_ABNORMAL, "connection closed")
        elif closed.code == _ABNORMAL and not closed.reason:
            self._set_end(_ABNORMAL, "connection closed without a close frame")
        else:
            self._set_end(closed.code, closed.reason or "")

    def _reader_failed(self, exc: Exception) -> None:
        self._set_end(_ABNORMAL, f"the trio-websocket reader failed: {exc!r}", exc)

    async def _close_stream(self) -> None:
        if not self._closed:
            self._closed = True
            # Never blocks: aclose_forcefully skips TLS close_notify. trio-websocket's reader
            # then sees a closed stream, records 1006 if nothing else was, and ends. `_done` is
            # set even when a cancellation lands here: other aclose() callers wait for it.
            try:
                await trio.aclose_forcefully(self._stream)
            finally:
                self._done.set()

    async def _fail(self, code: int, reason: str) -> None:
        """Fail the connection from our side: a close frame if possible, then close the socket."""
        self._set_end(code, reason)
        # trio-websocket's aclose sends the close frame, then waits for the reply: bounded.
        with trio.move_on_after(self._close_timeout):
            await self._connection.aclose(code, reason)
        await self._close_stream()

    def _over(self) -> bool:
        return self._end is not None or self._closing or self._connection.closed is not None

    async def _keepalive(self, interval: float, pong_timeout: float) -> None:
        """Ping every `interval` s; fail with 1011 when a pong takes over `pong_timeout` s."""
        pings = 0
        while True:
            await trio.sleep(interval)
            if self._over():
                return
            pings += 1
            # The bound covers trio-websocket's send lock too: a writer stuck on a stalled peer
            # holds it. A ping cut part-way is followed only by the close below.
            with trio.move_on_after(pong_timeout) as scope:
                try:
                    await self._connection.ping(struct.pack("!I", pings & 0xFFFFFFFF))
                except ConnectionClosed:
                    return
            if self._over():  # ended while we waited: not a keepalive failure
                return
            if scope.cancelled_caught:
                await self._fail(*_PING_TIMEOUT)
                return


# -- opening --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Target:
    host: str
    port: int
    resource: str  # path and query
    host_header: str
    secure: bool


def _parse_url(url: str) -> _Target:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("ws", "wss"):
        raise ValueError(f"not a WebSocket URL: {url!r}; use ws://host:port/ws or wss://...")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"invalid WebSocket URL {url!r}: {exc}") from None
    host = parts.hostname
    if not host:
        raise ValueError(f"invalid WebSocket URL {url!r}: no host")
    secure = scheme == "wss"
    default_port = 443 if secure else 80
    if port is None:
        port = default_port
    resource = parts.path or "/"
    if parts.query:
        resource += "?" + parts.query
    name = f"[{host}]" if ":" in host else host
    host_header = name if port == default_port else f"{name}:{port}"
    return _Target(host, port, resource, host_header, secure)


def _require_trio() -> None:
    try:
        library: str | None = sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        library = None
    if library != "trio":
        raise RuntimeError(
            f"the trio-websocket transport runs on trio only, not on {library or 'this loop'}: "
            "use the built-in transport there (transport='websockets', or unset "
            "ANYTCM_TRANSPORT)"
        )


class _Handshake:
    """Watches trio-websocket's reader task while `wrap_client_stream` waits for the handshake.

    `wrap_client_stream` starts the reader with `nursery.start_soon` and then waits for the
    server's 101 without bound. This object stands in for that nursery: it starts the reader in
    the real one, wrapped, so that the wait ends (`scope` cancelled) as soon as the reader ends
    before the handshake did, with the reason kept in `failure`. Once the connection is open, a
    reader failure ends the transport instead of the nursery.

    The reader runs shielded (`reader_scope`): when the block is left because of a cancellation,
    the shielded close handshake still needs it to read the server's close frame (unshielded, the
    close would wait out close_timeout and end as 1006). It ends when the stream is closed, and
    `reader_scope` is cancelled explicitly once the connection is closed.
    """

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self.scope = trio.CancelScope()
        self.reader_scope = trio.CancelScope(shield=True)
        self.failure: Exception | None = None
        self.transport: TrioWebsocketTransport | None = None  # set once the handshake is done

    def start_soon(self, reader: Callable[[], Awaitable[None]], *args: Any, **kwargs: Any) -> None:
        self._nursery.start_soon(self._run_reader, reader, *args)

    async def _run_reader(self, reader: Callable[..., Awaitable[None]], *args: Any) -> None:
        try:
            with self.reader_scope:
                await reader(*args)
        except Exception as exc:  # noqa: BLE001 - ConnectionRejected, an HTTP or wsproto error, a bug
            transport = self.transport
            if transport is None:
                self.failure = exc
            else:
                transport._reader_failed(exc)
                await transport._close_stream()
        finally:
            if self.transport is None:
                self.scope.cancel()


async def _open_stream(
    target: _Target, options: TransportOptions
) -> trio.SocketStream | trio.SSLStream[trio.SocketStream]:
    tcp = await trio.open_tcp_stream(target.host, target.port)
    if not target.secure:
        return tcp
    context = options.ssl_context or ssl.create_default_context()
    # https_compatible: closing never waits for the peer's close_notify (a stalled server).
    tls = trio.SSLStream(tcp, context, server_hostname=target.host, https_compatible=True)
    try:
        await tls.do_handshake()  # here, where its failure can be reported as what it is
    except BaseException:
        await trio.aclose_forcefully(tcp)
        raise
    return tls


async def _open(
    nursery: trio.Nursery, url: str, target: _Target, options: TransportOptions
) -> tuple[TrioWebsocketTransport, trio.CancelScope]:
    """Open TCP (+TLS), run the opening handshake; errors become ConnectError and subclasses.

    Returns the transport and the cancel scope of trio-websocket's (shielded) reader task.
    """
    headers = [(name.encode(), value.encode()) for name, value in options.headers.items()]
    watcher = _Handshake(nursery)
    stream: trio.SocketStream | trio.SSLStream[trio.SocketStream] | None = None
    connection: WebSocketConnection | None = None
    try:
        with trio.fail_after(options.open_timeout):
            stream = await _open_stream(target, options)
            with watcher.scope:
                connection = await trio_websocket.wrap_client_stream(
                    cast("trio.Nursery", watcher),
                    stream,
                    target.host_header,
                    target.resource,
                    extra_headers=headers,
                    message_queue_size=_QUEUE_SIZE,
                    max_message_size=options.max_message_size,
                    receive_buffer_size=_READ_SIZE,
                )
        if connection is None:  # the reader ended before the handshake completed
            raise _handshake_error(url, watcher.failure)
    except BaseException as exc:
        watcher.reader_scope.cancel()
        if stream is not None:
            await trio.aclose_forcefully(stream)
        if isinstance(exc, ConnectError) or not isinstance(exc, Exception):
            raise  # ours, or cancellation / KeyboardInterrupt: never wrapped
        error = _open_error(url, options, exc)
        if error is None:
            raise
        raise error from exc

    transport = TrioWebsocketTransport(connection, stream, url, close_timeout=options.close_timeout)
    watcher.transport = transport
    return transport, watcher.reader_scope


def _handshake_error(url: str, failure: Exception | None) -> ConnectError:
    if isinstance(failure, ConnectionRejected):
        status = failure.status_code
        error: ConnectError = HandshakeRejected(
            f"{url} answered HTTP {status} instead of upgrading to a WebSocket: check the URL "
            "path (the manager serves its WebSocket at /ws) and any proxy in between",
            status_code=status,
        )
    elif failure is None:
        error = ConnectError(
            f"{url} closed the connection during the WebSocket handshake: check that the URL "
            "points at the manager's WebSocket endpoint"
        )
    else:
        error = ConnectError(
            f"{url} did not complete the WebSocket handshake (bad reply: {failure!r}): check "
            "that the URL points at the manager's WebSocket endpoint"
        )
    error.__cause__ = failure
    return error


def _first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _open_error(url: str, options: TransportOptions, exc: Exception) -> ConnectError | None:
    if isinstance(exc, trio.TooSlowError):
        return ConnectError(
            f"timed out after {options.open_timeout:g} s opening {url}: check that the manager "
            "is running and reachable (host, port, firewall), or raise open_timeout"
        )
    # trio reports TLS failures as BrokenResourceError caused by the ssl error.
    cause = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) else exc
    tls = tls_connect_error(url, cause) if cause is not None else None
    if tls is not None:
        return tls
    if isinstance(exc, (OSError, trio.BrokenResourceError)):
        # trio.open_tcp_stream: OSError("all attempts ... failed") from a group of the attempts.
        detail = _first_leaf(exc.__cause__) if exc.__cause__ is not None else exc
        return ConnectError(
            f"could not connect to {url} ({detail}): check that the manager is running and "
            "that the host and port are right"
        )
    return None


# -- the context manager ------------------------------------------------------------------------


@asynccontextmanager
async def _connection(
    url: str, target: _Target, options: TransportOptions
) -> AsyncIterator[Transport]:
    _require_trio()
    transport: TrioWebsocketTransport | None = None
    try:
        async with trio.open_nursery() as nursery:
            transport, reader_scope = await _open(nursery, url, target, options)
            keepalive = trio.CancelScope()
            if options.ping_interval is not None:

                async def keep_alive(interval: float) -> None:
                    assert transport is not None
                    with keepalive:
                        await transport._keepalive(interval, options.ping_timeout)

                nursery.start_soon(keep_alive, options.ping_interval)
            try:
                yield transport
            finally:
                keepalive.cancel()
                # Shielded but bounded by close_timeout: a clean close frame even when leaving
                # because of a cancellation, which then propagates unchanged. The reader task
                # still runs here, shielded (it reads the server's close frame).
                try:
                    with trio.CancelScope(shield=True):
                        await transport.aclose()
                finally:
                    reader_scope.cancel()
                    nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        single = collapse_exception_group(group)
        if single is None:
            raise
        context = single.__context__
        try:
            raise single  # the group is an artefact of the nursery, not a cause
        finally:
            single.__context__ = context
            del single, context
    finally:
        if transport is not None:
            await transport._close_stream()  # only if an exception bypassed aclose


class TrioWebsocketTransportFactory:
    """The `trio-websocket` transport (entry point `anytcm.transports`: `trio-websocket`)."""

    name = "trio-websocket"

    def connect(
        self, url: str, options: TransportOptions
    ) -> contextlib.AbstractAsyncContextManager[Transport]:
        """Open a connection to a ws:// or wss:// URL; the context manager owns its tasks.

        Raises ValueError for another scheme or for `compression=True` (trio-websocket has no
        permessage-deflate), RuntimeError when entered outside trio, `ConnectError` when the
        socket or TLS cannot be opened or the handshake times out, `HandshakeRejected` when the
        server answers HTTP.
        """
        target = _parse_url(url)  # fail early, before the context manager is entered
        if options.compression:
            raise ValueError(
                "the trio-websocket transport has no permessage-deflate: pass compression=False "
                "(the default; compression slows TCM traffic anyway) or use the built-in "
                "'websockets' transport"
            )
        return _connection(url, target, options)
