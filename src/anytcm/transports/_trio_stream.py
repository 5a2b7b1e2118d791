"""A plain-TCP `anyio.abc.SocketStream` on a stdlib socket and trio's I/O waits, for trio.

A fast path (`anytcm._fast`; the general path is anyio's `SocketStream` over `trio.socket`).
Why: trio's socket layer is built for any number of readers and writers and for calls that
usually succeed at once, and a TCM connection is the opposite case. Per small request:

* every `receive()` first tries `recv`, which fails with EAGAIN because the reply is not there
  yet (one wasted system call), then waits for the socket and calls `recv` again;
* every `send()` goes through `_nonblocking_helper`, two conflict detectors and, after a send
  that succeeded at once, a `cancel_shielded_checkpoint` (a pass through the scheduler).

Here the one reader waits first (`trio.lowlevel.wait_readable`, a checkpoint) and then reads,
and `send` writes straight away, waiting (`wait_writable`) only when the kernel buffer is full.

`send` is therefore not a checkpoint when everything goes out at once (as with the asyncio
stream); the transport checks for cancellation before writing and always receives afterwards.

Connecting still goes through `anyio.connect_tcp` (name resolution, happy eyeballs and the
`OSError` it raises, which `_opening` turns into `ConnectError`); the connected socket is
then taken over. Only plain TCP goes through here; TLS keeps anyio's stream. The stream raises
the exceptions anyio's trio stream raises (`EndOfStream`, `BrokenResourceError`,
`ClosedResourceError`, `BusyResourceError`), so the transport above cannot tell them apart.
"""

from __future__ import annotations

import socket

import anyio
import anyio.abc
import trio

__all__ = ("TrioSocketStream", "connect_tcp")

_wait_readable = trio.lowlevel.wait_readable
_wait_writable = trio.lowlevel.wait_writable


class TrioSocketStream(anyio.abc.SocketStream):
    """The byte stream of one connected TCP socket; one reader and one writer at a time.

    `aclose` wakes a task waiting to read with `ClosedResourceError` and one waiting to write
    (a peer that stopped reading) with `ClosedResourceError` too, as anyio's trio stream does.
    Bytes not yet handed to the kernel are dropped.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._fd = sock.fileno()  # trio's waits look an int up directly
        self._closed = False
        self._reading = False
        self._writing = False

    @property
    def _raw_socket(self) -> socket.socket:
        return self._sock

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if max_bytes < 1:
            raise ValueError("max_bytes must be a positive integer")
        if self._reading:
            raise anyio.BusyResourceError("reading from")
        self._reading = True
        try:
            while True:
                if self._closed:
                    raise anyio.ClosedResourceError
                # Wait first: the reader is nearly always ahead of the data, so trying
                # `recv` first would fail with EAGAIN every time.
                try:
                    await _wait_readable(self._fd)
                except trio.ClosedResourceError:  # aclose() from another task
                    raise anyio.ClosedResourceError from None
                except OSError as exc:
                    raise anyio.BrokenResourceError from exc
                if self._closed:  # closed while this task was being woken
                    raise anyio.ClosedResourceError
                try:
                    data = self._sock.recv(max_bytes)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    raise anyio.BrokenResourceError from exc
                break
        finally:
            self._reading = False
        if not data:
            raise anyio.EndOfStream
        return data

    async def send(self, item: bytes) -> None:
        if self._writing:
            raise anyio.BusyResourceError("writing to")
        if self._closed:
            raise anyio.ClosedResourceError
        # Write at once; only a full kernel buffer makes this wait (and checkpoint).
        try:
            sent = self._sock.send(item)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            raise anyio.BrokenResourceError from exc
        if sent != len(item):
            await self._send_rest(memoryview(item)[sent:])

    async def _send_rest(self, view: memoryview) -> None:
        self._writing = True
        try:
            while view:
                try:
                    await _wait_writable(self._fd)
                except trio.ClosedResourceError:  # aclose() from another task
                    raise anyio.ClosedResourceError from None
                except OSError as exc:
                    raise anyio.BrokenResourceError from exc
                if self._closed:
                    raise anyio.ClosedResourceError
                try:
                    sent = self._sock.send(view)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    raise anyio.BrokenResourceError from exc
                view = view[sent:]
        finally:
            self._writing = False

    async def send_eof(self) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            raise anyio.BrokenResourceError from exc

    async def aclose(self) -> None:
        """Close now (idempotent); a task waiting on the socket wakes with ClosedResourceError."""
        if not self._closed:
            self._closed = True
            # Wake the waiters before the fd number can be reused; no checkpoint in between.
            trio.lowlevel.notify_closing(self._fd)
            self._sock.close()
        await trio.lowlevel.checkpoint()


async def connect_tcp(host: str, port: int) -> TrioSocketStream:
    """Open a TCP connection with TCP_NODELAY; raises OSError as `anyio.connect_tcp` does."""
    connected = await anyio.connect_tcp(host, port)
    # Take the connected socket over: detaching leaves anyio's stream (dropped here) without a
    # descriptor, so nothing else ever closes or waits on it. No checkpoint from here on.
    raw = connected.extra(anyio.abc.SocketAttribute.raw_socket)
    sock = socket.socket(raw.family, raw.type, raw.proto, raw.detach())
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except BaseException:
        sock.close()
        raise
    return TrioSocketStream(sock)
