"""`client.info` and `client.management`: the manager's info and management actions.

Each API takes what its requests need (the pool, the recorder, the client's deadline function,
its retrier), not the client itself.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import msgspec

from .. import wire
from .._core import attempts
from .._core.affinity import affinity_keys
from .._core.managers import Manager
from .._core.pool import Pool
from ..errors import ContractError, InvalidInput, ManagementFailed, ProtocolError, RequestTimeout
from ..observability import Recorder
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
from .retrying import DeadlineOf, Retrier, caller_timeout

# The manager's answer to an info action it does not know (contract §4.1), status "success".
_NOT_IMPLEMENTED = re.compile(r"Info type '.*' not implemented yet")


class InfoAPI:
    """`client.info`: queue statistics and other info actions (retried like inferences)."""

    def __init__(
        self, pool: Pool, recorder: Recorder, deadline_of: DeadlineOf, retrier: Retrier
    ) -> None:
        self._pool = pool
        self._recorder = recorder
        self._deadline_of = deadline_of
        self._retrier = retrier

    async def _info(self, action: str, timeout: float | None) -> wire.InfoResponsePayload:
        with self._recorder.begin("info", None):
            seconds, deadline = self._deadline_of(timeout)
            try:
                return await self._retrier.run(
                    lambda: attempts.info(self._pool, action, deadline),
                    deadline,
                    f"info {action!r}",
                    started=deadline - seconds,
                )
            except RequestTimeout as exc:
                raise caller_timeout(exc, seconds, f"info request {action!r}") from None

    async def queue_stats(self, *, timeout: float | None = None) -> QueueStats:
        """The manager's queue statistics (answered at once, even under load)."""
        reply = await self._info("queue_stats", timeout)
        with reply_shape("queue_stats", reply.data):
            return msgspec.convert(reply.data or {}, QueueStats, strict=False)

    async def request(self, action: str, *, timeout: float | None = None) -> Any:
        """Any info action; returns the reply's `data`.

        Raises `ContractError` for an action the manager does not implement (it answers those
        with success and a message, which would otherwise pass for data).
        """
        data = (await self._info(action, timeout)).data
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

    def __init__(
        self,
        pool: Pool,
        recorder: Recorder,
        deadline_of: DeadlineOf,
        remember_spec: Callable[[str, ModelSpec, Target], None],
    ) -> None:
        self._pool = pool
        self._recorder = recorder
        self._deadline_of = deadline_of
        self._remember_spec = remember_spec  # what create_server/creation return is registered

    async def request(self, action: str, *, timeout: float | None = None, **payload: Any) -> Any:
        """Any action with a raw payload; returns the reply's `data`.

        With several managers, an action about a VM, container or server created through this
        client goes to the manager that created it (the others do not know it).
        """
        data, _ = await self._request(action, timeout, payload)
        return data

    async def _request(
        self, action: str, timeout: float | None, payload: dict[str, Any]
    ) -> tuple[Any, Manager | None]:
        """The reply's `data`, and the manager that answered."""
        with self._recorder.begin("management", None):
            seconds, deadline = self._deadline_of(timeout)
            routed = self._pool.affinity.routed(_keys_of(payload))
            try:
                result, manager = await attempts.management(
                    self._pool, {"action": action, **payload}, deadline, routed
                )
            except RequestTimeout as exc:
                raise caller_timeout(exc, seconds, f"management action {action!r}") from None
            if not result.status:
                raise ManagementFailed(
                    f"management action {action!r} failed on the manager: {result.data}",
                    action=action,
                    data=result.data,
                )
            return result.data, manager

    async def create_vm(
        self, *, openstack: Mapping[str, Any], timeout: float | None = None
    ) -> VmCreated:
        data, manager = await self._request("create_vm", timeout, {"openstack": dict(openstack)})
        with reply_shape("create_vm", data):
            if not isinstance(data, list) or len(data) != 2:
                raise TypeError("expected a two-item list")
            created = VmCreated(str(data[0]), str(data[1]))
        self._pool.affinity.pin(affinity_keys(vm_id=created.vm_id), manager)
        return created

    async def create_container(
        self,
        *,
        vm_id: str,
        docker: Mapping[str, Any],
        minio: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> ContainerCreated:
        extra = {"minio": dict(minio)} if minio is not None else {}
        data, manager = await self._request(
            "create_container", timeout, {"vm_id": vm_id, "docker": dict(docker), **extra}
        )
        with reply_shape("create_container", data):
            if isinstance(data, list):
                created = ContainerCreated(str(data[0]), dict(data[1]) if len(data) > 1 else {})
            else:
                created = ContainerCreated(str(data), {})
        self._pool.affinity.pin(affinity_keys(container_id=created.container_id), manager)
        return created

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
        data, manager = await self._request(
            "create_server",
            timeout,
            {
                "vm_id": vm_id,
                "vm_ip": vm_ip,
                "container_id": container_id,
                "triton": dict(triton),
                "minio": dict(minio or {}),
            },
        )
        with reply_shape("create_server", data):
            spec = ModelSpec.from_config(data)
            model = str(data["model_name"])
        self._pool.affinity.pin(affinity_keys(vm_ip=vm_ip, container_id=container_id), manager)
        self._remember_spec(model, spec, Target(vm_ip, container_id))
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
        data, manager = await self._request(
            "creation",
            timeout,
            {
                "openstack": dict(openstack),
                "docker": dict(docker),
                "triton": dict(triton),
                "minio": dict(minio or {}),
            },
        )
        with reply_shape("creation", data):
            target = Target(str(data["vm_ip"]), str(data["container_id"]))
            spec = ModelSpec.from_config(data)
            model = str(data["model_name"])
        keys = affinity_keys(vm_ip=target.vm_ip, container_id=target.container_id)
        self._pool.affinity.pin([*keys, *affinity_keys(vm_id=data.get("vm_id"))], manager)
        self._remember_spec(model, spec, target)
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
        data, _ = await self._request("deletion", timeout, {"container_id": container_id, **vm})
        self._pool.affinity.unpin(
            affinity_keys(vm_ip=vm_ip, container_id=container_id, vm_id=vm_id)
        )
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


def _keys_of(payload: Mapping[str, Any]) -> list[str]:
    """What a management request is about, as affinity keys (see `Pool.routed`)."""
    return affinity_keys(
        vm_id=payload.get("vm_id"),
        vm_ip=payload.get("vm_ip"),
        container_id=payload.get("container_id"),
    )


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
