"""`anytcm demo`, the README's first command, and Ctrl-C on the command line.

The demo runs as a real `python -m anytcm demo` process: it must print its table, exit 0, and
leave neither its reference manager process nor a shared-memory segment behind, also when it
is interrupted (SIGINT to the process alone, or to its whole process group as a terminal's
Ctrl-C does, which also hits the manager). Its rows' checks are also tested in-process against
a manager made to fail, to prove a failed check shows as ✗ rather than passing by construction.
The same goes for its second manager, which the failover row (a client over both managers, one
of them SIGKILLed) uses; that row is also run in-process, on both backends.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

import anytcm
from anytcm.cli._demo import (
    FAILOVER_AFTER,
    DemoRow,
    _failover_row,
    _infer_row,
    _queue_stats_row,
    _stream_row,
)
from anytcm.plugins import carrier_names
from anytcm.testing import ReferenceCluster, ReferenceManager

ZSTD = "zstd" in carrier_names()
HEADER = re.compile(r"reference manager on (?P<url>ws://\S+) \(pid (?P<pid>\d+)\)")
SECOND = re.compile(r"and (?P<url>ws://\S+) \(pid (?P<pid>\d+)\) for the failover row")


def anytcm_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "anytcm", *args]


def interruptible_command(*args: str) -> list[str]:
    """`python -m anytcm ARGS` with SIGINT at its default, so that Python turns it into
    KeyboardInterrupt: a test runner started in the background (`cmd &`) passes SIGINT on as
    ignored, and an ignored SIGINT stays ignored (as it should: that is what nohup relies on).
    The wrapper execs, so the process keeps its pid."""
    restore_and_exec = (
        "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
        "os.execv(sys.executable, [sys.executable, '-m', 'anytcm', *sys.argv[1:]])"
    )
    return [sys.executable, "-c", restore_and_exec, *args]


def assert_gone(pid: int) -> None:
    """The process no longer exists (the demo waited for it, so it cannot be a zombie)."""
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def segments_of(pid: int) -> list[str]:
    return [name for name in os.listdir("/dev/shm") if name.startswith(f"anytcm-{pid}-")]


def test_demo_json_every_carrier_checks_and_cleans_up() -> None:
    started = time.monotonic()
    process = subprocess.Popen(
        anytcm_command("demo", "--json", "--rounds", "2"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stdout, stderr = process.communicate(timeout=120)
    elapsed = time.monotonic() - started
    assert process.returncode == 0, stderr
    assert stderr == ""
    report = json.loads(stdout)
    assert report["ok"] is True
    assert report["rounds"] == 2
    rows = report["rows"]
    carriers = ["json", "shm", "zstd"] if ZSTD else ["json", "shm"]
    infer_rows = [row for row in rows if row["call"] == "infer"]
    assert [(r["carrier"], r["size"]) for r in infer_rows] == [
        (carrier, size) for carrier in carriers for size in ("4 KiB", "1 MiB")
    ]
    assert all(row["ok"] for row in rows)
    refused = [row for row in infer_rows if row["latency_ms"] is None]
    assert refused == [
        {
            "call": "infer",
            "carrier": "json",
            "size": "1 MiB",
            "ok": True,
            "note": "refused: PayloadTooLarge",
            "latency_ms": None,
        }
    ]
    assert all(row["latency_ms"] > 0 for row in rows if row not in refused)
    assert [row["call"] for row in rows[-3:]] == ["infer_stream", "queue_stats", "failover"]
    failover = rows[-1]
    assert (failover["carrier"], failover["size"], failover["ok"]) == ("json", "4 KiB", True)
    assert f"one SIGKILLed: {FAILOVER_AFTER}/{FAILOVER_AFTER} ok" in failover["note"]
    assert ("zstd" in report["manager"]["granted"]) is ZSTD
    assert "shm" in report["manager"]["granted"]
    assert report["second_manager"]["url"] != report["manager"]["url"]
    assert_gone(report["manager"]["pid"])
    assert_gone(report["second_manager"]["pid"])
    assert segments_of(process.pid) == []
    assert elapsed < 30  # "a few seconds" on a quiet machine; generous for a loaded CI box


def test_demo_table_on_trio() -> None:
    done = subprocess.run(
        anytcm_command("demo", "--rounds", "1", "--backend", "trio"),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    header = HEADER.search(done.stdout)
    assert header is not None, done.stdout
    assert "✓" in done.stdout
    assert "✗" not in done.stdout
    assert "refused: PayloadTooLarge" in done.stdout
    for word in ("json", "shm", "infer_stream", "queue_stats", "latency", "failover"):
        assert word in done.stdout
    assert f"{FAILOVER_AFTER}/{FAILOVER_AFTER} ok" in done.stdout
    assert_gone(int(header["pid"]))
    second = SECOND.search(done.stdout)
    assert second is not None, done.stdout
    assert_gone(int(second["pid"]))


def test_demo_unknown_carrier_is_a_usage_error() -> None:
    done = subprocess.run(
        anytcm_command("demo", "--carrier", "carrier-pigeon"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("anytcm: --carrier carrier-pigeon")


@pytest.mark.parametrize(
    ("backend", "whole_group"),
    [("asyncio", False), ("trio", True)],
    ids=["asyncio-process", "trio-process-group"],
)
def test_ctrl_c_exits_130_quietly_and_leaves_nothing(backend: str, whole_group: bool) -> None:
    """Interrupted in the middle of shared-memory inferences: exit 130, no output on stderr,
    the manager gone, no segment left."""
    process = subprocess.Popen(
        interruptible_command(
            "demo", "--rounds", "100000", "--carrier", "shm", "--backend", backend
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a shell gives a foreground job
    )
    try:
        assert process.stdout is not None
        first_line = process.stdout.readline()
        header, second = HEADER.search(first_line), SECOND.search(first_line)
        assert header is not None
        assert second is not None
        manager_pid = int(header["pid"])
        time.sleep(0.5)  # well into the shm rows (100,000 rounds each)
        assert process.poll() is None
        if whole_group:
            os.killpg(process.pid, signal.SIGINT)
        else:
            process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, err
    assert err == ""
    assert out == ""  # no table for an interrupted demo
    assert_gone(manager_pid)
    assert_gone(int(second["pid"]))
    assert segments_of(process.pid) == []


def test_ctrl_c_during_queue_stats_load() -> None:
    with ReferenceManager() as manager:
        process = subprocess.Popen(
            interruptible_command(
                *("queue-stats", "--url", manager.ws_url, "--json", "--backend", "trio"),
                *("--repeat", "100000000", "--concurrency", "4"),
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            time.sleep(1.5)
            assert process.poll() is None
            process.send_signal(signal.SIGINT)
            out, err = process.communicate(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert process.returncode == 130, err
    assert err == ""  # no traceback, no message: the user asked for it
    partial = json.loads(out)  # the statistics gathered until Ctrl-C
    assert partial["interrupted"] is True


# -- the rows' checks can fail --------------------------------------------------------------


@pytest.fixture
def failing_manager(manager: ReferenceManager) -> ReferenceManager:
    """The shared manager (tests/conftest.py); the test sets an error switch and resets it."""
    return manager


@pytest.mark.anyio
async def test_rows_report_failures(failing_manager: ReferenceManager) -> None:
    failing_manager.set_faults(**{"error.double": "TRITON_INFERENCE_FAILED"})
    try:
        async with anytcm.connect(failing_manager.ws_url, pool_size=1) as client:
            failed = await _infer_row(client, "json", 1024, 1)
            # A json tensor over the cap that is *not* refused would be a failed check too;
            # here the refusal comes before the fault, so the row passes.
            refused = await _infer_row(client, "json", 256 * 1024, 1)
            stream = await _stream_row(client, 1)
            stats = await _queue_stats_row(client, 1)
    finally:
        failing_manager.reset_faults()
    assert failed == DemoRow("infer", "json", "4 KiB", None, False, failed.note)
    assert failed.note.startswith("InferenceFailed: ")
    assert refused.ok
    assert refused.note == "refused: PayloadTooLarge"
    assert stream.ok
    assert stream.latency is not None
    assert stats.ok


# -- the failover row ---------------------------------------------------------------------------


@pytest.fixture
def two_managers() -> Iterator[ReferenceCluster]:
    """A cluster of its own: the row kills one of them."""
    with ReferenceCluster(2) as cluster:
        yield cluster


@pytest.mark.anyio
async def test_failover_row_survives_a_sigkill(two_managers: ReferenceCluster) -> None:
    victim = two_managers[1]
    row = await _failover_row(two_managers.urls, victim.kill, "json", 10.0)
    assert not victim.running
    assert row.ok, row.note
    assert (row.call, row.carrier, row.size) == ("failover", "json", "4 KiB")
    assert row.latency is not None
    # Both managers served calls before the kill (the row waits for a connection to each).
    spread = re.search(r"2 managers \((?P<a>\d+)\+(?P<b>\d+) calls\)", row.note)
    assert spread is not None, row.note
    assert int(spread["a"]) > 0
    assert int(spread["b"]) > 0
    assert f"one SIGKILLed: {FAILOVER_AFTER}/{FAILOVER_AFTER} ok" in row.note


@pytest.mark.anyio
async def test_failover_row_reports_a_failing_survivor(two_managers: ReferenceCluster) -> None:
    """Not a pass by construction: a survivor whose inferences fail fails the row."""
    two_managers[0].set_faults(**{"error.double": "TRITON_INFERENCE_FAILED"})
    row = await _failover_row(two_managers.urls, two_managers[1].kill, "json", 10.0)
    assert not row.ok
    assert "InferenceFailed" in row.note
