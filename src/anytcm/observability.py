"""What a client did: counters, latency histograms, log records and (optionally) trace spans.

Every public call (`infer`, streams, pipelines, info, management) is one *request*, observed
from the caller's side: its latency includes waiting for a free connection and any retries,
because that is what the application feels. Three outlets, all fed from one place:

* **Counters and histograms** (`AsyncClient.metrics`): always on, a few hundred nanoseconds
  per request, no dependency. Histograms have fixed log-spaced buckets, so they can be summed
  across clients and read as percentiles without keeping every sample.
* **logging** (logger `anytcm.client`): one DEBUG record per request with structured fields
  in `extra` (`kind`, `model`, `outcome`, `latency_ms`), so a JSON log formatter gets them as
  keys. Reconnects and retries are logged at INFO by the pool and the client.
* **OpenTelemetry** (`pip install "anytcm[otel]"`): a span per request, named
  `anytcm <kind>`, with the model and outcome as attributes and the error recorded. Only
  `opentelemetry-api` is needed; spans go wherever the application's SDK sends them (nowhere
  without one). Turned off with `connect(..., tracing=False)`.
"""

from __future__ import annotations

import bisect
import logging
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Literal

__all__ = ("ClientMetrics", "LatencyHistogram", "RequestKind")

logger = logging.getLogger("anytcm.client")

RequestKind = Literal["infer", "stream", "pipeline", "info", "management"]

# Upper bounds in seconds: 0.1 ms to ~105 s, four buckets per decade (x1.78), then +inf.
_BOUNDS: Final = tuple(1e-4 * 10 ** (i / 4) for i in range(25))


@dataclass
class LatencyHistogram:
    """Request latencies in fixed buckets (upper bounds in `bounds`, seconds; last is +inf)."""

    bounds: tuple[float, ...] = _BOUNDS
    counts: list[int] = field(default_factory=lambda: [0] * (len(_BOUNDS) + 1))
    count: int = 0
    total: float = 0.0
    max: float = 0.0

    def record(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.count += 1
        self.total += seconds
        self.max = max(self.max, seconds)

    def percentile(self, q: float) -> float:
        """An upper estimate of the q-th percentile (0-100), in seconds; NaN when empty.

        The answer is the upper bound of the bucket holding that rank (the largest latency seen
        for the last bucket), so it is never lower than the true value and at most one bucket
        (x1.78) above it.
        """
        if not 0 <= q <= 100:
            raise ValueError(f"a percentile is between 0 and 100, not {q}")
        if self.count == 0:
            return math.nan
        rank = max(1, math.ceil(self.count * q / 100))
        seen = 0
        for index, n in enumerate(self.counts):
            seen += n
            if seen >= rank:
                return min(self.bounds[index], self.max) if index < len(self.bounds) else self.max
        return self.max  # pragma: no cover - the counts always add up to `count`

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else math.nan


@dataclass
class ClientMetrics:
    """Per-client counters, read with `AsyncClient.metrics` (a live object: copy to keep).

    `requests` and `failures` are keyed by request kind; `errors` by exception class name
    (e.g. `RequestTimeout`, `Cancelled` for a call cancelled by its caller); `latency` has one
    histogram per kind, successes and failures alike. `retries` counts re-sent attempts,
    `reconnects` connections replaced after a loss (both also in `AsyncClient.stats`).
    """

    requests: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    latency: dict[str, LatencyHistogram] = field(default_factory=dict)
    retries: int = 0
    reconnects: int = 0
    in_flight: int = 0


class Recorder:
    """Feeds the three outlets; one per client."""

    def __init__(self, tracing: bool | None) -> None:
        self.metrics = ClientMetrics()
        self._tracer: Any = _tracer() if tracing is not False else None
        if tracing and self._tracer is None:
            raise ImportError(
                'tracing=True needs OpenTelemetry: pip install "anytcm[otel]" '
                "(or opentelemetry-api)"
            )

    def begin(self, kind: RequestKind, model: str | None) -> Observation:
        return Observation(self, kind, model)


class Observation:
    """One request from start to end: `with recorder.begin(...)`, or `end(error)` by hand."""

    __slots__ = ("_ended", "_kind", "_model", "_recorder", "_span", "_start")

    def __init__(self, recorder: Recorder, kind: RequestKind, model: str | None) -> None:
        self._recorder = recorder
        self._kind = kind
        self._model = model
        self._ended = False
        recorder.metrics.in_flight += 1
        tracer = recorder._tracer
        self._span: Any = None
        if tracer is not None:
            attributes: dict[str, str] = {"anytcm.request.kind": kind}
            if model is not None:
                attributes["anytcm.model"] = model
            self._span = tracer.start_span(f"anytcm {kind}", attributes=attributes)
        self._start = time.perf_counter()

    def __enter__(self) -> Observation:  # noqa: PYI034 - not meant to be subclassed
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.end(exc)

    def end(self, error: BaseException | None = None) -> None:
        """Record the outcome once (later calls do nothing); never raises, never swallows."""
        if self._ended:
            return
        self._ended = True
        elapsed = time.perf_counter() - self._start
        metrics = self._recorder.metrics
        kind = self._kind
        metrics.in_flight -= 1
        metrics.requests[kind] += 1
        histogram = metrics.latency.get(kind)
        if histogram is None:
            histogram = metrics.latency[kind] = LatencyHistogram()
        histogram.record(elapsed)
        outcome = "ok"
        if error is not None:
            outcome = _error_name(error)
            metrics.failures[kind] += 1
            metrics.errors[outcome] += 1
        if self._span is not None:
            _end_span(self._span, outcome, error)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "%s %s: %s in %.3f ms",
                kind,
                self._model or "",
                outcome,
                elapsed * 1e3,
                extra={
                    "kind": kind,
                    "model": self._model,
                    "outcome": outcome,
                    "latency_ms": elapsed * 1e3,
                },
            )


def _error_name(error: BaseException) -> str:
    name = type(error).__name__
    # asyncio's CancelledError and trio's Cancelled are the same event for our counters.
    return "Cancelled" if name in ("CancelledError", "Cancelled") else name


def _tracer() -> Any:
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    from . import __version__

    return trace.get_tracer("anytcm", __version__)


def _end_span(span: Any, outcome: str, error: BaseException | None) -> None:
    span.set_attribute("anytcm.outcome", outcome)
    if error is not None and outcome != "Cancelled":
        # Imported here, on failures only: an import statement costs ~1.5 us on every call
        # even when the module is loaded, and most spans end without an error.
        from opentelemetry.trace import Status, StatusCode

        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, str(error)[:200]))
    span.end()
