"""Shared helpers of the client integration tests (`tests/test_client_*.py`).

Everything here talks to a real reference manager over loopback sockets; nothing of anytcm is
mocked. Most modules share the session's `ReferenceManager` subprocess (the `manager` fixture
of tests/conftest.py); fault tests and managers with other options start their own.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import Callable, Mapping
from typing import Any

import anyio
import numpy as np
import numpy.typing as npt
import sniffio

import anytcm
from anytcm.testing import ReferenceManager

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

REF = anytcm.Target("127.0.0.1", "ref-0")
"""The reference manager's one registered target (also in its Docker cache)."""

OPENSTACK: dict[str, str] = {
    "name": "vm-under-test",
    "keypair": "kp",
    "image_id": "img-1",
    "security": "default",
    "flavor_id": "m1.small",
    "network_id": "net-1",
}
"""Every `creation_variables` key `create_vm` / `creation` require."""

DOCKER: dict[str, Any] = {"image": "nvcr.io/nvidia/tritonserver:24.08-py3", "name": "triton"}
MINIO: dict[str, str] = {
    "endpoint": "minio:9000",
    "bucket": "models",
    "folder": "double",
    "access_key": "AK",
    "secret_key": "SK",
}


def f32(*values: float) -> npt.NDArray[np.float32]:
    return np.array(values, dtype=np.float32)


def distinct(i: int, n: int = 8) -> npt.NDArray[np.float32]:
    """An input that differs from every other `i`: its result tells whose reply it is."""
    values: npt.NDArray[np.float32] = np.arange(n, dtype=np.float32) + np.float32(1000 * i)
    return values


def slow_inputs(x: npt.NDArray[np.float32], delay_ms: int) -> dict[str, Any]:
    return {"INPUT0": x, "DELAY_MS": np.array([delay_ms], dtype=np.int32)}


def text(*items: str) -> npt.NDArray[Any]:
    return np.array([s.encode() for s in items], dtype=object)


async def infer_double(
    client: anytcm.AsyncClient,
    x: npt.NDArray[np.float32],
    *,
    target: anytcm.Target = REF,
    timeout: float | None = None,
) -> npt.NDArray[Any]:
    """`double` on x; asserts the reply is 2x (so it is this call's own reply) and returns it."""
    result = await client.infer("double", {"INPUT0": x}, target=target, timeout=timeout)
    assert result.model_name == "double"
    out = result.as_numpy("OUTPUT0")
    np.testing.assert_array_equal(out, 2 * x.astype(np.float64))
    return out


def metric(manager: ReferenceManager, name: str) -> float:
    """One Prometheus sample of the manager (0.0 when absent)."""
    return manager.metrics().get(name, 0.0)


async def metric_async(manager: ReferenceManager, name: str) -> float:
    """`metric` off the event loop (the admin calls are blocking httpx)."""
    return await anyio.to_thread.run_sync(metric, manager, name)


async def wait_until(
    predicate: Callable[[], bool], *, timeout: float = 10.0, what: str = "condition"
) -> None:
    """Poll a cheap predicate until it holds (coarse deadline, for a noisy machine)."""
    with anyio.move_on_after(timeout):
        while not predicate():
            await anyio.sleep(0.02)
        return
    raise AssertionError(f"{what} did not happen within {timeout} s")


async def wait_until_async(
    probe: Callable[[], Any], *, timeout: float = 10.0, what: str = "condition"
) -> None:
    """Like `wait_until` for a blocking probe (run in a worker thread)."""
    with anyio.move_on_after(timeout):
        while not await anyio.to_thread.run_sync(probe):
            await anyio.sleep(0.05)
        return
    raise AssertionError(f"{what} did not happen within {timeout} s")


async def open_connections_up(client: anytcm.AsyncClient, n: int) -> None:
    await wait_until(lambda: client.stats["open_connections"] == n, what=f"{n} open connections")


def free_port() -> int:
    """A loopback port nothing listens on (bound then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def live_task_count() -> int:
    """How many tasks the running event loop has (asyncio or trio)."""
    if sniffio.current_async_library() == "trio":
        import trio

        def count(task: trio.lowlevel.Task) -> int:
            return 1 + sum(count(child) for n in task.child_nurseries for child in n.child_tasks)

        root = trio.lowlevel.current_root_task()
        assert root is not None
        return count(root)
    return len(asyncio.all_tasks())


def inference_frames_received(manager: ReferenceManager) -> float:
    """How many inference frames the manager has read so far."""
    return metric(manager, 'tcm_ws_messages_received_total{type="inference"}')


def assert_not_group(error: BaseException) -> None:
    assert not isinstance(error, BaseExceptionGroup), f"an ExceptionGroup escaped: {error!r}"


def shape_of(spec: anytcm.ModelSpec) -> Mapping[str, tuple[str, tuple[int, ...]]]:
    return {s.name: (s.datatype, s.dims) for s in spec.inputs}
