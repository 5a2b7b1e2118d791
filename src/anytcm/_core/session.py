"""One authenticated connection: a reader task, the pending-request table, deadlines.

A `Session` owns one transport and one `ClientProtocol`. Its reader task turns every inbound
frame into a protocol event and hands it to whoever waits for it. Every request has a deadline,
because some failures produce no frame at all (contract §6.6). A request given up on (deadline,
cancellation) is *abandoned* in the protocol, so its late answer is recognised and dropped.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import msgspec
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .. import _fast, wire
from ..errors import (
    AuthError,
    Backpressure,
    ConnectError,
    ConnectionLost,
    ProtocolError,
    RequestTimeout,
    TcmError,
)
from ..protocol import (
    AuthAccepted,
    AuthRejected,
    ClientProtocol,
    ConnectionFailing,
    Event,
    InferenceCompleted,
    InferenceProgress,
    InfoCompleted,
    MalformedFrame,
    ManagementCompleted,
    ProtocolViolation,
    RequestFailed,
    StaleReply,
    Unsolicited,
    excerpt_of,
)
from ..transports import MessageSink, Transport, TransportFactory, TransportOptions
from .deadlines import Timers, new_timers
from .managers import Manager

logger = logging.getLogger("anytcm.session")


class UuidConflict(AuthError):
    """Another live connection holds this uuid; the caller should retry with a fresh one."""


class NotSent(ConnectionLost):
    """The connection ended before the request was written: it is safe to send elsewhere."""


class _Waiter:
    """One pending request: resolved once, with a result or an error."""

    __slots__ = ("error", "result", "signal")

    def __init__(self, timers: Timers) -> None:
        self.signal = timers.oneshot()
        self.result: Any = None
        self.error: TcmError | None = None

    def resolve(self, result: Any = None, error: TcmError | None = None) -> None:
        if not self.signal.is_set():
            self.result, self.error = result, error
            self.signal.set()


StreamItem = InferenceProgress | InferenceCompleted | TcmError

STREAM_BUFFER = 4096
"""Unread frames a streamed inference may hold before it is failed (see `Session._to_stream`)."""


class Session:
    """An open, authenticated connection. Created by `open_session`."""

    def __init__(
        self,
        protocol: ClientProtocol,
        transport: Transport,
        on_unsolicited: Callable[[wire.ServerFrame], None],
    ) -> None:
        self.protocol = protocol
        self._transport = transport
        self._on_unsolicited = on_unsolicited
        # The deadlines of this connection's requests, served next to the reader
        # (`open_session`).
        self.timers = new_timers()
        self._inference: _Waiter | None = None
        self._stream: MemoryObjectSendStream[StreamItem] | None = None
        self._info: dict[int, _Waiter] = {}
        self._management: dict[str, _Waiter] = {}
        self._ending: ConnectionLost | None = None  # what the server said before closing
        self.closed = anyio.Event()
        # False until the connection is known to be over: closed, or a send found the transport
        # ended before the reader noticed. Read without a call into anyio (on trio, two per
        # check): the hot paths ask it a few times per request. A session that has ended is
        # never picked again, so a retry loop cannot keep choosing it.
        self.ended = False
        self._send_failure: ConnectionLost | None = None
        # The close frame this side sends when the session ends (1002 after a malformed frame).
        self.close_with: tuple[int, str] = (1000, "")
        self._settled = anyio.Event()  # set when an abandoned inference's late answer arrived
        self.stream_error: TcmError | None = None  # why the current stream ended early
        # Set once, by `_lose`: from then on frames still arriving are dropped.
        self.close_error: ConnectionLost | None = None
        self.stale_replies = 0
        self.draining = False  # takes no new requests; closed once the pending ones are done
        # The manager this connection goes to, among the client's managers (set by the pool).
        self.manager: Manager | None = None

    @property
    def uuid(self) -> str:
        return self.protocol.uuid

    @property
    def granted(self) -> tuple[str, ...] | None:
        return self.protocol.granted

    def __repr__(self) -> str:
        return f"<Session uuid={self.uuid!r} open={not self.closed.is_set()}>"

    @property
    def inference_usable(self) -> bool:
        """Open, with no inference in flight or abandoned."""
        return not self.ended and self.protocol.inference_ready and self._stream is None

    @property
    def has_pending_requests(self) -> bool:
        """Info or management requests still waiting for their answer."""
        return bool(self._info or self._management)

    async def inference_settled(self) -> None:
        """Wait until an abandoned inference has had its late answer (or the session closed)."""
        if self.protocol.inference_ready or self.closed.is_set():
            return
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:

                async def closed() -> None:
                    await self.closed.wait()
                    scope.cancel()

                tg.start_soon(closed)
                await self._settled.wait()
                scope.cancel()

    # -- reading ------------------------------------------------------------------

    async def read_forever(self) -> None:
        """The reader task: runs until the connection ends, then fails whatever is pending.

        When the transport can deliver messages to a handler (`MessageSink`), a fast path, it
        does so and this task only waits in `receive()` for the end (on asyncio each reply then
        wakes its requester from the read callback; elsewhere from inside that `receive()`),
        sparing a return to this loop per message.
        """
        transport = self._transport
        try:
            if _fast.ENABLED and isinstance(transport, MessageSink):
                transport.deliver_to(self._receive)
            while self.close_error is None:
                self._receive(await transport.receive())
        except ConnectionLost as exc:
            error = self._ending or exc
            if self._ending is not None and exc.close_code is not None:
                error.close_code = exc.close_code
            self._lose(error)
        except Exception as exc:  # noqa: BLE001 - a transport plugin's untranslated error
            # The transport contract says ConnectionLost; anything else must still end this
            # connection alone (and be replaced), never the client's task group.
            logger.error("the transport of %s failed: %r", self.uuid, exc)
            self._lose(
                ConnectionLost(
                    f"the connection failed in its transport ({exc!r}); reconnecting",
                    close_code=1006,
                )
            )

    def _receive(self, data: bytes) -> None:
        """Handle one inbound message (in the reader task, or in the transport's callback)."""
        if self.close_error is not None:
            return  # the connection is being closed: nothing more is routed
        try:
            self._dispatch(self.protocol.receive(data))
        except Exception as exc:
            logger.exception("failed to handle a frame on %s", self.uuid)
            self._violated(
                ProtocolError(
                    f"the client could not handle a frame from the manager ({exc!r}); the "
                    "connection was closed and is being replaced",
                    excerpt=excerpt_of(data),
                    reason="protocol error",
                )
            )

    def _violated(self, error: ProtocolError) -> None:
        """The manager broke the contract: fail everything pending now, close with 1002."""
        logger.error("protocol error on %s: %s", self.uuid, error)
        self.close_with = (1002, "protocol error")
        self._lose(error)

    def _lose(self, error: ConnectionLost) -> None:
        if self.close_error is not None:
            return
        self.close_error = error
        for failed in self.protocol.connection_lost(error):
            self._dispatch(failed)
        self.ended = True
        self.closed.set()

    def _dispatch(self, event: Event) -> None:
        if isinstance(event, InferenceCompleted | InferenceProgress):
            if self._stream is not None:
                self._to_stream(event, last=isinstance(event, InferenceCompleted))
            elif self._inference is not None and isinstance(event, InferenceCompleted):
                self._inference.resolve(event)
        elif isinstance(event, InfoCompleted):
            waiter = self._info.pop(event.job_id, None)
            if waiter is not None:
                waiter.resolve(event.reply)
        elif isinstance(event, ManagementCompleted):
            waiter = self._management.pop(event.request_id, None)
            if waiter is not None:
                waiter.resolve(event.result)
        elif isinstance(event, RequestFailed):
            self._fail(event)
        elif isinstance(event, ConnectionFailing):
            self._ending = event.error
        elif isinstance(event, StaleReply):
            self.stale_replies += 1
            if event.kind == "inference" and self.protocol.inference_ready:
                self._settled.set()
            logger.debug("dropped the late %s reply of an abandoned request", event.kind)
        elif isinstance(event, Unsolicited):
            self._on_unsolicited(event.frame)
        elif isinstance(event, MalformedFrame):
            self._violated(event.error)
        elif isinstance(event, ProtocolViolation):
            logger.error("protocol violation on %s: %s", self.uuid, event.detail)
        elif isinstance(event, AuthAccepted | AuthRejected):
            logger.error("unexpected auth reply on an open connection %s", self.uuid)

    def _to_stream(self, item: StreamItem, *, last: bool) -> None:
        """Hand a stream's frame, or the error that ends it, to its reader; never blocks.

        The reader task must never wait on a stream's consumer, and a manager may send frames
        faster than the consumer reads them: past `STREAM_BUFFER` unread frames the stream
        fails (`stream_error`) instead of buffering without bound, and the rest of its frames
        are dropped as the late answer of an abandoned request.
        """
        stream = self._stream
        assert stream is not None
        try:
            stream.send_nowait(item)
        except anyio.WouldBlock:
            self.stream_error = (
                item
                if isinstance(item, TcmError)
                else Backpressure(
                    f"the stream's reader fell {STREAM_BUFFER} frames behind the manager, so "
                    "the stream was given up; consume it faster (e.g. in a task of its own)",
                    code="CLIENT_STREAM_BEHIND",
                    dropped_type="inference",
                )
            )
            self.protocol.abandon_inference()  # a no-op if this frame was the last one
            last = True
        if last:
            stream.close()  # the reader still drains what was sent, then sees the end
            self._stream = None

    def _fail(self, event: RequestFailed) -> None:
        if event.kind == "inference":
            if self._stream is not None:
                self._to_stream(event.error, last=True)
            elif self._inference is not None:
                self._inference.resolve(error=event.error)
        elif event.kind == "info":
            waiter = self._info.pop(event.key, None)  # type: ignore[arg-type]
            if waiter is not None:
                waiter.resolve(error=event.error)
        else:
            waiter = self._management.pop(event.key, None)  # type: ignore[arg-type]
            if waiter is not None:
                waiter.resolve(error=event.error)

    # -- sending ------------------------------------------------------------------

    async def _send(self, frame: bytes) -> None:
        if self.ended:
            ended = self.close_error or self._send_failure
            assert ended is not None
            raise NotSent(f"not sent: {ended}", close_code=ended.close_code, reason=ended.reason)
        # No shield here (it costs more than the write): the transport raises a pending
        # cancellation before writing anything, and fails the connection if a write is cut
        # part-way, so a half-written frame can never be followed by another frame.
        try:
            await self._transport.send_text(frame)
        except ConnectionLost as exc:
            # The transport has ended, though the reader may not have run yet to say so: mark
            # the session ended now, or the pool would hand it out again at once (a retry loop
            # choosing it over and over without ever suspending).
            self.ended = True
            if self._send_failure is None:
                self._send_failure = exc
            if exc.outcome_unknown:
                raise  # the manager may have the frame: only the caller may decide to resend
            raise NotSent(f"not sent: {exc}", close_code=exc.close_code, reason=exc.reason) from exc

    async def abort(self, reason: str, code: int = 1011) -> None:
        """Give up on this connection (closing it fails everything pending)."""
        with anyio.CancelScope(shield=True):
            await self._transport.aclose(code, reason[:120])
        if not self.closed.is_set():
            self._lose(
                ConnectionLost(f"connection closed by the client: {reason}", close_code=code)
            )

    async def _wait(
        self, waiter: _Waiter, deadline: float, what: str, abandon: Callable[[], None]
    ) -> Any:
        try:
            answered = await waiter.signal.wait(deadline)
        except BaseException:
            abandon()  # cancelled: the late answer must not reach the next request
            raise
        if not answered:
            abandon()
            # No time left (`timeout=0.0`): the public call reports its own timeout.
            raise RequestTimeout(
                f"no answer to the {what} before its deadline (the manager sends nothing for "
                "some failures); raise `timeout` if the work is legitimately slow",
                timeout=0.0,
            )
        if waiter.error is not None:
            raise waiter.error
        return waiter.result

    # -- requests ------------------------------------------------------------------

    async def infer(
        self, payload: wire.InferencePayload | msgspec.Raw, deadline: float, what: str = "inference"
    ) -> InferenceCompleted:
        """One HTTP-protocol inference (a single COMPLETED or FAILED frame), answered by
        `deadline` (a time on the backend's clock)."""
        frame = self.protocol.send_inference(payload)
        waiter = _Waiter(self.timers)
        self._inference = waiter
        try:
            await self._send(frame)
            result: InferenceCompleted = await self._wait(
                waiter, deadline, what, self._abandon_inference
            )
            return result
        finally:
            self._inference = None

    def _abandon_inference(self) -> None:
        self._settled = anyio.Event()
        self.protocol.abandon_inference()

    def open_stream(
        self, payload: wire.InferencePayload | msgspec.Raw
    ) -> tuple[bytes, MemoryObjectReceiveStream[StreamItem]]:
        """Start a streamed inference; frames arrive on the returned stream until COMPLETED."""
        frame = self.protocol.send_inference(payload)
        send, receive = anyio.create_memory_object_stream[StreamItem](STREAM_BUFFER)
        self._stream = send
        self.stream_error = None
        return frame, receive

    async def send_stream_request(self, frame: bytes) -> None:
        await self._send(frame)

    def abandon_stream(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        self._abandon_inference()

    async def info(self, action: str, deadline: float) -> wire.InfoResponsePayload:
        job_id, frame = self.protocol.send_info(action)
        waiter = _Waiter(self.timers)
        self._info[job_id] = waiter

        def abandon() -> None:
            self._info.pop(job_id, None)
            self.protocol.abandon_info(job_id)

        await self._send_or_abandon(frame, abandon)
        reply: wire.InfoResponsePayload = await self._wait(
            waiter, deadline, f"info request {action!r}", abandon
        )
        return reply

    async def management(self, payload: dict[str, Any], deadline: float) -> wire.ManagementResult:
        request_id, frame = self.protocol.send_management(payload)
        waiter = _Waiter(self.timers)
        self._management[request_id] = waiter

        def abandon() -> None:
            self._management.pop(request_id, None)
            self.protocol.abandon_management(request_id)

        await self._send_or_abandon(frame, abandon)
        result: wire.ManagementResult = await self._wait(
            waiter, deadline, f"management action {payload.get('action')!r}", abandon
        )
        return result

    async def _send_or_abandon(self, frame: bytes, abandon: Callable[[], None]) -> None:
        try:
            await self._send(frame)
        except BaseException:
            abandon()
            raise


@asynccontextmanager
async def open_session(
    factory: TransportFactory,
    url: str,
    options: TransportOptions,
    protocol: ClientProtocol,
    *,
    on_unsolicited: Callable[[wire.ServerFrame], None],
    auth_timeout: float,
) -> AsyncIterator[Session]:
    """Connect, authenticate, and run the reader task for as long as the block runs.

    Raises ConnectError (NotReady/HandshakeRejected/AuthError/UuidConflict) if the connection
    cannot be made or authenticated.
    """
    async with factory.connect(url, options) as transport:
        await _authenticate(transport, protocol, auth_timeout, on_unsolicited)
        session = Session(protocol, transport, on_unsolicited)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(session.read_forever)
                tg.start_soon(session.timers.run)
                try:
                    yield session
                finally:
                    tg.cancel_scope.cancel()
        finally:
            # Also when the block is cancelled (the client closing): every request still
            # waiting on this connection must end now, not at its own deadline.
            if not session.closed.is_set():
                session._lose(ConnectionLost("connection closed by the client", close_code=1000))
            with anyio.CancelScope(shield=True):
                await transport.aclose(*session.close_with)


async def _authenticate(
    transport: Transport,
    protocol: ClientProtocol,
    timeout: float,
    on_unsolicited: Callable[[wire.ServerFrame], None],
) -> None:
    try:
        with anyio.fail_after(timeout):
            await transport.send_text(protocol.auth())
            while True:
                try:
                    data = await transport.receive()
                except ConnectionLost as exc:
                    raise ConnectError(
                        f"the connection closed during authentication (close code "
                        f"{exc.close_code}): {exc.reason or 'no reason given'}"
                    ) from exc
                event = protocol.receive(data)
                if isinstance(event, AuthAccepted):
                    return
                if isinstance(event, MalformedFrame):
                    raise ConnectError(
                        f"the manager's answer to the auth frame broke the contract: {event.error}"
                    )
                if isinstance(event, AuthRejected):
                    error = event.error
                    if event.uuid_conflict:
                        raise UuidConflict(
                            str(error), server_message=error.server_message, close_code=1008
                        )
                    raise error
                if isinstance(event, Unsolicited):
                    on_unsolicited(event.frame)
    except TimeoutError:
        raise ConnectError(
            f"no auth reply within {timeout:g} s; is this a TCM WebSocket endpoint?"
        ) from None
