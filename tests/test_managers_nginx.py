"""A real nginx in front of three reference managers, configured as TCM's repository configures
it (round-robin, no stickiness, WebSocket upgrade headers; contract §14), and a client given the
balancer's one URL: a manager restarted under load costs no request.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import numpy as np
import pytest

import anytcm
from _nginx import NGINX, Nginx
from anytcm.testing import ReferenceCluster

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.fault,
    pytest.mark.skipif(NGINX is None, reason="nginx is not installed (.ci/run installs it)"),
]

TARGET = anytcm.Target("127.0.0.1", "ref-0")


@pytest.fixture
def balanced(tmp_path: Path) -> Iterator[tuple[ReferenceCluster, Nginx]]:
    with ReferenceCluster(3) as cluster:
        upstreams = [f"127.0.0.1:{manager.port}" for manager in cluster]
        with Nginx(upstreams, tmp_path / "nginx") as nginx:
            yield cluster, nginx


async def test_a_manager_restarted_behind_nginx_loses_nothing(
    balanced: tuple[ReferenceCluster, Nginx],
) -> None:
    cluster, nginx = balanced
    calls = 0
    wrong: list[object] = []
    async with anytcm.connect(nginx.url, pool_size=4, timeout=30) as client:

        async def worker(seed: int) -> None:
            nonlocal calls
            for i in range(40):
                x = np.full(4, seed * 1000 + i, dtype=np.float32)
                result = await client.infer("double", {"INPUT0": x}, target=TARGET)
                if not np.array_equal(result["OUTPUT0"], x * 2):
                    wrong.append(result)  # pragma: no cover - the assertion shows it
                calls += 1
                await anyio.sleep(0.005)

        async with anyio.create_task_group() as tg:
            for seed in range(4):
                tg.start_soon(worker, seed)
            await anyio.sleep(0.1)
            await anyio.to_thread.run_sync(cluster[1].restart)
        assert calls == 160  # every call returned a result: none lost, none raised
        assert wrong == []
        # The balancer spread the connections: more than one manager served requests.
        served = [
            sum(v for k, v in manager.metrics().items() if k.startswith("tcm_inference_jobs_total"))
            for manager in cluster
            if manager.running
        ]
        assert sum(1 for count in served if count > 0) >= 2
