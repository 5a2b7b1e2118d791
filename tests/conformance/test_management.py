"""Contract §4.2: `management` requests (reference: a fake OpenStack/Docker/MinIO backend)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from ._client import (
    DOCKER,
    MINIO,
    OPENSTACK,
    Client,
    completed_data,
    create_container,
    create_vm,
    fp32,
    inference_payload,
    management,
    new_uuid,
    session,
)

ACTIONS = (
    "creation",
    "deletion",
    "create_vm",
    "create_container",
    "create_server",
    "delete_server",
    "delete_container",
    "delete_vm",
)


def assert_io_descriptors(items: Any) -> None:
    """`[{name, type:"TYPE_*", dims:[…]}]` (from config.pbtxt)."""
    assert isinstance(items, list)
    assert items
    for item in items:
        assert set(item) >= {"name", "type", "dims"}, item
        assert isinstance(item["name"], str)
        assert item["type"].startswith("TYPE_"), item
        assert isinstance(item["dims"], list)
        assert all(isinstance(d, int) for d in item["dims"])


def test_management_echoes_whole_envelope(ws_url: str) -> None:
    """§4.2, §2.1: the reply is a shallow copy of the inbound message (uuid, type, every extra
    top-level key such as `request_id`) plus `_correlation_id` (16 hex) and `_auth`
    (`{sub, tenant_id, roles, capability}`), with `payload` replaced by `{status, data}`."""
    with session(ws_url, capability=["json"]) as client:
        reply = management(
            client, {"action": "nope", "other": 1}, request_id="req-1", extra={"k": [1]}
        )
        assert reply["type"] == "management"
        assert reply["uuid"] == client.uuid
        assert reply["request_id"] == "req-1"
        assert reply["extra"] == {"k": [1]}
        assert re.fullmatch(r"[0-9a-f]{16}", reply["_correlation_id"]), reply
        auth = reply["_auth"]
        assert set(auth) >= {"sub", "tenant_id", "roles", "capability"}, auth
        assert auth["sub"] is None
        assert auth["tenant_id"] is None
        assert set(reply["payload"]) == {"status", "data"}
        assert set(reply) == {
            "uuid",
            "type",
            "payload",
            "request_id",
            "extra",
            "_correlation_id",
            "_auth",
        }


def test_correlation_id_differs_per_message(ws_url: str) -> None:
    """§2.1: the server injects a `_correlation_id` into every accepted message."""
    with session(ws_url) as client:
        first = management(client, {"action": "nope"})
        second = management(client, {"action": "nope"})
        assert first["_correlation_id"] != second["_correlation_id"]


@pytest.mark.parametrize("action", ["inspect_config", "load_model", "unload_model", ""])
def test_unknown_action_not_found(ws_url: str, action: str) -> None:
    """§4.2: any action outside the allowed list → `status:false`, `data:"Job action not found:
    '<x>'"`."""
    with session(ws_url) as client:
        reply = management(client, {"action": action})
        assert reply["payload"] == {"status": False, "data": f"Job action not found: '{action}'"}


@pytest.mark.reference_only
def test_creation_returns_model_description(ws_url: str) -> None:
    """§4.2 creation: `openstack{…}`, `docker{…}`, `minio{…}`, `triton{…}` → data `{vm_ip,
    container_id, model_name, inputs, outputs}`, inputs/outputs `[{name, type:"TYPE_*", dims}]`."""
    with session(ws_url) as client:
        reply = management(
            client,
            {
                "action": "creation",
                "openstack": dict(OPENSTACK),
                "docker": dict(DOCKER),
                "minio": dict(MINIO),
                "triton": {},
            },
        )
        assert reply["payload"]["status"] is True, reply
        data = reply["payload"]["data"]
        assert set(data) == {"vm_ip", "container_id", "model_name", "inputs", "outputs"}
        assert isinstance(data["vm_ip"], str)
        assert isinstance(data["container_id"], str)
        assert isinstance(data["model_name"], str)
        assert_io_descriptors(data["inputs"])
        assert_io_descriptors(data["outputs"])


@pytest.mark.reference_only
@pytest.mark.parametrize("missing", sorted(OPENSTACK))
def test_creation_requires_openstack_keys(ws_url: str, missing: str) -> None:
    """§4.2 creation: the openstack keys name, keypair, image_id, security, flavor_id and
    network_id are required; failure → `status:false` with the error string as data."""
    openstack = {k: v for k, v in OPENSTACK.items() if k != missing}
    with session(ws_url) as client:
        reply = management(
            client,
            {
                "action": "creation",
                "openstack": openstack,
                "docker": dict(DOCKER),
                "minio": dict(MINIO),
                "triton": {},
            },
        )
        assert reply["payload"]["status"] is False, reply
        assert isinstance(reply["payload"]["data"], str)


@pytest.mark.reference_only
def test_create_vm_returns_ip_and_id(ws_url: str) -> None:
    """§4.2 create_vm: `openstack{…}` → data `[vm_ip, vm_id]` (a JSON array)."""
    with session(ws_url) as client:
        reply = management(client, {"action": "create_vm", "openstack": dict(OPENSTACK)})
        assert reply["payload"]["status"] is True, reply
        data = reply["payload"]["data"]
        assert isinstance(data, list)
        assert len(data) == 2
        assert all(isinstance(x, str) and x for x in data)


@pytest.mark.reference_only
def test_create_container_on_cached_vm(ws_url: str) -> None:
    """§4.2 create_container: needs a `vm_id` (payload top level) of a VM in the OpenStack
    cache; data `[container_id, docker_config]`."""
    with session(ws_url) as client:
        _vm_ip, vm_id = create_vm(client)
        reply = management(
            client,
            {
                "action": "create_container",
                "vm_id": vm_id,
                "docker": dict(DOCKER),
                "minio": dict(MINIO),
            },
        )
        assert reply["payload"]["status"] is True, reply
        container_id, docker_config = reply["payload"]["data"]
        assert isinstance(container_id, str)
        assert container_id
        assert isinstance(docker_config, dict)


@pytest.mark.reference_only
def test_create_container_refuses_unknown_vm(ws_url: str) -> None:
    """§4.2 create_container: the VM must be in the OpenStack cache."""
    with session(ws_url) as client:
        reply = management(
            client,
            {
                "action": "create_container",
                "vm_id": "no-such-vm-" + new_uuid(),
                "docker": dict(DOCKER),
                "minio": dict(MINIO),
            },
        )
        assert reply["payload"]["status"] is False
        assert isinstance(reply["payload"]["data"], str)


@pytest.mark.reference_only
@pytest.mark.parametrize("where", ["openstack", "openstack_vm_id"])
def test_create_container_vm_id_spellings(ws_url: str, where: str) -> None:
    """§4.2 create_container: the VM id may also be given as `openstack.vm_id` or
    `openstack_vm_id`."""
    with session(ws_url) as client:
        _vm_ip, vm_id = create_vm(client)
        payload: dict[str, Any] = {
            "action": "create_container",
            "docker": dict(DOCKER),
            "minio": dict(MINIO),
        }
        if where == "openstack":
            payload["openstack"] = {"vm_id": vm_id}
        else:
            payload["openstack_vm_id"] = vm_id
        reply = management(client, payload)
        assert reply["payload"]["status"] is True, reply


@pytest.mark.reference_only
def test_create_container_refuses_client_supplied_ip(ws_url: str) -> None:
    """§4.2 create_container: client-supplied IPs are refused — a `vm_ip` without a cached
    `vm_id` fails."""
    with session(ws_url) as client:
        reply = management(
            client,
            {
                "action": "create_container",
                "vm_ip": "10.200.0.1",
                "docker": dict(DOCKER),
                "minio": dict(MINIO),
            },
        )
        assert reply["payload"]["status"] is False, reply


def _create_server(client: Client, vm_id: str, vm_ip: str, container_id: str) -> Any:
    reply = management(
        client,
        {
            "action": "create_server",
            "vm_id": vm_id,
            "vm_ip": vm_ip,
            "container_id": container_id,
            "minio": dict(MINIO),
            "triton": {},
        },
    )
    assert reply["payload"]["status"] is True, reply
    return reply["payload"]["data"]


@pytest.mark.reference_only
def test_create_server_registers_target(ws_url: str) -> None:
    """§4.2 create_server: data `{model_name, inputs, outputs}`; registers the server so
    inference against that target works without `allow_transient`."""
    with session(ws_url) as client:
        vm_ip, vm_id = create_vm(client)
        container_id = create_container(client, vm_id)
        data = _create_server(client, vm_id, vm_ip, container_id)
        assert set(data) == {"model_name", "inputs", "outputs"}
        assert isinstance(data["model_name"], str)
        assert_io_descriptors(data["inputs"])
        assert_io_descriptors(data["outputs"])
        client.send(
            "inference",
            inference_payload(
                "double", [fp32("INPUT0", [1.0, 2.5])], vm_ip=vm_ip, container_id=container_id
            ),
        )
        assert completed_data(client.recv()) == {"OUTPUT0": [2.0, 5.0]}


@pytest.mark.reference_only
def test_create_server_accepts_nested_ids(ws_url: str) -> None:
    """§4.2 create_server: `vm_id`, `vm_ip`, `container_id` may be nested under
    `openstack`/`docker`."""
    with session(ws_url) as client:
        vm_ip, vm_id = create_vm(client)
        container_id = create_container(client, vm_id)
        reply = management(
            client,
            {
                "action": "create_server",
                "openstack": {"vm_id": vm_id, "vm_ip": vm_ip},
                "docker": {"container_id": container_id},
                "minio": dict(MINIO),
                "triton": {},
            },
        )
        assert reply["payload"]["status"] is True, reply


@pytest.mark.reference_only
def test_deletion_returns_ids(ws_url: str) -> None:
    """§4.2 deletion: `vm_id` + `container_id` → data `{vm_id, container_id}`."""
    with session(ws_url) as client:
        vm_ip, vm_id = create_vm(client)
        container_id = create_container(client, vm_id)
        _create_server(client, vm_id, vm_ip, container_id)
        reply = management(
            client, {"action": "deletion", "vm_id": vm_id, "container_id": container_id}
        )
        assert reply["payload"] == {
            "status": True,
            "data": {"vm_id": vm_id, "container_id": container_id},
        }


@pytest.mark.reference_only
@pytest.mark.parametrize("action", ["delete_server", "delete_container", "delete_vm"])
def test_delete_step_with_top_level_ids(ws_url: str, action: str) -> None:
    """§4.2: `delete_server`/`delete_container`/`delete_vm` with top-level `vm_id` and
    `container_id` succeed."""
    with session(ws_url) as client:
        vm_ip, vm_id = create_vm(client)
        container_id = create_container(client, vm_id)
        _create_server(client, vm_id, vm_ip, container_id)
        reply = management(client, {"action": action, "vm_id": vm_id, "container_id": container_id})
        assert reply["payload"]["status"] is True, reply


@pytest.mark.reference_only
@pytest.mark.parametrize("action", ["delete_server", "delete_container", "delete_vm"])
def test_delete_step_needs_top_level_ids(ws_url: str, action: str) -> None:
    """§4.2: the single delete steps need **top-level** `vm_id` and `container_id` (no nested-key
    normalisation): nested ids fail with `status:false`."""
    with session(ws_url) as client:
        vm_ip, vm_id = create_vm(client)
        container_id = create_container(client, vm_id)
        _create_server(client, vm_id, vm_ip, container_id)
        reply = management(
            client,
            {
                "action": action,
                "openstack": {"vm_id": vm_id},
                "docker": {"container_id": container_id},
            },
        )
        assert reply["payload"]["status"] is False, reply
        assert isinstance(reply["payload"]["data"], str)


def test_all_actions_are_known(ws_url: str) -> None:
    """§4.2: the allowed actions never answer `Job action not found` (even with an empty
    payload they fail with another message)."""
    with session(ws_url) as client:
        for action in ACTIONS:
            reply = management(client, {"action": action})
            assert reply["type"] == "management"
            assert reply["payload"]["data"] != f"Job action not found: '{action}'"
