"""The ReferenceManager helper and `anytcm serve-dev`: real processes, real signals."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from anytcm.testing import ReferenceManager, ReferenceManagerError


def _auth(url: str) -> None:
    with connect(url, open_timeout=5) as ws:
        ws.send(json.dumps({"uuid": uuid.uuid4().hex, "type": "auth", "payload": {}}))
        assert json.loads(ws.recv(timeout=5)) == {"type": "auth.ok"}


@pytest.mark.fault
def test_port_zero_is_reported_and_restart_keeps_the_port() -> None:
    with ReferenceManager() as manager:
        first_port, first_pid = manager.port, manager.pid
        assert first_port > 0
        _auth(manager.ws_url)
        manager.restart()
        assert manager.port == first_port
        assert manager.pid != first_pid
        _auth(manager.ws_url)


@pytest.mark.fault
def test_kill_drops_connections_abruptly() -> None:
    with ReferenceManager() as manager, connect(manager.ws_url) as ws:
        ws.send(json.dumps({"uuid": "k", "type": "auth", "payload": {}}))
        ws.recv(timeout=5)
        manager.kill()
        assert not manager.running
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)
        assert closed.value.rcvd is None  # no close frame: observed as 1006
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{manager.http_url}/health")


@pytest.mark.fault
def test_sigterm_with_nothing_in_flight_exits_cleanly() -> None:
    manager = ReferenceManager().start()
    try:
        manager.terminate(timeout=15)
        assert manager.wait() == 0
    finally:
        manager.stop()


@pytest.mark.fault
def test_pause_freezes_and_resume_continues() -> None:
    with ReferenceManager() as manager:
        manager.pause()
        with pytest.raises(httpx.TimeoutException):
            httpx.get(f"{manager.http_url}/health", timeout=0.5)
        manager.resume()
        assert httpx.get(f"{manager.http_url}/health", timeout=5).status_code == 200


def test_faults_round_trip_through_the_admin_endpoint() -> None:
    with ReferenceManager(faults={"latency.double": 25}) as manager:
        assert manager.faults()["latency_ms"] == {"double": 25.0}
        state = manager.set_faults(hang_fraction=0.5, drop_after_frames=7)
        assert state["hang_fraction"] == 0.5
        assert state["drop_after_frames"] == 7
        assert manager.reset_faults()["latency_ms"] == {}
        with pytest.raises(ReferenceManagerError, match="unknown fault switch"):
            manager.set_faults(no_such_switch=1)


def test_start_failure_reports_the_server_output() -> None:
    manager = ReferenceManager(extra_args=["--queue-limit", "bogus=1"])
    with pytest.raises(ReferenceManagerError, match="job type must be one of"):
        manager.start()


@pytest.mark.fault
def test_server_exits_when_its_parent_dies() -> None:
    """A crashed test process must not leave a server (and its port) behind."""
    script = (
        "from anytcm.testing import ReferenceManager\n"
        "m = ReferenceManager().start()\n"
        "print(m.pid, flush=True)\n"
        "import os; os._exit(0)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    server_pid = int(out.stdout.split()[0])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(server_pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(server_pid, signal.SIGKILL)
    pytest.fail("the reference manager outlived its parent")


def test_serve_dev_command_runs_in_the_foreground_and_stops_on_ctrl_c() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "anytcm", "serve-dev", "--host", "127.0.0.1", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.search(r"ws://127\.0\.0\.1:(\d+)/ws", line)
        assert match, line
        _auth(f"ws://127.0.0.1:{match[1]}/ws")
        process.send_signal(signal.SIGINT)
        assert process.wait(10) == 0
    finally:
        process.kill()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()
