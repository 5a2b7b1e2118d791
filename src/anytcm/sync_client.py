"""`anytcm.SyncClient`: the async client behind a blocking API, for scripts and notebooks.

```python
with anytcm.SyncClient("ws://127.0.0.1:8000/ws", pool_size=4) as tcm:
    y = tcm.infer("double", {"INPUT0": x}, target=target).as_numpy("OUTPUT0")
```

Why a portal thread rather than `asyncio.run` per call: the client is a pool of long-lived,
supervised connections, which must keep running (reading replies, answering pings,
reconnecting) between two blocking calls. So the whole `AsyncClient` lives in an event loop of
its own, on a thread started with `anyio.from_thread.start_blocking_portal`; each blocking
method submits the async method to that loop and waits for its outcome. Nothing here ever
runs an event loop in the caller's thread, which is what makes it work where a loop is already
running (Jupyter, or a sync library called from async code): that loop is left alone.

There is one implementation of the protocol, the async one; this module only crosses threads.
Each method takes exactly the arguments of its `AsyncClient` counterpart (see that method for
what they mean) and raises the same typed `anytcm` exceptions, unwrapped.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import copy
import functools
import os
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import anyio
import anyio.abc
from anyio.from_thread import BlockingPortal, start_blocking_portal
from anyio.streams.memory import MemoryObjectReceiveStream

from . import wire
from ._client.opening import check_pool_size, manager_urls
from ._client.pipeline import Step
from ._client.staging import Inputs
from ._client.sync_wrappers import SyncAlerts, SyncInferStream, SyncInfoAPI, SyncManagementAPI
from ._core.managers import ManagerStatus
from .client import AsyncClient, InferStream, open_client
from .errors import ClientClosed
from .observability import ClientMetrics
from .options import ConnectSettings
from .results import InferResult, ModelSpec, Target
from .retry import RetryPolicy

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .options import ConnectOptions

_T = TypeVar("_T")

_WAIT_SLICE: float | None = 0.2 if sys.platform == "win32" else None
"""How long one wait for a result may block. On POSIX a blocked wait is interrupted by Ctrl-C;
on Windows it is not, so there the caller's thread wakes up regularly to let it through."""


class SyncClient:
    """A connected TCM client with blocking methods, safe to share between threads.

    `SyncClient(url, **options)` connects before it returns (the options are `ConnectOptions`,
    as for `anytcm.connect`, plus the portal's `backend` and `backend_options`), so a
    `SyncClient` object is always either connected or closed, and a refused connection raises
    at the line that names the URL. There is deliberately no separate `connect_sync()`: the
    constructor is the one way in, usable as `with anytcm.SyncClient(url) as tcm:` in scripts,
    or kept across notebook cells and ended with `tcm.close()`.

    Threads: any number of threads may call one `SyncClient` at once; each call runs as its own
    task in the portal, and the pool (`pool_size`) gives the parallelism, exactly as for
    concurrent tasks on an `AsyncClient`.

    Interruption: a `KeyboardInterrupt` (or any exception raised in the calling thread while it
    waits) cancels that call in the portal and propagates at once. The async client then cleans
    up as for any cancelled call: a request already written has its connection set aside until
    the late reply arrives, so no later call ever gets it. The client stays usable; or close it.

    Closing: `close()` (or leaving the `with` block) closes the async client, then stops the
    portal and joins its thread; no thread, socket or task survives it. Calls still in flight in
    other threads are cancelled and raise `ClientClosed` (a management action cut short this way
    may or may not have been applied), and every call after it raises `ClientClosed`. A client
    whose loop thread has gone (it crashed, or this is a forked child process) raises
    `ClientClosed` saying so, instead of waiting forever. Close it: its thread is a daemon, so
    an unclosed client does not keep the interpreter alive, but its connections stay open until
    then.
    """

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        backend: str = "asyncio",
        backend_options: dict[str, Any] | None = None,
        **options: Unpack[ConnectOptions],
    ) -> None:
        # Checked here, before a thread starts: a misspelt option or a bad value raises at once.
        urls = manager_urls(url)
        settings = ConnectSettings.from_options(options, caller="SyncClient()")
        check_pool_size(urls, settings.pool_size)
        self._backend = backend
        self._closed = False
        self._close_lock = threading.Lock()  # a second close() waits for the first to finish
        self._pid = os.getpid()
        self._portal_cm = start_blocking_portal(backend, backend_options)
        self._portal: BlockingPortal = self._portal_cm.__enter__()
        try:
            lifetime, started = _outside_trio(
                lambda: self._portal.start_task(_serve_client, urls, settings)
            )
        except BaseException:
            # Connection refused, or Ctrl-C while connecting: cancel whatever is left in the
            # portal and join its thread before the error propagates.
            self._closed = True
            self._stop_portal()
            raise
        self._lifetime: concurrent.futures.Future[None] = lifetime
        self._client: AsyncClient = started.client
        self._thread: threading.Thread = started.thread
        self._stop: anyio.Event = started.stop
        self.info = SyncInfoAPI(self, self._client.info)
        self.management = SyncManagementAPI(self, self._client.management)

    def __repr__(self) -> str:  # no token, ever
        state = " closed" if self._closed else ""
        settings = self._client._pool.settings
        return (
            f"<SyncClient url={settings.url!r} pool_size={settings.size} "
            f"backend={self._backend!r}{state}>"
        )

    def __enter__(self) -> SyncClient:  # noqa: PYI034 - not meant to be subclassed
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- crossing into the portal -------------------------------------------------------------

    def _unusable(self) -> ClientClosed | None:
        """Why no call can be made now (None: it can)."""
        if self._closed:
            return ClientClosed("this SyncClient is closed; create a new anytcm.SyncClient")
        if os.getpid() != self._pid:
            return ClientClosed(
                f"this SyncClient was created in process {self._pid}, and its event-loop thread "
                "does not exist in this forked child; create a SyncClient in each process"
            )
        if not self._thread.is_alive():
            return ClientClosed(
                "this SyncClient's event-loop thread has ended, so nothing can run; close() it "
                "and create a new anytcm.SyncClient"
            )
        if self._lifetime.done():
            cause = None if self._lifetime.cancelled() else self._lifetime.exception()
            return ClientClosed(
                f"this SyncClient's async client stopped unexpectedly ({cause!r}); close() it "
                "and create a new anytcm.SyncClient"
            )
        return None

    def _submit(self, func: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        problem = self._unusable()
        if problem is not None:
            raise problem
        try:
            return _outside_trio(lambda: self._portal.start_task_soon(func))
        except RuntimeError as exc:  # the portal stopped between the check and the call
            raise self._unusable() or ClientClosed("this SyncClient is closing") from exc

    def _run(self, call: Callable[[], Awaitable[_T]]) -> _T:
        """Run `await call()` in the portal; its outcome, or its exception, here."""
        future: concurrent.futures.Future[_T] = self._submit(call)
        return _wait(future)

    def _run_sync(self, call: Callable[[], _T]) -> _T:
        """Run a plain function in the portal's thread (the client's state lives there)."""
        future: concurrent.futures.Future[_T] = self._submit(call)
        return _wait(future)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Close the async client, stop the portal and join its thread (idempotent)."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
            if os.getpid() != self._pid:
                return  # a forked child: the loop thread, and so the client, live in the parent
            try:
                if self._thread.is_alive() and not self._lifetime.done():
                    try:
                        _outside_trio(lambda: self._portal.call(self._stop.set))
                    except RuntimeError:
                        pass  # the portal stopped on its own meanwhile
                    else:
                        self._lifetime.result()  # the async client's own closing errors, if any
            finally:
                self._stop_portal()

    def _stop_portal(self) -> None:
        """Cancel what is left in the portal (alert subscriptions, abandoned streams' clean-up,
        a connect in progress), stop its loop and join its thread."""

        def stop() -> None:
            with contextlib.suppress(RuntimeError):  # RuntimeError: already stopped
                self._portal.call(self._portal.stop, True)
            self._portal_cm.__exit__(None, None, None)

        _outside_trio(stop)

    # -- the AsyncClient surface ---------------------------------------------------------------

    def infer(
        self,
        model: str,
        inputs: Inputs,
        *,
        target: Target,
        protocol: Literal["http"] = "http",
        allow_transient: bool = False,
        output_dtypes: Mapping[str, Any] | None = None,
        input_spec: ModelSpec | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        carrier: str | Sequence[str] = "auto",
    ) -> InferResult:
        """Blocking `AsyncClient.infer`."""
        client = self._client
        return self._run(
            lambda: client.infer(
                model,
                inputs,
                target=target,
                protocol=protocol,
                allow_transient=allow_transient,
                output_dtypes=output_dtypes,
                input_spec=input_spec,
                timeout=timeout,
                retry=retry,
                carrier=carrier,
            )
        )

    def infer_stream(
        self,
        model: str,
        inputs: Inputs,
        *,
        target: Target,
        allow_transient: bool = False,
        output_name: str | None = None,
        timeout: float | None = None,
        idle_timeout: float | None = None,
    ) -> SyncInferStream:
        """Blocking `AsyncClient.infer_stream`: `with tcm.infer_stream(...) as stream:
        for event in stream: ...`. The deadline (`timeout`) starts now, as in the async one."""
        client = self._client
        stream = self._run_sync(
            lambda: client.infer_stream(
                model,
                inputs,
                target=target,
                allow_transient=allow_transient,
                output_name=output_name,
                timeout=timeout,
                idle_timeout=idle_timeout,
            )
        )
        return SyncInferStream(self, stream, functools.partial(_close_dropped_stream, self, stream))

    def pipeline(
        self,
        steps: Sequence[Step],
        *,
        target: Target,
        output_dtypes: Mapping[str, Mapping[str, Any]] | None = None,
        timeout: float | None = None,
    ) -> dict[str, InferResult]:
        """Blocking `AsyncClient.pipeline`."""
        client = self._client
        return self._run(
            lambda: client.pipeline(
                steps, target=target, output_dtypes=output_dtypes, timeout=timeout
            )
        )

    @contextmanager
    def alerts(self, buffer: int = 256) -> Iterator[SyncAlerts]:
        """Blocking `AsyncClient.alerts`: `with tcm.alerts() as frames: for frame in frames:`.

        Iteration blocks until the next unsolicited frame; `frames.receive(timeout=...)` waits
        at most that long. Leaving the block ends the subscription (iteration then stops).
        """
        client = self._client
        problem = self._unusable()
        if problem is not None:
            raise problem
        try:
            holder, frames = _outside_trio(
                lambda: self._portal.start_task(_hold_alerts, client, buffer)
            )
        except RuntimeError as exc:
            raise self._unusable() or ClientClosed("this SyncClient is closing") from exc
        try:
            yield SyncAlerts(self, frames)
        finally:
            holder.cancel()  # ends the async subscription in the portal (a no-op once closed)

    def set_model_spec(self, model: str, spec: ModelSpec, *, target: Target | None = None) -> None:
        """`AsyncClient.set_model_spec`, applied in the portal like every other state change."""
        client = self._client
        self._run_sync(lambda: client.set_model_spec(model, spec, target=target))

    def model_spec(self, model: str, target: Target | None = None) -> ModelSpec | None:
        """`AsyncClient.model_spec`."""
        client = self._client
        return self._run_sync(lambda: client.model_spec(model, target))

    @property
    def unsolicited_dropped(self) -> int:
        """`AsyncClient.unsolicited_dropped`."""
        client = self._client
        return self._run_sync(lambda: client.unsolicited_dropped)

    @property
    def retries(self) -> int:
        """`AsyncClient.retries`."""
        client = self._client
        return self._run_sync(lambda: client.retries)

    @property
    def stats(self) -> dict[str, int]:
        """`AsyncClient.stats`, read in the portal so the counters are consistent."""
        client = self._client
        return self._run_sync(lambda: client.stats)

    @property
    def metrics(self) -> ClientMetrics:
        """`AsyncClient.metrics`, copied in the portal: a consistent snapshot, not a live view."""
        client = self._client
        return self._run_sync(lambda: copy.deepcopy(client.metrics))

    @property
    def granted_capabilities(self) -> tuple[str, ...] | None:
        """`AsyncClient.granted_capabilities`."""
        client = self._client
        return self._run_sync(lambda: client.granted_capabilities)

    def managers(self) -> tuple[ManagerStatus, ...]:
        """`AsyncClient.managers`, read in the portal: a consistent snapshot."""
        client = self._client
        return self._run_sync(client.managers)


# -- what runs in the portal ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Started:
    """What the client task hands back once connected."""

    client: AsyncClient
    thread: threading.Thread
    stop: anyio.Event


async def _serve_client(
    urls: tuple[str, ...], settings: ConnectSettings, *, task_status: anyio.abc.TaskStatus[_Started]
) -> None:
    """The async client's whole life, in one portal task (its task group must live in one
    task): connect, hand it over, and stay inside `connect` until `close()` sets `stop`."""
    thread = threading.current_thread()
    thread.name = f"anytcm-SyncClient-{thread.name}"  # recognisable in threading.enumerate()
    async with open_client(urls, settings) as client:
        stop = anyio.Event()
        task_status.started(_Started(client, thread, stop))
        await stop.wait()


async def _hold_alerts(
    client: AsyncClient,
    buffer: int,
    *,
    task_status: anyio.abc.TaskStatus[MemoryObjectReceiveStream[wire.ServerFrame]],
) -> None:
    """Keep one `client.alerts()` subscription open until this task is cancelled."""
    async with client.alerts(buffer) as frames:
        task_status.started(frames)
        await anyio.sleep_forever()


def _wait(future: concurrent.futures.Future[_T]) -> _T:
    """The outcome of a portal task; leaving early (Ctrl-C) cancels the task in the portal."""
    try:
        if _WAIT_SLICE is not None:
            while not future.done():
                concurrent.futures.wait([future], timeout=_WAIT_SLICE)
        return future.result()
    except concurrent.futures.CancelledError:
        # Only the portal cancels on its own: when it is shutting down under this call.
        raise ClientClosed("the SyncClient was closed while this call was in flight") from None
    except BaseException:
        future.cancel()  # a no-op when the call has finished (its own error is propagating)
        raise


def _outside_trio(operation: Callable[[], _T]) -> _T:
    """Run a blocking portal operation, from a helper thread if this thread is running trio.

    `trio.from_thread` refuses to block a thread that is running a trio task, since a thread
    waiting on its own loop would deadlock. The portal's loop is another one, on another thread,
    so the wait is safe, but the guard cannot tell; and anyio's portal then fails to stop and
    waits for its thread forever. This happens when blocking code runs inside `trio.run` (e.g.
    IPython's `%autoawait trio`) with a trio portal. Only then is the operation, which returns
    as soon as the portal has taken it, handed to a short-lived thread.
    """
    from ._backend import current_backend

    if current_backend() != "trio":
        return operation()
    outcome: concurrent.futures.Future[_T] = concurrent.futures.Future()

    def hop() -> None:
        try:
            outcome.set_result(operation())
        except BaseException as exc:  # noqa: BLE001 - handed over whole; the caller re-raises it
            outcome.set_exception(exc)

    helper = threading.Thread(target=hop, name="anytcm-SyncClient-trio-hop", daemon=True)
    helper.start()
    helper.join()
    return outcome.result()


def _close_dropped_stream(owner: SyncClient, stream: InferStream) -> None:
    """Close a stream nobody closed, in the portal (fire and forget: this runs in a finalizer)."""
    if owner._unusable() is not None or threading.current_thread() is owner._thread:
        return  # the client is gone, or we are in the portal: the stream's own finalizer acts
    # RuntimeError: the portal stopped meanwhile, and closing the client released everything.
    with contextlib.suppress(RuntimeError):
        _outside_trio(lambda: owner._portal.start_task_soon(stream.aclose))


__all__ = ["SyncAlerts", "SyncClient", "SyncInferStream", "SyncInfoAPI", "SyncManagementAPI"]
