"""Contract §4.3 (inference), §5.3 (ordering), §6.2/§6.3 (errors) and §8 (datatypes) against the
reference model zoo (docs/reference-manager.md)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from ._client import (
    REF_CONTAINER,
    REF_VM_IP,
    Client,
    Json,
    completed_data,
    create_container,
    create_vm,
    failed_object,
    fp32,
    inference_payload,
    mtensor,
    new_uuid,
    session,
    slow_inputs,
    tensor,
)

pytestmark = pytest.mark.reference_only

MESSAGE_RE = re.compile(
    r"\[TritonThread\] (?P<code>[A-Z_]+): model='(?P<model>[^']*)' "
    r"retriable=(?P<retriable>True|False) reason=(?P<reason>.*)",
    re.DOTALL,
)


def infer(client: Client, model: str | None, inputs: list[Json] | None, **kwargs: Any) -> Json:
    client.send("inference", inference_payload(model, inputs, **kwargs))
    return client.recv()


def failed_string(frame: Json) -> str:
    """A FAILED frame with a plain string `data` and `model_name: null`."""
    assert frame["type"] == "inference", frame
    payload = frame["payload"]
    assert payload["status"] == "FAILED", frame
    assert payload["model_name"] is None, frame
    assert isinstance(payload["data"], str), frame
    return payload["data"]


@pytest.fixture
def client(ws_url: str) -> Iterator[Client]:
    with session(ws_url) as c:
        yield c


# -- zoo models -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("shape", "value", "expected"),
    [
        ([3], [1.0, -2.0, 0.5], [2.0, -4.0, 1.0]),
        ([2, 2], [[1.0, 2.0], [3.0, 4.0]], [[2.0, 4.0], [6.0, 8.0]]),
        ([1, 2, 1], [[[1.5], [2.5]]], [[[3.0], [5.0]]]),
    ],
    ids=["1d", "2d", "3d"],
)
def test_double_any_shape(client: Client, shape: list[int], value: Any, expected: Any) -> None:
    """§4.3 HTTP response: exactly one frame `{"type":"inference","uuid":…,"payload":{"status":
    "COMPLETED","data":{<output>: value},"model_name":<model>}}`; numeric outputs are nested
    lists."""
    frame = infer(client, "double", [tensor("INPUT0", "FP32", shape, value)])
    assert frame == {
        "type": "inference",
        "uuid": client.uuid,
        "payload": {"status": "COMPLETED", "data": {"OUTPUT0": expected}, "model_name": "double"},
    }
    client.assert_silent(0.2)


NUMERIC_CASES: list[tuple[str, list[Any]]] = [
    ("BOOL", [True, False]),
    ("INT8", [-128, 127]),
    ("INT16", [-32768, 32767]),
    ("INT32", [-(2**31), 2**31 - 1]),
    ("INT64", [-(2**63), 2**63 - 1]),
    ("UINT8", [0, 255]),
    ("UINT16", [0, 65535]),
    ("UINT32", [0, 2**32 - 1]),
    ("UINT64", [0, 2**64 - 1]),
    ("FP16", [0.5, -2.25]),
    ("FP32", [1.5, -3.25]),
    ("FP64", [0.1, 1e300]),
]


@pytest.mark.parametrize(("datatype", "values"), NUMERIC_CASES, ids=[c[0] for c in NUMERIC_CASES])
def test_identity_every_numeric_datatype(client: Client, datatype: str, values: list[Any]) -> None:
    """§8: input datatypes BOOL, INT8…UINT64, FP16, FP32, FP64 round-trip; 64-bit integers are
    exact JSON integers; FP16 comes back as floats."""
    data = completed_data(infer(client, "identity", [tensor("X", datatype, [2], values)]))
    assert data == {"OUT_X": values}
    out = data["OUT_X"]
    if datatype == "BOOL":
        assert all(isinstance(v, bool) for v in out)
    elif datatype.startswith("FP"):
        assert all(isinstance(v, float) for v in out)
    else:
        assert all(isinstance(v, int) and not isinstance(v, bool) for v in out)


def test_identity_bytes(client: Client) -> None:
    """§8: BYTES inputs are UTF-8 strings and come back decoded."""
    data = completed_data(
        infer(client, "identity", [tensor("S", "BYTES", [3], ["a", "é", "日本"])])
    )
    assert data == {"OUT_S": ["a", "é", "日本"]}


def test_identity_multiple_inputs(client: Client) -> None:
    """§8: `data = {output_name: value}` — every output is returned."""
    data = completed_data(
        infer(
            client,
            "identity",
            [tensor("A", "INT32", [2], [1, 2]), tensor("B", "BYTES", [2], ["x", "y"])],
        )
    )
    assert data == {"OUT_A": [1, 2], "OUT_B": ["x", "y"]}


def test_slow_sleeps_then_doubles(client: Client) -> None:
    """Zoo `slow`: sleeps DELAY_MS ms, then `OUTPUT0` = 2 x INPUT0."""
    data = completed_data(infer(client, "slow", slow_inputs(50, [1.0, 2.0])))
    assert data == {"OUTPUT0": [2.0, 4.0]}


def test_fail_is_typed_failed_object(client: Client) -> None:
    """§4.3, §6.2: typed Triton errors are FAILED with `data` `{code, message, retriable}` and the
    error's model as `model_name`; `TRITON_INFERENCE_FAILED` is fatal (retriable false)."""
    frame = infer(client, "fail", [fp32("INPUT0", [1.0])])
    data = failed_object(frame)
    assert frame["payload"]["model_name"] == "fail"
    assert frame["uuid"] == client.uuid
    assert data["code"] == "TRITON_INFERENCE_FAILED"
    assert data["retriable"] is False
    assert "retry_after_seconds" not in data


def test_failed_message_format(client: Client) -> None:
    """§6.2: `message` = `[TritonThread] <CODE>: model='<m>' retriable=<bool> reason=<text>`."""
    data = failed_object(infer(client, "fail", [fp32("INPUT0", [1.0])]))
    match = MESSAGE_RE.fullmatch(data["message"])
    assert match is not None, data["message"]
    assert match["code"] == data["code"]
    assert match["model"] == "fail"
    assert match["retriable"] == "False"
    assert match["reason"]


def test_stream_over_grpc(client: Client) -> None:
    """§4.3 gRPC streaming: START (`data:null`, `model_name:null`), one ONGOING per chunk (a
    string, `model_name:null`), then COMPLETED (`data:null`, `model_name` set)."""
    words = ["hello", " ", "wörld"]
    client.send(
        "inference",
        inference_payload("stream", [tensor("TEXT", "BYTES", [3], words)], protocol="grpc"),
    )
    frames = client.recv_n(len(words) + 2)
    assert all(f["type"] == "inference" and f["uuid"] == client.uuid for f in frames)
    assert frames[0]["payload"] == {"status": "START", "data": None, "model_name": None}
    for frame, word in zip(frames[1:-1], words, strict=True):
        assert frame["payload"] == {"status": "ONGOING", "data": word, "model_name": None}
    assert frames[-1]["payload"] == {"status": "COMPLETED", "data": None, "model_name": "stream"}
    client.assert_silent(0.2)


def test_stream_over_http_is_single_shot(client: Client) -> None:
    """Zoo `stream` over HTTP: one COMPLETED with `output` = TEXT."""
    data = completed_data(infer(client, "stream", [tensor("TEXT", "BYTES", [2], ["a", "b"])]))
    assert data == {"output": ["a", "b"]}


def test_checksum_sums(client: Client) -> None:
    """Zoo `checksum`: `OUTPUT0` FP64 [1] = sum of INPUT0."""
    data = completed_data(
        infer(client, "checksum", [tensor("INPUT0", "INT32", [2, 2], [[1, 2], [3, 4]])])
    )
    assert data == {"OUTPUT0": [10.0]}


def test_generate_is_deterministic(client: Client) -> None:
    """Zoo `generate`: `OUTPUT0` FP32 [SIZE], deterministic values."""
    inputs = [tensor("SIZE", "INT64", [1], [7])]
    first = completed_data(infer(client, "generate", inputs))["OUTPUT0"]
    second = completed_data(infer(client, "generate", inputs))["OUTPUT0"]
    assert len(first) == 7
    assert all(isinstance(v, float) for v in first)
    assert first == second


def test_generate_large_output_over_1mib(client: Client) -> None:
    """§1: there is no outbound size cap; a response can exceed 1 MiB."""
    data = completed_data(infer(client, "generate", [tensor("SIZE", "INT64", [1], [150000])]))
    assert len(data["OUTPUT0"]) == 150000


# -- tensor input forms -------------------------------------------------------------------------
def test_manager_form_input(client: Client) -> None:
    """§4.3: the manager form `{name, dims, type, value}` is accepted."""
    data = completed_data(infer(client, "double", [mtensor("INPUT0", "FP32", [2], [1.0, 2.0])]))
    assert data == {"OUTPUT0": [2.0, 4.0]}


def test_mixed_input_forms(client: Client) -> None:
    """§4.3: SDK and manager forms may be mixed in one list."""
    data = completed_data(
        infer(
            client,
            "identity",
            [tensor("A", "INT32", [1], [5]), mtensor("B", "FP64", [1], [0.25])],
        )
    )
    assert data == {"OUT_A": [5], "OUT_B": [0.25]}


@pytest.mark.parametrize("form", ["sdk", "manager"])
def test_dims_as_int(client: Client, form: str) -> None:
    """§4.3: `dims`/`shape` may be an int (→ `[n]`)."""
    make = tensor if form == "sdk" else mtensor
    data = completed_data(infer(client, "double", [make("INPUT0", "FP32", 3, [1.0, 2.0, 3.0])]))
    assert data == {"OUTPUT0": [2.0, 4.0, 6.0]}


@pytest.mark.parametrize(
    ("config_type", "value"),
    [("TYPE_FP32", [1.5]), ("TYPE_INT64", [9]), ("TYPE_STRING", ["s"]), ("TYPE_BOOL", [True])],
)
def test_type_config_spelling(client: Client, config_type: str, value: list[Any]) -> None:
    """§4.3: `type`/`datatype` may use the `TYPE_*` config spelling (`TYPE_STRING` → BYTES)."""
    data = completed_data(infer(client, "identity", [mtensor("X", config_type, [1], value)]))
    expected: Any = value[0] if config_type == "TYPE_STRING" else value
    assert data == {"OUT_X": expected}


def test_flat_list_for_2d_shape_is_shape_mismatch(client: Client) -> None:
    """§4.3: `value` must be nested to exactly the declared shape; a flat row-major list for a
    2-D shape → `TRITON_SHAPE_MISMATCH` with `model_name:"unknown"`."""
    frame = infer(client, "double", [tensor("INPUT0", "FP32", [2, 2], [1.0, 2.0, 3.0, 4.0])])
    data = failed_object(frame)
    assert data["code"] == "TRITON_SHAPE_MISMATCH"
    assert data["retriable"] is False
    assert frame["payload"]["model_name"] == "unknown"


def test_scalar_value_becomes_vector(client: Client) -> None:
    """§4.3: a scalar `value` becomes a 1-element vector."""
    data = completed_data(infer(client, "double", [tensor("INPUT0", "FP32", [1], 4.0)]))
    assert data == {"OUTPUT0": [8.0]}


def test_legacy_top_level_inputs(client: Client) -> None:
    """§4.3: legacy top-level `payload.inputs` is moved to `request.inputs`."""
    payload = inference_payload("double", None)
    payload["inputs"] = [fp32("INPUT0", [3.0])]
    client.send("inference", payload)
    assert completed_data(client.recv()) == {"OUTPUT0": [6.0]}


def test_vm_ip_derived_from_docker_cache(client: Client) -> None:
    """§4.3: `vm_ip` may be omitted if `container_id` is in the Docker cache."""
    frame = infer(client, "double", [fp32("INPUT0", [1.0])], vm_ip=None)
    assert completed_data(frame) == {"OUTPUT0": [2.0]}


# -- validation strings (§6.3) ------------------------------------------------------------------
def test_missing_inputs_checked_first(client: Client) -> None:
    """§4.3: `Missing required field 'request.inputs'` is checked first (before vm_ip,
    container_id, model_name); `model_name: null`."""
    frame = infer(client, None, None, vm_ip=None, container_id=None)
    assert failed_string(frame) == "Missing required field 'request.inputs'"


def test_missing_vm_ip_checked_second(client: Client) -> None:
    """§4.3: then `Missing required field 'vm_ip'`."""
    frame = infer(client, None, [fp32("INPUT0", [1.0])], vm_ip=None, container_id=None)
    assert failed_string(frame) == "Missing required field 'vm_ip'"


def test_missing_container_id_checked_third(client: Client) -> None:
    """§4.3: then `Missing required field 'container_id'`."""
    frame = infer(client, None, [fp32("INPUT0", [1.0])], container_id=None)
    assert failed_string(frame) == "Missing required field 'container_id'"


def test_missing_model_name_checked_last(client: Client) -> None:
    """§4.3: then `Missing required field 'model_name'`."""
    frame = infer(client, None, [fp32("INPUT0", [1.0])])
    assert failed_string(frame) == "Missing required field 'model_name'"


def test_unsupported_protocol(client: Client) -> None:
    """§4.3: `request.protocol` other than http/grpc → `Unsupported inference protocol: '<x>'`."""
    frame = infer(client, "double", [fp32("INPUT0", [1.0])], protocol="websocket")
    assert failed_string(frame) == "Unsupported inference protocol: 'websocket'"


def test_unknown_container(client: Client) -> None:
    """§4.3 routing 2, §6.3: `Container '<id12>' not found in known containers` (first 12 chars)."""
    container = "deadbeef0123456789abcdef"
    frame = infer(client, "double", [fp32("INPUT0", [1.0])], container_id=container)
    assert failed_string(frame) == f"Container '{container[:12]}' not found in known containers"


def test_container_on_another_vm(client: Client) -> None:
    """§4.3 routing 2, §6.3: `Container '<id>' is not on VM '<ip>' (found on '<ip2>')`."""
    frame = infer(client, "double", [fp32("INPUT0", [1.0])], vm_ip="10.9.8.7")
    assert (
        failed_string(frame)
        == f"Container '{REF_CONTAINER}' is not on VM '10.9.8.7' (found on '{REF_VM_IP}')"
    )


def test_allow_transient_reaches_other_target(client: Client) -> None:
    """§4.3 routing 3: with `allow_transient` a throw-away client serves an unregistered target."""
    frame = infer(
        client,
        "double",
        [fp32("INPUT0", [2.0])],
        vm_ip="127.0.0.2",
        container_id="transient-" + new_uuid(),
        allow_transient=True,
    )
    assert completed_data(frame) == {"OUTPUT0": [4.0]}


def test_no_registered_server_without_transient(client: Client) -> None:
    """§4.3 routing 3: a known container without a registered server and without
    `allow_transient` → `TRITON_INFERENCE_FAILED` "No active Triton session for this instance"."""
    vm_ip, vm_id = create_vm(client)
    container_id = create_container(client, vm_id)
    frame = infer(client, "double", [fp32("INPUT0", [1.0])], vm_ip=vm_ip, container_id=container_id)
    data = failed_object(frame)
    assert data["code"] == "TRITON_INFERENCE_FAILED"
    assert data["retriable"] is False
    match = MESSAGE_RE.fullmatch(data["message"])
    assert match is not None, data
    assert match["reason"] == "No active Triton session for this instance"


# -- ordering (§5.3) ----------------------------------------------------------------------------
def test_replies_in_completion_order(client: Client) -> None:
    """§5.2/§5.3: requests run concurrently and replies come back in completion order: slow(1500),
    slow(200), double → double, 200, 1500."""
    client.infer("slow", slow_inputs(1500, [1500.0]))
    client.infer("slow", slow_inputs(200, [200.0]))
    client.infer("double", [fp32("INPUT0", [0.0])])
    frames = client.recv_n(3, timeout=6)
    assert [completed_data(f)["OUTPUT0"] for f in frames] == [[0.0], [400.0], [3000.0]]
    assert [f["payload"]["model_name"] for f in frames] == ["double", "slow", "slow"]


# -- output encoding (§8) -----------------------------------------------------------------------
def test_bf16_fails(client: Client) -> None:
    """§8: BF16 inputs fail (typed FAILED)."""
    frame = infer(client, "identity", [tensor("X", "BF16", [1], [1.0])])
    data = failed_object(frame)
    assert data["retriable"] is False
    assert "BF16" in data["message"]


def test_fp16_output_is_float(client: Client) -> None:
    """§8: FP16 outputs are converted to FP32 floats."""
    data = completed_data(infer(client, "identity", [tensor("H", "FP16", [2], [1, 2])]))
    assert data == {"OUT_H": [1.0, 2.0]}
    assert all(isinstance(v, float) for v in data["OUT_H"])


def test_nan_output_is_null(client: Client) -> None:
    """§1, §8: NaN in outbound data is serialised as `null` (sum of +inf and -inf FP32)."""
    data = completed_data(infer(client, "checksum", [fp32("INPUT0", [1e39, -1e39])]))
    assert data == {"OUTPUT0": [None]}


def test_inf_output_is_null(client: Client) -> None:
    """§8: Inf in an output becomes `null` (1e39 overflows FP32)."""
    data = completed_data(infer(client, "double", [fp32("INPUT0", [1e39, 1.0])]))
    assert data == {"OUTPUT0": [None, 2.0]}


def test_bytes_output_flattened(client: Client) -> None:
    """§8: BYTES outputs are flattened to a 1-D list (2x2 → 4 elements)."""
    value = [["a", "b"], ["c", "d"]]
    data = completed_data(infer(client, "identity", [tensor("S", "BYTES", [2, 2], value)]))
    assert data == {"OUT_S": ["a", "b", "c", "d"]}


def test_single_bytes_output_is_bare_string(client: Client) -> None:
    """§8: a BYTES output with one element is a bare string."""
    data = completed_data(infer(client, "identity", [tensor("S", "BYTES", [1], ["only"])]))
    assert data == {"OUT_S": "only"}


def test_scalar_value_for_0d_shape_is_shape_mismatch(client: Client) -> None:
    """§4.3: a scalar `value` becomes a 1-element vector, so it does not match a 0-d (`[]`) shape
    (the value is not nested to exactly the declared shape)."""
    frame = infer(client, "identity", [tensor("X", "INT32", [], 7)])
    assert failed_object(frame)["code"] == "TRITON_SHAPE_MISMATCH"


# -- pipeline -----------------------------------------------------------------------------------
def test_pipeline_two_steps(client: Client) -> None:
    """§4.3 pipeline: steps run sequentially with their own inputs; COMPLETED `data` =
    `{<step name or model_name>: {<output>: value}}`."""
    payload = {
        "vm_ip": REF_VM_IP,
        "container_id": REF_CONTAINER,
        "pipeline": [
            {"name": "first", "model_name": "double", "inputs": [fp32("INPUT0", [1.0, 2.0])]},
            {"model_name": "identity", "inputs": [tensor("X", "INT32", [1], [3])]},
        ],
    }
    client.send("inference", payload)
    data = completed_data(client.recv())
    assert data == {"first": {"OUTPUT0": [2.0, 4.0]}, "identity": {"OUT_X": [3]}}


def test_pipeline_non_http_step_fails(client: Client) -> None:
    """§4.3 pipeline: any non-HTTP step fails the request."""
    payload = {
        "vm_ip": REF_VM_IP,
        "container_id": REF_CONTAINER,
        "pipeline": [
            {"model_name": "double", "inputs": [fp32("INPUT0", [1.0])]},
            {
                "model_name": "stream",
                "protocol": "grpc",
                "inputs": [tensor("TEXT", "BYTES", [1], ["x"])],
            },
        ],
    }
    client.send("inference", payload)
    frame = client.recv()
    assert frame["payload"]["status"] == "FAILED"


def test_pipeline_requires_registered_server(client: Client) -> None:
    """§4.3 pipeline: requires a registered server; FAILED errors carry `model_name:"pipeline"`
    for the routing errors."""
    vm_ip, vm_id = create_vm(client)
    container_id = create_container(client, vm_id)
    payload = {
        "vm_ip": vm_ip,
        "container_id": container_id,
        "pipeline": [{"model_name": "double", "inputs": [fp32("INPUT0", [1.0])]}],
    }
    client.send("inference", payload)
    frame = client.recv()
    failed_object(frame)
    assert frame["payload"]["model_name"] == "pipeline"


def test_pipeline_always_checks_docker_cache(client: Client) -> None:
    """§4.3 pipeline: the Docker-cache check always runs (even with `allow_transient`)."""
    container = "feedface0123456789"
    payload = {
        "vm_ip": REF_VM_IP,
        "container_id": container,
        "request": {"allow_transient": True},
        "pipeline": [{"model_name": "double", "inputs": [fp32("INPUT0", [1.0])]}],
    }
    client.send("inference", payload)
    frame = client.recv()
    assert frame["payload"]["status"] == "FAILED"
    assert f"Container '{container[:12]}' not found in known containers" in json.dumps(frame)
