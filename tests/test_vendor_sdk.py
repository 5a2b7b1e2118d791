"""The vendor SDK (`tcm-client` 2.0.0 from PyPI) against the reference manager.

A real client's basic calls must work against the reference manager as they do against the real
server: connect and auth, `info` queue_stats, an HTTP inference on a zoo model, a management call,
and the SDK's blocking helper. The SDK is **asyncio-only** (`asyncio.wait_for`, `asyncio.run`
inside its blocking helper), so these are plain sync tests that run its coroutines with
`asyncio.run`; there is no trio variant to run.

`tcm-client` 2.0.0 requires `websockets>=16,<17`, which the `test` group (websockets 17) cannot
hold: it lives in the `vendor-sdk` dependency group and runs in `nox -s vendor_sdk`. Elsewhere
this module is skipped.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from anytcm.testing import ReferenceManager

pytest.importorskip(
    "tcm_client", reason="the vendor SDK runs in `nox -s vendor_sdk` (dependency group vendor-sdk)"
)
from tcm_client import AuthContext, TcmWebSocketClient
from tcm_client.sdk import InferenceInput, TcmClient

VM_ID = "ref-vm-0"  # required by the SDK, ignored by inference (contract §4.3)
VM_IP = "127.0.0.1"
CONTAINER = "ref-0"
OPENSTACK = {
    "name": "vendor-vm",
    "keypair": "kp",
    "image_id": "img-1",
    "security": "default",
    "flavor_id": "m1.small",
    "network_id": "net-1",
}


@pytest.fixture(scope="module")
def token_manager() -> Iterator[ReferenceManager]:
    with ReferenceManager(token="vendor-secret") as running:
        yield running


def context(token: str | None = "dev-token") -> Any:
    # With a token the SDK sends `client: {sub, tenant_id, roles: []}`: the empty roles must get
    # the development defaults, as on the real server.
    return AuthContext(uuid=uuid.uuid4().hex, token=token)


def double_input(values: list[float]) -> Any:
    return InferenceInput(name="INPUT0", shape=[len(values)], datatype="FP32", data=values)


async def basic_calls(url: str, auth: Any) -> dict[str, Any]:
    async with TcmWebSocketClient(url, auth) as client:
        authed = await client.auth()
        stats = await client.info_queue_stats()
        inference = await client.inference_http(
            vm_id=VM_ID,
            vm_ip=VM_IP,
            container_id=CONTAINER,
            model_name="double",
            inputs=[double_input([1.0, 2.5])],
        )
        created = await client.management_creation(action="create_vm", openstack=OPENSTACK)
    return {"auth": authed, "stats": stats, "inference": inference, "management": created}


def test_basic_calls_with_a_token_in_simple_mode(manager: ReferenceManager) -> None:
    """auth, queue_stats, inference and management, the SDK's way: before, the SDK's
    `roles: []` left it without roles and every inference was refused as Forbidden."""
    replies = asyncio.run(basic_calls(manager.ws_url, context()))
    assert replies["auth"]["type"] == "auth.ok"
    stats = replies["stats"]["payload"]
    assert stats["status"] == "success"
    assert stats["request_type"] == "queue_stats"
    assert {"total_users", "inference_users", "executor_inference_available"} <= set(stats["data"])
    inference = replies["inference"]
    assert inference["type"] == "inference", inference
    assert inference["payload"]["status"] == "COMPLETED", inference
    assert inference["payload"]["data"] == {"OUTPUT0": [2.0, 5.0]}
    management = replies["management"]
    assert management["type"] == "management", management
    assert management["payload"]["status"] is True, management


def test_basic_calls_without_a_token(manager: ReferenceManager) -> None:
    """Without any credential the SDK sends an empty auth payload (default roles)."""
    replies = asyncio.run(basic_calls(manager.ws_url, context(token=None)))
    assert replies["inference"]["payload"]["data"] == {"OUTPUT0": [2.0, 5.0]}


def test_token_mode(token_manager: ReferenceManager) -> None:
    """Token mode: the right token is accepted, a wrong one refused at auth."""
    replies = asyncio.run(basic_calls(token_manager.ws_url, context("vendor-secret")))
    assert replies["inference"]["payload"]["status"] == "COMPLETED"

    async def wrong() -> None:
        async with TcmWebSocketClient(token_manager.ws_url, context("wrong")) as client:
            await client.auth()

    with pytest.raises(RuntimeError, match="Invalid token"):
        asyncio.run(wrong())


def test_blocking_helper_run_inference(manager: ReferenceManager) -> None:
    """`TcmClient.run_inference`, the SDK's one-call blocking helper (its own event loop)."""
    client = TcmClient(manager.ws_url, context())
    response = client.run_inference(
        vm_id=VM_ID, vm_ip=VM_IP, container_id=CONTAINER, model_name="double",
        data=[0.5, 4.0], input_name="INPUT0",
    )  # fmt: skip
    assert response.type == "inference"
    assert response.payload["status"] == "COMPLETED", response
    assert response.payload["data"] == {"OUTPUT0": [1.0, 8.0]}
