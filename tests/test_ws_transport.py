"""The built-in `websockets` transport, over real loopback sockets, on asyncio and trio.

Most tests talk to the reference manager. Fault tests (kill, stall, pause) use their own
manager so the shared one stays healthy. A few protocol corners the manager never produces
(fragmented messages, binary frames, extra request headers) use a tiny in-test server built on
websockets' sans-IO `ServerProtocol` over an anyio listener.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import pytest
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.server import ServerProtocol

from anytcm.errors import ConnectError, ConnectionLost, HandshakeRejected
from anytcm.testing import ReferenceManager
from anytcm.transport import MessageSink, Transport, TransportFactory, TransportOptions
from anytcm.transports._websockets import WebsocketsTransportFactory, new_send_lock

pytestmark = pytest.mark.anyio

FACTORY = WebsocketsTransportFactory()
GENERATE_SIZE = 300_000


# -- fixtures and helpers -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def fault_manager() -> Iterator[ReferenceManager]:
    """A manager that fault tests may kill, stall or pause."""
    with ReferenceManager() as manager:
        yield manager


@pytest.fixture
def faulty(fault_manager: ReferenceManager) -> Iterator[ReferenceManager]:
    """The fault manager, running and with no fault switch set, before and after the test."""
    if not fault_manager.running:
        fault_manager.start()
    yield fault_manager
    if not fault_manager.running:
        fault_manager.start()
    fault_manager.reset_faults()


_uuids = iter(range(1_000_000))


def new_uuid() -> str:
    return f"ws-transport-{next(_uuids)}"


def frame(uuid: str, type_: str, payload: dict[str, Any]) -> bytes:
    return json.dumps({"uuid": uuid, "type": type_, "payload": payload}).encode()


def queue_stats(uuid: str, job_id: int) -> bytes:
    return frame(uuid, "info", {"action": "queue_stats", "job_id": job_id})


async def authenticate(transport: Transport, uuid: str) -> None:
    await transport.send_text(frame(uuid, "auth", {}))
    assert json.loads(await transport.receive()) == {"type": "auth.ok"}


def options(**changes: Any) -> TransportOptions:
    return TransportOptions(**{"open_timeout": 10.0, **changes})


@asynccontextmanager
async def raw_server(
    handler: Callable[[Request, ServerProtocol, anyio.abc.ByteStream], Awaitable[None]],
) -> AsyncIterator[str]:
    """A one-purpose WebSocket server: accept the handshake, then run `handler`."""

    async def serve(stream: anyio.abc.ByteStream) -> None:
        async with stream:
            protocol = ServerProtocol()
            events: list[Any] = []
            while not events:
                protocol.receive_data(await stream.receive())
                events = protocol.events_received()
            request = events[0]
            assert isinstance(request, Request)
            protocol.send_response(protocol.accept(request))
            await flush(protocol, stream)
            await handler(request, protocol, stream)

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        yield f"ws://127.0.0.1:{port}/ws"
        tg.cancel_scope.cancel()


async def flush(protocol: ServerProtocol, stream: anyio.abc.ByteStream) -> None:
    for data in protocol.data_to_send():
        if data:
            await stream.send(data)


async def serve_until_closed(protocol: ServerProtocol, stream: anyio.abc.ByteStream) -> None:
    """Answer the client's close frame, then return when it goes away."""
    while True:
        try:
            data = await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            return
        protocol.receive_data(data)
        await flush(protocol, stream)


# -- the interface ------------------------------------------------------------------------------


async def test_factory_implements_the_interface(manager: ReferenceManager) -> None:
    factory: TransportFactory = FACTORY
    assert factory.name == "websockets"
    async with factory.connect(manager.ws_url, options()) as transport:
        assert isinstance(transport, Transport)
        assert transport.close_code is None
        assert transport.close_reason == ""


async def test_other_schemes_are_refused() -> None:
    with pytest.raises(ValueError, match="not a WebSocket URL"):
        FACTORY.connect("http://127.0.0.1:1/ws", options())


# -- talking to the manager ---------------------------------------------------------------------


async def test_auth_and_queue_stats_round_trip(manager: ReferenceManager) -> None:
    uuid = new_uuid()
    async with FACTORY.connect(manager.ws_url, options()) as transport:
        await authenticate(transport, uuid)
        await transport.send_text(queue_stats(uuid, 7))
        reply = json.loads(await transport.receive())
    assert reply["type"] == "info_response"
    assert reply["payload"]["job_id"] == 7
    assert reply["payload"]["status"] == "success"
    assert transport.close_code == 1000


async def test_concurrent_senders_all_answered(manager: ReferenceManager) -> None:
    uuid = new_uuid()
    senders, per_sender = 5, 40
    expected = set(range(senders * per_sender))
    received: set[int] = set()

    async def send_many(first: int) -> None:
        for job_id in range(first, first + per_sender):
            await transport.send_text(queue_stats(uuid, job_id))
            await anyio.lowlevel.checkpoint()

    async with FACTORY.connect(manager.ws_url, options()) as transport:
        await authenticate(transport, uuid)
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for sender in range(senders):
                    tg.start_soon(send_many, sender * per_sender)
                while len(received) < len(expected):
                    reply = json.loads(await transport.receive())
                    assert reply["type"] == "info_response"
                    received.add(reply["payload"]["job_id"])
    assert received == expected


def generate_request(uuid: str) -> bytes:
    return frame(
        uuid,
        "inference",
        {
            "vm_ip": "127.0.0.1",
            "container_id": "ref-0",
            "model_name": "generate",
            "request": {
                "inputs": [
                    {"name": "SIZE", "shape": [1], "datatype": "INT64", "data": [GENERATE_SIZE]}
                ]
            },
        },
    )


async def test_large_reply_received_intact(manager: ReferenceManager) -> None:
    uuid = new_uuid()
    async with FACTORY.connect(manager.ws_url, options()) as transport:
        await authenticate(transport, uuid)
        await transport.send_text(generate_request(uuid))
        with anyio.fail_after(30):
            raw = await transport.receive()
        # The connection is still usable afterwards.
        await transport.send_text(queue_stats(uuid, 1))
        assert json.loads(await transport.receive())["payload"]["job_id"] == 1
    assert len(raw) > 2_000_000
    reply = json.loads(raw)
    assert reply["payload"]["status"] == "COMPLETED"
    output = reply["payload"]["data"]["OUTPUT0"]
    assert len(output) == GENERATE_SIZE
    assert all(isinstance(value, float) for value in output[:100])


async def test_reply_over_max_message_size_is_1009(manager: ReferenceManager) -> None:
    uuid = new_uuid()
    async with FACTORY.connect(manager.ws_url, options(max_message_size=256 * 1024)) as transport:
        await authenticate(transport, uuid)
        await transport.send_text(generate_request(uuid))
        with anyio.fail_after(30), pytest.raises(ConnectionLost) as caught:
            await transport.receive()
        assert caught.value.close_code == 1009
        assert "max_message_size" in str(caught.value)
        assert transport.close_code == 1009
        with pytest.raises(ConnectionLost):
            await transport.send_text(queue_stats(uuid, 1))


async def test_server_close_code_after_its_error_frame(manager: ReferenceManager) -> None:
    async with FACTORY.connect(manager.ws_url, options()) as transport:
        await transport.send_text(queue_stats(new_uuid(), 1))  # not auth: refused
        with anyio.fail_after(10):
            error = json.loads(await transport.receive())
            assert error["type"] == "error"
            assert "auth" in error["payload"]["message"]
            with pytest.raises(ConnectionLost) as caught:
                await transport.receive()
    assert caught.value.close_code == 1008
    assert transport.close_code == 1008
    assert caught.value.reason == transport.close_reason


async def test_compression_round_trip(manager: ReferenceManager) -> None:
    uuid = new_uuid()
    async with FACTORY.connect(manager.ws_url, options(compression=True)) as transport:
        await authenticate(transport, uuid)
        await transport.send_text(generate_request(uuid))
        with anyio.fail_after(30):
            reply = json.loads(await transport.receive())
    assert len(reply["payload"]["data"]["OUTPUT0"]) == GENERATE_SIZE


# -- closing ------------------------------------------------------------------------------------


async def test_aclose_sends_a_close_frame_and_is_idempotent(manager: ReferenceManager) -> None:
    uuid = new_uuid()
    async with FACTORY.connect(manager.ws_url, options()) as transport:
        await authenticate(transport, uuid)
        with anyio.fail_after(10):
            await transport.aclose(1000, "bye")
            await transport.aclose()
        # The server answered with its own close frame (1006 would mean it did not).
        assert transport.close_code == 1000
        with pytest.raises(ConnectionLost) as caught:
            await transport.receive()
        assert caught.value.close_code == 1000
        with pytest.raises(ConnectionLost):
            await transport.send_text(queue_stats(uuid, 1))
    # The uuid was released at once: a clean close, not a half-open socket.
    async with FACTORY.connect(manager.ws_url, options()) as again:
        await authenticate(again, uuid)


async def test_aclose_while_another_task_receives(manager: ReferenceManager) -> None:
    uuid = new_uuid()
    async with FACTORY.connect(manager.ws_url, options()) as transport:
        await authenticate(transport, uuid)
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:

                async def reader() -> None:
                    with pytest.raises(ConnectionLost) as caught:
                        await transport.receive()
                    assert caught.value.close_code == 4000

                tg.start_soon(reader)
                await anyio.sleep(0.1)
                await transport.aclose(4000, "custom")
    assert transport.close_code == 4000


async def test_nothing_left_running_after_exit(manager: ReferenceManager) -> None:
    tasks_before = len(anyio.get_running_tasks())
    async with FACTORY.connect(
        manager.ws_url, options(ping_interval=0.05, ping_timeout=0.5)
    ) as transport:
        await authenticate(transport, new_uuid())
        assert len(anyio.get_running_tasks()) == tasks_before + 1  # the keepalive
    assert len(anyio.get_running_tasks()) == tasks_before
    await anyio.sleep(0.3)  # several ping intervals: a leaked keepalive would fail here
    assert transport.close_code == 1000


async def test_body_exception_is_not_grouped(manager: ReferenceManager) -> None:
    with pytest.raises(LookupError, match="from the body"):
        async with FACTORY.connect(manager.ws_url, options()):
            raise LookupError("from the body")


async def test_cancellation_propagates(manager: ReferenceManager) -> None:
    with anyio.move_on_after(0.3) as scope:
        async with FACTORY.connect(manager.ws_url, options()) as transport:
            await authenticate(transport, new_uuid())
            await transport.receive()  # nothing comes: cancelled by the scope
    assert scope.cancelled_caught
    assert transport.close_code == 1000  # the close frame still went out


async def test_keepalive_keeps_a_healthy_connection(manager: ReferenceManager) -> None:
    uuid = new_uuid()
    async with FACTORY.connect(
        manager.ws_url, options(ping_interval=0.05, ping_timeout=0.3)
    ) as transport:
        await authenticate(transport, uuid)
        with anyio.move_on_after(1.0):
            # Idle: only pongs arrive. Were they not noticed, the keepalive would fail the
            # connection after ~0.35 s and this receive would raise ConnectionLost.
            await transport.receive()
        await transport.send_text(queue_stats(uuid, 3))
        assert json.loads(await transport.receive())["payload"]["job_id"] == 3


# -- faults -------------------------------------------------------------------------------------


@pytest.mark.fault
async def test_killed_server_is_1006(faulty: ReferenceManager) -> None:
    async with FACTORY.connect(faulty.ws_url, options()) as transport:
        await authenticate(transport, new_uuid())
        faulty.kill()
        with anyio.fail_after(10), pytest.raises(ConnectionLost) as caught:
            await transport.receive()
    assert caught.value.close_code == 1006
    assert transport.close_code == 1006


@pytest.mark.fault
async def test_keepalive_detects_a_stalled_server(faulty: ReferenceManager) -> None:
    uuid = new_uuid()
    async with FACTORY.connect(
        faulty.ws_url, options(ping_interval=0.2, ping_timeout=0.5, close_timeout=0.5)
    ) as transport:
        await authenticate(transport, uuid)
        faulty.set_faults(stall=1)
        started = anyio.current_time()
        with anyio.fail_after(10), pytest.raises(ConnectionLost) as caught:
            await transport.receive()
        elapsed = anyio.current_time() - started
        with pytest.raises(ConnectionLost):
            await transport.send_text(queue_stats(uuid, 1))
    assert caught.value.close_code == 1011
    assert caught.value.reason == "keepalive ping timeout"
    assert elapsed < 5  # ~0.7 s expected; generous for a noisy machine


@pytest.mark.fault
async def test_open_timeout_on_a_paused_server(faulty: ReferenceManager) -> None:
    faulty.pause()
    try:
        with anyio.fail_after(10), pytest.raises(ConnectError, match="timed out") as caught:
            async with FACTORY.connect(faulty.ws_url, options(open_timeout=0.5)):
                pass
    finally:
        faulty.resume()
    assert faulty.ws_url in str(caught.value)
    assert "open_timeout" in str(caught.value)


async def test_connection_refused(free_tcp_port: int) -> None:
    url = f"ws://127.0.0.1:{free_tcp_port}/ws"
    with pytest.raises(ConnectError) as caught:
        async with FACTORY.connect(url, options()):
            pass
    assert not isinstance(caught.value, HandshakeRejected)
    assert url in str(caught.value)
    assert "running" in str(caught.value)


@pytest.mark.parametrize(("path", "status"), [("/health", 200), ("/no-such-path", 404)])
async def test_http_answer_is_handshake_rejected(
    manager: ReferenceManager, path: str, status: int
) -> None:
    url = f"ws://127.0.0.1:{manager.port}{path}"
    with pytest.raises(HandshakeRejected) as caught:
        async with FACTORY.connect(url, options()):
            pass
    assert caught.value.status_code == status
    assert url in str(caught.value)


# -- protocol corners (in-test server) ----------------------------------------------------------


async def test_extra_headers_reach_the_server() -> None:
    async def handler(request: Request, protocol: ServerProtocol, stream: Any) -> None:
        protocol.send_text(request.headers.get("X-Anytcm-Test", "missing").encode())
        await flush(protocol, stream)
        await serve_until_closed(protocol, stream)

    async with raw_server(handler) as url:
        headers = {"X-Anytcm-Test": "hello"}
        async with FACTORY.connect(url, options(headers=headers)) as transport:
            assert await transport.receive() == b"hello"


async def test_fragmented_message_is_reassembled() -> None:
    async def handler(request: Request, protocol: ServerProtocol, stream: Any) -> None:
        protocol.send_text(b'{"part":', fin=False)
        protocol.send_continuation(b' "one", "more":', fin=False)
        protocol.send_ping(b"p")  # control frames may come between fragments
        protocol.send_continuation(b' "two"}', fin=True)
        protocol.send_text(b"{}")
        await flush(protocol, stream)
        await serve_until_closed(protocol, stream)

    async with raw_server(handler) as url, FACTORY.connect(url, options()) as transport:
        with anyio.fail_after(10):
            assert await transport.receive() == b'{"part": "one", "more": "two"}'
            assert await transport.receive() == b"{}"


async def test_messages_of_every_read_size_arrive_intact_back_to_back() -> None:
    """Reads grow 4x (64 KiB to 1 MiB) while they fill their buffer and start over when one
    does not: messages around each step, written at once, all arrive whole and in order."""
    sizes = [10, 65_536, 65_537, 262_145, 1 << 20, 3 * (1 << 20) + 7, 10, 300_000, 10]
    messages = [b'"' + bytes([0x61 + i]) * (n - 2) + b'"' for i, n in enumerate(sizes)]

    async def handler(request: Request, protocol: ServerProtocol, stream: Any) -> None:
        for message in messages:
            protocol.send_text(message)
        await stream.send(b"".join(protocol.data_to_send()))
        await serve_until_closed(protocol, stream)

    async with raw_server(handler) as url, FACTORY.connect(url, options()) as transport:
        with anyio.fail_after(30):
            for message in messages:
                assert await transport.receive() == message


async def test_binary_frame_is_a_protocol_violation() -> None:
    async def handler(request: Request, protocol: ServerProtocol, stream: Any) -> None:
        protocol.send_text(b"{}")
        protocol.send_binary(b"\x00\x01")
        await flush(protocol, stream)
        await serve_until_closed(protocol, stream)

    async with raw_server(handler) as url, FACTORY.connect(url, options()) as transport:
        with anyio.fail_after(10):
            assert await transport.receive() == b"{}"
            with pytest.raises(ConnectionLost, match="binary") as caught:
                await transport.receive()
    assert caught.value.close_code == 1003


# -- TLS ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate chain, server key) for 127.0.0.1, made for the test."""
    trustme = pytest.importorskip("trustme")
    directory = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    ca_path, cert_path, key_path = (directory / name for name in ("ca.pem", "cert.pem", "key.pem"))
    ca.cert_pem.write_to_path(str(ca_path))
    server.private_key_pem.write_to_path(str(key_path))
    cert_path.write_bytes(b"".join(blob.bytes() for blob in server.cert_chain_pems))
    return ca_path, cert_path, key_path


@pytest.fixture(scope="module")
def tls_manager(tls_files: tuple[Path, Path, Path]) -> Iterator[ReferenceManager]:
    ca_path, cert_path, key_path = tls_files
    with ReferenceManager(tls=(str(cert_path), str(key_path)), ca_file=str(ca_path)) as manager:
        yield manager


async def test_wss_with_a_trusted_ca(
    tls_manager: ReferenceManager, tls_files: tuple[Path, Path, Path]
) -> None:
    assert tls_manager.ws_url.startswith("wss://")
    context = ssl.create_default_context(cafile=str(tls_files[0]))
    uuid = new_uuid()
    async with FACTORY.connect(tls_manager.ws_url, options(ssl_context=context)) as transport:
        await authenticate(transport, uuid)
        await transport.send_text(generate_request(uuid))
        with anyio.fail_after(30):
            reply = json.loads(await transport.receive())
    assert len(reply["payload"]["data"]["OUTPUT0"]) == GENERATE_SIZE
    assert transport.close_code == 1000


async def test_wss_without_trust_fails_verification(tls_manager: ReferenceManager) -> None:
    with pytest.raises(ConnectError, match="certificate verification") as caught:
        async with FACTORY.connect(tls_manager.ws_url, options()):
            pass
    assert tls_manager.ws_url in str(caught.value)


@contextmanager
def peer_that_never_reads(linger: float) -> Iterator[tuple[str, threading.Event]]:
    """A WebSocket peer on a plain blocking socket that accepts, then never reads again.

    Why not `raw_server`: an anyio stream on asyncio may keep reading into user space after
    the handshake, swallowing a big write whole, so "never reads" would depend on timing. Here
    the kernel buffers are all there is (and they are made small). After `linger` seconds the
    socket is closed with unread data, which Linux answers with a reset. The event is set then.
    """
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    dropped = threading.Event()

    def run() -> None:
        with listener:
            conn, _ = listener.accept()
        with conn:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
            protocol = ServerProtocol()
            events: list[Any] = []
            while not events:
                protocol.receive_data(conn.recv(65536))
                events = protocol.events_received()
            request = events[0]
            assert isinstance(request, Request)
            protocol.send_response(protocol.accept(request))
            for data in protocol.data_to_send():
                conn.sendall(data)
            time.sleep(linger)
            dropped.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield f"ws://127.0.0.1:{port}/ws", dropped
    finally:
        thread.join(timeout=10)


async def test_a_send_cut_off_by_the_end_has_an_unknown_outcome() -> None:
    """A write the connection's end interrupts may have reached the peer; one after cannot."""
    with peer_that_never_reads(linger=0.3) as (url, dropped):
        async with FACTORY.connect(url, options(close_timeout=0.5)) as transport:
            # 64 MiB cannot fit in the kernel buffers of a peer that does not read.
            with anyio.fail_after(10), pytest.raises(ConnectionLost) as cut:
                await transport.send_text(b"x" * (64 << 20))
            assert dropped.is_set()
            with pytest.raises(ConnectionLost) as after:
                await transport.send_text(b"{}")
    assert cut.value.outcome_unknown is True
    assert after.value.outcome_unknown is False


# -- messages by callback (MessageSink) ---------------------------------------------------------


class Delivered:
    """Messages of one transport, pushed by `deliver_to`: by the read callback (plain ws:// on
    asyncio) or from inside `receive()` (trio, TLS), which then must never return one."""

    def __init__(self) -> None:
        self.messages: deque[bytes] = deque()
        self.arrived = anyio.Event()
        self.pushed = False
        self.lost: ConnectionLost | None = None

    def take(self, data: bytes) -> None:
        self.messages.append(data)
        self.arrived.set()

    async def run(self, transport: Transport, *, task_status: Any) -> None:
        """Deliver until the connection ends; the end is kept in `lost`."""
        assert isinstance(transport, MessageSink)
        self.pushed = transport.deliver_to(self.take)
        task_status.started()
        try:
            data = await transport.receive()
        except ConnectionLost as exc:
            self.lost = exc
        else:
            raise AssertionError(f"receive() returned {data!r} after deliver_to took over")

    async def next(self) -> bytes:
        with anyio.fail_after(10):
            while not self.messages:
                self.arrived = anyio.Event()
                await self.arrived.wait()
        return self.messages.popleft()


async def test_deliver_to_keeps_order_across_the_switch() -> None:
    async def handler(request: Request, protocol: ServerProtocol, stream: Any) -> None:
        # Two writes: the client parses the first whole (0, 1, 2) and returns 0; the second
        # (3, 4) is still unread bytes when it switches. Both kinds must come out in order.
        for batch in ((0, 1, 2), (3, 4)):
            for index in batch:
                protocol.send_text(str(index).encode())
            await stream.send(b"".join(protocol.data_to_send()))
            await anyio.sleep(0.05)
        while True:  # then echo each text message the client sends, until it closes
            try:
                data = await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return
            protocol.receive_data(data)
            for event in protocol.events_received():
                if isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                    protocol.send_text(b"echo " + bytes(event.data))
            await flush(protocol, stream)

    delivered = Delivered()
    async with raw_server(handler) as url, FACTORY.connect(url, options()) as transport:
        with anyio.fail_after(10):
            assert await transport.receive() == b"0"
            await anyio.sleep(0.2)  # the second write arrives, unread
        async with anyio.create_task_group() as tg:
            await tg.start(delivered.run, transport)
            assert delivered.pushed
            assert [await delivered.next() for _ in range(4)] == [b"1", b"2", b"3", b"4"]
            for index in range(3):
                await transport.send_text(f"m{index}".encode())
            assert [await delivered.next() for _ in range(3)] == [
                b"echo m0",
                b"echo m1",
                b"echo m2",
            ]
            await transport.aclose(1000, "done")
    assert delivered.lost is not None
    assert delivered.lost.close_code == 1000


async def test_deliver_to_reassembles_fragments_and_answers_pings() -> None:
    pongs: list[bytes] = []

    async def handler(request: Request, protocol: ServerProtocol, stream: Any) -> None:
        await anyio.sleep(0.2)  # the client has switched by now: every frame is pushed
        protocol.send_text(b'{"part":', fin=False)
        protocol.send_ping(b"p1")  # control frames may come between fragments
        protocol.send_continuation(b' "two"}', fin=True)
        await flush(protocol, stream)
        while True:
            try:
                data = await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return
            protocol.receive_data(data)
            events = protocol.events_received()
            pongs.extend(
                bytes(e.data) for e in events if isinstance(e, Frame) and e.opcode is Opcode.PONG
            )
            await flush(protocol, stream)

    delivered = Delivered()
    async with (
        raw_server(handler) as url,
        FACTORY.connect(url, options()) as transport,
        anyio.create_task_group() as tg,
    ):
        await tg.start(delivered.run, transport)
        assert delivered.pushed
        assert await delivered.next() == b'{"part": "two"}'
        with anyio.fail_after(10):
            while not pongs:  # the pong was written by whoever parsed the ping
                await anyio.sleep(0.01)
        await transport.aclose()
    assert pongs == [b"p1"]


async def test_deliver_to_with_keepalive_and_replies(manager: ReferenceManager) -> None:
    uuid = new_uuid()
    delivered = Delivered()
    async with FACTORY.connect(
        manager.ws_url, options(ping_interval=0.05, ping_timeout=0.3)
    ) as transport:
        await authenticate(transport, uuid)
        async with anyio.create_task_group() as tg:
            await tg.start(delivered.run, transport)
            assert delivered.pushed
            # Idle for many ping intervals: pongs arrive while the handler is on and must reach
            # the keepalive, or it fails the connection after ~0.35 s.
            await anyio.sleep(1.0)
            assert delivered.lost is None
            for job_id in range(20):
                await transport.send_text(queue_stats(uuid, job_id))
            replies = [json.loads(await delivered.next()) for _ in range(20)]
            assert sorted(r["payload"]["job_id"] for r in replies) == list(range(20))
            await transport.aclose()
    assert transport.close_code == 1000


async def test_deliver_to_reports_the_servers_close_code(manager: ReferenceManager) -> None:
    delivered = Delivered()
    async with (
        FACTORY.connect(manager.ws_url, options()) as transport,
        anyio.create_task_group() as tg,
    ):
        await tg.start(delivered.run, transport)
        await transport.send_text(queue_stats(new_uuid(), 1))  # not auth: refused, closed
        assert json.loads(await delivered.next())["type"] == "error"
    assert delivered.lost is not None
    assert delivered.lost.close_code == 1008
    assert transport.close_code == 1008
    with pytest.raises(ConnectionLost):
        await transport.send_text(queue_stats(new_uuid(), 1))


async def test_deliver_to_ends_on_a_binary_frame() -> None:
    async def handler(request: Request, protocol: ServerProtocol, stream: Any) -> None:
        await anyio.sleep(0.2)
        protocol.send_text(b"{}")
        protocol.send_binary(b"\x00\x01")
        await flush(protocol, stream)
        await serve_until_closed(protocol, stream)

    delivered = Delivered()
    async with (
        raw_server(handler) as url,
        FACTORY.connect(url, options()) as transport,
        anyio.create_task_group() as tg,
    ):
        await tg.start(delivered.run, transport)
        assert await delivered.next() == b"{}"
    assert delivered.lost is not None
    assert delivered.lost.close_code == 1003
    assert "binary" in str(delivered.lost)


@pytest.mark.fault
async def test_deliver_to_notices_a_killed_server(faulty: ReferenceManager) -> None:
    delivered = Delivered()
    async with FACTORY.connect(faulty.ws_url, options()) as transport:
        await authenticate(transport, new_uuid())
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                await tg.start(delivered.run, transport)
                faulty.kill()
    assert delivered.lost is not None
    assert delivered.lost.close_code == 1006


async def test_deliver_to_takes_one_handler_also_over_tls(
    manager: ReferenceManager,
    tls_manager: ReferenceManager,
    tls_files: tuple[Path, Path, Path],
) -> None:
    async with FACTORY.connect(manager.ws_url, options()) as transport:
        assert isinstance(transport, MessageSink)
        assert transport.deliver_to(lambda data: None) is True
        assert transport.deliver_to(lambda data: None) is False  # one handler, once
    context = ssl.create_default_context(cafile=str(tls_files[0]))
    delivered = Delivered()
    async with (
        FACTORY.connect(tls_manager.ws_url, options(ssl_context=context)) as transport,
        anyio.create_task_group() as tg,
    ):
        await tg.start(delivered.run, transport)  # TLS: handed over from inside receive()
        assert delivered.pushed
        await transport.send_text(frame(new_uuid(), "auth", {}))
        assert json.loads(await delivered.next()) == {"type": "auth.ok"}
        await transport.aclose()
    assert delivered.lost is not None


# -- the send guard -----------------------------------------------------------------------------


async def test_send_guard_serialises_writers_in_arrival_order() -> None:
    guard = new_send_lock()
    order: list[str] = []
    inside = 0

    async def writer(name: str) -> None:
        nonlocal inside
        async with guard:
            inside += 1
            assert inside == 1, "two writers inside the guard"
            order.append(name)
            await anyio.sleep(0.01)  # hold it across a yield, as a blocked write would
            inside -= 1

    async with anyio.create_task_group() as tg:
        for index in range(5):
            tg.start_soon(writer, f"w{index}")
            await anyio.lowlevel.checkpoint()  # arrive one after the other
    assert order == [f"w{index}" for index in range(5)]
    async with guard:  # free again, at once
        pass


async def test_send_guard_survives_cancelled_waiters(
    anyio_backend: tuple[str, dict[str, object]],
) -> None:
    guard = new_send_lock()
    entered: list[str] = []
    holder_may_leave = anyio.Event()

    async def holder() -> None:
        async with guard:
            entered.append("holder")
            await holder_may_leave.wait()

    async def waiter(name: str) -> None:
        with anyio.fail_after(5):  # a lost guard would hang here
            async with guard:
                entered.append(name)

    async with anyio.create_task_group() as tg:
        tg.start_soon(holder)
        await _until(lambda: entered == ["holder"])
        with anyio.CancelScope() as doomed:
            # Cancelled while waiting: it must leave the queue, not keep a turn forever.
            doomed.cancel()
            await waiter("cancelled")
        tg.start_soon(waiter, "next")
        await _until(lambda: _waiting(guard) == 1)
        holder_may_leave.set()
    assert entered == ["holder", "next"]

    # Cancelled just as the guard is handed to it: it must pass the guard on. Only a native
    # asyncio `Task.cancel()` can land there (anyio's scopes, and trio, let a task that was
    # already woken take its turn, the cancellation landing at its next checkpoint); on trio
    # the same sequence checks that the woken waiter takes its turn and passes it on.
    entered.clear()
    handed_scope = anyio.CancelScope()
    native: list[asyncio.Task[Any]] = []
    natively_cancelled: list[bool] = []
    release = anyio.Event()

    async def releasing_holder() -> None:
        async with guard:
            entered.append("holder")
            await release.wait()
        # The guard was just handed to "handed", which has not run yet.
        if native:
            native[0].cancel()
        else:
            handed_scope.cancel()

    async def handed() -> None:
        if anyio_backend[0] == "asyncio":
            native.append(asyncio.current_task())  # type: ignore[arg-type]
        try:
            with handed_scope:
                await waiter("handed")
        except asyncio.CancelledError:
            natively_cancelled.append(True)  # contained: the test cancelled it natively

    async with anyio.create_task_group() as tg:
        tg.start_soon(releasing_holder)
        await _until(lambda: entered == ["holder"])
        tg.start_soon(handed)
        await _until(lambda: _waiting(guard) == 1)
        tg.start_soon(waiter, "last")
        await _until(lambda: _waiting(guard) == 2)
        release.set()
    if anyio_backend[0] == "asyncio":
        assert natively_cancelled == [True]
        assert entered == ["holder", "last"]
    else:
        assert entered == ["holder", "handed", "last"]
    with anyio.fail_after(1):
        async with guard:
            pass


def _waiting(guard: anyio.Lock) -> int:
    """Writers queued for the guard."""
    return guard.statistics().tasks_waiting


async def _until(condition: Callable[[], bool]) -> None:
    with anyio.fail_after(5):
        while not condition():
            await anyio.sleep(0.001)
