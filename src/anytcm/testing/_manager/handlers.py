"""What a job does once a worker takes it: inference, management, and info (contract §4-§6).

The scheduler (`jobs.py`) decides *when* a job runs; this module decides what it sends back.
Replies are routed by uuid at send time (§3.4), so a job outliving its connection answers
whichever connection holds the uuid by then, or nobody.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .connection import info_action
from .inference import InferenceHandler
from .jobs import Job
from .metrics import ServerMetrics
from .registry import MANAGEMENT_ACTIONS, ManagementFailure, Registry

SendToUuid = Callable[[str, dict[str, Any]], Awaitable[None]]


class JobHandlers:
    """Runs one job and sends its reply; knows nothing of sockets or queues."""

    def __init__(
        self,
        *,
        inference: InferenceHandler,
        registry: Registry,
        metrics: ServerMetrics,
        send_to_uuid: SendToUuid,
        queue_stats: Callable[[], dict[str, Any]],
        journal: str | None = None,
    ) -> None:
        self._journal = journal
        self._inference = inference
        self._registry = registry
        self._metrics = metrics
        self._send_to_uuid = send_to_uuid
        self._queue_stats = queue_stats

    async def run(self, job: Job) -> None:
        if job.kind == "inference":
            await self._run_inference(job)
        elif job.kind == "management":
            await self._run_management(job)
        else:
            action = info_action(job.message["payload"])
            await self._send_to_uuid(
                job.uuid,
                {
                    "type": "info_response",
                    "payload": {
                        "job_id": job.message["payload"].get("job_id"),
                        "request_type": action,
                        "status": "success",
                        "data": {"message": f"Info type '{action}' not implemented yet"},
                    },
                },
            )

    async def _run_inference(self, job: Job) -> None:
        started = time.perf_counter()
        self._metrics.inference_jobs.inc()

        async def emit(status: str, data: Any, model_name: Any) -> None:
            if status == "FAILED":
                code = data.get("code", "object") if isinstance(data, dict) else "string"
                self._metrics.inference_errors.labels(code).inc()
            frame = {
                "type": "inference",
                "uuid": job.uuid,
                "payload": {"status": status, "data": data, "model_name": model_name},
            }
            await self._send_to_uuid(job.uuid, frame)

        await self._inference.handle(job.message["payload"], emit)
        self._metrics.inference_duration.observe(time.perf_counter() - started)

    async def _run_management(self, job: Job) -> None:
        payload = job.message["payload"]
        action = str(payload.get("action"))
        # The label is client text: one time series per distinct string would grow forever.
        label = action if action in MANAGEMENT_ACTIONS else "unknown"
        self._metrics.management_actions.labels(label).inc()
        try:
            data, status = self._registry.run_action(action, payload), True
        except ManagementFailure as exc:
            data, status = str(exc), False
        except Exception as exc:  # noqa: BLE001 - any other failure is reported, as mgmt.py does
            data, status = f"Unexpected error: {exc}", False
        if self._journal is not None:
            # One line per action run, as TCM mirrors its registry to state/servers.jsonl: it
            # outlives the process, so tests count what ran across restarts.
            _append(self._journal, {"action": action, "payload": payload, "status": status})
        # The reply echoes the whole inbound envelope, payload replaced (mgmt.py:128-131).
        reply = {**job.message, "payload": {"status": status, "data": data}}
        await self._send_to_uuid(job.uuid, reply)

    def queue_stats_reply(self, payload: dict[str, Any]) -> dict[str, Any]:
        """The `queue_stats` answer, built on the read path (it never waits in a queue)."""
        return {
            "type": "info_response",
            "payload": {
                "job_id": payload.get("job_id"),
                "request_type": "queue_stats",
                "status": "success",
                "data": self._queue_stats(),
            },
        }


def _append(path: str, record: dict[str, Any]) -> None:
    """One JSON line at the end of `path` (a few hundred bytes to a local file)."""
    with open(path, "a", encoding="utf-8") as journal:
        journal.write(json.dumps(record) + "\n")
