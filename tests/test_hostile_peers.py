"""The client against a hostile peer: every call ends in a result or a typed TcmError, in time.

The peer is `tests/_hostile.py`'s server, over real loopback sockets, on both backends. Each
test scripts one way a manager (or whatever answers in its place) can misbehave and checks what
the caller sees: never a RecursionError, a bare anyio exception or an ExceptionGroup, never a
wait to the end of the deadline for an answer that has already arrived broken, never a frozen
event loop, and the client itself still working afterwards.
"""

from __future__ import annotations

import gc
import json
import logging
import ssl
import sys
import tracemalloc
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import numpy as np
import pytest
import sniffio
import trustme

import anytcm
from _hostile import HostileServer, Peer, Script, TcpDropper, nested, serve_well
from anytcm.backoff import Backoff

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

pytestmark = pytest.mark.anyio

TARGET = anytcm.Target("127.0.0.1", "hostile-0")
X = np.array([1.0, 2.0], dtype=np.float32)


# -- endpoints: ws://, wss:// and the trio-websocket transport -------------------------------


@dataclass(frozen=True)
class Endpoint:
    name: str
    server_ssl: ssl.SSLContext | None
    client_ssl: ssl.SSLContext | None
    transport: str | None


@pytest.fixture(scope="module")
def tls_contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server, client


@pytest.fixture(params=["ws", "wss", "trio-websocket"])
def endpoint(
    request: pytest.FixtureRequest,
    tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext],
    anyio_backend: tuple[str, dict[str, object]],
) -> Endpoint:
    if request.param == "trio-websocket" and anyio_backend[0] != "trio":
        pytest.skip("the trio-websocket transport runs on trio only")
    if request.param == "ws":
        return Endpoint("ws", None, None, None)
    if request.param == "wss":
        return Endpoint("wss", *tls_contexts, None)
    return Endpoint("trio-websocket", None, None, "trio-websocket")


@asynccontextmanager
async def client_of(
    url: str, endpoint: Endpoint | None = None, **options: Any
) -> AsyncIterator[anytcm.AsyncClient]:
    options.setdefault("pool_size", 1)
    options.setdefault("ready_check", False)
    options.setdefault("connect_timeout", 5.0)
    options.setdefault("timeout", 10.0)
    if endpoint is not None:
        options.setdefault("ssl_context", endpoint.client_ssl)
        options.setdefault("transport", endpoint.transport)
    async with anytcm.connect(url, **options) as tcm:
        yield tcm


@pytest.fixture
def hostile(endpoint: Endpoint) -> Callable[[Script], HostileServer]:
    return lambda script: HostileServer(script, ssl_context=endpoint.server_ssl)


def first_connection_only(misbehave: Script) -> Script:
    """Misbehave on the first connection, then serve every later one well."""

    def script(peer: Peer) -> None:
        if peer.index == 0:
            misbehave(peer)
        else:
            serve_well(peer)

    return script


def no_group(exc: BaseException) -> None:
    assert not isinstance(exc, BaseExceptionGroup), f"an ExceptionGroup escaped: {exc!r}"


# -- A2: hostile JSON --------------------------------------------------------------------------

DEEP_UNKNOWN = b'{"type":"novel","x":' + nested(1000) + b"}"  # ~2 KB, 1,000 levels deep


async def test_a_deeply_nested_frame_fails_what_is_pending_and_replaces_the_connection(
    hostile: Callable[[Script], HostileServer], endpoint: Endpoint
) -> None:
    def script(peer: Peer) -> None:
        peer.recv_frame()
        peer.send(DEEP_UNKNOWN)  # not even an answer: a frame of a type nobody knows
        peer.recv_frame()

    with hostile(first_connection_only(script)) as server:
        async with client_of(server.url, endpoint) as tcm:
            with pytest.raises(anytcm.ProtocolError, match="cannot decode") as caught:
                await tcm.info.queue_stats()
            no_group(caught.value)
            assert caught.value.outcome_unknown
            stats = await tcm.info.queue_stats()
            assert stats.total_users == 1
            assert server.connections >= 2  # the poisoned connection was replaced
    assert not server.errors


async def test_a_deeply_nested_auth_reply_is_a_connect_error(endpoint: Endpoint) -> None:
    def script(peer: Peer) -> None:
        peer.recv_frame()
        peer.send(DEEP_UNKNOWN.replace(b"novel", b"auth.ok"))

    server = HostileServer(script, ssl_context=endpoint.server_ssl, authenticate=False)
    with server, pytest.raises(anytcm.ConnectError, match="broke the contract") as caught:
        async with client_of(server.url, endpoint, connect_timeout=1.5):
            pass
    no_group(caught.value)


# -- A5: a malformed reply to the request in flight fails it at once --------------------------


def _not_json(peer: Peer) -> bytes:
    return b'{"type":"inference","uuid":"' + peer.uuid.encode() + b'","payload":{"status":'


def _wrong_types(peer: Peer) -> bytes:
    reply = peer.inference_reply({"OUTPUT0": [1.0]})
    reply["payload"]["model_name"] = {"not": "a string"}
    reply["payload"]["status"] = 7
    return json.dumps(reply).encode()


def _unknown_status(peer: Peer) -> bytes:
    return json.dumps(peer.inference_reply({"OUTPUT0": [1.0]}, status="PAUSED")).encode()


def _deep_output(peer: Peer) -> bytes:
    # Small enough for the one-pass decoder, which recurses: 1,000 levels is beyond its limit.
    head = json.dumps(peer.inference_reply({"OUTPUT0": "@"})).encode()
    return head.replace(b'"@"', nested(1000))


@pytest.mark.parametrize("reply", [_not_json, _wrong_types, _unknown_status, _deep_output])
async def test_a_malformed_inference_reply_fails_the_call_at_once(
    hostile: Callable[[Script], HostileServer],
    endpoint: Endpoint,
    reply: Callable[[Peer], bytes],
) -> None:
    def script(peer: Peer) -> None:
        peer.recv_frame()
        peer.send(reply(peer))
        peer.recv_frame()  # until the client closes

    with hostile(first_connection_only(script)) as server:
        async with client_of(server.url, endpoint) as tcm:
            started = anyio.current_time()
            with pytest.raises(anytcm.ProtocolError) as caught:
                await tcm.infer("m", {"INPUT0": X}, target=TARGET, timeout=30)
            # At once, not at the end of the 30 s deadline (the bound is generous on purpose).
            assert anyio.current_time() - started < 10
            assert caught.value.excerpt  # it quotes what arrived
            assert caught.value.excerpt in str(caught.value)
            no_group(caught.value)
            # The connection was replaced: the next call works.
            result = await tcm.infer("m", {"INPUT0": X}, target=TARGET)
            assert result.as_numpy("OUTPUT0").tolist() == [1.0, 2.0]
    assert not server.errors


# -- a readable reply without the action's shape fails its own call, typed -------------------


def _shapeless_replies(peer: Peer) -> None:
    while True:
        request = peer.recv_frame()
        if request.get("type") == "info":
            peer.send(peer.info_reply(request, data={"total_users": "many", "info_users": []}))
        elif request.get("type") == "management":
            action = request["payload"]["action"]
            data: Any = {"create_vm": "not-a-pair", "create_server": {"inputs": 7}}[action]
            peer.send({**request, "payload": {"status": True, "data": data}})
        elif request.get("type") == "inference":  # a pipeline: {step: {output: value}} expected
            peer.send(peer.inference_reply({"m": [1, 2]}))


async def test_a_reply_without_the_actions_shape_is_a_protocol_error(
    hostile: Callable[[Script], HostileServer], endpoint: Endpoint
) -> None:
    with hostile(_shapeless_replies) as server:
        async with client_of(server.url, endpoint) as tcm:
            with pytest.raises(anytcm.ProtocolError, match="queue_stats") as caught:
                await tcm.info.queue_stats()
            assert "many" in caught.value.excerpt
            assert caught.value.close_code is None  # the frame was fine: the connection stays
            with pytest.raises(anytcm.ProtocolError, match="create_vm"):
                await tcm.management.create_vm(openstack={"name": "x"})
            with pytest.raises(anytcm.ProtocolError, match="create_server"):
                await tcm.management.create_server(
                    vm_id="v", vm_ip="127.0.0.1", container_id="c", triton={}
                )
            with pytest.raises(anytcm.ProtocolError, match="pipeline"):
                await tcm.pipeline([("m", {"INPUT0": X})], target=TARGET)
            assert server.connections == 1
    assert not server.errors


# -- a stream whose reader falls behind is failed, not buffered without bound ----------------


def _flood_stream(peer: Peer) -> None:
    while True:
        request = peer.recv_frame()
        if request.get("payload", {}).get("request", {}).get("protocol") != "grpc":
            peer.send(peer.inference_reply({"OUTPUT0": [1.0, 2.0]}))
            continue
        frames: list[bytes | str | dict[str, Any]] = [peer.inference_reply(None, "START")]
        frames += [peer.inference_reply(f"token {i}", "ONGOING") for i in range(10_000)]
        frames.append(peer.inference_reply(None, "COMPLETED"))
        peer.send(*frames)


async def test_a_stream_read_too_slowly_fails_instead_of_buffering(
    hostile: Callable[[Script], HostileServer], endpoint: Endpoint
) -> None:
    text = np.array([b"a"], dtype=object)
    with hostile(_flood_stream) as server:
        async with client_of(server.url, endpoint) as tcm:
            received = 0

            async def read_slowly() -> None:
                nonlocal received
                async with tcm.infer_stream("m", {"TEXT": text}, target=TARGET) as stream:
                    await anyio.sleep(1.0)  # a consumer busy elsewhere while 10,000 arrive
                    async for _ in stream:
                        received += 1

            with pytest.raises(anytcm.Backpressure) as caught:
                await read_slowly()
            assert caught.value.code == "CLIENT_STREAM_BEHIND"
            assert received <= 4096  # what was buffered is delivered, nothing beyond
            # The connection settles once the stream's COMPLETED arrives, and serves again.
            result = await tcm.infer("m", {"INPUT0": X}, target=TARGET)
            assert result.as_numpy("OUTPUT0").tolist() == [1.0, 2.0]
            assert server.connections == 1
    assert not server.errors


# -- A4: a hostile output value is refused at once, in linear time ----------------------------


def _deep_outputs(peer: Peer) -> None:
    """~200 KiB replies: too big for the one-pass decoder, so the value reaches the codec."""
    deep = nested(100_000)
    ragged = b"[" + b",".join(nested(d % 40 + 1) for d in range(12_000)) + b"]"
    for value in (deep, ragged):
        peer.recv_frame()
        head = json.dumps(peer.inference_reply({"OUTPUT0": "@"})).encode()
        peer.send(head.replace(b'"@"', value))
    serve_well(peer)


async def test_a_hostile_output_value_is_refused_at_once(
    hostile: Callable[[Script], HostileServer], endpoint: Endpoint
) -> None:
    with hostile(_deep_outputs) as server:
        async with client_of(server.url, endpoint) as tcm:
            for _ in range(2):
                result = await tcm.infer("m", {"INPUT0": X}, target=TARGET)
                started = anyio.current_time()
                with pytest.raises(anytcm.InvalidInput):
                    result.as_numpy("OUTPUT0")
                # Before: 4-50 s of CPU with the event loop blocked. The bound is generous.
                assert anyio.current_time() - started < 2
            assert server.connections == 1  # a bad value is the call's problem, not the link's
    assert not server.errors


# -- A1: a session whose transport ended is never picked again --------------------------------


def _reply_then_close(peer: Peer) -> None:
    """Each connection answers one request, then closes, the close frame in the same write."""
    request = peer.recv_frame()
    if request.get("type") == "info":
        peer.send(peer.info_reply(request), close=1000)
    else:
        peer.send(peer.inference_reply({"OUTPUT0": [1.0, 2.0]}), close=1000)


@pytest.mark.timeout(60)  # before the fix the event loop froze: only a signal could end it
async def test_requests_after_the_socket_ended_wait_for_a_new_connection(
    hostile: Callable[[Script], HostileServer], endpoint: Endpoint
) -> None:
    """The reply wakes the caller before the reader has seen the close frame behind it.

    The caller's next request then meets a transport that has ended, on a session nobody has
    marked closed yet: it must go elsewhere (here: wait for the next connection), not pick the
    same session again in a loop that never suspends.
    """
    with hostile(_reply_then_close) as server:
        async with client_of(server.url, endpoint, backoff=fast_backoff) as tcm:
            for _ in range(4):
                stats = await tcm.info.queue_stats(timeout=10)
                assert stats.total_users == 1
            for _ in range(3):
                result = await tcm.infer("m", {"INPUT0": X}, target=TARGET, timeout=10)
                assert result.as_numpy("OUTPUT0").tolist() == [1.0, 2.0]
    assert server.connections >= 7


def fast_backoff() -> Backoff:
    return Backoff(base=0.01, cap=0.05)


# -- A3: a TLS peer that hangs up during the handshake ----------------------------------------


@pytest.fixture
def tls_endpoint(
    request: pytest.FixtureRequest,
    tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext],
    anyio_backend: tuple[str, dict[str, object]],
) -> Endpoint:
    transport: str | None = getattr(request, "param", None)
    if transport == "trio-websocket" and anyio_backend[0] != "trio":
        pytest.skip("the trio-websocket transport runs on trio only")
    return Endpoint("wss", *tls_contexts, transport)


@pytest.mark.parametrize("tls_endpoint", [None, "trio-websocket"], indirect=True)
async def test_a_tls_handshake_cut_short_is_a_connect_error(tls_endpoint: Endpoint) -> None:
    server = HostileServer(serve_well, ssl_context=tls_endpoint.server_ssl)
    with server, TcpDropper(server.port, drop_all=True) as dropper:
        url = f"wss://127.0.0.1:{dropper.port}/ws"
        with pytest.raises(anytcm.ConnectError) as caught:
            async with client_of(url, tls_endpoint, connect_timeout=1.0):
                pass
    no_group(caught.value)
    assert dropper.accepted >= 1


@pytest.mark.parametrize("tls_endpoint", [None, "trio-websocket"], indirect=True)
async def test_a_proxy_dropping_every_other_tls_connection_costs_nothing(
    tls_endpoint: Endpoint,
) -> None:
    server = HostileServer(_reply_then_close, ssl_context=tls_endpoint.server_ssl)
    with server, TcpDropper(server.port) as dropper:
        url = f"wss://127.0.0.1:{dropper.port}/ws"
        async with client_of(url, tls_endpoint, backoff=fast_backoff) as tcm:
            for _ in range(5):
                stats = await tcm.info.queue_stats(timeout=10)
                assert stats.total_users == 1
    assert dropper.accepted >= 10  # half of them dropped mid-handshake


# -- A6: a failure is remembered without its buffers ------------------------------------------

LIMIT = 8 << 20


def _over_limit(peer: Peer) -> None:
    peer.recv_frame()
    body = b'{"type":"info_response","payload":{"data":"' + b"x" * (LIMIT + (4 << 20)) + b'"}}'
    peer.send_fragmented(body, 1 << 20)
    peer.recv_frame()  # until the client closes (1009)


async def test_an_over_limit_reply_leaves_no_buffer_behind(endpoint: Endpoint) -> None:
    if endpoint.name != "ws":
        pytest.skip("the buffers are the transport's; one transport shows the pool's part")
    with HostileServer(first_connection_only(_over_limit)) as server:
        async with client_of(
            server.url, max_message_size=LIMIT, backoff=fast_backoff, pool_size=1
        ) as tcm:
            gc.collect()
            tracemalloc.start()
            try:
                before = tracemalloc.get_traced_memory()[0]
                stats = await tcm.info.queue_stats(timeout=20)  # retried on a new connection
                assert stats.total_users == 1
                assert server.connections >= 2
                gc.collect()
                kept = tracemalloc.get_traced_memory()[0] - before
            finally:
                tracemalloc.stop()
            # The reply reached 8 MiB before it was refused; what stays is a few objects.
            assert kept < 2 << 20, f"{kept} bytes still held after the failure"


# -- A7: close 1012 is a shutdown, with or without SYSTEM_SHUTDOWN ----------------------------


async def test_close_1012_without_system_shutdown_is_a_server_shutdown(
    hostile: Callable[[Script], HostileServer],
    endpoint: Endpoint,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def script(peer: Peer) -> None:
        peer.recv_frame()
        peer.close(1012)
        peer.recv_frame()

    caplog.set_level(logging.INFO, logger="anytcm.pool")
    # A backoff that always draws 0: any wait before the reconnect is the shutdown floor.
    with hostile(first_connection_only(script)) as server:
        async with client_of(
            server.url, endpoint, backoff=lambda: Backoff(base=0.2, cap=0.2, uniform=min)
        ) as tcm:
            with pytest.raises(anytcm.ServerShutdown) as caught:
                await tcm.infer(
                    "m", {"INPUT0": X}, target=TARGET, retry=anytcm.RetryPolicy(attempts=1)
                )
            assert caught.value.close_code == 1012
            result = await tcm.infer("m", {"INPUT0": X}, target=TARGET)
            assert result.as_numpy("OUTPUT0").tolist() == [1.0, 2.0]
    waits = [r for r in caplog.records if "reconnecting in" in r.getMessage()]
    assert waits
    assert "1012" in waits[0].getMessage()
    assert getattr(waits[0], "delay", 0) >= 0.1  # half the ceiling, not 0


# -- B: secrets ------------------------------------------------------------------------------

SECRET = "tok-5ecret-never-logged-0123456789"
HEADER_SECRET = "Bearer hdr-5ecret-never-logged"


@pytest.mark.parametrize("capabilities", [None, "auto"])
async def test_the_token_never_reaches_a_log_record(
    capabilities: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with HostileServer(serve_well) as server:
        async with client_of(
            server.url,
            token=SECRET,
            capabilities=capabilities,
            headers={"Authorization": HEADER_SECRET, "X-Trace": "visible"},
        ) as tcm:
            await tcm.info.queue_stats()
    text = caplog.text
    assert "> TEXT" in text  # the frames are logged at DEBUG...
    assert "X-Trace: visible" in text  # ...and the headers...
    assert SECRET not in text  # ...but never the token
    assert SECRET[-12:] not in text  # not even the end websockets keeps of a long frame
    assert "hdr-5ecret" not in text


def _reachable(root: object, limit: int = 50_000) -> Iterator[object]:
    """Objects reachable from `root` through instances and containers (not modules/classes)."""
    skip = (type, type(sys), type(_reachable), type(_reachable.__code__), str, bytes)
    seen: set[int] = set()
    stack = [root]
    while stack and len(seen) < limit:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, skip):
            continue
        seen.add(id(obj))
        yield obj
        stack.extend(gc.get_referents(obj))


async def test_no_object_reachable_from_the_client_shows_the_token() -> None:
    with HostileServer(serve_well) as server:
        async with client_of(
            server.url, token=SECRET, pool_size=2, headers={"Authorization": HEADER_SECRET}
        ) as tcm:
            await tcm.info.queue_stats()
            shown = 0
            for obj in _reachable(tcm):
                module = type(obj).__module__ or ""
                if module.startswith(("anytcm", "websockets")):
                    text = repr(obj)
                    shown += 1
                    assert SECRET not in text, f"{type(obj).__qualname__} shows the token"
                if module.startswith("anytcm"):
                    # websockets keeps the opening request (headers and all) for its own use;
                    # what anytcm holds never shows a header's value.
                    assert "hdr-5ecret" not in text, f"{type(obj).__qualname__} shows a header"
            assert shown > 10  # the walk did reach the pool, its settings, sessions, protocols
            assert "token" not in repr(tcm._pool.settings)


# -- a peer that refuses every uuid gets a paced client, not a reconnect storm ---------------


def _every_uuid_taken(peer: Peer) -> None:
    request = peer.recv_frame()
    message = f"UUID '{request.get('uuid')}' is already connected"
    peer.send({"type": "error", "payload": {"message": message}}, close=1008)


async def test_a_peer_refusing_every_uuid_gets_backoff_not_a_storm() -> None:
    server = HostileServer(_every_uuid_taken, authenticate=False)
    with server, pytest.raises(anytcm.ConnectError) as caught:
        async with client_of(
            server.url, connect_timeout=1.5, backoff=lambda: Backoff(base=0.05, cap=0.2)
        ):
            pass
    no_group(caught.value)
    # One immediate retry per conflict, then the backoff (50 ms doubling to 200 ms): a few
    # dozen attempts in 1.5 s at most (seen: ~20). Without the pause: 225-540 here.
    assert 2 <= server.connections < 60, server.connections


# -- the readiness gate reads what answers /ready with bounds -------------------------------

HUGE_BODY = b" " * (32 << 20)  # built once, before any measurement


async def test_a_huge_ready_answer_is_read_only_in_part() -> None:
    with HostileServer(serve_well, http=lambda path: (200, HUGE_BODY)) as server:
        gc.collect()
        tracemalloc.start()
        try:
            async with client_of(server.url, ready_check=True) as tcm:
                stats = await tcm.info.queue_stats()
                assert stats.total_users == 1
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < 8 << 20, f"the gate buffered {peak} bytes of a 32 MiB /ready answer"


async def test_a_deeply_nested_ready_answer_is_not_ready() -> None:
    body = b'{"status":' + nested(100_000) + b"}"
    server = HostileServer(serve_well, http=lambda path: (503, body))
    with server, pytest.raises(anytcm.ConnectError) as caught:
        async with client_of(server.url, ready_check=True, connect_timeout=1.0):
            pass
    no_group(caught.value)
    assert isinstance(caught.value.__cause__, anytcm.NotReady)


# -- the error tree holds for whatever a backend raises ---------------------------------------


async def test_every_failure_here_is_a_tcm_error() -> None:
    """A cross-check of this module's premise on the running backend (no sibling leaks)."""
    assert sniffio.current_async_library() in ("asyncio", "trio")
    server = HostileServer(lambda peer: peer.drop(), authenticate=False)
    with server, pytest.raises(anytcm.TcmError) as caught:
        async with client_of(server.url, connect_timeout=1.0):
            pass
    no_group(caught.value)
