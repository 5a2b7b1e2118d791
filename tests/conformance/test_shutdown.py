"""Contract §7: SIGTERM drain (reference: `ReferenceManager.terminate()`).

One scenario runs once per module (a server start and a drain are the expensive parts) and the
tests assert one rule each on what was observed.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from ._client import (
    Client,
    Json,
    Spawn,
    http_base,
    http_get,
    session,
    slow_inputs,
)

pytestmark = [pytest.mark.reference_only, pytest.mark.fault]


@dataclass
class Observed:
    busy_frames: list[Json] = field(default_factory=list)
    busy_close: int | None = None
    late_frames: list[Json] = field(default_factory=list)
    late_close: int | None = None
    idle_frames: list[Json] = field(default_factory=list)
    health_during_drain: int | None = None
    exited: bool = False


def drain(client: Client, into: list[Json], timeout: float) -> int | None:
    """Read frames into `into` until the connection ends; return the close code."""
    frames, code = client.frames_until_close(timeout)
    into.extend(frames)
    return code


@pytest.fixture(scope="module")
def observed(spawn: Spawn) -> Observed:
    manager = spawn("--workers", "inference=1")
    obs = Observed()
    with contextlib.ExitStack() as stack:
        busy = stack.enter_context(session(manager.ws_url))
        late = stack.enter_context(session(manager.ws_url))
        idle = stack.enter_context(session(manager.ws_url))
        busy.infer("slow", slow_inputs(1500, [7.0]))  # running when SIGTERM arrives
        time.sleep(0.3)
        busy.infer("slow", slow_inputs(50, [9.0]))  # queued behind it (one worker)
        time.sleep(0.2)

        stopper = threading.Thread(target=manager.terminate, daemon=True)
        stopper.start()
        # The NACK for the queued job proves shutdown has started.
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            try:
                frame = busy.recv_raw(max(0.01, deadline - time.monotonic()))
            except (TimeoutError, ConnectionClosed):
                break
            obs.busy_frames.append(frame)
            if frame["type"] == "error":
                break
        with contextlib.suppress(httpx.HTTPError):
            obs.health_during_drain = http_get(http_base(manager.ws_url), "/health").status_code
        with contextlib.suppress(ConnectionClosed):
            late.send("info", {"action": "queue_stats", "job_id": "late"})
        obs.late_close = drain(late, obs.late_frames, 5)
        obs.busy_close = drain(busy, obs.busy_frames, 8)
        drain(idle, obs.idle_frames, 3)
        stopper.join(15)
        obs.exited = not stopper.is_alive()
    return obs


def test_running_job_result_still_delivered(observed: Observed) -> None:
    """§7: jobs already handed to the thread pools finish and their results are still delivered."""
    results = [f for f in observed.busy_frames if f["type"] == "inference"]
    assert [f["payload"]["status"] for f in results] == ["COMPLETED"], observed.busy_frames
    assert results[0]["payload"]["data"] == {"OUTPUT0": [14.0]}


def test_queued_job_gets_shutdown_nack(observed: Observed) -> None:
    """§7, §6.1: jobs still sitting in per-uuid queues get `SYSTEM_SHUTDOWN` + `dropped_type`
    ("Request dropped: system is shutting down."); the socket stays open."""
    nacks = [f for f in observed.busy_frames if f["type"] == "error"]
    assert nacks == [
        {
            "type": "error",
            "payload": {
                "code": "SYSTEM_SHUTDOWN",
                "message": "Request dropped: system is shutting down.",
                "dropped_type": "inference",
            },
        }
    ], observed.busy_frames
    # The socket stayed open after the NACK: the running job's result came after it.
    kinds = [f["type"] for f in observed.busy_frames]
    assert kinds.index("error") < kinds.index("inference")


def test_next_frame_after_shutdown_rejected_1012(observed: Observed) -> None:
    """§7, §6.1: a frame read after shutdown started gets `SYSTEM_SHUTDOWN` "Server is shutting
    down; request rejected." and the socket is closed with 1012."""
    errors = [f for f in observed.late_frames if f["type"] == "error"]
    assert errors == [
        {
            "type": "error",
            "payload": {
                "code": "SYSTEM_SHUTDOWN",
                "message": "Server is shutting down; request rejected.",
            },
        }
    ], observed.late_frames
    assert observed.late_close == 1012


def test_no_proactive_frame_to_idle_clients(observed: Observed) -> None:
    """§7: nothing proactive — no SYSTEM_SHUTDOWN is pushed to idle sockets."""
    assert observed.idle_frames == []


def test_health_200_during_drain(observed: Observed) -> None:
    """§7: `/health` keeps answering 200 until exit."""
    assert observed.health_during_drain == 200


def test_process_exits_after_drain(observed: Observed) -> None:
    """§7: after the drain the process exits."""
    assert observed.exited
