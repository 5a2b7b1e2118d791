"""Contract §9: shared-memory (SHMReference) inputs, HTTP only."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pytest

from ._client import (
    Client,
    completed_data,
    failed_object,
    fp32,
    inference_payload,
    new_uuid,
    session,
    shm_ref,
    shm_segment,
    tensor,
)

if TYPE_CHECKING:
    from collections.abc import Iterator
from typing import Any

pytestmark = pytest.mark.reference_only

FOUR = np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32)


@pytest.fixture
def client(ws_url: str) -> Iterator[Client]:
    with session(ws_url) as c:
        yield c


@pytest.fixture
def four_key() -> Iterator[str]:
    with shm_segment(FOUR.tobytes()) as key:
        yield key


def test_shm_input_double(client: Client, four_key: str) -> None:
    """§9: an SHMReference at offset 0 works (`double`)."""
    client.infer("double", [shm_ref(four_key, "INPUT0", "FP32", [4], 16)])
    assert completed_data(client.recv()) == {"OUTPUT0": [2.0, 4.0, 6.0, 8.0]}


def test_shm_input_checksum_fp64(client: Client) -> None:
    """§9: an SHMReference at offset 0 works (`checksum` of an FP64 segment)."""
    values = np.array([1.5, 2.5, 4.0], dtype=np.float64)
    with shm_segment(values.tobytes()) as key:
        client.infer("checksum", [shm_ref(key, "INPUT0", "FP64", [3], 24)])
        assert completed_data(client.recv()) == {"OUTPUT0": [8.0]}


def test_shm_accepted_without_negotiating_shm(ws_url: str, four_key: str) -> None:
    """§3.3: the negotiated capability list is never consulted: SHM inputs work on a connection
    that negotiated only `json`."""
    with session(ws_url, capability=["json"]) as client:
        client.infer("double", [shm_ref(four_key, "INPUT0", "FP32", [4], 16)])
        assert completed_data(client.recv()) == {"OUTPUT0": [2.0, 4.0, 6.0, 8.0]}


def test_shm_missing_key_unavailable(client: Client) -> None:
    """§9, §6.2: the key must exist under /dev/shm, else `TRITON_SHM_UNAVAILABLE` (fatal)."""
    client.infer("double", [shm_ref("anytcmconf-missing-" + new_uuid(), "INPUT0", "FP32", [4], 16)])
    data = failed_object(client.recv())
    assert data["code"] == "TRITON_SHM_UNAVAILABLE"
    assert data["retriable"] is False


def test_shm_offset_above_zero_fails(client: Client) -> None:
    """§9: offset > 0 fails with `[400] Invalid offset for shared memory region`."""
    data = np.arange(8, dtype=np.float32)
    with shm_segment(data.tobytes()) as key:
        client.infer("double", [shm_ref(key, "INPUT0", "FP32", [4], 16, offset=16)])
        error = failed_object(client.recv())
        assert "[400] Invalid offset for shared memory region" in error["message"], error
        assert error["retriable"] is False


def test_json_inputs_dropped_when_mixed_with_shm(client: Client, four_key: str) -> None:
    """§9: if any input is an SHMReference, all plain JSON inputs in the same request are
    silently dropped (`identity` returns only the SHM input's output)."""
    client.infer(
        "identity",
        [shm_ref(four_key, "X", "FP32", [4], 16), tensor("Y", "INT32", [1], [5])],
    )
    assert completed_data(client.recv()) == {"OUT_X": [1.0, 2.0, 3.0, 4.0]}


def test_grpc_with_shm_refused(client: Client, four_key: str) -> None:
    """§9: gRPC + SHM → `TRITON_INFERENCE_FAILED` "SHM references are not supported for gRPC
    streaming yet"."""
    client.infer("stream", [shm_ref(four_key, "TEXT", "FP32", [4], 16)], protocol="grpc")
    frame = client.recv()
    if frame["payload"]["status"] == "START":
        frame = client.recv()
    data = failed_object(frame)
    assert data["code"] == "TRITON_INFERENCE_FAILED"
    assert "SHM references are not supported for gRPC streaming yet" in data["message"]


def test_shm_key_reuse_with_transient_fails(client: Client, four_key: str) -> None:
    """§9: the same `shm_key` reused with `allow_transient` → 2nd use fails with
    `TRITON_SHM_REGISTRATION_FAILED` (Triton refuses a second region on the same key)."""
    target: dict[str, Any] = {
        "vm_ip": "127.0.0.3",
        "container_id": "shm-" + new_uuid(),
        "allow_transient": True,
    }
    ref = shm_ref(four_key, "INPUT0", "FP32", [4], 16)
    client.send("inference", inference_payload("double", [ref], **target))
    assert completed_data(client.recv()) == {"OUTPUT0": [2.0, 4.0, 6.0, 8.0]}
    client.send("inference", inference_payload("double", [ref], **target))
    data = failed_object(client.recv())
    assert data["code"] == "TRITON_SHM_REGISTRATION_FAILED"
    assert data["retriable"] is False


def test_shm_key_reuse_on_registered_target_works(client: Client, four_key: str) -> None:
    """§9: with a registered (persistent) server, reuse of the same (key, byte_size) works."""
    ref = shm_ref(four_key, "INPUT0", "FP32", [4], 16)
    for _ in range(3):
        client.infer("double", [ref])
        assert completed_data(client.recv()) == {"OUTPUT0": [2.0, 4.0, 6.0, 8.0]}


def test_zero_d_output_is_bare_number(client: Client) -> None:
    """§8: a scalar-shaped (0-d) numeric output is a bare number (an SHM input of shape `[]`
    echoed by `identity`)."""
    with shm_segment(np.array(7, dtype=np.int32).tobytes()) as key:
        client.infer("identity", [shm_ref(key, "X", "INT32", [], 4)])
        assert completed_data(client.recv()) == {"OUT_X": 7}


@pytest.mark.parametrize("missing", ["name", "shm_key", "offset", "byte_size", "shape", "dtype"])
def test_incomplete_shm_reference_is_not_shm(client: Client, four_key: str, missing: str) -> None:
    """§4.3, §9: an SHMReference is recognised only with all six keys; an incomplete one is a
    (partial) plain input: it fails, but not as SHM, and does not make JSON inputs vanish."""
    ref = shm_ref(four_key, "X", "FP32", [4], 16)
    del ref[missing]
    client.infer("identity", [ref, fp32("Y", [1.0])])
    frame = client.recv()
    assert frame["payload"]["status"] == "FAILED", frame
    data = frame["payload"]["data"]
    if isinstance(data, dict):
        assert not data["code"].startswith("TRITON_SHM_"), data
