"""A small closed-loop load generator: N calls, C at a time, and what their latencies were.

Closed loop (each of C workers sends its next call when the previous one answered) because
that is how a client with a pool of C connections behaves; the figures then say what one
such client gets, not what an open-loop firehose would. Percentiles come from numpy.
Failures the client reports (`TcmError`) are counted by class rather than ending the run: under
load, a share of backpressure refusals is itself a result.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import numpy as np

from ..errors import TcmError

PERCENTILES = (50, 95, 99)


@dataclass
class LoadReport:
    """What a load run measured; latencies (seconds) are those of successful calls."""

    requests: int
    concurrency: int
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    first_error: str | None = None

    @property
    def succeeded(self) -> int:
        return len(self.latencies)

    @property
    def failed(self) -> int:
        return sum(self.errors.values())

    @property
    def requests_per_second(self) -> float:
        """Completed calls (successful or not) per second of wall time."""
        done = self.succeeded + self.failed
        return done / self.seconds if self.seconds > 0 else 0.0

    def latency_percentiles(self) -> dict[str, float]:
        """p50/p95/p99 (and mean, max) in seconds; empty when no call succeeded."""
        if not self.latencies:
            return {}
        values = np.asarray(self.latencies, dtype=np.float64)
        points = np.percentile(values, PERCENTILES)
        summary = {f"p{p}": float(v) for p, v in zip(PERCENTILES, points, strict=True)}
        summary["mean"] = float(values.mean())
        summary["max"] = float(values.max())
        return summary

    def as_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "concurrency": self.concurrency,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "errors": dict(self.errors),
            "first_error": self.first_error,
            "seconds": self.seconds,
            "requests_per_second": self.requests_per_second,
            "latency_ms": {k: v * 1000 for k, v in self.latency_percentiles().items()},
        }


async def run_load(
    call: Callable[[], Awaitable[object]],
    *,
    requests: int,
    concurrency: int,
    advance: Callable[[], None],
    report: LoadReport | None = None,
) -> LoadReport:
    """Make `requests` calls with `concurrency` workers; `advance()` after each one ends.

    Pass `report` to keep what was measured when the run is cancelled (Ctrl-C): it is filled
    as calls end, and its `seconds` is set however the run ends.
    """
    if requests < 1 or concurrency < 1:
        raise ValueError("requests and concurrency must be at least 1")
    if report is None:
        report = LoadReport(requests, min(concurrency, requests))
    left = requests

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1  # no await between the test and the decrement: no lock needed
            started = time.perf_counter()
            try:
                await call()
            except TcmError as exc:
                report.errors[type(exc).__name__] += 1
                if report.first_error is None:
                    report.first_error = f"{type(exc).__name__}: {exc}"
            else:
                report.latencies.append(time.perf_counter() - started)
            advance()

    started = time.perf_counter()
    try:
        async with anyio.create_task_group() as tg:
            for _ in range(report.concurrency):
                tg.start_soon(worker)
    finally:
        report.seconds = time.perf_counter() - started
    return report
