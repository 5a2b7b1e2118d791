"""The wire layer: every server frame of the contract decodes to the right Struct, client frames
encode to the envelope the manager reads (contract §2-§4, §6)."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anytcm import wire
from anytcm._fast import frames as fast_frames

decoder = wire.ServerFrameDecoder()


def decode(obj: Any) -> wire.ServerFrame:
    return decoder.decode(json.dumps(obj).encode())


def raw_value(raw: wire.OutputValue) -> Any:
    """An output value as Python data, whichever form the decoder gave it in."""
    return msgspec.json.decode(raw) if isinstance(raw, msgspec.Raw) else raw


# ------------------------------------------------------------------------------------------------
# the frame catalogue, example by example


def test_auth_ok_legacy_has_no_payload() -> None:
    frame = decode({"type": "auth.ok"})
    assert isinstance(frame, wire.AuthOk)
    assert frame.payload is None


def test_auth_ok_with_capability() -> None:
    frame = decode({"type": "auth.ok", "payload": {"capability": ["json", "shm"]}})
    assert isinstance(frame, wire.AuthOk)
    assert frame.payload is not None
    assert frame.payload.capability == ["json", "shm"]


def test_error_with_message_only() -> None:
    frame = decode({"type": "error", "payload": {"message": "Invalid token: Token has expired"}})
    assert isinstance(frame, wire.ErrorFrame)
    assert frame.payload.message == "Invalid token: Token has expired"
    assert frame.payload.code is None
    assert frame.payload.dropped_type is None
    assert frame.payload.job_type is None
    assert frame.payload.tenant_id is None


def test_error_with_code_only() -> None:
    frame = decode(
        {
            "type": "error",
            "payload": {
                "code": "SYSTEM_SHUTDOWN",
                "message": "Server is shutting down; request rejected.",
            },
        }
    )
    assert isinstance(frame, wire.ErrorFrame)
    assert frame.payload.code == "SYSTEM_SHUTDOWN"
    assert frame.payload.message == "Server is shutting down; request rejected."
    assert frame.payload.dropped_type is None


def test_error_with_code_and_dropped_type() -> None:
    frame = decode(
        {
            "type": "error",
            "payload": {
                "code": "BACKPRESSURE_QUEUE_FULL",
                "message": "queue full",
                "dropped_type": "inference",
            },
        }
    )
    assert isinstance(frame, wire.ErrorFrame)
    assert frame.payload.code == "BACKPRESSURE_QUEUE_FULL"
    assert frame.payload.dropped_type == "inference"


def test_error_with_code_job_type_and_tenant() -> None:
    frame = decode(
        {
            "type": "error",
            "payload": {
                "code": "BACKPRESSURE_INSUFFICIENT_BUDGET",
                "message": "Tenant 'unknown' has insufficient budget",
                "job_type": "inference",
                "tenant_id": "unknown",
            },
        }
    )
    assert isinstance(frame, wire.ErrorFrame)
    assert frame.payload.code == "BACKPRESSURE_INSUFFICIENT_BUDGET"
    assert frame.payload.job_type == "inference"
    assert frame.payload.tenant_id == "unknown"
    assert frame.payload.dropped_type is None


def test_info_response_success() -> None:
    data = {"total_users": 1, "total_queued": 0, "executor_info_available": 2}
    frame = decode(
        {
            "type": "info_response",
            "payload": {
                "job_id": 7,
                "request_type": "queue_stats",
                "status": "success",
                "data": data,
            },
        }
    )
    assert isinstance(frame, wire.InfoResponse)
    assert frame.payload.job_id == 7
    assert frame.payload.request_type == "queue_stats"
    assert frame.payload.status == "success"
    assert frame.payload.data == data
    assert frame.payload.error is None


def test_info_response_error() -> None:
    frame = decode(
        {
            "type": "info_response",
            "payload": {
                "job_id": 3,
                "request_type": "queue_stats",
                "status": "error",
                "error": "boom",
                "data": {"error": "boom"},
            },
        }
    )
    assert isinstance(frame, wire.InfoResponse)
    assert frame.payload.status == "error"
    assert frame.payload.error == "boom"
    assert frame.payload.data == {"error": "boom"}


@pytest.mark.parametrize("status", [True, False])
def test_management_echo_with_extra_keys(status: bool) -> None:
    frame = decode(
        {
            "uuid": "client-1",
            "type": "management",
            "request_id": "client-1:4",
            "_correlation_id": "0123456789abcdef",
            "_auth": {"sub": None, "tenant_id": None, "roles": ["management"], "capability": None},
            "payload": {"status": status, "data": "Job action not found: 'x'"},
        }
    )
    assert isinstance(frame, wire.ManagementReply)
    assert frame.uuid == "client-1"
    assert frame.request_id == "client-1:4"
    assert frame.payload.status is status
    assert frame.payload.data == "Job action not found: 'x'"


def test_management_status_must_be_a_bool() -> None:
    with pytest.raises(wire.FrameDecodeError):
        decode({"type": "management", "payload": {"status": "yes", "data": None}})


def test_inference_completed_with_outputs_kept_raw() -> None:
    frame = decode(
        {
            "type": "inference",
            "uuid": "u",
            "payload": {
                "status": "COMPLETED",
                "data": {"OUT0": [[1.5, 2.0], [3.0, 4.0]], "OUT1": "text"},
                "model_name": "resnet",
            },
        }
    )
    assert isinstance(frame, wire.InferenceReply)
    assert frame.uuid == "u"
    assert frame.payload.status == "COMPLETED"
    assert frame.payload.model_name == "resnet"
    data = frame.payload.data
    assert isinstance(data, dict)
    assert all(isinstance(v, msgspec.Raw) for v in data.values())
    assert raw_value(data["OUT0"]) == [[1.5, 2.0], [3.0, 4.0]]
    assert raw_value(data["OUT1"]) == "text"


def test_inference_start_and_streamed_completed_have_null_data() -> None:
    for status in ("START", "COMPLETED"):
        frame = decode(
            {"type": "inference", "uuid": "u", "payload": {"status": status, "data": None}}
        )
        assert isinstance(frame, wire.InferenceReply)
        assert frame.payload.status == status
        assert frame.payload.data is None
        assert frame.payload.model_name is None


def test_inference_ongoing_carries_a_string() -> None:
    frame = decode(
        {
            "type": "inference",
            "uuid": "u",
            "payload": {"status": "ONGOING", "data": "tok", "model_name": None},
        }
    )
    assert isinstance(frame, wire.InferenceReply)
    assert frame.payload.data == "tok"


def test_inference_failed_object() -> None:
    message = "[TritonThread] TRITON_CIRCUIT_OPEN: model='m' retriable=True reason=open"
    failed = {
        "code": "TRITON_CIRCUIT_OPEN",
        "message": message,
        "retriable": True,
        "retry_after_seconds": 12.5,
    }
    frame = decode(
        {
            "type": "inference",
            "uuid": "u",
            "payload": {"status": "FAILED", "data": failed, "model_name": "m"},
        }
    )
    assert isinstance(frame, wire.InferenceReply)
    data = frame.payload.data
    assert isinstance(data, dict)
    obj = wire.decode_failed_object(data)
    assert obj == wire.FailedObject(
        code="TRITON_CIRCUIT_OPEN",
        message=message,
        retriable=True,
        retry_after_seconds=12.5,
    )


def test_inference_failed_string() -> None:
    frame = decode(
        {
            "type": "inference",
            "uuid": "u",
            "payload": {
                "status": "FAILED",
                "data": "Missing required field 'vm_ip'",
                "model_name": None,
            },
        }
    )
    assert isinstance(frame, wire.InferenceReply)
    assert frame.payload.data == "Missing required field 'vm_ip'"


def test_pipeline_completed_nests_one_level() -> None:
    frame = decode(
        {
            "type": "inference",
            "uuid": "u",
            "payload": {
                "status": "COMPLETED",
                "data": {"step1": {"y": [1, 2]}, "m2": {"z": [[0.5]], "t": "s"}},
                "model_name": None,
            },
        }
    )
    assert isinstance(frame, wire.InferenceReply)
    data = frame.payload.data
    assert isinstance(data, dict)
    step1 = wire.decode_raw_dict(data["step1"])
    m2 = wire.decode_raw_dict(data["m2"])
    assert raw_value(step1["y"]) == [1, 2]
    assert {k: raw_value(v) for k, v in m2.items()} == {"z": [[0.5]], "t": "s"}


def test_alert_has_top_level_fields_and_no_payload() -> None:
    frame = decode(
        {
            "type": "alert",
            "error_type": "TritonServerStateChanged",
            "message": "[TritonThread] Server (127.0.0.1, ctr) state changed",
            "timestamp": 1700000000.25,
        }
    )
    assert frame == wire.Alert(
        error_type="TritonServerStateChanged",
        message="[TritonThread] Server (127.0.0.1, ctr) state changed",
        timestamp=1700000000.25,
    )


# ------------------------------------------------------------------------------------------------
# forward compatibility and malformed input


def test_unknown_fields_are_ignored_everywhere() -> None:
    frame = decode(
        {
            "type": "inference",
            "new_top": {"a": 1},
            "uuid": "u",
            "payload": {
                "status": "COMPLETED",
                "data": {"o": 1},
                "model_name": "m",
                "latency_ms": 3,
            },
        }
    )
    assert isinstance(frame, wire.InferenceReply)
    assert frame.payload.model_name == "m"
    frame2 = decode({"type": "auth.ok", "payload": {"capability": ["json"], "server": "x"}})
    assert isinstance(frame2, wire.AuthOk)
    assert frame2.payload is not None
    assert frame2.payload.capability == ["json"]
    frame3 = decode({"type": "error", "payload": {"message": "m", "hint": "h"}, "ts": 1})
    assert isinstance(frame3, wire.ErrorFrame)
    assert frame3.payload.message == "m"


def test_unknown_type_decodes_to_unknown_frame_with_the_raw_dict() -> None:
    obj = {"type": "metrics_push", "payload": {"x": [1, 2]}, "n": None}
    frame = decode(obj)
    assert isinstance(frame, wire.UnknownFrame)
    assert frame.type == "metrics_push"
    assert frame.raw == obj


def test_missing_or_non_string_type_is_unknown() -> None:
    no_type = decode({"payload": {}})
    assert isinstance(no_type, wire.UnknownFrame)
    assert no_type.type is None
    assert no_type.raw == {"payload": {}}
    int_type = decode({"type": 5})
    assert isinstance(int_type, wire.UnknownFrame)
    assert int_type.type is None


@pytest.mark.parametrize(
    "obj",
    [
        {"type": "error"},  # payload missing
        {"type": "error", "payload": {"message": 5}},
        {"type": "auth.ok", "payload": {"capability": "json"}},
        {"type": "info_response", "payload": {"job_id": 1, "status": 3}},
        {"type": "management", "payload": {"data": 1}},  # status missing
        {"type": "inference", "uuid": "u", "payload": {"data": None}},  # status missing
        {"type": "inference", "uuid": "u", "payload": {"status": "FAILED", "data": [1, 2]}},
        {"type": "alert", "message": ["not", "a", "string"]},
    ],
)
def test_known_type_with_malformed_body_raises(obj: dict[str, Any]) -> None:
    with pytest.raises(wire.FrameDecodeError, match="malformed"):
        decode(obj)


@pytest.mark.parametrize(
    "data",
    [b"", b"not json", b'{"type": "auth.ok"', b"[1, 2]", b'"auth.ok"', b"42", b"\xff\xfe"],
)
def test_non_json_or_non_object_raises(data: bytes) -> None:
    with pytest.raises(wire.FrameDecodeError):
        decoder.decode(data)


def test_frame_decode_error_is_a_value_error() -> None:
    assert issubclass(wire.FrameDecodeError, ValueError)


# ------------------------------------------------------------------------------------------------
# decode_failed_object / decode_raw_dict


def raws(obj: dict[str, Any]) -> dict[str, msgspec.Raw]:
    return {k: msgspec.Raw(json.dumps(v).encode()) for k, v in obj.items()}


def test_decode_failed_object_defaults_and_extra_keys() -> None:
    obj = wire.decode_failed_object(raws({"code": "TRITON_INFERENCE_FAILED", "extra": [1]}))
    assert obj == wire.FailedObject(
        code="TRITON_INFERENCE_FAILED", message="", retriable=False, retry_after_seconds=None
    )


def test_decode_failed_object_int_retry_after() -> None:
    obj = wire.decode_failed_object(
        raws({"code": "C", "message": "m", "retriable": True, "retry_after_seconds": 30})
    )
    assert obj.retry_after_seconds == 30.0
    assert obj.retriable is True


def test_decode_failed_object_without_code_raises() -> None:
    with pytest.raises(msgspec.ValidationError):
        wire.decode_failed_object(raws({"message": "m"}))


def test_decode_raw_dict_one_level_only() -> None:
    inner = wire.decode_raw_dict(msgspec.Raw(b'{"a": {"b": [1, 2]}, "c": "s"}'))
    assert set(inner) == {"a", "c"}
    assert isinstance(inner["a"], msgspec.Raw)
    assert raw_value(inner["a"]) == {"b": [1, 2]}
    assert raw_value(inner["c"]) == "s"


def test_decode_raw_dict_rejects_a_non_object() -> None:
    with pytest.raises(msgspec.ValidationError):
        wire.decode_raw_dict(msgspec.Raw(b"[1, 2]"))
    with pytest.raises(msgspec.ValidationError):
        wire.decode_raw_dict([1, 2])  # numbers the frame decoder parsed


def completed(data: dict[str, Any]) -> bytes:
    return json.dumps(
        {"type": "inference", "uuid": "u", "payload": {"status": "COMPLETED", "data": data}}
    ).encode()


# The numbers decoder is a fast path (`anytcm._fast.frames`): these tests turn it on whatever
# ANYTCM_NO_FAST_PATHS says.


def test_a_small_reply_of_flat_numbers_is_decoded_with_its_numbers() -> None:
    """Parsed in the frame's one pass: ints exact at any size, floats as floats."""
    frame = wire.ServerFrameDecoder(fast_paths=True).decode(
        completed({"A": [1, 2.5, -0.0, 2**64], "B": 7, "C": 1e-3, "D": []})
    )
    assert isinstance(frame, wire.InferenceReply)
    data = frame.payload.data
    assert isinstance(data, dict)
    assert data == {"A": [1, 2.5, -0.0, 2**64], "B": 7, "C": 1e-3, "D": []}
    assert [type(v) for v in data["A"]] == [int, float, float, int]


@pytest.mark.parametrize(
    "data",
    [
        {"A": [[1.5, 2.5]]},  # nested
        {"A": ["x", "y"]},  # BYTES
        {"A": [1.0, None]},  # NaN, written as null
        {"A": [True, 1]},
        {"A": [1.0], "B": "x"},
        {"step": {"A": [1.0]}},  # a pipeline's reply
    ],
)
def test_a_reply_the_numbers_decoder_refuses_is_decoded_as_text(data: dict[str, Any]) -> None:
    frame = wire.ServerFrameDecoder(fast_paths=True).decode(completed(data))
    assert isinstance(frame, wire.InferenceReply)
    assert isinstance(frame.payload.data, dict)
    assert all(isinstance(v, msgspec.Raw) for v in frame.payload.data.values())
    assert {k: raw_value(v) for k, v in frame.payload.data.items()} == data


def test_after_a_refusal_the_numbers_decoder_pauses() -> None:
    """A refused frame costs two decodes, so the next few small frames skip the attempt."""
    decoder = wire.ServerFrameDecoder(fast_paths=True)
    flat, nested = completed({"A": [1.0, 2.0]}), completed({"A": [[1.0, 2.0]]})

    def form(frame: bytes) -> type:
        reply = decoder.decode(frame)
        assert isinstance(reply, wire.InferenceReply)
        assert isinstance(reply.payload.data, dict)
        return type(reply.payload.data["A"])

    assert form(flat) is list
    assert form(nested) is msgspec.Raw
    pause = fast_frames._PAUSE
    assert [form(flat) for _ in range(pause)] == [msgspec.Raw] * pause
    assert form(flat) is list


def test_a_reply_over_the_numbers_size_is_decoded_as_text() -> None:
    values = [0.5] * (fast_frames._NUMBERS_FRAME_BYTES // 4)
    frame = wire.ServerFrameDecoder(fast_paths=True).decode(completed({"A": values}))
    assert isinstance(frame, wire.InferenceReply)
    assert isinstance(frame.payload.data, dict)
    raw = frame.payload.data["A"]
    assert isinstance(raw, msgspec.Raw)
    assert msgspec.json.decode(raw) == values


def test_without_fast_paths_every_output_is_kept_as_text() -> None:
    frame = wire.ServerFrameDecoder(fast_paths=False).decode(completed({"A": [1, 2.5], "B": 7}))
    assert isinstance(frame, wire.InferenceReply)
    assert isinstance(frame.payload.data, dict)
    assert all(isinstance(v, msgspec.Raw) for v in frame.payload.data.values())


# ------------------------------------------------------------------------------------------------
# hypothesis: server frames as dicts -> json -> decoder


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
# Extra keys get a prefix that no modelled field has, so they can never collide with one.
extras = st.dictionaries(st.text(max_size=8).map(lambda s: "x-" + s), json_values, max_size=3)
opt_text = st.none() | st.text(max_size=16)


def with_extras(draw: st.DrawFn, obj: dict[str, Any]) -> dict[str, Any]:
    return {**draw(extras), **obj}


@st.composite
def auth_ok_frames(draw: st.DrawFn) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "auth.ok"}
    if draw(st.booleans()):
        payload: dict[str, Any] = {}
        if draw(st.booleans()):
            payload["capability"] = draw(st.lists(st.text(max_size=8), max_size=4))
        frame["payload"] = with_extras(draw, payload)
    return with_extras(draw, frame)


@st.composite
def error_frames(draw: st.DrawFn) -> dict[str, Any]:
    payload: dict[str, Any] = {}
    for key in ("message", "code", "dropped_type", "job_type", "tenant_id"):
        if draw(st.booleans()):
            payload[key] = draw(st.text(max_size=16) if key == "message" else opt_text)
    return with_extras(draw, {"type": "error", "payload": with_extras(draw, payload)})


@st.composite
def info_frames(draw: st.DrawFn) -> dict[str, Any]:
    payload: dict[str, Any] = {}
    options = {
        "job_id": json_values,
        "request_type": opt_text,
        "status": st.sampled_from(["success", "error"]) | st.text(max_size=8),
        "data": json_values,
        "error": opt_text,
    }
    for key, strategy in options.items():
        if draw(st.booleans()):
            payload[key] = draw(strategy)
    return with_extras(draw, {"type": "info_response", "payload": with_extras(draw, payload)})


@st.composite
def management_frames(draw: st.DrawFn) -> dict[str, Any]:
    payload: dict[str, Any] = {"status": draw(st.booleans())}
    if draw(st.booleans()):
        payload["data"] = draw(json_values)
    frame: dict[str, Any] = {"type": "management", "payload": with_extras(draw, payload)}
    if draw(st.booleans()):
        frame["uuid"] = draw(opt_text)
    if draw(st.booleans()):
        frame["request_id"] = draw(json_values)
    if draw(st.booleans()):
        frame["_correlation_id"] = draw(st.text(max_size=16))
        frame["_auth"] = {"sub": None, "tenant_id": None, "roles": [], "capability": None}
    return with_extras(draw, frame)


json_numbers = st.integers(min_value=-(2**70), max_value=2**70) | st.floats(
    allow_nan=False, allow_infinity=False
)
flat_numbers = st.lists(json_numbers, max_size=6)


@st.composite
def inference_frames(draw: st.DrawFn) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "status": draw(st.sampled_from(["START", "ONGOING", "COMPLETED", "FAILED"]))
    }
    if draw(st.booleans()):
        payload["data"] = draw(
            st.none()
            | st.text(max_size=16)
            | st.dictionaries(st.text(max_size=6), json_values, max_size=4)
            # outputs the decoder may parse with the frame (flat numbers, bare numbers)
            | st.dictionaries(st.text(max_size=6), flat_numbers | json_numbers, max_size=3)
        )
    if draw(st.booleans()):
        payload["model_name"] = draw(opt_text)
    frame: dict[str, Any] = {"type": "inference", "payload": with_extras(draw, payload)}
    if draw(st.booleans()):
        frame["uuid"] = draw(opt_text)
    return with_extras(draw, frame)


@st.composite
def alert_frames(draw: st.DrawFn) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "alert"}
    if draw(st.booleans()):
        frame["error_type"] = draw(opt_text)
    if draw(st.booleans()):
        frame["message"] = draw(st.text(max_size=16))
    if draw(st.booleans()):
        frame["timestamp"] = draw(
            st.none()
            | st.floats(min_value=0, max_value=4e9)
            | st.integers(min_value=0, max_value=2**40)
        )
    return with_extras(draw, frame)


@st.composite
def unknown_frames(draw: st.DrawFn) -> dict[str, Any]:
    frame_type = draw(st.text(max_size=12).filter(lambda t: t not in wire.KNOWN_SERVER_TYPES))
    return with_extras(draw, {"type": frame_type, "payload": draw(json_values)})


server_frames = (
    auth_ok_frames()
    | error_frames()
    | info_frames()
    | management_frames()
    | inference_frames()
    | alert_frames()
    | unknown_frames()
)


def check_decoded(frame: wire.ServerFrame, obj: dict[str, Any]) -> None:
    """Every modelled field equals the dict's value (or the default when absent)."""
    if isinstance(frame, wire.AuthOk):
        assert obj["type"] == "auth.ok"
        if "payload" not in obj:
            assert frame.payload is None
        else:
            assert frame.payload is not None
            assert frame.payload.capability == obj["payload"].get("capability")
    elif isinstance(frame, wire.ErrorFrame):
        assert obj["type"] == "error"
        p = obj["payload"]
        assert frame.payload.message == p.get("message", "")
        assert frame.payload.code == p.get("code")
        assert frame.payload.dropped_type == p.get("dropped_type")
        assert frame.payload.job_type == p.get("job_type")
        assert frame.payload.tenant_id == p.get("tenant_id")
    elif isinstance(frame, wire.InfoResponse):
        assert obj["type"] == "info_response"
        p = obj["payload"]
        assert frame.payload.job_id == p.get("job_id")
        assert frame.payload.request_type == p.get("request_type")
        assert frame.payload.status == p.get("status", "success")
        assert frame.payload.data == p.get("data")
        assert frame.payload.error == p.get("error")
    elif isinstance(frame, wire.ManagementReply):
        assert obj["type"] == "management"
        assert frame.uuid == obj.get("uuid")
        assert frame.request_id == obj.get("request_id")
        assert frame.payload.status is obj["payload"]["status"]
        assert frame.payload.data == obj["payload"].get("data")
    elif isinstance(frame, wire.InferenceReply):
        assert obj["type"] == "inference"
        p = obj["payload"]
        assert frame.uuid == obj.get("uuid")
        assert frame.payload.status == p["status"]
        assert frame.payload.model_name == p.get("model_name")
        expected = p.get("data")
        if isinstance(expected, dict):
            assert isinstance(frame.payload.data, dict)
            assert {k: raw_value(v) for k, v in frame.payload.data.items()} == expected
        else:
            assert frame.payload.data == expected
    elif isinstance(frame, wire.Alert):
        assert obj["type"] == "alert"
        assert frame.error_type == obj.get("error_type")
        assert frame.message == obj.get("message", "")
        assert frame.timestamp == obj.get("timestamp")
        if frame.timestamp is not None:
            assert isinstance(frame.timestamp, float)
    else:
        assert isinstance(frame, wire.UnknownFrame)
        assert obj["type"] not in wire.KNOWN_SERVER_TYPES
        assert frame.type == obj["type"]
        assert frame.raw == obj


@settings(max_examples=100, deadline=None)
@given(obj=server_frames, indent=st.none() | st.integers(min_value=0, max_value=2))
def test_server_frames_round_trip(obj: dict[str, Any], indent: int | None) -> None:
    frame = decoder.decode(json.dumps(obj, indent=indent).encode())
    check_decoded(frame, obj)


# The public classes a decoded frame is an instance of (the fast and general paths decode an
# inference reply into different subclasses of InferenceReply).
_FRAME_CLASSES = (
    wire.AuthOk,
    wire.ErrorFrame,
    wire.InfoResponse,
    wire.ManagementReply,
    wire.InferenceReply,
    wire.Alert,
    wire.UnknownFrame,
)


@settings(max_examples=100, deadline=None)
@given(obj=server_frames, indent=st.none() | st.integers(min_value=0, max_value=2))
def test_the_fast_paths_decode_as_the_general_path(obj: dict[str, Any], indent: int | None) -> None:
    """Each frame decodes to the same frame (or fails the same way) with and without them."""
    data = json.dumps(obj, indent=indent).encode()
    frames = []
    for fast_paths in (True, False):
        try:
            frame = wire.ServerFrameDecoder(fast_paths=fast_paths).decode(data)
        except wire.FrameDecodeError as exc:
            frames.append(str(exc))
        else:
            check_decoded(frame, obj)
            frames.append(next(c.__name__ for c in _FRAME_CLASSES if isinstance(frame, c)))
    assert frames[0] == frames[1]


@settings(max_examples=40, deadline=None)
@given(
    failed=st.fixed_dictionaries(
        {"code": st.text(max_size=20)},
        optional={
            "message": st.text(max_size=30),
            "retriable": st.booleans(),
            "retry_after_seconds": st.none() | st.floats(min_value=0, max_value=1e6),
        },
    ),
    extra=extras,
)
def test_failed_object_round_trip(failed: dict[str, Any], extra: dict[str, Any]) -> None:
    frame = decode(
        {"type": "inference", "uuid": "u", "payload": {"status": "FAILED", "data": extra | failed}}
    )
    assert isinstance(frame, wire.InferenceReply)
    assert isinstance(frame.payload.data, dict)
    obj = wire.decode_failed_object(frame.payload.data)
    assert obj.code == failed["code"]
    assert obj.message == failed.get("message", "")
    assert obj.retriable is failed.get("retriable", False)
    assert obj.retry_after_seconds == failed.get("retry_after_seconds")


# ------------------------------------------------------------------------------------------------
# client frames: Structs -> wire.encode -> json.loads


names = st.text(max_size=10)
raw_objects = st.dictionaries(names, json_values, max_size=3)


@st.composite
def raw_inputs(draw: st.DrawFn) -> tuple[msgspec.Raw, Any]:
    """An input already encoded by a carrier, with odd spacing to prove it is kept verbatim."""
    obj = draw(raw_objects)
    text = json.dumps(obj, indent=draw(st.none() | st.integers(0, 2)), separators=None)
    return msgspec.Raw(text.encode()), obj


@st.composite
def input_items(draw: st.DrawFn) -> tuple[wire.InputItem, Any, bytes | None]:
    """(item, the JSON the server must see, the exact bytes that must appear, if any)."""
    kind = draw(st.sampled_from(["json", "manager", "shm", "raw"]))
    shape = draw(st.lists(st.integers(0, 2**31), max_size=3))
    if kind == "json":
        name, dtype, data = draw(names), draw(names), draw(json_values)
        item: wire.InputItem = wire.JsonTensor(name=name, shape=shape, datatype=dtype, data=data)
        return item, {"name": name, "shape": shape, "datatype": dtype, "data": data}, None
    if kind == "manager":
        name, dtype, value = draw(names), draw(names), draw(json_values)
        item = wire.ManagerTensor(name=name, dims=shape, type=dtype, value=value)
        return item, {"name": name, "dims": shape, "type": dtype, "value": value}, None
    if kind == "shm":
        name, key, dtype = draw(names), draw(names), draw(names)
        offset, size = draw(st.integers(0, 2**40)), draw(st.integers(1, 2**40))
        item = wire.SHMReference(
            name=name, shm_key=key, offset=offset, byte_size=size, shape=shape, dtype=dtype
        )
        expected = {
            "name": name,
            "shm_key": key,
            "offset": offset,
            "byte_size": size,
            "shape": shape,
            "dtype": dtype,
        }
        return item, expected, None
    raw, obj = draw(raw_inputs())
    return raw, obj, bytes(raw)


@st.composite
def inference_frames_out(
    draw: st.DrawFn,
) -> tuple[wire.InferenceFrame, dict[str, Any], list[bytes]]:
    uuid, vm_ip, container_id = draw(names), draw(names), draw(names)
    expected: dict[str, Any] = {"vm_ip": vm_ip, "container_id": container_id}
    verbatim: list[bytes] = []

    def inputs() -> tuple[list[wire.InputItem], list[Any]]:
        drawn = draw(st.lists(input_items(), max_size=3))
        verbatim.extend(v for _, _, v in drawn if v is not None)
        return [i for i, _, _ in drawn], [e for _, e, _ in drawn]

    model_name = draw(st.none() | names)
    if model_name is not None:
        expected["model_name"] = model_name
    request = None
    if draw(st.booleans()):
        items, expected_items = inputs()
        protocol = draw(st.sampled_from(["http", "grpc"]))
        allow_transient = draw(st.booleans())
        output_name = draw(st.none() | names)
        request = wire.InferenceOptions(
            inputs=items,
            protocol=protocol,  # type: ignore[arg-type]
            allow_transient=allow_transient,
            output_name=output_name,
        )
        expected_request: dict[str, Any] = {"inputs": expected_items}
        if protocol != "http":
            expected_request["protocol"] = protocol
        if allow_transient:
            expected_request["allow_transient"] = True
        if output_name is not None:
            expected_request["output_name"] = output_name
        expected["request"] = expected_request
    pipeline = None
    if draw(st.booleans()):
        pipeline = []
        expected_steps = []
        for _ in range(draw(st.integers(0, 2))):
            step_model, step_name = draw(names), draw(st.none() | names)
            items, expected_items = inputs()
            pipeline.append(wire.PipelineStep(model_name=step_model, inputs=items, name=step_name))
            step: dict[str, Any] = {"model_name": step_model, "inputs": expected_items}
            if step_name is not None:
                step["name"] = step_name
            expected_steps.append(step)
        expected["pipeline"] = expected_steps
    payload = wire.InferencePayload(
        vm_ip=vm_ip,
        container_id=container_id,
        model_name=model_name,
        request=request,
        pipeline=pipeline,
    )
    frame = wire.InferenceFrame(uuid=uuid, payload=payload)
    return frame, {"uuid": uuid, "type": "inference", "payload": expected}, verbatim


@settings(max_examples=100, deadline=None)
@given(case=inference_frames_out())
def test_inference_frame_encoding(
    case: tuple[wire.InferenceFrame, dict[str, Any], list[bytes]],
) -> None:
    frame, expected, verbatim = case
    encoded = wire.encode(frame)
    assert json.loads(encoded) == expected
    for chunk in verbatim:
        assert chunk in encoded  # carrier-encoded inputs are embedded byte for byte


def test_inference_defaults_are_not_written() -> None:
    payload = wire.InferencePayload(
        vm_ip="10.0.0.1",
        container_id="c",
        model_name="m",
        request=wire.InferenceOptions(inputs=[]),
    )
    parsed = json.loads(wire.encode(wire.InferenceFrame(uuid="u", payload=payload)))
    assert parsed == {
        "uuid": "u",
        "type": "inference",
        "payload": {
            "vm_ip": "10.0.0.1",
            "container_id": "c",
            "model_name": "m",
            "request": {"inputs": []},
        },
    }


def test_non_default_inference_options_are_written() -> None:
    options = wire.InferenceOptions(
        inputs=[], protocol="grpc", allow_transient=True, output_name="text"
    )
    parsed = json.loads(
        wire.encode(
            wire.InferenceFrame(
                uuid="u", payload=wire.InferencePayload("ip", "c", "m", request=options)
            )
        )
    )
    assert parsed["payload"]["request"] == {
        "inputs": [],
        "protocol": "grpc",
        "allow_transient": True,
        "output_name": "text",
    }


def test_raw_input_is_embedded_verbatim() -> None:
    raw = msgspec.Raw(b'{"name" : "x",  "shape":[2],"datatype":"FP32","data":[1.0,2.5]}')
    payload = wire.InferencePayload(
        vm_ip="ip", container_id="c", model_name="m", request=wire.InferenceOptions(inputs=[raw])
    )
    encoded = wire.encode(wire.InferenceFrame(uuid="u", payload=payload))
    assert bytes(raw) in encoded
    assert json.loads(encoded)["payload"]["request"]["inputs"] == [
        {"name": "x", "shape": [2], "datatype": "FP32", "data": [1.0, 2.5]}
    ]


@settings(max_examples=100, deadline=None)
@given(
    vm_ip=st.text(max_size=12),
    container_id=st.text(max_size=12),
    # Look-alikes of the field the cut is made at, inside the strings.
    model=st.text(max_size=12) | st.sampled_from(['"inputs":[]', '\\"inputs\\":[]', "],"]),
    allow_transient=st.booleans(),
    inputs=st.lists(
        st.dictionaries(names, st.integers() | st.text(max_size=5), max_size=3), max_size=3
    ),
)
def test_inline_payload_is_what_the_structs_encode_to(
    vm_ip: str,
    container_id: str,
    model: str,
    allow_transient: bool,
    inputs: list[dict[str, Any]],
) -> None:
    encoded = [json.dumps(item).encode() for item in inputs]
    spliced = wire.encode_inline_payload(vm_ip, container_id, model, allow_transient, encoded)
    payload = wire.InferencePayload(
        vm_ip=vm_ip,
        container_id=container_id,
        model_name=model,
        request=wire.InferenceOptions(
            inputs=[msgspec.Raw(item) for item in encoded], allow_transient=allow_transient
        ),
    )
    assert bytes(spliced) == bytes(wire.encode_payload(payload))  # byte for byte
    assert json.loads(bytes(spliced))["request"]["inputs"] == inputs


@settings(max_examples=60, deadline=None)
@given(
    uuid=names,
    token=st.none() | st.text(max_size=20),
    capability=st.none() | st.lists(names, max_size=3),
    client=st.none()
    | st.builds(wire.AuthClientInfo, roles=st.none() | st.lists(names, max_size=3)),
)
def test_auth_frame_encoding(
    uuid: str,
    token: str | None,
    capability: list[str] | None,
    client: wire.AuthClientInfo | None,
) -> None:
    frame = wire.AuthFrame(
        uuid=uuid, payload=wire.AuthPayload(token=token, capability=capability, client=client)
    )
    expected_payload: dict[str, Any] = {}
    if token is not None:
        expected_payload["token"] = token
    if capability is not None:
        expected_payload["capability"] = capability  # an empty list is meaningful: kept
    if client is not None:
        expected_payload["client"] = {} if client.roles is None else {"roles": client.roles}
    assert json.loads(wire.encode(frame)) == {
        "uuid": uuid,
        "type": "auth",
        "payload": expected_payload,
    }


@settings(max_examples=40, deadline=None)
@given(
    uuid=names,
    action=names,
    job_id=st.none() | st.integers(min_value=0, max_value=2**63 - 1),
)
def test_info_frame_encoding(uuid: str, action: str, job_id: int | None) -> None:
    frame = wire.InfoFrame(uuid=uuid, payload=wire.InfoPayload(action=action, job_id=job_id))
    expected: dict[str, Any] = {"action": action}
    if job_id is not None:
        expected["job_id"] = job_id
    assert json.loads(wire.encode(frame)) == {"uuid": uuid, "type": "info", "payload": expected}


@settings(max_examples=40, deadline=None)
@given(uuid=names, payload=st.dictionaries(names, json_values, max_size=4), request_id=names)
def test_management_frame_encoding(uuid: str, payload: dict[str, Any], request_id: str) -> None:
    frame = wire.ManagementFrame(uuid=uuid, payload=payload, request_id=request_id)
    assert json.loads(wire.encode(frame)) == {
        "uuid": uuid,
        "type": "management",
        "payload": payload,
        "request_id": request_id,  # the extra top-level key the manager echoes back
    }


def test_client_frames_are_utf8_json_text() -> None:
    encoded = wire.encode(wire.InfoFrame(uuid="ü-1", payload=wire.InfoPayload("queue_stats", 1)))
    assert isinstance(encoded, bytes)
    assert json.loads(encoded.decode("utf-8"))["uuid"] == "ü-1"
