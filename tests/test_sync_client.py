"""`anytcm.SyncClient`: the blocking facade, its portal thread, and what crosses between them.

Every test runs with the portal on asyncio and on trio, against one real reference manager per
module. An autouse fixture checks that no thread and no socket outlives any test.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import sniffio
import trio

import anytcm
from _client_helpers import (
    DOCKER,
    MINIO,
    OPENSTACK,
    REF,
    assert_not_group,
    distinct,
    f32,
    free_port,
    slow_inputs,
    text,
)
from anytcm import wire
from anytcm.client import InfoAPI, ManagementAPI, connect
from anytcm.sync_client import SyncClient, SyncInfoAPI, SyncManagementAPI
from anytcm.testing import ReferenceManager


@pytest.fixture(params=["asyncio", "trio"])
def backend(request: pytest.FixtureRequest) -> str:
    """The portal's event loop: every test runs on both."""
    name: str = request.param
    return name


def open_sockets() -> int | None:
    """How many sockets this process holds (None where /proc is not available)."""
    fd_dir = "/proc/self/fd"
    if not os.path.isdir(fd_dir):
        return None
    count = 0
    for fd in os.listdir(fd_dir):
        try:
            if os.readlink(os.path.join(fd_dir, fd)).startswith("socket:"):
                count += 1
        except OSError:
            continue  # the fd of the listing itself, gone by now
    return count


@pytest.fixture(autouse=True)
def nothing_outlives_the_test(manager: ReferenceManager) -> Iterator[None]:
    """No portal thread, worker thread or socket may remain once a test's clients are closed.

    Checked right after the test, without waiting: `close()` must have joined everything.
    """
    threads_before = set(threading.enumerate())
    sockets_before = open_sockets()
    yield
    leftover = [t for t in threading.enumerate() if t not in threads_before]
    assert leftover == [], f"threads outlived the test: {leftover}"
    assert open_sockets() == sockets_before, "sockets outlived the test"


def sync_client(manager: ReferenceManager, backend: str, **options: Any) -> SyncClient:
    return anytcm.SyncClient(manager.ws_url, backend=backend, **options)


def infer_double(tcm: SyncClient, x: npt.NDArray[np.float32], **options: Any) -> None:
    """`double` on x through the blocking client; asserts it got its own reply (2x)."""
    result = tcm.infer("double", {"INPUT0": x}, target=REF, **options)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), 2 * x.astype(np.float64))


def stream_inputs(*items: str, delay_ms: int = 0) -> dict[str, Any]:
    inputs: dict[str, Any] = {"TEXT": text(*items)}
    if delay_ms:
        inputs["DELAY_MS"] = np.array([delay_ms], dtype=np.int32)
    return inputs


# -- the async surface, mirrored -----------------------------------------------------------------


def _parameters(func: Callable[..., Any]) -> list[tuple[str, Any, Any, Any]]:
    return [
        (p.name, p.kind, p.default, p.annotation)
        for p in inspect.signature(func).parameters.values()
        if p.name != "self"
    ]


@pytest.mark.parametrize(
    ("async_class", "sync_class"),
    [
        (anytcm.AsyncClient, SyncClient),
        (InfoAPI, SyncInfoAPI),
        (ManagementAPI, SyncManagementAPI),
    ],
)
def test_every_async_method_has_the_same_signature(async_class: type, sync_class: type) -> None:
    """Same names, kinds, defaults and annotations, so the two clients type-check alike; a
    method added to the async client without its blocking twin fails here."""
    names = [n for n in vars(async_class) if not n.startswith("_")]
    assert names, "nothing to compare"
    for name in names:
        async_member = getattr(async_class, name)
        sync_member = getattr(sync_class, name, None)
        assert sync_member is not None, f"{sync_class.__name__}.{name} is missing"
        if isinstance(async_member, property):
            assert isinstance(sync_member, property), f"{name} should be a property"
            assert (
                inspect.signature(async_member.fget).return_annotation  # type: ignore[arg-type]
                == inspect.signature(sync_member.fget).return_annotation  # type: ignore[arg-type]
            )
            continue
        assert _parameters(async_member) == _parameters(sync_member), name


def test_constructor_takes_every_option_of_connect() -> None:
    sync_parameters = _parameters(SyncClient.__init__)
    assert [p[0] for p in sync_parameters[1:3]] == ["backend", "backend_options"]
    assert sync_parameters[:1] + sync_parameters[3:] == _parameters(connect)


# -- calls ---------------------------------------------------------------------------------------


def test_infer_pipeline_and_client_state(manager: ReferenceManager, backend: str) -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    with sync_client(manager, backend, pool_size=2, token="s3cret") as tcm:
        assert threading.current_thread() is not tcm._thread  # the loop is not in this thread
        result = tcm.infer(
            "double", {"INPUT0": x}, target=REF, output_dtypes={"OUTPUT0": np.float32}
        )
        assert result.model_name == "double"
        out = result.as_numpy("OUTPUT0")
        assert out.dtype == np.float32
        assert out.shape == (2, 3)
        np.testing.assert_array_equal(out, 2 * x)

        ints = np.arange(3, dtype=np.int64)
        results = tcm.pipeline(
            [("double", {"INPUT0": f32(1.0, 2.0)}), ("identity", {"X": ints}, "echo")],
            target=REF,
        )
        assert set(results) == {"double", "echo"}
        np.testing.assert_array_equal(results["double"].as_numpy("OUTPUT0"), [2.0, 4.0])
        np.testing.assert_array_equal(results["echo"].as_numpy("OUT_X"), ints)

        # Model specs: set here, applied in the portal, then typing the outputs.
        assert tcm.model_spec("double") is None
        spec = anytcm.ModelSpec(
            inputs=(anytcm.TensorSpec("INPUT0", "FP32", (-1,)),),
            outputs=(anytcm.TensorSpec("OUTPUT0", "FP32", (-1,)),),
        )
        tcm.set_model_spec("double", spec, target=REF)
        assert tcm.model_spec("double", REF) == spec
        assert tcm.infer("double", {"INPUT0": f32(3.0)}, target=REF).as_numpy("OUTPUT0").dtype == (
            np.float32
        )
        with pytest.raises(anytcm.InvalidInput):  # checked against the spec, before sending
            tcm.infer("double", {"INPUT0": np.array([1], dtype=np.int32)}, target=REF)

        granted = tcm.granted_capabilities
        assert granted is not None
        assert granted[0] == "json"
        stats = tcm.stats
        assert stats["connects"] >= 1
        assert stats["retries"] == 0
        assert "s3cret" not in repr(tcm)
        assert "SyncClient" in repr(tcm)
    assert tcm.closed
    assert "closed" in repr(tcm)


def test_info(manager: ReferenceManager, backend: str) -> None:
    with sync_client(manager, backend, pool_size=1) as tcm:
        infer_double(tcm, f32(1.0))
        stats = tcm.info.queue_stats()
        assert isinstance(stats, anytcm.QueueStats)
        assert stats.executor_inference_available + stats.executor_inference_pending == 5
        assert stats.inference_users >= 1
        raw = tcm.info.request("queue_stats", timeout=10)
        assert isinstance(raw, dict)
        assert "executor_inference_available" in raw


def test_management(manager: ReferenceManager, backend: str) -> None:
    with sync_client(manager, backend, pool_size=2) as tcm:
        mgmt = tcm.management
        vm = mgmt.create_vm(openstack=OPENSTACK)
        assert vm.vm_ip.startswith("10.77.0.")
        container = mgmt.create_container(vm_id=vm.vm_id, docker=DOCKER, minio=MINIO)
        target = anytcm.Target(vm.vm_ip, container.container_id)
        assert tcm.model_spec("double", target) is None
        server = mgmt.create_server(
            vm_id=vm.vm_id,
            vm_ip=vm.vm_ip,
            container_id=container.container_id,
            triton={"model_name": "double"},
            minio=MINIO,
        )
        assert server.model_name == "double"
        # The async method registered the spec in the portal; it is visible from here.
        assert tcm.model_spec("double", target) == server.spec
        out = tcm.infer("double", {"INPUT0": f32(1.5)}, target=target).as_numpy("OUTPUT0")
        assert out.dtype == np.float32
        np.testing.assert_array_equal(out, [3.0])
        mgmt.delete_vm(vm_id=vm.vm_id, container_id=container.container_id)
        with pytest.raises(anytcm.ManagementFailed) as again:
            mgmt.delete_vm(vm_id=vm.vm_id, container_id=container.container_id)
        assert again.value.action == "delete_vm"
        assert "not found" in str(again.value.data)


def test_typed_errors_cross_the_thread_unwrapped(manager: ReferenceManager, backend: str) -> None:
    with sync_client(manager, backend, pool_size=1) as tcm:
        with pytest.raises(anytcm.InferenceFailed) as unknown:
            tcm.infer("no-such-model", {"INPUT0": f32(1.0)}, target=REF)
        assert "[404]" in unknown.value.server_message
        assert unknown.value.model_name == "no-such-model"

        big = np.random.default_rng(0).random(20_000, dtype=np.float32)
        with pytest.raises(anytcm.PayloadTooLarge) as too_large:
            tcm.infer("double", {"INPUT0": big}, target=REF, carrier="json")
        assert too_large.value.limit == 65536
        with pytest.raises(anytcm.PayloadTooLarge):  # raised when the stream is made, as in async
            tcm.infer_stream("identity", {"X": big}, target=REF)

        with pytest.raises(anytcm.RequestTimeout) as timed_out:
            tcm.infer("slow", slow_inputs(distinct(1), 600), target=REF, timeout=0.2)
        assert timed_out.value.timeout == 0.2
        with pytest.raises(ValueError, match="timeout must be positive"):
            tcm.info.queue_stats(timeout=0)

        for error in (unknown.value, too_large.value, timed_out.value):
            assert_not_group(error)
        infer_double(tcm, distinct(2), timeout=20)  # still usable after every failure


def test_refused_connection_raises_and_leaves_nothing_behind(backend: str) -> None:
    """Nothing listens: the typed connect error surfaces from the constructor, and the portal
    thread is gone by then (the autouse fixture checks)."""
    url = f"ws://127.0.0.1:{free_port()}/ws"
    started = time.monotonic()
    with pytest.raises(anytcm.ConnectError) as caught:
        anytcm.SyncClient(url, backend=backend, connect_timeout=0.5)
    assert_not_group(caught.value)
    assert time.monotonic() - started < 10
    with pytest.raises(LookupError):  # anyio's error for a backend it does not know
        anytcm.SyncClient(url, backend="no-such-loop")


# -- streams ---------------------------------------------------------------------------------


def test_infer_stream(manager: ReferenceManager, backend: str) -> None:
    with sync_client(manager, backend, pool_size=1) as tcm:
        with tcm.infer_stream("stream", stream_inputs("a", "bc", "ü"), target=REF) as stream:
            events = list(stream)
        assert events == [
            anytcm.StreamEvent("START"),
            anytcm.StreamEvent("ONGOING", "a"),
            anytcm.StreamEvent("ONGOING", "bc"),
            anytcm.StreamEvent("ONGOING", "ü"),
            anytcm.StreamEvent("COMPLETED", None, "stream"),
        ]
        assert list(stream) == []  # a finished stream ends at once
        # Without `with`: the first iteration starts it.
        texts = [e.text for e in tcm.infer_stream("stream", stream_inputs("x"), target=REF)]
        assert texts == [None, "x", None]
        infer_double(tcm, distinct(1))  # the only connection was given back


def test_infer_stream_closed_early(manager: ReferenceManager, backend: str) -> None:
    """Leaving the block early closes the async stream in the portal: its connection comes
    back (pool_size=1) and none of its late chunks reach the next caller."""
    with sync_client(manager, backend, pool_size=1) as tcm:
        inputs = stream_inputs("a", "b", "c", "d", delay_ms=100)
        with tcm.infer_stream("stream", inputs, target=REF, timeout=20) as stream:
            assert next(stream).status == "START"
            assert next(stream) == anytcm.StreamEvent("ONGOING", "a")
        assert list(stream) == []  # closed: nothing more is read
        infer_double(tcm, distinct(2), timeout=20)

        # A stream dropped unclosed mid-way is closed in the portal when collected.
        for event in tcm.infer_stream("stream", inputs, target=REF, timeout=20):
            assert event.status == "START"
            break
        gc.collect()
        infer_double(tcm, distinct(3), timeout=20)

        # Reading through the idle deadline: the async RequestTimeout, unwrapped.
        slow = tcm.infer_stream(
            "stream", stream_inputs("a", delay_ms=600), target=REF, idle_timeout=0.2
        )
        with slow, pytest.raises(anytcm.RequestTimeout):
            list(slow)
        infer_double(tcm, distinct(4), timeout=20)


# -- alerts --------------------------------------------------------------------------------------


def test_alerts(manager: ReferenceManager, backend: str) -> None:
    with sync_client(manager, backend, pool_size=1) as tcm:
        with tcm.alerts() as frames:
            with pytest.raises(TimeoutError, match="no unsolicited frame"):
                frames.receive(timeout=0.05)
            # The manager alerts its first-connected live client; a previous test's socket may
            # still count as live for a moment, so push until this client gets one.
            deadline = time.monotonic() + 10
            frame: wire.ServerFrame | None = None
            while frame is None and time.monotonic() < deadline:
                assert manager.alert(message="sync hello", error_type="TestAlert")
                try:
                    frame = frames.receive(timeout=0.5)
                except TimeoutError:
                    continue
            assert isinstance(frame, wire.Alert)
            assert frame.message == "sync hello"
            while True:  # skip late copies of the repeated alert; then the iterator form
                assert manager.budget_warning()
                warning = next(frames)
                if isinstance(warning, wire.ErrorFrame):
                    break
            assert warning.payload.code == "BACKPRESSURE_INSUFFICIENT_BUDGET"
            infer_double(tcm, distinct(1))  # unsolicited frames never disturb the client
        # The subscription ended with its block: iterating stops, receiving says so.
        assert list(frames) == []
        with pytest.raises(anytcm.ClientClosed, match="subscription has ended"):
            frames.receive(timeout=1)
        with tcm.alerts() as still_open:
            tcm.close()  # with a subscription open: it ends too, and nothing hangs
            with pytest.raises(anytcm.ClientClosed, match="SyncClient is closed"):
                next(still_open)


# -- threads -------------------------------------------------------------------------------------


def test_many_threads_share_one_client(manager: ReferenceManager, backend: str) -> None:
    """16 threads x 4 inferences on 4 connections: every reply reaches its own caller."""
    results: dict[int, npt.NDArray[Any]] = {}
    barrier = threading.Barrier(16)

    def worker(base: int) -> None:
        barrier.wait()
        for i in range(base, base + 4):
            x = distinct(i)
            out = tcm.infer("double", {"INPUT0": x}, target=REF, timeout=30).as_numpy("OUTPUT0")
            np.testing.assert_array_equal(out, 2 * x)
            results[i] = out

    with sync_client(manager, backend, pool_size=4) as tcm:
        with ThreadPoolExecutor(max_workers=16) as pool:
            for future in [pool.submit(worker, 4 * t) for t in range(16)]:
                future.result()
        assert sorted(results) == list(range(64))
        assert tcm.stats["connects"] == 4  # the pool was shared, not reconnected


def test_threads_run_in_parallel_on_the_pool(manager: ReferenceManager, backend: str) -> None:
    """8 threads x one 300 ms inference on 4 connections take two rounds, not eight."""
    with sync_client(manager, backend, pool_size=4) as tcm:
        infer_double(tcm, f32(1.0))
        while tcm.stats["open_connections"] < 4:
            time.sleep(0.02)
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=8) as pool:
            futures = [
                pool.submit(tcm.infer, "slow", slow_inputs(distinct(i), 300), target=REF)
                for i in range(8)
            ]
            outs = [f.result().as_numpy("OUTPUT0") for f in futures]
        elapsed = time.monotonic() - started
        for i, out in enumerate(outs):
            np.testing.assert_array_equal(out, 2 * distinct(i))
        assert elapsed < 1.8, f"8 x 300 ms on 4 connections took {elapsed:.2f} s (serial: 2.4 s)"


@pytest.mark.parametrize("outer", ["asyncio", "trio"])
def test_works_where_a_loop_is_already_running(
    manager: ReferenceManager, backend: str, outer: str
) -> None:
    """A notebook cell runs inside a running asyncio loop; blocking code called there must not
    try to run a loop of its own (asyncio.run would refuse) nor touch the running one."""

    def cell_body() -> npt.NDArray[Any]:
        with sync_client(manager, backend, pool_size=1) as tcm:
            x = distinct(7)
            out = tcm.infer("double", {"INPUT0": x}, target=REF).as_numpy("OUTPUT0")
            events = list(tcm.infer_stream("stream", stream_inputs("q"), target=REF))
            assert [e.status for e in events] == ["START", "ONGOING", "COMPLETED"]
            assert tcm.info.queue_stats().total_users >= 1
            return out

    async def cell() -> npt.NDArray[Any]:
        assert sniffio.current_async_library() == outer
        return cell_body()  # synchronously, from inside the running loop

    out = asyncio.run(cell()) if outer == "asyncio" else trio.run(cell)
    np.testing.assert_array_equal(out, 2 * distinct(7))


# -- interruption, closing, and a dead portal ----------------------------------------------------


@pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="needs POSIX signals")
def test_ctrl_c_cancels_the_call_in_the_portal(manager: ReferenceManager, backend: str) -> None:
    """A SIGINT while the main thread waits: KeyboardInterrupt at once, the call is cancelled
    in the portal, and the client stays usable (the late reply never reaches a later call)."""
    main = threading.main_thread()
    assert threading.current_thread() is main
    assert main.ident is not None
    with sync_client(manager, backend, pool_size=1) as tcm:
        infer_double(tcm, distinct(1))
        interrupt = threading.Timer(0.2, signal.pthread_kill, (main.ident, signal.SIGINT))
        started = time.monotonic()
        interrupt.start()
        try:
            with pytest.raises(KeyboardInterrupt):
                tcm.infer("slow", slow_inputs(distinct(2), 800), target=REF, timeout=20)
        finally:
            interrupt.join()
        assert time.monotonic() - started < 0.7, "the interrupt waited for the slow call"
        x = distinct(3)
        result = tcm.infer("slow", slow_inputs(x, 1), target=REF, timeout=20)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), 2 * x)
        assert tcm.stats["quarantined"] >= 1  # the cancelled request's connection was set aside


@pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="needs POSIX signals")
def test_ctrl_c_while_connecting(backend: str) -> None:
    """Interrupted in the constructor (nothing answers yet): KeyboardInterrupt at once, and the
    portal with its half-made connection is torn down (the autouse fixture checks)."""
    main = threading.main_thread()
    assert main.ident is not None
    url = f"ws://127.0.0.1:{free_port()}/ws"
    interrupt = threading.Timer(0.3, signal.pthread_kill, (main.ident, signal.SIGINT))
    started = time.monotonic()
    interrupt.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            anytcm.SyncClient(url, backend=backend, connect_timeout=20)
    finally:
        interrupt.join()
    assert time.monotonic() - started < 5


def test_use_after_close_raises_client_closed(manager: ReferenceManager, backend: str) -> None:
    tcm = sync_client(manager, backend, pool_size=1)
    stream = tcm.infer_stream("stream", stream_inputs("a"), target=REF)
    closers = [threading.Thread(target=tcm.close) for _ in range(3)]
    for closer in closers:  # concurrent closes: one closes, the others wait, none fails
        closer.start()
    for closer in closers:
        closer.join(10)
    assert tcm.closed
    tcm.close()  # idempotent

    calls: list[Callable[[], object]] = [
        lambda: tcm.infer("double", {"INPUT0": f32(1.0)}, target=REF),
        lambda: tcm.pipeline([("double", {"INPUT0": f32(1.0)})], target=REF),
        lambda: tcm.infer_stream("stream", stream_inputs("a"), target=REF),
        lambda: next(stream),
        lambda: tcm.info.queue_stats(),
        lambda: tcm.info.request("queue_stats"),
        lambda: tcm.management.delete_vm(vm_id="v", container_id="c"),
        lambda: tcm.management.request("delete_vm", vm_id="v", container_id="c"),
        lambda: tcm.alerts().__enter__(),
        lambda: tcm.stats,
        lambda: tcm.granted_capabilities,
        lambda: tcm.model_spec("double"),
        lambda: tcm.set_model_spec("double", anytcm.ModelSpec()),
    ]
    for call in calls:
        with pytest.raises(anytcm.ClientClosed, match="closed"):
            call()
    stream.close()  # a no-op once the client is closed
    with tcm:  # entering a closed client is allowed; calls still refuse
        pass


def test_close_fails_calls_in_flight_in_other_threads(
    manager: ReferenceManager, backend: str
) -> None:
    tcm = sync_client(manager, backend, pool_size=1)
    outcome: list[anytcm.TcmError] = []
    in_flight = threading.Event()

    def call() -> None:
        in_flight.set()
        try:
            tcm.infer("slow", slow_inputs(distinct(1), 5000), target=REF, timeout=30)
        except anytcm.TcmError as exc:
            outcome.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    in_flight.wait(5)
    time.sleep(0.2)  # the request is on the wire
    started = time.monotonic()
    tcm.close()
    caller.join(10)
    assert not caller.is_alive()
    assert time.monotonic() - started < 3, "close() waited for the slow call"
    assert len(outcome) == 1
    assert isinstance(outcome[0], anytcm.ClientClosed), outcome
    assert_not_group(outcome[0])


def test_dead_portal_thread_is_a_clear_error(manager: ReferenceManager, backend: str) -> None:
    """If the loop thread ends under the client (here: its portal is stopped from outside),
    calls fail at once with ClientClosed saying so, instead of waiting forever."""
    tcm = sync_client(manager, backend, pool_size=1)
    infer_double(tcm, distinct(1))
    tcm._portal.call(tcm._portal.stop, True)
    tcm._thread.join(10)
    with pytest.raises(anytcm.ClientClosed, match="event-loop thread has ended"):
        infer_double(tcm, distinct(2))
    tcm.close()  # still cleans up (joins nothing that hangs)
    with pytest.raises(anytcm.ClientClosed, match="closed"):
        infer_double(tcm, distinct(3))
