"""`client.info` and `client.management`: the manager's info and management actions."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import msgspec

from ..errors import ContractError, InvalidInput, ProtocolError
from ..protocol import excerpt_of
from ..results import (
    ContainerCreated,
    Deleted,
    Deployment,
    ModelSpec,
    QueueStats,
    ServerCreated,
    Target,
    VmCreated,
)

if TYPE_CHECKING:
    from ..client import AsyncClient

# The manager's answer to an info action it does not know (contract §4.1), status "success".
_NOT_IMPLEMENTED = re.compile(r"Info type '.*' not implemented yet")


class InfoAPI:
    """`client.info`: queue statistics and other info actions."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def queue_stats(self, *, timeout: float | None = None) -> QueueStats:
        """The manager's queue statistics (answered at once, even under load)."""
        reply = await self._client._info("queue_stats", timeout)
        with reply_shape("queue_stats", reply.data):
            return msgspec.convert(reply.data or {}, QueueStats, strict=False)

    async def request(self, action: str, *, timeout: float | None = None) -> Any:
        """Any info action; returns the reply's `data`.

        Raises `ContractError` for an action the manager does not implement (it answers those
        with success and a message, which would otherwise pass for data).
        """
        data = (await self._client._info(action, timeout)).data
        message = data.get("message") if isinstance(data, dict) and len(data) == 1 else None
        if isinstance(message, str) and _NOT_IMPLEMENTED.match(message):
            raise ContractError(
                f"the manager does not implement the info action {action!r} ({message}); "
                "queue_stats (and its alias queue) is the one it answers",
                server_message=message,
            )
        return data


class ManagementAPI:
    """`client.management`: one typed method per management action (contract §4.2).

    Management requests are never re-sent automatically: if the connection dies after one was
    written, it fails with `ConnectionLost(outcome_unknown=True)`.
    """

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def request(self, action: str, *, timeout: float | None = None, **payload: Any) -> Any:
        """Any action with a raw payload; returns the reply's `data`."""
        return await self._client._management({"action": action, **payload}, timeout)

    async def create_vm(
        self, *, openstack: Mapping[str, Any], timeout: float | None = None
    ) -> VmCreated:
        data = await self.request("create_vm", openstack=dict(openstack), timeout=timeout)
        with reply_shape("create_vm", data):
            if not isinstance(data, list) or len(data) != 2:
                raise TypeError("expected a two-item list")
            return VmCreated(str(data[0]), str(data[1]))

    async def create_container(
        self,
        *,
        vm_id: str,
        docker: Mapping[str, Any],
        minio: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> ContainerCreated:
        extra = {"minio": dict(minio)} if minio is not None else {}
        data = await self.request(
            "create_container", vm_id=vm_id, docker=dict(docker), timeout=timeout, **extra
        )
        with reply_shape("create_container", data):
            if isinstance(data, list):
                return ContainerCreated(str(data[0]), dict(data[1]) if len(data) > 1 else {})
            return ContainerCreated(str(data), {})

    async def create_server(
        self,
        *,
        vm_id: str,
        vm_ip: str,
        container_id: str,
        triton: Mapping[str, Any],
        minio: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> ServerCreated:
        data = await self.request(
            "create_server",
            vm_id=vm_id,
            vm_ip=vm_ip,
            container_id=container_id,
            triton=dict(triton),
            minio=dict(minio or {}),
            timeout=timeout,
        )
        with reply_shape("create_server", data):
            spec = ModelSpec.from_config(data)
            model = str(data["model_name"])
        self._client.set_model_spec(model, spec, target=Target(vm_ip, container_id))
        return ServerCreated(model, spec)

    async def creation(
        self,
        *,
        openstack: Mapping[str, Any],
        docker: Mapping[str, Any],
        triton: Mapping[str, Any],
        minio: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Deployment:
        data = await self.request(
            "creation",
            openstack=dict(openstack),
            docker=dict(docker),
            triton=dict(triton),
            minio=dict(minio or {}),
            timeout=timeout,
        )
        with reply_shape("creation", data):
            target = Target(str(data["vm_ip"]), str(data["container_id"]))
            spec = ModelSpec.from_config(data)
            model = str(data["model_name"])
        self._client.set_model_spec(model, spec, target=target)
        return Deployment(target, model, spec)

    async def deletion(
        self,
        deployment: Deployment | None = None,
        *,
        vm_id: str | None = None,
        vm_ip: str | None = None,
        container_id: str | None = None,
        timeout: float | None = None,
    ) -> Deleted:
        """Undo a `creation`: `deletion(deployment)` with what `creation()` returned, or name
        the container and its VM by `vm_id` or `vm_ip` (the manager finds the VM by address)."""
        if deployment is not None:
            vm_ip = vm_ip or deployment.target.vm_ip
            container_id = container_id or deployment.target.container_id
        if container_id is None or (vm_id is None and vm_ip is None):
            raise InvalidInput(
                "deletion needs container_id and the VM's vm_id or vm_ip; pass the Deployment "
                "that creation() returned, or name them"
            )
        vm = {"vm_id": vm_id} if vm_id is not None else {"vm_ip": vm_ip}
        data = await self.request("deletion", container_id=container_id, timeout=timeout, **vm)
        with reply_shape("deletion", data):
            return Deleted(data.get("vm_id"), data.get("container_id"))

    async def delete_server(
        self, *, vm_id: str, container_id: str, timeout: float | None = None
    ) -> None:
        await self.request("delete_server", vm_id=vm_id, container_id=container_id, timeout=timeout)

    async def delete_container(
        self, *, vm_id: str, container_id: str, timeout: float | None = None
    ) -> None:
        await self.request(
            "delete_container", vm_id=vm_id, container_id=container_id, timeout=timeout
        )

    async def delete_vm(
        self, *, vm_id: str, container_id: str, timeout: float | None = None
    ) -> None:
        await self.request("delete_vm", vm_id=vm_id, container_id=container_id, timeout=timeout)


@contextmanager
def reply_shape(action: str, data: Any) -> Iterator[None]:
    """Reading a well-formed reply whose `data` lacks the contract's shape raises ProtocolError.

    The frame itself decoded (so the connection is fine), but what the manager put in it is
    not what the action returns: a missing key, a string for a list. Whatever Python raises
    for that is turned into the error tree's name for it.
    """
    try:
        yield
    except (
        KeyError,
        IndexError,
        TypeError,
        ValueError,
        AttributeError,
        RecursionError,
        msgspec.DecodeError,  # ValidationError too
    ) as exc:
        excerpt = excerpt_of(msgspec.json.encode(data))
        raise ProtocolError(
            f"the manager's answer to {action!r} does not have the contract's shape ({exc!r}); "
            f"it was: {excerpt}",
            excerpt=excerpt,
            close_code=None,
            reason="unexpected reply shape",
        ) from None
