"""Shared plumbing of the benchmark client processes (stdlib only: the vendor venv imports it too),
and of the benchmarks' result files (`add_results_argument`, `save_results`).

Each client script is started by `run_client_bench.py` in its own process, so that
`time.process_time()` measures that client alone. It connects, warms up, then runs `--repeat`
timed runs of `--count` requests and prints ONE JSON line on stdout:

    {"client": ..., "scenario": ..., "mode": ..., "runs": [RunResult, ...], "error": null}

A RunResult holds the raw figures of one timed run: request count, wall seconds, client CPU
seconds (`time.process_time()` deltas, user+system of this process, all threads), latency
percentiles, and the reference manager's CPU seconds over the same interval (read from
`/proc/<pid>/stat`, when `--server-pid` is given).

What one request sends and what its reply must hold is a `Workload`, chosen by `--scenario` and
`--size`: the fixed `small` and `large` cases, and the two tensor-size sweeps (`out`: a tiny
request and an FP32 reply of `--size` elements; `in`: an FP32 request of `--size` elements and
an 8-byte reply). Every client builds its requests from the same `Workload`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SMALL_MODEL = "double"
SMALL_SIZE = 16
LARGE_MODEL = "generate"
LARGE_SIZE = 262_144  # FP32 elements: 1 MiB of float32, ~3 MB of JSON
INPUT_MODEL = "checksum"  # any numeric INPUT0 -> OUTPUT0 FP64 [1], its sum: a tiny reply
VM_IP = "127.0.0.1"
CONTAINER_ID = "ref-0"
OUTPUT = "OUTPUT0"
# small / large: fixed cases; out / in: the tensor-size sweeps (see `workload`)
SCENARIOS = ("small", "large", "out", "in")
# In the input sweep, one element in SPARSE_STRIDE is non-zero: compressible, as masks, padded
# batches and activations often are, so that the zstd carrier has something to carry.
SPARSE_STRIDE = 100

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


def add_results_argument(parser: argparse.ArgumentParser, default: Path) -> None:
    """`--results PATH`: where a benchmark writes its figures (JSON; Markdown beside it)."""
    parser.add_argument(
        "--results",
        type=Path,
        default=default,
        help=f"the JSON to write, every figure (the Markdown goes beside it, .md); default "
        f"{default.parent.name}/{default.name}",
    )


def save_results(results: Path, data: dict[str, Any], markdown: str) -> None:
    """Writes a benchmark's figures to `results` and its Markdown beside it (.md)."""
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(data, indent=1))
    results.with_suffix(".md").write_text(markdown)


def parse_args(description: str | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--url", required=True, help="ws://HOST:PORT/ws of the manager")
    parser.add_argument("--scenario", choices=SCENARIOS, default="small")
    parser.add_argument(
        "--size", type=int, default=0, help="out / in scenarios: FP32 elements of the tensor"
    )
    parser.add_argument("--connections", type=int, default=1, help="connections = in flight")
    parser.add_argument("--count", type=int, default=2000, help="requests per timed run")
    parser.add_argument("--warmup", type=int, default=200, help="requests before timing")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs")
    parser.add_argument("--server-pid", type=int, default=None)
    parser.add_argument("--backend", default="asyncio", help="anytcm only: asyncio or trio")
    parser.add_argument(
        "--carrier", default="auto", help="anytcm only: how inputs travel (auto, json, shm, zstd)"
    )
    parser.add_argument(
        "--vendor-max-size",
        default="default",
        help="vendor only: 'default' (the SDK as shipped) or 'none' (patch max_size=None)",
    )
    return parser.parse_args()


def small_input() -> Any:
    import numpy as np

    return (np.arange(SMALL_SIZE, dtype=np.float32) - 7.5) / 3.0


def sparse_input(size: int) -> Any:
    """FP32 [size], every SPARSE_STRIDE-th element random in [0, 1), the rest 0 (seeded)."""
    import numpy as np

    x = np.zeros(size, dtype=np.float32)
    picked = x[::SPARSE_STRIDE]
    picked[:] = np.random.default_rng(size).random(picked.size, dtype=np.float32)
    return x


@dataclass(frozen=True)
class Workload:
    """One request of a scenario (the same for every request) and what its reply must hold."""

    model: str
    input_name: str
    input_datatype: str  # Triton datatype of the input
    x: Any  # the input ndarray
    output_datatype: str  # Triton datatype of OUTPUT0, as the clients decode it
    expected: Callable[[], Any]  # OUTPUT0 the first reply must equal (computed once, lazily)

    @property
    def output_numpy(self) -> str:
        """numpy's name of the output dtype, for the clients that decode with np.asarray."""
        return {"FP32": "float32", "FP64": "float64"}[self.output_datatype]


def _generated(size: int) -> Any:
    """What the manager's `generate` model answers for SIZE = size."""
    import numpy as np

    return np.random.default_rng(size).random(size, dtype=np.float32)


def workload(scenario: str, size: int = 0) -> Workload:
    """The request of `scenario`; `size` (FP32 elements) sets the tensor of the sweeps.

    * small: `double`, INPUT0 FP32 [16] -> OUTPUT0 FP32 [16] (per-request overhead);
    * large: `generate`, SIZE INT64 [1] = 262144 -> OUTPUT0 FP32 [262144] (a big JSON reply);
    * out: `generate` with SIZE = size: a 16-byte request, an FP32 [size] reply (JSON);
    * in: `checksum`, INPUT0 FP32 [size] (sparse, see `sparse_input`) -> OUTPUT0 FP64 [1].
    """
    import numpy as np

    if scenario == "small":
        x = small_input()
        return Workload(SMALL_MODEL, "INPUT0", "FP32", x, "FP32", lambda: 2 * x)
    if scenario in ("large", "out"):
        n = LARGE_SIZE if scenario == "large" else size
        x = np.array([n], dtype=np.int64)
        return Workload(LARGE_MODEL, "SIZE", "INT64", x, "FP32", lambda: _generated(n))
    if scenario == "in":
        x = sparse_input(size)
        total = np.array([np.sum(x, dtype=np.float64)])
        return Workload(INPUT_MODEL, "INPUT0", "FP32", x, "FP64", lambda: total)
    raise ValueError(f"unknown scenario {scenario!r}; expected one of {', '.join(SCENARIOS)}")


def check_output(work: Workload, out: Any) -> None:
    """Validate one decoded output (done once, during warm-up, outside the timed runs)."""
    import numpy as np

    if out.dtype != np.dtype(work.output_numpy):
        raise AssertionError(f"output dtype is {out.dtype}, expected {work.output_numpy}")
    expected = work.expected()
    if out.shape != expected.shape or not np.array_equal(out, expected):
        raise AssertionError(f"wrong output of {work.model!r}: {out[:8]!r}...")


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
        "size": args.size,
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
        "size": args.size,
        "connections": args.connections,
        "runs": [],
        "error": f"{type(error).__name__}: {error}",
        **extra,
    }
    print(json.dumps(record), flush=True)


RequestFn = Callable[[], Awaitable[Any]]


Jobs = Sequence[Callable[[], Coroutine[Any, Any, None]]]


async def _asyncio_gather(jobs: Jobs) -> None:
    await asyncio.gather(*(job() for job in jobs))


async def drive(
    args: argparse.Namespace,
    request_fns: Sequence[RequestFn],
    work: Workload,
    gather: Callable[[Jobs], Awaitable[None]] = _asyncio_gather,
) -> list[dict[str, Any]]:
    """The timed loop of every client: warm-up, then `args.repeat` timed runs.

    One worker per entry of `request_fns` (each sends and waits for its reply: one request in
    flight per worker), pulling from a shared budget of `count` requests. `gather` runs the
    workers concurrently: asyncio's by default (ceiling and vendor clients, whose venv has no
    anyio); anytcm passes an anyio task group so the same loop runs on trio too.
    """
    # Warm-up: every connection at least once; the first result is checked.
    first = await request_fns[0]()
    check_output(work, first)
    timer = Timer(args.server_pid)

    async def run(count: int, record: bool) -> None:
        remaining = count

        def worker(fn: RequestFn) -> Callable[[], Coroutine[Any, Any, None]]:
            async def loop() -> None:
                nonlocal remaining
                lat = timer.latencies
                clock = time.perf_counter
                while remaining > 0:
                    remaining -= 1
                    t0 = clock()
                    await fn()
                    if record:
                        lat.append(clock() - t0)

            return loop

        await gather([worker(fn) for fn in request_fns])

    await run(max(args.warmup, len(request_fns)), record=False)
    runs = []
    for _ in range(args.repeat):
        timer.start()
        await run(args.count, record=True)
        runs.append(timer.stop())
    return runs
