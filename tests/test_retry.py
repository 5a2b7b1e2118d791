"""RetryPolicy: what is retried, how long it waits, and that it never outlives the deadline."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

import anytcm
from anytcm.errors import (
    AuthError,
    Backpressure,
    ConnectionLost,
    ContractError,
    InferenceFailed,
    InvalidInput,
    PayloadTooLarge,
    RequestTimeout,
    ServerShutdown,
)
from anytcm.retry import Retry, RetryPolicy, default_classifier
from anytcm.testing import ReferenceManager

TARGET = anytcm.Target("127.0.0.1", "ref-0")


def _failed(code: str, *, retriable: bool = False, retry_after: float | None = None,
            message: str = "") -> InferenceFailed:  # fmt: skip
    return InferenceFailed(
        code,
        code=code,
        retriable=retriable,
        retry_after=retry_after,
        model_name="m",
        server_message=message or f"[TritonThread] {code}: model='m' retriable={retriable}",
    )


@pytest.mark.parametrize(
    "error",
    [
        ConnectionLost("lost", close_code=1006, outcome_unknown=True),
        ServerShutdown("shutdown", close_code=1012),
        Backpressure("full", code="BACKPRESSURE_QUEUE_FULL", dropped_type="inference"),
        Backpressure("full", code="BACKPRESSURE_EXECUTOR_FULL", dropped_type="inference"),
        _failed("TRITON_CIRCUIT_OPEN", retriable=True, retry_after=2.0),
        _failed("TRITON_TIMEOUT", retriable=True),
        _failed("TRITON_NETWORK", retriable=True),
    ],
    ids=lambda e: getattr(e, "code", type(e).__name__),
)
def test_retried_by_default(error: Exception) -> None:
    assert default_classifier(error) is not None


@pytest.mark.parametrize(
    "error",
    [
        ContractError("bad", server_message="Missing required field 'vm_ip'"),
        _failed("TRITON_INFERENCE_FAILED"),
        _failed(
            "TRITON_INFERENCE_FAILED",
            retriable=True,
            message="reason=413 Payload Too Large: estimated_bytes=9 limit_bytes=1",
        ),
        _failed("TRITON_SHAPE_MISMATCH", retriable=True),
        _failed("TRITON_SHM_UNAVAILABLE", retriable=True),
        _failed("TRITON_SHM_REGISTRATION_FAILED", retriable=True),
        AuthError("no", server_message="Invalid token: x", close_code=1008),
        InvalidInput("bad input"),
        PayloadTooLarge("big", size=70000, limit=65536),
        RequestTimeout("slow", timeout=1.0),
        Backpressure("pool", code="CLIENT_POOL_EXHAUSTED"),
    ],
    ids=lambda e: getattr(e, "code", type(e).__name__),
)
def test_never_retried_by_default(error: Exception) -> None:
    assert default_classifier(error) is None


def test_circuit_open_waits_at_least_retry_after() -> None:
    decision = default_classifier(_failed("TRITON_CIRCUIT_OPEN", retriable=True, retry_after=2.5))
    assert decision == Retry(after=2.5)
    policy = RetryPolicy(base=0.01, cap=0.1, uniform=lambda lo, hi: hi)
    assert policy.delay(decision, 1) == 2.5


def test_delays_grow_capped_with_full_jitter() -> None:
    upper = RetryPolicy(base=0.1, cap=0.5, uniform=lambda lo, hi: hi)
    assert [upper.delay(Retry(), n) for n in range(1, 6)] == [0.1, 0.2, 0.4, 0.5, 0.5]
    lower = RetryPolicy(base=0.1, cap=0.5, uniform=lambda lo, hi: lo)
    assert lower.delay(Retry(), 3) == 0.0
    fixed = RetryPolicy(base=0.1, cap=0.5, jitter=False, uniform=lambda lo, hi: 0.0)
    assert fixed.delay(Retry(), 2) == pytest.approx(0.2)


def test_invalid_policies_are_refused() -> None:
    with pytest.raises(ValueError, match="attempts"):
        RetryPolicy(attempts=0)
    with pytest.raises(ValueError, match="base"):
        RetryPolicy(base=1.0, cap=0.5)


# -- against the reference manager --------------------------------------------------------------

pytestmark_anyio = pytest.mark.anyio


@pytest.fixture(autouse=True)
def _reset(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "manager" in request.fixturenames:
        request.getfixturevalue("manager").reset_faults()


@pytestmark_anyio
async def test_circuit_open_is_retried_then_succeeds(manager: ReferenceManager) -> None:
    manager.set_faults(**{"error.double": "TRITON_CIRCUIT_OPEN:2"})
    x = np.array([1.5, -2.0], dtype=np.float32)
    async with anytcm.connect(manager.ws_url, pool_size=1) as client:
        result = await client.infer("double", {"INPUT0": x}, target=TARGET, timeout=10)
        assert np.array_equal(result.as_numpy("OUTPUT0"), 2 * x)
        assert client.stats["retries"] == 2  # retry_after_seconds=1 was respected each time


@pytestmark_anyio
async def test_attempts_bound_the_retries(manager: ReferenceManager) -> None:
    manager.set_faults(**{"error.double": "TRITON_TIMEOUT"})
    policy = RetryPolicy(attempts=3, base=0.0, cap=0.0)
    async with anytcm.connect(manager.ws_url, pool_size=1, retry=policy) as client:
        with pytest.raises(InferenceFailed) as failed:
            await client.infer("double", {"INPUT0": np.zeros(1, np.float32)}, target=TARGET)
        assert failed.value.code == "TRITON_TIMEOUT"
        assert client.stats["retries"] == 2


@pytestmark_anyio
async def test_retries_never_extend_the_deadline(manager: ReferenceManager) -> None:
    """CIRCUIT_OPEN asks for 1 s; with a 0.5 s deadline the first error is raised as is."""
    manager.set_faults(**{"error.double": "TRITON_CIRCUIT_OPEN"})
    async with anytcm.connect(manager.ws_url, pool_size=1) as client:
        with pytest.raises(InferenceFailed) as failed:
            await client.infer(
                "double", {"INPUT0": np.zeros(1, np.float32)}, target=TARGET, timeout=0.5
            )
        assert failed.value.code == "TRITON_CIRCUIT_OPEN"
        assert failed.value.retry_after == 1.0
        assert client.stats["retries"] == 0


@pytestmark_anyio
async def test_per_call_policy_and_replaceable_classifier(manager: ReferenceManager) -> None:
    manager.set_faults(**{"error.double": "TRITON_INFERENCE_FAILED:1"})
    seen: list[str] = []

    def classify(error: BaseException) -> Retry | None:
        seen.append(type(error).__name__)
        return Retry() if isinstance(error, InferenceFailed) else None

    policy = RetryPolicy(attempts=2, base=0.0, cap=0.0, classify=classify)
    async with anytcm.connect(manager.ws_url, pool_size=1) as client:
        result = await client.infer(
            "double", {"INPUT0": np.ones(2, np.float32)}, target=TARGET, retry=policy
        )
        assert result.as_numpy("OUTPUT0").tolist() == [2.0, 2.0]
    assert seen == ["InferenceFailed"]


@pytestmark_anyio
async def test_uuid_conflict_gets_a_fresh_uuid(manager: ReferenceManager) -> None:
    """Another client already holds the first derived uuid: the pool moves to the next one."""
    base = "conflict-base"
    async with (
        anytcm.connect(manager.ws_url, pool_size=1, uuid=base) as first,
        anytcm.connect(manager.ws_url, pool_size=1, uuid=base) as second,
    ):
        x = np.array([3.0], dtype=np.float32)
        for client in (first, second):
            result = await client.infer("double", {"INPUT0": x}, target=TARGET)
            assert result.as_numpy("OUTPUT0").tolist() == [6.0]
        assert second.stats["connects"] == 1
