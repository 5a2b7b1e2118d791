"""Contract §2 (envelope) and §3 (connection lifecycle, auth, capabilities, uuid rules, roles)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from ._client import (
    Manager,
    Spawn,
    close_code,
    completed_data,
    inference_payload,
    new_uuid,
    raw,
    session,
    slow_inputs,
)

VALID_TYPES = ("auth", "info", "management", "inference")

# (case id, frame builder(uuid) -> raw text, expected message)
ENVELOPE_ERRORS: list[tuple[str, Any, str]] = [
    ("invalid-json", lambda u: "{not json", "Invalid JSON format"),
    ("truncated-json", lambda u: '{"uuid": "' + u + '"', "Invalid JSON format"),
    (
        "missing-uuid",
        lambda u: json.dumps({"type": "auth", "payload": {}}),
        "Missing required field: 'uuid'",
    ),
    (
        "missing-type",
        lambda u: json.dumps({"uuid": u, "payload": {}}),
        "Missing required field: 'type'",
    ),
    (
        "missing-payload",
        lambda u: json.dumps({"uuid": u, "type": "auth"}),
        "Missing required field: 'payload'",
    ),
    (
        "uuid-not-string",
        lambda u: json.dumps({"uuid": 123, "type": "auth", "payload": {}}),
        "Field 'uuid' must be a string",
    ),
    (
        "type-not-string",
        lambda u: json.dumps({"uuid": u, "type": ["auth"], "payload": {}}),
        "Field 'type' must be a string",
    ),
    (
        "payload-not-dict",
        lambda u: json.dumps({"uuid": u, "type": "auth", "payload": "x"}),
        "Field 'payload' must be a dictionary",
    ),
    (
        "payload-list",
        lambda u: json.dumps({"uuid": u, "type": "auth", "payload": []}),
        "Field 'payload' must be a dictionary",
    ),
]


def assert_invalid_type_message(frame: dict[str, Any], bad: str) -> None:
    assert frame["type"] == "error"
    assert set(frame["payload"]) == {"message"}
    message = frame["payload"]["message"]
    prefix = f"Invalid type '{bad}'. Must be one of: "
    assert message.startswith(prefix), message
    rest = message[len(prefix) :]
    for valid in VALID_TYPES:
        assert f"'{valid}'" in rest or f'"{valid}"' in rest, message


# -- §3.1 first frame -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("builder", "message"), [c[1:] for c in ENVELOPE_ERRORS], ids=[c[0] for c in ENVELOPE_ERRORS]
)
def test_envelope_error_before_auth_closes_1008(ws_url: str, builder: Any, message: str) -> None:
    """§3.1, §6.1: envelope errors before auth send `{"type":"error","payload":{"message":…}}`
    and close with 1008."""
    with raw(ws_url) as client:
        client.send_raw(builder(client.uuid))
        client.expect_error_and_close(message, 1008)


def test_invalid_type_before_auth_closes_1008(ws_url: str) -> None:
    """§2.1, §6.1: `Invalid type '<t>'. Must be one of: [...]` (valid types auth, info,
    management, inference), close 1008 before auth."""
    with raw(ws_url) as client:
        client.send("bogus", {})
        assert_invalid_type_message(client.recv_raw(), "bogus")
        assert close_code(client.expect_close()) == 1008


@pytest.mark.parametrize(
    ("builder", "message"), [c[1:] for c in ENVELOPE_ERRORS], ids=[c[0] for c in ENVELOPE_ERRORS]
)
def test_envelope_error_after_auth_keeps_socket_open(
    ws_url: str, builder: Any, message: str
) -> None:
    """§6.1: after auth the same envelope errors are reported but do not close the socket."""
    with session(ws_url) as client:
        client.send_raw(builder(client.uuid))
        assert client.recv() == {"type": "error", "payload": {"message": message}}
        assert client.is_open()


def test_invalid_type_after_auth_keeps_socket_open(ws_url: str) -> None:
    """§6.1: `Invalid type` after auth does not close the socket."""
    with session(ws_url) as client:
        client.send("bogus", {})
        assert_invalid_type_message(client.recv(), "bogus")
        assert client.is_open()


@pytest.mark.parametrize("type_", ["info", "management", "inference"])
def test_first_frame_must_be_auth(ws_url: str, type_: str) -> None:
    """§3.1: a valid first frame that is not `auth` → "First message must be type 'auth'" and
    close 1008."""
    with raw(ws_url) as client:
        client.send(type_, {"action": "queue_stats"})
        client.expect_error_and_close("First message must be type 'auth'", 1008)


# -- §3.3 capability negotiation ----------------------------------------------------------------
@pytest.mark.parametrize(
    "payload",
    [{}, {"capability": "json"}, {"capability": None}, {"client": {"sub": "x"}}],
    ids=["empty", "capability-string", "capability-null", "client-only"],
)
def test_legacy_auth_ok_without_capability_list(ws_url: str, payload: dict[str, Any]) -> None:
    """§3.3: when `payload.capability` is not a list the reply is the bare `{"type":"auth.ok"}`
    (no payload)."""
    with raw(ws_url) as client:
        assert client.auth(**payload) == {"type": "auth.ok"}


@pytest.mark.parametrize(
    ("requested", "granted"),
    [
        (["json"], ["json"]),
        (["json", "shm"], ["json", "shm"]),
        (["shm", "json"], ["shm", "json"]),
        (["protobuf", "json"], ["json"]),
        (["shm", "protobuf"], ["shm"]),
        (["protobuf"], ["json"]),
        ([], ["json"]),
    ],
    ids=[
        "json",
        "json-shm",
        "shm-json",
        "drop-protobuf",
        "shm-only",
        "empty-intersection",
        "empty",
    ],
)
def test_capability_negotiation(ws_url: str, requested: list[str], granted: list[str]) -> None:
    """§3.3: `auth.ok.payload.capability` = requested ∩ supported in request order, `["json"]`
    when empty; unknown entries are dropped; `shm` is supported when /dev/shm is accessible."""
    with raw(ws_url) as client:
        assert client.auth(capability=requested) == {
            "type": "auth.ok",
            "payload": {"capability": granted},
        }


@pytest.mark.reference_only
@pytest.mark.parametrize(
    ("requested", "granted"),
    [(["shm"], ["json"]), (["json", "shm"], ["json"]), (["shm", "json"], ["json"])],
)
def test_capability_without_shm(spawn: Spawn, requested: list[str], granted: list[str]) -> None:
    """§3.3: `shm` is only supported when /dev/shm is accessible (reference: `--no-shm`)."""
    manager = spawn("--no-shm")
    with raw(manager.ws_url) as client:
        assert client.auth(capability=requested)["payload"] == {"capability": granted}


# -- §3.2 token mode ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def token_server(spawn: Spawn) -> Manager:
    return spawn(token="s3cret")


@pytest.mark.reference_only
def test_token_missing_rejected(token_server: Manager) -> None:
    """§3.2: token mode without a token → `Invalid token: Missing token in auth payload` + 1008."""
    with raw(token_server.ws_url) as client:
        client.send("auth", {})
        client.expect_error_and_close("Invalid token: Missing token in auth payload", 1008)


@pytest.mark.reference_only
def test_token_wrong_rejected(token_server: Manager) -> None:
    """§3.2: bad auth → `{"type":"error","payload":{"message":"Invalid token: <reason>"}}`
    + close 1008."""
    with raw(token_server.ws_url) as client:
        client.send("auth", {"token": "wrong"})
        frame = client.recv_raw()
        assert frame["type"] == "error"
        assert frame["payload"]["message"].startswith("Invalid token: "), frame
        assert set(frame["payload"]) == {"message"}
        assert close_code(client.expect_close()) == 1008


@pytest.mark.reference_only
def test_token_right_accepted(token_server: Manager) -> None:
    """§3.2: the right token authenticates (`auth.ok`) and requests are served."""
    with session(token_server.ws_url, token="s3cret") as client:
        assert client.is_open()


# -- §3.4 uuid rules ------------------------------------------------------------------------
def test_duplicate_live_uuid_rejected(ws_url: str) -> None:
    """§3.4: a second live connection with the same uuid gets `UUID '<id>' is already connected`
    + 1008; the first connection is unaffected."""
    uid = new_uuid()
    with session(ws_url, uid) as first:
        with raw(ws_url, uid) as second:
            second.send("auth", {})
            second.expect_error_and_close(f"UUID '{uid}' is already connected", 1008)
        assert first.is_open()


def test_uuid_mismatch_closes_1008(ws_url: str) -> None:
    """§3.4: every later frame must carry the auth uuid, else `UUID mismatch. Expected 'a', got
    'b'` + close 1008."""
    a, b = new_uuid(), new_uuid()
    with session(ws_url, a) as client:
        client.send_json({"uuid": b, "type": "info", "payload": {"action": "queue_stats"}})
        client.expect_error_and_close(f"UUID mismatch. Expected '{a}', got '{b}'", 1008)


def test_uuid_reusable_after_clean_close(ws_url: str) -> None:
    """§3.4: a clean close frees the uuid slot immediately."""
    uid = new_uuid()
    with session(ws_url, uid) as first:
        assert first.is_open()
    with session(ws_url, uid) as second:
        assert second.is_open()


def test_uuid_reusable_after_server_closed_it(ws_url: str) -> None:
    """§3.4: after the server closed a connection (here: UUID mismatch) the uuid is free again."""
    uid = new_uuid()
    with session(ws_url, uid) as client:
        client.send_json({"uuid": new_uuid(), "type": "info", "payload": {}})
        client.expect_close()
    with session(ws_url, uid) as again:
        assert again.is_open()


@pytest.mark.reference_only
def test_responses_routed_by_uuid_at_send_time(ws_url: str) -> None:
    """§3.4: a request sent on connection #1 that completes after the client reconnected with the
    same uuid is delivered on connection #2."""
    uid = new_uuid()
    with session(ws_url, uid) as first:
        first.send("inference", inference_payload("slow", slow_inputs(600, [21.0])))
        time.sleep(0.1)
    with session(ws_url, uid) as second:
        frame = second.recv(timeout=5)
        assert frame["uuid"] == uid
        assert completed_data(frame) == {"OUTPUT0": [42.0]}
        assert frame["payload"]["model_name"] == "slow"


def test_second_auth_is_never_answered(ws_url: str) -> None:
    """§3.4: a second `auth` frame after authentication is never answered; the socket keeps
    working."""
    with session(ws_url) as client:
        client.send("auth", {})
        client.assert_silent(0.5)
        job_id = new_uuid()
        client.send("info", {"action": "queue_stats", "job_id": job_id})
        reply = client.recv()
        assert reply["type"] == "info_response"
        assert reply["payload"]["job_id"] == job_id


# -- §3.5 role checks -----------------------------------------------------------------------
MGMT_PROBE = {"action": "no_such_action"}


def test_management_forbidden_without_role(ws_url: str) -> None:
    """§3.5: `management` needs the `management` or `admin` role, else `Forbidden: missing
    'management' role`; the connection stays open."""
    with session(ws_url, client={"roles": ["inference"]}) as client:
        client.send("management", MGMT_PROBE)
        assert client.recv() == {
            "type": "error",
            "payload": {"message": "Forbidden: missing 'management' role"},
        }
        assert client.is_open()


def test_inference_forbidden_without_role(ws_url: str) -> None:
    """§3.5: `inference` needs the `inference` or `admin` role, else `Forbidden: missing
    'inference' role`; the connection stays open."""
    with session(ws_url, client={"roles": ["management"]}) as client:
        client.send("inference", inference_payload("double", slow_inputs(1)))
        assert client.recv() == {
            "type": "error",
            "payload": {"message": "Forbidden: missing 'inference' role"},
        }
        assert client.is_open()


def test_roles_as_a_string(ws_url: str) -> None:
    """§3.1: `client.roles` may be a string: `"management"` grants management, not inference."""
    with session(ws_url, client={"roles": "management"}) as client:
        client.send("management", MGMT_PROBE)
        assert client.recv()["type"] == "management"
        client.send("inference", inference_payload("double", slow_inputs(1)))
        assert client.recv()["payload"] == {"message": "Forbidden: missing 'inference' role"}


def test_admin_role_grants_management(ws_url: str) -> None:
    """§3.5: the `admin` role satisfies the management check."""
    with session(ws_url, client={"roles": ["admin"]}) as client:
        client.send("management", MGMT_PROBE)
        reply = client.recv()
        assert reply["type"] == "management"
        assert reply["payload"]["status"] is False


def test_info_needs_no_role(ws_url: str) -> None:
    """§3.5: `info` needs no role (queued actions included)."""
    with session(ws_url, client={"roles": []}) as client:
        assert client.is_open()
        client.send("info", {"action": "whatever", "job_id": 1})
        reply = client.recv()
        assert reply["type"] == "info_response"
        assert reply["payload"]["data"] == {"message": "Info type 'whatever' not implemented yet"}


def test_default_roles_allow_both(ws_url: str) -> None:
    """§3.2: in simple mode without `client.roles`, roles are `["inference","management"]`."""
    with session(ws_url) as client:
        client.send("management", MGMT_PROBE)
        reply = client.recv()
        assert reply["type"] == "management"
        assert reply["_auth"]["roles"] == ["inference", "management"]
