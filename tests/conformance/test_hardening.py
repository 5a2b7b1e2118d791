"""The reference manager as a server others test against: it must be safe to run (issue 18 C).

Where the real server is lax (no auth deadline, frames buffered before the size check, idle uuid
tables kept 900 s) the reference manager is stricter; docs/reference-manager.md lists every such
difference. Where a real client depends on the real server's behaviour (default roles for
`client.roles: []`) it matches it. Every test here talks to a reference manager subprocess over
loopback sockets.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import time
from typing import TYPE_CHECKING, Any

import pytest
from websockets.client import ClientProtocol
from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Response
from websockets.sync.client import ClientConnection, connect
from websockets.uri import parse_uri

from ._client import (
    SHM_DIR,
    SHM_PREFIX,
    TIMEOUT,
    Client,
    Spawn,
    completed_data,
    failed_object,
    fp32,
    http_base,
    http_get,
    management,
    new_uuid,
    raw,
    session,
    shm_ref,
    slow_inputs,
    tensor,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

pytestmark = pytest.mark.reference_only

CAP = 65536
TOO_LARGE = {"type": "error", "payload": {"message": f"Message too large (>{CAP} bytes)"}}


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll `predicate` (state another process owns) until it holds or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


# -- shm_key: strictly a segment directly under /dev/shm ------------------------------------------


@contextlib.contextmanager
def shm_entry(make: Callable[[str], None]) -> Iterator[str]:
    """An entry under /dev/shm made by `make(path)` (a link, a FIFO…); yields its key."""
    key = SHM_PREFIX + new_uuid()
    path = os.path.join(SHM_DIR, key)
    make(path)
    try:
        yield key
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def assert_shm_refused(frame: dict[str, Any], secret: bytes | None = None) -> None:
    data = failed_object(frame)
    assert data["code"] == "TRITON_SHM_UNAVAILABLE", data
    assert data["retriable"] is False
    if secret is not None:
        assert secret.decode() not in str(frame)


@pytest.mark.parametrize(
    "key",
    [
        "../../etc/passwd",
        "/../../../etc/passwd",
        "anytcmconf-x/../../../etc/passwd",
        ".",
        "/..",
        "x\x00y",
    ],
)
def test_shm_key_outside_the_shm_directory_is_refused(ws_url: str, key: str) -> None:
    """An shm_key that is not a plain segment name (`..`, `/`, `.`, NUL) is refused as an
    invalid SHM reference (`TRITON_SHM_UNAVAILABLE`, fatal), and nothing is read: before, the
    identity model echoed the first bytes of /etc/passwd."""
    with session(ws_url) as client:
        client.infer("identity", [shm_ref(key, "X", "UINT8", [4], 4)])
        frame = client.recv()
        assert_shm_refused(frame)
        assert "invalid SHM reference: shm_key" in failed_object(frame)["message"]


def test_shm_symlink_out_of_the_shm_directory_is_refused(ws_url: str, tmp_path: Path) -> None:
    """A symbolic link under /dev/shm is not followed, wherever it points."""
    secret = b"not-for-the-client-" + new_uuid().encode()
    target = tmp_path / "secret"
    target.write_bytes(secret)
    with shm_entry(lambda path: os.symlink(target, path)) as key, session(ws_url) as client:
        client.infer("identity", [shm_ref(key, "X", "UINT8", [len(secret)], len(secret))])
        assert_shm_refused(client.recv(), secret)


def test_shm_fifo_is_refused_without_blocking(spawn: Spawn) -> None:
    """A FIFO under /dev/shm is not a segment: refused at once. Before, opening it blocked the
    server's event loop until a writer came (every connection froze)."""
    manager = spawn()
    with shm_entry(os.mkfifo) as key, session(manager.ws_url) as client:
        client.infer("identity", [shm_ref(key, "X", "UINT8", [4], 4)])
        assert_shm_refused(client.recv())
        with session(manager.ws_url) as other:
            assert other.is_open()


# -- roles: what the vendor SDK sends --------------------------------------------------------------


@pytest.mark.parametrize("roles", [[], ""], ids=["empty-list", "empty-string"])
def test_empty_client_roles_get_the_default_roles(ws_url: str, roles: Any) -> None:
    """§3.2: in development mode, roles = `client.roles` if given, else inference+management;
    empty counts as not given (`if not roles`). The vendor SDK sends `roles: []` whenever it has
    a token."""
    client_info = {"sub": "someone", "tenant_id": "dev-tenant", "roles": roles}
    with session(ws_url, token="any", client=client_info) as client:
        client.infer("double", [fp32("INPUT0", [1.5])])
        assert completed_data(client.recv()) == {"OUTPUT0": [3.0]}
        reply = management(client, {"action": "no_such_action"})
        assert reply["type"] == "management", reply


# -- inbound frames: the cap is checked on the header ----------------------------------------------


class RawSocket:
    """A WebSocket client over a plain socket that can send a frame header without its payload.

    websockets' sans-I/O `ClientProtocol` does the handshake and parses what the server sends;
    the frames under test are written by hand.
    """

    def __init__(self, ws_url: str) -> None:
        uri = parse_uri(ws_url)
        self.sock = socket.create_connection((uri.host, uri.port), timeout=TIMEOUT)
        self.protocol = ClientProtocol(uri, max_size=None)
        self.protocol.send_request(self.protocol.connect())
        self._flush()
        self.frames: list[Frame] = []
        response = self._next_event()
        assert isinstance(response, Response), response
        assert response.status_code == 101, response

    def _flush(self) -> None:
        for data in self.protocol.data_to_send():
            if data:
                self.sock.sendall(data)

    def _next_event(self) -> Any:
        while True:
            events = self.protocol.events_received()
            if events:
                assert len(events) == 1 or isinstance(events[0], Frame), events
                self.frames.extend(e for e in events[1:] if isinstance(e, Frame))
                return events[0]
            data = self.sock.recv(65536)  # a server that does not answer: TimeoutError
            if not data:
                return None  # closed without (more) frames
            self.protocol.receive_data(data)

    def send_header(self, opcode: int, length: int, payload: bytes = b"", fin: bool = True) -> None:
        """A masked frame header announcing `length` bytes, then only `payload` of them."""
        first = (0x80 if fin else 0) | opcode
        if length < 126:
            header = struct.pack("!BB", first, 0x80 | length)
        elif length < 1 << 16:
            header = struct.pack("!BBH", first, 0x80 | 126, length)
        else:
            header = struct.pack("!BBQ", first, 0x80 | 127, length)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def send_text(self, text: str) -> None:
        data = text.encode()
        self.send_header(Opcode.TEXT, len(data), data)

    def next_text(self) -> str:
        frame = self.frames.pop(0) if self.frames else self._next_event()
        assert isinstance(frame, Frame), frame
        assert frame.opcode is Opcode.TEXT, frame
        return bytes(frame.data).decode()

    def frames_until_close(self) -> tuple[list[str], Close | None]:
        """Text frames received until the server's close frame (None: closed without one)."""
        texts: list[str] = []
        while True:
            frame = self.frames.pop(0) if self.frames else self._next_event()
            if not isinstance(frame, Frame):
                return texts, None
            if frame.opcode is Opcode.TEXT:
                texts.append(bytes(frame.data).decode())
            elif frame.opcode is Opcode.CLOSE:
                return texts, Close.parse(frame.data)

    def close(self) -> None:
        self.sock.close()


@contextlib.contextmanager
def raw_socket(ws_url: str) -> Iterator[RawSocket]:
    conn = RawSocket(ws_url)
    try:
        yield conn
    finally:
        conn.close()


@pytest.mark.parametrize("authenticated", [False, True], ids=["before-auth", "after-auth"])
def test_oversize_frame_refused_from_its_header(ws_url: str, authenticated: bool) -> None:
    """§1: a frame announcing 16 MiB gets `Message too large (>65536 bytes)` and close 1009
    while only its header (and a few bytes) has arrived: the server does not wait for, nor
    buffer, the payload. Before, it waited for all 16 MiB."""
    with raw_socket(ws_url) as conn:
        if authenticated:
            conn.send_text(json.dumps({"uuid": new_uuid(), "type": "auth", "payload": {}}))
            assert json.loads(conn.next_text())["type"] == "auth.ok"
        conn.send_header(Opcode.TEXT, 16 * 1024 * 1024, b'{"uuid": "')
        texts, close = conn.frames_until_close()
    assert [json.loads(t) for t in texts] == [TOO_LARGE]
    assert close is not None
    assert close.code == 1009


def test_fragmented_message_over_the_cap_is_refused(ws_url: str) -> None:
    """§1: the cap is on the whole message: a 40 000-byte fragment followed by one announcing
    40 000 more is refused at the second one's header (before: the server waited for its
    payload)."""
    with raw_socket(ws_url) as conn:
        conn.send_header(Opcode.TEXT, 40_000, b"{" + b" " * 39_999, fin=False)
        conn.send_header(Opcode.CONT, 40_000, b" ", fin=True)
        texts, close = conn.frames_until_close()
    assert [json.loads(t) for t in texts] == [TOO_LARGE]
    assert close is not None
    assert close.code == 1009


# -- permessage-deflate: only when asked -----------------------------------------------------------


@contextlib.contextmanager
def offering_deflate(ws_url: str) -> Iterator[ClientConnection]:
    """A connection whose handshake offers permessage-deflate (as the vendor SDK's does)."""
    ws = connect(ws_url, compression="deflate", proxy=None, open_timeout=TIMEOUT, legacy=True)
    assert isinstance(ws, ClientConnection)
    try:
        yield ws
    finally:
        ws.close()


def test_permessage_deflate_is_off_by_default(ws_url: str) -> None:
    """The offer is declined unless the server runs with `--permessage-deflate` (before: always
    accepted)."""
    with offering_deflate(ws_url) as ws:
        assert ws.protocol.extensions == []
        client = Client(ws, new_uuid())
        assert client.auth()["type"] == "auth.ok"


def test_permessage_deflate_switch_and_the_cap_on_inflated_size(spawn: Spawn) -> None:
    """`--permessage-deflate` accepts the extension; the cap then applies to the inflated text
    (contract §1: the real server's cap is on the decompressed frame)."""
    manager = spawn("--permessage-deflate")
    with offering_deflate(manager.ws_url) as ws:
        assert [e.name for e in ws.protocol.extensions] == ["permessage-deflate"]
        client = Client(ws, new_uuid())
        assert client.auth()["type"] == "auth.ok"
        assert client.is_open()
        client.send("info", {"action": "queue_stats", "pad": " " * (2 * CAP)})
        client.expect_error_and_close(f"Message too large (>{CAP} bytes)", 1009)


# -- the auth deadline -----------------------------------------------------------------------------


def test_unauthenticated_socket_is_closed_after_the_auth_timeout(spawn: Spawn) -> None:
    """With `--auth-timeout 0.5`, a socket that sends nothing gets an error frame and close 1008
    (policy violation, like every other pre-auth refusal, §3.1) well within a few seconds."""
    manager = spawn("--auth-timeout", "0.5")
    with raw(manager.ws_url) as client:
        started = time.monotonic()
        frames, code = client.frames_until_close(timeout=10)
        elapsed = time.monotonic() - started
    assert code == 1008
    assert [f["type"] for f in frames] == ["error"]
    assert frames[0]["payload"]["message"].startswith("Auth timeout")
    assert elapsed < 8  # generous: the point is that it closes at all


def test_auth_timeout_spares_authenticated_sockets(spawn: Spawn) -> None:
    """The deadline is for the auth frame only: an authenticated socket idle past it stays open."""
    manager = spawn("--auth-timeout", "0.3")
    with session(manager.ws_url) as client:
        time.sleep(0.8)
        assert client.is_open()


# -- per-uuid tables -------------------------------------------------------------------------------


def stats(client: Client) -> dict[str, int]:
    data: dict[str, int] = client.queue_stats()["payload"]["data"]
    return data


def test_uuids_of_gone_clients_are_forgotten(spawn: Spawn) -> None:
    """A uuid's queues are forgotten once no connection holds it and nothing is queued or
    running for it, so clients with fresh uuids do not grow the server's tables (the real
    server keeps them 900 s; `queue_stats` "users" show it). Before: 20 users left behind."""
    manager = spawn()
    with session(manager.ws_url) as observer:  # queue_stats only: the fast path queues nothing
        for _ in range(20):
            with session(manager.ws_url) as client:
                client.send("info", {"action": "other"})
                client.recv()
                assert stats(client)["info_users"] >= 1  # a live client's queue counts
        assert wait_for(lambda: stats(observer)["total_users"] == 0), stats(observer)
        assert stats(observer)["info_users"] == 0


def test_uuid_with_a_running_job_is_kept_until_it_ends(spawn: Spawn) -> None:
    """A uuid whose client left while its job runs is forgotten when the job ends."""
    manager = spawn()
    with session(manager.ws_url) as observer:
        with session(manager.ws_url) as client:
            client.infer("slow", slow_inputs(1500))
            assert wait_for(lambda: stats(observer)["executor_inference_pending"] == 1)
        assert stats(observer)["inference_users"] == 1  # still running
        assert wait_for(lambda: stats(observer)["total_users"] == 0), stats(observer)


def test_queue_stats_running_totals_stay_exact(spawn: Spawn) -> None:
    """`queue_stats` keeps running totals instead of walking every uuid: they must still add up
    while jobs queue, run and are NACKed, and come back to zero (a guard for the totals; the
    old scan was exact by construction, so this passes before the change too)."""
    manager = spawn("--workers", "inference=1", "--queue-limit", "inference=2")
    with session(manager.ws_url) as client:
        for _ in range(5):
            client.infer("slow", slow_inputs(300))
        client.send("info", {"action": "queue_stats", "job_id": "now"})
        before_stats = []
        while (frame := client.recv())["type"] != "info_response":
            before_stats.append(frame)
        nacks = [f for f in before_stats if f["payload"].get("code") == "BACKPRESSURE_QUEUE_FULL"]
        assert len(nacks) == len(before_stats)  # nothing else can have happened yet
        data = frame["payload"]["data"]
        accepted = 5 - len(nacks)
        assert data["inference_total_queued"] + data["executor_inference_pending"] == accepted
        assert data["total_queued"] == data["inference_total_queued"]
        assert (data["inference_users"], data["total_users"]) == (1, 1)
        client.recv_n(accepted, timeout=10)
        data = stats(client)
        assert data["total_queued"] == data["inference_total_queued"] == 0
        assert data["executor_inference_pending"] == 0


# -- bounded work per request ----------------------------------------------------------------------


def test_generate_size_is_capped(ws_url: str) -> None:
    """`generate` refuses a SIZE above 2**22 with its [400] reason (before: up to 2**28 values,
    gigabytes of JSON for one 16-byte request)."""
    with session(ws_url) as client:
        client.infer("generate", [tensor("SIZE", "INT64", [1], [(1 << 22) + 1])])
        data = failed_object(client.recv())
        assert data["code"] == "TRITON_INFERENCE_FAILED"
        assert "[400] SIZE must be in [0, 4194304], got 4194305" in data["message"], data


def test_management_metric_label_is_not_client_text(ws_url: str) -> None:
    """The `tcm_management_actions` label is the action for known actions and `unknown`
    otherwise: one time series per client-chosen string would grow without bound."""
    action = "bogus-" + new_uuid()
    with session(ws_url) as client:
        reply = management(client, {"action": action})
        assert reply["payload"]["data"] == f"Job action not found: '{action}'"
    metrics = http_get(http_base(ws_url), "/metrics").text
    assert action not in metrics
    assert 'action="unknown"' in metrics
