"""Server-side shared-memory failures reach the caller as typed errors, and are not retried."""

from __future__ import annotations

import numpy as np
import pytest

import anytcm
from anytcm.carrier import InputTensor
from anytcm.plugins import load_carrier
from anytcm.testing import ReferenceManager

pytestmark = pytest.mark.anyio
REF = anytcm.Target("127.0.0.1", "ref-0")


async def test_missing_segment_is_shm_unavailable(manager: ReferenceManager) -> None:
    ref = anytcm.SHMReference("INPUT0", "/anytcm-no-such-segment", 0, 16, [4], "FP32")
    async with anytcm.connect(manager.ws_url, pool_size=1) as client:
        with pytest.raises(anytcm.InferenceFailed) as caught:
            await client.infer("double", [ref], target=REF)
        assert caught.value.code == "TRITON_SHM_UNAVAILABLE"
        assert caught.value.retriable is False
        assert client.stats["retries"] == 0


async def test_key_reused_with_a_transient_target_is_registration_failed(
    manager: ReferenceManager,
) -> None:
    """A transient client registers a new region per request; Triton refuses a reused key."""
    staged = await load_carrier("shm").stage(
        [InputTensor("INPUT0", np.arange(4, dtype=np.float32))]
    )
    transient = anytcm.Target("127.0.0.9", "not-registered")
    try:
        refs = [item for item in staged.items if isinstance(item, anytcm.SHMReference)]
        async with anytcm.connect(manager.ws_url, pool_size=1) as client:
            first = await client.infer(
                "double", refs, target=transient, allow_transient=True,
                output_dtypes={"OUTPUT0": np.float32},
            )  # fmt: skip
            assert first.as_numpy("OUTPUT0").tolist() == [0.0, 2.0, 4.0, 6.0]
            with pytest.raises(anytcm.InferenceFailed) as caught:
                await client.infer("double", refs, target=transient, allow_transient=True)
            assert caught.value.code == "TRITON_SHM_REGISTRATION_FAILED"
            assert client.stats["retries"] == 0
    finally:
        staged.release()


async def test_references_are_refused_unsent_for_streams_and_pipelines(
    manager: ReferenceManager,
) -> None:
    """The manager refuses shared memory in gRPC streams (contract §9): the client says so first."""
    ref = anytcm.SHMReference("INPUT0", "/anytcm-no-such-segment", 0, 16, [4], "FP32")
    async with anytcm.connect(manager.ws_url, pool_size=1) as client:
        with pytest.raises(anytcm.CarrierUnavailable) as caught:
            client.infer_stream("stream", [ref], target=REF)
        assert caught.value.carrier == "shm"
        assert "gRPC streaming" in caught.value.reason
        with pytest.raises(anytcm.CarrierUnavailable) as caught:
            await client.pipeline([("double", [ref])], target=REF)
        assert "pipelines" in caught.value.reason
        assert client.stats["retries"] == 0
