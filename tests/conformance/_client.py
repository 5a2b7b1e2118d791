"""A deliberately plain WebSocket/HTTP client for the conformance suite.

Nothing here imports anytcm: the suite talks to the server the way any third-party client would,
so a bug shared by the SDK and the reference manager cannot hide.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid as uuid_mod
from typing import TYPE_CHECKING, Any, Protocol

import httpx
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

Json = dict[str, Any]

#: Outbound frames can be arbitrarily large (contract §1): raise websockets' 1 MiB default.
MAX_SIZE = 64 * 1024 * 1024
#: Default receive timeout; every reply in the suite is expected well within it.
TIMEOUT = 5.0
#: The registered target of the reference manager (docs/reference-manager.md).
REF_VM_IP = "127.0.0.1"
REF_CONTAINER = "ref-0"
SHM_DIR = "/dev/shm"
SHM_PREFIX = "anytcmconf-"

INFO_QUEUE_KEYS = frozenset(
    {
        "info_users",
        "management_users",
        "inference_users",
        "total_users",
        "total_queued",
        "info_total_queued",
        "management_total_queued",
        "inference_total_queued",
        "executor_info_pending",
        "executor_management_pending",
        "executor_inference_pending",
        "executor_info_available",
        "executor_management_available",
        "executor_inference_available",
    }
)


def new_uuid() -> str:
    """A fresh client identity (uuid4 hex)."""
    return uuid_mod.uuid4().hex


def http_base(ws_url: str) -> str:
    """`ws://host:port/ws` → `http://host:port` (wss → https)."""
    if ws_url.startswith("wss://"):
        rest, scheme = ws_url[len("wss://") :], "https://"
    elif ws_url.startswith("ws://"):
        rest, scheme = ws_url[len("ws://") :], "http://"
    else:
        raise ValueError(f"not a ws:// URL: {ws_url!r}")
    rest = rest.removesuffix("/ws")
    return scheme + rest.rstrip("/")


def http_get(base: str, path: str, **params: Any) -> httpx.Response:
    """A plain GET against the server's HTTP side."""
    with httpx.Client(base_url=base, timeout=TIMEOUT, trust_env=False) as client:
        return client.get(path, params=params or None)


def open_ws(url: str, open_timeout: float = TIMEOUT) -> ClientConnection:
    """Open a raw WebSocket (no auth frame sent yet); the caller closes it."""
    ws = connect(
        url,
        max_size=MAX_SIZE,
        compression=None,
        proxy=None,
        open_timeout=open_timeout,
        close_timeout=2,
        ping_interval=None,
        legacy=True,
    )
    assert isinstance(ws, ClientConnection)
    return ws


class Client:
    """One WebSocket connection with a fixed uuid."""

    def __init__(self, ws: ClientConnection, uid: str) -> None:
        self.ws = ws
        self.uuid = uid

    # -- sending ---------------------------------------------------------------------------
    def send_raw(self, text: str | bytes) -> None:
        self.ws.send(text)

    def send_json(self, obj: Any) -> None:
        self.ws.send(json.dumps(obj))

    def send(self, type_: str, payload: Any, **extra: Any) -> None:
        """Send one envelope carrying this connection's uuid."""
        self.send_json({"uuid": self.uuid, "type": type_, "payload": payload, **extra})

    def auth(self, **payload: Any) -> Json:
        """Send an auth frame and return the first frame received."""
        self.send("auth", payload)
        return self.recv_raw()

    def queue_stats(self, job_id: Any = None) -> Json:
        """Send a queue_stats info request and wait for its reply (skips other frames)."""
        jid = job_id if job_id is not None else new_uuid()
        self.send("info", {"action": "queue_stats", "job_id": jid})
        return self.recv_until(lambda f: f.get("type") == "info_response")

    def infer(self, model: str, inputs: list[Json], **kwargs: Any) -> None:
        """Send one inference request (see `inference_payload`)."""
        self.send("inference", inference_payload(model, inputs, **kwargs))

    # -- receiving -------------------------------------------------------------------------
    def recv_raw(self, timeout: float = TIMEOUT) -> Json:
        """The next frame, whatever it is."""
        data = self.ws.recv(timeout=timeout)
        assert isinstance(data, str), f"server sent a binary frame: {data!r}"
        obj = json.loads(data)
        assert isinstance(obj, dict), f"frame is not a JSON object: {data!r}"
        return obj

    def recv(self, timeout: float = TIMEOUT) -> Json:
        """The next frame, skipping unsolicited ones (alerts, budget warnings; contract §5.3)."""
        deadline = time.monotonic() + timeout
        while True:
            frame = self.recv_raw(max(0.01, deadline - time.monotonic()))
            if not is_unsolicited(frame):
                return frame

    def recv_until(self, pred: Callable[[Json], bool], timeout: float = TIMEOUT) -> Json:
        """Skip frames until one matches `pred`."""
        deadline = time.monotonic() + timeout
        while True:
            frame = self.recv_raw(max(0.01, deadline - time.monotonic()))
            if pred(frame):
                return frame

    def recv_n(self, n: int, timeout: float = TIMEOUT) -> list[Json]:
        """The next `n` solicited frames."""
        deadline = time.monotonic() + timeout
        return [self.recv(max(0.01, deadline - time.monotonic())) for _ in range(n)]

    def assert_silent(self, seconds: float) -> None:
        """No solicited frame arrives within `seconds`."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                frame = self.recv_raw(left)
            except TimeoutError:
                return
            assert is_unsolicited(frame), f"unexpected frame {frame!r}"

    def expect_close(self, timeout: float = TIMEOUT) -> ConnectionClosed:
        """Read until the connection ends; return the exception (with `.rcvd`)."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                self.ws.recv(timeout=max(0.01, deadline - time.monotonic()))
        except ConnectionClosed as exc:
            return exc

    def frames_until_close(self, timeout: float = TIMEOUT) -> tuple[list[Json], int | None]:
        """Every frame until the connection ends, and the close code (1006 when no close frame
        was received; None when it was still open after `timeout`)."""
        frames: list[Json] = []
        deadline = time.monotonic() + timeout
        try:
            while (left := deadline - time.monotonic()) > 0:
                frames.append(self.recv_raw(left))
        except ConnectionClosed as exc:
            return frames, close_code(exc)
        except TimeoutError:
            pass
        return frames, None

    def expect_error_and_close(self, message: str, code: int) -> None:
        """An error frame with exactly `message`, then a close frame with `code`."""
        frame = self.recv_raw()
        assert frame == {"type": "error", "payload": {"message": message}}, frame
        assert close_code(self.expect_close()) == code

    def is_open(self) -> bool:
        """The socket still answers a queue_stats request."""
        try:
            reply = self.queue_stats()
        except (ConnectionClosed, TimeoutError):
            return False
        return bool(reply["payload"]["status"] == "success")

    def close(self) -> None:
        self.ws.close()


def close_code(exc: ConnectionClosed) -> int:
    """The close code the server sent; 1006 when no close frame was received."""
    return 1006 if exc.rcvd is None else exc.rcvd.code


def is_unsolicited(frame: Json) -> bool:
    if frame.get("type") == "alert":
        return True
    payload = frame.get("payload")
    return (
        frame.get("type") == "error"
        and isinstance(payload, dict)
        and payload.get("code") == "BACKPRESSURE_INSUFFICIENT_BUDGET"
    )


@contextlib.contextmanager
def raw(url: str, uid: str | None = None) -> Iterator[Client]:
    """A connection that has not authenticated yet."""
    ws = open_ws(url)
    try:
        yield Client(ws, uid or new_uuid())
    finally:
        ws.close()


@contextlib.contextmanager
def session(url: str, uid: str | None = None, **auth_payload: Any) -> Iterator[Client]:
    """A connection that has authenticated successfully."""
    with raw(url, uid) as client:
        reply = client.auth(**auth_payload)
        assert reply["type"] == "auth.ok", reply
        yield client


# -- payload builders ------------------------------------------------------------------------
def tensor(name: str, datatype: str, shape: list[int] | int, data: Any) -> Json:
    """An input in the SDK form `{name, shape, datatype, data}`."""
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


def mtensor(name: str, type_: str, dims: list[int] | int, value: Any) -> Json:
    """An input in the manager form `{name, dims, type, value}`."""
    return {"name": name, "dims": dims, "type": type_, "value": value}


def fp32(name: str, values: list[Any]) -> Json:
    """A 1-D FP32 input."""
    return tensor(name, "FP32", [len(values)], values)


def slow_inputs(delay_ms: int, values: list[float] | None = None) -> list[Json]:
    vals = values if values is not None else [1.0]
    return [fp32("INPUT0", vals), tensor("DELAY_MS", "INT32", [1], [delay_ms])]


def inference_payload(
    model: str | None,
    inputs: list[Json] | None,
    *,
    vm_ip: str | None = REF_VM_IP,
    container_id: str | None = REF_CONTAINER,
    **request: Any,
) -> Json:
    """An inference payload against the reference's registered target by default."""
    payload: Json = {}
    if vm_ip is not None:
        payload["vm_ip"] = vm_ip
    if container_id is not None:
        payload["container_id"] = container_id
    if model is not None:
        payload["model_name"] = model
    req: Json = dict(request)
    if inputs is not None:
        req["inputs"] = inputs
    payload["request"] = req
    return payload


def shm_ref(
    key: str, name: str, dtype: str, shape: list[int], byte_size: int, offset: int = 0
) -> Json:
    """A complete SHMReference input (contract §4.3, §9)."""
    return {
        "name": name,
        "shm_key": key,
        "offset": offset,
        "byte_size": byte_size,
        "shape": shape,
        "dtype": dtype,
    }


@contextlib.contextmanager
def shm_segment(data: bytes) -> Iterator[str]:
    """A POSIX shared-memory segment under /dev/shm holding `data`; yields its key."""
    key = SHM_PREFIX + new_uuid()
    path = os.path.join(SHM_DIR, key)
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.close(fd)
        fd = -1
        yield key
    finally:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def failed_object(frame: Json) -> Json:
    """Assert `frame` is a FAILED inference frame with a typed error object; return it."""
    assert frame["type"] == "inference", frame
    payload = frame["payload"]
    assert payload["status"] == "FAILED", frame
    data = payload["data"]
    assert isinstance(data, dict), frame
    assert set(data) >= {"code", "message", "retriable"}, data
    return data


def completed_data(frame: Json) -> Any:
    """Assert `frame` is a COMPLETED inference frame; return its data."""
    assert frame["type"] == "inference", frame
    assert frame["payload"]["status"] == "COMPLETED", frame
    return frame["payload"]["data"]


class Manager(Protocol):
    """What the suite uses of `anytcm.testing.ReferenceManager` (docs/reference-manager.md)."""

    @property
    def ws_url(self) -> str: ...

    @property
    def http_url(self) -> str: ...

    def set_faults(self, **faults: Any) -> Any: ...

    def terminate(self) -> Any: ...

    def kill(self) -> Any: ...


class Spawn(Protocol):
    """Start an extra reference manager with options; stopped at the end of the module."""

    def __call__(self, *args: str, token: str | None = None) -> Manager: ...


# -- management helpers (contract §4.2) -------------------------------------------------------
OPENSTACK = {
    "name": "conformance-vm",
    "keypair": "conformance-key",
    "image_id": "image-1",
    "security": "sg-1",
    "flavor_id": "flavor-1",
    "network_id": "net-1",
}
DOCKER = {"image": "tritonserver:24.01-py3", "name": "conformance"}
MINIO = {
    "endpoint": "http://127.0.0.1:9000",
    "bucket": "models",
    "folder": "double",
    "access_key": "ak",
    "secret_key": "sk",
}


def management(client: Client, payload: Json, **extra: Any) -> Json:
    """Send a management request and return its reply (skips info/inference frames)."""
    client.send("management", payload, **extra)
    return client.recv_until(lambda f: f.get("type") in ("management", "error"), timeout=10)


def create_vm(client: Client) -> tuple[str, str]:
    """`create_vm` → `(vm_ip, vm_id)`."""
    reply = management(client, {"action": "create_vm", "openstack": dict(OPENSTACK)})
    assert reply["payload"]["status"] is True, reply
    vm_ip, vm_id = reply["payload"]["data"]
    return vm_ip, vm_id


def create_container(client: Client, vm_id: str) -> str:
    """`create_container` on a VM from the OpenStack cache → container_id."""
    reply = management(
        client,
        {
            "action": "create_container",
            "vm_id": vm_id,
            "docker": dict(DOCKER),
            "minio": dict(MINIO),
        },
    )
    assert reply["payload"]["status"] is True, reply
    data = reply["payload"]["data"]
    # The contract's shape is `[container_id, docker_config]` (asserted by its own test in
    # test_management.py); this helper only needs the id, so other tests don't fail with it.
    container_id = data[0] if isinstance(data, list) else data
    assert isinstance(container_id, str)
    return container_id
