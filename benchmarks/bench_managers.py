"""Several managers (contract §14): throughput over 1, 2 and 3, failover, and a rolling restart.

Run: `python benchmarks/bench_managers.py [--quick] [--results FILE.json]`. Every manager is a
reference manager process with 2 inference workers; every request runs the `slow` model for
`DELAY_MS` milliseconds, so a manager serves at most 2 / DELAY_MS requests a second and the
figures measure the managers, not the client:

* **throughput**: requests per second with 1, 2 and 3 managers, the client keeping 6 requests
  in flight per manager (pool_size 6 x N); the target is >= 0.9 x N times one manager's.
* **failover**: three managers under that load, one SIGKILLed: the time from the kill to the
  first request started after it that succeeds, the longest a request in flight at the kill
  took, failures, and p99 latency from 1 s before to 3 s after.
* **rolling restart**: three managers restarted one by one (SIGTERM, drain, start) under load:
  requests lost (the target is 0), p99 latency during the roll, its duration.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import numpy as np

import anytcm
from anytcm.testing import ReferenceCluster

DELAY_MS = 20
PER_MANAGER = 6  # requests in flight per manager (and connections)
SERVER_ARGS = ["--workers", "inference=2"]
TARGET = anytcm.Target("127.0.0.1", "ref-0")
INPUTS = {"INPUT0": np.ones(4, dtype=np.float32), "DELAY_MS": np.array([DELAY_MS], np.int32)}


class Load:
    """Requests kept in flight, each recorded as (start, end, ok) on the monotonic clock."""

    def __init__(self) -> None:
        self.records: list[tuple[float, float, bool]] = []
        self.stop = anyio.Event()

    async def worker(self, client: anytcm.AsyncClient) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                await client.infer("slow", INPUTS, target=TARGET, timeout=20)
                ok = True
            except anytcm.TcmError:
                ok = False
            self.records.append((started, time.monotonic(), ok))

    def between(self, start: float, end: float) -> list[tuple[float, float, bool]]:
        return [r for r in self.records if start <= r[1] <= end]


def p99_ms(records: list[tuple[float, float, bool]]) -> float:
    latencies = sorted(end - start for start, end, _ in records)
    if not latencies:
        return float("nan")
    return 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]


@asynccontextmanager
async def under_load(urls: list[str]) -> AsyncIterator[Load]:
    """A client of `urls` keeping PER_MANAGER requests in flight per manager until the block
    ends; the load's records are complete once it has."""
    load = Load()
    async with (
        anytcm.connect(urls, pool_size=PER_MANAGER * len(urls)) as client,
        anyio.create_task_group() as tg,
    ):
        for _ in range(PER_MANAGER * len(urls)):
            tg.start_soon(load.worker, client)
        try:
            yield load
        finally:
            load.stop.set()


async def run_load(urls: list[str], seconds: float) -> float:
    """Requests per second served over `seconds`, after a short warm-up."""
    async with under_load(urls) as load:
        await anyio.sleep(0.5)
        start = time.monotonic()
        await anyio.sleep(seconds)
        end = time.monotonic()
    done = [r for r in load.between(start, end) if r[2]]
    return len(done) / (end - start)


async def throughput(seconds: float, repeat: int) -> list[dict[str, Any]]:
    rows = []
    with ReferenceCluster(3, extra_args=SERVER_ARGS) as cluster:
        for n in (1, 2, 3):
            rates = [await run_load(cluster.urls[:n], seconds) for _ in range(repeat)]
            rows.append({"managers": n, "req_s": statistics.median(rates), "runs": rates})
    one = rows[0]["req_s"]
    for row in rows:
        row["ratio"] = row["req_s"] / (one * row["managers"])
    return rows


async def failover() -> dict[str, Any]:
    with ReferenceCluster(3, extra_args=SERVER_ARGS) as cluster:
        async with under_load(cluster.urls) as load:
            await anyio.sleep(2.0)
            killed_at = time.monotonic()
            await anyio.to_thread.run_sync(cluster[1].kill)
            await anyio.sleep(3.0)
    after = sorted((r for r in load.records if r[0] >= killed_at and r[2]), key=lambda r: r[1])
    in_flight = [r for r in load.records if r[0] < killed_at < r[1]]
    return {
        "first_ok_after_kill_ms": 1000 * (after[0][1] - killed_at) if after else None,
        "longest_in_flight_ms": 1000 * max((r[1] - killed_at for r in in_flight), default=0.0),
        "failures": sum(1 for r in load.records if not r[2]),
        "requests": len(load.records),
        "p99_ms_around": p99_ms(load.between(killed_at - 1.0, killed_at + 3.0)),
        "p99_ms_steady": p99_ms(load.between(killed_at - 1.5, killed_at)),
    }


async def rolling_restart() -> dict[str, Any]:
    with ReferenceCluster(3, extra_args=[*SERVER_ARGS, "--drain-seconds", "1"]) as cluster:
        async with under_load(cluster.urls) as load:
            await anyio.sleep(1.0)
            began = time.monotonic()
            await anyio.to_thread.run_sync(cluster.rolling_restart)
            ended = time.monotonic()
            await anyio.sleep(0.5)
    return {
        "lost": sum(1 for r in load.records if not r[2]),
        "requests": len(load.records),
        "roll_s": ended - began,
        "p99_ms_roll": p99_ms(load.between(began, ended)),
        "p99_ms_steady": p99_ms(load.between(began - 1.0, began)),
    }


async def main(quick: bool) -> dict[str, Any]:
    return {
        "meta": {
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "delay_ms": DELAY_MS,
            "per_manager": PER_MANAGER,
            "server_args": SERVER_ARGS,
            "quick": quick,
        },
        "throughput": await throughput(2.0 if quick else 4.0, 1 if quick else 3),
        "failover": await failover(),
        "rolling_restart": await rolling_restart(),
    }


def render(data: dict[str, Any]) -> str:
    meta = data["meta"]
    out = [
        (
            f"{meta['date']} · `slow` model, {meta['delay_ms']} ms per request, reference managers "
            f"`{' '.join(meta['server_args'])}` (2 requests at a time each) · "
            f"{meta['per_manager']} requests in flight per manager"
            f"{' · quick' if meta['quick'] else ''}.\n"
        ),
        "| managers | req/s | / (N x one manager) | target |",
        "|---:|---:|---:|---|",
    ]
    for row in data["throughput"]:
        out.append(
            f"| {row['managers']} | {row['req_s']:.0f} | {row['ratio']:.2f} | >= 0.90 "
            f"{'met' if row['ratio'] >= 0.9 else '**missed**'} |"
        )
    f = data["failover"]
    first = f["first_ok_after_kill_ms"]
    out += [
        "",
        "| failover: one of three SIGKILLed | |",
        "|---|---:|",
        (
            f"| first request started after the kill to succeed (target < 1 s) | "
            f"{'-' if first is None else f'{first:.0f} ms'} |"
        ),
        f"| longest a request in flight at the kill took | {f['longest_in_flight_ms']:.0f} ms |",
        f"| failed requests | {f['failures']} of {f['requests']} |",
        (
            f"| p99 latency, 1 s before to 3 s after / steady | {f['p99_ms_around']:.0f} ms / "
            f"{f['p99_ms_steady']:.0f} ms |"
        ),
    ]
    r = data["rolling_restart"]
    out += [
        "",
        "| rolling restart of three (SIGTERM, drain, start) | |",
        "|---|---:|",
        f"| requests lost (target 0) | {r['lost']} of {r['requests']} |",
        (
            f"| p99 latency during the roll / steady | {r['p99_ms_roll']:.0f} ms / "
            f"{r['p99_ms_steady']:.0f} ms |"
        ),
        f"| the roll took | {r['roll_s']:.1f} s |",
    ]
    return "\n".join(out) + "\n"


def cli() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="shorter runs, one repeat")
    parser.add_argument("--results", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()
    data = anyio.run(main, args.quick)
    if args.results:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(data, indent=2))
    sys.stdout.write(render(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(cli())
