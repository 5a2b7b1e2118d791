"""Streamed (gRPC protocol) inferences: `AsyncClient.infer_stream`'s iterator of events."""

from __future__ import annotations

import weakref
from types import TracebackType
from typing import Any

import anyio
import msgspec
from anyio.streams.memory import MemoryObjectReceiveStream

from .._core.managers import Manager
from .._core.pool import Pool
from .._core.session import NotSent, Session
from ..errors import ClientClosed, RequestTimeout, TcmError
from ..observability import Observation, Recorder
from ..protocol import InferenceCompleted, InferenceProgress
from ..results import StreamEvent
from .retrying import caller_timeout


class StreamClosedEarly(Exception):
    """The outcome recorded for a stream its caller closed before COMPLETED (never raised)."""


class InferStream:
    """A streamed inference in progress; see `AsyncClient.infer_stream`.

    `deadline` bounds the whole stream (an absolute time on the pool's clock, from the
    caller's `timeout` of `seconds`); `idle_timeout` the silence between two frames.
    """

    def __init__(
        self,
        pool: Pool,
        recorder: Recorder,
        payload: msgspec.Raw,
        model: str,
        deadline: float,
        seconds: float,
        idle_timeout: float | None,
        manager: Manager | None = None,
    ) -> None:
        self._pool = pool
        self._manager = manager  # the one manager that may serve it, if any
        self._recorder = recorder
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
        self._finalizer = weakref.finalize(self, _release_stream, pool, [None])

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
            self._observation = self._recorder.begin("stream", self._model)
        while True:
            try:
                session = await self._pool.checkout(self._deadline, self._manager)
            except RequestTimeout as exc:
                error = caller_timeout(exc, self._seconds, f"stream of {self._model!r}")
                self._observed(error)
                raise error from None
            except BaseException as exc:
                self._observed(exc)
                raise
            frame, frames = session.open_stream(self._payload)
            self._session, self._frames = session, frames
            self._finalizer.detach()
            self._finalizer = weakref.finalize(self, _release_stream, self._pool, [session])
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
        deadline = self._deadline
        if self._idle_timeout is not None:  # the idle timeout starts now: one deadline of two
            deadline = min(deadline, self._pool.now() + self._idle_timeout)
        item: Any = None
        try:
            with anyio.CancelScope(deadline=deadline) as scope:
                item = await self._frames.receive()
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
        if scope.cancelled_caught:
            overall = self._pool.now() >= self._deadline
            self._abandon()
            what = f"within {self._seconds:g} s" if overall else f"for {self._idle_timeout:g} s"
            timed_out = RequestTimeout(
                f"the stream of {self._model!r} sent nothing {what}",
                timeout=self._seconds if overall else (self._idle_timeout or 0.0),
            )
            self._observed(timed_out)
            raise timed_out
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
            self._pool.checkin(session)

    async def aclose(self) -> None:
        """Stop reading; an unfinished stream's connection is held until its end arrives."""
        if not self._done:
            self._abandon()
            self._observed(StreamClosedEarly())


def _release_stream(pool: Pool, holder: list[Session | None]) -> None:
    session = holder[0]
    if session is not None:
        session.abandon_stream()
        pool.checkin(session)
