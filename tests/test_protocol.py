"""ClientProtocol, driven with frames as bytes: one test per rule (contract §3-§7)."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anytcm import wire
from anytcm.errors import (
    AuthError,
    Backpressure,
    ConnectError,
    ConnectionLost,
    ContractError,
    Forbidden,
    InferenceFailed,
    ProtocolError,
    ServerShutdown,
)
from anytcm.protocol import (
    AuthAccepted,
    AuthRejected,
    ClientProtocol,
    ConnectionFailing,
    Event,
    InferenceCompleted,
    InferenceProgress,
    InfoCompleted,
    MalformedFrame,
    ManagementCompleted,
    ProtocolStateError,
    ProtocolViolation,
    RequestFailed,
    StaleReply,
    Unsolicited,
)

UUID = "client-7"
TOKEN = "tok-3f9a-very-secret"


def enc(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def new_protocol(**kwargs: Any) -> ClientProtocol:
    return ClientProtocol(UUID, token=TOKEN, **kwargs)


def opened(**kwargs: Any) -> ClientProtocol:
    p = new_protocol(**kwargs)
    p.auth()
    assert isinstance(p.receive(enc({"type": "auth.ok"})), AuthAccepted)
    return p


PAYLOAD = wire.InferencePayload(
    vm_ip="10.0.0.1",
    container_id="ctr-1",
    model_name="m",
    request=wire.InferenceOptions(inputs=[]),
)


def inference(
    status: str, data: Any = None, model_name: str | None = None, uuid: str = UUID
) -> bytes:
    return enc(
        {
            "type": "inference",
            "uuid": uuid,
            "payload": {"status": status, "data": data, "model_name": model_name},
        }
    )


def info_reply(
    job_id: Any, data: Any = None, status: str = "success", error: str | None = None
) -> bytes:
    payload: dict[str, Any] = {
        "job_id": job_id,
        "request_type": "queue_stats",
        "status": status,
        "data": data,
    }
    if error is not None:
        payload["error"] = error
    return enc({"type": "info_response", "payload": payload})


def mgmt_reply(request_id: Any, status: bool = True, data: Any = None) -> bytes:
    return enc(
        {
            "uuid": UUID,
            "type": "management",
            "request_id": request_id,
            "_correlation_id": "00112233aabbccdd",
            "_auth": {"sub": None, "tenant_id": None, "roles": ["management"], "capability": None},
            "payload": {"status": status, "data": data},
        }
    )


def error(message: str, **fields: Any) -> bytes:
    return enc({"type": "error", "payload": {"message": message, **fields}})


def nack(dropped_type: str, code: str = "BACKPRESSURE_QUEUE_FULL") -> bytes:
    return error("queue full", code=code, dropped_type=dropped_type)


ALERT = enc(
    {
        "type": "alert",
        "error_type": "TritonServerStateChanged",
        "message": "[TritonThread] Server (127.0.0.1, ctr) state changed: "
        "['status: ready -> unhealthy']",
        "timestamp": 1700000000.5,
    }
)
BUDGET = error(
    "Tenant 'unknown' has insufficient budget for inference jobs; requests are delayed.",
    code="BACKPRESSURE_INSUFFICIENT_BUDGET",
    job_type="inference",
    tenant_id="unknown",
)


def state_of(p: ClientProtocol) -> str:
    """Read without mypy narrowing the attribute across `receive` calls."""
    return p.state


def abandoned(p: ClientProtocol) -> bool:
    return p.inference_abandoned


def ready(p: ClientProtocol) -> bool:
    return p.inference_ready


def mgmt_ready(p: ClientProtocol) -> bool:
    return p.management_ready


def failed_error(event: Event) -> Any:
    assert isinstance(event, RequestFailed)
    return event.error


# ------------------------------------------------------------------------------------------------
# auth


def test_auth_frame_content() -> None:
    p = new_protocol(capabilities=("shm", "json"), roles=("inference", "management"))
    frame = json.loads(p.auth())
    assert frame == {
        "uuid": UUID,
        "type": "auth",
        "payload": {
            "token": TOKEN,
            "capability": ["shm", "json"],
            "client": {"roles": ["inference", "management"]},
        },
    }
    assert p.state == "authenticating"


def test_auth_frame_without_token_capabilities_or_roles() -> None:
    frame = json.loads(ClientProtocol(UUID).auth())
    assert frame == {"uuid": UUID, "type": "auth", "payload": {}}


def test_auth_frame_keeps_an_empty_capability_list() -> None:
    # An empty list still asks for negotiation (the manager answers ["json"]); None does not.
    frame = json.loads(new_protocol(capabilities=()).auth())
    assert frame["payload"]["capability"] == []


def test_auth_only_once() -> None:
    p = new_protocol()
    p.auth()
    with pytest.raises(ProtocolStateError):
        p.auth()


def test_no_request_before_auth_is_accepted() -> None:
    p = new_protocol()
    with pytest.raises(ProtocolStateError):
        p.send_inference(PAYLOAD)
    p.auth()
    assert not ready(p)
    assert not mgmt_ready(p)
    assert not p.info_ready("queue_stats")
    with pytest.raises(ProtocolStateError):
        p.send_info("queue_stats")
    with pytest.raises(ProtocolStateError):
        p.send_management({"action": "creation"})


def test_auth_accepted_legacy() -> None:
    p = new_protocol()
    p.auth()
    event = p.receive(enc({"type": "auth.ok"}))
    assert event == AuthAccepted(None)
    assert p.state == "open"
    assert p.granted is None
    assert ready(p)
    assert mgmt_ready(p)
    assert p.info_ready("anything")


def test_auth_accepted_negotiated_stores_granted() -> None:
    p = new_protocol(capabilities=("shm", "protobuf", "json"))
    p.auth()
    event = p.receive(enc({"type": "auth.ok", "payload": {"capability": ["shm", "json"]}}))
    assert event == AuthAccepted(("shm", "json"))
    assert p.granted == ("shm", "json")
    assert p.state == "open"


def test_auth_rejected() -> None:
    p = new_protocol()
    p.auth()
    event = p.receive(error("Invalid token: Token has expired"))
    assert isinstance(event, AuthRejected)
    assert not event.uuid_conflict
    assert isinstance(event.error, AuthError)
    assert isinstance(event.error, ConnectError)
    assert event.error.server_message == "Invalid token: Token has expired"
    assert "Token has expired" in str(event.error)
    assert "token" in str(event.error).split("(")[-1]  # the hint names what to check
    assert p.state == "closed"
    with pytest.raises(ProtocolStateError):
        p.send_info("queue_stats")


def test_auth_rejected_uuid_conflict() -> None:
    p = new_protocol()
    p.auth()
    event = p.receive(error(f"UUID '{UUID}' is already connected"))
    assert isinstance(event, AuthRejected)
    assert event.uuid_conflict
    assert event.error.server_message == f"UUID '{UUID}' is already connected"
    assert "different" in str(event.error)


def test_uuid_mismatch_at_auth_is_not_a_conflict() -> None:
    p = new_protocol()
    p.auth()
    event = p.receive(error("UUID mismatch. Expected 'a', got 'b'"))
    assert isinstance(event, AuthRejected)
    assert not event.uuid_conflict


@pytest.mark.parametrize("pushed", [ALERT, BUDGET, enc({"type": "brand_new", "x": 1})])
def test_pushed_frames_racing_the_auth_reply_are_unsolicited(pushed: bytes) -> None:
    # The budget warning case is a regression: it was taken for an auth refusal.
    p = new_protocol()
    p.auth()
    event = p.receive(pushed)
    assert isinstance(event, Unsolicited)
    assert state_of(p) == "authenticating"
    assert p.receive(enc({"type": "auth.ok"})) == AuthAccepted(None)
    assert state_of(p) == "open"


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"[1]",
        b"\xff\xfe{}",  # not UTF-8
        enc({"type": "inference", "payload": {"data": 1}}),  # a known type, wrong types
        enc({"type": "info_response", "payload": {"job_id": "x", "status": 3}}),
        # Nested far beyond any real frame: the decoders raise RecursionError for these.
        b'{"type":"error","payload":{"message":' + b"[" * 1000 + b"]" * 1000 + b"}}",
        b'{"type":"novel","x":' + b"[" * 1000 + b"]" * 1000 + b"}",
    ],
)
def test_an_unreadable_frame_closes_the_protocol_and_fails_what_is_pending(data: bytes) -> None:
    p = opened()
    p.send_inference(PAYLOAD)
    p.send_info("queue_stats")
    event = p.receive(data)
    assert isinstance(event, MalformedFrame)
    assert isinstance(event.error, ProtocolError)
    assert event.error.excerpt  # quotes what arrived
    assert repr(data[:20].decode("utf-8", "replace"))[1:-1][:10] in event.error.excerpt
    assert len(event.error.excerpt) < 200  # a quote, never the whole frame
    assert not ready(p)  # nothing is routed on a broken connection
    failed = p.connection_lost(event.error)
    assert {f.kind for f in failed} == {"inference", "info"}
    for f in failed:
        assert isinstance(f.error, ProtocolError)
        assert f.error.outcome_unknown
        assert f.error.excerpt == event.error.excerpt


def test_a_stray_auth_ok_on_an_open_connection_is_unsolicited() -> None:
    p = opened()
    event = p.receive(enc({"type": "auth.ok"}))
    assert isinstance(event, Unsolicited)
    assert isinstance(event.frame, wire.AuthOk)


def test_repr_never_contains_the_token() -> None:
    p = new_protocol(capabilities=("json",), roles=("inference",))
    assert TOKEN not in repr(p)
    assert UUID in repr(p)
    p.auth()
    assert TOKEN not in repr(p)
    p.receive(enc({"type": "auth.ok"}))
    assert TOKEN not in repr(p)
    assert TOKEN not in str(p)


# ------------------------------------------------------------------------------------------------
# inference


def test_send_inference_frame() -> None:
    p = opened()
    frame = json.loads(p.send_inference(PAYLOAD))
    assert frame["uuid"] == UUID
    assert frame["type"] == "inference"
    assert frame["payload"]["model_name"] == "m"


def test_one_inference_in_flight() -> None:
    p = opened()
    p.send_inference(PAYLOAD)
    assert not ready(p)
    with pytest.raises(ProtocolStateError):
        p.send_inference(PAYLOAD)


def test_completed_gives_raw_outputs_and_frees_the_slot() -> None:
    p = opened()
    p.send_inference(PAYLOAD)
    event = p.receive(inference("COMPLETED", {"OUT": [[1, 2], [3, 4]], "S": "x"}, "m"))
    assert isinstance(event, InferenceCompleted)
    assert event.model_name == "m"
    assert event.outputs is not None
    out, text = event.outputs["OUT"], event.outputs["S"]
    assert isinstance(out, msgspec.Raw)  # nested, and strings: kept as text
    assert isinstance(text, msgspec.Raw)
    assert msgspec.json.decode(out) == [[1, 2], [3, 4]]
    assert msgspec.json.decode(text) == "x"
    assert ready(p)
    p.send_inference(PAYLOAD)  # the slot is free again


def test_failed_object_is_inference_failed() -> None:
    p = opened()
    p.send_inference(PAYLOAD)
    message = "[TritonThread] TRITON_CIRCUIT_OPEN: model='m' retriable=True reason=breaker open"
    data = {
        "code": "TRITON_CIRCUIT_OPEN",
        "message": message,
        "retriable": True,
        "retry_after_seconds": 30,
    }
    event = p.receive(inference("FAILED", data, "m"))
    assert isinstance(event, RequestFailed)
    assert event.kind == "inference"
    assert event.key is None
    err = event.error
    assert isinstance(err, InferenceFailed)
    assert err.code == "TRITON_CIRCUIT_OPEN"
    assert err.retriable is True
    assert err.retry_after == 30.0
    assert err.model_name == "m"
    assert err.server_message == message
    assert "breaker open" in str(err)
    assert ready(p)


def test_failed_object_defaults() -> None:
    p = opened()
    p.send_inference(PAYLOAD)
    err = failed_error(p.receive(inference("FAILED", {"code": "TRITON_SHAPE_MISMATCH"}, "unknown")))
    assert isinstance(err, InferenceFailed)
    assert err.code == "TRITON_SHAPE_MISMATCH"
    assert err.retriable is False
    assert err.retry_after is None
    assert err.model_name == "unknown"


def test_failed_object_without_code_is_still_a_failure() -> None:
    p = opened()
    p.send_inference(PAYLOAD)
    err = failed_error(p.receive(inference("FAILED", {"oops": 1}, "m")))
    assert isinstance(err, InferenceFailed)
    assert err.code == "UNKNOWN"
    assert ready(p)


def test_failed_string_is_contract_error() -> None:
    p = opened()
    p.send_inference(PAYLOAD)
    err = failed_error(p.receive(inference("FAILED", "Missing required field 'vm_ip'")))
    assert isinstance(err, ContractError)
    assert isinstance(err, ValueError)
    assert err.server_message == "Missing required field 'vm_ip'"
    assert ready(p)


def test_streaming_progress_then_completed() -> None:
    p = opened()
    p.send_inference(PAYLOAD)
    assert p.receive(inference("START")) == InferenceProgress("START", None)
    assert not ready(p)
    assert p.receive(inference("ONGOING", "tok1")) == InferenceProgress("ONGOING", "tok1")
    assert p.receive(inference("ONGOING", "tok2")) == InferenceProgress("ONGOING", "tok2")
    assert not ready(p)
    assert p.receive(inference("COMPLETED", None, "m")) == InferenceCompleted(None, "m")
    assert ready(p)


def test_streaming_failed_midway() -> None:
    p = opened()
    p.send_inference(PAYLOAD)
    p.receive(inference("START"))
    err = failed_error(p.receive(inference("FAILED", {"code": "STREAM_DECODE_ERROR"}, "m")))
    assert isinstance(err, InferenceFailed)
    assert err.code == "STREAM_DECODE_ERROR"
    assert ready(p)


def test_inference_frame_without_inference_in_flight_is_unsolicited() -> None:
    p = opened()
    event = p.receive(inference("COMPLETED", {"o": 1}, "m"))
    assert isinstance(event, Unsolicited)
    assert isinstance(event.frame, wire.InferenceReply)
    assert ready(p)


def test_inference_frame_for_another_uuid_is_unsolicited() -> None:
    p = opened()
    p.send_inference(PAYLOAD)
    event = p.receive(inference("COMPLETED", {"o": 1}, "m", uuid="client-7-old"))
    assert isinstance(event, Unsolicited)
    assert not ready(p)  # ours is still in flight
    assert isinstance(p.receive(inference("COMPLETED", {"o": 2}, "m")), InferenceCompleted)


def test_an_unknown_status_for_the_inference_in_flight_is_malformed() -> None:
    # Waiting on would only run out the caller's deadline: no rule says what follows it.
    p = opened()
    p.send_inference(PAYLOAD)
    event = p.receive(inference("PAUSED"))
    assert isinstance(event, MalformedFrame)
    assert "'PAUSED'" in str(event.error)
    assert not ready(p)


def test_abandon_then_late_completed_is_stale_and_frees_the_slot() -> None:
    p = opened()
    p.send_inference(PAYLOAD)
    p.abandon_inference()
    assert abandoned(p)
    assert not ready(p)
    with pytest.raises(ProtocolStateError):
        p.send_inference(PAYLOAD)  # the late answer could be taken for the new one's
    event = p.receive(inference("COMPLETED", {"o": 1}, "m"))
    assert isinstance(event, StaleReply)
    assert event.kind == "inference"
    assert not abandoned(p)
    assert ready(p)
    p.send_inference(PAYLOAD)
    assert isinstance(p.receive(inference("COMPLETED", {"o": 2}, "m")), InferenceCompleted)


def test_abandoned_stream_stays_abandoned_until_its_final_frame() -> None:
    p = opened()
    p.send_inference(PAYLOAD)
    p.receive(inference("START"))
    p.abandon_inference()
    assert isinstance(p.receive(inference("ONGOING", "t")), StaleReply)
    assert abandoned(p)
    assert isinstance(p.receive(inference("FAILED", "Unexpected error: x")), StaleReply)
    assert ready(p)


def test_late_nack_for_an_abandoned_inference_is_stale() -> None:
    p = opened()
    p.send_inference(PAYLOAD)
    p.abandon_inference()
    event = p.receive(nack("inference"))
    assert isinstance(event, StaleReply)
    assert event.kind == "inference"
    assert ready(p)


def test_abandon_when_idle_is_a_no_op() -> None:
    p = opened()
    p.abandon_inference()
    assert ready(p)
    assert not abandoned(p)


@pytest.mark.parametrize("code", ["BACKPRESSURE_QUEUE_FULL", "BACKPRESSURE_EXECUTOR_FULL"])
def test_inference_nack_is_backpressure(code: str) -> None:
    p = opened()
    p.send_inference(PAYLOAD)
    event = p.receive(nack("inference", code))
    assert isinstance(event, RequestFailed)
    assert event.kind == "inference"
    assert isinstance(event.error, Backpressure)
    assert event.error.code == code
    assert event.error.dropped_type == "inference"
    assert ready(p)


def test_inference_nack_without_inference_in_flight_is_unsolicited() -> None:
    p = opened()
    assert isinstance(p.receive(nack("inference")), Unsolicited)


def test_forbidden_inference() -> None:
    p = opened()
    p.send_inference(PAYLOAD)
    event = p.receive(error("Forbidden: missing 'inference' role"))
    assert isinstance(event, RequestFailed)
    assert event.kind == "inference"
    assert isinstance(event.error, Forbidden)
    assert isinstance(event.error, PermissionError)
    assert event.error.server_message == "Forbidden: missing 'inference' role"
    assert ready(p)


def test_forbidden_for_an_abandoned_inference_frees_the_slot() -> None:
    # Regression: the slot stayed "abandoned" for good (no other answer ever follows).
    p = opened()
    p.send_inference(PAYLOAD)
    p.abandon_inference()
    event = p.receive(error("Forbidden: missing 'inference' role"))
    assert isinstance(event, StaleReply)
    assert event.kind == "inference"
    assert ready(p)


def test_forbidden_without_pending_request_is_unsolicited() -> None:
    p = opened()
    event = p.receive(error("Forbidden: missing 'inference' role"))
    assert isinstance(event, Unsolicited)
    assert isinstance(event.frame, wire.ErrorFrame)
    assert event.frame.payload.message == "Forbidden: missing 'inference' role"


# ------------------------------------------------------------------------------------------------
# info


def test_send_info_frame() -> None:
    p = opened()
    job_id, data = p.send_info("queue_stats")
    assert json.loads(data) == {
        "uuid": UUID,
        "type": "info",
        "payload": {"action": "queue_stats", "job_id": job_id},
    }


@pytest.mark.parametrize("action", ["queue_stats", "queue"])
def test_fast_path_info_many_in_flight_matched_by_job_id(action: str) -> None:
    p = opened()
    p.send_info("status")  # a queued one does not block the fast path
    ids = [p.send_info(action)[0] for _ in range(4)]
    assert len(set(ids)) == 4
    assert p.info_ready(action)
    for job_id in reversed(ids):
        event = p.receive(info_reply(job_id, {"for": job_id}))
        assert isinstance(event, InfoCompleted)
        assert event.job_id == job_id
        assert event.reply.data == {"for": job_id}
        assert event.reply.status == "success"


def test_non_fast_info_one_at_a_time() -> None:
    p = opened()
    job_id, _ = p.send_info("status")
    assert not p.info_ready("other")
    assert p.info_ready("queue_stats")
    with pytest.raises(ProtocolStateError):
        p.send_info("other")
    event = p.receive(info_reply(job_id, {"message": "Info type 'status' not implemented yet"}))
    assert isinstance(event, InfoCompleted)
    assert event.job_id == job_id
    assert p.info_ready("other")
    p.send_info("other")


def test_info_nack_fails_the_queued_request_only() -> None:
    p = opened()
    fast, _ = p.send_info("queue_stats")
    queued, _ = p.send_info("status")
    event = p.receive(nack("info", "BACKPRESSURE_EXECUTOR_FULL"))
    assert isinstance(event, RequestFailed)
    assert event.kind == "info"
    assert event.key == queued
    assert isinstance(event.error, Backpressure)
    assert event.error.dropped_type == "info"
    assert event.error.code == "BACKPRESSURE_EXECUTOR_FULL"
    assert p.info_ready("status")
    assert isinstance(p.receive(info_reply(fast, {})), InfoCompleted)  # still pending


def test_info_nack_without_queued_request_is_unsolicited() -> None:
    p = opened()
    p.send_info("queue_stats")  # the fast path is never NACKed
    assert isinstance(p.receive(nack("info")), Unsolicited)


def test_error_status_info_response_is_contract_error() -> None:
    p = opened()
    job_id, _ = p.send_info("queue_stats")
    event = p.receive(info_reply(job_id, {"error": "boom"}, status="error", error="boom"))
    assert isinstance(event, RequestFailed)
    assert event.kind == "info"
    assert event.key == job_id
    assert isinstance(event.error, ContractError)
    assert event.error.server_message == "boom"
    assert isinstance(p.receive(info_reply(job_id, {})), Unsolicited)  # settled once


def test_error_status_without_error_field_uses_data() -> None:
    p = opened()
    job_id, _ = p.send_info("status")
    err = failed_error(p.receive(info_reply(job_id, {"error": "db down"}, status="error")))
    assert isinstance(err, ContractError)
    assert "db down" in err.server_message
    assert p.info_ready("status")


@pytest.mark.parametrize("job_id", [999, None, "1", [1]])
def test_info_response_for_no_pending_job_is_unsolicited(job_id: Any) -> None:
    p = opened()
    mine, _ = p.send_info("queue_stats")
    assert mine == 1
    event = p.receive(info_reply(job_id, {}))
    assert isinstance(event, Unsolicited)
    assert isinstance(p.receive(info_reply(mine, {})), InfoCompleted)


def test_abandoned_fast_info_late_reply_is_stale() -> None:
    p = opened()
    a, _ = p.send_info("queue_stats")
    b, _ = p.send_info("queue_stats")
    p.abandon_info(a)
    event = p.receive(info_reply(a, {}))
    assert isinstance(event, StaleReply)
    assert event.kind == "info"
    event_b = p.receive(info_reply(b, {"x": 1}))
    assert isinstance(event_b, InfoCompleted)
    assert event_b.job_id == b


def test_abandoned_queued_info_late_reply_frees_the_slot() -> None:
    p = opened()
    job_id, _ = p.send_info("status")
    p.abandon_info(job_id)
    assert not p.info_ready("status")
    assert isinstance(p.receive(info_reply(job_id, {})), StaleReply)
    assert p.info_ready("status")


def test_abandoned_queued_info_late_nack_is_stale() -> None:
    p = opened()
    job_id, _ = p.send_info("status")
    p.abandon_info(job_id)
    event = p.receive(nack("info"))
    assert isinstance(event, StaleReply)
    assert event.kind == "info"
    assert p.info_ready("status")


# ------------------------------------------------------------------------------------------------
# management


def test_send_management_frame_carries_request_id() -> None:
    p = opened()
    request_id, data = p.send_management({"action": "delete_vm", "vm_id": "v"})
    frame = json.loads(data)
    assert frame == {
        "uuid": UUID,
        "type": "management",
        "payload": {"action": "delete_vm", "vm_id": "v"},
        "request_id": request_id,
    }


@pytest.mark.parametrize("status", [True, False])
def test_management_echo_matches_by_request_id(status: bool) -> None:
    p = opened()
    request_id, _ = p.send_management({"action": "create_vm"})
    event = p.receive(mgmt_reply(request_id, status, ["10.0.0.2", "vm-1"]))
    assert isinstance(event, ManagementCompleted)
    assert event.request_id == request_id
    assert event.result.status is status
    assert event.result.data == ["10.0.0.2", "vm-1"]
    assert mgmt_ready(p)


def test_management_one_at_a_time_and_unique_ids() -> None:
    p = opened()
    first, _ = p.send_management({"action": "x"})
    assert not mgmt_ready(p)
    with pytest.raises(ProtocolStateError):
        p.send_management({"action": "y"})
    p.receive(mgmt_reply(first))
    second, _ = p.send_management({"action": "y"})
    assert second != first


@pytest.mark.parametrize("request_id", ["client-7:999", None, 5])
def test_management_reply_with_another_request_id_is_unsolicited(request_id: Any) -> None:
    p = opened()
    mine, _ = p.send_management({"action": "x"})
    assert isinstance(p.receive(mgmt_reply(request_id)), Unsolicited)
    assert not mgmt_ready(p)
    assert isinstance(p.receive(mgmt_reply(mine)), ManagementCompleted)


def test_management_nack_is_backpressure() -> None:
    p = opened()
    request_id, _ = p.send_management({"action": "x"})
    event = p.receive(nack("management"))
    assert isinstance(event, RequestFailed)
    assert event.kind == "management"
    assert event.key == request_id
    assert isinstance(event.error, Backpressure)
    assert event.error.dropped_type == "management"
    assert event.error.code == "BACKPRESSURE_QUEUE_FULL"
    assert mgmt_ready(p)


def test_forbidden_management_fails_the_pending_management_request() -> None:
    p = opened()
    p.send_inference(PAYLOAD)
    request_id, _ = p.send_management({"action": "x"})
    event = p.receive(error("Forbidden: missing 'management' role"))
    assert isinstance(event, RequestFailed)
    assert event.kind == "management"
    assert event.key == request_id
    assert isinstance(event.error, Forbidden)
    assert "management" in str(event.error)
    assert mgmt_ready(p)
    assert not ready(p)  # the inference was not the forbidden one


def test_abandoned_management_late_reply_is_stale() -> None:
    p = opened()
    request_id, _ = p.send_management({"action": "x"})
    p.abandon_management("client-7:nope")  # not ours: ignored
    p.abandon_management(request_id)
    assert not mgmt_ready(p)
    event = p.receive(mgmt_reply(request_id))
    assert isinstance(event, StaleReply)
    assert event.kind == "management"
    assert mgmt_ready(p)


def test_abandoned_management_late_nack_is_stale() -> None:
    p = opened()
    request_id, _ = p.send_management({"action": "x"})
    p.abandon_management(request_id)
    assert isinstance(p.receive(nack("management")), StaleReply)
    assert mgmt_ready(p)


def test_forbidden_for_an_abandoned_management_request_is_stale() -> None:
    # Regression: it was reported as a failure of a request nobody waits for any more.
    p = opened()
    request_id, _ = p.send_management({"action": "x"})
    p.abandon_management(request_id)
    event = p.receive(error("Forbidden: missing 'management' role"))
    assert isinstance(event, StaleReply)
    assert event.kind == "management"
    assert mgmt_ready(p)
    second, _ = p.send_management({"action": "y"})
    assert isinstance(p.receive(mgmt_reply(second)), ManagementCompleted)


# ------------------------------------------------------------------------------------------------
# error frames after auth


def test_system_shutdown_without_dropped_type_fails_the_connection() -> None:
    p = opened()
    p.send_inference(PAYLOAD)
    event = p.receive(error("Server is shutting down; request rejected.", code="SYSTEM_SHUTDOWN"))
    assert isinstance(event, ConnectionFailing)
    assert isinstance(event.error, ServerShutdown)
    assert event.error.close_code == 1012
    assert event.error.reason == "Server is shutting down; request rejected."
    assert not ready(p)  # pending requests fail when the socket closes


@pytest.mark.parametrize("kind", ["inference", "info", "management"])
def test_system_shutdown_with_dropped_type_fails_that_request_with_known_outcome(
    kind: str,
) -> None:
    p = opened()
    p.send_inference(PAYLOAD)
    info_id, _ = p.send_info("status")
    request_id, _ = p.send_management({"action": "x"})
    event = p.receive(
        error(
            "Request dropped: system is shutting down.",
            code="SYSTEM_SHUTDOWN",
            dropped_type=kind,
        )
    )
    assert isinstance(event, RequestFailed)
    assert event.kind == kind
    assert event.key == {"inference": None, "info": info_id, "management": request_id}[kind]
    assert isinstance(event.error, ServerShutdown)
    assert event.error.outcome_unknown is False  # dropped before running: safe to resend
    assert event.error.reason == "Request dropped: system is shutting down."
    assert ready(p) is (kind == "inference")
    assert mgmt_ready(p) is (kind == "management")
    assert p.info_ready("status") is (kind == "info")


def test_insufficient_budget_is_unsolicited() -> None:
    p = opened()
    p.send_inference(PAYLOAD)
    event = p.receive(BUDGET)
    assert isinstance(event, Unsolicited)
    assert isinstance(event.frame, wire.ErrorFrame)
    assert event.frame.payload.job_type == "inference"
    assert not ready(p)  # not a drop


def test_alert_is_unsolicited() -> None:
    p = opened()
    p.send_inference(PAYLOAD)
    event = p.receive(ALERT)
    assert isinstance(event, Unsolicited)
    assert isinstance(event.frame, wire.Alert)
    assert not ready(p)


def test_tenant_limit_fails_the_connection() -> None:
    p = opened()
    event = p.receive(error("Tenant rate limit exceeded", code="BACKPRESSURE_TENANT_LIMIT_REACHED"))
    assert isinstance(event, ConnectionFailing)
    assert type(event.error) is ConnectionLost
    assert event.error.close_code == 1008


@pytest.mark.parametrize(
    ("message", "close_code"),
    [
        ("UUID mismatch. Expected 'client-7', got 'x'", 1008),
        ("Rate limit exceeded for this client (messages per second)", 1008),
        ("Message too large (>65536 bytes)", 1009),
    ],
)
def test_fatal_code_less_errors_fail_the_connection(message: str, close_code: int) -> None:
    p = opened()
    event = p.receive(error(message))
    assert isinstance(event, ConnectionFailing)
    assert type(event.error) is ConnectionLost
    assert event.error.close_code == close_code
    assert event.error.reason == message


@pytest.mark.parametrize(
    "message",
    [
        "Invalid JSON format",
        "Missing required field: 'payload'",
        "Field 'uuid' must be a string",
        "Field 'payload' must be a dictionary",
        "Invalid type 'x'. Must be one of: ['auth', 'info', 'management', 'inference']",
    ],
)
def test_envelope_errors_are_protocol_violations(message: str) -> None:
    p = opened()
    p.send_inference(PAYLOAD)
    event = p.receive(error(message))
    assert isinstance(event, ProtocolViolation)
    assert message in event.detail
    assert not ready(p)


def test_unknown_error_code_without_dropped_type_is_unsolicited() -> None:
    p = opened()
    assert isinstance(p.receive(error("new", code="SOMETHING_NEW")), Unsolicited)


# ------------------------------------------------------------------------------------------------
# connection lost


def test_connection_lost_fails_every_pending_request_with_unknown_outcome() -> None:
    p = opened()
    p.send_inference(PAYLOAD)
    fast1, _ = p.send_info("queue_stats")
    fast2, _ = p.send_info("queue")
    queued, _ = p.send_info("status")
    request_id, _ = p.send_management({"action": "creation"})
    failed = p.connection_lost(ConnectionLost("socket closed", close_code=1006, reason="eof"))
    assert p.state == "closed"
    keys = {(f.kind, f.key) for f in failed}
    assert keys == {
        ("inference", None),
        ("info", fast1),
        ("info", fast2),
        ("info", queued),
        ("management", request_id),
    }
    assert len(failed) == 5
    for f in failed:
        assert type(f.error) is ConnectionLost
        assert f.error.outcome_unknown is True
        assert f.error.close_code == 1006
        assert f.error.reason == "eof"
        assert "unknown" in str(f.error)
    mgmt = next(f for f in failed if f.kind == "management")
    assert "may or may not have run" in str(mgmt.error)
    inf = next(f for f in failed if f.kind == "inference")
    assert "may or may not have run" not in str(inf.error)
    with pytest.raises(ProtocolStateError):
        p.send_inference(PAYLOAD)
    assert not ready(p)


def test_connection_lost_does_not_report_abandoned_requests() -> None:
    p = opened()
    p.send_inference(PAYLOAD)
    p.abandon_inference()
    fast, _ = p.send_info("queue_stats")
    abandoned_fast, _ = p.send_info("queue_stats")
    p.abandon_info(abandoned_fast)
    queued, _ = p.send_info("status")
    p.abandon_info(queued)
    request_id, _ = p.send_management({"action": "x"})
    p.abandon_management(request_id)
    failed = p.connection_lost(ConnectionLost("gone"))
    assert [(f.kind, f.key) for f in failed] == [("info", fast)]


def test_connection_lost_keeps_the_server_shutdown_class() -> None:
    p = opened()
    p.send_inference(PAYLOAD)
    failed = p.connection_lost(ServerShutdown("shutting down", close_code=1012))
    assert len(failed) == 1
    assert isinstance(failed[0].error, ServerShutdown)
    assert failed[0].error.outcome_unknown is True
    assert failed[0].error.close_code == 1012


def test_connection_lost_with_nothing_pending() -> None:
    p = opened()
    assert p.connection_lost(ConnectionLost("gone")) == []
    assert p.state == "closed"


# ------------------------------------------------------------------------------------------------
# replies out of order (hypothesis)

_OUTCOMES = {
    "fast": ["ok", "error"],
    "queued": ["ok", "error", "nack"],
    "management": ["ok", "false", "nack", "forbidden"],
    "inference": ["ok", "failed", "string", "nack", "stream"],
}
_NOISE = [
    ALERT,
    BUDGET,
    enc({"type": "brand_new_push"}),
    info_reply(10_000, {"stray": True}),
    mgmt_reply("someone-else:1"),
    inference("COMPLETED", {"o": "stray"}, "m", uuid="client-7-previous"),
]


@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_out_of_order_replies_each_reach_their_own_request(data: st.DataObject) -> None:
    p = opened()
    n_fast = data.draw(st.integers(min_value=0, max_value=4), label="n_fast")
    with_queued = data.draw(st.booleans(), label="queued")
    with_mgmt = data.draw(st.booleans(), label="management")
    with_inference = data.draw(st.booleans(), label="inference")

    # (label, frames in their required relative order, abandoned?)
    replies: list[tuple[str, list[bytes], bool]] = []
    expected: dict[str, tuple[str, Any, bool]] = {}  # label -> (outcome, key, abandoned)

    def plan(label: str, kind: str, key: Any) -> tuple[str, bool]:
        outcome = data.draw(st.sampled_from(_OUTCOMES[kind]), label=f"{label} outcome")
        abandoned = data.draw(st.booleans(), label=f"{label} abandoned")
        expected[label] = (outcome, key, abandoned)
        return outcome, abandoned

    for i in range(n_fast):
        job_id, _ = p.send_info("queue_stats")
        label = f"fast{i}"
        outcome, abandoned = plan(label, "fast", job_id)
        if abandoned:
            p.abandon_info(job_id)
        frame = (
            info_reply(job_id, {"for": label})
            if outcome == "ok"
            else info_reply(job_id, {"error": label}, status="error", error=label)
        )
        replies.append((label, [frame], abandoned))
    if with_queued:
        job_id, _ = p.send_info("status")
        outcome, abandoned = plan("queued", "queued", job_id)
        if abandoned:
            p.abandon_info(job_id)
        frame = {
            "ok": info_reply(job_id, {"for": "queued"}),
            "error": info_reply(job_id, None, status="error", error="queued"),
            "nack": nack("info"),
        }[outcome]
        replies.append(("queued", [frame], abandoned))
    if with_mgmt:
        request_id, _ = p.send_management({"action": "x"})
        outcome, abandoned = plan("management", "management", request_id)
        if abandoned:
            p.abandon_management(request_id)
        frame = {
            "ok": mgmt_reply(request_id, True, "management"),
            "false": mgmt_reply(request_id, False, "management"),
            "nack": nack("management", "BACKPRESSURE_EXECUTOR_FULL"),
            "forbidden": error("Forbidden: missing 'management' role"),
        }[outcome]
        replies.append(("management", [frame], abandoned))
    if with_inference:
        p.send_inference(PAYLOAD)
        outcome, abandoned = plan("inference", "inference", None)
        if abandoned:
            p.abandon_inference()
        frames = {
            "ok": [inference("COMPLETED", {"o": "inference"}, "m")],
            "failed": [inference("FAILED", {"code": "TRITON_INFERENCE_FAILED"}, "m")],
            "string": [inference("FAILED", "Missing required field 'model_name'")],
            "nack": [nack("inference")],
            "stream": [
                inference("START"),
                inference("ONGOING", "a"),
                inference("ONGOING", "b"),
                inference("COMPLETED", None, "m"),
            ],
        }[outcome]
        replies.append(("inference", frames, abandoned))
    noise = data.draw(st.lists(st.sampled_from(_NOISE), max_size=4), label="noise")

    # A permutation of every frame that keeps each request's own frames in order
    # (the frames of one gRPC stream are delivered FIFO, contract §5.4).
    tagged = [(label, i) for label, frames, _ in replies for i in range(len(frames))]
    tagged += [("noise", i) for i in range(len(noise))]
    order = data.draw(st.permutations(tagged), label="order")
    cursor: dict[str, int] = {}
    sequence: list[tuple[str, bytes]] = []
    frames_of = {label: frames for label, frames, _ in replies}
    for label, _ in order:
        index = cursor.get(label, 0)
        cursor[label] = index + 1
        sequence.append((label, noise[index] if label == "noise" else frames_of[label][index]))

    seen: dict[str, list[Event]] = {}
    for label, frame in sequence:
        seen.setdefault(label, []).append(p.receive(frame))

    for event in seen.get("noise", []):
        assert isinstance(event, Unsolicited)
    for label, (outcome, key, abandoned) in expected.items():
        events = seen[label]
        if abandoned:
            assert all(isinstance(e, StaleReply) for e in events), (label, events)
            continue
        *progress, final = events
        assert all(isinstance(e, InferenceProgress) for e in progress)
        if label.startswith("fast") or label == "queued":
            if outcome == "ok":
                assert isinstance(final, InfoCompleted)
                assert final.job_id == key
                assert final.reply.data == {"for": label}
            else:
                assert isinstance(final, RequestFailed)
                assert (final.kind, final.key) == ("info", key)
                if outcome == "error":
                    assert isinstance(final.error, ContractError)
                    assert final.error.server_message == label
                else:
                    assert isinstance(final.error, Backpressure)
        elif label == "management":
            if outcome in ("ok", "false"):
                assert isinstance(final, ManagementCompleted)
                assert final.request_id == key
                assert final.result.status is (outcome == "ok")
                assert final.result.data == "management"
            else:
                assert isinstance(final, RequestFailed)
                assert (final.kind, final.key) == ("management", key)
                assert isinstance(final.error, Backpressure if outcome == "nack" else Forbidden)
        else:
            if outcome == "ok":
                assert isinstance(final, InferenceCompleted)
                assert final.outputs is not None
                output = final.outputs["o"]
                assert isinstance(output, msgspec.Raw)
                assert msgspec.json.decode(output) == "inference"
            elif outcome == "stream":
                assert final == InferenceCompleted(None, "m")
                assert [e.text for e in progress if isinstance(e, InferenceProgress)] == [
                    None,
                    "a",
                    "b",
                ]
            else:
                assert isinstance(final, RequestFailed)
                assert final.kind == "inference"
                error_type = {"failed": InferenceFailed, "string": ContractError}.get(
                    outcome, Backpressure
                )
                assert isinstance(final.error, error_type)
    # Every request was settled exactly once: all slots are free, nothing is left to fail.
    assert ready(p)
    assert mgmt_ready(p)
    assert p.info_ready("status")
    assert p.connection_lost(ConnectionLost("end")) == []


def test_an_excerpt_never_quotes_a_token() -> None:
    # A peer that echoes our auth frame back (garbled) must not get the token into a message.
    echoed = b'{"type":"auth","uuid":"u","payload":{"token":"' + TOKEN.encode() + b'"'
    p = opened()
    event = p.receive(echoed)
    assert isinstance(event, MalformedFrame)
    assert TOKEN not in str(event.error)
    assert TOKEN[:8] not in event.error.excerpt
    assert "<redacted>" in event.error.excerpt
