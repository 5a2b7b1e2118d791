"""Client integration: many calls at once on a pool, bounded waiting, and cancellation.

Every call sends an input no other call sends, so a reply handed to the wrong caller shows up
as a wrong value, not just as a count.
"""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import numpy as np
import pytest

import anytcm
from _client_helpers import (
    REF,
    distinct,
    infer_double,
    metric,
    open_connections_up,
    slow_inputs,
)
from anytcm.testing import ReferenceManager

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def tight_manager() -> Iterator[ReferenceManager]:
    """Per-uuid inference queue of 1 and one inference worker: any second queued inference on a
    uuid would be NACKed with BACKPRESSURE_QUEUE_FULL."""
    args = ["--queue-limit", "inference=1", "--workers", "inference=1"]
    with ReferenceManager(extra_args=args) as running:
        yield running


async def test_64_concurrent_infers_on_4_connections(manager: ReferenceManager) -> None:
    results: dict[int, np.ndarray] = {}

    async def one(client: anytcm.AsyncClient, i: int) -> None:
        results[i] = await infer_double(client, distinct(i))

    async with anytcm.connect(manager.ws_url, pool_size=4) as client:
        async with anyio.create_task_group() as tg:
            for i in range(64):
                tg.start_soon(one, client, i)
        assert client.stats["open_connections"] <= 4
        assert client.stats["connects"] <= 4
        assert client.stats["retries"] == 0
        assert client.stats["quarantined"] == 0
    assert sorted(results) == list(range(64))
    for i, out in results.items():
        np.testing.assert_array_equal(out, 2 * distinct(i))


async def test_mixed_models_concurrently(manager: ReferenceManager) -> None:
    """Different models and outputs at once, each caller gets its own."""
    checks: list[str] = []

    async def doubled(client: anytcm.AsyncClient, i: int) -> None:
        await infer_double(client, distinct(i))
        checks.append("double")

    async def echoed(client: anytcm.AsyncClient, i: int) -> None:
        x = np.arange(i, i + 5, dtype=np.int64)
        result = await client.infer("identity", {f"IN{i}": x}, target=REF)
        assert result.output_names == [f"OUT_IN{i}"]
        np.testing.assert_array_equal(result.as_numpy(f"OUT_IN{i}"), x)
        checks.append("identity")

    async def failing(client: anytcm.AsyncClient, i: int) -> None:
        with pytest.raises(anytcm.InferenceFailed):
            await client.infer("fail", {"X": distinct(i)}, target=REF)
        checks.append("fail")

    async with (
        anytcm.connect(manager.ws_url, pool_size=3) as client,
        anyio.create_task_group() as tg,
    ):
        for i in range(30):
            tg.start_soon((doubled, echoed, failing)[i % 3], client, i)
    assert sorted(checks) == sorted(["double", "identity", "fail"] * 10)


async def test_replies_out_of_order(manager: ReferenceManager) -> None:
    """A slow call and fast calls at once: the fast ones finish while the slow one runs."""
    finished: list[str] = []

    async with anytcm.connect(manager.ws_url, pool_size=2) as client:
        await open_connections_up(client, 2)

        async def slow() -> None:
            x = distinct(100)
            result = await client.infer("slow", slow_inputs(x, 500), target=REF, timeout=20)
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), 2 * x)
            finished.append("slow")

        async def fast(i: int) -> None:
            await infer_double(client, distinct(i), timeout=20)
            finished.append(f"fast{i}")

        async with anyio.create_task_group() as tg:
            tg.start_soon(slow)
            await anyio.sleep(0.1)  # the slow call holds one connection
            for i in range(5):
                await fast(i)  # all on the other connection, while slow runs
    assert finished == ["fast0", "fast1", "fast2", "fast3", "fast4", "slow"]


async def test_max_waiting_zero_is_immediate_backpressure(manager: ReferenceManager) -> None:
    async with anytcm.connect(manager.ws_url, pool_size=1, max_waiting=0) as client:
        slow_done = anyio.Event()

        async def slow() -> None:
            x = distinct(1)
            result = await client.infer("slow", slow_inputs(x, 500), target=REF, timeout=20)
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), 2 * x)
            slow_done.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(slow)
            await anyio.sleep(0.15)
            started = anyio.current_time()
            with pytest.raises(anytcm.Backpressure) as caught:
                await client.infer("double", {"INPUT0": distinct(2)}, target=REF, timeout=20)
            assert anyio.current_time() - started < 0.5  # not after waiting for the slow call
            assert not slow_done.is_set()
            assert caught.value.code == "CLIENT_POOL_EXHAUSTED"
            assert isinstance(caught.value, anytcm.RequestError)
            with pytest.raises(anytcm.Backpressure):  # streams check out a connection too
                async with client.infer_stream(
                    "stream", {"TEXT": np.array([b"x"], dtype=object)}, target=REF
                ) as s:
                    [event async for event in s]
            # info and management do not need a free inference slot
            await client.info.queue_stats(timeout=20)
        assert slow_done.is_set()
        await infer_double(client, distinct(3))


async def test_waiters_are_served_when_a_connection_frees(manager: ReferenceManager) -> None:
    """max_waiting bounds waiting callers; within the bound they wait and succeed."""
    async with anytcm.connect(manager.ws_url, pool_size=1, max_waiting=3) as client:
        outcomes: list[str] = []

        async def call(i: int) -> None:
            try:
                await infer_double(client, distinct(i), timeout=20)
                outcomes.append("ok")
            except anytcm.Backpressure as exc:
                outcomes.append(exc.code)

        async def slow() -> None:
            await client.infer("slow", slow_inputs(distinct(50), 400), target=REF, timeout=20)

        async with anyio.create_task_group() as tg:
            tg.start_soon(slow)
            await anyio.sleep(0.1)
            for i in range(6):
                tg.start_soon(call, i)
    assert sorted(outcomes) == ["CLIENT_POOL_EXHAUSTED"] * 3 + ["ok"] * 3


async def test_no_queue_full_nack_with_one_request_per_connection(
    tight_manager: ReferenceManager,
) -> None:
    """With a per-uuid queue limit of 1, a client that queued two inferences on one uuid would
    get BACKPRESSURE_QUEUE_FULL. The pool never does: 16 concurrent slow calls on 4 connections
    all complete, with no NACK (and no silent retry of one)."""
    done: list[int] = []

    async def one(client: anytcm.AsyncClient, i: int) -> None:
        x = distinct(i)
        result = await client.infer("slow", slow_inputs(x, 25), target=REF, timeout=30)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), 2 * x)
        done.append(i)

    async with anytcm.connect(tight_manager.ws_url, pool_size=4) as client:
        await open_connections_up(client, 4)
        async with anyio.create_task_group() as tg:
            for i in range(16):
                tg.start_soon(one, client, i)
        assert client.stats["retries"] == 0
    assert sorted(done) == list(range(16))
    rejected = await anyio.to_thread.run_sync(tight_manager.metrics)
    assert not any(k.startswith("tcm_jobs_rejected_total") and v for k, v in rejected.items())


# -- cancellation ------------------------------------------------------------------------------


async def test_cancel_while_waiting_for_a_connection(manager: ReferenceManager) -> None:
    async with anytcm.connect(manager.ws_url, pool_size=1) as client:
        slow_result: list[np.ndarray] = []

        async def slow() -> None:
            x = distinct(1)
            result = await client.infer("slow", slow_inputs(x, 400), target=REF, timeout=20)
            slow_result.append(result.as_numpy("OUTPUT0"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(slow)
            await anyio.sleep(0.1)
            with anyio.move_on_after(0.2) as scope:
                await client.infer("double", {"INPUT0": distinct(2)}, target=REF, timeout=20)
                pytest.fail("the call returned while the only connection was busy")
            assert scope.cancelled_caught
        np.testing.assert_array_equal(slow_result[0], 2 * distinct(1))
        # The cancelled waiter is gone: the next calls get the connection and their own replies.
        for i in range(3, 6):
            await infer_double(client, distinct(i), timeout=20)
        assert client.stats["quarantined"] == 0  # nothing was sent for the cancelled call


async def test_cancel_in_flight_call(manager: ReferenceManager) -> None:
    """Cancelled after sending: cancellation propagates, the late reply (2 * distinct(1)) is
    never handed to the next caller on that connection, and the client stays usable."""
    async with anytcm.connect(manager.ws_url, pool_size=1) as client:
        with anyio.move_on_after(0.2) as scope:
            await client.infer("slow", slow_inputs(distinct(1), 400), target=REF, timeout=20)
            pytest.fail("the slow call returned early")
        assert scope.cancelled_caught
        # Next calls, same output name (OUTPUT0), distinct inputs: each gets its own reply.
        x = distinct(2)
        result = await client.infer("slow", slow_inputs(x, 1), target=REF, timeout=20)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), 2 * x)
        await infer_double(client, distinct(3), timeout=20)
        assert client.stats["quarantined"] >= 1


async def test_cancel_many_in_flight_then_reuse(manager: ReferenceManager) -> None:
    async with anytcm.connect(manager.ws_url, pool_size=4) as client:
        await open_connections_up(client, 4)
        with anyio.move_on_after(0.2) as scope:
            async with anyio.create_task_group() as tg:
                for i in range(12):
                    tg.start_soon(
                        lambda i=i: client.infer(  # type: ignore[misc]
                            "slow", slow_inputs(distinct(i), 300), target=REF, timeout=20
                        )
                    )
        assert scope.cancelled_caught
        results: dict[int, np.ndarray] = {}

        async def one(i: int) -> None:
            results[i] = await infer_double(client, distinct(i), timeout=20)

        async with anyio.create_task_group() as tg:
            for i in range(100, 116):
                tg.start_soon(one, i)
        assert sorted(results) == list(range(100, 116))
        assert client.stats["quarantined"] >= 1


async def test_cancelled_call_raises_only_cancellation(manager: ReferenceManager) -> None:
    """Cancelling the enclosing task group surfaces as cancellation only (no TcmError, no
    ExceptionGroup), both for a waiting and for an in-flight call."""
    async with anytcm.connect(manager.ws_url, pool_size=1) as client:
        caught: list[BaseException] = []

        async def call(i: int, delay: int) -> None:
            try:
                await client.infer("slow", slow_inputs(distinct(i), delay), target=REF)
            except BaseException as exc:
                caught.append(exc)
                raise

        async with anyio.create_task_group() as tg:
            tg.start_soon(call, 1, 500)  # in flight
            await anyio.sleep(0.05)
            tg.start_soon(call, 2, 1)  # waiting for the connection
            await anyio.sleep(0.15)
            tg.cancel_scope.cancel()
        cancelled = anyio.get_cancelled_exc_class()
        assert len(caught) == 2
        assert all(isinstance(exc, cancelled) for exc in caught), caught
        await infer_double(client, distinct(3), timeout=20)


async def test_pool_replaces_connections_under_metrics(manager: ReferenceManager) -> None:
    """The manager sees exactly pool_size live connections for a client, however busy."""
    before = await anyio.to_thread.run_sync(metric, manager, "tcm_ws_connections_active")
    async with anytcm.connect(manager.ws_url, pool_size=3) as client:
        await open_connections_up(client, 3)
        async with anyio.create_task_group() as tg:
            for i in range(24):
                tg.start_soon(infer_double, client, distinct(i))
        live = await anyio.to_thread.run_sync(metric, manager, "tcm_ws_connections_active")
        assert live == before + 3
