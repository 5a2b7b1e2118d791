"""Contract §1: frame size cap, binary frames, JSON parsing."""

from __future__ import annotations

import json

import pytest

from ._client import close_code, new_uuid, raw, session

CAP = 65536


def padded_frame(uid: str, type_: str, payload: dict[str, object], size: int) -> str:
    """A JSON envelope padded (ASCII) to exactly `size` bytes."""
    base = {"uuid": uid, "type": type_, "payload": {**payload, "pad": ""}}
    overhead = len(json.dumps(base).encode())
    assert size >= overhead
    base["payload"] = {**payload, "pad": "x" * (size - overhead)}
    text = json.dumps(base)
    assert len(text.encode()) == size
    return text


def test_first_frame_over_64k_closes_1009(ws_url: str) -> None:
    """§1: a first text frame over 65 536 bytes gets `Message too large (>65536 bytes)` and close
    1009."""
    with raw(ws_url) as client:
        client.send_raw(padded_frame(client.uuid, "auth", {}, CAP + 1))
        client.expect_error_and_close("Message too large (>65536 bytes)", 1009)


def test_frame_over_64k_after_auth_closes_1009(ws_url: str) -> None:
    """§1: the same cap applies after auth: error frame and close 1009."""
    with session(ws_url) as client:
        frame = padded_frame(client.uuid, "info", {"action": "queue_stats"}, CAP + 1)
        client.send_raw(frame)
        client.expect_error_and_close("Message too large (>65536 bytes)", 1009)


def test_frame_of_exactly_64k_is_accepted(ws_url: str) -> None:
    """§1: only frames whose UTF-8 size *exceeds* 65 536 bytes are refused."""
    with raw(ws_url) as client:
        client.send_raw(padded_frame(client.uuid, "auth", {}, CAP))
        assert client.recv_raw()["type"] == "auth.ok"
        client.send_raw(padded_frame(client.uuid, "info", {"action": "queue_stats"}, CAP))
        reply = client.recv()
        assert reply["type"] == "info_response"
        assert reply["payload"]["status"] == "success"


def test_cap_counts_utf8_bytes_not_characters(ws_url: str) -> None:
    """§1: the cap is on the frame's UTF-8 size: 40 000 two-byte characters (80 000 bytes) are
    too large although there are fewer than 65 536 characters."""
    with session(ws_url) as client:
        frame = json.dumps(
            {"uuid": client.uuid, "type": "info", "payload": {"pad": "é" * 40000}},
            ensure_ascii=False,
        )
        assert len(frame) < CAP < len(frame.encode())
        client.send_raw(frame)
        client.expect_error_and_close("Message too large (>65536 bytes)", 1009)


@pytest.mark.parametrize("authenticated", [False, True], ids=["before-auth", "after-auth"])
def test_binary_frame_drops_connection_without_close_frame(
    ws_url: str, authenticated: bool
) -> None:
    """§1: binary frames are not supported; the connection is dropped without a close frame
    (observed close code 1006)."""
    with raw(ws_url) as client:
        if authenticated:
            assert client.auth()["type"] == "auth.ok"
        payload = {"uuid": client.uuid, "type": "auth", "payload": {}}
        client.send_raw(json.dumps(payload).encode())
        exc = client.expect_close()
        assert exc.rcvd is None
        assert close_code(exc) == 1006


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_nan_token_is_invalid_json(ws_url: str, token: str) -> None:
    """§1: `NaN`/`Infinity` tokens in inbound JSON are rejected as "Invalid JSON format" (close
    1008 before auth, §3.1)."""
    with raw(ws_url) as client:
        client.send_raw(f'{{"uuid": "{new_uuid()}", "type": "auth", "payload": {{"x": {token}}}}}')
        client.expect_error_and_close("Invalid JSON format", 1008)


def test_nan_token_after_auth_keeps_socket_open(ws_url: str) -> None:
    """§1, §6.1: after auth, "Invalid JSON format" is reported and the socket stays open."""
    with session(ws_url) as client:
        client.send_raw(
            f'{{"uuid": "{client.uuid}", "type": "info", "payload": {{"job_id": NaN}}}}'
        )
        assert client.recv() == {"type": "error", "payload": {"message": "Invalid JSON format"}}
        assert client.is_open()
