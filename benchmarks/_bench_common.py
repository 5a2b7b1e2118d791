"""Shared plumbing of the benchmark client processes (stdlib only: the vendor venv imports it too).

Each client script is started by `run_client_bench.py` in its own process, so that
`time.process_time()` measures that client alone. It connects, warms up, then runs `--repeat`
timed runs of `--count` requests and prints ONE JSON line on stdout:

    {"client": ..., "scenario": ..., "mode": ..., "runs": [RunResult, ...], "error": null}

A RunResult holds the raw figures of one timed run: request count, wall seconds, client CPU
seconds (`time.process_time()` deltas, user+system of this process, all threads), latency
percentiles, and the reference manager's CPU seconds over the same interval (read from
`/proc/<pid>/stat`, when `--server-pid` is given).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

SMALL_MODEL = "double"
SMALL_SIZE = 16
LARGE_MODEL = "generate"
LARGE_SIZE = 262_144  # FP32 elements: 1 MiB of float32, ~3 MB of JSON
VM_IP = "127.0.0.1"
CONTAINER_ID = "ref-0"
OUTPUT = "OUTPUT0"

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_seconds(pid: int | None) -> float:
    """utime + stime of a process (all its threads), in seconds; 0.0 without a pid."""
    if pid is None:
        return 0.0
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    # The command name (field 2) may contain spaces: split after its closing parenthesis.
    fields = stat[stat.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # fields 14 and 15 of stat(5)


def machine_busy_seconds() -> float:
    """CPU seconds all processes have used (every core), from /proc/stat: a run's foreign load is
    this minus the client's and the manager's CPU over the same interval."""
    with open("/proc/stat", "rb") as f:
        fields = f.readline().split()[1:]
    # user nice system idle iowait irq softirq steal ...: everything but idle and iowait
    values = [int(v) for v in fields[:8]]
    return (sum(values) - values[3] - values[4]) / _CLK_TCK


def parse_args(description: str | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--url", required=True, help="ws://HOST:PORT/ws of the manager")
    parser.add_argument("--scenario", choices=("small", "large"), default="small")
    parser.add_argument("--connections", type=int, default=1, help="connections = in flight")
    parser.add_argument("--count", type=int, default=2000, help="requests per timed run")
    parser.add_argument("--warmup", type=int, default=200, help="requests before timing")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs")
    parser.add_argument("--server-pid", type=int, default=None)
    parser.add_argument("--backend", default="asyncio", help="anytcm only: asyncio or trio")
    parser.add_argument(
        "--vendor-max-size",
        default="default",
        help="vendor only: 'default' (the SDK as shipped) or 'none' (patch max_size=None)",
    )
    return parser.parse_args()


def small_input() -> Any:
    import numpy as np

    return (np.arange(SMALL_SIZE, dtype=np.float32) - 7.5) / 3.0


def check_output(scenario: str, x: Any, out: Any) -> None:
    """Validate one decoded output (done once, during warm-up, outside the timed runs)."""
    import numpy as np

    if out.dtype != np.float32:
        raise AssertionError(f"output dtype is {out.dtype}, expected float32")
    if scenario == "small":
        if out.shape != (SMALL_SIZE,) or not np.array_equal(out, 2 * x):
            raise AssertionError(f"wrong output of 'double': {out!r}")
    else:
        expected = np.random.default_rng(LARGE_SIZE).random(LARGE_SIZE, dtype=np.float32)
        if out.shape != (LARGE_SIZE,) or not np.array_equal(out, expected):
            raise AssertionError("wrong output of 'generate'")


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank-with-interpolation percentile of already sorted values (q in [0, 100])."""
    if not sorted_values:
        return float("nan")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


class Timer:
    """Collects the figures of one timed run: call `start()`, record latencies, `stop()`."""

    def __init__(self, server_pid: int | None) -> None:
        self.server_pid = server_pid
        self.latencies: list[float] = []

    def start(self) -> None:
        self.latencies = []
        self._server0 = proc_cpu_seconds(self.server_pid)
        self._busy0 = machine_busy_seconds()
        self._cpu0 = time.process_time()
        self._wall0 = time.perf_counter()

    def stop(self) -> dict[str, Any]:
        wall = time.perf_counter() - self._wall0
        cpu = time.process_time() - self._cpu0
        server = proc_cpu_seconds(self.server_pid) - self._server0
        busy = machine_busy_seconds() - self._busy0
        lat = sorted(self.latencies)
        n = len(lat)
        return {
            "requests": n,
            "wall_s": wall,
            "cpu_s": cpu,
            "server_cpu_s": server if self.server_pid is not None else None,
            "rps": n / wall if wall > 0 else float("nan"),
            "p50_ms": percentile(lat, 50) * 1e3,
            "p99_ms": percentile(lat, 99) * 1e3,
            "mean_ms": statistics.fmean(lat) * 1e3 if lat else float("nan"),
            "cpu_ms_per_req": cpu / n * 1e3 if n else float("nan"),
            "server_cpu_ms_per_req": server / n * 1e3 if n and self.server_pid else None,
            "server_util": server / wall if wall > 0 and self.server_pid else None,
            # CPU used by everything else on the machine, in cores (0 = quiet machine)
            "other_util": max(0.0, busy - cpu - server) / wall if wall > 0 else None,
        }


def emit(args: argparse.Namespace, client: str, runs: list[dict[str, Any]], **extra: Any) -> None:
    record = {
        "client": client,
        "scenario": args.scenario,
        "connections": args.connections,
        "runs": runs,
        "error": None,
        "python": sys.version.split()[0],
        **extra,
    }
    print(json.dumps(record), flush=True)


def emit_error(args: argparse.Namespace, client: str, error: BaseException, **extra: Any) -> None:
    record = {
        "client": client,
        "scenario": args.scenario,
        "connections": args.connections,
        "runs": [],
        "error": f"{type(error).__name__}: {error}",
        **extra,
    }
    print(json.dumps(record), flush=True)


RequestFn = Callable[[], Awaitable[Any]]


async def asyncio_drive(
    args: argparse.Namespace, request_fns: Sequence[RequestFn], x: Any
) -> list[dict[str, Any]]:
    """The asyncio driver of the ceiling and vendor clients.

    One worker per connection (`request_fns[i]` sends on connection i and waits for its reply),
    each with one request in flight, pulling from a shared budget of `count` requests.
    """
    # Warm-up: every connection at least once; the first result is checked.
    first = await request_fns[0]()
    check_output(args.scenario, x, first)
    timer = Timer(args.server_pid)

    async def run(count: int, record: bool) -> None:
        remaining = count

        async def worker(fn: RequestFn) -> None:
            nonlocal remaining
            lat = timer.latencies
            clock = time.perf_counter
            while remaining > 0:
                remaining -= 1
                t0 = clock()
                await fn()
                if record:
                    lat.append(clock() - t0)

        await asyncio.gather(*(worker(fn) for fn in request_fns))

    await run(max(args.warmup, len(request_fns)), record=False)
    runs = []
    for _ in range(args.repeat):
        timer.start()
        await run(args.count, record=True)
        runs.append(timer.stop())
    return runs
