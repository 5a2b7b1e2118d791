"""SIGINT, SIGTERM and a closed stdout against the real `anytcm` process (and `serve-dev`).

Every test runs the installed command line in a subprocess against a real reference manager
and sends real signals. Time bounds are behaviour bounds ("exits promptly"), generous on
purpose. See docs/cli.md, "Signals and exit codes".
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from _cli_helpers import BACKENDS, assert_one_line_error, run_anytcm
from anytcm.testing import ReferenceManager

EXIT_BOUND = 10.0  # seconds from the signal to the exit: "promptly", not a benchmark

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "anytcm", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def signal_and_wait(
    process: subprocess.Popen[str], signum: int, *, after: float
) -> tuple[int, str, str, float]:
    time.sleep(after)
    assert process.poll() is None, process.communicate()
    sent = time.monotonic()
    process.send_signal(signum)
    try:
        out, err = process.communicate(timeout=EXIT_BOUND)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        pytest.fail(f"still running {EXIT_BOUND} s after the signal; stderr: {err}")
    return process.returncode, out, err, time.monotonic() - sent


def segments_of(pid: int) -> list[str]:
    return [name for name in os.listdir("/dev/shm") if name.startswith(f"anytcm-{pid}-")]


EXPECTED_CODE: dict[int, int] = {signal.SIGINT: 130, signal.SIGTERM: 143}


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="needs /dev/shm")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_infer_shm_interrupted_exits_and_unlinks(
    manager: ReferenceManager, tmp_path: Path, backend: str, signum: int
) -> None:
    # 1 MiB: over the carrier's thread threshold, so an AnyIO worker thread exists.
    np.save(tmp_path / "x.npy", np.ones((512, 512), np.float32))
    np.save(tmp_path / "d.npy", np.array([20_000], np.int32))  # the `slow` model sleeps 20 s
    process = start(
        *("infer", "slow", "--url", manager.ws_url, "--backend", backend),
        *("--vm-ip", "127.0.0.1", "--container-id", "ref-0", "--carrier", "shm"),
        *("--input", f"INPUT0={tmp_path / 'x.npy'}", "--input", f"DELAY_MS={tmp_path / 'd.npy'}"),
    )
    code, _, err, _ = signal_and_wait(process, signum, after=2.0)
    assert code == EXPECTED_CODE[signum], err
    assert "Traceback" not in err, err
    assert segments_of(process.pid) == []


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_load_mode_interrupted_prints_partial_statistics(
    manager: ReferenceManager, backend: str, signum: int
) -> None:
    process = start(
        *("queue-stats", "--url", manager.ws_url, "--backend", backend, "--json"),
        *("--repeat", "100000000", "--concurrency", "4"),
    )
    code, out, err, _ = signal_and_wait(process, signum, after=3.0)
    assert code == EXPECTED_CODE[signum], err
    assert "Traceback" not in err, err

    report = json.loads(out)
    assert report["interrupted"] is True
    assert report["completed"] > 0
    assert report["requests"] == 100000000


def test_second_sigint_while_exiting_stays_quiet(manager: ReferenceManager) -> None:
    process = start("queue-stats", "--url", manager.ws_url, "--repeat", "100000000", "--json")
    time.sleep(2.0)
    process.send_signal(signal.SIGINT)
    time.sleep(0.02)
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=EXIT_BOUND)
    assert process.returncode == 130, err
    assert "Traceback" not in err, err


def test_closed_stdout_ends_quietly(manager: ReferenceManager) -> None:
    """`anytcm --json ... | head -c 10`: exit 1 (Python's advice for EPIPE), no traceback."""
    read_end, write_end = os.pipe()
    process = subprocess.Popen(
        [sys.executable, "-m", "anytcm", "--json", "carriers", "list"],
        stdout=write_end,
        stderr=subprocess.PIPE,
        text=True,
    )
    os.close(write_end)
    os.close(read_end)  # the reader is gone before anything is written
    _, err = process.communicate(timeout=30)
    assert process.returncode == 1, err
    assert err == "", err


def test_closed_stdout_through_head(manager: ReferenceManager) -> None:
    shell = (
        f"{sys.executable} -m anytcm --json queue-stats --url {manager.ws_url} "
        "--repeat 300 | head -c 10 >/dev/null; echo ${PIPESTATUS[0]} >&2"
    )
    result = subprocess.run(
        ["bash", "-c", shell], capture_output=True, text=True, timeout=60, check=False
    )
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip() in {"0", "1"}, result.stderr


# ----------------------------------------------------------------------------------------------
# serve-dev


def test_serve_dev_port_in_use() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_anytcm("serve-dev", "--port", str(port))
    assert result.returncode == 2, result.stderr
    assert_one_line_error(result.stderr, f"127.0.0.1:{port}")


def test_serve_dev_bad_host() -> None:
    result = run_anytcm("serve-dev", "--host", "nosuch.invalid", "--port", "0")
    assert result.returncode == 2, result.stderr
    assert_one_line_error(result.stderr, "nosuch.invalid")


@pytest.mark.parametrize("fault", ["bogus", "nosuch=1"])
def test_serve_dev_bad_fault(fault: str) -> None:
    result = run_anytcm("serve-dev", "--port", "0", "--fault", fault)
    assert result.returncode == 2, result.stderr
    assert_one_line_error(result.stderr, "--fault")


def test_serve_dev_sigint_is_not_logged_as_sigterm() -> None:
    process = start("serve-dev", "--port", "0", "--log-level", "INFO")
    assert process.stdout is not None
    assert "listening on" in process.stdout.readline()
    code, _, err, _ = signal_and_wait(process, signal.SIGINT, after=0.0)
    assert "SIGTERM" not in err, err
    assert "SIGINT" in err, err
    assert "Traceback" not in err, err
    assert code == 0, err
