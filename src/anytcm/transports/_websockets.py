"""The built-in transport: websockets' sans-IO `ClientProtocol` driven over anyio byte streams.

Why this combination:

* **anyio streams** give one code path for asyncio and trio. websockets' own asyncio and trio
  connections are two separate implementations, and trio-websocket runs on trio only.
* **websockets' sans-IO engine** is the fastest pure-Python frame parser at hand (its C
  `speedups` module masks payloads); see design.md for how it compares with trio-websocket.
* **No reader task.** The session already owns a reader task that calls `receive()`; running a
  second one here would cost a task switch and a queue hop per message. `receive()` reads the
  socket itself, feeds the protocol and returns the next text message. Control frames are handled
  on the way: pings are answered, pongs wake the keepalive, a close frame ends the connection.
  The consequence (stated in `Transport`) is that pongs are only noticed while someone is in
  `receive()`.
* **Messages by callback** (`deliver_to`, see `anytcm.transport.MessageSink`): on the native
  asyncio stream, frames are parsed in the event loop's read callback and each text message is
  handed to the session there, so the requester wakes in the same loop pass as the read, with
  no task step in between; `receive()` then only waits for the end. Replies the protocol queues
  there (pongs, the close echo) are written at once: the asyncio stream writes each frame
  whole, so they cannot split a frame another task is sending. On the other streams (trio, TLS,
  anyio's) the reading task hands each message over from inside `receive()`, which it then
  leaves only when the connection ends.

Concurrency: `send_text` may be called from several tasks; the protocol mutation and the stream
write happen together under one send lock, and replies the protocol queues while receiving
(pongs, the close echo) are written under the same lock. A write cancelled
part-way (possible when the socket buffer is full) would leave half a frame on the wire, so it
ends the connection rather than corrupting the next frame. A write blocked on a stalled peer is
ended by the keepalive or by `aclose`, which close the socket.

Errors are translated here and in `_opening`: `ConnectError`/`HandshakeRejected` while opening,
`ConnectionLost` (close code and reason; 1006 when no close frame came) once open. The
connection's context manager owns the keepalive task and never lets an ExceptionGroup or a task
escape.

Text payloads are returned as received, without UTF-8 validation: the JSON decoder above
validates them anyway, and decoding twice would cost a pass over every message.
"""

from __future__ import annotations

import contextlib
import struct
import sys
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import NoReturn, cast

import anyio
import anyio.abc
import anyio.lowlevel
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State

from ..errors import ConnectionLost
from . import (
    Transport,
    TransportOptions,
    _asyncio_stream,
    collapse_exception_group,
    connection_lost,
)
from ._opening import HANDSHAKE_READ_SIZE, open_websocket, parse_url

if sys.version_info < (3, 11):  # pragma: no cover - exercised on 3.10 only
    # anyio depends on the backport below 3.11.
    from exceptiongroup import BaseExceptionGroup  # type: ignore[import-not-found, unused-ignore]

__all__ = ("WebsocketsTransport", "WebsocketsTransportFactory")

# One large read per wake-up: a typical reply arrives in one read and parses in one
# `receive_data` call. A read that fills its buffer means more is waiting (a multi-MB reply):
# the next read asks for 4x as much, up to _READ_MAX, so such a reply takes a few reads and
# scheduler passes rather than one per 64 KiB; a read that does not fill it starts over.
_READ_SIZE = HANDSHAKE_READ_SIZE
_READ_MAX = 1 << 20

# Module-level aliases: identity comparisons against locals are the cheapest dispatch.
_TEXT = Opcode.TEXT
_CONT = Opcode.CONT
_BINARY = Opcode.BINARY
_PING = Opcode.PING
_PONG = Opcode.PONG
_CLOSE = Opcode.CLOSE
_OPEN = State.OPEN

_ABNORMAL = 1006
_INTERRUPTED = (_ABNORMAL, "a write was cancelled part-way; the framing cannot be trusted")
_PING_TIMEOUT = (1011, "keepalive ping timeout")
_STREAM_ERRORS = (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)


def new_send_lock() -> anyio.Lock:
    """The lock of a connection's writers: first come, first served.

    Writers are nearly never contended, so a free lock is taken without a pass through the
    event loop (`fast_acquire`, and `acquire_nowait` in `send_text`): `_write` checks for
    cancellation itself before any byte leaves.
    """
    return anyio.Lock(fast_acquire=True)


class WebsocketsTransport:
    """One open WebSocket connection: websockets' `ClientProtocol` over an anyio byte stream.

    Create it with `WebsocketsTransportFactory.connect`; the context manager runs its keepalive
    and closes it. See `anytcm.transport.Transport` for the contract of each method.
    """

    __slots__ = (
        "_close_timeout",
        "_closed",
        "_closing",
        "_done",
        "_end",
        "_end_cause",
        "_fragments",
        "_handler",
        "_messages",
        "_ping_payload",
        "_pings",
        "_pong_waiter",
        "_protocol",
        "_read_size",
        "_reading",
        "_send_lock",
        "_stream",
        "_url",
    )

    def __init__(
        self,
        stream: anyio.abc.ByteStream,
        protocol: ClientProtocol,
        url: str,
        *,
        close_timeout: float,
    ) -> None:
        self._stream = stream
        self._protocol = protocol
        self._url = url
        self._close_timeout = close_timeout
        self._send_lock = new_send_lock()
        self._messages: deque[bytes] = deque()  # complete text messages not yet returned
        self._handler: Callable[[bytes], None] | None = None  # takes messages (deliver_to)
        self._fragments: list[bytes | bytearray | memoryview] | None = (
            None  # a fragmented message in progress
        )
        self._reading = False  # a task is inside stream.receive()
        self._read_size = _READ_SIZE  # the next read's size (see _READ_MAX)
        self._closing = False  # aclose() was called
        self._closed = False  # the stream is closed
        self._done = anyio.Event()  # set once the stream is closed
        self._end: tuple[int, str] | None = None  # (close code, reason) once the connection ended
        self._end_cause: BaseException | None = None
        self._pong_waiter: anyio.Event | None = None
        self._ping_payload = b""
        self._pings = 0

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
        lock = self._send_lock
        try:
            lock.acquire_nowait()  # the usual case: no other writer, nothing to wait for
        except anyio.WouldBlock:
            await lock.acquire()
        try:
            protocol = self._protocol
            if self._end is not None or protocol.state is not _OPEN:
                self._raise_lost()
            protocol.send_text(data)
            await self._write(protocol.data_to_send())
        finally:
            lock.release()

    async def receive(self) -> bytes:
        """The next text message as UTF-8 bytes. Raises ConnectionLost when the connection ends.

        Once `deliver_to` is on, messages go to the handler and this only returns by raising.
        """
        messages = self._messages
        while not messages:
            if self._end is not None:
                self._raise_lost()
            if self._reading:
                # Only aclose() reads besides the (single) receiving task: wait for it to end.
                await self._done.wait()
                continue
            await self._pump()
        return messages.popleft()

    def deliver_to(self, handler: Callable[[bytes], None]) -> bool:
        """Hand every text message to `handler` as it is parsed (see `MessageSink`).

        On the native asyncio stream (plain ws:// on asyncio) parsing runs in the read
        callback. Elsewhere (trio, TLS) the task in `receive()` hands each message over as it
        parses it and stays in `receive()` until the connection ends: per message, no return
        to that task's loop and no queue hop. Messages already received are handed over
        first, in order. False if a handler is already set.
        """
        if self._handler is not None:
            return False
        self._handler = handler
        messages = self._messages
        while messages:
            handler(messages.popleft())
        stream = self._stream
        if isinstance(stream, _asyncio_stream.AsyncioSocketStream):
            stream.on_data(self._on_data)
        return True

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        """Close with a close frame (bounded by close_timeout); idempotent."""
        if self._closing:
            await self._done.wait()  # the first call is bounded and always closes the stream
            return
        self._closing = True
        try:
            if self._end is None:
                with anyio.move_on_after(self._close_timeout):
                    await self._close_handshake(code, reason)
        finally:
            self._set_end(_ABNORMAL, "no close frame received in reply")
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
            # A message cut short by the end is never delivered: drop its fragments now rather
            # than when the transport is collected (after an over-limit reply, ~max_size bytes).
            self._fragments = None
            waiter = self._pong_waiter
            if waiter is not None:  # let the keepalive see the end at once
                waiter.set()

    async def _write(
        self, chunks: Sequence[bytes], *, interrupted: tuple[int, str] = _INTERRUPTED
    ) -> None:
        """Write protocol output; the caller holds the send lock. Raises ConnectionLost.

        A write cancelled part-way may leave half a frame on the wire, after which no frame can
        be trusted: the connection then ends with `interrupted` (code, reason).
        """
        # No shielding cancel scope per write (on trio it would cost more than the write).
        # Raise a pending cancellation here, before any byte leaves; from this point to the
        # stream's own cancellation check nothing yields, so a cancellation coming out of
        # `send` means the socket was full and the write may be partial.
        await anyio.lowlevel.checkpoint_if_cancelled()
        stream = self._stream
        try:
            for chunk in chunks:
                if chunk:  # b"" means "send EOF": the stream is closed right after anyway
                    await stream.send(chunk)
        except _STREAM_ERRORS as exc:
            self._set_end(_ABNORMAL, f"write failed: {exc!r}", exc)
            await self._close_stream()
            self._raise_lost(outcome_unknown=True)  # part of it, or all of it, may have left
        except BaseException:  # cancellation: re-raised unchanged
            self._set_end(*interrupted)
            await self._close_stream()
            raise
        if self._closed:  # closed under us (keepalive, aclose, the peer): it may have gone out
            self._set_end(_ABNORMAL, "connection closed during a write")
            self._raise_lost(outcome_unknown=True)

    async def _pump(self) -> None:
        """Read once from the stream and process what arrived."""
        protocol = self._protocol
        self._reading = True
        size = self._read_size
        try:
            data = await self._stream.receive(size)
        except anyio.EndOfStream:
            protocol.receive_eof()
            protocol.data_to_send()  # at most an EOF marker: the stream is closed below
            self._set_end(_ABNORMAL, "connection closed without a close frame")
            await self._close_stream()
            return
        except _STREAM_ERRORS as exc:
            self._set_end(_ABNORMAL, f"connection lost: {exc!r}", exc)
            await self._close_stream()
            return
        finally:
            self._reading = False
        if len(data) < size:
            self._read_size = _READ_SIZE
        elif size < _READ_MAX:
            self._read_size = size << 2

        out = self._absorb(data)
        if out:  # pongs, the close echo, a close frame from a failure
            with contextlib.suppress(ConnectionLost):
                async with self._send_lock:
                    await self._write(out)
        if self._end is not None:
            # We do not wait for the server to close TCP after the closing handshake: every
            # frame that matters has been read, and a blocked wait here would gain nothing.
            await self._close_stream()

    def _absorb(self, data: bytes) -> list[bytes]:
        """Feed received bytes to the protocol and handle its events; returns what to send.

        Shared by `_pump` (a task) and `_on_data` (the read callback), which differ only in
        how they write the replies and close the stream.
        """
        protocol = self._protocol
        protocol.receive_data(data)
        events = protocol.events_received()
        if events:
            # Only frames once the handshake is done (Request/Response come before).
            self._process(cast("list[Frame]", events))
        if protocol.parser_exc is not None and self._end is None:
            # The protocol failed the connection itself (message too big, bad frame, ...) and
            # queued a close frame carrying the code.
            sent = protocol.close_sent
            if sent is not None:
                self._set_end(sent.code, sent.reason, protocol.parser_exc)
            else:
                self._set_end(_ABNORMAL, str(protocol.parser_exc), protocol.parser_exc)
        return protocol.data_to_send()

    def _on_data(self, data: bytes) -> None:
        """The asyncio stream's read callback once `deliver_to` is on: `_pump` without a task.

        Ends the connection the same way: a close frame or a protocol failure sets the end,
        and closing the stream makes the reader's waiting `receive()` report it.
        """
        out = self._absorb(data)
        stream = cast("_asyncio_stream.AsyncioSocketStream", self._stream)
        if out:  # pongs, the close echo, a close frame from a failure
            stream.write_nowait(out)
        if self._end is not None:
            stream.close_soon()

    def _process(self, events: list[Frame]) -> None:
        messages = self._messages
        handler = self._handler
        for frame in events:
            opcode = frame.opcode
            if opcode is _TEXT:
                if frame.fin:
                    # The common case: one frame per message, one copy to `bytes`.
                    if handler is not None:
                        handler(bytes(frame.data))
                    else:
                        messages.append(bytes(frame.data))
                else:
                    self._fragments = [frame.data]
            elif opcode is _CONT:
                fragments = self._fragments
                if fragments is not None:  # None only after a BINARY start, which ended us
                    fragments.append(frame.data)
                    if frame.fin:
                        self._fragments = None
                        if handler is not None:
                            handler(b"".join(fragments))
                        else:
                            messages.append(b"".join(fragments))
            elif opcode is _PONG:
                waiter = self._pong_waiter
                if waiter is not None and frame.data == self._ping_payload:
                    waiter.set()
            elif opcode is _CLOSE:
                received = self._protocol.close_rcvd
                if received is not None:
                    self._set_end(received.code, received.reason)
                return  # the protocol discards anything after a close frame
            elif opcode is _BINARY:
                reason = "binary frame received; the TCM protocol uses text frames only"
                if self._protocol.state is _OPEN:
                    self._protocol.fail(1003, reason)
                self._set_end(1003, reason)
                return
            # PING: the protocol queued the pong already; it is written by _pump.

    async def _close_handshake(self, code: int, reason: str) -> None:
        """Send a close frame and read until the reply (the caller bounds the time)."""
        protocol = self._protocol
        try:
            async with self._send_lock:
                if self._end is not None:
                    return
                if protocol.state is _OPEN:
                    protocol.send_close(code, reason)
                    await self._write(protocol.data_to_send())
        except ConnectionLost:
            return
        if self._reading:  # the receiving task will read the reply and close the stream
            await self._done.wait()
            return
        while self._end is None:
            await self._pump()

    async def _close_stream(self) -> None:
        if not self._closed:
            self._closed = True
            # Never blocks: TLS streams are opened with tls_standard_compatible=False, so no
            # close_notify exchange is attempted. `_done` is set even when a cancellation lands
            # in the close: other aclose() callers wait for it (shielded) and would hang forever.
            try:
                await anyio.aclose_forcefully(self._stream)
            finally:
                self._done.set()

    async def _fail(self, code: int, reason: str) -> None:
        """Fail the connection from our side: a close frame if possible, then close the socket."""
        self._set_end(code, reason)
        protocol = self._protocol
        with anyio.move_on_after(self._close_timeout):
            async with self._send_lock:
                if protocol.state is _OPEN:
                    protocol.fail(code, reason)
                    with contextlib.suppress(ConnectionLost):
                        await self._write(protocol.data_to_send())
        await self._close_stream()

    def _over(self) -> bool:
        return self._end is not None or self._closing

    async def _keepalive(self, interval: float, pong_timeout: float) -> None:
        """Ping every `interval` s; fail with 1011 when a pong takes over `pong_timeout` s."""
        protocol = self._protocol
        while True:
            await anyio.sleep(interval)
            if self._over():
                return
            self._pings += 1
            payload = struct.pack("!I", self._pings & 0xFFFFFFFF)
            waiter = anyio.Event()
            self._ping_payload = payload
            self._pong_waiter = waiter
            try:
                # The bound covers the send lock too: a writer stuck on a stalled peer holds it.
                with anyio.move_on_after(pong_timeout):
                    async with self._send_lock:
                        if self._end is not None or protocol.state is not _OPEN:
                            return
                        protocol.send_ping(payload)
                        await self._write(protocol.data_to_send(), interrupted=_PING_TIMEOUT)
                    await waiter.wait()
            except ConnectionLost:
                return
            finally:
                self._pong_waiter = None
            if self._over():  # ended while we waited: not a keepalive failure
                return
            if not waiter.is_set():
                await self._fail(*_PING_TIMEOUT)
                return


# -- opening --------------------------------------------------------------------------------


async def _open(url: str, options: TransportOptions) -> WebsocketsTransport:
    """Open the connection (`_opening`) and wrap it; errors are ConnectError and subclasses."""
    stream, protocol = await open_websocket(url, options)
    transport = WebsocketsTransport(stream, protocol, url, close_timeout=options.close_timeout)
    # The Response event, and any frame the server sent right behind it in the same read.
    frames = [event for event in protocol.events_received() if isinstance(event, Frame)]
    if frames:
        transport._process(frames)
    return transport


# -- the context manager ------------------------------------------------------------------------


@asynccontextmanager
async def _connection(url: str, options: TransportOptions) -> AsyncIterator[Transport]:
    transport = await _open(url, options)
    try:
        async with anyio.create_task_group() as tg:
            if options.ping_interval is not None:
                tg.start_soon(transport._keepalive, options.ping_interval, options.ping_timeout)
            try:
                yield transport
            finally:
                tg.cancel_scope.cancel()  # the keepalive
                # Shielded but bounded by close_timeout: a clean close frame even when leaving
                # because of a cancellation, which then propagates unchanged.
                with anyio.CancelScope(shield=True):
                    await transport.aclose()
    except BaseExceptionGroup as group:
        single = collapse_exception_group(group)
        if single is None:
            raise
        context = single.__context__
        try:
            raise single  # the group is an artefact of the task group, not a cause
        finally:
            single.__context__ = context
            del single, context
    finally:
        await transport._close_stream()  # only if an exception bypassed aclose


class WebsocketsTransportFactory:
    """The built-in `websockets` transport (entry point `anytcm.transports`: `websockets`)."""

    name = "websockets"

    def connect(
        self, url: str, options: TransportOptions
    ) -> contextlib.AbstractAsyncContextManager[Transport]:
        """Open a connection to a ws:// or wss:// URL; the context manager owns its tasks.

        Raises ValueError for another scheme, `ConnectError` when the socket or TLS cannot be
        opened or the handshake times out, `HandshakeRejected` when the server answers HTTP.
        """
        parse_url(url)  # fail early, before the context manager is entered
        return _connection(url, options)
