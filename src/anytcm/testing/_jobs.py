"""Per-uuid job queues, bounded workers and backpressure NACKs (contract §5.2, §6.1, §6.5, §7).

The real manager queues every job per uuid and type, and a scheduler moves jobs into bounded
thread pools, inference first. A full per-uuid queue rejects the frame being read
(`BACKPRESSURE_QUEUE_FULL`); a full executor backlog rejects the job being dispatched
(`BACKPRESSURE_EXECUTOR_FULL`); a shutdown NACKs whatever is still queued (`SYSTEM_SHUTDOWN`).
Jobs here are coroutines; the worker limit is a count of running jobs per type.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ._config import JOB_TYPES, ServerConfig

QUEUE_IDLE_SECONDS = 900.0  # per-uuid queues linger this long after their last job (jobs.yaml)


@dataclass
class Job:
    """One accepted frame waiting for a worker."""

    uuid: str
    kind: str
    message: dict[str, Any]


def nack(code: str, message: str, dropped_type: str) -> dict[str, Any]:
    """A NACK frame for a dropped job; it stays on an open socket."""
    return {
        "type": "error",
        "payload": {"code": code, "message": message, "dropped_type": dropped_type},
    }


class JobScheduler:
    """Per-uuid, per-type FIFO queues served round-robin across uuids, inference first."""

    def __init__(
        self,
        config: ServerConfig,
        run_job: Callable[[Job], Awaitable[None]],
        send_to_uuid: Callable[[str, dict[str, Any]], Awaitable[None]],
    ) -> None:
        self._config = config
        self._run_job = run_job
        self._send_to_uuid = send_to_uuid
        self._queues: dict[str, dict[str, deque[Job]]] = {}
        self._last_used: dict[str, float] = {}
        # uuids with queued jobs, per type, in round-robin order
        self._ready: dict[str, OrderedDict[str, None]] = {k: OrderedDict() for k in JOB_TYPES}
        self.running: dict[str, int] = dict.fromkeys(JOB_TYPES, 0)
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.stopping = False

    # -- intake (called while the frame is being read) ----------------------------------------

    def submit(self, job: Job) -> dict[str, Any] | None:
        """Queue a job; returns the NACK frame to send instead when its queue is full."""
        queues = self._queues.setdefault(job.uuid, {})
        queue = queues.setdefault(job.kind, deque())
        self._last_used[job.uuid] = time.monotonic()
        if len(queue) >= self._config.queue_limits[job.kind]:
            return nack(
                "BACKPRESSURE_QUEUE_FULL",
                f"Per-client {job.kind} queue is full; request dropped.",
                job.kind,
            )
        queue.append(job)
        self._ready[job.kind][job.uuid] = None
        self._wakeup.set()
        return None

    # -- dispatch -----------------------------------------------------------------------------

    async def run(self) -> None:
        """The scheduler loop: dispatch whenever a job arrives or a worker frees up."""
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if not self.stopping:
                await self._dispatch()
            self._forget_idle_queues()

    async def _dispatch(self) -> None:
        for kind in ("inference", "management", "info"):
            while self.running[kind] < self._config.workers[kind]:
                job = self._next_job(kind)
                if job is None:
                    break
                if self.running[kind] >= self._config.executor_backlog[kind]:
                    await self._send_to_uuid(
                        job.uuid,
                        nack(
                            "BACKPRESSURE_EXECUTOR_FULL",
                            f"The {kind} executor backlog is full; request dropped.",
                            kind,
                        ),
                    )
                    continue
                self._start(job)

    def _next_job(self, kind: str) -> Job | None:
        ready = self._ready[kind]
        if not ready:
            return None
        uuid, _ = ready.popitem(last=False)
        queue = self._queues[uuid][kind]
        job = queue.popleft()
        if queue:
            ready[uuid] = None  # back of the line: round-robin across uuids
        return job

    def _start(self, job: Job) -> None:
        self.running[job.kind] += 1
        self._idle.clear()
        task = asyncio.create_task(self._run(job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, job: Job) -> None:
        try:
            await self._run_job(job)
        finally:
            self.running[job.kind] -= 1
            if not any(self.running.values()):
                self._idle.set()
            self._wakeup.set()

    def _forget_idle_queues(self) -> None:
        cutoff = time.monotonic() - QUEUE_IDLE_SECONDS
        for uuid in [u for u, t in self._last_used.items() if t < cutoff]:
            if not any(self._queues.get(uuid, {}).values()):
                self._queues.pop(uuid, None)
                self._last_used.pop(uuid, None)

    # -- shutdown -----------------------------------------------------------------------------

    async def drain_and_nack(self) -> None:
        """Stop dispatching and NACK every job still queued (jt.py:273-319)."""
        self.stopping = True
        for uuid, queues in self._queues.items():
            for kind, queue in queues.items():
                while queue:
                    queue.popleft()
                    await self._send_to_uuid(
                        uuid,
                        nack("SYSTEM_SHUTDOWN", "Request dropped: system is shutting down.", kind),
                    )
        for ready in self._ready.values():
            ready.clear()

    async def wait_idle(self) -> None:
        """Wait for every running job to finish (its result is still delivered)."""
        await self._idle.wait()

    def cancel_all(self) -> None:
        for task in self._tasks:
            task.cancel()

    # -- statistics ---------------------------------------------------------------------------

    def queue_stats(self) -> dict[str, int]:
        """The `queue_stats` data object (jt.py:705-742)."""
        users = {k: sum(1 for q in self._queues.values() if k in q) for k in JOB_TYPES}
        queued = {k: sum(len(q[k]) for q in self._queues.values() if k in q) for k in JOB_TYPES}
        stats = {f"{k}_users": users[k] for k in JOB_TYPES}
        stats["total_users"] = len(self._queues)
        stats["total_queued"] = sum(queued.values())
        stats.update({f"{k}_total_queued": queued[k] for k in JOB_TYPES})
        stats.update({f"executor_{k}_pending": self.running[k] for k in JOB_TYPES})
        stats.update(
            {
                f"executor_{k}_available": max(0, self._config.workers[k] - self.running[k])
                for k in JOB_TYPES
            }
        )
        return stats
