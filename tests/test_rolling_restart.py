"""Chaos, bounded: every manager of three restarted one by one (SIGTERM, drain, start again)
while a client keeps inferences and management calls going. Nothing may be lost, hang, come
back wrong, or run twice (contract §7, §14).
"""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import numpy as np
import pytest

import anytcm
from _client_helpers import OPENSTACK
from anytcm.testing import ReferenceCluster

pytestmark = [pytest.mark.anyio, pytest.mark.fault]

TARGET = anytcm.Target("127.0.0.1", "ref-0")
WORKERS = 6
BOUND = 120.0  # seconds for the whole roll under load; every call has its own 20 s deadline


async def test_a_rolling_restart_under_load_loses_nothing_and_runs_nothing_twice(
    tmp_path: Path, anyio_backend: tuple[str, object]
) -> None:
    journal = tmp_path / "management.jsonl"
    cluster = ReferenceCluster(
        3, extra_args=["--journal", str(journal), "--drain-seconds", "0.5"]
    ).start()
    try:
        rolled = anyio.Event()
        inferences = 0
        wrong: list[str] = []
        failed: list[BaseException] = []
        management: dict[str, str] = {}  # vm name -> outcome

        async with anytcm.connect(cluster.urls, pool_size=WORKERS, timeout=20) as client:

            async def infer_until_rolled(seed: int) -> None:
                nonlocal inferences
                i = 0
                while not rolled.is_set():
                    i += 1
                    x = np.full(3, seed * 100_000 + i, dtype=np.float32)
                    try:
                        result = await client.infer("double", {"INPUT0": x}, target=TARGET)
                    except anytcm.TcmError as exc:
                        failed.append(exc)
                        continue
                    if not np.array_equal(result["OUTPUT0"], x * 2):
                        wrong.append(f"{x} -> {result['OUTPUT0']}")
                    inferences += 1

            async def manage_until_rolled() -> None:
                n = 0
                while not rolled.is_set():
                    n += 1
                    name = f"chaos-vm-{n}"
                    try:
                        await client.management.create_vm(openstack={**OPENSTACK, "name": name})
                    except anytcm.ConnectionLost as exc:
                        management[name] = "unknown" if exc.outcome_unknown else "not sent"
                    except anytcm.TcmError as exc:
                        management[name] = type(exc).__name__
                    else:
                        management[name] = "ok"
                    await anyio.sleep(0.05)

            async def roll() -> None:
                await anyio.sleep(0.3)
                await anyio.to_thread.run_sync(cluster.rolling_restart)
                await anyio.sleep(0.5)  # and some load on the restarted set
                rolled.set()

            with anyio.fail_after(BOUND):  # a call that never returns fails the test here
                async with anyio.create_task_group() as tg:
                    for seed in range(WORKERS - 1):
                        tg.start_soon(infer_until_rolled, seed)
                    tg.start_soon(manage_until_rolled)
                    tg.start_soon(roll)
            statuses = client.managers()
    finally:
        cluster.stop()

    assert wrong == []
    assert failed == []  # inference is retried across the roll: none lost
    assert inferences > 50
    assert all(m.connects >= 2 for m in statuses)  # each manager was reconnected after its turn
    ran = [
        json.loads(line)["payload"]["openstack"]["name"]
        for line in journal.read_text().splitlines()
    ]
    counts = {name: ran.count(name) for name in set(ran)}
    assert [name for name, count in counts.items() if count > 1] == []  # never run twice
    # What the client saw succeed ran exactly once; what it never sent did not run.
    for name, outcome in management.items():
        if outcome == "ok":
            assert counts.get(name) == 1, name
        elif outcome == "not sent":
            assert name not in counts, name
    assert sum(1 for outcome in management.values() if outcome == "ok") > 5
