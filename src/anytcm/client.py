"""The public client: `anytcm.connect(...)` and `AsyncClient`.

`connect` opens a pool of authenticated connections under a task group and returns once the
first one is ready; the others come up (and come back after failures) in the background.
Every call has a deadline (`timeout`), because the manager answers some failures with nothing.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import ssl
import sys
import uuid as uuid_module
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import anyio
import msgspec
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from . import wire
from ._client.management import InfoAPI, ManagementAPI, reply_shape
from ._client.retrying import caller_timeout, retrying
from ._client.staging import Inputs, Stager, input_values
from ._client.streams import InferStream
from ._core.deadlines import backend_clock
from ._core.pool import Pool, PoolSettings
from ._core.session import NotSent
from .backoff import Backoff
from .carriers import Staged, StagedInputs
from .errors import (
    ManagementFailed,
    RequestTimeout,
    TcmError,
)
from .observability import ClientMetrics, Recorder
from .plugins import carrier_names
from .protocol import InferenceCompleted
from .readiness import ReadinessGate
from .results import (
    InferResult,
    ModelSpec,
    Target,
    shared_float_dtype,
)
from .retry import RetryPolicy
from .transports import (
    DEFAULT_MAX_MESSAGE_SIZE,
    TransportFactory,
    TransportOptions,
    collapse_exception_group,
)

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

logger = logging.getLogger("anytcm.client")


MAX_FRAME_BYTES = 65536
"""The manager's inbound frame cap (contract §1): larger frames close the connection (1009)."""

_T = TypeVar("_T")


class AsyncClient:
    """A connected TCM client. Obtain one with `async with anytcm.connect(url) as client`."""

    def __init__(
        self,
        pool: Pool,
        *,
        timeout: float,
        max_frame_bytes: int,
        retry: RetryPolicy,
        same_host: bool,
        recorder: Recorder | None = None,
    ) -> None:
        self._pool = pool
        self._now = backend_clock()  # created inside the event loop, by `connect`
        self._recorder = recorder or Recorder(tracing=False)
        self._timeout = timeout
        self._retry = retry
        self._same_host = same_host
        self.retries = 0
        self._max_frame_bytes = max_frame_bytes
        self._specs: dict[tuple[str, Target | None], ModelSpec] = {}
        self._subscribers: set[MemoryObjectSendStream[wire.ServerFrame]] = set()
        self.unsolicited_dropped = 0
        self._stager = Stager(
            max_frame_bytes=max_frame_bytes,
            same_host=same_host,
            granted=lambda: self.granted_capabilities,
            uuid_bytes_bound=lambda: pool.uuid_bytes_bound,
            model_spec=self.model_spec,
        )
        self.info = InfoAPI(self)
        self.management = ManagementAPI(self)

    def __repr__(self) -> str:  # no token, ever
        return f"<AsyncClient url={self._pool.settings.url!r} pool_size={self._pool.settings.size}>"

    # -- shared plumbing ------------------------------------------------------------------

    def _deadline(self, timeout: float | None) -> tuple[float, float]:
        seconds = self._timeout if timeout is None else timeout
        if seconds <= 0:
            raise ValueError("timeout must be positive")
        return seconds, self._now() + seconds

    def _deliver_unsolicited(self, frame: wire.ServerFrame) -> None:
        logger.info("unsolicited frame: %.300s", frame)  # a hostile one may be megabytes
        for stream in list(self._subscribers):
            try:
                stream.send_nowait(frame)
            except anyio.WouldBlock:
                self.unsolicited_dropped += 1  # a slow subscriber loses frames, never the client
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._subscribers.discard(stream)

    @asynccontextmanager
    async def alerts(
        self, buffer: int = 256
    ) -> AsyncIterator[MemoryObjectReceiveStream[wire.ServerFrame]]:
        """Receive unsolicited frames (alerts, budget warnings, unknown frame types).

        `async with client.alerts() as frames: async for frame in frames: ...`. A subscriber that
        falls `buffer` frames behind loses the newest ones (counted in `unsolicited_dropped`).
        Note the manager sends `alert` frames only to its first-connected live client.
        """
        send, receive = anyio.create_memory_object_stream[wire.ServerFrame](buffer)
        self._subscribers.add(send)
        try:
            async with receive:
                yield receive
        finally:
            self._subscribers.discard(send)
            send.close()

    def set_model_spec(self, model: str, spec: ModelSpec, *, target: Target | None = None) -> None:
        """Remember a model's inputs/outputs: inputs are then checked before sending, and
        outputs get their dtypes. Management calls that return a spec register it themselves."""
        self._specs[(model, target)] = spec

    def model_spec(self, model: str, target: Target | None = None) -> ModelSpec | None:
        if not self._specs:  # Perf: the usual case, and it spares hashing `target` per request
            return None
        return self._specs.get((model, target)) or self._specs.get((model, None))

    @property
    def stats(self) -> dict[str, int]:
        """Counters: connects, reconnects, connect failures, stale replies, quarantines."""
        s = self._pool.stats
        return {
            "connects": s.connects,
            "reconnects": s.reconnects,
            "connect_failures": s.connect_failures,
            "stale_replies": s.stale_replies,
            "quarantined": s.quarantined,
            "open_connections": len(self._pool.sessions),
            "unsolicited_dropped": self.unsolicited_dropped,
            "retries": self.retries,
        }

    @property
    def metrics(self) -> ClientMetrics:
        """Requests, failures by kind and error, retries, reconnects and latency histograms.

        See `anytcm.observability`; e.g. `client.metrics.latency["infer"].percentile(99)`.
        """
        metrics = self._recorder.metrics
        metrics.retries = self.retries
        metrics.reconnects = self._pool.stats.reconnects
        return metrics

    @property
    def granted_capabilities(self) -> tuple[str, ...] | None:
        """What the manager granted in auth.ok (None: legacy reply, nothing negotiated)."""
        for session in self._pool.sessions:
            return session.granted
        return None

    # -- inference ------------------------------------------------------------------

    async def infer(
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
        """Run one inference and return its outputs.

        `inputs` maps input names to numpy arrays (or anything `numpy.asarray` takes), or is a
        list of `Tensor` / `SHMReference`. `carrier` says how tensors travel: "auto" (json when
        the frame fits the manager's 64 KiB cap, else shared memory when granted and on the same
        host), a carrier name ("json", "shm", a plugin's), or a preference list such as
        `("zstd", "auto")`. Raises `InferenceFailed` (typed error from Triton), `ContractError`
        (the manager rejected the request's form), `PayloadTooLarge`, `InvalidInput`,
        `CarrierUnavailable` (all not sent), `Backpressure`, `RequestTimeout`, `ConnectionLost`.
        Failures the retry policy deems safe (connection loss, backpressure NACKs, ...) are
        retried within the same deadline.
        """
        if protocol != "http":
            raise ValueError("infer() is for protocol='http'; use infer_stream() for 'grpc'")
        # Perf: the observation is ended by hand rather than by a `with` block, whose two
        # method calls cost more than a coroutine (~0.4 µs per request).
        observation = self._recorder.begin("infer", model)
        try:
            result = await self._infer(
                model, inputs, target, allow_transient, output_dtypes, input_spec, timeout, retry,
                carrier,
            )  # fmt: skip
        except BaseException as exc:
            observation.end(exc)
            raise
        observation.end()
        return result

    async def _infer(
        self,
        model: str,
        inputs: Inputs,
        target: Target,
        allow_transient: bool,
        output_dtypes: Mapping[str, Any] | None,
        input_spec: ModelSpec | None,
        timeout: float | None,
        retry: RetryPolicy | None,
        carrier: str | Sequence[str],
    ) -> InferResult:
        seconds, deadline = self._deadline(timeout)
        staged: StagedInputs | None = None
        raw = self._stager.inline_fast(model, inputs, target, input_spec, carrier, allow_transient)
        if raw is None:
            # The general path; the inline one above builds its payload without Structs.
            def build(items: Sequence[wire.InputItem]) -> msgspec.Raw:
                payload = wire.InferencePayload(
                    vm_ip=target.vm_ip,
                    container_id=target.container_id,
                    model_name=model,
                    request=wire.InferenceOptions(
                        inputs=list(items), allow_transient=allow_transient
                    ),
                )
                return self._stager.encode_checked(payload, model)

            tensors, shm = self._stager.collect(model, inputs, target, input_spec)
            if shm:
                staged, raw = Staged(shm), build(shm)  # staged by the caller, who owns it
            else:
                staged, raw = await self._stager.stage(model, tensors, carrier, build, stream=False)
        try:
            # Perf: the first attempt runs here; `_retrying` only takes over after a failure
            # (outside the handler, so later errors do not chain to this one).
            failure: TcmError | None = None
            try:
                completed = await self._run_inference(raw, deadline, model)
            except TcmError as exc:
                failure = exc
            if failure is not None:
                completed = await self._retrying(
                    lambda: self._run_inference(raw, deadline, model),
                    deadline,
                    retry,
                    model,
                    failed=failure,
                    started=deadline - seconds,
                )
        except RequestTimeout as exc:
            raise caller_timeout(exc, seconds, f"inference of {model!r}") from None
        finally:
            if staged is not None:
                staged.release()  # shared memory and the like never outlive the request
        return InferResult(
            completed.model_name,
            completed.outputs or {},
            dict(output_dtypes or {}),
            input_spec or self.model_spec(model, target),
            shared_float_dtype(input_values(inputs)),
        )

    async def _retrying(
        self,
        attempt_once: Callable[[], Awaitable[_T]],
        deadline: float,
        retry: RetryPolicy | None,
        what: str,
        *,
        failed: TcmError | None = None,
        started: float | None = None,
    ) -> _T:
        return await retrying(
            attempt_once,
            deadline,
            retry or self._retry,
            what,
            now=self._now,
            on_retry=self._count_retry,
            failed=failed,
            started=started,
        )

    def _count_retry(self) -> None:
        self.retries += 1

    async def _run_inference(
        self, payload: msgspec.Raw, deadline: float, model: str
    ) -> InferenceCompleted:
        pool = self._pool
        while True:
            session = pool.take_idle() or await pool.checkout(deadline)
            try:
                remaining = deadline - self._now()
                if remaining <= 0:
                    raise RequestTimeout("no time left after waiting for a connection", timeout=0.0)
                return await session.infer(payload, remaining, f"inference of {model!r}")
            except NotSent:
                continue  # the connection ended before anything was written: try another
            finally:
                pool.checkin(session)

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
    ) -> InferStream:
        """A streamed (gRPC protocol) inference: `async with client.infer_stream(...) as s:
        async for event in s: ...` yields START, ONGOING (one string each), COMPLETED.

        `idle_timeout` bounds the silence between two frames, `timeout` the whole stream, so a
        long generation keeps going as long as frames keep coming.
        """
        seconds, deadline = self._deadline(timeout)
        payload = wire.InferencePayload(
            vm_ip=target.vm_ip,
            container_id=target.container_id,
            model_name=model,
            request=wire.InferenceOptions(
                inputs=self._stager.json_items(model, inputs, target, "gRPC streaming"),
                protocol="grpc",
                allow_transient=allow_transient,
                output_name=output_name,
            ),
        )
        raw = self._stager.encode_checked(payload, model)
        return InferStream(self, raw, model, deadline, seconds, idle_timeout)

    async def pipeline(
        self,
        steps: Sequence[tuple[str, Inputs] | tuple[str, Inputs, str]],
        *,
        target: Target,
        output_dtypes: Mapping[str, Mapping[str, Any]] | None = None,
        timeout: float | None = None,
    ) -> dict[str, InferResult]:
        """Run models one after another on a registered server (HTTP only).

        `steps` are `(model, inputs)` or `(model, inputs, step_name)`; each step has its own
        inputs (the manager does not chain outputs into inputs). Returns results by step name
        (or model name).
        """
        with self._recorder.begin("pipeline", None):
            return await self._pipeline(steps, target, output_dtypes, timeout)

    async def _pipeline(
        self,
        steps: Sequence[tuple[str, Inputs] | tuple[str, Inputs, str]],
        target: Target,
        output_dtypes: Mapping[str, Mapping[str, Any]] | None,
        timeout: float | None,
    ) -> dict[str, InferResult]:
        seconds, deadline = self._deadline(timeout)
        wire_steps = []
        for step in steps:
            model, step_inputs = step[0], step[1]
            name = step[2] if len(step) > 2 else None
            wire_steps.append(
                wire.PipelineStep(
                    model_name=model,
                    inputs=self._stager.json_items(model, step_inputs, target, "pipelines"),
                    name=name,
                )
            )
        payload = wire.InferencePayload(
            vm_ip=target.vm_ip, container_id=target.container_id, pipeline=wire_steps
        )
        raw = self._stager.encode_checked(payload, "pipeline")
        try:
            completed = await self._retrying(
                lambda: self._run_inference(raw, deadline, "pipeline"), deadline, None, "pipeline"
            )
        except RequestTimeout as exc:
            raise caller_timeout(exc, seconds, "pipeline") from None
        results: dict[str, InferResult] = {}
        # A step's reply key is its name, else its model (as the manager keys them).
        by_key = {(s[2] if len(s) > 2 else None) or s[0]: (s[0], s[1]) for s in steps}
        for key, step_outputs in (completed.outputs or {}).items():
            model, step_inputs = by_key.get(key, (key, {}))
            with reply_shape("pipeline", completed.outputs):
                outputs = wire.decode_raw_dict(step_outputs)
            results[key] = InferResult(
                model,
                outputs,
                dict((output_dtypes or {}).get(key, {})),
                self.model_spec(model, target),
                shared_float_dtype(input_values(step_inputs)),
            )
        return results

    # -- info and management plumbing ------------------------------------------------

    async def _info(self, action: str, timeout: float | None) -> wire.InfoResponsePayload:
        with self._recorder.begin("info", None):
            return await self._info_request(action, timeout)

    async def _info_request(self, action: str, timeout: float | None) -> wire.InfoResponsePayload:
        seconds, deadline = self._deadline(timeout)
        try:
            return await self._retrying(
                lambda: self._info_once(action, deadline), deadline, None, f"info {action!r}"
            )
        except RequestTimeout as exc:
            raise caller_timeout(exc, seconds, f"info request {action!r}") from None

    async def _info_once(self, action: str, deadline: float) -> wire.InfoResponsePayload:
        while True:
            session = await self._pool.pick(
                lambda s: s.protocol.info_ready(action), deadline, f"info request {action!r}"
            )
            try:
                return await session.info(action, max(0.0, deadline - anyio.current_time()))
            except NotSent:
                continue
            finally:
                self._pool.slot_freed()

    async def _management(self, payload: dict[str, Any], timeout: float | None) -> Any:
        with self._recorder.begin("management", None):
            return await self._management_request(payload, timeout)

    async def _management_request(self, payload: dict[str, Any], timeout: float | None) -> Any:
        seconds, deadline = self._deadline(timeout)
        action = str(payload.get("action"))
        try:
            return await self._management_once(payload, action, deadline)
        except RequestTimeout as exc:
            raise caller_timeout(exc, seconds, f"management action {action!r}") from None

    async def _management_once(self, payload: dict[str, Any], action: str, deadline: float) -> Any:
        while True:
            session = await self._pool.pick(
                lambda s: s.protocol.management_ready, deadline, f"management action {action!r}"
            )
            try:
                # Never re-sent automatically once written: a lost reply means unknown outcome.
                result = await session.management(
                    payload, max(0.0, deadline - anyio.current_time())
                )
            except NotSent:
                continue
            finally:
                self._pool.slot_freed()
            if not result.status:
                raise ManagementFailed(
                    f"management action {action!r} failed on the manager: {result.data}",
                    action=action,
                    data=result.data,
                )
            return result.data


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _transport_factory(name: str | TransportFactory | None) -> TransportFactory:
    if name is None:
        name = os.environ.get("ANYTCM_TRANSPORT") or "websockets"
    if not isinstance(name, str):
        return name
    from .plugins import load_transport

    return load_transport(name)


@asynccontextmanager
async def connect(
    url: str,
    *,
    token: str | None = None,
    pool_size: int = 4,
    max_waiting: int = 1024,
    timeout: float = 30.0,
    connect_timeout: float = 30.0,
    uuid: str | None = None,
    capabilities: Sequence[str] | Literal["auto"] | None = "auto",
    roles: Sequence[str] | None = None,
    ssl_context: ssl.SSLContext | None = None,
    headers: Mapping[str, str] | None = None,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    max_frame_bytes: int = MAX_FRAME_BYTES,
    ping_interval: float | None = 20.0,
    ping_timeout: float = 20.0,
    compression: bool = False,
    ready_check: bool = True,
    stale_grace: float = 5.0,
    retry: RetryPolicy | None = None,
    backoff: Callable[[], Backoff] | None = None,
    same_host: bool | None = None,
    transport: str | TransportFactory | None = None,
    tracing: bool | None = None,
) -> AsyncIterator[AsyncClient]:
    """Connect to a TCM manager: `async with anytcm.connect("ws://host:8000/ws") as client:`.

    Returns once the first of `pool_size` connections is authenticated; the rest connect, and
    reconnect after failures, in the background. `timeout` is the default deadline of each call.
    `uuid` is the base from which each connection's uuid is derived (random by default).
    `capabilities` are requested in auth: "auto" asks for those of every installed carrier
    ("json", "shm", and plugins'), a list asks for exactly those, None sends the legacy auth
    without negotiation. `same_host` says the
    manager shares this machine's /dev/shm (default: the URL's host is a loopback address).
    `transport` names a transport plugin (default: `$ANYTCM_TRANSPORT`, else "websockets").
    `backoff` makes the reconnect backoff of each connection (default: `Backoff()`, full
    jitter from 0.1 s doubling to 10 s); `retry` is the default RetryPolicy of each call.
    `tracing`: an OpenTelemetry span per request when `opentelemetry-api` is installed
    (None: if installed; True: required; False: never). Counters are always kept
    (`client.metrics`); see `anytcm.observability`.
    """
    if pool_size < 1:
        raise ValueError("pool_size must be at least 1")
    if max_waiting < 0:
        raise ValueError("max_waiting must be >= 0")
    settings = PoolSettings(
        url=url,
        size=pool_size,
        base_uuid=uuid or uuid_module.uuid4().hex,
        token=token,
        capabilities=(
            tuple(carrier_names())
            if capabilities == "auto"
            else tuple(capabilities)
            if capabilities is not None
            else None
        ),
        roles=tuple(roles) if roles is not None else None,
        max_waiting=max_waiting,
        connect_timeout=connect_timeout,
        auth_timeout=min(10.0, connect_timeout),
        ready_check=ready_check,
        stale_grace=stale_grace,
        backoff=backoff or Backoff,
    )
    if ssl_context is None and urlsplit(url).scheme == "wss":
        # One context for every connection and for the readiness gate: the same CA store on
        # both paths, and its certificates loaded once rather than once per connection.
        ssl_context = ssl.create_default_context()
    options = TransportOptions(
        ssl_context=ssl_context,
        headers=dict(headers or {}),
        max_message_size=max_message_size,
        open_timeout=min(10.0, connect_timeout),
        ping_interval=ping_interval,
        ping_timeout=ping_timeout,
        compression=compression,
    )
    gate = ReadinessGate(url, ssl_context=ssl_context, headers=headers) if ready_check else None
    client: AsyncClient | None = None

    def deliver(frame: wire.ServerFrame) -> None:
        if client is not None:
            client._deliver_unsolicited(frame)

    pool = Pool(settings, _transport_factory(transport), options, deliver, gate)
    client = AsyncClient(
        pool,
        timeout=timeout,
        max_frame_bytes=max_frame_bytes,
        retry=retry or RetryPolicy(),
        same_host=_is_loopback(url) if same_host is None else same_host,
        recorder=Recorder(
            tracing,
            url=url,
            totals=lambda: (client.retries if client else 0, pool.stats.reconnects),
        ),
    )
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(pool.run)
            try:
                yield client
            finally:
                pool.close()
    except BaseExceptionGroup as group:
        error = collapse_exception_group(group)
        if error is None:
            raise
        raise error from error.__cause__  # the one real error, with its own cause kept
    finally:
        if gate is not None:
            await gate.aclose()


__all__ = ["AsyncClient", "InferStream", "InfoAPI", "ManagementAPI", "connect"]
