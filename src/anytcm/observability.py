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
* **OpenTelemetry** (`pip install "anytcm[otel]"`): a CLIENT span per request, named
  `anytcm <kind>`, with the model, outcome and manager (`server.address`, `server.port`) as
  attributes and the error recorded; turned off with `connect(..., tracing=False)`. And the
  counters and latency histograms again as metric instruments of the meter `anytcm`, on
  whenever the API is installed (drop them with an SDK View if unwanted). Only
  `opentelemetry-api` is needed; spans and metrics go wherever the application's SDK sends
  them (nowhere without one).
"""

from __future__ import annotations

import bisect
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Literal, NamedTuple, Protocol
from urllib.parse import urlsplit

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


class ManagerCounts(Protocol):
    """What the recorder reads of each manager (`anytcm.ManagerStatus` is one)."""

    @property
    def url(self) -> str: ...
    @property
    def requests(self) -> int: ...
    @property
    def failures(self) -> int: ...
    @property
    def connects(self) -> int: ...


class Recorder:
    """Feeds the three outlets; one per client.

    `url` is the manager's (for the `server.address`/`server.port` attributes); `totals`
    returns the client's (retries, reconnects) so far, read when a request ends and added to
    the OpenTelemetry counters as they grow. `managers` returns each manager's counters, added
    the same way to per-manager counters labelled with that manager's address.
    """

    def __init__(
        self,
        tracing: bool | None,
        *,
        url: str | None = None,
        totals: Callable[[], tuple[int, int]] | None = None,
        managers: Callable[[], Iterable[ManagerCounts]] | None = None,
    ) -> None:
        self.metrics = ClientMetrics()
        self._tracer: Any = _tracer() if tracing is not False else None
        if tracing and self._tracer is None:
            raise ImportError(
                'tracing=True needs OpenTelemetry: pip install "anytcm[otel]" '
                "(or opentelemetry-api)"
            )
        self._server: dict[str, str | int] = _server_attributes(url)
        self._span_kind: Any = None
        if self._tracer is not None:
            from opentelemetry.trace import SpanKind

            self._span_kind = SpanKind.CLIENT
        self._otel: _Instruments | None = _instruments()
        self._totals = totals
        self._managers = managers
        self._seen_managers: dict[str, tuple[int, int, int]] = {}
        self._manager_attributes: dict[str, dict[str, str | int]] = {}
        self._seen_retries = 0
        self._seen_reconnects = 0
        # Attribute dicts by (kind, model, outcome): built once, so recording does not build one.
        self._attributes: dict[tuple[str, str | None, str], dict[str, str | int]] = {}

    def begin(self, kind: RequestKind, model: str | None) -> Observation:
        return Observation(self, kind, model)

    def _export(self, kind: str, model: str | None, outcome: str, elapsed: float) -> None:
        """Record one ended request on the OpenTelemetry instruments (`_otel` is set).

        One measurement per successful request: with the SDK each costs ~10-20 us, mostly
        hashing the attributes, so the duration histogram's count doubles as the request count
        (as in OpenTelemetry's semantic conventions); failures add one to `failures` too.
        """
        otel = self._otel
        assert otel is not None
        key = (kind, model, outcome)
        attributes = self._attributes.get(key)
        if attributes is None:
            attributes = {"anytcm.request.kind": kind, **self._server}
            if model is not None:
                attributes["anytcm.model"] = model
            if outcome != "ok":
                attributes["error.type"] = outcome
            self._attributes[key] = attributes
        otel.duration.record(elapsed, attributes)
        if outcome != "ok":
            otel.failures.add(1, attributes)
        if self._totals is not None:
            retries, reconnects = self._totals()
            if retries != self._seen_retries:
                otel.retries.add(retries - self._seen_retries, self._server)
                self._seen_retries = retries
            if reconnects != self._seen_reconnects:
                otel.reconnects.add(reconnects - self._seen_reconnects, self._server)
                self._seen_reconnects = reconnects
        if self._managers is not None:
            self._export_managers(otel)

    def _export_managers(self, otel: _Instruments) -> None:
        """Each manager's requests, failures and connections since the last request ended."""
        assert self._managers is not None
        for manager in self._managers():
            counts = (manager.requests, manager.failures, manager.connects)
            seen = self._seen_managers.get(manager.url, (0, 0, 0))
            if counts == seen:
                continue
            attributes = self._manager_attributes.get(manager.url)
            if attributes is None:
                attributes = self._manager_attributes[manager.url] = _server_attributes(manager.url)
            for instrument, now, before in zip(
                (otel.manager_requests, otel.manager_failures, otel.manager_connects),
                counts,
                seen,
                strict=True,
            ):
                if now > before:  # a request never sent is taken back: counters only grow
                    instrument.add(now - before, attributes)
            self._seen_managers[manager.url] = (
                max(counts[0], seen[0]),
                max(counts[1], seen[1]),
                max(counts[2], seen[2]),
            )


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
            attributes: dict[str, str | int] = {"anytcm.request.kind": kind, **recorder._server}
            if model is not None:
                attributes["anytcm.model"] = model
            self._span = tracer.start_span(
                f"anytcm {kind}", kind=recorder._span_kind, attributes=attributes
            )
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
        if self._recorder._otel is not None:
            self._recorder._export(kind, self._model, outcome, elapsed)
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
    from ._version import __version__

    return trace.get_tracer("anytcm", __version__)


def _server_attributes(url: str | None) -> dict[str, str | int]:
    """`server.address` and `server.port` of a ws:// or wss:// URL (empty without one)."""
    if url is None:
        return {}
    parts = urlsplit(url)
    attributes: dict[str, str | int] = {}
    if parts.hostname:
        attributes["server.address"] = parts.hostname
    try:
        port = parts.port
    except ValueError:  # a malformed port: the transport reports it, not the recorder
        port = None
    if port is None:
        port = {"ws": 80, "http": 80, "wss": 443, "https": 443}.get(parts.scheme)
    if port is not None:
        attributes["server.port"] = port
    return attributes


class _Instruments(NamedTuple):
    failures: Any
    retries: Any
    reconnects: Any
    duration: Any
    manager_requests: Any
    manager_failures: Any
    manager_connects: Any


# The instruments of the current meter provider: (provider, instruments). Made once per
# provider rather than per client, so that many clients share them (the API's proxy provider,
# used until an SDK is installed, keeps every meter and instrument made from it).
_made: tuple[object, _Instruments] | None = None


def _instruments() -> _Instruments | None:
    """The `anytcm` meter's instruments, or None without `opentelemetry-api`."""
    global _made  # a one-entry cache
    try:
        from opentelemetry import metrics
    except ImportError:
        return None
    provider = metrics.get_meter_provider()
    if _made is not None and _made[0] is provider:
        return _made[1]
    from ._version import __version__

    meter = provider.get_meter("anytcm", __version__)
    try:
        duration = meter.create_histogram(
            "anytcm.client.operation.duration",
            unit="s",
            description="Duration of anytcm requests, as the caller waits for them",
            explicit_bucket_boundaries_advisory=_BOUNDS,
        )
    except TypeError:  # pragma: no cover - opentelemetry-api < 1.23: no bucket advice
        duration = meter.create_histogram(
            "anytcm.client.operation.duration",
            unit="s",
            description="Duration of anytcm requests, as the caller waits for them",
        )
    instruments = _Instruments(
        failures=meter.create_counter(
            "anytcm.client.failures", unit="{request}", description="Requests that failed"
        ),
        retries=meter.create_counter(
            "anytcm.client.retries", unit="{retry}", description="Attempts re-sent"
        ),
        reconnects=meter.create_counter(
            "anytcm.client.reconnects",
            unit="{connection}",
            description="Connections replaced after a loss",
        ),
        duration=duration,
        manager_requests=meter.create_counter(
            "anytcm.client.manager.requests",
            unit="{request}",
            description="Requests sent to each manager (server.address, server.port)",
        ),
        manager_failures=meter.create_counter(
            "anytcm.client.manager.failures",
            unit="{request}",
            description="Requests sent to each manager that failed",
        ),
        manager_connects=meter.create_counter(
            "anytcm.client.manager.connects",
            unit="{connection}",
            description="Connections opened to each manager",
        ),
    )
    _made = (provider, instruments)
    return instruments


def _end_span(span: Any, outcome: str, error: BaseException | None) -> None:
    span.set_attribute("anytcm.outcome", outcome)
    if error is not None and outcome != "Cancelled":
        # Imported here, on failures only: an import statement costs ~1.5 us on every call
        # even when the module is loaded, and most spans end without an error.
        from opentelemetry.trace import Status, StatusCode

        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, str(error)[:200]))
    span.end()
