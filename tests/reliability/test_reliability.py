"""Steady load under real faults (issue 4): nothing is lost, management is never duplicated,
the client heals itself, and nothing outlives `connect()`.

Each scenario runs on asyncio and on trio, against a reference manager in its own process that
is really killed (SIGKILL), drained (SIGTERM), made unready, made to hang or drop requests, and
made to stop reading. The figures are printed at the end of the run ("reliability figures").
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import anyio
import httpx
import pytest

import anytcm
from anytcm.testing import ReferenceManager

from ._load import REPORT, Tally, management_trickle, resources, steady_load

pytestmark = [pytest.mark.anyio, pytest.mark.fault]

REQUESTS = 2000
CONCURRENCY = 16
POOL_SIZE = 4


@pytest.fixture
def manager() -> Iterator[ReferenceManager]:
    with ReferenceManager(extra_args=["--ping-interval", "1"]) as m:
        yield m


def _mgmt_runs(manager: ReferenceManager) -> int:
    try:
        metrics = manager.metrics()
    except httpx.HTTPError:
        return 0
    return int(sum(v for k, v in metrics.items() if k.startswith("tcm_management_actions_total")))


async def _scenario(
    manager: ReferenceManager,
    name: str,
    backend: str,
    fault: Callable[[Tally, ReferenceManager], object],
    *,
    timeout: float = 10.0,
    requests: int = REQUESTS,
    ping_interval: float | None = None,
    warmup: float = 0.3,
) -> Tally:
    """Run the load with `fault` injected once the load is under way; check and report."""
    tally = Tally(name, backend)
    before = resources()
    async with anytcm.connect(
        manager.ws_url,
        pool_size=POOL_SIZE,
        timeout=timeout,
        ping_interval=ping_interval,
        ping_timeout=1.0,
        stale_grace=1.0,
        retry=anytcm.RetryPolicy(attempts=20, base=0.05, cap=0.5),
    ) as client:
        stop = anyio.Event()

        async def during() -> None:
            async with anyio.create_task_group() as tg:
                tg.start_soon(management_trickle, client, tally, stop)
                await anyio.sleep(warmup)  # let the load get under way first
                await fault(tally, manager)  # type: ignore[misc]
                while tally.sent < requests:
                    await anyio.sleep(0.05)
                stop.set()

        await steady_load(
            client, tally, requests=requests, concurrency=CONCURRENCY, timeout=timeout,
            during=during,
        )  # fmt: skip
        with anyio.fail_after(30):  # the pool heals itself completely
            while client.stats["open_connections"] < POOL_SIZE:
                await anyio.sleep(0.02)
        tally.reconnects = client.stats["reconnects"]
        tally.management_server_runs += await anyio.to_thread.run_sync(_mgmt_runs, manager)
    await anyio.sleep(0.2)  # let the event loop settle closed sockets
    after = resources()
    REPORT.add(tally)
    assert tally.lost == 0, tally
    assert tally.wrong == 0, tally
    assert (
        tally.completed + sum(tally.failed[k] for k in tally.failed if not k.startswith("mgmt:"))
        == tally.sent
    )
    assert tally.management_duplicates == 0, tally
    assert after[0] <= before[0], f"tasks left behind: {before} -> {after}"
    assert after[1] <= before[1], f"file descriptors left behind: {before} -> {after}"
    assert after[2] <= before[2], f"threads left behind: {before} -> {after}"
    return tally


async def _restart(tally: Tally, manager: ReferenceManager, stop: Callable[[], None]) -> None:
    tally.management_server_runs += await anyio.to_thread.run_sync(_mgmt_runs, manager)
    await anyio.to_thread.run_sync(stop)
    await anyio.sleep(0.5)
    await anyio.to_thread.run_sync(manager.start)  # returns once /ready answered 200
    ready_at = anyio.current_time()
    with anyio.fail_after(30):
        while (gap := tally.first_success_after(ready_at)) is None:
            await anyio.sleep(0.01)
    tally.recovery_s = gap


async def test_sigkill_and_restart(manager: ReferenceManager, anyio_backend_name: str) -> None:
    async def fault(tally: Tally, m: ReferenceManager) -> None:
        await _restart(tally, m, m.kill)

    tally = await _scenario(manager, "SIGKILL + restart", anyio_backend_name, fault)
    assert tally.reconnects >= POOL_SIZE
    assert tally.completed == tally.sent  # inference is re-sent after an unknown outcome


async def test_sigterm_drain_and_restart(
    manager: ReferenceManager, anyio_backend_name: str
) -> None:
    async def fault(tally: Tally, m: ReferenceManager) -> None:
        await _restart(tally, m, lambda: m.terminate(timeout=30))

    tally = await _scenario(manager, "SIGTERM drain + restart", anyio_backend_name, fault)
    assert tally.completed == tally.sent


async def test_ready_503_window_gates_reconnects(
    manager: ReferenceManager, anyio_backend_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The manager comes back unready for 1.5 s: no reconnect happens until /ready is 200."""
    caplog.set_level(logging.WARNING, logger="anytcm.readiness")

    async def fault(tally: Tally, m: ReferenceManager) -> None:
        tally.management_server_runs += await anyio.to_thread.run_sync(_mgmt_runs, m)
        await anyio.to_thread.run_sync(m.kill)
        m.initial_faults = {"ready_503_seconds": 1.5}
        try:
            await anyio.to_thread.run_sync(m.start)  # waits out the 503 window itself
        finally:
            m.initial_faults = {}
        ready_at = anyio.current_time()
        with anyio.fail_after(30):
            while (gap := tally.first_success_after(ready_at)) is None:
                await anyio.sleep(0.01)
        tally.recovery_s = gap

    tally = await _scenario(manager, "/ready 503 for 1.5 s", anyio_backend_name, fault)
    assert tally.completed == tally.sent
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "readiness_probe_failed" in logged
    assert "error_id=" in logged


async def test_hung_requests_time_out_typed(
    manager: ReferenceManager, anyio_backend_name: str
) -> None:
    """2% of requests are never answered: they end as RequestTimeout, everything else completes."""

    async def fault(tally: Tally, m: ReferenceManager) -> None:
        await anyio.to_thread.run_sync(lambda: m.set_faults(hang_fraction=0.02, hang_seed=7))

    tally = await _scenario(
        manager,
        "hang 2% of requests",
        anyio_backend_name,
        fault,
        timeout=1.0,
        requests=1000,
        warmup=0.0,
    )
    assert tally.failed["RequestTimeout"] > 0
    assert set(tally.failed) <= {"RequestTimeout", "mgmt:RequestTimeout"}


async def test_connections_dropped_every_n_frames(
    manager: ReferenceManager, anyio_backend_name: str
) -> None:
    async def fault(tally: Tally, m: ReferenceManager) -> None:
        await anyio.to_thread.run_sync(lambda: m.set_faults(drop_after_frames=40))

    tally = await _scenario(manager, "drop after 40 frames", anyio_backend_name, fault, warmup=0.0)
    assert tally.completed == tally.sent
    assert tally.reconnects > POOL_SIZE


async def test_half_open_manager_detected_by_keepalive(
    manager: ReferenceManager, anyio_backend_name: str
) -> None:
    """The manager stops reading and writing for 3 s; keepalive pings notice and heal the pool."""

    async def fault(tally: Tally, m: ReferenceManager) -> None:
        await anyio.to_thread.run_sync(lambda: m.set_faults(stall=1))
        await anyio.sleep(3.0)
        await anyio.to_thread.run_sync(lambda: m.set_faults(stall=0))
        healed_at = anyio.current_time()
        with anyio.fail_after(30):
            while (gap := tally.first_success_after(healed_at)) is None:
                await anyio.sleep(0.01)
        tally.recovery_s = gap

    tally = await _scenario(
        manager, "half-open (stall 3 s)", anyio_backend_name, fault, ping_interval=0.5
    )
    assert tally.completed == tally.sent
    assert tally.reconnects >= POOL_SIZE
