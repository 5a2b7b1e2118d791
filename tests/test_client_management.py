"""Client integration: every management method, model specs, ManagementFailed, Forbidden.

The reference manager keeps VMs, containers and servers in memory; each test creates what it
uses, so tests do not depend on each other's leftovers.
"""

from __future__ import annotations

import anyio
import numpy as np
import pytest

import anytcm
from _client_helpers import (
    DOCKER,
    MINIO,
    OPENSTACK,
    REF,
    f32,
    infer_double,
    inference_frames_received,
    shape_of,
)
from anytcm.testing import ReferenceManager

pytestmark = pytest.mark.anyio


async def test_create_vm_container_server_then_infer_and_delete(manager: ReferenceManager) -> None:
    async with anytcm.connect(manager.ws_url, pool_size=2) as client:
        mgmt = client.management
        vm = await mgmt.create_vm(openstack=OPENSTACK)
        assert vm.vm_ip.startswith("10.77.0.")
        assert vm.vm_id

        container = await mgmt.create_container(vm_id=vm.vm_id, docker=DOCKER, minio=MINIO)
        assert len(container.container_id) == 64
        assert container.docker_config["image"] == DOCKER["image"]
        # The manager echoes MinIO credentials as environment variables (contract §4.2).
        assert container.docker_config["environment"]["MINIO_BUCKET"] == "models"

        target = anytcm.Target(vm.vm_ip, container.container_id)
        assert client.model_spec("double", target) is None
        server = await mgmt.create_server(
            vm_id=vm.vm_id,
            vm_ip=vm.vm_ip,
            container_id=container.container_id,
            triton={"model_name": "double"},
            minio=MINIO,
        )
        assert server.model_name == "double"
        assert shape_of(server.spec) == {"INPUT0": ("FP32", (-1,))}
        assert [(o.name, o.datatype) for o in server.spec.outputs] == [("OUTPUT0", "FP32")]
        # The spec is remembered for that target (and only that target).
        assert client.model_spec("double", target) == server.spec
        assert client.model_spec("double", REF) is None

        # Inference on the new target works, and the spec types the output (FP32, no hint).
        x = f32(1.5, -2.0, 4.25)
        result = await client.infer("double", {"INPUT0": x}, target=target)
        out = result.as_numpy("OUTPUT0")
        assert out.dtype == np.float32
        np.testing.assert_array_equal(out, 2 * x)

        # The spec is checked before sending: wrong dtype -> InvalidInput naming both sides.
        before = await _frames(manager)
        with pytest.raises(anytcm.InvalidInput) as caught:
            await client.infer(
                "double", {"INPUT0": np.array([1, 2], dtype=np.int32)}, target=target
            )
        message = str(caught.value)
        assert "INT32" in message
        assert "FP32" in message
        assert "INPUT0" in message
        assert caught.value.expected == {"INPUT0": ("FP32", (-1,))}
        assert caught.value.given == {"INPUT0": ("INT32", (2,))}
        # A float64 array for an FP32 input: the message says how to convert it.
        with pytest.raises(anytcm.InvalidInput, match=r"astype\(np\.float32\)"):
            await client.infer("double", {"INPUT0": np.array([1.0, 2.0])}, target=target)
        # Nothing was sent: the manager read no inference frame.
        await infer_double(client, f32(0.0))  # a sent frame, so the counter is sure to exist
        assert await _frames(manager) == before + 1

        # On the reference target no spec is known: the manager itself refuses (a 400).
        with pytest.raises(anytcm.InferenceFailed) as refused:
            await client.infer("double", {"INPUT0": np.array([1], dtype=np.int32)}, target=REF)
        assert "[400]" in refused.value.server_message

        await mgmt.delete_server(vm_id=vm.vm_id, container_id=container.container_id)
        with pytest.raises(anytcm.InferenceFailed):  # no Triton session for it any more
            await client.infer("double", {"INPUT0": x}, target=target)
        await mgmt.delete_container(vm_id=vm.vm_id, container_id=container.container_id)
        with pytest.raises(anytcm.ContractError):  # not in the Docker cache any more
            await client.infer("double", {"INPUT0": x}, target=target)
        await mgmt.delete_vm(vm_id=vm.vm_id, container_id=container.container_id)
        with pytest.raises(anytcm.ManagementFailed) as again:
            await mgmt.delete_vm(vm_id=vm.vm_id, container_id=container.container_id)
        assert again.value.action == "delete_vm"
        assert "not found" in str(again.value.data)


async def _frames(manager: ReferenceManager) -> float:
    return await anyio.to_thread.run_sync(inference_frames_received, manager)


async def test_spec_checks_shapes_and_names(manager: ReferenceManager) -> None:
    """`slow` declares DELAY_MS INT32 [1]: a wrong shape, a missing and an unexpected input
    are all refused before sending."""
    async with anytcm.connect(manager.ws_url, pool_size=1) as client:
        deployment = await client.management.creation(
            openstack=OPENSTACK, docker=DOCKER, triton={"model_name": "slow"}
        )
        target = deployment.target
        assert deployment.model_name == "slow"
        assert client.model_spec("slow", target) == deployment.spec
        assert shape_of(deployment.spec) == {
            "INPUT0": ("FP32", (-1,)),
            "DELAY_MS": ("INT32", (1,)),
        }
        with pytest.raises(anytcm.InvalidInput) as wrong_shape:
            await client.infer(
                "slow",
                {"INPUT0": f32(1.0), "DELAY_MS": np.array([1, 2], dtype=np.int32)},
                target=target,
            )
        assert "DELAY_MS" in str(wrong_shape.value)
        assert "[2]" in str(wrong_shape.value)
        with pytest.raises(anytcm.InvalidInput) as missing:
            await client.infer("slow", {"INPUT0": f32(1.0)}, target=target)
        assert "missing" in str(missing.value)
        assert "DELAY_MS" in str(missing.value)
        with pytest.raises(anytcm.InvalidInput) as unexpected:
            await client.infer(
                "slow",
                {
                    "INPUT0": f32(1.0),
                    "DELAY_MS": np.array([1], dtype=np.int32),
                    "EXTRA": f32(0.0),
                },
                target=target,
            )
        assert "EXTRA" in str(unexpected.value)
        ok = await client.infer(
            "slow", {"INPUT0": f32(3.0), "DELAY_MS": np.array([1], dtype=np.int32)}, target=target
        )
        np.testing.assert_array_equal(ok.as_numpy("OUTPUT0"), [6.0])
        # An explicit input_spec overrides (and here is looser than) the remembered one.
        with pytest.raises(anytcm.InvalidInput):
            await client.infer(
                "double",
                {"INPUT0": f32(1.0)},
                target=REF,
                input_spec=anytcm.ModelSpec((anytcm.TensorSpec("INPUT0", "FP64", (-1,)),)),
            )
        await client.management.request(
            "deletion", vm_ip=target.vm_ip, container_id=target.container_id
        )


async def test_creation_and_deletion(manager: ReferenceManager) -> None:
    async with anytcm.connect(manager.ws_url, pool_size=1) as client:
        mgmt = client.management
        deployment = await mgmt.creation(
            openstack=OPENSTACK, docker=DOCKER, triton={"model_name": "double"}, minio=MINIO
        )
        assert deployment.target.vm_ip.startswith("10.77.0.")
        assert deployment.model_name == "double"
        await infer_double(client, f32(7.0), target=deployment.target)

        # What creation() returned is all deletion() needs (the manager finds the VM by its ip).
        deleted = await mgmt.deletion(deployment)
        assert deleted.container_id == deployment.target.container_id
        assert deleted.vm_id is not None
        data = {"vm_id": deleted.vm_id}
        with pytest.raises(anytcm.ContractError):
            await client.infer("double", {"INPUT0": f32(1.0)}, target=deployment.target)
        # The typed method (vm_id known from the reply): a second deletion fails.
        with pytest.raises(anytcm.ManagementFailed) as caught:
            await mgmt.deletion(vm_id=str(data["vm_id"]), container_id="gone")
        assert caught.value.action == "deletion"
        assert isinstance(caught.value.data, str)
        assert "not found" in caught.value.data
        assert "not found" in str(caught.value)


async def test_deletion_needs_a_container_and_a_vm(manager: ReferenceManager) -> None:
    async with anytcm.connect(manager.ws_url, pool_size=1) as client:
        with pytest.raises(anytcm.InvalidInput, match="Deployment that creation"):
            await client.management.deletion(container_id="c")
        with pytest.raises(anytcm.InvalidInput):
            await client.management.deletion(vm_id="v")


async def test_management_failures(manager: ReferenceManager) -> None:
    async with anytcm.connect(manager.ws_url, pool_size=1) as client:
        mgmt = client.management
        with pytest.raises(anytcm.ManagementFailed) as no_vm:
            await mgmt.create_container(vm_id="no-such-vm", docker=DOCKER)
        assert no_vm.value.action == "create_container"
        assert "no-such-vm" in no_vm.value.data
        assert isinstance(no_vm.value, anytcm.RequestError)

        with pytest.raises(anytcm.ManagementFailed) as missing_keys:
            await mgmt.create_vm(openstack={"name": "only-a-name"})
        assert "keypair" in missing_keys.value.data

        vm = await mgmt.create_vm(openstack=OPENSTACK)
        container = await mgmt.create_container(vm_id=vm.vm_id, docker=DOCKER)
        with pytest.raises(anytcm.ManagementFailed) as unknown_model:
            await mgmt.create_server(
                vm_id=vm.vm_id,
                vm_ip=vm.vm_ip,
                container_id=container.container_id,
                triton={"model_name": "not-in-the-zoo"},
            )
        assert "TRITON_MODEL_LOAD_FAILED" in unknown_model.value.data
        target = anytcm.Target(vm.vm_ip, container.container_id)
        assert client.model_spec("not-in-the-zoo", target) is None

        with pytest.raises(anytcm.ManagementFailed) as unknown_action:
            await mgmt.request("reboot_everything")
        assert unknown_action.value.data == "Job action not found: 'reboot_everything'"

        # Failures leave the connection usable for every request type.
        await infer_double(client, f32(1.0))
        await client.info.queue_stats()
        await mgmt.delete_container(vm_id=vm.vm_id, container_id=container.container_id)
        await mgmt.delete_vm(vm_id=vm.vm_id, container_id=container.container_id)


async def test_forbidden_without_management_role(manager: ReferenceManager) -> None:
    async with anytcm.connect(manager.ws_url, pool_size=1, roles=["inference"]) as client:
        started = client.stats["connects"]
        with pytest.raises(anytcm.Forbidden) as caught:
            await client.management.create_vm(openstack=OPENSTACK, timeout=10)
        assert isinstance(caught.value, PermissionError)
        assert "management" in caught.value.server_message
        # Still usable: inference, info and a second management call (also Forbidden, promptly).
        await infer_double(client, f32(2.0))
        await client.info.queue_stats(timeout=10)
        with pytest.raises(anytcm.Forbidden):
            await client.management.request("delete_vm", vm_id="x", container_id="y", timeout=10)
        assert client.stats["connects"] == started  # no reconnect was needed


async def test_forbidden_without_inference_role(manager: ReferenceManager) -> None:
    async with anytcm.connect(manager.ws_url, pool_size=1, roles=["management"]) as client:
        with pytest.raises(anytcm.Forbidden) as caught:
            await client.infer("double", {"INPUT0": f32(1.0)}, target=REF, timeout=10)
        assert "inference" in caught.value.server_message
        vm = await client.management.create_vm(openstack=OPENSTACK, timeout=10)
        await client.management.delete_vm(vm_id=vm.vm_id, container_id="none", timeout=10)
        with pytest.raises(anytcm.Forbidden):
            await client.infer("double", {"INPUT0": f32(1.0)}, target=REF, timeout=10)


async def test_typed_deletion(manager: ReferenceManager) -> None:
    async with anytcm.connect(manager.ws_url, pool_size=1) as client:
        mgmt = client.management
        vm = await mgmt.create_vm(openstack=OPENSTACK)
        container = await mgmt.create_container(vm_id=vm.vm_id, docker=DOCKER)
        target = anytcm.Target(vm.vm_ip, container.container_id)
        await mgmt.create_server(
            vm_id=vm.vm_id,
            vm_ip=vm.vm_ip,
            container_id=container.container_id,
            triton={"model_name": "identity"},
        )
        echoed = await client.infer("identity", {"X": np.arange(3)}, target=target)
        np.testing.assert_array_equal(echoed.as_numpy("OUT_X"), [0, 1, 2])
        deleted = await mgmt.deletion(vm_id=vm.vm_id, container_id=container.container_id)
        assert deleted.vm_id == vm.vm_id
        assert deleted.container_id == container.container_id
        with pytest.raises(anytcm.ContractError):
            await client.infer("identity", {"X": np.arange(3)}, target=target)
