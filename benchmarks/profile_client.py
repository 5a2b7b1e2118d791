"""Profile anytcm's small sequential inference loop (`double`, FP32[16], one connection).

Starts a reference manager, then for each backend (asyncio, trio) connects with `pool_size=1`,
warms up, and runs `--count` inferences (each decoded with `as_numpy` and an FP32 dtype) under a
profiler. Prints, per backend: the top N functions by own time and by cumulative time, and own
time rolled up per module, so one can say where a request's client CPU goes. The client CPU per
request without the profiler is printed first, for scale.

Two profilers:

* `--profiler sample` (default): a CPU-time sampler (SIGPROF / ITIMER_PROF), no per-call cost,
  so the split is faithful; time in a C call is charged to the Python function making it.
* `--profiler cprofile`: exact call counts; its per-call overhead inflates functions that are
  called often, and with its default wall clock (`--timer wall`) a thread descheduled inside a
  system call (2 cores shared with the manager) charges that wait to the call (e.g. socket
  send); `--timer cpu` avoids that at a higher per-call cost.

Run: `/work/venv/bin/python benchmarks/profile_client.py [--count 10000] [--top 25]`;
`--backend trio` profiles one backend only; `--concurrency 8` runs 8 calling tasks on a pool of 8
(the benchmark's concurrent case) instead of the sequential loop.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import re
import signal
import time
from collections import defaultdict
from types import FrameType
from typing import Any

import anyio
import numpy as np

import anytcm
from anytcm.testing import ReferenceManager

TARGET = anytcm.Target("127.0.0.1", "ref-0")
DTYPES = {"OUTPUT0": "FP32"}
X = np.arange(16, dtype=np.float32)

_PATH_PREFIX = re.compile(r".*/(site-packages|src|lib/python3\.\d+)/")

Key = tuple[str, int, str]


def short(file: str) -> str:
    """anytcm/session.py instead of /work/main/src/anytcm/session.py; '~' for builtins."""
    if file == "~":
        return ""
    return _PATH_PREFIX.sub("", file)


def label(key: Key) -> str:
    file, line, func = key
    where = short(file)
    return f"{where}:{line}({func})" if where else func


def module_of(key: Key) -> str:
    file, _, func = key
    if file == "~":
        # builtins: group C methods by their owner where cProfile names it
        match = re.match(r"<(?:built-in method|method) '?([\w.]+)", func)
        return f"[C] {match.group(1).rsplit('.', 1)[0] if match else func}"
    path = short(file)
    parts = path.split("/")
    if len(parts) >= 2 and not parts[0].endswith(".py"):
        return "/".join(parts[:2]) if parts[0] in ("anytcm", "anyio", "trio") else parts[0]
    return path


async def loop(client: anytcm.AsyncClient, count: int, concurrency: int = 1) -> None:
    """`count` inferences in `concurrency` tasks, each calling one after the other."""

    async def calls(n: int) -> None:
        for _ in range(n):
            result = await client.infer(
                "double", {"INPUT0": X}, target=TARGET, output_dtypes=DTYPES
            )
            result.as_numpy("OUTPUT0")

    if concurrency == 1:
        await calls(count)
        return
    async with anyio.create_task_group() as tg:
        for i in range(concurrency):
            tg.start_soon(calls, count // concurrency + (i < count % concurrency))


class CpuSampler:
    """A statistical profiler on process CPU time: SIGPROF every `interval` CPU seconds
    (ITIMER_PROF counts user + system time; the kernel checks it at its tick, so the real
    period is at least one tick), recording the interrupted Python stack. Time in a C call
    (socket send, orjson, msgspec) is charged to the Python function that made it. Low
    overhead, and waiting (descheduled, blocked in epoll) costs nothing, unlike cProfile's
    wall clock."""

    def __init__(self, interval: float = 0.0002) -> None:
        self.interval = interval
        self.samples: list[tuple[Key, ...]] = []

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        stack: list[Key] = []
        while frame is not None:
            code = frame.f_code
            stack.append((code.co_filename, code.co_firstlineno, code.co_name))
            frame = frame.f_back
        self.samples.append(tuple(stack))

    def __enter__(self) -> CpuSampler:  # noqa: PYI034 - a script-local helper
        signal.signal(signal.SIGPROF, self._handler)
        signal.setitimer(signal.ITIMER_PROF, self.interval, self.interval)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.setitimer(signal.ITIMER_PROF, 0, 0)
        signal.signal(signal.SIGPROF, signal.SIG_DFL)

    def table(self, cpu_seconds: float) -> Table:
        """Per function: (samples as leaf, own s, cumulative s); the samples are scaled so that
        they add up to the measured CPU time."""
        own: dict[Key, int] = defaultdict(int)
        cum: dict[Key, int] = defaultdict(int)
        for stack in self.samples:
            if not stack:
                continue
            own[stack[0]] += 1
            for key in set(stack):
                cum[key] += 1
        per_sample = cpu_seconds / max(1, len(self.samples))
        return {
            k: (own.get(k, 0), own.get(k, 0) * per_sample, n * per_sample) for k, n in cum.items()
        }


# function -> (calls or samples, own seconds, cumulative seconds)
Table = dict[Key, tuple[int, float, float]]


async def session(
    url: str, count: int, warmup: int, profiler_kind: str, timer: str, concurrency: int
) -> tuple[float, float, Table, int]:
    """Returns (plain CPU ms/req, profiled CPU ms/req, table, samples or 0)."""
    async with anytcm.connect(url, pool_size=concurrency) as client:
        await loop(client, warmup, concurrency)
        # Unprofiled figure first, for scale.
        cpu0 = time.process_time()
        await loop(client, count, concurrency)
        plain_cpu = (time.process_time() - cpu0) / count * 1e3
        if profiler_kind == "sample":
            sampler = CpuSampler()
            cpu0 = time.process_time()
            with sampler:
                await loop(client, count, concurrency)
            cpu = time.process_time() - cpu0
            return plain_cpu, cpu / count * 1e3, sampler.table(cpu), len(sampler.samples)
        # cProfile. The CPU clock: with the default wall clock a descheduled thread (2 cores
        # shared with the manager) shows up as time spent in whatever C call it was in.
        profiler = cProfile.Profile(time.process_time) if timer == "cpu" else cProfile.Profile()
        cpu0 = time.process_time()
        profiler.enable()
        await loop(client, count, concurrency)
        profiler.disable()
        profiled_cpu = (time.process_time() - cpu0) / count * 1e3
    raw: dict[Key, tuple[int, int, float, float, Any]] = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    table = {key: (nc, tt, ct) for key, (_cc, nc, tt, ct, _callers) in raw.items()}
    return plain_cpu, profiled_cpu, table, 0


def report(backend: str, table: Table, count: int, top: int, sampled: bool) -> None:
    total = sum(v[1] for v in table.values())
    print(f"\nTotal own time: {total * 1e3 / count:.3f} ms per request")
    if sampled:
        print("(CPU-time samples; a C call's time is charged to the Python function calling it)\n")
        n_label = "samples"
    else:
        print(
            "(calls/req counts every resumption of a coroutine as a call; cProfile's per-call "
            "overhead inflates functions called often)\n"
        )
        n_label = "calls/req"

    def n(value: int) -> str:
        return str(value) if sampled else f"{value / count:.1f}"

    print(f"### {backend}: top {top} by own time\n")
    print(f"| # | function | {n_label} | own µs/req | own % | cum µs/req |")
    print("|---:|---|---:|---:|---:|---:|")
    by_own = sorted(table.items(), key=lambda kv: kv[1][1], reverse=True)[:top]
    for i, (key, (calls, own, cum)) in enumerate(by_own, 1):
        print(
            f"| {i} | `{label(key)}` | {n(calls)} | {own / count * 1e6:.1f} "
            f"| {own / total * 100:.1f} | {cum / count * 1e6:.1f} |"
        )

    print(f"\n### {backend}: top {top} by cumulative time\n")
    print(f"| # | function | {n_label} | cum µs/req | own µs/req |")
    print("|---:|---|---:|---:|---:|")
    by_cum = sorted(table.items(), key=lambda kv: kv[1][2], reverse=True)[:top]
    for i, (key, (calls, own, cum)) in enumerate(by_cum, 1):
        print(
            f"| {i} | `{label(key)}` | {n(calls)} | {cum / count * 1e6:.1f} "
            f"| {own / count * 1e6:.1f} |"
        )

    print(f"\n### {backend}: own time per module\n")
    print("| module | own µs/req | own % |")
    print("|---|---:|---:|")
    modules: dict[str, float] = defaultdict(float)
    for key, value in table.items():
        modules[module_of(key)] += value[1]
    for name, own in sorted(modules.items(), key=lambda kv: kv[1], reverse=True)[:20]:
        print(f"| {name} | {own / count * 1e6:.1f} | {own / total * 100:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=10000)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--backend", choices=("asyncio", "trio"), action="append")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=1,
        help="calling tasks, with as many connections (pool_size); 1: the sequential loop",
    )
    parser.add_argument(
        "--profiler",
        choices=("sample", "cprofile"),
        default="sample",
        help="CPU-time sampler (default, low overhead) or cProfile (exact call counts)",
    )
    parser.add_argument(
        "--timer",
        choices=("cpu", "wall"),
        default="wall",
        help="cProfile's clock: wall (its default, cheap) or process CPU time (costly per call)",
    )
    args = parser.parse_args()
    backends = args.backend or ["asyncio", "trio"]
    what = "CPU-time sampler" if args.profiler == "sample" else f"cProfile ({args.timer} clock)"

    with ReferenceManager(extra_args=["--workers", "inference=8"]) as manager:
        for backend in backends:
            plain, profiled, table, samples = anyio.run(
                session,
                manager.ws_url,
                args.count,
                args.warmup,
                args.profiler,
                args.timer,
                args.concurrency,
                backend=backend,
            )
            mode = (
                "sequential loop"
                if args.concurrency == 1
                else f"{args.concurrency} concurrent loops on pool_size={args.concurrency}"
            )
            print(f"\n## anytcm on {backend}: small {mode}, {args.count} requests\n")
            print(
                f"Client CPU per request: {plain:.3f} ms without the profiler, "
                f"{profiled:.3f} ms under the {what}"
                + (f" ({samples} samples)." if samples else ".")
            )
            report(backend, table, args.count, args.top, args.profiler == "sample")


if __name__ == "__main__":
    main()
