"""A hostile TCM peer for the client's tests: a WebSocket server that does what a test says.

The reference manager behaves; this one does not. It accepts connections on 127.0.0.1 in a
thread (so it runs beside either async backend), speaks the WebSocket protocol through
websockets' sans-IO `ServerProtocol` on plain sockets, and hands each authenticated connection
to a *script*: a function that reads the client's frames and answers with whatever the test
wants, byte for byte: frames nested 100,000 deep, invalid JSON, a reply and a close frame in
one TCP segment, an over-limit fragmented message, a close code without the frame that should
come before it, or nothing at all.

`TcpDropper` is a TCP forwarder that drops every other connection it accepts, the way a
misbehaving proxy or load balancer does (for wss://, before the TLS handshake completes).
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any

from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.server import ServerProtocol

Script = Callable[["Peer"], None]
HttpAnswer = Callable[[str], tuple[int, bytes]]  # path -> (status, body), for /ready and /health


def ready(path: str) -> tuple[int, bytes]:
    return 200, b'{"status":"ready"}'


# The server's own frame log would show the client's token (it receives it): kept quiet, so a
# test of what the *client* logs reads the client's records only.
_SERVER_LOGGER = logging.getLogger("tests.hostile_server")
_SERVER_LOGGER.setLevel(logging.WARNING)


class PeerClosed(Exception):
    """The client closed the connection (or it broke): the script ends."""


class Peer:
    """One client connection, seen from the server side."""

    def __init__(
        self,
        sock: socket.socket,
        index: int,
        http: HttpAnswer = ready,
        seen: list[Request] | None = None,
    ) -> None:
        self.sock = sock
        self.index = index  # 0 for the first connection this server accepted, then 1, 2, ...
        self._http = http
        self._seen = seen if seen is not None else []
        self.protocol = ServerProtocol(max_size=None, logger=_SERVER_LOGGER)
        self.auth: dict[str, Any] = {}
        self._pending: list[Frame] = []

    @property
    def uuid(self) -> str:
        return str(self.auth.get("uuid", ""))

    # -- handshake ---------------------------------------------------------------------------

    def handshake(self) -> bool:
        """Upgrade to a WebSocket (True), or answer a plain HTTP request such as /ready (False)."""
        while True:
            for event in self.protocol.events_received():
                if isinstance(event, Request):
                    self._seen.append(event)
                    if event.headers.get("Upgrade", "").lower() != "websocket":
                        self._answer_http(event.path)
                        return False
                    self.protocol.send_response(self.protocol.accept(event))
                    self._flush()
                    return True
            self._read()

    def _answer_http(self, path: str) -> None:
        # Written by hand, the body as given: a test may hand over tens of MB built once.
        status, body = self._http(path)
        head = (
            f"HTTP/1.1 {status} Answer\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        self.sock.sendall(head.encode())
        self.sock.sendall(body)

    # -- reading -----------------------------------------------------------------------------

    def _read(self) -> None:
        try:
            data = self.sock.recv(1 << 16)
        except OSError as exc:
            raise PeerClosed from exc
        if not data:
            raise PeerClosed
        self.protocol.receive_data(data)
        self._flush()  # pongs, the close echo

    def recv_frame(self) -> dict[str, Any]:
        """The client's next text frame, decoded."""
        while True:
            while self._pending:
                frame = self._pending.pop(0)
                if frame.opcode is Opcode.TEXT:
                    decoded: dict[str, Any] = json.loads(bytes(frame.data))
                    return decoded
                if frame.opcode is Opcode.CLOSE:
                    raise PeerClosed
            self._read()
            self._pending += [e for e in self.protocol.events_received() if isinstance(e, Frame)]

    def authenticate(self, payload: dict[str, Any] | None = None) -> None:
        """Read the auth frame and answer auth.ok (granting json unless told otherwise)."""
        self.auth = self.recv_frame()
        ok: dict[str, Any] = {"type": "auth.ok"}
        if self.auth.get("payload", {}).get("capability") is not None:
            ok["payload"] = payload if payload is not None else {"capability": ["json"]}
        self.send(ok)

    # -- writing -----------------------------------------------------------------------------

    def send(self, *messages: bytes | str | dict[str, Any], close: int | None = None) -> None:
        """Send text messages, then optionally a close frame, all in one write (one segment)."""
        for message in messages:
            self.protocol.send_text(_text(message))
        if close is not None:
            self.protocol.send_close(close, "")
        self._flush()

    def send_fragmented(self, message: bytes, fragment: int) -> None:
        """One text message cut into continuation frames of `fragment` bytes."""
        chunks = [message[i : i + fragment] for i in range(0, len(message), fragment)]
        for i, chunk in enumerate(chunks):
            last = i == len(chunks) - 1
            if i == 0:
                self.protocol.send_text(chunk, fin=last)
            else:
                self.protocol.send_continuation(chunk, fin=last)
            self._flush()

    def close(self, code: int = 1000) -> None:
        self.send(close=code)

    def drop(self) -> None:
        """Close the socket without a close frame (the client sees 1006)."""
        self.sock.close()

    def _flush(self) -> None:
        data = b"".join(self.protocol.data_to_send())
        if data:
            try:
                self.sock.sendall(data)
            except OSError as exc:
                raise PeerClosed from exc

    # -- replies in the manager's shapes ----------------------------------------------------

    def info_reply(self, request: dict[str, Any], data: Any = None) -> dict[str, Any]:
        payload = request.get("payload", {})
        return {
            "type": "info_response",
            "payload": {
                "job_id": payload.get("job_id"),
                "request_type": payload.get("action"),
                "status": "success",
                "data": {"total_users": 1} if data is None else data,
            },
        }

    def inference_reply(self, outputs: Any, status: str = "COMPLETED") -> dict[str, Any]:
        return {
            "type": "inference",
            "uuid": self.uuid,
            "payload": {"status": status, "data": outputs, "model_name": "m"},
        }


def _text(message: bytes | str | dict[str, Any]) -> bytes:
    if isinstance(message, dict):
        return json.dumps(message).encode()
    return message.encode() if isinstance(message, str) else message


def serve_well(peer: Peer) -> None:
    """What a healthy manager does with info and inference requests (enough for these tests)."""
    while True:
        request = peer.recv_frame()
        if request.get("type") == "info":
            peer.send(peer.info_reply(request))
        elif request.get("type") == "inference":
            peer.send(peer.inference_reply({"OUTPUT0": [1.0, 2.0]}))


class HostileServer:
    """`with HostileServer(script) as server:` then connect to `server.url`.

    Each connection is authenticated (auth.ok) unless `authenticate=False`, then given to
    `script(peer)` in its own thread; `peer.index` tells connections apart, so a script can
    misbehave on the first connection only and serve the next ones well.
    """

    def __init__(
        self,
        script: Script,
        *,
        ssl_context: ssl.SSLContext | None = None,
        authenticate: bool = True,
        http: HttpAnswer = ready,
    ) -> None:
        self._script = script
        self._http = http
        self._ssl = ssl_context
        self._authenticate = authenticate
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.connections = 0  # WebSocket connections accepted
        self.requests: list[Request] = []  # every HTTP request, the upgrades included
        self.errors: list[BaseException] = []  # what went wrong in a script, for the test
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False

    @property
    def url(self) -> str:
        scheme = "wss" if self._ssl is not None else "ws"
        return f"{scheme}://127.0.0.1:{self.port}/ws"

    def __enter__(self) -> HostileServer:  # noqa: PYI034 - not meant to be subclassed
        self._spawn(self._accept_loop)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._closed = True
        _close_quietly(self._listener)  # shutdown wakes the thread blocked in accept()
        with self._lock:
            for sock in self._sockets:
                _close_quietly(sock)
        for thread in self._threads:
            thread.join(timeout=5)

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            self._spawn(self._serve, sock)

    def _serve(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
        try:
            if self._ssl is not None:
                sock = self._ssl.wrap_socket(sock, server_side=True)
                with self._lock:
                    self._sockets.append(sock)
            with self._lock:
                index = self.connections
            peer = Peer(sock, index, self._http, self.requests)
            if not peer.handshake():
                return
            with self._lock:
                self.connections += 1
            if self._authenticate:
                peer.authenticate()
            self._script(peer)
        except (PeerClosed, OSError):
            pass
        except BaseException as exc:  # noqa: BLE001 - reported to the test, not lost in a thread
            self.errors.append(exc)
        finally:
            _close_quietly(sock)


class TcpDropper:
    """A TCP forwarder to `port` that closes every other connection it accepts at once (every
    one with `drop_all`), before a byte of it is answered."""

    def __init__(self, port: int, *, drop_all: bool = False) -> None:
        self._target = port
        self._drop_all = drop_all
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.accepted = 0
        self._sockets: list[socket.socket] = []
        self._closed = False
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> TcpDropper:  # noqa: PYI034 - not meant to be subclassed
        thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._threads.append(thread)
        thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._closed = True
        _close_quietly(self._listener)
        for sock in list(self._sockets):
            _close_quietly(sock)
        for thread in self._threads:
            thread.join(timeout=5)

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self.accepted += 1
            if self._drop_all or self.accepted % 2 == 1:
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self._target))
            self._sockets += (client, upstream)
            for a, b in ((client, upstream), (upstream, client)):
                thread = threading.Thread(target=_pipe, args=(a, b), daemon=True)
                self._threads.append(thread)
                thread.start()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(1 << 16):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        _close_quietly(sink)


def _close_quietly(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in recv or accept on it
    sock.close()


def nested(depth: int, leaf: bytes = b"1") -> bytes:
    """A JSON array nested `depth` levels deep."""
    return b"[" * depth + leaf + b"]" * depth
