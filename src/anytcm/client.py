"""The public client: `anytcm.connect(...)` and `AsyncClient`.

`connect` opens a pool of authenticated connections under a task group and returns once the
first one is ready; the others come up (and come back after failures) in the background.
Every call has a deadline (`timeout`), because the manager answers some failures with nothing.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import ssl
import sys
import uuid as uuid_module
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from types import TracebackType
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import anyio
import msgspec
import numpy as np
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from . import wire
from ._core.deadlines import backend_clock
from ._core.pool import Pool, PoolSettings
from ._core.session import NotSent, Session
from .backoff import Backoff
from .carriers import CarrierContext, InputTensor, Staged, StagedInputs
from .carriers._json import JsonCarrier
from .errors import (
    CarrierUnavailable,
    ClientClosed,
    ContractError,
    InvalidInput,
    ManagementFailed,
    PayloadTooLarge,
    ProtocolError,
    RequestTimeout,
    TcmError,
)
from .observability import ClientMetrics, Observation, Recorder
from .plugins import carrier_names, load_carrier
from .protocol import InferenceCompleted, InferenceProgress, excerpt_of
from .readiness import ReadinessGate
from .results import (
    ContainerCreated,
    Deleted,
    Deployment,
    InferResult,
    ModelSpec,
    QueueStats,
    ServerCreated,
    StreamEvent,
    Target,
    Tensor,
    VmCreated,
    input_signature,
    shared_float_dtype,
)
from .retry import RetryPolicy
from .tensors import encode_input
from .transports import (
    DEFAULT_MAX_MESSAGE_SIZE,
    TransportFactory,
    TransportOptions,
    collapse_exception_group,
)

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

logger = logging.getLogger("anytcm.client")

# The manager's answer to an info action it does not know (contract §4.1), status "success".
_NOT_IMPLEMENTED = re.compile(r"Info type '.*' not implemented yet")

MAX_FRAME_BYTES = 65536
"""The manager's inbound frame cap (contract §1): larger frames close the connection (1009)."""

_T = TypeVar("_T")
Inputs = Mapping[str, Any] | Sequence["Tensor | wire.SHMReference"]


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

    def _collect(
        self, model: str, inputs: Inputs, target: Target, input_spec: ModelSpec | None
    ) -> tuple[list[InputTensor], list[wire.SHMReference]]:
        """The caller's inputs as tensors to stage, or SHM references the caller staged."""
        tensors: dict[str, InputTensor] = {}
        shm: list[wire.SHMReference] = []
        if isinstance(inputs, Mapping):
            items: Sequence[Any] = [Tensor(name, value) for name, value in inputs.items()]
        else:
            items = inputs
        for item in items:
            if isinstance(item, wire.SHMReference):
                shm.append(item)
            elif isinstance(item, Tensor):
                if item.name in tensors:
                    raise InvalidInput(f"input {item.name!r} is given twice")
                data = item.data if isinstance(item.data, np.ndarray) else np.asarray(item.data)
                tensors[item.name] = InputTensor(item.name, data, item.datatype)
            else:
                raise InvalidInput(
                    f"inputs must map names to arrays, or be a list of Tensor/SHMReference; "
                    f"got {type(item).__name__}"
                )
        if shm and tensors:
            raise InvalidInput(
                "mixing shared-memory and JSON inputs in one request is refused: the manager "
                f"silently drops the JSON ones ({sorted(tensors)}); send every input through shm",
                given={"shm": [r.name for r in shm], "json": sorted(tensors)},
            )
        spec = input_spec or self.model_spec(model, target)
        if spec is not None and tensors:
            spec.check(
                model,
                input_signature(
                    {n: t.array for n, t in tensors.items()},
                    {n: t.datatype for n, t in tensors.items()},
                ),
            )
        return list(tensors.values()), shm

    def _json_items(
        self, model: str, inputs: Inputs, target: Target, where: str
    ) -> list[wire.InputItem]:
        """Inline JSON inputs, for requests that take no other carrier here."""
        tensors, shm = self._collect(model, inputs, target, None)
        if shm:
            raise CarrierUnavailable(
                f"{where} take inline JSON inputs only here (the manager refuses shared memory "
                "for gRPC streams); pass arrays instead of SHMReference items",
                carrier="shm",
                reason=f"not supported for {where}",
            )
        return [msgspec.Raw(encode_input(t.name, t.array, t.datatype)) for t in tensors]

    def _carrier_names(self, carrier: str | Sequence[str], *, stream: bool) -> list[str]:
        """A preference order; "auto" is json, then shm (shm never for gRPC streams)."""
        wanted = [carrier] if isinstance(carrier, str) else list(carrier)
        names: list[str] = []
        for name in wanted:
            expanded = (["json"] if stream else ["json", "shm"]) if name == "auto" else [name]
            names.extend(n for n in expanded if n not in names)
        return names

    async def _stage(
        self,
        model: str,
        tensors: list[InputTensor],
        carrier: str | Sequence[str],
        build: Callable[[Sequence[wire.InputItem]], msgspec.Raw],
        *,
        stream: bool,
    ) -> tuple[StagedInputs, msgspec.Raw]:
        """Stage the inputs with the first usable carrier; returns them and the sized payload.

        A carrier is usable when the manager granted its capability (and, for json, when the
        frame fits the manager's cap). The caller must `release()` what this returns.
        """
        names = self._carrier_names(carrier, stream=stream)
        context = CarrierContext(self.granted_capabilities, self._same_host, self._max_frame_bytes)
        reasons: list[str] = []
        too_large: PayloadTooLarge | None = None
        for index, name in enumerate(names):
            last = index == len(names) - 1
            plugin = load_carrier(name)
            reason = plugin.unavailable_reason(context)
            if reason is None and stream and name == "shm":
                reason = "gRPC streaming does not accept shared-memory inputs (contract §9)"
            if reason is not None:
                reasons.append(f"{name}: {reason}")
                continue
            if name == "json" and not last and _surely_over(tensors, self._max_frame_bytes):
                reasons.append(f"json: the tensors cannot fit the {self._max_frame_bytes}-byte cap")
                continue
            staged = await plugin.stage(tensors)
            try:
                return staged, build(staged.items)
            except PayloadTooLarge as exc:
                staged.release()
                if last:
                    raise
                too_large = exc
                reasons.append(f"{name}: {exc.size} bytes, over the {exc.limit}-byte frame cap")
            except BaseException:
                staged.release()
                raise
        if too_large is not None and all(r.startswith("json") for r in reasons):
            raise too_large
        raise CarrierUnavailable(
            f"no carrier can send the inputs of {model!r} ({'; '.join(reasons)}). Small "
            "tensors go inline as json; large ones need shared memory on the manager's host",
            carrier=",".join(names),
            reason="; ".join(reasons),
        )

    def _frame_bytes(self, payload: msgspec.Raw) -> int:
        """The size of the inference frame around an encoded payload, at the longest uuid."""
        return len(payload) + wire.INFERENCE_ENVELOPE_BYTES + self._pool.uuid_bytes_bound

    def _encode_checked(self, payload: wire.InferencePayload, model: str) -> msgspec.Raw:
        """Encode the payload once and refuse it, unsent, if its frame would exceed the cap."""
        raw = wire.encode_payload(payload)
        size = self._frame_bytes(raw)
        if size > self._max_frame_bytes:
            raise PayloadTooLarge(
                f"the inference request for {model!r} is {size} bytes of JSON, over the "
                f"manager's {self._max_frame_bytes}-byte frame cap (it would close the connection "
                "with 1009); nothing was sent. Send large tensors through shared memory "
                "(the 'shm' carrier), or split the batch",
                size=size,
                limit=self._max_frame_bytes,
            )
        return raw

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
        raw = self._inline_fast(model, inputs, target, input_spec, carrier, allow_transient)
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
                return self._encode_checked(payload, model)

            tensors, shm = self._collect(model, inputs, target, input_spec)
            if shm:
                staged, raw = Staged(shm), build(shm)  # staged by the caller, who owns it
            else:
                staged, raw = await self._stage(model, tensors, carrier, build, stream=False)
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
            raise _caller_timeout(exc, seconds, f"inference of {model!r}") from None
        finally:
            if staged is not None:
                staged.release()  # shared memory and the like never outlive the request
        return InferResult(
            completed.model_name,
            completed.outputs or {},
            dict(output_dtypes or {}),
            input_spec or self.model_spec(model, target),
            shared_float_dtype(_input_values(inputs)),
        )

    def _inline_fast(
        self,
        model: str,
        inputs: Inputs,
        target: Target,
        input_spec: ModelSpec | None,
        carrier: str | Sequence[str],
        allow_transient: bool,
    ) -> msgspec.Raw | None:
        """The common request, small arrays inline as JSON, without the general staging path.

        Taken only when the general path would surely pick the built-in json carrier: a dict of
        ndarrays, carrier "auto" or "json", no model spec to check against, at most a quarter of
        the frame cap in array bytes. Anything else (or a frame over the cap after all) returns
        None and the general path decides, with its full checks and messages. Perf: the general
        path builds four small objects per input and consults the carrier registry, ~15% of a
        small request's client CPU (`benchmarks/profile_client.py`).
        """
        if (
            (carrier != "auto" and carrier != "json")
            or type(inputs) is not dict
            or input_spec is not None
            or self.model_spec(model, target) is not None
            or type(load_carrier("json")) is not JsonCarrier
        ):
            return None
        items: list[bytes] = []
        budget = self._max_frame_bytes >> 2
        for name, value in inputs.items():
            if type(value) is not np.ndarray or value.dtype.kind not in "biuf":
                return None
            budget -= value.nbytes
            if budget < 0:
                return None
            items.append(encode_input(name, value))
        if not items:
            return None
        raw = wire.encode_inline_payload(
            target.vm_ip, target.container_id, model, allow_transient, items
        )
        if self._frame_bytes(raw) > self._max_frame_bytes:
            return None  # the general path tries shared memory, or explains
        return raw

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
        """Run attempts until one succeeds or the policy, the attempts or the deadline say stop.

        `failed` is the error of a first attempt the caller already made (at time `started`,
        from which the policy's budget counts); the next attempt is then the second.
        """
        policy = retry or self._retry
        stop = deadline
        if policy.budget is not None:
            stop = min(deadline, (self._now() if started is None else started) + policy.budget)
        attempt = 1
        error = failed
        while True:
            if error is None:
                try:
                    return await attempt_once()
                except TcmError as exc:
                    error = exc
            decision = policy.classify(error)
            if decision is None or attempt >= policy.attempts:
                raise error
            wait = policy.delay(decision, attempt)
            if self._now() + wait >= stop:
                raise error
            self.retries += 1
            logger.info(
                "retrying %s (attempt %d of %d) in %.3f s after: %s",
                what,
                attempt + 1,
                policy.attempts,
                wait,
                error,
                extra={"attempt": attempt + 1, "delay": wait, "error": type(error).__name__},
            )
            error = None
            attempt += 1
            await anyio.sleep(wait)

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
                inputs=self._json_items(model, inputs, target, "gRPC streaming"),
                protocol="grpc",
                allow_transient=allow_transient,
                output_name=output_name,
            ),
        )
        raw = self._encode_checked(payload, model)
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
                    inputs=self._json_items(model, step_inputs, target, "pipelines"),
                    name=name,
                )
            )
        payload = wire.InferencePayload(
            vm_ip=target.vm_ip, container_id=target.container_id, pipeline=wire_steps
        )
        raw = self._encode_checked(payload, "pipeline")
        try:
            completed = await self._retrying(
                lambda: self._run_inference(raw, deadline, "pipeline"), deadline, None, "pipeline"
            )
        except RequestTimeout as exc:
            raise _caller_timeout(exc, seconds, "pipeline") from None
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
                shared_float_dtype(_input_values(step_inputs)),
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
            raise _caller_timeout(exc, seconds, f"info request {action!r}") from None

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
            raise _caller_timeout(exc, seconds, f"management action {action!r}") from None

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


class StreamClosedEarly(Exception):
    """The outcome recorded for a stream its caller closed before COMPLETED (never raised)."""


class InferStream:
    """A streamed inference in progress; see `AsyncClient.infer_stream`."""

    def __init__(
        self,
        client: AsyncClient,
        payload: msgspec.Raw,
        model: str,
        deadline: float,
        seconds: float,
        idle_timeout: float | None,
    ) -> None:
        self._client = client
        self._payload = payload
        self._model = model
        self._deadline = deadline
        self._seconds = seconds
        self._idle_timeout = idle_timeout
        self._session: Session | None = None
        self._frames: MemoryObjectReceiveStream[Any] | None = None
        self._done = False
        self._observation: Observation | None = None
        # Safety net: a stream dropped without aclose() must still give its connection back.
        self._finalizer = weakref.finalize(self, _release_stream, client._pool, [None])

    async def __aenter__(self) -> InferStream:  # noqa: PYI034 - not meant to be subclassed
        await self._start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __aiter__(self) -> InferStream:
        return self

    async def _start(self) -> None:
        if self._session is not None or self._done:
            return
        if self._observation is None:
            self._observation = self._client._recorder.begin("stream", self._model)
        while True:
            try:
                session = await self._client._pool.checkout(self._deadline)
            except RequestTimeout as exc:
                error = _caller_timeout(exc, self._seconds, f"stream of {self._model!r}")
                self._observed(error)
                raise error from None
            except BaseException as exc:
                self._observed(exc)
                raise
            frame, frames = session.open_stream(self._payload)
            self._session, self._frames = session, frames
            self._finalizer.detach()
            self._finalizer = weakref.finalize(self, _release_stream, self._client._pool, [session])
            try:
                await session.send_stream_request(frame)
                return
            except NotSent:
                self._release()
                continue

    async def __anext__(self) -> StreamEvent:
        if self._done:
            raise StopAsyncIteration
        await self._start()
        assert self._frames is not None
        now = anyio.current_time()
        wait = self._deadline - now
        if self._idle_timeout is not None:
            wait = min(wait, self._idle_timeout)
        try:
            with anyio.fail_after(max(0.0, wait)):
                item = await self._frames.receive()
        except TimeoutError:
            overall = anyio.current_time() >= self._deadline
            self._abandon()
            what = f"within {self._seconds:g} s" if overall else f"for {self._idle_timeout:g} s"
            timed_out = RequestTimeout(
                f"the stream of {self._model!r} sent nothing {what}",
                timeout=self._seconds if overall else (self._idle_timeout or 0.0),
            )
            self._observed(timed_out)
            raise timed_out from None
        except anyio.EndOfStream:
            ended = self._session.stream_error if self._session is not None else None
            self._abandon()
            closed = ended or ClientClosed("the stream was closed")
            self._observed(closed)
            raise closed from None
        except BaseException as exc:
            self._abandon()
            self._observed(exc)
            raise
        if isinstance(item, TcmError):
            self._done = True
            self._release()
            self._observed(item)
            raise item
        if isinstance(item, InferenceCompleted):
            self._done = True
            self._release()
            self._observed(None)
            return StreamEvent("COMPLETED", None, item.model_name)
        assert isinstance(item, InferenceProgress)
        return StreamEvent(item.status, item.text)

    def _observed(self, error: BaseException | None) -> None:
        if self._observation is not None:
            self._observation.end(error)

    def _abandon(self) -> None:
        self._done = True
        if self._session is not None:
            self._session.abandon_stream()
        self._release()

    def _release(self) -> None:
        session, self._session = self._session, None
        self._finalizer.detach()
        if self._frames is not None:
            self._frames.close()
            self._frames = None
        if session is not None:
            self._client._pool.checkin(session)

    async def aclose(self) -> None:
        """Stop reading; an unfinished stream's connection is held until its end arrives."""
        if not self._done:
            self._abandon()
            self._observed(StreamClosedEarly())


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _input_values(inputs: Inputs) -> Iterator[Any]:
    """The arrays of a call's inputs, however they were given (SHM references have none)."""
    if isinstance(inputs, Mapping):
        yield from inputs.values()
    else:
        yield from (item.data for item in inputs if isinstance(item, Tensor))


def _surely_over(tensors: Sequence[InputTensor], limit: int) -> bool:
    """True when JSON cannot fit: every number takes at least two characters ("0,")."""
    return sum(int(t.array.size) for t in tensors) * 2 > limit


def _caller_timeout(exc: RequestTimeout, seconds: float, what: str) -> RequestTimeout:
    """A timeout reported as the caller's own `timeout`, wherever inside it ran out."""
    return RequestTimeout(
        f"{what}: no result within the {seconds:g} s timeout ({exc})", timeout=seconds
    )


def _release_stream(pool: Pool, holder: list[Session | None]) -> None:
    session = holder[0]
    if session is not None:
        session.abandon_stream()
        pool.checkin(session)


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
