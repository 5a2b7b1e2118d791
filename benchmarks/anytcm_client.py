"""anytcm as a benchmark client: `anytcm.connect(url, pool_size=N)`, N tasks with one inference
in flight each, outputs decoded with `InferResult.as_numpy` and an FP32 dtype.

Run by `run_client_bench.py` on `--backend asyncio` and `--backend trio`; standalone:
`python benchmarks/anytcm_client.py --url ws://127.0.0.1:8000/ws --connections 8 --backend trio`.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import anyio
import numpy as np
from _bench_common import (
    CONTAINER_ID,
    LARGE_MODEL,
    LARGE_SIZE,
    OUTPUT,
    SMALL_MODEL,
    VM_IP,
    RequestFn,
    Timer,
    check_output,
    emit,
    emit_error,
    parse_args,
    small_input,
)

import anytcm

TARGET = anytcm.Target(VM_IP, CONTAINER_ID)
DTYPES = {OUTPUT: "FP32"}


def make_request(client: anytcm.AsyncClient, scenario: str, x: Any) -> RequestFn:
    if scenario == "small":

        async def request() -> Any:
            result = await client.infer(
                SMALL_MODEL, {"INPUT0": x}, target=TARGET, output_dtypes=DTYPES
            )
            return result.as_numpy(OUTPUT)

    else:

        async def request() -> Any:
            result = await client.infer(
                LARGE_MODEL, {"SIZE": x}, target=TARGET, output_dtypes=DTYPES
            )
            return result.as_numpy(OUTPUT)

    return request


async def drive(args: argparse.Namespace, fn: RequestFn, x: Any) -> list[dict[str, Any]]:
    """`args.connections` tasks share one client (its pool), each with one request in flight."""
    check_output(args.scenario, x, await fn())
    timer = Timer(args.server_pid)

    async def run(count: int, record: bool) -> None:
        remaining = count

        async def worker() -> None:
            nonlocal remaining
            lat = timer.latencies
            clock = time.perf_counter
            while remaining > 0:
                remaining -= 1
                t0 = clock()
                await fn()
                if record:
                    lat.append(clock() - t0)

        async with anyio.create_task_group() as tg:
            for _ in range(args.connections):
                tg.start_soon(worker)

    await run(max(args.warmup, args.connections), record=False)
    runs = []
    for _ in range(args.repeat):
        timer.start()
        await run(args.count, record=True)
        runs.append(timer.stop())
    return runs


async def main(args: argparse.Namespace) -> None:
    label = f"anytcm[{args.backend}]"
    x = small_input() if args.scenario == "small" else np.array([LARGE_SIZE], dtype=np.int64)
    try:
        async with anytcm.connect(args.url, pool_size=args.connections) as client:
            # connect() returns with the first connection up; wait for the whole pool.
            with anyio.fail_after(30):
                while client.stats["open_connections"] < args.connections:  # noqa: ASYNC110 (no event for this)
                    await anyio.sleep(0.01)
            runs = await drive(args, make_request(client, args.scenario, x), x)
            stats = client.stats
        emit(args, label, runs, anytcm_stats=stats)
    except Exception as exc:  # noqa: BLE001 - reported, not raised: the orchestrator shows it in the table
        emit_error(args, label, exc)


if __name__ == "__main__":
    arguments = parse_args(__doc__.splitlines()[0] if __doc__ else None)
    anyio.run(main, arguments, backend=arguments.backend)
