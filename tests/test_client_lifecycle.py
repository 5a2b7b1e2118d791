"""Client integration: unsolicited frames (alerts), clean shutdown without leaks, wss://."""

from __future__ import annotations

import functools
import ssl
from collections.abc import Iterator
from pathlib import Path

import anyio
import numpy as np
import pytest
import trustme

import anytcm
from _client_helpers import (
    REF,
    assert_not_group,
    distinct,
    f32,
    infer_double,
    live_task_count,
    metric,
    open_connections_up,
    wait_until,
    wait_until_async,
)
from anytcm import wire
from anytcm.testing import ReferenceManager

pytestmark = pytest.mark.anyio

ACTIVE = "tcm_ws_connections_active"


# -- alerts ------------------------------------------------------------------------------------


async def test_alert_and_budget_warning_reach_subscribers(manager: ReferenceManager) -> None:
    async with anytcm.connect(manager.ws_url, pool_size=2) as client:
        await open_connections_up(client, 2)
        async with client.alerts() as frames:
            delivered = await anyio.to_thread.run_sync(
                lambda: manager.alert(message="triton went away", error_type="TestAlert")
            )
            assert delivered
            with anyio.fail_after(10):
                frame = await frames.receive()
            assert isinstance(frame, wire.Alert)
            assert frame.error_type == "TestAlert"
            assert frame.message == "triton went away"
            assert frame.timestamp is not None

            assert await anyio.to_thread.run_sync(manager.budget_warning)
            with anyio.fail_after(10):
                warning = await frames.receive()
            assert isinstance(warning, wire.ErrorFrame)
            assert warning.payload.code == "BACKPRESSURE_INSUFFICIENT_BUDGET"
            assert warning.payload.job_type == "inference"
        # An unsolicited frame is never an error for the client: it keeps working.
        await infer_double(client, f32(1.0))
        assert client.stats["unsolicited_dropped"] == 0


async def test_alerts_interleaved_with_inferences(manager: ReferenceManager) -> None:
    """Alerts and budget warnings land in the middle of a stream of inferences on the same
    connections; every inference still gets its own result and every frame is received."""
    results: dict[int, np.ndarray] = {}
    sent = 0
    async with anytcm.connect(manager.ws_url, pool_size=2) as client:
        await open_connections_up(client, 2)
        async with client.alerts() as frames:

            async def infers(base: int) -> None:
                for i in range(base, base + 30):
                    results[i] = await infer_double(client, distinct(i))

            async def push() -> None:
                nonlocal sent
                for k in range(10):
                    if k % 2:
                        ok = await anyio.to_thread.run_sync(manager.budget_warning)
                    else:
                        ok = await anyio.to_thread.run_sync(
                            functools.partial(manager.alert, message=f"alert-{k}", error_type="T")
                        )
                    assert ok
                    sent += 1
                    await anyio.sleep(0.005)

            async with anyio.create_task_group() as tg:
                tg.start_soon(infers, 0)
                tg.start_soon(infers, 30)  # two sequential streams, sharing the pool
                tg.start_soon(push)
            received: list[wire.ServerFrame] = []
            with anyio.fail_after(10):
                while len(received) < sent:
                    received.append(await frames.receive())
    assert sorted(results) == list(range(60))
    alerts = [f.message for f in received if isinstance(f, wire.Alert)]
    assert alerts == [f"alert-{k}" for k in range(0, 10, 2)]
    warnings = [f for f in received if isinstance(f, wire.ErrorFrame)]
    assert len(warnings) == 5


async def test_slow_subscriber_loses_frames_not_the_client(manager: ReferenceManager) -> None:
    async with anytcm.connect(manager.ws_url, pool_size=1) as client:
        async with client.alerts(buffer=1) as frames:
            for k in range(3):
                assert await anyio.to_thread.run_sync(
                    functools.partial(manager.alert, message=f"m{k}", error_type="T")
                )
            await wait_until(
                lambda: client.stats["unsolicited_dropped"] >= 2, what="two dropped frames"
            )
            first = await frames.receive()
            assert isinstance(first, wire.Alert)
            assert first.message == "m0"
        await infer_double(client, f32(2.0))


# -- closing -----------------------------------------------------------------------------------


async def test_exit_leaves_no_connections_and_no_tasks(manager: ReferenceManager) -> None:
    baseline = await anyio.to_thread.run_sync(metric, manager, ACTIVE)
    tasks_before = live_task_count()
    async with anytcm.connect(manager.ws_url, pool_size=3) as client:
        await open_connections_up(client, 3)
        await wait_until_async(
            lambda: metric(manager, ACTIVE) == baseline + 3, what="3 live connections"
        )
        async with anyio.create_task_group() as tg:
            for i in range(12):
                tg.start_soon(infer_double, client, distinct(i))
        assert live_task_count() > tasks_before
    assert client.stats["open_connections"] == 0
    assert live_task_count() == tasks_before
    await wait_until_async(
        lambda: metric(manager, ACTIVE) == baseline, what="the manager to see the closes"
    )
    with pytest.raises(anytcm.ClientClosed):
        await client.infer("double", {"INPUT0": f32(1.0)}, target=REF)
    with pytest.raises(anytcm.ClientClosed):
        await client.info.queue_stats()
    with pytest.raises(anytcm.ClientClosed):
        async with client.infer_stream(
            "stream", {"TEXT": np.array([b"a"], dtype=object)}, target=REF
        ) as s:
            [event async for event in s]


async def test_exit_while_calls_wait_and_run(manager: ReferenceManager) -> None:
    """Leaving the block with calls still running (in a task group outside it): the call in
    flight and the calls waiting for the connection all end promptly with ClientClosed or
    ConnectionLost, not when their own timeout expires; the manager sees the close."""
    baseline = await anyio.to_thread.run_sync(metric, manager, ACTIVE)
    outcomes: list[str] = []

    async def call(client: anytcm.AsyncClient, i: int) -> None:
        try:
            await client.infer(
                "slow",
                {"INPUT0": distinct(i), "DELAY_MS": np.array([300], dtype=np.int32)},
                target=REF,
                timeout=3,
            )
            outcomes.append("done")
        except anytcm.TcmError as exc:
            outcomes.append(type(exc).__name__)

    started = anyio.current_time()
    async with (
        anyio.create_task_group() as tg,
        anytcm.connect(manager.ws_url, pool_size=1) as client,
    ):
        for i in range(3):
            tg.start_soon(call, client, i)
        await anyio.sleep(0.1)
    elapsed = anyio.current_time() - started
    assert len(outcomes) == 3
    assert "RequestTimeout" not in outcomes, outcomes
    assert set(outcomes) <= {"done", "ClientClosed", "ConnectionLost"}, outcomes
    assert elapsed < 2.5
    await wait_until_async(lambda: metric(manager, ACTIVE) == baseline, what="all closed")


async def test_error_inside_the_block_is_not_wrapped(manager: ReferenceManager) -> None:
    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        async with anytcm.connect(manager.ws_url, pool_size=2):
            raise Boom


async def test_connect_argument_checks() -> None:
    with pytest.raises(ValueError):
        async with anytcm.connect("ws://127.0.0.1:1/ws", pool_size=0):
            pass
    with pytest.raises(ValueError):
        async with anytcm.connect("ws://127.0.0.1:1/ws", max_waiting=-1):
            pass


# -- wss:// ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def tls_manager(
    tls_ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ReferenceManager]:
    directory: Path = tmp_path_factory.mktemp("tls")
    cert = tls_ca.issue_cert("127.0.0.1")
    certfile, keyfile, cafile = (directory / n for n in ("cert.pem", "key.pem", "ca.pem"))
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    for extra in cert.cert_chain_pems[1:]:
        extra.write_to_path(str(certfile), append=True)
    cert.private_key_pem.write_to_path(str(keyfile))
    tls_ca.cert_pem.write_to_path(str(cafile))
    with ReferenceManager(tls=(str(certfile), str(keyfile)), ca_file=str(cafile)) as running:
        yield running


async def test_wss_with_trusted_ca(tls_manager: ReferenceManager, tls_ca: trustme.CA) -> None:
    assert tls_manager.ws_url.startswith("wss://")
    context = ssl.create_default_context()
    tls_ca.configure_trust(context)
    async with anytcm.connect(tls_manager.ws_url, ssl_context=context, pool_size=2) as client:
        await infer_double(client, f32(1.0, 2.0))
        async with anyio.create_task_group() as tg:
            for i in range(8):
                tg.start_soon(infer_double, client, distinct(i))
        stats = await client.info.queue_stats()
        assert stats.total_users >= 1


@pytest.mark.parametrize("ready_check", [True, False])
async def test_wss_untrusted_certificate_is_connect_error(
    tls_manager: ReferenceManager,
    ready_check: bool,
    anyio_backend: tuple[str, object],
    request: pytest.FixtureRequest,
) -> None:
    started = anyio.current_time()
    with pytest.raises(anytcm.ConnectError) as caught:
        async with anytcm.connect(
            tls_manager.ws_url, pool_size=1, connect_timeout=1.0, ready_check=ready_check
        ):
            pytest.fail("connected without trusting the certificate")
    assert_not_group(caught.value)
    assert anyio.current_time() - started < 6.0
    # The message names the cause, whether the /ready gate or the WebSocket handshake met it.
    assert "certificate" in str(caught.value).lower(), str(caught.value)
