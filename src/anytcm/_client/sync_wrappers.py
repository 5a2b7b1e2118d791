"""The blocking twins of the async client's parts: a stream, the alerts, info and management.

`anytcm.SyncClient` hands them out (and `anytcm.sync_client` is where users import them from).
Each holds the async object it wraps and a `Portal`, the narrow part of its `SyncClient` that
runs a call in the client's event loop, so this module needs nothing else of the client.
"""

from __future__ import annotations

import weakref
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import anyio

from ..errors import ClientClosed

if TYPE_CHECKING:
    from anyio.streams.memory import MemoryObjectReceiveStream

    from .. import wire
    from ..results import (
        ContainerCreated,
        Deleted,
        Deployment,
        QueueStats,
        ServerCreated,
        StreamEvent,
        VmCreated,
    )
    from .management import InfoAPI, ManagementAPI
    from .streams import InferStream

_T = TypeVar("_T")


class Portal(Protocol):
    """What the wrappers use of their `SyncClient`."""

    def _run(self, call: Callable[[], Awaitable[_T]]) -> _T:
        """`await call()` in the client's event loop; its outcome, or its exception, here."""
        ...

    def _unusable(self) -> ClientClosed | None:
        """Why no call can be made now (None: it can)."""
        ...


class SyncInferStream:
    """A streamed inference read by blocking calls; see `SyncClient.infer_stream`.

    Iterating yields `StreamEvent`s (START, ONGOING..., COMPLETED). `close()` (or leaving the
    `with` block) closes the async stream in the portal, early or not. A stream dropped without
    closing is closed in the portal when it is garbage-collected, never from the dropping
    thread, since the pool it belongs to is only ever touched by the portal's thread.
    """

    def __init__(
        self, owner: Portal, stream: InferStream, close_dropped: Callable[[], object]
    ) -> None:
        """`close_dropped` closes the stream from the finalizer: it must not refer to `self`."""
        self._owner = owner
        self._stream = stream
        self._finalizer = weakref.finalize(self, close_dropped)
        self._finalizer.atexit = False  # at exit the whole portal goes; nothing to hand back

    def __enter__(self) -> SyncInferStream:  # noqa: PYI034 - not meant to be subclassed
        stream = self._stream
        self._owner._run(stream.__aenter__)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __iter__(self) -> SyncInferStream:
        return self

    def __next__(self) -> StreamEvent:
        try:
            return self._owner._run(self._stream.__anext__)
        except StopAsyncIteration:
            raise StopIteration from None

    def close(self) -> None:
        """Stop reading (idempotent; a no-op once the client is closed, which ended it)."""
        if self._finalizer.detach() is None or self._owner._unusable() is not None:
            return
        self._owner._run(self._stream.aclose)


class SyncAlerts:
    """Unsolicited frames as a blocking iterator; see `SyncClient.alerts`."""

    def __init__(self, owner: Portal, frames: MemoryObjectReceiveStream[wire.ServerFrame]) -> None:
        self._owner = owner
        self._frames = frames

    def __iter__(self) -> SyncAlerts:
        return self

    def __next__(self) -> wire.ServerFrame:
        try:
            return self._owner._run(self._frames.receive)
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise StopIteration from None

    def receive(self, *, timeout: float | None = None) -> wire.ServerFrame:
        """The next frame; `TimeoutError` after `timeout` seconds without one, `ClientClosed`
        once the subscription or the client has ended."""
        frames = self._frames

        async def receive_within() -> wire.ServerFrame:
            with anyio.fail_after(timeout):
                return await frames.receive()

        try:
            return self._owner._run(receive_within)
        except TimeoutError:
            raise TimeoutError(f"no unsolicited frame within {timeout:g} s") from None
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise ClientClosed("the alerts subscription has ended") from None


class SyncInfoAPI:
    """`SyncClient.info`: blocking `InfoAPI`."""

    def __init__(self, owner: Portal, info: InfoAPI) -> None:
        self._owner = owner
        self._info = info

    def queue_stats(self, *, timeout: float | None = None) -> QueueStats:
        """Blocking `InfoAPI.queue_stats`."""
        info = self._info
        return self._owner._run(lambda: info.queue_stats(timeout=timeout))

    def request(self, action: str, *, timeout: float | None = None) -> Any:
        """Blocking `InfoAPI.request`."""
        info = self._info
        return self._owner._run(lambda: info.request(action, timeout=timeout))


class SyncManagementAPI:
    """`SyncClient.management`: blocking `ManagementAPI` (never re-sent automatically)."""

    def __init__(self, owner: Portal, api: ManagementAPI) -> None:
        self._owner = owner
        self._api = api

    def request(self, action: str, *, timeout: float | None = None, **payload: Any) -> Any:
        """Blocking `ManagementAPI.request`."""
        api = self._api
        return self._owner._run(lambda: api.request(action, timeout=timeout, **payload))

    def create_vm(self, *, openstack: Mapping[str, Any], timeout: float | None = None) -> VmCreated:
        api = self._api
        return self._owner._run(lambda: api.create_vm(openstack=openstack, timeout=timeout))

    def create_container(
        self,
        *,
        vm_id: str,
        docker: Mapping[str, Any],
        minio: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> ContainerCreated:
        api = self._api
        return self._owner._run(
            lambda: api.create_container(vm_id=vm_id, docker=docker, minio=minio, timeout=timeout)
        )

    def create_server(
        self,
        *,
        vm_id: str,
        vm_ip: str,
        container_id: str,
        triton: Mapping[str, Any],
        minio: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> ServerCreated:
        api = self._api
        return self._owner._run(
            lambda: api.create_server(
                vm_id=vm_id,
                vm_ip=vm_ip,
                container_id=container_id,
                triton=triton,
                minio=minio,
                timeout=timeout,
            )
        )

    def creation(
        self,
        *,
        openstack: Mapping[str, Any],
        docker: Mapping[str, Any],
        triton: Mapping[str, Any],
        minio: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Deployment:
        api = self._api
        return self._owner._run(
            lambda: api.creation(
                openstack=openstack, docker=docker, triton=triton, minio=minio, timeout=timeout
            )
        )

    def deletion(
        self,
        deployment: Deployment | None = None,
        *,
        vm_id: str | None = None,
        vm_ip: str | None = None,
        container_id: str | None = None,
        timeout: float | None = None,
    ) -> Deleted:
        api = self._api
        return self._owner._run(
            lambda: api.deletion(
                deployment, vm_id=vm_id, vm_ip=vm_ip, container_id=container_id, timeout=timeout
            )
        )

    def delete_server(self, *, vm_id: str, container_id: str, timeout: float | None = None) -> None:
        api = self._api
        self._owner._run(
            lambda: api.delete_server(vm_id=vm_id, container_id=container_id, timeout=timeout)
        )

    def delete_container(
        self, *, vm_id: str, container_id: str, timeout: float | None = None
    ) -> None:
        api = self._api
        self._owner._run(
            lambda: api.delete_container(vm_id=vm_id, container_id=container_id, timeout=timeout)
        )

    def delete_vm(self, *, vm_id: str, container_id: str, timeout: float | None = None) -> None:
        api = self._api
        self._owner._run(
            lambda: api.delete_vm(vm_id=vm_id, container_id=container_id, timeout=timeout)
        )


__all__ = ["Portal", "SyncAlerts", "SyncInferStream", "SyncInfoAPI", "SyncManagementAPI"]
