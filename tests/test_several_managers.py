"""One client over several managers (contract §14): spread, failover, draining, dead-manager
backoff and return, affinity, the all-dead error, rebalancing. Real manager processes, each
with its own state, killed and restarted for real; every test on asyncio and trio.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import numpy as np
import pytest

import anytcm
from _client_helpers import DOCKER, OPENSTACK
from anytcm import Target
from anytcm.errors import ContractError, InferenceFailed, NoManagerAvailable
from anytcm.testing import ReferenceCluster

pytestmark = [pytest.mark.anyio, pytest.mark.fault]

TARGET = Target("127.0.0.1", "ref-0")
X = np.arange(4, dtype=np.float32)


@pytest.fixture(scope="module")
def cluster() -> Iterator[ReferenceCluster]:
    with ReferenceCluster(3) as started:
        yield started


@pytest.fixture(autouse=True)
def whole_cluster(cluster: ReferenceCluster) -> Iterator[ReferenceCluster]:
    """Every test starts and leaves with all three managers up and without faults."""
    yield cluster
    for manager in cluster:
        if not manager.running:
            manager.start()
        else:
            manager.reset_faults()


def counts(client: anytcm.AsyncClient) -> dict[str, int]:
    return {m.url: m.connections for m in client.managers()}


async def wait_for(predicate: Any, what: str, timeout: float = 15.0) -> None:
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.02)


async def double(client: anytcm.AsyncClient, **kwargs: Any) -> None:
    result = await client.infer("double", {"INPUT0": X}, target=TARGET, **kwargs)
    np.testing.assert_array_equal(result["OUTPUT0"], X * 2)


async def test_connections_and_requests_spread_over_every_manager(
    cluster: ReferenceCluster,
) -> None:
    async with anytcm.connect(cluster.urls, pool_size=6) as client:
        await wait_for(lambda: sum(counts(client).values()) == 6, "six connections")
        assert sorted(counts(client).values()) == [2, 2, 2]
        for _ in range(30):
            await double(client)
        served = [m.requests for m in client.managers()]
        assert sum(served) == 30
        assert min(served) >= 5  # round-robin: each manager its share
        assert [m.url for m in client.managers()] == cluster.urls
        assert all(m.state == "live" for m in client.managers())


async def test_a_killed_manager_costs_no_request(cluster: ReferenceCluster) -> None:
    async with anytcm.connect(cluster.urls, pool_size=6) as client:
        await wait_for(lambda: sum(counts(client).values()) == 6, "six connections")
        failures: list[BaseException] = []

        async def worker() -> None:
            for _ in range(15):
                try:
                    await double(client)
                except anytcm.TcmError as exc:  # pragma: no cover - the assertion shows it
                    failures.append(exc)

        async with anyio.create_task_group() as tg:
            for _ in range(6):
                tg.start_soon(worker)
            await anyio.sleep(0.05)
            cluster[1].kill()
        assert failures == []
        await wait_for(
            lambda: {m.url: m.state for m in client.managers()}[cluster.urls[1]] == "dead",
            "the killed manager marked dead",
        )
        assert {m.url: m for m in client.managers()}[cluster.urls[1]].last_failure
        # Its connections moved to the survivors.
        await wait_for(lambda: sum(counts(client).values()) == 6, "six connections again")
        assert counts(client)[cluster.urls[1]] == 0


async def test_a_draining_manager_gets_no_new_work_and_its_requests_finish_elsewhere(
    cluster: ReferenceCluster,
) -> None:
    async with anytcm.connect(cluster.urls, pool_size=6) as client:
        await wait_for(lambda: sum(counts(client).values()) == 6, "six connections")
        results: list[str] = []

        async def slow_call() -> None:
            out = await client.infer(
                "slow",
                {"INPUT0": X, "DELAY_MS": np.array([300], dtype=np.int32)},
                target=TARGET,
                timeout=20,
            )
            results.append(str(out["OUTPUT0"].shape))

        async with anyio.create_task_group() as tg:
            for _ in range(6):
                tg.start_soon(slow_call)
            await anyio.sleep(0.1)
            cluster[0].terminate(wait=False)
            await wait_for(
                lambda: {m.url: m.state for m in client.managers()}[cluster.urls[0]] != "live",
                "the draining manager noticed",
            )
            for _ in range(10):
                await double(client)  # new work, while it drains: never on manager 0
        assert len(results) == 6
        cluster[0].wait()
        states = {m.url: m.state for m in client.managers()}
        assert states[cluster.urls[0]] in ("draining", "dead")


async def test_a_dead_manager_is_retried_with_backoff_and_comes_back(
    cluster: ReferenceCluster,
) -> None:
    cluster[2].kill()
    async with anytcm.connect(cluster.urls, pool_size=3) as client:
        await wait_for(
            lambda: (
                {m.url: m.consecutive_failures for m in client.managers()}[cluster.urls[2]] >= 2
            ),
            "two failed trials of the dead manager",
        )
        status = {m.url: m for m in client.managers()}[cluster.urls[2]]
        assert status.state == "dead"
        assert status.retry_in <= 30
        for _ in range(6):
            await double(client)  # served by the two others meanwhile
        cluster[2].start()
        await wait_for(
            lambda: {m.url: m.state for m in client.managers()}[cluster.urls[2]] == "live",
            "the manager back",
            timeout=40,
        )
        # Rebalanced: each manager holds one of the three connections again.
        await wait_for(lambda: sorted(counts(client).values()) == [1, 1, 1], "rebalanced")


async def test_rebalancing_keeps_in_flight_work(cluster: ReferenceCluster) -> None:
    cluster[0].kill()
    async with anytcm.connect(cluster.urls, pool_size=6) as client:
        await wait_for(lambda: sum(counts(client).values()) == 6, "six connections")
        assert counts(client)[cluster.urls[0]] == 0
        done = 0

        async def worker() -> None:
            nonlocal done
            for _ in range(30):
                await double(client)
                done += 1

        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(worker)
            cluster[0].start()
            await wait_for(lambda: counts(client)[cluster.urls[0]] >= 1, "rebalanced", 40)
        assert done == 120


async def test_a_server_created_through_one_manager_is_routed_to_it(
    cluster: ReferenceCluster,
) -> None:
    """Only the manager that ran `creation` knows the new server; the others would answer
    "No active Triton session for this instance" (contract §14)."""
    async with anytcm.connect(cluster.urls, pool_size=3) as client:
        await wait_for(lambda: sum(counts(client).values()) == 3, "three connections")
        deployment = await client.management.creation(
            openstack=OPENSTACK, docker=DOCKER, triton={"model_name": "double"}
        )
        (owner,) = [m.url for m in client.managers() if m.requests == 1]
        for _ in range(9):
            result = await client.infer("double", {"INPUT0": X}, target=deployment.target)
            np.testing.assert_array_equal(result["OUTPUT0"], X * 2)
        served = {m.url: m.requests for m in client.managers()}
        assert served[owner] == 10  # the creation and every inference
        assert sum(served.values()) == 10
        # With allow_transient any manager may serve it: no affinity needed, the load spreads.
        for _ in range(9):
            await client.infer(
                "double", {"INPUT0": X}, target=deployment.target, allow_transient=True
            )
        assert sum(1 for m in client.managers() if m.requests > 0) == 3


async def test_a_target_can_name_its_manager_and_an_unknown_one_is_not_retried_around(
    cluster: ReferenceCluster,
) -> None:
    async with anytcm.connect(cluster.urls, pool_size=3) as client:
        await wait_for(lambda: sum(counts(client).values()) == 3, "three connections")
        pinned = Target("127.0.0.1", "ref-0", manager=cluster.urls[2])
        for _ in range(4):
            result = await client.infer("double", {"INPUT0": X}, target=pinned)
            np.testing.assert_array_equal(result["OUTPUT0"], X * 2)
        assert {m.url: m.requests for m in client.managers()}[cluster.urls[2]] == 4
        deployment = await client.management.creation(
            openstack=OPENSTACK, docker=DOCKER, triton={"model_name": "double"}
        )
        (owner,) = [m.url for m in client.managers() if m.requests in (1, 5)]
        other = next(url for url in cluster.urls if url != owner)
        before = sum(m.requests for m in client.managers())
        # Sent to a replica that does not know the server: its answer is the caller's, from
        # that one replica, never tried around the others.
        with pytest.raises((InferenceFailed, ContractError)):
            await client.infer(
                "double",
                {"INPUT0": X},
                target=Target(deployment.target.vm_ip, deployment.target.container_id, other),
            )
        assert sum(m.requests for m in client.managers()) == before + 1
        with pytest.raises(ValueError, match="not one of this client's managers"):
            await client.infer(
                "double", {"INPUT0": X}, target=Target("127.0.0.1", "ref-0", "ws://elsewhere/ws")
            )


async def test_every_manager_down_is_one_error_naming_each(cluster: ReferenceCluster) -> None:
    for manager in cluster:
        manager.kill()
    with pytest.raises(NoManagerAvailable) as caught:
        async with anytcm.connect(cluster.urls, connect_timeout=2.0):
            pass  # pragma: no cover
    for url in cluster.urls:
        assert url in str(caught.value)
    assert set(caught.value.failures) == set(cluster.urls)


async def test_metrics_are_labelled_by_manager(
    cluster: ReferenceCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    from opentelemetry.metrics import _internal as metrics_api
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    monkeypatch.setattr(metrics_api, "_METER_PROVIDER", provider)
    try:
        async with anytcm.connect(cluster.urls, pool_size=3) as client:
            await wait_for(lambda: sum(counts(client).values()) == 3, "three connections")
            for _ in range(9):
                await double(client)
            served = {m.url: m.requests for m in client.managers()}
        data = reader.get_metrics_data()
        assert data is not None
        by_port: dict[int, int] = {}
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == "anytcm.client.manager.requests":
                        for point in metric.data.data_points:
                            assert isinstance(point, NumberDataPoint)
                            port = (point.attributes or {})["server.port"]
                            assert isinstance(port, int)
                            by_port[port] = by_port.get(port, 0) + int(point.value)
        assert by_port == {manager.port: served[manager.ws_url] for manager in cluster}
        assert sum(by_port.values()) == 9
    finally:
        provider.shutdown()


async def test_create_vm_container_server_chain_stays_on_one_manager(
    cluster: ReferenceCluster,
) -> None:
    """Each step needs what the previous one created, which only its manager knows: the VM
    for the container, the container for the server, the server for the inference."""
    async with anytcm.connect(cluster.urls, pool_size=3) as client:
        await wait_for(lambda: sum(counts(client).values()) == 3, "three connections")
        vm = await client.management.create_vm(openstack=OPENSTACK)
        container = await client.management.create_container(vm_id=vm.vm_id, docker=DOCKER)
        await client.management.create_server(
            vm_id=vm.vm_id,
            vm_ip=vm.vm_ip,
            container_id=container.container_id,
            triton={"model_name": "double"},
        )
        target = Target(vm.vm_ip, container.container_id)
        for _ in range(6):
            result = await client.infer("double", {"INPUT0": X}, target=target)
            np.testing.assert_array_equal(result["OUTPUT0"], X * 2)
        served = {m.url: m.requests for m in client.managers()}
        assert sorted(served.values()) == [0, 0, 9]  # three management calls, six inferences
