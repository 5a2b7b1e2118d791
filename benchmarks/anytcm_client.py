"""anytcm as a benchmark client: `anytcm.connect(url, pool_size=N)`, N tasks with one inference
in flight each, outputs decoded with `InferResult.as_numpy` and the workload's output dtype.

Run by `run_client_bench.py` on `--backend asyncio` and `--backend trio`; `--carrier` picks how
inputs travel (default "auto": json when the frame fits, else shm). Standalone:
`python benchmarks/anytcm_client.py --url ws://127.0.0.1:8000/ws --connections 8 --backend trio`.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import anyio
from _bench_common import (
    CONTAINER_ID,
    OUTPUT,
    VM_IP,
    RequestFn,
    Timer,
    Workload,
    check_output,
    emit,
    emit_error,
    parse_args,
    workload,
)

import anytcm

TARGET = anytcm.Target(VM_IP, CONTAINER_ID)


def make_request(client: anytcm.AsyncClient, work: Workload, carrier: str) -> RequestFn:
    model, name, x = work.model, work.input_name, work.x
    dtypes = {OUTPUT: work.output_datatype}

    async def request() -> Any:
        result = await client.infer(
            model, {name: x}, target=TARGET, output_dtypes=dtypes, carrier=carrier
        )
        return result.as_numpy(OUTPUT)

    return request


async def drive(args: argparse.Namespace, fn: RequestFn, work: Workload) -> list[dict[str, Any]]:
    """`args.connections` tasks share one client (its pool), each with one request in flight."""
    check_output(work, await fn())
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
    label = f"anytcm[{args.backend}]" + ("" if args.carrier == "auto" else f" {args.carrier}")
    work = workload(args.scenario, args.size)
    try:
        async with anytcm.connect(args.url, pool_size=args.connections) as client:
            # connect() returns with the first connection up; wait for the whole pool.
            with anyio.fail_after(30):
                while client.stats["open_connections"] < args.connections:  # noqa: ASYNC110 (no event for this)
                    await anyio.sleep(0.01)
            runs = await drive(args, make_request(client, work, args.carrier), work)
            stats = client.stats
        emit(args, label, runs, anytcm_stats=stats)
    except Exception as exc:  # noqa: BLE001 - reported, not raised: the orchestrator shows it in the table
        emit_error(args, label, exc)


if __name__ == "__main__":
    arguments = parse_args(__doc__.splitlines()[0] if __doc__ else None)
    anyio.run(main, arguments, backend=arguments.backend)
