"""Client integration: every error shape a call can end with, and auth errors at connect.

After each error the same client must still work: these are request errors, not connection
errors.
"""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import numpy as np
import pytest

import anytcm
from _client_helpers import (
    REF,
    assert_not_group,
    distinct,
    f32,
    infer_double,
    inference_frames_received,
    metric,
    text,
)
from anytcm.testing import ReferenceManager

pytestmark = pytest.mark.anyio

TOKEN = "s3cr3t-T0KEN-do-not-print"
WRONG_TOKEN = "wr0ng-T0KEN-also-secret"


@pytest.fixture(scope="module")
def budget_manager() -> Iterator[ReferenceManager]:
    """The '413' payload budget at 0.01 MiB (10485 bytes): 4000 FP32 values exceed it."""
    with ReferenceManager(extra_args=["--max-request-payload-mb", "0.01"]) as running:
        yield running


@pytest.fixture(scope="module")
def token_manager() -> Iterator[ReferenceManager]:
    with ReferenceManager(token=TOKEN) as running:
        yield running


async def _frames(manager: ReferenceManager) -> float:
    return await anyio.to_thread.run_sync(inference_frames_received, manager)


# -- FAILED with a typed error object ----------------------------------------------------------


async def test_inference_failed(manager: ReferenceManager) -> None:
    async with anytcm.connect(manager.ws_url, pool_size=1) as client:
        with pytest.raises(anytcm.InferenceFailed) as caught:
            await client.infer("fail", {"X": f32(1.0)}, target=REF)
        error = caught.value
        assert error.code == "TRITON_INFERENCE_FAILED"
        assert error.retriable is False
        assert error.retry_after is None
        assert error.model_name == "fail"
        assert "[500]" in error.server_message
        assert "configured to always fail" in str(error)
        assert isinstance(error, anytcm.RequestError)
        assert client.stats["retries"] == 0  # retriable=false: not retried
        await infer_double(client, distinct(1))


async def test_unknown_model_is_404(manager: ReferenceManager) -> None:
    async with anytcm.connect(manager.ws_url, pool_size=1) as client:
        with pytest.raises(anytcm.InferenceFailed) as caught:
            await client.infer("no-such-model", {"INPUT0": f32(1.0)}, target=REF)
        assert caught.value.code == "TRITON_INFERENCE_FAILED"
        assert "[404]" in caught.value.server_message
        assert "[404]" in str(caught.value)
        assert caught.value.model_name == "no-such-model"
        await infer_double(client, distinct(2))


async def test_model_input_errors_are_inference_failed(manager: ReferenceManager) -> None:
    """Triton's own 400s (wrong datatype, missing input) come back as InferenceFailed."""
    async with anytcm.connect(manager.ws_url, pool_size=1) as client:
        with pytest.raises(anytcm.InferenceFailed) as wrong_type:
            await client.infer("double", {"INPUT0": np.array([1.0])}, target=REF)  # FP64
        assert "[400]" in wrong_type.value.server_message
        assert "FP64" in wrong_type.value.server_message
        with pytest.raises(anytcm.InferenceFailed) as missing:
            await client.infer("slow", {"INPUT0": f32(1.0)}, target=REF)
        assert "DELAY_MS" in missing.value.server_message
        await infer_double(client, distinct(3))


async def test_zero_d_input_never_produces_shape_mismatch(manager: ReferenceManager) -> None:
    """TRITON_SHAPE_MISMATCH is what the manager answers for a value not nested to its declared
    shape, e.g. a 0-d shape `[]`. The client sends 0-d arrays as shape [1] and always nests to
    the array's shape, so none of these inputs may produce it."""
    inputs = {
        "ZERO_D": np.array(5, dtype=np.int32),
        "SCALAR": np.float64(2.5),
        "MATRIX": np.arange(12, dtype=np.int16).reshape(3, 4),
        "CUBE": np.ones((2, 2, 2), dtype=np.uint8),
        "EMPTY_LAST": np.zeros((2, 0), dtype=np.float32),
        "TEXT_2D": np.array([["a", "b"], ["c", "d"]], dtype=object),
    }
    async with anytcm.connect(manager.ws_url, pool_size=1) as client:
        result = await client.infer("identity", inputs, target=REF)
    np.testing.assert_array_equal(result.as_numpy("OUT_ZERO_D"), [5])
    np.testing.assert_array_equal(result.as_numpy("OUT_SCALAR"), [2.5])
    np.testing.assert_array_equal(result.as_numpy("OUT_MATRIX"), inputs["MATRIX"])
    np.testing.assert_array_equal(result.as_numpy("OUT_CUBE"), inputs["CUBE"])
    assert result.as_numpy("OUT_EMPTY_LAST").size == 0


# -- FAILED with a string: ContractError --------------------------------------------------------


async def test_unknown_container_is_contract_error(manager: ReferenceManager) -> None:
    async with anytcm.connect(manager.ws_url, pool_size=1) as client:
        with pytest.raises(anytcm.ContractError) as caught:
            await client.infer(
                "double", {"INPUT0": f32(1.0)}, target=anytcm.Target("127.0.0.1", "not-cached")
            )
        assert caught.value.server_message == "Container 'not-cached' not found in known containers"
        assert isinstance(caught.value, ValueError)
        assert client.stats["retries"] == 0  # contract errors are never retried
        # The container is on another VM than the one named:
        with pytest.raises(anytcm.ContractError) as wrong_vm:
            await client.infer(
                "double", {"INPUT0": f32(1.0)}, target=anytcm.Target("127.0.0.2", "ref-0")
            )
        assert "is not on VM" in wrong_vm.value.server_message
        await infer_double(client, distinct(4))


async def test_missing_model_name_is_contract_error(manager: ReferenceManager) -> None:
    async with anytcm.connect(manager.ws_url, pool_size=1) as client:
        with pytest.raises(anytcm.ContractError) as caught:
            await client.infer("", {"INPUT0": f32(1.0)}, target=REF)
        assert caught.value.server_message == "Missing required field 'model_name'"
        await infer_double(client, distinct(5))


@pytest.mark.filterwarnings(  # the stream channel leak has its own test (test_client_stream.py)
    "ignore:Exception ignored in.*MemoryObject:pytest.PytestUnraisableExceptionWarning"
)
async def test_allow_transient_to_another_target(manager: ReferenceManager) -> None:
    elsewhere = anytcm.Target("127.0.0.9", "transient-ctr")
    async with anytcm.connect(manager.ws_url, pool_size=1) as client:
        with pytest.raises(anytcm.ContractError):
            await client.infer("double", {"INPUT0": f32(1.0)}, target=elsewhere)
        x = f32(3.0, 4.0)
        result = await client.infer("double", {"INPUT0": x}, target=elsewhere, allow_transient=True)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), 2 * x)
        async with client.infer_stream(
            "stream", {"TEXT": text("t")}, target=elsewhere, allow_transient=True
        ) as s:
            events = [event async for event in s]
        assert [e.text for e in events if e.status == "ONGOING"] == ["t"]


# -- refused before sending ---------------------------------------------------------------------


async def test_payload_too_large_is_refused_before_sending(manager: ReferenceManager) -> None:
    big = np.random.default_rng(0).random(20_000, dtype=np.float32)
    async with anytcm.connect(manager.ws_url, pool_size=1) as client:
        await infer_double(client, f32(1.0))  # the frame counter exists from here on
        before = await _frames(manager)
        with pytest.raises(anytcm.PayloadTooLarge) as caught:
            await client.infer("double", {"INPUT0": big}, target=REF, carrier="json")
        error = caught.value
        assert error.limit == 65536
        assert error.size > error.limit
        assert isinstance(error, ValueError)
        assert "shm" in str(error) or "shared memory" in str(error)
        # The streaming and pipeline calls check the same cap.
        with pytest.raises(anytcm.PayloadTooLarge):
            client.infer_stream("identity", {"X": big}, target=REF)
        with pytest.raises(anytcm.PayloadTooLarge):
            await client.pipeline([("double", {"INPUT0": big})], target=REF)
        # Nothing was sent: the connection is fine and the manager read no frame.
        stats = await client.info.queue_stats()
        assert stats.total_users >= 1
        assert await _frames(manager) == before
        await infer_double(client, distinct(6))
        assert client.stats["connects"] == 1


async def test_unsupported_inputs_are_invalid_input(manager: ReferenceManager) -> None:
    async with anytcm.connect(manager.ws_url, pool_size=1) as client:
        with pytest.raises(anytcm.InvalidInput):
            await client.infer("identity", {"C": np.array([1 + 2j])}, target=REF)
        with pytest.raises(anytcm.InvalidInput):
            await client.infer("identity", {"F": np.array([np.inf], np.float32)}, target=REF)
        with pytest.raises(anytcm.InvalidInput):
            await client.infer("identity", {"B": np.array([b"\xff\xfe"], dtype=object)}, target=REF)
        with pytest.raises(anytcm.InvalidInput) as mixed:
            await client.infer(
                "identity",
                [
                    anytcm.Tensor("A", f32(1.0)),
                    anytcm.SHMReference("B", "/anytcm-none", 0, 4, [1], "FP32"),
                ],
                target=REF,
            )
        assert "shared-memory" in str(mixed.value)
        with pytest.raises(anytcm.InvalidInput):
            await client.infer(
                "identity", [anytcm.Tensor("A", f32(1.0)), anytcm.Tensor("A", f32(2.0))], target=REF
            )
        with pytest.raises(ValueError):
            await client.infer("double", {"INPUT0": f32(1.0)}, target=REF, timeout=0)
        await infer_double(client, distinct(7))


# -- the manager's 413 budget --------------------------------------------------------------------


async def test_server_413_payload_budget(budget_manager: ReferenceManager) -> None:
    x = np.ones(4000, dtype=np.float32)  # 16000 estimated bytes > 10485; the frame is < 64 KiB
    async with anytcm.connect(budget_manager.ws_url, pool_size=1) as client:
        with pytest.raises(anytcm.InferenceFailed) as caught:
            await client.infer("double", {"INPUT0": x}, target=REF)
        assert "413 Payload Too Large" in caught.value.server_message
        assert caught.value.code == "TRITON_INFERENCE_FAILED"
        assert caught.value.retriable is False
        assert client.stats["retries"] == 0
        await infer_double(client, f32(1.0, 2.0))  # small requests still go through


# -- auth ------------------------------------------------------------------------------------


async def test_wrong_token_is_auth_error_promptly(token_manager: ReferenceManager) -> None:
    failures_before = await anyio.to_thread.run_sync(
        metric, token_manager, "tcm_auth_failures_total"
    )
    started = anyio.current_time()
    with pytest.raises(anytcm.AuthError) as caught:
        async with anytcm.connect(
            token_manager.ws_url, token=WRONG_TOKEN, pool_size=4, connect_timeout=20
        ):
            pytest.fail("connected with a wrong token")
    elapsed = anyio.current_time() - started
    error = caught.value
    assert_not_group(error)
    assert elapsed < 10, f"AuthError took {elapsed:.1f} s: it waited for connect_timeout"
    assert isinstance(error, anytcm.ConnectError)
    assert "Invalid token" in error.server_message
    assert error.close_code in (1008, None)
    for secret in (WRONG_TOKEN, TOKEN):
        assert secret not in str(error)
        assert secret not in repr(error)
        assert secret not in error.server_message
    # No retrying forever: the manager saw at most one failed auth per slot, and no more later.
    failures = await anyio.to_thread.run_sync(metric, token_manager, "tcm_auth_failures_total")
    assert 1 <= failures - failures_before <= 4
    await anyio.sleep(0.5)
    assert await anyio.to_thread.run_sync(metric, token_manager, "tcm_auth_failures_total") == (
        failures
    )


async def test_missing_token_is_auth_error(token_manager: ReferenceManager) -> None:
    with pytest.raises(anytcm.AuthError) as caught:
        async with anytcm.connect(token_manager.ws_url, pool_size=1, connect_timeout=20):
            pytest.fail("connected without a token")
    assert "Missing token" in caught.value.server_message


async def test_right_token_works_and_is_never_shown(token_manager: ReferenceManager) -> None:
    async with anytcm.connect(token_manager.ws_url, token=TOKEN, pool_size=2) as client:
        await infer_double(client, f32(1.0))
        assert TOKEN not in repr(client)
        assert token_manager.ws_url in repr(client)
        with pytest.raises(anytcm.InferenceFailed) as caught:
            await client.infer("fail", {"X": f32(1.0)}, target=REF)
        assert TOKEN not in str(caught.value)
        assert TOKEN not in repr(client.stats)
