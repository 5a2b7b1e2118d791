"""`anytcm queue-stats`: the manager's queue statistics, once or as a load test.

One call shows what the manager is holding (users, queued jobs, busy executors). With
`--repeat N` the same call becomes a probe of the request path itself: queue_stats is answered
at once by the manager even under load, so its latency is the round trip of the connection,
authentication and routing, without any model behind it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from ._context import CliContext
from ._errors import EXIT_FAILURE, EXIT_OK, Interrupted, report
from ._load import LoadReport, run_load
from ._output import console, format_ms, print_json, print_table, progress_bar


@dataclass(frozen=True)
class LoadOptions:
    requests: int
    concurrency: int
    pool_size: int


def run_queue_stats(context: CliContext, load: LoadOptions | None) -> int:
    if load is None:
        return _once(context)
    return _load(context, load)


def _once(context: CliContext) -> int:
    async def ask() -> dict[str, int]:
        async with context.client() as client:
            stats = await client.info.queue_stats()
        values: dict[str, int] = msgspec.to_builtins(stats)
        return values

    values = context.run(ask)
    if context.json:
        print_json(values)
    else:
        print_table(
            f"queue stats of {context.url}:"
            if len(context.urls) == 1
            else f"queue stats of one of {context.where}:",
            [("stat", "left"), ("value", "right")],
            [(name, str(value)) for name, value in values.items()],
        )
    return EXIT_OK


def _load(context: CliContext, load: LoadOptions) -> int:
    out = None if context.json else console()  # no rich, no run: say so before the load
    partial = LoadReport(load.requests, min(load.concurrency, load.requests))

    async def hammer() -> LoadReport:
        async with context.client(pool_size=load.pool_size) as client:
            with progress_bar(load.requests, "queue_stats", enabled=not context.json) as advance:
                return await run_load(
                    client.info.queue_stats,
                    requests=load.requests,
                    concurrency=load.concurrency,
                    advance=advance,
                    report=partial,
                )

    try:
        result = context.run(hammer)
    except Interrupted:
        # What was measured before Ctrl-C / SIGTERM is still a result: show it, then exit 130/143.
        _print_report(context, load, partial, interrupted=True, out=out)
        raise
    _print_report(context, load, result, interrupted=False, out=out)
    if result.failed:
        report(f"{result.failed} of {result.requests} calls failed; first: {result.first_error}")
        return EXIT_FAILURE
    return EXIT_OK


def _print_report(
    context: CliContext, load: LoadOptions, result: LoadReport, *, interrupted: bool, out: Any
) -> None:
    done = result.succeeded + result.failed
    if context.json:
        print_json({**result.as_json(), "interrupted": interrupted, "completed": done})
    else:
        latency = result.latency_percentiles()
        rows = [
            (
                "requests",
                f"{result.requests} ({result.succeeded} ok, {result.failed} failed"
                + (f"; interrupted after {done})" if interrupted else ")"),
            ),
            ("concurrency", f"{result.concurrency} (pool of {load.pool_size} connections)"),
            ("wall time", f"{result.seconds:.2f} s"),
            ("throughput", f"{result.requests_per_second:,.0f} req/s"),
            *((name, format_ms(latency.get(name))) for name in ("p50", "p95", "p99", "max")),
        ]
        rows += [(f"errors: {name}", str(count)) for name, count in result.errors.items()]
        title = "interrupted: partial " if interrupted else ""
        print_table(
            f"{title}queue_stats load on {context.where}:",
            [("", "left"), ("", "right")],
            rows,
            out=out,
        )
