"""Prometheus metrics of the reference manager, named after the real ones (utils/metrics.py)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class ServerMetrics:
    """One registry per server instance, so two servers in one process never share counters."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.connections = Gauge(
            "tcm_ws_connections_active", "Live WebSocket connections", registry=r
        )
        self.messages = Counter("tcm_ws_messages_received", "Frames received", ["type"], registry=r)
        self.auth_failures = Counter("tcm_auth_failures", "Failed authentications", registry=r)
        self.rate_limit_violations = Counter(
            "tcm_rate_limit_violations", "Rate-limit closes", ["scope"], registry=r
        )
        self.jobs_rejected = Counter(
            "tcm_jobs_rejected", "Jobs dropped with a NACK", ["type", "reason"], registry=r
        )
        self.queue_depth = Gauge("tcm_queue_depth", "Queued jobs", ["type"], registry=r)
        self.executor_pending = Gauge("tcm_executor_pending", "Running jobs", ["type"], registry=r)
        self.inference_duration = Histogram(
            "tcm_inference_duration_seconds", "Inference job duration", registry=r
        )
        self.inference_errors = Counter(
            "tcm_inference_errors", "FAILED inference replies", ["code"], registry=r
        )
        self.management_actions = Counter(
            "tcm_management_actions", "Management actions run", ["action"], registry=r
        )
        self.inference_jobs = Counter("tcm_inference_jobs", "Inference jobs started", registry=r)
        self.responses_dropped = Counter(
            "tcm_ws_responses_dropped",
            "Responses with no live connection for their uuid",
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
