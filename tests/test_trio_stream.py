"""The trio-native plain-TCP stream (`anytcm.transports._trio_stream`), over real loopback sockets.

The stream only exists on trio, so its contract is tested on trio (this module's
`anyio_backend` fixture); the one asyncio test checks that plain ws:// on asyncio still takes
the asyncio stream. Both streams are fast paths: with `ANYTCM_NO_FAST_PATHS=1` the transport
takes anyio's own stream instead, which those two tests check then. Peers are plain blocking
stdlib sockets: one that must not read simply never calls `recv`, and a slow reader runs in a
thread.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, cast

import anyio
import anyio.abc
import pytest
import trio
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.server import ServerProtocol

from anytcm import _fast
from anytcm.errors import ConnectError
from anytcm.transport import TransportOptions
from anytcm.transports import _asyncio_stream, _trio_stream
from anytcm.transports._websockets import WebsocketsTransport, WebsocketsTransportFactory

pytestmark = pytest.mark.anyio

ASYNCIO = pytest.param(("asyncio", {"debug": True}), id="asyncio")


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, object]]:
    """trio only: the stream is trio's (conftest's fixture would add asyncio)."""
    return ("trio", {})


@asynccontextmanager
async def connected(
    *, peer_rcvbuf: int | None = None
) -> AsyncIterator[tuple[_trio_stream.TrioSocketStream, socket.socket]]:
    """A stream connected to a blocking stdlib socket on 127.0.0.1; both closed at the end."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        if peer_rcvbuf is not None:  # before accept, so the window is small from the start
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, peer_rcvbuf)
        stream = await _trio_stream.connect_tcp("127.0.0.1", listener.getsockname()[1])
        peer, _ = listener.accept()  # the kernel completed the handshake already
    try:
        with peer:
            yield stream, peer
    finally:
        await stream.aclose()


def reset(peer: socket.socket) -> None:
    """Close `peer` with a TCP reset (SO_LINGER 0)."""
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    peer.close()


# -- the stream's contract ------------------------------------------------------------------------


async def test_round_trip() -> None:
    async with connected() as (stream, peer):
        await stream.send(b"hello")
        assert peer.recv(100) == b"hello"
        peer.sendall(b"world!")
        with anyio.fail_after(5):
            assert await stream.receive(4) == b"worl"  # at most max_bytes
            assert await stream.receive() == b"d!"


async def test_socket_options_and_attributes() -> None:
    async with connected() as (stream, peer):
        raw = stream.extra(anyio.abc.SocketAttribute.raw_socket)
        assert isinstance(raw, socket.socket)
        assert raw.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assert raw.getblocking() is False
        assert stream.extra(anyio.abc.SocketAttribute.family) == socket.AF_INET
        assert stream.extra(anyio.abc.SocketAttribute.local_address) == peer.getpeername()
        assert stream.extra(anyio.abc.SocketAttribute.remote_address) == peer.getsockname()
        assert stream.extra(anyio.abc.SocketAttribute.local_port) == peer.getpeername()[1]
        assert stream.extra(anyio.abc.SocketAttribute.remote_port) == peer.getsockname()[1]


async def test_big_send_to_a_slow_reader_arrives_intact() -> None:
    payload = os.urandom(1 << 20) * 32  # 32 MiB, far beyond the kernel buffers
    digest = hashlib.sha256()
    received = 0

    def read_slowly(peer: socket.socket) -> None:
        nonlocal received
        while received < len(payload):
            data = peer.recv(256 << 10)
            if not data:
                return
            digest.update(data)
            received += len(data)
            time.sleep(0.001)

    async with connected(peer_rcvbuf=64 << 10) as (stream, peer):
        reader = threading.Thread(target=read_slowly, args=(peer,), daemon=True)
        reader.start()
        with anyio.fail_after(60):
            await stream.send(payload)
            await anyio.to_thread.run_sync(reader.join, abandon_on_cancel=True)
    assert received == len(payload)
    assert digest.digest() == hashlib.sha256(payload).digest()


async def test_send_eof_half_closes() -> None:
    async with connected() as (stream, peer):
        await stream.send(b"last")
        await stream.send_eof()
        assert peer.recv(100) == b"last"
        assert peer.recv(100) == b""  # the peer sees the end of our side
        peer.sendall(b"still open")
        with anyio.fail_after(5):
            assert await stream.receive() == b"still open"


async def test_peer_eof_is_end_of_stream() -> None:
    async with connected() as (stream, peer):
        peer.sendall(b"bye")
        peer.shutdown(socket.SHUT_WR)
        with anyio.fail_after(5):
            assert await stream.receive() == b"bye"
            with pytest.raises(anyio.EndOfStream):
                await stream.receive()
            with pytest.raises(anyio.EndOfStream):  # and again
                await stream.receive()


async def test_peer_reset_wakes_a_blocked_reader_and_breaks_sends() -> None:
    async with connected() as (stream, peer):
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:

                async def reset_soon() -> None:
                    await anyio.wait_all_tasks_blocked()
                    reset(peer)

                tg.start_soon(reset_soon)
                with pytest.raises(anyio.BrokenResourceError) as caught:
                    await stream.receive()
        assert isinstance(caught.value.__cause__, ConnectionResetError)
        with pytest.raises(anyio.BrokenResourceError) as caught:
            await stream.send(b"x")
        assert isinstance(caught.value.__cause__, OSError)


async def test_aclose_wakes_a_blocked_receiver() -> None:
    async with connected() as (stream, _peer):
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:

                async def close_soon() -> None:
                    await anyio.wait_all_tasks_blocked()
                    await stream.aclose()

                tg.start_soon(close_soon)
                with pytest.raises(anyio.ClosedResourceError):
                    await stream.receive()


async def test_aclose_wakes_a_sender_blocked_on_a_peer_that_never_reads() -> None:
    async with connected(peer_rcvbuf=64 << 10) as (stream, _peer):
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:

                async def close_soon() -> None:
                    await anyio.wait_all_tasks_blocked()
                    await stream.aclose()

                tg.start_soon(close_soon)
                with pytest.raises(anyio.ClosedResourceError):
                    await stream.send(b"x" * (64 << 20))


async def test_cancelled_receive_leaves_the_stream_usable() -> None:
    async with connected() as (stream, peer):
        with anyio.move_on_after(0.05) as scope:
            await stream.receive()
        assert scope.cancelled_caught
        with trio.CancelScope() as trio_scope:
            trio_scope.cancel()
            with pytest.raises(trio.Cancelled):  # a checkpoint: cancelled, unchanged
                await stream.receive()
        peer.sendall(b"after")
        with anyio.fail_after(5):
            assert await stream.receive() == b"after"
        await stream.send(b"ok")
        assert peer.recv(100) == b"ok"


async def test_cancelled_send_leaves_the_sender_guard_free() -> None:
    async with connected(peer_rcvbuf=64 << 10) as (stream, _peer):
        with anyio.move_on_after(0.2) as scope:
            await stream.send(b"x" * (64 << 20))
        assert scope.cancelled_caught
        with anyio.move_on_after(0.05):
            await stream.send(b"x" * (64 << 20))  # not BusyResourceError


async def test_use_after_aclose_is_closed_resource() -> None:
    async with connected() as (stream, _peer):
        await stream.aclose()
        await stream.aclose()  # idempotent
        with pytest.raises(anyio.ClosedResourceError):
            await stream.receive()
        with pytest.raises(anyio.ClosedResourceError):
            await stream.send(b"x")
        with pytest.raises(anyio.ClosedResourceError):
            await stream.send_eof()


async def test_concurrent_receive_is_busy() -> None:
    async with connected() as (stream, peer):
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(stream.receive)
                await anyio.wait_all_tasks_blocked()
                with pytest.raises(anyio.BusyResourceError):
                    await stream.receive()
                peer.sendall(b"x")  # the first reader gets it and ends


async def test_concurrent_send_is_busy() -> None:
    async with connected(peer_rcvbuf=64 << 10) as (stream, _peer):
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(stream.send, b"x" * (64 << 20))
                await anyio.wait_all_tasks_blocked()  # the first sender waits for room
                with pytest.raises(anyio.BusyResourceError):
                    await stream.send(b"y")
                tg.cancel_scope.cancel()


def open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
async def test_no_descriptor_left_open() -> None:
    before = open_fds()
    for _ in range(20):
        async with connected() as (stream, peer):
            await stream.send(b"x")
            assert peer.recv(10) == b"x"
        assert stream.extra(anyio.abc.SocketAttribute.raw_socket).fileno() == -1
    assert open_fds() <= before


async def test_connect_refused_is_oserror(free_tcp_port: int) -> None:
    with pytest.raises(OSError):
        await _trio_stream.connect_tcp("127.0.0.1", free_tcp_port)


# -- through the transport ------------------------------------------------------------------------


@contextmanager
def websocket_peer() -> Iterator[str]:
    """A WebSocket peer in a thread: handshake, echo one text message, answer the close."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def run() -> None:
        with listener:
            conn, _ = listener.accept()
        with conn:
            protocol = ServerProtocol()
            events: list[Any] = []
            while not events:
                protocol.receive_data(conn.recv(65536))
                events = protocol.events_received()
            request = events[0]
            assert isinstance(request, Request)
            protocol.send_response(protocol.accept(request))
            while True:
                for data in protocol.data_to_send():
                    if data:
                        conn.sendall(data)
                for event in protocol.events_received():
                    if isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                        protocol.send_text(event.data)
                for data in protocol.data_to_send():
                    if data:
                        conn.sendall(data)
                data = conn.recv(65536)
                if not data:
                    return
                protocol.receive_data(data)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield f"ws://127.0.0.1:{port}/ws"
    finally:
        thread.join(timeout=10)


async def echo_through_transport() -> type[anyio.abc.ByteStream]:
    with websocket_peer() as url:
        options = TransportOptions(open_timeout=10.0)
        async with WebsocketsTransportFactory().connect(url, options) as transport:
            await transport.send_text(b'{"ping": 1}')
            with anyio.fail_after(5):
                assert await transport.receive() == b'{"ping": 1}'
            kind = type(cast("WebsocketsTransport", transport)._stream)
        assert transport.close_code == 1000
    return kind


def assert_stream(kind: type[anyio.abc.ByteStream], native: type[anyio.abc.ByteStream]) -> None:
    if _fast.ENABLED:
        assert kind is native
    else:
        assert kind.__module__.startswith("anyio."), kind  # the general path: anyio's stream


async def test_the_transport_uses_this_stream_on_trio() -> None:
    assert_stream(await echo_through_transport(), _trio_stream.TrioSocketStream)


@pytest.mark.parametrize("anyio_backend", [ASYNCIO])
async def test_the_transport_keeps_the_asyncio_stream_on_asyncio() -> None:
    assert_stream(await echo_through_transport(), _asyncio_stream.AsyncioSocketStream)


async def test_connect_refused_through_the_transport(free_tcp_port: int) -> None:
    url = f"ws://127.0.0.1:{free_tcp_port}/ws"
    with pytest.raises(ConnectError, match="could not connect") as caught:
        async with WebsocketsTransportFactory().connect(url, TransportOptions(open_timeout=10.0)):
            pass
    assert url in str(caught.value)
    assert "refused" in str(caught.value).lower()
