"""A plain-TCP `anyio.abc.ByteStream` built on an asyncio `Protocol`, for the asyncio backend.

A fast path (`anytcm._fast`; the general path is anyio's own socket stream). Why: on asyncio
anyio's stream resumes reading before every `receive()` that has to wait and pauses it again
afterwards, which is two `epoll_ctl` system calls and selector bookkeeping per message. A TCM
connection has exactly one reader that is always waiting, so here reading stays on and flow
control only kicks in when unread bytes pile up beyond `_HIGH_WATER` (a reader that stopped
reading), as asyncio's own streams do.

A reader may also hand over its job entirely (`on_data`): every chunk is then passed to a
callback from `data_received` itself, and `receive()` only waits for the end of the connection.
The WebSocket transport uses that to parse frames and wake the requester in the same event-loop
pass as the socket read, the way websockets' own asyncio client does: one loop iteration, one
`epoll_wait` and one task step per reply fewer than a reader task in between.

Only plain TCP goes through here; TLS keeps anyio's stream (its error mapping and TLS handling
are what `wss://` relies on). trio needs nothing of the kind: its socket stream reads directly.
The stream raises the exceptions anyio's streams raise (`EndOfStream`, `BrokenResourceError`,
`ClosedResourceError`), so the transport above cannot tell the two apart.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence

import anyio
import anyio.abc
import anyio.lowlevel

__all__ = ("connect_tcp",)

# Unread bytes that pause reading until the reader catches up (and resume below _LOW_WATER).
_HIGH_WATER = 8 << 20
_LOW_WATER = 1 << 20
# Unsent bytes that make `send` wait for the socket to drain.
_WRITE_HIGH_WATER = 1 << 20


class _Protocol(asyncio.Protocol):
    """Buffers what arrives and wakes the one waiting reader or writer."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.eof = False
        self.lost: BaseException | None = None
        self.closed = False  # connection_lost was called
        self.reader: asyncio.Future[None] | None = None
        self.drain: asyncio.Future[None] | None = None
        self.paused = False
        self.on_data: Callable[[bytes], None] | None = None  # takes every chunk when set

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=_WRITE_HIGH_WATER)

    def data_received(self, data: bytes) -> None:
        on_data = self.on_data
        if on_data is not None:
            on_data(data)
            return
        self.chunks.append(data)
        self.buffered += len(data)
        if self.buffered > _HIGH_WATER and not self.paused:
            self.paused = True
            assert self.transport is not None
            self.transport.pause_reading()
        self._wake_reader()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake_reader()
        return False  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.lost = exc
        self._wake_reader()
        drain = self.drain
        if drain is not None and not drain.done():
            drain.set_result(None)

    def pause_writing(self) -> None:
        if self.drain is None or self.drain.done():
            self.drain = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        drain = self.drain
        if drain is not None and not drain.done():
            drain.set_result(None)
        self.drain = None

    def _wake_reader(self) -> None:
        reader = self.reader
        if reader is not None and not reader.done():
            reader.set_result(None)


class AsyncioSocketStream(anyio.abc.ByteStream):
    """The byte stream of one TCP connection; one reader and any number of writers."""

    def __init__(self, transport: asyncio.Transport, protocol: _Protocol) -> None:
        self._transport = transport
        self._protocol = protocol
        self._closed = False

    async def receive(self, max_bytes: int = 65536) -> bytes:
        protocol = self._protocol
        chunks = protocol.chunks
        while not chunks:
            if self._closed:
                raise anyio.ClosedResourceError
            if protocol.closed or protocol.eof:
                if protocol.lost is not None:
                    raise anyio.BrokenResourceError from protocol.lost
                raise anyio.EndOfStream
            if protocol.reader is not None:
                raise anyio.BusyResourceError("reading from")
            waiter = protocol.reader = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                protocol.reader = None
        data = chunks.popleft()
        if len(data) > max_bytes:
            chunks.appendleft(data[max_bytes:])
            data = data[:max_bytes]
        protocol.buffered -= len(data)
        if protocol.paused and protocol.buffered < _LOW_WATER:
            protocol.paused = False
            self._transport.resume_reading()
        return data

    async def send(self, item: bytes) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        protocol = self._protocol
        if protocol.closed or self._transport.is_closing():
            raise anyio.BrokenResourceError from protocol.lost
        self._transport.write(item)
        drain = protocol.drain
        if drain is not None:
            await drain
            if protocol.closed:
                raise anyio.BrokenResourceError from protocol.lost

    def on_data(self, callback: Callable[[bytes], None]) -> None:
        """Pass every chunk to `callback` from now on (bytes buffered so far first), in order.

        `callback` runs inside the event loop's read callback, not in a task: it must not block
        and should not raise (an exception there fails the connection). `receive()` then
        returns no more data: it waits for the end of the connection and raises as usual.
        """
        protocol = self._protocol
        chunks = protocol.chunks
        while chunks:
            callback(chunks.popleft())
        protocol.buffered = 0
        protocol.on_data = callback
        if protocol.paused:
            protocol.paused = False
            self._transport.resume_reading()

    def write_nowait(self, chunks: Sequence[bytes]) -> None:
        """Queue bytes for sending without waiting for the socket to drain (from a callback).

        Each chunk goes out whole and in order with every other write, so a frame handed over
        as one chunk is never interleaved with another. Nothing is written once closing.
        """
        transport = self._transport
        if self._closed or self._protocol.closed or transport.is_closing():
            return
        for chunk in chunks:
            if chunk:
                transport.write(chunk)

    def close_soon(self) -> None:
        """Start closing from a callback: unsent bytes go out first, then the socket closes.

        A waiting `receive()` then raises EndOfStream (or BrokenResourceError if the socket
        failed meanwhile); `aclose()` still has to be called by the owner.
        """
        self._transport.close()

    async def send_eof(self) -> None:
        if self._transport.can_write_eof():
            self._transport.write_eof()

    async def aclose(self) -> None:
        """Close now; unsent bytes are dropped rather than left to a peer that stopped reading."""
        if not self._closed:
            self._closed = True
            if self._transport.get_write_buffer_size():
                self._transport.abort()
            else:
                self._transport.close()
            self._protocol._wake_reader()
        await anyio.lowlevel.checkpoint()


async def connect_tcp(host: str, port: int) -> AsyncioSocketStream:
    """Open a TCP connection (TCP_NODELAY is set by asyncio); raises OSError as anyio's does."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_connection(_Protocol, host, port)
    assert isinstance(transport, asyncio.Transport)
    return AsyncioSocketStream(transport, protocol)
