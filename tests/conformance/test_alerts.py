"""Contract §2.2/§6.1: unsolicited `alert` and `BACKPRESSURE_INSUFFICIENT_BUDGET` frames
(reference admin endpoints `/_admin/alert`, `/_admin/budget_warning`)."""

from __future__ import annotations

import pytest

from ._client import Client, Manager, Spawn, http_get, session

pytestmark = pytest.mark.reference_only


@pytest.fixture(scope="module")
def server(spawn: Spawn) -> Manager:
    """A server of its own, so "first-connected live client" is this module's client."""
    return spawn()


def assert_no_frame(client: Client, seconds: float = 0.4) -> None:
    try:
        frame = client.recv_raw(seconds)
    except TimeoutError:
        return
    raise AssertionError(f"unexpected frame {frame!r}")


def test_alert_goes_to_first_connected_client_only(server: Manager) -> None:
    """§2.2: `alert` frames carry top-level `error_type`, `message`, `timestamp` (no `payload`) and
    are sent only to the first-connected live client."""
    with session(server.ws_url) as first, session(server.ws_url) as second:
        response = http_get(
            server.http_url, "/_admin/alert", message="hello", error_type="TestAlert"
        )
        assert response.is_success
        frame = first.recv_raw()
        assert frame["type"] == "alert"
        assert set(frame) == {"type", "error_type", "message", "timestamp"}
        assert frame["error_type"] == "TestAlert"
        assert frame["message"] == "hello"
        assert isinstance(frame["timestamp"], (int, float, str))
        assert_no_frame(second)
        assert first.is_open()


def test_alert_moves_to_next_live_client(server: Manager) -> None:
    """§2.2: once the first-connected client is gone, the next-connected live client gets the
    alerts."""
    with session(server.ws_url) as first, session(server.ws_url) as second:
        first.close()
        with session(server.ws_url) as third:
            http_get(server.http_url, "/_admin/alert", message="m2", error_type="T2")
            frame = second.recv_raw()
            assert frame["type"] == "alert"
            assert frame["message"] == "m2"
            assert_no_frame(third)


def test_budget_warning_frame(server: Manager) -> None:
    """§6.1: `BACKPRESSURE_INSUFFICIENT_BUDGET` carries `job_type` and `tenant_id` (simple-mode
    clients share tenant "unknown"); it is informational and the socket stays open."""
    with session(server.ws_url) as client:
        response = http_get(server.http_url, "/_admin/budget_warning", job_type="inference")
        assert response.is_success
        frame = client.recv_raw()
        assert frame["type"] == "error"
        payload = frame["payload"]
        assert set(payload) == {"code", "message", "job_type", "tenant_id"}
        assert payload["code"] == "BACKPRESSURE_INSUFFICIENT_BUDGET"
        assert isinstance(payload["message"], str)
        assert payload["job_type"] == "inference"
        assert payload["tenant_id"] == "unknown"
        assert client.is_open()
