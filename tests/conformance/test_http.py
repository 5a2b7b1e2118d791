"""Contract §1: the HTTP endpoints next to /ws."""

from __future__ import annotations

import time

import pytest

from ._client import Manager, http_get


def test_health_is_200_ok(http_url: str) -> None:
    """§1 HTTP: `GET /health` → always `200 {"status":"ok"}` while the process is up."""
    response = http_get(http_url, "/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_ready_200_body_shape(http_url: str) -> None:
    """§1 HTTP: `GET /ready` → 200 `{"status":"ready"}`, with a `triton` object of counts on the
    full entry point (`registered`, `healthy`, plus `healthy_http`/`healthy_grpc` once a server
    is registered)."""
    response = http_get(http_url, "/ready")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ready"
    if "triton" in body:
        triton = body["triton"]
        assert isinstance(triton["registered"], int)
        assert isinstance(triton["healthy"], int)
        if triton["registered"] > 0:
            assert {"healthy_http", "healthy_grpc"} <= set(triton)
            assert triton["healthy"] >= 1


@pytest.mark.reference_only
def test_ready_counts_the_registered_reference_target(manager: Manager) -> None:
    """§1 HTTP: with a registered server `/ready` reports
    `{"registered":N,"healthy":H,"healthy_http":h,"healthy_grpc":g}`; the reference starts with
    one registered target (`127.0.0.1`/`ref-0`)."""
    body = http_get(manager.http_url, "/ready").json()
    triton = body["triton"]
    assert triton["registered"] >= 1
    assert triton["healthy"] >= 1
    for key in ("healthy_http", "healthy_grpc"):
        assert isinstance(triton[key], int)


@pytest.mark.reference_only
def test_ready_503_body_when_probe_fails(manager: Manager) -> None:
    """§1 HTTP: if the readiness probe raises → `503 {"status":"not_ready",
    "reason":"readiness_probe_failed","detail":"internal_error","error_id":"<uuid4>"}`
    (reference fault `ready_503_seconds`); afterwards `/ready` is 200 again."""
    manager.set_faults(ready_503_seconds=0.6)
    try:
        response = http_get(manager.http_url, "/ready")
        assert response.status_code == 503
        body = response.json()
        error_id = body.pop("error_id")
        assert body == {
            "status": "not_ready",
            "reason": "readiness_probe_failed",
            "detail": "internal_error",
        }
        assert isinstance(error_id, str)
        assert len(error_id.replace("-", "")) == 32
        assert int(error_id.replace("-", ""), 16) >= 0
        # /health is unaffected by readiness.
        assert http_get(manager.http_url, "/health").status_code == 200
        deadline = time.monotonic() + 5
        while http_get(manager.http_url, "/ready").status_code != 200:
            assert time.monotonic() < deadline, "/ready stayed 503 after ready_503_seconds"
            time.sleep(0.1)
    finally:
        manager.set_faults(reset=1)


def test_metrics_is_prometheus_text_from_loopback(http_url: str) -> None:
    """§1 HTTP: `GET /metrics` → Prometheus text for a loopback/private peer, with `tcm_*`
    metric names."""
    response = http_get(http_url, "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    lines = response.text.splitlines()
    assert any(line.startswith("# TYPE tcm_") for line in lines), response.text[:500]
    assert any(line.startswith("# TYPE tcm_ws_") for line in lines), response.text[:500]
