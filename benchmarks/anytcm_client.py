"""anytcm as a benchmark client: `anytcm.connect(url, pool_size=N)`, N tasks with one inference
in flight each, outputs decoded with `InferResult.as_numpy` and the workload's output dtype.

Run by `run_client_bench.py` on `--backend asyncio` and `--backend trio`; `--carrier` picks how
inputs travel (default "auto": json when the frame fits, else shm). Standalone:
`python benchmarks/anytcm_client.py --url ws://127.0.0.1:8000/ws --connections 8 --backend trio`.
"""

from __future__ import annotations

import argparse
from typing import Any

import anyio
from _bench_common import (
    CONTAINER_ID,
    OUTPUT,
    VM_IP,
    Jobs,
    RequestFn,
    Workload,
    drive,
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


async def _anyio_gather(jobs: Jobs) -> None:
    """Run the workers in a task group: the same timed loop on asyncio and on trio."""
    async with anyio.create_task_group() as tg:
        for job in jobs:
            tg.start_soon(job)


async def main(args: argparse.Namespace) -> None:
    label = f"anytcm[{args.backend}]" + ("" if args.carrier == "auto" else f" {args.carrier}")
    work = workload(args.scenario, args.size)
    try:
        async with anytcm.connect(args.url, pool_size=args.connections) as client:
            # connect() returns with the first connection up; wait for the whole pool.
            with anyio.fail_after(30):
                while client.stats["open_connections"] < args.connections:  # noqa: ASYNC110 (no event for this)
                    await anyio.sleep(0.01)
            fn = make_request(client, work, args.carrier)
            # `connections` tasks share one client (its pool), each with one request in flight.
            runs = await drive(args, [fn] * args.connections, work, _anyio_gather)
            stats = client.stats
        emit(args, label, runs, anytcm_stats=stats)
    except Exception as exc:  # noqa: BLE001 - reported, not raised: the orchestrator shows it in the table
        emit_error(args, label, exc)


if __name__ == "__main__":
    arguments = parse_args(__doc__.splitlines()[0] if __doc__ else None)
    anyio.run(main, arguments, backend=arguments.backend)
