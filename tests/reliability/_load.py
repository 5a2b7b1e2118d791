"""A steady load and its tally: what was sent, completed, failed with a typed error, and lost."""

from __future__ import annotations

import collections
import os
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import anyio
import numpy as np

import anytcm

TARGET = anytcm.Target("127.0.0.1", "ref-0")
FP32 = {"OUTPUT0": np.float32}


@dataclass
class Tally:
    """One scenario on one backend."""

    scenario: str
    backend: str
    sent: int = 0
    completed: int = 0
    wrong: int = 0  # a result that is not this request's own: must be 0
    lost: int = 0  # a call that did not end (result or exception) by its deadline: must be 0
    failed: collections.Counter[str] = field(default_factory=collections.Counter)
    management_calls: int = 0
    management_server_runs: int = 0
    recovery_s: float | None = None
    retries: int = 0
    reconnects: int = 0
    _successes: list[float] = field(default_factory=list, repr=False)

    @property
    def management_duplicates(self) -> int:
        return max(0, self.management_server_runs - self.management_calls)

    def first_success_after(self, t: float) -> float | None:
        later = [s for s in self._successes if s >= t]
        return min(later) - t if later else None

    def row(self) -> str:
        failed = sum(self.failed.values())
        kinds = ",".join(f"{k}:{v}" for k, v in sorted(self.failed.items())) or "-"
        recovery = f"{self.recovery_s:.2f}" if self.recovery_s is not None else "n/a"
        return (
            f"| {self.scenario} | {self.backend} | {self.sent} | {self.completed} | "
            f"{failed} ({kinds}) | {self.lost} | {self.wrong} | {self.management_calls} | "
            f"{self.management_duplicates} | {recovery} | {self.retries} | {self.reconnects} |"
        )


class Report:
    def __init__(self) -> None:
        self.tallies: list[Tally] = []
        self._lock = threading.Lock()

    def add(self, tally: Tally) -> None:
        with self._lock:
            self.tallies.append(tally)

    def __bool__(self) -> bool:
        return bool(self.tallies)

    def table(self) -> list[str]:
        header = [
            (
                "| scenario | backend | sent | completed | failed (typed) | lost | wrong | "
                "mgmt calls | mgmt dups | /ready 200 -> first success (s) | retries | reconnects |"
            ),
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        return header + [t.row() for t in self.tallies]


REPORT = Report()


async def steady_load(
    client: anytcm.AsyncClient,
    tally: Tally,
    *,
    requests: int,
    concurrency: int,
    timeout: float,
    during: Callable[[], Coroutine[Any, Any, None]],
) -> None:
    """Run `requests` inferences `concurrency` at a time while `during()` injects the fault.

    Each request has distinct inputs, so a reply delivered to the wrong caller is detected.
    A call that neither returns nor raises within its deadline (plus slack) counts as lost.
    The load lasts until `requests` are sent *and* `during()` has returned: on a fast machine
    the requests can all be done before a fault is over, and a check of recovery needs load
    after the fault heals.
    """
    next_index = 0
    fault_over = anyio.Event()

    async def run_during() -> None:
        try:
            await during()
        finally:
            fault_over.set()

    async def worker() -> None:
        nonlocal next_index
        while next_index < requests or not fault_over.is_set():
            index = next_index
            next_index += 1
            x = np.array([index, index + 0.5, -index], dtype=np.float32)
            tally.sent += 1
            with anyio.move_on_after(timeout + 5.0) as scope:
                try:
                    result = await client.infer(
                        "double", {"INPUT0": x}, target=TARGET, output_dtypes=FP32, timeout=timeout
                    )
                except anytcm.TcmError as exc:
                    tally.failed[type(exc).__name__] += 1
                    continue
                if np.array_equal(result.as_numpy("OUTPUT0"), 2 * x):
                    tally.completed += 1
                    tally._successes.append(anyio.current_time())
                else:
                    tally.wrong += 1
            if scope.cancelled_caught:
                tally.lost += 1

    async with anyio.create_task_group() as tg:
        tg.start_soon(run_during)
        for _ in range(concurrency):
            tg.start_soon(worker)
    tally.retries = client.stats["retries"]
    tally.reconnects = client.stats["reconnects"]


async def management_trickle(
    client: anytcm.AsyncClient, tally: Tally, stop: anyio.Event, interval: float = 0.05
) -> None:
    """create_vm calls alongside the load; never re-sent by the client, whatever happens."""
    openstack = dict.fromkeys(("name", "keypair", "image_id", "security", "flavor_id"), "x")
    openstack["network_id"] = "net"
    while not stop.is_set():
        tally.management_calls += 1
        try:
            await client.management.create_vm(openstack=openstack, timeout=5.0)
        except anytcm.TcmError as exc:
            if getattr(exc, "outcome_unknown", True) is False or "not sent" in str(exc):
                tally.management_calls -= 1  # never written, so it cannot have run
            tally.failed[f"mgmt:{type(exc).__name__}"] += 1
        await anyio.sleep(interval)


def resources() -> tuple[int, int, int]:
    """(running tasks, open file descriptors, threads that are not idle executor workers)."""
    tasks = len(anyio.get_running_tasks())
    fds = len(os.listdir("/proc/self/fd"))
    threads = sum(
        1
        for t in threading.enumerate()
        # Idle workers of the event loops' own thread pools (used by getaddrinfo and by the
        # tests' to_thread calls) are reused, not leaked.
        if not t.name.startswith(
            ("AnyIO worker thread", "ThreadPoolExecutor", "asyncio_", "Trio thread")
        )
    )
    return tasks, fds, threads
