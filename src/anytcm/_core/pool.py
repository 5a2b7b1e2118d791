"""A pool of authenticated connections, each kept alive by its own supervisor loop.

Why a pool: the protocol has no request id, so a connection carries one inference at a time
(design.md, fact 1). Parallelism comes from `size` connections, each with its own uuid derived
from a base. A fresh uuid is used for every physical connection, because the manager delivers a
late reply to whichever connection holds the uuid *now* (contract §3.4).

Each slot runs: choose a manager -> readiness gate -> connect -> auth -> serve -> classify the
failure -> backoff -> again. Callers check a connection out for an inference; at most
`max_waiting` callers wait for one, beyond that they get `Backpressure` at once instead of an
unbounded queue.

With several managers (TCM replicas, contract §14) each new connection goes to a live manager
with the fewest connections, a failing manager is left alone for a while (`managers.py`), a
draining one gets no new work, requests go to the managers in turn (or by the selection policy),
a server created through one manager is routed to it, and once a manager is back, idle
connections move to it until the spread is even again.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Mapping

import anyio

from .. import wire
from .._backend import clock
from ..backoff import Backoff
from ..errors import (
    AuthError,
    Backpressure,
    ClientClosed,
    ConnectError,
    ConnectionLost,
    HandshakeRejected,
    NotReady,
    RequestTimeout,
    ServerShutdown,
    TcmError,
)
from ..protocol import ClientProtocol
from ..readiness import ReadinessGate
from ..transports import TransportFactory, TransportOptions
from .affinity import Affinity
from .deadlines import oneshot
from .managers import Manager, Managers, ManagerStatus
from .session import Session, UuidConflict, open_session
from .settings import PoolSettings, PoolStats
from .spread import Spread

logger = logging.getLogger("anytcm.pool")


# Network failures as the layers under a transport raise them (sockets and ssl.SSLError are
# OSError; anyio's streams raise their own).
_NETWORK_ERRORS = (
    OSError,
    anyio.EndOfStream,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
)

READY_POLL_INTERVAL = 0.25  # seconds between /ready checks while the manager answers 503


class _Handoff:
    """A caller waiting for a free session (of `manager`, if set): handed one, or told why
    there is none."""

    __slots__ = ("error", "manager", "session", "signal")

    def __init__(self, manager: Manager | None) -> None:
        self.signal = oneshot()
        self.manager = manager
        self.session: Session | None = None
        self.error: TcmError | None = None


class Pool:
    """`size` supervised sessions. Run it with `await task_group.start(pool.run)`.

    Create it inside the event loop: it keeps that loop's clock (`anytcm._backend.clock`), on
    which every deadline it is given is an absolute time.
    """

    def __init__(
        self,
        settings: PoolSettings,
        factory: TransportFactory,
        options: TransportOptions,
        on_unsolicited: Callable[[wire.ServerFrame], None],
        gate: ReadinessGate | Mapping[str, ReadinessGate] | None,
    ) -> None:
        self.settings = settings
        self._factory = factory
        self._options = options
        self._on_unsolicited = on_unsolicited
        urls = settings.all_urls
        if gate is None or isinstance(gate, Mapping):
            self._gates: Mapping[str, ReadinessGate] = dict(gate or {})
        else:
            self._gates = {urls[0]: gate}
        self.managers = Managers(urls, settings.dead_time)
        self._several = len(urls) > 1
        self.selection = settings.selection()
        # What was created through one manager, routed to it (contract §14).
        self.affinity = Affinity(self.managers, enabled=self._several)
        self._spread = Spread(self)
        self._retired: set[Session] = set()  # closed to move to another manager, not failed
        self.sessions: list[Session] = []
        self._idle: deque[Session] = deque()
        self._waiters: deque[_Handoff] = deque()
        self._changed = anyio.Event()
        self._first_up = anyio.Event()
        self._fatal: TcmError | None = None
        self._broken: Exception | None = None  # not a connection failure: see _supervise
        self._closing = False
        self._last_failure: BaseException | None = None
        self._rotation = 0
        self._slot_connected: set[int] = set()
        self._task_group: anyio.abc.TaskGroup | None = None
        self.stats = PoolStats()
        self.now = clock()

    # -- lifetime ------------------------------------------------------------------

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Supervise every slot; report started once the first connection is ready."""
        failure: BaseException | None = None
        async with anyio.create_task_group() as tg:
            self._task_group = tg
            for slot in range(self.settings.size):
                tg.start_soon(self._supervise, slot)
            if self._several:
                tg.start_soon(self._spread.run)
            with anyio.move_on_after(self.settings.connect_timeout):
                await self._first_up.wait()
            if self._broken is not None:
                failure = self._broken
            elif self._fatal is not None:
                failure = self._fatal
            elif not self._first_up.is_set() and self._several:
                failure = self._spread.all_down(
                    f"no connection to any manager within {self.settings.connect_timeout:g} s"
                )
            elif not self._first_up.is_set():
                failure = ConnectError(
                    f"no connection to {self.settings.url} within "
                    f"{self.settings.connect_timeout:g} s; last failure: {self._last_failure}"
                )
            if failure is not None:
                self._closing = True
                tg.cancel_scope.cancel()
            else:
                task_status.started()
        if failure is not None:
            broken = self._broken
            if broken is not None and failure is broken:
                raise broken  # as it is, once, not one copy per connection in a group
            if failure is not self._fatal and isinstance(self._last_failure, Exception):
                raise failure from self._last_failure  # e.g. NotReady with reason and error_id
            raise failure

    def _give_up(self, error: ConnectError, what: str) -> None:
        """A failure no retry can fix: every slot stops, `connect` and waiters get `error`."""
        if self._fatal is None:  # logged once, not once per connection of the pool
            logger.error("%s, giving up: %s", what, error)
            self._fatal = error
        self._fail_waiters(self._fatal)
        self._first_up.set()

    def close(self) -> None:
        """Stop supervising; pending and future checkouts fail with ClientClosed."""
        self._closing = True
        self._fail_waiters(ClientClosed("the client is closed"))
        if self._task_group is not None:
            self._task_group.cancel_scope.cancel()

    async def _supervise(self, slot: int) -> None:
        backoff = self.settings.backoff()
        generation = 0
        conflicted = False  # the previous attempt ended in a uuid conflict
        while not self._stopped():
            manager = self.managers.place(self.now())
            if manager is None:
                # Every manager is being left alone for now: wait for the first one's trial.
                await self.settings.sleep(
                    max(0.01, self.managers.next_trial(self.now()) - self.now())
                )
                continue
            generation += 1
            uuid = f"{self.settings.base_uuid}-{slot}-{generation}"
            failure: BaseException | None = None
            retry_now = False
            try:
                failure = await self._serve_one(uuid, backoff, slot, manager)
                if failure is _MOVED:
                    continue  # closed to rebalance: straight to the emptiest manager
            except UuidConflict as exc:
                # The next generation is a fresh uuid, so one conflict is retried at once; a
                # second in a row means the uuids are not the problem (or the peer lies about
                # them): back off like any failure, never a reconnect loop without a pause.
                failure, retry_now = exc, not conflicted
            except AuthError as exc:
                self._give_up(exc, "authentication refused")
                return
            except HandshakeRejected as exc:
                if exc.permanent:
                    self._give_up(exc, "the URL leads to no TCM manager")
                    return
                failure = exc
                self.stats.connect_failures += 1
            except (ConnectError, ConnectionLost) as exc:
                failure = exc
                self.stats.connect_failures += 1
            except _NETWORK_ERRORS as exc:
                # What a socket or TLS stream raises, from a transport plugin (or gate) that did
                # not translate it: still one failed attempt (backoff, then again), never the
                # end of the client. Anything else is a bug or a configuration error: it ends
                # `connect` at once, with its own message.
                logger.error("connection %s failed untranslated: %r", uuid, exc, exc_info=exc)
                failure = ConnectError(f"the connection failed: {exc!r}")
                self.stats.connect_failures += 1
            except Exception as exc:
                # A bug, or a configuration error such as a transport that cannot run on this
                # event loop: every connection would meet it, and no retry fixes it. `connect`
                # raises it once, as it is; after the start, this connection stops, logged.
                if self._broken is None:
                    logger.error("connection %s cannot be opened: %r", uuid, exc, exc_info=exc)
                    self._broken = exc
                self._first_up.set()
                return
            if self._stopped():
                return
            conflicted = isinstance(failure, UuidConflict)
            self._last_failure = _without_tracebacks(failure)
            gate = self.gate_of(manager)
            if gate is not None:
                gate.forget()
            backoff.failed(self.now())
            delay = 0.0 if retry_now else backoff.next_delay()
            elsewhere = False
            if self._several and failure is not None and not retry_now:
                self._spread.mark(manager, failure)
                elsewhere = self.managers.place(self.now()) is not None
            if elsewhere:
                # Another manager can take this connection now; this one waits out its dead
                # time in `Managers`, not in this slot.
                delay = 0.0
            elif isinstance(failure, ServerShutdown):
                # Stop-the-world: never a hot loop; the readiness gate then waits for /ready.
                delay = max(delay, backoff.ceiling() / 2)
            elif isinstance(failure, NotReady) and failure.process_up:
                # The manager is up and says when it is ready: asking /ready (cached for 1 s on
                # the server) at a steady pace reconnects promptly without a connection storm.
                delay = min(delay, READY_POLL_INTERVAL)
            # A manager that is not ready yet is reported by the gate, once per change; a line
            # per poll of every connection would bury it.
            logger.log(
                logging.DEBUG if isinstance(failure, NotReady) else logging.INFO,
                "connection %s ended (%s); reconnecting in %.2f s",
                uuid,
                failure,
                delay,
                extra={"uuid": uuid, "delay": delay, "reason": str(failure)},
            )
            await self.settings.sleep(delay)

    async def _serve_one(
        self, uuid: str, backoff: Backoff, slot: int, manager: Manager
    ) -> ConnectionLost | None:
        """One physical connection, from readiness check to its end."""
        gate = self.gate_of(manager)
        if gate is not None:
            state = await gate.check()
            if not state.ready:
                raise state.as_error()
        protocol = ClientProtocol(
            uuid,
            token=self.settings.token,
            capabilities=self.settings.capabilities,
            roles=self.settings.roles,
        )
        async with open_session(
            self._factory,
            manager.url,
            self._options,
            protocol,
            on_unsolicited=self._on_unsolicited,
            auth_timeout=self.settings.auth_timeout,
        ) as session:
            backoff.succeeded(self.now())
            if slot in self._slot_connected:
                self.stats.reconnects += 1
            self._slot_connected.add(slot)
            self.stats.connects += 1
            session.manager = manager
            self.managers.connected(manager)
            manager.connections += 1
            self._add(session)
            try:
                await session.closed.wait()
            finally:
                manager.connections -= 1
                self._remove(session)
        if session in self._retired:
            self._retired.discard(session)
            return _MOVED
        return session.close_error

    def _add(self, session: Session) -> None:
        self.sessions.append(session)
        self._first_up.set()
        url = session.manager.url if session.manager is not None else self.settings.url
        logger.info(
            "connected %s to %s (capabilities %s)",
            session.uuid,
            url,
            session.granted,
            extra={"uuid": session.uuid, "manager": url},
        )
        self.checkin(session)
        self._notify()

    def _remove(self, session: Session) -> None:
        self.stats.stale_replies += session.stale_replies
        if session in self.sessions:
            self.sessions.remove(session)
        if session in self._idle:
            self._idle.remove(session)
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def _fail_waiters(self, error: TcmError) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            waiter.error = error
            waiter.signal.set()
        self._notify()

    @property
    def uuid_bytes_bound(self) -> int:
        """The longest uuid a connection of this pool will use (for frame-size checks)."""
        return len(self.settings.base_uuid) + 2 * 10 + 2  # "-<slot>-<generation>"

    def _stopped(self) -> bool:
        return self._closing

    def _check_usable(self) -> None:
        if self._fatal is not None:
            raise self._fatal
        if self._closing:
            raise ClientClosed("the client is closed; open a new one with anytcm.connect()")

    # -- inference checkout ------------------------------------------------------------------

    def _take_idle(self, manager: Manager | None = None) -> Session | None:
        """An idle session free for one inference (of `manager`, if given), or None if there
        is none right now."""
        self._check_usable()
        idle = self._idle
        if not self._several:
            while idle:
                session = idle.popleft()
                if session.inference_usable:
                    return session
            return None
        return self._spread.take_idle(idle, manager)

    def _timeout(self, message: str, deadline: float, manager: Manager | None) -> TcmError:
        """What a caller whose deadline passed without a connection is told."""
        if self._several:
            down = self._spread.all_down(message, manager)
            if down is not None:
                return down
        return RequestTimeout(message, timeout=max(0.0, deadline - self.now()))

    async def checkout(self, deadline: float, manager: Manager | None = None) -> Session:
        """A session free for one inference (to `manager`, if given), waiting (bounded) for
        one to become free."""
        while True:
            session = self._take_idle(manager)
            if session is not None:
                return session
            if self.now() >= deadline:
                raise self._timeout(
                    "no connection was free before the deadline "
                    f"({self.settings.size} connections, all busy or reconnecting)",
                    deadline,
                    manager,
                )
            if len(self._waiters) >= self.settings.max_waiting:
                raise Backpressure(
                    f"all {self.settings.size} connections are busy and {len(self._waiters)} "
                    f"callers already wait (max_waiting={self.settings.max_waiting}); slow down or "
                    "raise pool_size/max_waiting",
                    code="CLIENT_POOL_EXHAUSTED",
                )
            waiter = _Handoff(manager)
            self._waiters.append(waiter)
            try:
                handed = await waiter.signal.wait(deadline)
            except BaseException:
                self._withdraw(waiter)
                raise
            if not handed:
                self._withdraw(waiter)
                raise self._timeout(
                    "no connection became free before the deadline "
                    f"({self.settings.size} connections, all busy or reconnecting)",
                    deadline,
                    manager,
                )
            if waiter.error is not None:
                raise waiter.error
            if waiter.session is not None and waiter.session.inference_usable:
                return waiter.session

    def _withdraw(self, waiter: _Handoff) -> None:
        """A waiter gave up (deadline, cancellation): pass on a session handed to it meanwhile."""
        if waiter.session is not None:
            self.checkin(waiter.session)
        elif waiter in self._waiters:
            self._waiters.remove(waiter)

    def checkin(self, session: Session) -> None:
        """Return a session after an inference; hand it to the longest waiter if any."""
        if session.ended or session not in self.sessions:
            return
        if session.protocol.inference_abandoned:
            self._quarantine(session)
            return
        if not session.inference_usable or session.draining:
            return
        if self._several:
            for waiter in list(self._waiters):
                if waiter.manager is None or waiter.manager is session.manager:
                    self._waiters.remove(waiter)
                    if waiter.signal.is_set():
                        continue  # gone (timed out, cancelled): the next one
                    waiter.session = session
                    waiter.signal.set()
                    return
            self._idle.append(session)
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.signal.is_set():
                waiter.session = session
                waiter.signal.set()
                return
        self._idle.append(session)

    def _quarantine(self, session: Session) -> None:
        """Hold a session whose inference was given up until its late answer arrives."""
        self.stats.quarantined += 1
        assert self._task_group is not None
        self._task_group.start_soon(self._settle, session)

    async def _settle(self, session: Session) -> None:
        with anyio.move_on_after(self.settings.stale_grace):
            await session.inference_settled()
            self.checkin(session)
            return
        # No late answer (a hung request): only a new connection with a new uuid is safe. Let
        # the info/management requests already on it finish first (each has its own deadline):
        # closing under them would turn a known outcome into an unknown one.
        session.draining = True
        with anyio.move_on_after(self.settings.drain_limit):
            while session.has_pending_requests and not session.closed.is_set():  # noqa: ASYNC110
                await anyio.sleep(0.05)  # rare (a hung request); polling keeps Session simple
        await session.abort("an abandoned inference was never answered; reconnecting")

    # -- other requests ------------------------------------------------------------------

    async def pick(
        self,
        ready: Callable[[Session], bool],
        deadline: float,
        what: str,
        manager: Manager | None = None,
    ) -> Session:
        """Any open session (of `manager`, if given) for which `ready` holds (round-robin),
        waiting until one is."""
        while True:
            self._check_usable()
            if self.now() >= deadline:
                # Checked on every call, also when a session is free: a caller that loops
                # (pick, send, not sent, pick) meets its deadline even if it never suspends.
                raise self._timeout(
                    f"no connection could take the {what} before the deadline "
                    f"(last failure: {self._last_failure})",
                    deadline,
                    manager,
                )
            candidates = [
                s
                for s in self.sessions
                if not s.ended
                and not s.draining
                and (manager is None or s.manager is manager)
                and ready(s)
            ]
            if candidates:
                self._rotation += 1
                return candidates[self._rotation % len(candidates)]
            changed = self._changed
            with anyio.CancelScope(deadline=deadline) as scope:
                await changed.wait()
            if scope.cancelled_caught:
                raise self._timeout(
                    f"no connection could take the {what} before the deadline "
                    f"(last failure: {self._last_failure})",
                    deadline,
                    manager,
                )

    def slot_freed(self) -> None:
        """An info or management slot of some session is free again."""
        self._notify()

    # -- several managers (see `spread.py`) ---------------------------------------------------

    @property
    def closing(self) -> bool:
        return self._closing

    def changed(self) -> None:
        """Something waiters may be waiting for changed (a manager's state)."""
        self._notify()

    def gate_of(self, manager: Manager) -> ReadinessGate | None:
        return self._gates.get(manager.url)

    def retire_idle(self, manager: Manager) -> Session | None:
        """Take an idle connection of `manager` out of service, to be closed and reopened on
        another manager (not a failure: its slot reconnects at once)."""
        for session in list(self._idle):
            if session.manager is manager and session.inference_usable:
                if session.has_pending_requests:
                    continue
                self._idle.remove(session)
                session.draining = True
                self._retired.add(session)
                return session
        return None

    def statuses(self) -> tuple[ManagerStatus, ...]:
        return self.managers.statuses(self.now())


# What `_serve_one` returns for a connection the pool closed to move it: not a failure.
_MOVED = ConnectionLost("moved to another manager to even the spread")


def _without_tracebacks(error: BaseException | None) -> BaseException | None:
    """`error`, kept for later messages, without the tracebacks of it and its chain.

    A traceback holds every frame it passed through, and with them the dead connection's
    transport and buffers (after an over-limit reply, hundreds of MB). The pool remembers its
    last failure for as long as it runs: it must remember what happened, not hold all that.
    """
    seen: set[int] = set()
    link = error
    while link is not None and id(link) not in seen and len(seen) < 32:
        seen.add(id(link))
        link.__traceback__ = None
        link = link.__cause__ or link.__context__
    return error
