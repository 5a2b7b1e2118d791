"""Client integration: deadlines on hung requests, and connect failures (nothing listening,
`/ready` answering 503). A dedicated reference manager, since these tests flip fault switches.
"""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import pytest

import anytcm
from _client_helpers import (
    REF,
    assert_not_group,
    distinct,
    f32,
    free_port,
    infer_double,
    slow_inputs,
    text,
    wait_until,
)
from anytcm.testing import ReferenceManager

pytestmark = [pytest.mark.anyio, pytest.mark.fault]


@pytest.fixture(scope="module")
def manager() -> Iterator[ReferenceManager]:
    with ReferenceManager() as running:
        yield running


@pytest.fixture
def faults_reset(manager: ReferenceManager) -> Iterator[ReferenceManager]:
    manager.reset_faults()
    try:
        yield manager
    finally:
        manager.reset_faults()


async def _set_faults(manager: ReferenceManager, **switches: object) -> None:
    await anyio.to_thread.run_sync(lambda: manager.set_faults(**switches))


# -- a request that is never answered -------------------------------------------------------


async def test_hung_request_times_out_and_the_connection_is_replaced(
    faults_reset: ReferenceManager,
) -> None:
    manager = faults_reset
    async with anytcm.connect(manager.ws_url, pool_size=1, stale_grace=0.5) as client:
        await infer_double(client, distinct(0))
        await _set_faults(manager, hang_fraction=1)
        started = anyio.current_time()
        with pytest.raises(anytcm.RequestTimeout) as caught:
            await client.infer("double", {"INPUT0": distinct(1)}, target=REF, timeout=0.5)
        elapsed = anyio.current_time() - started
        assert elapsed < 5.0
        assert caught.value.timeout == pytest.approx(0.5, abs=0.05)
        assert isinstance(caught.value, TimeoutError)
        await _set_faults(manager, reset=1)
        # The same pool (one connection): the next call succeeds, with its own reply.
        await infer_double(client, distinct(2), timeout=20)
        assert client.stats["quarantined"] >= 1
        # The abandoned request was never answered, so its connection was replaced.
        await wait_until(lambda: client.stats["reconnects"] >= 1, what="a reconnect")
        await infer_double(client, distinct(3), timeout=20)


async def test_hung_request_on_a_pool_does_not_block_others(
    faults_reset: ReferenceManager,
) -> None:
    manager = faults_reset
    async with anytcm.connect(manager.ws_url, pool_size=2) as client:
        await _set_faults(manager, hang_fraction=1)
        with pytest.raises(anytcm.RequestTimeout):
            await infer_double(client, distinct(1), timeout=0.3)
        await _set_faults(manager, reset=1)
        for i in range(2, 8):  # served by the other connection meanwhile
            await infer_double(client, distinct(i), timeout=20)
        # info requests work throughout
        await client.info.queue_stats(timeout=10)


@pytest.mark.filterwarnings(  # the stream channel leak has its own test (test_client_stream.py)
    "ignore:Exception ignored in.*MemoryObject:pytest.PytestUnraisableExceptionWarning"
)
async def test_hung_stream_times_out(faults_reset: ReferenceManager) -> None:
    manager = faults_reset
    async with anytcm.connect(manager.ws_url, pool_size=1, stale_grace=0.3) as client:
        await _set_faults(manager, hang_fraction=1)
        with pytest.raises(anytcm.RequestTimeout):
            async with client.infer_stream(
                "stream",
                {"TEXT": text("a")},
                target=REF,
                timeout=0.4,
            ) as s:
                [event async for event in s]
        await _set_faults(manager, reset=1)
        await infer_double(client, distinct(5), timeout=20)


async def test_timeout_waiting_for_a_connection_reports_the_callers_timeout(
    manager: ReferenceManager,
) -> None:
    """`RequestTimeout.timeout` is the caller's timeout in seconds, also when the deadline ran
    out while waiting for a free connection (not an absolute clock value)."""
    async with anytcm.connect(manager.ws_url, pool_size=1) as client:
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                lambda: client.infer("slow", slow_inputs(distinct(1), 600), target=REF, timeout=20)
            )
            await anyio.sleep(0.1)
            with pytest.raises(anytcm.RequestTimeout) as caught:
                await client.infer("double", {"INPUT0": distinct(2)}, target=REF, timeout=0.3)
        assert caught.value.timeout == pytest.approx(0.3, abs=0.05)
        await infer_double(client, distinct(3))


# -- connecting --------------------------------------------------------------------------------


@pytest.mark.parametrize("ready_check", [True, False])
async def test_nothing_listening_is_connect_error(ready_check: bool) -> None:
    url = f"ws://127.0.0.1:{free_port()}/ws"
    started = anyio.current_time()
    with pytest.raises(anytcm.ConnectError) as caught:
        async with anytcm.connect(url, connect_timeout=0.5, ready_check=ready_check):
            pytest.fail("connected to nothing")
    assert_not_group(caught.value)
    assert anyio.current_time() - started < 6.0
    assert isinstance(caught.value, ConnectionError)
    assert url in str(caught.value)


async def test_ready_503_window_then_connects(faults_reset: ReferenceManager) -> None:
    manager = faults_reset
    await _set_faults(manager, ready_503_seconds=1.0)
    async with anytcm.connect(manager.ws_url, pool_size=1, connect_timeout=15) as client:
        # It did wait on the readiness gate (NotReady counts as a connect failure) ...
        assert client.stats["connect_failures"] >= 1
        # ... and then serves normally.
        await infer_double(client, f32(1.0))


async def test_ready_503_longer_than_connect_timeout(faults_reset: ReferenceManager) -> None:
    manager = faults_reset
    await _set_faults(manager, ready_503_seconds=3)
    started = anyio.current_time()
    with pytest.raises(anytcm.ConnectError) as caught:
        async with anytcm.connect(manager.ws_url, pool_size=1, connect_timeout=0.6):
            pytest.fail("connected while /ready answered 503")
    error = caught.value
    assert_not_group(error)
    assert anyio.current_time() - started < 5.0
    assert "not ready" in str(error)
    # The cause is the manager's NotReady (reason and error_id from the 503 body).
    not_ready = error if isinstance(error, anytcm.NotReady) else error.__cause__
    assert isinstance(not_ready, anytcm.NotReady), (
        f"expected a NotReady or a ConnectError caused by one, got {error!r} "
        f"(cause {error.__cause__!r})"
    )
    assert not_ready.reason == "readiness_probe_failed"
    assert not_ready.error_id
