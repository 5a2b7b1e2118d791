"""Contract §4.1: `info` requests."""

from __future__ import annotations

from typing import Any

import pytest

from ._client import INFO_QUEUE_KEYS, completed_data, inference_payload, session, slow_inputs

JOB_IDS: list[Any] = [{"a": [1, 2], "b": None}, "job-1", 42, [1, "x"], None, True]


@pytest.mark.parametrize("job_id", JOB_IDS, ids=["object", "string", "int", "list", "null", "bool"])
def test_queue_stats_echoes_job_id_and_data_keys(ws_url: str, job_id: Any) -> None:
    """§4.1: `queue_stats` reply `{"type":"info_response","payload":{"job_id":…,
    "request_type":"queue_stats","status":"success","data":{…}}}`; `job_id` is echoed verbatim
    (any JSON value) and `data` has the listed keys."""
    with session(ws_url) as client:
        client.send("info", {"action": "queue_stats", "job_id": job_id})
        reply = client.recv()
        assert reply["type"] == "info_response"
        payload = reply["payload"]
        assert payload["job_id"] == job_id
        assert payload["request_type"] == "queue_stats"
        assert payload["status"] == "success"
        data = payload["data"]
        assert set(data) == INFO_QUEUE_KEYS
        assert all(isinstance(v, int) and not isinstance(v, bool) for v in data.values()), data


def test_queue_action_is_the_fast_path_too(ws_url: str) -> None:
    """§4.1: action `queue` is answered like `queue_stats` (same data keys, job_id echoed)."""
    with session(ws_url) as client:
        client.send("info", {"action": "queue", "job_id": {"n": 1}})
        payload = client.recv()["payload"]
        assert payload["job_id"] == {"n": 1}
        assert payload["status"] == "success"
        assert payload["request_type"] in ("queue", "queue_stats")
        assert set(payload["data"]) == INFO_QUEUE_KEYS


def test_queue_stats_counts_this_user(ws_url: str) -> None:
    """§4.1: "users" counts per-uuid queues; after this client sent an info job, `info_users` and
    `total_users` are at least 1."""
    with session(ws_url) as client:
        client.send("info", {"action": "other"})
        client.recv()
        data = client.queue_stats()["payload"]["data"]
        assert data["info_users"] >= 1
        assert data["total_users"] >= data["info_users"]


@pytest.mark.reference_only
def test_queue_stats_overtakes_earlier_slow_inference(ws_url: str) -> None:
    """§4.1, §5.3: queue_stats is answered on the reader coroutine and overtakes responses to
    earlier requests on the same socket."""
    with session(ws_url) as client:
        client.send("inference", inference_payload("slow", slow_inputs(700)))
        client.send("info", {"action": "queue_stats", "job_id": "qs"})
        first = client.recv()
        assert first["type"] == "info_response"
        assert first["payload"]["job_id"] == "qs"
        assert completed_data(client.recv()) == {"OUTPUT0": [2.0]}


@pytest.mark.parametrize("action", ["model_list", "status", "queue_stats_x"])
def test_other_action_not_implemented(ws_url: str, action: str) -> None:
    """§4.1: any other action goes through the job queue and returns `status:"success"` with
    `data: {"message":"Info type '<x>' not implemented yet"}`."""
    with session(ws_url) as client:
        client.send("info", {"action": action, "job_id": "j-7"})
        reply = client.recv()
        assert reply["type"] == "info_response"
        payload = reply["payload"]
        assert payload["status"] == "success"
        assert payload["job_id"] == "j-7"
        assert payload["data"] == {"message": f"Info type '{action}' not implemented yet"}


def test_request_type_fallback_fast_path(ws_url: str) -> None:
    """§4.1: the action key falls back to `payload.request_type` (here `queue_stats`)."""
    with session(ws_url) as client:
        client.send("info", {"request_type": "queue_stats", "job_id": 5})
        payload = client.recv()["payload"]
        assert payload["job_id"] == 5
        assert payload["request_type"] == "queue_stats"
        assert set(payload["data"]) == INFO_QUEUE_KEYS


def test_request_type_fallback_other(ws_url: str) -> None:
    """§4.1: `payload.request_type` is used when `payload.action` is absent."""
    with session(ws_url) as client:
        client.send("info", {"request_type": "bar"})
        payload = client.recv()["payload"]
        assert payload["data"] == {"message": "Info type 'bar' not implemented yet"}


def test_action_wins_over_request_type(ws_url: str) -> None:
    """§4.1: `payload.action` is the action key; `request_type` is only the fallback."""
    with session(ws_url) as client:
        client.send("info", {"action": "foo", "request_type": "queue_stats"})
        payload = client.recv()["payload"]
        assert payload["data"] == {"message": "Info type 'foo' not implemented yet"}


def test_default_action_is_unknown(ws_url: str) -> None:
    """§4.1: with neither key the action defaults to `"unknown"`."""
    with session(ws_url) as client:
        client.send("info", {})
        payload = client.recv()["payload"]
        assert payload["status"] == "success"
        assert payload["data"] == {"message": "Info type 'unknown' not implemented yet"}
