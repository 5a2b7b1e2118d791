"""Streamed (gRPC protocol) inferences: `AsyncClient.infer_stream`'s iterator of events."""

from __future__ import annotations

import weakref
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
from anyio.streams.memory import MemoryObjectReceiveStream

from .._core.pool import Pool
from .._core.session import NotSent, Session
from ..errors import ClientClosed, RequestTimeout, TcmError
from ..observability import Observation
from ..protocol import InferenceCompleted, InferenceProgress
from ..results import StreamEvent
from .retrying import caller_timeout

if TYPE_CHECKING:
    from ..client import AsyncClient


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
                error = caller_timeout(exc, self._seconds, f"stream of {self._model!r}")
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


def _release_stream(pool: Pool, holder: list[Session | None]) -> None:
    session = holder[0]
    if session is not None:
        session.abandon_stream()
        pool.checkin(session)
