"""Client observability: counters and latency histograms, log records, OpenTelemetry spans and
metrics.

Real requests against the reference manager; the spans are collected by the OpenTelemetry SDK's
in-memory exporter, installed once as the process's tracer provider; the metrics by an in-memory
metric reader, behind a meter provider installed for one test at a time.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import anyio
import numpy as np
import pytest
from opentelemetry import trace
from opentelemetry.metrics import _internal as metrics_api
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import anytcm
from _client_helpers import OPENSTACK, REF, f32, infer_double, slow_inputs, text
from anytcm.observability import LatencyHistogram, Recorder
from anytcm.retry import RetryPolicy
from anytcm.testing import ReferenceManager

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def spans() -> InMemorySpanExporter:
    """The in-memory exporter behind the global tracer provider (settable once per process)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    if trace.get_tracer_provider() is not provider:
        pytest.skip("another tracer provider was installed earlier in this process")
    return exporter


@pytest.fixture
def meter(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemoryMetricReader]:
    """A meter provider with an in-memory reader, the process's provider for this test only.

    `metrics.set_meter_provider` works once per process, so the API's global is patched (and
    restored by monkeypatch) instead; anytcm makes its instruments afresh for a new provider.
    """
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    monkeypatch.setattr(metrics_api, "_METER_PROVIDER", provider)
    yield reader
    provider.shutdown()


def points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    """The data points of the `anytcm` meter, by instrument name."""
    data = reader.get_metrics_data()
    found: dict[str, list[Any]] = {}
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            if scope.scope.name != "anytcm":
                continue
            assert scope.scope.version == anytcm.__version__
            for metric in scope.metrics:
                found[metric.name] = list(metric.data.data_points)
    return found


def server_of(url: str) -> dict[str, Any]:
    parts = urlsplit(url)
    return {"server.address": parts.hostname, "server.port": parts.port}


# -- the histogram on its own ------------------------------------------------------------------


def test_histogram_percentiles_bound_the_true_values() -> None:
    histogram = LatencyHistogram()
    samples = [0.0005 * (i + 1) for i in range(200)]  # 0.5 ms .. 100 ms
    for sample in samples:
        histogram.record(sample)
    assert histogram.count == 200
    assert histogram.max == samples[-1]
    assert math.isclose(histogram.mean, sum(samples) / 200)
    for q in (50, 90, 99, 100):
        true = samples[math.ceil(200 * q / 100) - 1]
        estimate = histogram.percentile(q)
        assert true <= estimate <= true * 1.79, (q, true, estimate)
    assert histogram.percentile(100) == samples[-1]


def test_histogram_edges() -> None:
    histogram = LatencyHistogram()
    assert math.isnan(histogram.percentile(50))
    assert math.isnan(histogram.mean)
    histogram.record(500.0)  # beyond the last bound: the +inf bucket, reported as the max
    assert histogram.counts[-1] == 1
    assert histogram.percentile(50) == 500.0
    with pytest.raises(ValueError, match="between 0 and 100"):
        histogram.percentile(101)


# -- counters from real requests ---------------------------------------------------------------


async def test_counters_and_histograms_follow_every_request_kind(manager: ReferenceManager) -> None:
    async with anytcm.connect(manager.ws_url, pool_size=2, tracing=False) as client:
        for i in range(3):
            await infer_double(client, f32(i, i + 1))
        with pytest.raises(anytcm.InferenceFailed):
            await client.infer("no-such-model", {"INPUT0": f32(1)}, target=REF)
        await client.info.queue_stats()
        await client.management.create_vm(openstack=OPENSTACK)
        async with client.infer_stream("stream", {"TEXT": text("a", "b")}, target=REF) as s:
            events = [event async for event in s]
        assert events[-1].status == "COMPLETED"
        async with client.infer_stream("stream", {"TEXT": text("a", "b", "c")}, target=REF) as s:
            await s.__anext__()  # START, then closed early
        metrics = client.metrics

    assert metrics.requests == {"infer": 4, "info": 1, "management": 1, "stream": 2}
    assert metrics.failures == {"infer": 1, "stream": 1}
    assert metrics.errors == {"InferenceFailed": 1, "StreamClosedEarly": 1}
    assert metrics.in_flight == 0
    infer = metrics.latency["infer"]
    assert infer.count == 4
    assert 0 < infer.percentile(50) <= infer.percentile(99) <= infer.max < 30
    assert metrics.latency["stream"].count == 2


async def test_a_cancelled_call_is_counted_and_still_cancelled(manager: ReferenceManager) -> None:
    async with anytcm.connect(manager.ws_url, pool_size=1, tracing=False) as client:
        with anyio.move_on_after(0.2) as scope:
            await client.infer("slow", slow_inputs(f32(1, 2), 2000), target=REF)
        assert scope.cancelled_caught  # the cancellation reached the caller, not swallowed
        metrics = client.metrics
        assert metrics.errors == {"Cancelled": 1}
        assert metrics.failures == {"infer": 1}
        assert metrics.in_flight == 0
        assert 0.15 < metrics.latency["infer"].max < 2.0


async def test_retries_and_reconnects_are_read_from_the_client(manager: ReferenceManager) -> None:
    async with anytcm.connect(manager.ws_url, pool_size=1, tracing=False) as client:
        await infer_double(client, f32(1))
        assert client.metrics.retries == client.stats["retries"] == 0
        assert client.metrics.reconnects == client.stats["reconnects"] == 0


# -- logging ------------------------------------------------------------------------------------


async def test_each_request_is_a_debug_record_with_fields(
    manager: ReferenceManager, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="anytcm.client")
    async with anytcm.connect(manager.ws_url, pool_size=1, tracing=False) as client:
        await infer_double(client, f32(1, 2))
        with pytest.raises(anytcm.InferenceFailed):
            await client.infer("no-such-model", {"INPUT0": f32(1)}, target=REF)
    records = [r for r in caplog.records if getattr(r, "kind", None) == "infer"]
    assert [r.__dict__["outcome"] for r in records] == ["ok", "InferenceFailed"]
    assert [r.__dict__["model"] for r in records] == ["double", "no-such-model"]
    assert all(r.levelno == logging.DEBUG and r.__dict__["latency_ms"] > 0 for r in records)


# -- OpenTelemetry ------------------------------------------------------------------------------


async def test_a_span_per_request(manager: ReferenceManager, spans: InMemorySpanExporter) -> None:
    spans.clear()
    async with anytcm.connect(manager.ws_url, pool_size=1) as client:
        await infer_double(client, f32(3))
        with pytest.raises(anytcm.InferenceFailed):
            await client.infer("no-such-model", {"INPUT0": f32(1)}, target=REF)
        await client.info.queue_stats()
    finished = spans.get_finished_spans()
    assert [s.name for s in finished] == ["anytcm infer", "anytcm infer", "anytcm info"]
    ok, failed, info = finished
    assert {s.kind for s in finished} == {SpanKind.CLIENT}
    server = server_of(manager.ws_url)
    for span in finished:
        assert span.attributes is not None
        assert {k: span.attributes[k] for k in server} == server
    assert ok.attributes is not None
    assert ok.attributes["anytcm.model"] == "double"
    assert ok.attributes["anytcm.outcome"] == "ok"
    assert ok.status.status_code is StatusCode.UNSET
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.attributes is not None
    assert failed.attributes["anytcm.outcome"] == "InferenceFailed"
    assert [e.name for e in failed.events] == ["exception"]
    assert info.attributes is not None
    assert info.attributes["anytcm.request.kind"] == "info"


async def test_tracing_false_makes_no_spans(
    manager: ReferenceManager, spans: InMemorySpanExporter
) -> None:
    spans.clear()
    async with anytcm.connect(manager.ws_url, pool_size=1, tracing=False) as client:
        result = await client.infer("double", {"INPUT0": np.ones(2, np.float32)}, target=REF)
        assert result.as_numpy("OUTPUT0").tolist() == [2.0, 2.0]
    assert spans.get_finished_spans() == ()


def test_server_attributes_come_from_the_url() -> None:
    assert Recorder(False, url="wss://tcm.example:9443/ws")._server == {
        "server.address": "tcm.example",
        "server.port": 9443,
    }
    assert Recorder(False, url="wss://tcm.example/ws")._server == {
        "server.address": "tcm.example",
        "server.port": 443,
    }
    assert Recorder(False, url="ws://[::1]/ws")._server == {
        "server.address": "::1",
        "server.port": 80,
    }
    assert Recorder(False)._server == {}


async def test_metrics_instruments_follow_real_requests(
    manager: ReferenceManager, meter: InMemoryMetricReader
) -> None:
    async with anytcm.connect(manager.ws_url, pool_size=2, tracing=False) as client:
        for i in range(3):
            await infer_double(client, f32(i))
        with pytest.raises(anytcm.InferenceFailed):
            await client.infer("no-such-model", {"INPUT0": f32(1)}, target=REF)
        await client.info.queue_stats()
    found = points(meter)
    server = server_of(manager.ws_url)

    duration = {
        (p.attributes["anytcm.request.kind"], p.attributes.get("anytcm.model")): p
        for p in found["anytcm.client.operation.duration"]
    }
    assert set(duration) == {("infer", "double"), ("infer", "no-such-model"), ("info", None)}
    ok = duration["infer", "double"]
    assert dict(ok.attributes) == {
        "anytcm.request.kind": "infer",
        "anytcm.model": "double",
        **server,
    }  # no error.type: it succeeded
    assert ok.count == 3
    assert 0 < ok.min <= ok.max < 30
    assert ok.explicit_bounds[0] == pytest.approx(1e-4)  # seconds, anytcm's own buckets
    assert duration["info", None].count == 1
    failed = duration["infer", "no-such-model"]
    assert failed.count == 1
    assert failed.attributes["error.type"] == "InferenceFailed"

    (failure,) = found["anytcm.client.failures"]
    assert failure.value == 1
    assert dict(failure.attributes) == dict(failed.attributes)
    assert "anytcm.client.retries" not in found  # nothing retried, nothing reconnected
    assert "anytcm.client.reconnects" not in found


async def test_retries_reach_the_retries_counter(
    manager: ReferenceManager, meter: InMemoryMetricReader
) -> None:
    manager.set_faults(**{"error.double": "TRITON_TIMEOUT:1"})
    try:
        policy = RetryPolicy(attempts=3, base=0.0, cap=0.0)
        async with anytcm.connect(manager.ws_url, pool_size=1, retry=policy) as client:
            await infer_double(client, f32(1, 2))
            assert client.stats["retries"] == 1
    finally:
        manager.reset_faults()
    (retries,) = points(meter)["anytcm.client.retries"]
    assert retries.value == 1
    assert dict(retries.attributes) == server_of(manager.ws_url)


def test_retries_and_reconnects_are_added_as_they_grow(meter: InMemoryMetricReader) -> None:
    totals = [0, 0]
    recorder = Recorder(False, url="ws://tcm:8000/ws", totals=lambda: (totals[0], totals[1]))
    recorder.begin("info", None).end()
    totals[:] = [2, 1]
    recorder.begin("info", None).end()
    recorder.begin("info", None).end()  # unchanged totals: nothing added
    totals[1] = 3
    recorder.begin("info", None).end()
    found = points(meter)
    assert [p.value for p in found["anytcm.client.retries"]] == [2]
    assert [p.value for p in found["anytcm.client.reconnects"]] == [3]
    assert found["anytcm.client.operation.duration"][0].count == 4


def test_without_an_sdk_the_instruments_are_no_ops() -> None:
    recorder = Recorder(False, url="ws://tcm:8000/ws", totals=lambda: (1, 1))
    assert recorder._otel is not None  # the API's proxy instruments: they record nowhere
    with recorder.begin("infer", "double"):
        pass
    assert recorder.metrics.requests == {"infer": 1}
