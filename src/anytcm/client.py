"""The public client: `anytcm.connect(...)` and `AsyncClient`.

`connect` opens a pool of authenticated connections under a task group and returns once the
first one is ready; the others come up (and come back after failures) in the background.
Every call has a deadline (`timeout`), because the manager answers some failures with nothing.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any, Literal

import anyio
import msgspec
from anyio.streams.memory import MemoryObjectReceiveStream

from . import wire
from ._client.alerts import Alerts
from ._client.inference import request_inference
from ._client.management import InfoAPI, ManagementAPI
from ._client.opening import (
    all_loopback,
    check_pool_size,
    manager_urls,
    pool_parts,
    transport_factory,
)
from ._client.pipeline import Step, run_pipeline
from ._client.retrying import Retrier
from ._client.staging import Inputs, Stager, input_values
from ._client.streams import InferStream
from ._core.managers import ManagerStatus
from ._core.pool import Pool
from .carriers import Staged, StagedInputs
from .observability import ClientMetrics, Recorder
from .options import ConnectSettings
from .results import (
    InferResult,
    ModelSpec,
    Target,
    shared_float_dtype,
)
from .retry import RetryPolicy
from .transports import (
    collapse_exception_group,
)

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .options import ConnectOptions

logger = logging.getLogger("anytcm.client")


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
        self._now = pool.now  # every deadline is an absolute time on the pool's clock
        self._recorder = recorder or Recorder(tracing=False)
        self._timeout = timeout
        self._retrier = Retrier(retry, pool.now)
        self._same_host = same_host
        self._max_frame_bytes = max_frame_bytes
        self._specs: dict[tuple[str, Target | None], ModelSpec] = {}
        self._alerts = Alerts()
        self._deliver_unsolicited = self._alerts.deliver  # what the pool calls for such frames
        self._stager = Stager(
            max_frame_bytes=max_frame_bytes,
            same_host=same_host,
            granted=lambda: self.granted_capabilities,
            uuid_bytes_bound=lambda: pool.uuid_bytes_bound,
            model_spec=self.model_spec,
        )
        self.info = InfoAPI(pool, self._recorder, self._deadline, self._retrier)
        self.management = ManagementAPI(
            pool,
            self._recorder,
            self._deadline,
            lambda model, spec, target: self.set_model_spec(model, spec, target=target),
        )

    def __repr__(self) -> str:  # no token, ever
        return f"<AsyncClient url={self._pool.settings.url!r} pool_size={self._pool.settings.size}>"

    # -- shared plumbing ------------------------------------------------------------------

    def _deadline(self, timeout: float | None) -> tuple[float, float]:
        """The call's timeout in seconds and its deadline: made once, here, at the public call."""
        seconds = self._timeout if timeout is None else timeout
        if seconds <= 0:
            raise ValueError("timeout must be positive")
        return seconds, self._now() + seconds

    def alerts(
        self, buffer: int = 256
    ) -> AbstractAsyncContextManager[MemoryObjectReceiveStream[wire.ServerFrame]]:
        """Receive unsolicited frames (alerts, budget warnings, unknown frame types).

        `async with client.alerts() as frames: async for frame in frames: ...`. A subscriber that
        falls `buffer` frames behind loses the newest ones (counted in `unsolicited_dropped`).
        Note the manager sends `alert` frames only to its first-connected live client.
        """
        return self._alerts.subscribe(buffer)

    @property
    def unsolicited_dropped(self) -> int:
        """Unsolicited frames a subscriber that fell behind did not get."""
        return self._alerts.dropped

    def set_model_spec(self, model: str, spec: ModelSpec, *, target: Target | None = None) -> None:
        """Remember a model's inputs/outputs: inputs are then checked before sending, and
        outputs get their dtypes. Management calls that return a spec register it themselves."""
        self._specs[(model, target)] = spec

    def model_spec(self, model: str, target: Target | None = None) -> ModelSpec | None:
        if not self._specs:  # the usual case, and it spares hashing `target` per request
            return None
        return self._specs.get((model, target)) or self._specs.get((model, None))

    @property
    def retries(self) -> int:
        """Attempts re-sent by the retry policy over the client's life."""
        return self._retrier.count

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

    def managers(self) -> tuple[ManagerStatus, ...]:
        """Each manager's state and counters, in the order given to `connect`: live, draining
        or dead, failures in a row, when it is tried again, connections and requests."""
        return self._pool.statuses()

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
        # The observation is ended by hand: a `with` block would cost two method calls more
        # per request than this whole wrapper.
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
            completed = await request_inference(
                self._pool,
                self._retrier,
                raw,
                deadline=deadline,
                seconds=seconds,
                what=f"inference of {model!r}",
                label=model,
                policy=retry,
                manager=self._pool.affinity.route(target, allow_transient),
            )
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
        manager = self._pool.affinity.route(target, allow_transient)
        return InferStream(
            self._pool, self._recorder, raw, model, deadline, seconds, idle_timeout, manager
        )

    async def pipeline(
        self,
        steps: Sequence[Step],
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
            seconds, deadline = self._deadline(timeout)
            return await run_pipeline(
                steps,
                target,
                output_dtypes,
                seconds,
                deadline,
                pool=self._pool,
                stager=self._stager,
                retrier=self._retrier,
                model_spec=self.model_spec,
            )


def connect(
    url: str | Sequence[str], **options: Unpack[ConnectOptions]
) -> AbstractAsyncContextManager[AsyncClient]:
    """Connect to a TCM manager: `async with anytcm.connect("ws://host:8000/ws") as client:`.

    Returns once the first of `pool_size` connections is authenticated; the rest connect, and
    reconnect after failures, in the background. The options, all keyword-only and optional,
    are those of `ConnectOptions` (e.g. `token`, `pool_size`, `timeout`). An unknown option
    raises `TypeError`, a value out of range (`pool_size=0`) `ValueError`, both at once.

    `url` may be a list of managers (TCM replicas, each with state of its own): the client
    then treats them as one service (docs/several-managers.md): connections spread over the
    live ones, failed and draining managers are avoided and come back through `/ready`,
    requests fail over, and a server created through one manager is routed to it.
    `pool_size` must then be at least the number of managers.
    """
    urls = manager_urls(url)
    settings = ConnectSettings.from_options(options, caller="connect()")
    check_pool_size(urls, settings.pool_size)
    return open_client(urls, settings)


@asynccontextmanager
async def open_client(
    urls: tuple[str, ...], options: ConnectSettings
) -> AsyncIterator[AsyncClient]:
    """`connect` with its options already checked (what `SyncClient` runs in its portal)."""
    url = urls[0]
    pool_settings, transport_options, gates = pool_parts(urls, options)
    client: AsyncClient | None = None

    def deliver(frame: wire.ServerFrame) -> None:
        if client is not None:
            client._deliver_unsolicited(frame)

    pool = Pool(
        pool_settings, transport_factory(options.transport), transport_options, deliver, gates
    )
    client = AsyncClient(
        pool,
        timeout=options.timeout,
        max_frame_bytes=options.max_frame_bytes,
        retry=options.retry or RetryPolicy(),
        same_host=all_loopback(urls) if options.same_host is None else options.same_host,
        recorder=Recorder(
            options.tracing,
            url=url,
            totals=lambda: (client.retries if client else 0, pool.stats.reconnects),
            managers=lambda: pool.managers.all,  # the live objects: no snapshot per request
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
        for gate in gates.values():
            await gate.aclose()


__all__ = ["AsyncClient", "InferStream", "InfoAPI", "ManagementAPI", "connect"]
