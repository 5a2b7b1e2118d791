"""Contract §6.1 (backpressure, rate limits) and §6.4 (payload budget), each on a reference manager
started with the relevant option."""

from __future__ import annotations

import time

import pytest
from websockets.exceptions import ConnectionClosed

from ._client import (
    REF_CONTAINER,
    REF_VM_IP,
    Client,
    Json,
    Spawn,
    close_code,
    completed_data,
    failed_object,
    inference_payload,
    mtensor,
    new_uuid,
    raw,
    session,
    shm_ref,
    shm_segment,
    slow_inputs,
)

pytestmark = pytest.mark.reference_only


def collect(client: Client, count: int, timeout: float) -> list[Json]:
    """Read `count` solicited frames."""
    return client.recv_n(count, timeout=timeout)


def test_queue_full_nack_keeps_socket_open(spawn: Spawn) -> None:
    """§6.1: per-uuid queue full → `{"type":"error","payload":{"code":"BACKPRESSURE_QUEUE_FULL",
    "message":…,"dropped_type":"inference"}}`; the socket stays open and every other request
    completes."""
    manager = spawn("--queue-limit", "inference=2", "--workers", "inference=1")
    burst = 10
    with session(manager.ws_url) as client:
        for i in range(burst):
            client.infer("slow", slow_inputs(60, [float(i)]))
        frames = collect(client, burst, timeout=10)
        nacks = [f for f in frames if f["type"] == "error"]
        done = [f for f in frames if f["type"] == "inference"]
        assert nacks, "no BACKPRESSURE_QUEUE_FULL in a burst of 10 against queue-limit 2"
        for nack in nacks:
            assert set(nack) == {"type", "payload"}
            assert nack["payload"]["code"] == "BACKPRESSURE_QUEUE_FULL"
            assert nack["payload"]["dropped_type"] == "inference"
            assert isinstance(nack["payload"]["message"], str)
        assert len(nacks) + len(done) == burst
        assert all(f["payload"]["status"] == "COMPLETED" for f in done)
        client.assert_silent(0.3)
        assert client.is_open()


def test_executor_full_nack(spawn: Spawn) -> None:
    """§6.1: thread-pool backlog full (running+queued) → `BACKPRESSURE_EXECUTOR_FULL` with
    `dropped_type`; the socket stays open."""
    manager = spawn("--executor-backlog", "inference=1")
    per_client = 4
    with session(manager.ws_url) as a, session(manager.ws_url) as b:
        for i in range(per_client):
            a.infer("slow", slow_inputs(300, [float(i)]))
            b.infer("slow", slow_inputs(300, [float(i)]))
        frames = collect(a, per_client, timeout=10) + collect(b, per_client, timeout=10)
        nacks = [f for f in frames if f["type"] == "error"]
        assert nacks, "no BACKPRESSURE_EXECUTOR_FULL with executor backlog 1"
        for nack in nacks:
            assert nack["payload"]["code"] == "BACKPRESSURE_EXECUTOR_FULL"
            assert nack["payload"]["dropped_type"] == "inference"
            assert isinstance(nack["payload"]["message"], str)
        assert any(f["type"] == "inference" for f in frames)
        assert a.is_open()
        assert b.is_open()


def test_rate_limit_per_client_closes_1008(spawn: Spawn) -> None:
    """§6.1: `Rate limit exceeded for this client (messages per second)` + close 1008."""
    manager = spawn("--rate-limit-per-client", "5")
    with session(manager.ws_url) as client:
        for _ in range(20):
            try:
                client.send("info", {"action": "queue_stats"})
            except ConnectionClosed:
                break
        frames, code = client.frames_until_close()
        errors = [f["payload"] for f in frames if f["type"] == "error"]
        assert errors == [{"message": "Rate limit exceeded for this client (messages per second)"}]
        assert code == 1008


def test_rate_limit_is_per_uuid(spawn: Spawn) -> None:
    """§6.1/§3.4: the message-rate window is per uuid: a client sending slowly is unaffected."""
    manager = spawn("--rate-limit-per-client", "5")
    with session(manager.ws_url) as client:
        for _ in range(3):
            assert client.is_open()
            time.sleep(0.25)


def test_auth_failures_per_minute_across_reconnects(spawn: Spawn) -> None:
    """§3.2: failed auths are counted per uuid over 60 s across reconnects; beyond the limit the
    reply is `Too many failed auth attempts for this client` + 1008 (even with the right token);
    another uuid is unaffected."""
    manager = spawn("--auth-failures-per-minute", "2", token="right")
    uid = new_uuid()
    messages = []
    for _ in range(4):
        with raw(manager.ws_url, uid) as client:
            client.send("auth", {"token": "wrong"})
            frame = client.recv_raw()
            messages.append(frame["payload"]["message"])
            assert close_code(client.expect_close()) == 1008
    assert messages[0].startswith("Invalid token: ")
    assert "Too many failed auth attempts for this client" in messages
    first_too_many = messages.index("Too many failed auth attempts for this client")
    assert first_too_many >= 2
    assert all(
        m == "Too many failed auth attempts for this client" for m in messages[first_too_many:]
    )
    with raw(manager.ws_url, uid) as client:
        client.send("auth", {"token": "right"})
        client.expect_error_and_close("Too many failed auth attempts for this client", 1008)
    with session(manager.ws_url, token="right") as other:
        assert other.is_open()


@pytest.fixture(scope="module")
def tenant_url(spawn: Spawn) -> str:
    return spawn("--tenant-rate-limit", "3").ws_url


def test_tenant_limit_exempts_queue_stats(tenant_url: str) -> None:
    """§6.1: the queue_stats fast path is exempt from the tenant token bucket."""
    with session(tenant_url) as client:
        for i in range(15):
            client.send("info", {"action": "queue_stats", "job_id": i})
        frames = client.recv_n(15)
        assert [f["payload"]["job_id"] for f in frames] == list(range(15))
        assert client.is_open()


def test_tenant_limit_closes_1008(tenant_url: str) -> None:
    """§6.1: tenant token bucket exhausted → `BACKPRESSURE_TENANT_LIMIT_REACHED` + close 1008."""
    time.sleep(1.1)  # let the bucket refill after the previous test
    with session(tenant_url) as client:
        for i in range(15):
            try:
                client.send("info", {"action": "other", "job_id": i})
            except ConnectionClosed:
                break
        frames, code = client.frames_until_close()
        errors = [f["payload"] for f in frames if f["type"] == "error"]
        assert [e.get("code") for e in errors] == ["BACKPRESSURE_TENANT_LIMIT_REACHED"], frames
        assert isinstance(errors[0]["message"], str)
        assert code == 1008


@pytest.fixture(scope="module")
def budget_url(spawn: Spawn) -> str:
    return spawn("--max-request-payload-mb", "1").ws_url


def test_payload_budget_shm_413(budget_url: str) -> None:
    """§6.4: SHM inputs count their `byte_size`; over `max_request_payload_mb` →
    `TRITON_INFERENCE_FAILED`, retriable false, reason `413 Payload Too Large:
    estimated_bytes=<n> limit_bytes=<m>`."""
    size = 2 * 1024 * 1024
    with shm_segment(bytes(size)) as key, session(budget_url) as client:
        ref = shm_ref(key, "INPUT0", "FP32", [size // 4], size)
        client.infer("double", [ref])
        data = failed_object(client.recv())
        assert data["code"] == "TRITON_INFERENCE_FAILED"
        assert data["retriable"] is False
        assert data["message"] == (
            "[TritonThread] TRITON_INFERENCE_FAILED: model='double' retriable=False "
            f"reason=413 Payload Too Large: estimated_bytes={size} limit_bytes={1024 * 1024}"
        )


def test_payload_budget_estimate_rule(budget_url: str) -> None:
    """§6.4: estimate = Σ numel(dims) x bytes-per-element (INT8 1, FP16 2, BYTES 8, …); `value`
    contents are not inspected."""
    inputs = [
        mtensor("A", "INT8", [1000], [0]),
        mtensor("B", "BYTES", [100, 1000], [["x"]]),
        mtensor("C", "FP16", [200000], [0.0]),
        mtensor("D", "UINT32", 10, [0]),
    ]
    expected = 1000 * 1 + 100_000 * 8 + 200_000 * 2 + 10 * 4
    with session(budget_url) as client:
        client.send("inference", inference_payload("identity", inputs))
        data = failed_object(client.recv())
        assert data["message"].endswith(
            f"reason=413 Payload Too Large: estimated_bytes={expected} limit_bytes=1048576"
        ), data


def test_payload_budget_under_limit_passes(budget_url: str) -> None:
    """§6.4: a request under the budget is served normally."""
    with session(budget_url) as client:
        client.send(
            "inference", inference_payload("double", [mtensor("INPUT0", "FP32", 2, [1, 2])])
        )
        assert completed_data(client.recv()) == {"OUTPUT0": [2.0, 4.0]}


def test_payload_budget_checked_per_pipeline_step(budget_url: str) -> None:
    """§6.4: the budget is checked per pipeline step too."""
    payload = {
        "vm_ip": REF_VM_IP,
        "container_id": REF_CONTAINER,
        "pipeline": [
            {"model_name": "double", "inputs": [mtensor("INPUT0", "FP32", 2, [1, 2])]},
            {"model_name": "double", "inputs": [mtensor("INPUT0", "FP32", [1024, 1024], [0])]},
        ],
    }
    with session(budget_url) as client:
        client.send("inference", payload)
        data = failed_object(client.recv())
        assert data["code"] == "TRITON_INFERENCE_FAILED"
        assert data["message"].endswith(
            "reason=413 Payload Too Large: estimated_bytes=4194304 limit_bytes=1048576"
        ), data
