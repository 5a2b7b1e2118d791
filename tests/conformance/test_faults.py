"""Reference manager fault switches (docs/reference-manager.md "Fault switches")."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from ._client import (
    Manager,
    Spawn,
    completed_data,
    fp32,
    http_get,
    raw,
    session,
    tensor,
)

pytestmark = [pytest.mark.reference_only, pytest.mark.fault]


@pytest.fixture(scope="module")
def server(spawn: Spawn) -> Manager:
    return spawn()


@pytest.fixture
def faulty(server: Manager) -> Iterator[Manager]:
    """The module's server, with every switch cleared afterwards."""
    yield server
    server.set_faults(reset=1)


def test_latency_fault(faulty: Manager) -> None:
    """`latency.<model>`: added latency for every inference of that model only."""
    faulty.set_faults(**{"latency.double": 400})
    with session(faulty.ws_url) as client:
        start = time.monotonic()
        client.infer("identity", [tensor("X", "INT32", [1], [1])])
        assert completed_data(client.recv()) == {"OUT_X": [1]}
        assert time.monotonic() - start < 0.35
        start = time.monotonic()
        client.infer("double", [fp32("INPUT0", [1.0])])
        assert completed_data(client.recv()) == {"OUTPUT0": [2.0]}
        assert time.monotonic() - start >= 0.4


def test_hang_fraction_one(faulty: Manager) -> None:
    """`hang_fraction=1`: inference requests are never answered; after `reset` they are."""
    faulty.set_faults(hang_fraction=1)
    with session(faulty.ws_url) as client:
        client.infer("double", [fp32("INPUT0", [1.0])])
        client.assert_silent(0.8)
        assert client.is_open()  # info is unaffected
        faulty.set_faults(reset=1)
        client.infer("double", [fp32("INPUT0", [5.0])])
        assert completed_data(client.recv()) == {"OUTPUT0": [10.0]}
        client.assert_silent(0.3)


def test_drop_after_frames(faulty: Manager) -> None:
    """`drop_after_frames=N`: a connection is dropped (no close frame, 1006) after N frames."""
    faulty.set_faults(drop_after_frames=3)
    with session(faulty.ws_url) as client:
        with contextlib.suppress(ConnectionClosed):
            for _ in range(10):
                client.send("info", {"action": "queue_stats"})
        frames, code = client.frames_until_close()
        assert code == 1006
        assert len(frames) <= 2  # plus auth.ok: at most 3 frames received


def test_stall(spawn: Spawn) -> None:
    """`stall=1`: every connection stops reading and writing (half-open): no reply, no pong;
    new connections stall too."""
    manager = spawn()
    with session(manager.ws_url) as client, contextlib.ExitStack() as stack:
        newcomer = stack.enter_context(raw(manager.ws_url))
        stack.callback(manager.kill)  # before the sockets close: no close handshake to wait for
        manager.set_faults(stall=1)
        client.send("info", {"action": "queue_stats"})
        client.assert_silent(0.6)
        assert not client.ws.ping().wait(0.6)
        newcomer.send("auth", {})
        newcomer.assert_silent(0.6)


def test_exit(spawn: Spawn) -> None:
    """`exit=<code>`: the process exits at once — no close frames, HTTP gone."""
    manager = spawn()
    with session(manager.ws_url) as client:
        with contextlib.suppress(Exception):
            manager.set_faults(exit=3)
        exc = client.expect_close()
        assert exc.rcvd is None
    deadline = time.monotonic() + 5
    while True:
        try:
            http_get(manager.http_url, "/health")
        except httpx.TransportError:
            break
        assert time.monotonic() < deadline, "server still answers after exit fault"
        time.sleep(0.1)
