"""Per-uuid job queues, bounded workers and backpressure NACKs (contract §5.2, §6.1, §6.5, §7).

The real manager queues every job per uuid and type, and a scheduler moves jobs into bounded
thread pools, inference first. A full per-uuid queue rejects the frame being read
(`BACKPRESSURE_QUEUE_FULL`); a full executor backlog rejects the job being dispatched
(`BACKPRESSURE_EXECUTOR_FULL`); a shutdown NACKs whatever is still queued (`SYSTEM_SHUTDOWN`).
Jobs here are coroutines; the worker limit is a count of running jobs per type.

One divergence, for memory's sake: the real manager keeps a per-uuid queue for 900 s after its
client left (so `queue_stats` "users" linger). Here a uuid's queues are forgotten as soon as no
connection holds the uuid and it has nothing queued or running; a stream of clients with fresh
uuids would otherwise grow the tables for 15 minutes. `queue_stats` reads running totals instead
of walking every uuid.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .config import JOB_TYPES, ServerConfig


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
        connected: Callable[[str], bool],
    ) -> None:
        self._config = config
        self._run_job = run_job
        self._send_to_uuid = send_to_uuid
        self._connected = connected  # does a live connection hold this uuid?
        self._queues: dict[str, dict[str, deque[Job]]] = {}
        self._running_for: dict[str, int] = {}  # running jobs per uuid (absent: none)
        # Running totals for queue_stats: uuids holding a queue of each type, jobs queued.
        self._users: dict[str, int] = dict.fromkeys(JOB_TYPES, 0)
        self._queued: dict[str, int] = dict.fromkeys(JOB_TYPES, 0)
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
        queue = queues.get(job.kind)
        if queue is None:
            queue = queues[job.kind] = deque()
            self._users[job.kind] += 1
        if len(queue) >= self._config.queue_limits[job.kind]:
            return nack(
                "BACKPRESSURE_QUEUE_FULL",
                f"Per-client {job.kind} queue is full; request dropped.",
                job.kind,
            )
        queue.append(job)
        self._queued[job.kind] += 1
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
                    self.forget_if_idle(job.uuid)
                    continue
                self._start(job)

    def _next_job(self, kind: str) -> Job | None:
        ready = self._ready[kind]
        if not ready:
            return None
        uuid, _ = ready.popitem(last=False)
        queue = self._queues[uuid][kind]
        job = queue.popleft()
        self._queued[kind] -= 1
        if queue:
            ready[uuid] = None  # back of the line: round-robin across uuids
        return job

    def _start(self, job: Job) -> None:
        self.running[job.kind] += 1
        self._running_for[job.uuid] = self._running_for.get(job.uuid, 0) + 1
        self._idle.clear()
        task = asyncio.create_task(self._run(job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, job: Job) -> None:
        try:
            await self._run_job(job)
        finally:
            self.running[job.kind] -= 1
            left = self._running_for.pop(job.uuid) - 1
            if left:
                self._running_for[job.uuid] = left
            if not any(self.running.values()):
                self._idle.set()
            self._wakeup.set()
            self.forget_if_idle(job.uuid)

    def forget_if_idle(self, uuid: str) -> None:
        """Drop a uuid's queues once no connection holds it and it has nothing left to do.

        Called when its connection ends and whenever one of its jobs ends or is dropped.
        """
        queues = self._queues.get(uuid)
        if queues is None or uuid in self._running_for or self._connected(uuid):
            return
        if any(queues.values()):
            return
        del self._queues[uuid]
        for kind in queues:
            self._users[kind] -= 1

    # -- shutdown -----------------------------------------------------------------------------

    async def drain_and_nack(self) -> None:
        """Stop dispatching and NACK every job still queued (jt.py:273-319)."""
        self.stopping = True
        # Snapshots: jobs ending and clients leaving during the awaits below forget uuids.
        for uuid, queues in list(self._queues.items()):
            for kind, queue in list(queues.items()):
                while queue:
                    queue.popleft()
                    self._queued[kind] -= 1
                    await self._send_to_uuid(
                        uuid,
                        nack("SYSTEM_SHUTDOWN", "Request dropped: system is shutting down.", kind),
                    )
        for ready in self._ready.values():
            ready.clear()
        for uuid in list(self._queues):
            self.forget_if_idle(uuid)

    async def wait_idle(self) -> None:
        """Wait for every running job to finish (its result is still delivered)."""
        await self._idle.wait()

    def cancel_all(self) -> None:
        for task in self._tasks:
            task.cancel()

    # -- statistics ---------------------------------------------------------------------------

    def queue_stats(self) -> dict[str, int]:
        """The `queue_stats` data object (jt.py:705-742)."""
        stats = {f"{k}_users": self._users[k] for k in JOB_TYPES}
        stats["total_users"] = len(self._queues)
        stats["total_queued"] = sum(self._queued.values())
        stats.update({f"{k}_total_queued": self._queued[k] for k in JOB_TYPES})
        stats.update({f"executor_{k}_pending": self.running[k] for k in JOB_TYPES})
        stats.update(
            {
                f"executor_{k}_available": max(0, self._config.workers[k] - self.running[k])
                for k in JOB_TYPES
            }
        )
        return stats
