"""A one-shot signal with an absolute deadline: what every request waits on.

Every request waits for exactly one thing (its reply, or a free connection) until a deadline,
an absolute time on the backend's clock (`anytcm._backend.clock`). The general path is anyio's
own: an `anyio.Event` under an `anyio.CancelScope(deadline=...)` (`_GeneralOneShot`). A cancel
scope is heavy for a wait that almost always ends long before its deadline (it attaches to the
task, registers its deadline with the loop, and is torn down again), so with fast paths on
(`anytcm._fast`) each backend gets a native one: a future on asyncio, a parked task on trio, and
the deadline an entry in the owner's timers (`new_timers()`: one loop timer handle on asyncio,
see `_AsyncioTimers`; one timer task on trio, see `_trio_factory`), or, without them, a timer
handle (asyncio) or cancel scope (trio) of the wait's own.

Cancellation from outside (an anyio cancel scope, a task group) reaches the waiting task
exactly as it would reach `anyio.Event.wait()`, and is never swallowed.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from collections.abc import Callable, Iterator
from typing import Generic, Protocol, TypeVar

import anyio

from .. import _fast
from .._backend import current_backend

__all__ = ("OneShot", "Timers", "new_timers", "oneshot")


class OneShot(Protocol):
    """Set once by whoever has the answer; awaited once by whoever asked."""

    def set(self) -> None:
        """Wake the waiter; later calls do nothing."""

    def is_set(self) -> bool:
        """True once set (or, on asyncio's native one, once its wait ended: nobody waits)."""

    async def wait(self, deadline: float) -> bool:
        """Wait until set or until the backend's clock reaches `deadline`; True if set.

        A signal already set answers True at once; a deadline already past answers False
        (perhaps after one pass of the event loop).
        """


class Timers(Protocol):
    """Deadlines of one owner's waits, served while the owner runs `run()` (see below)."""

    async def run(self) -> None:
        """Expire deadlines until cancelled; run it in the owner's task group."""

    def oneshot(self) -> OneShot:
        """A new signal whose deadline these timers serve (while `run()` runs; once it has
        stopped, the wait serves its own). Made by the timers, so no backend probe per wait."""


# -- the general path: anyio's primitives ---------------------------------------------------


class _GeneralOneShot:
    """An `anyio.Event` waited on under a cancel scope with the deadline."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = anyio.Event()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    async def wait(self, deadline: float) -> bool:
        event = self._event
        if event.is_set():
            return True
        with anyio.CancelScope(deadline=deadline):
            await event.wait()
        return event.is_set()


class _GeneralTimers:
    """Nothing to serve: every general wait keeps its own deadline in its cancel scope."""

    __slots__ = ("running",)

    def __init__(self) -> None:
        self.running = False

    async def run(self) -> None:
        self.running = True
        try:
            await anyio.sleep_forever()
        finally:
            self.running = False

    def oneshot(self) -> OneShot:
        return _GeneralOneShot()


# -- the native paths -----------------------------------------------------------------------


class _Parked(Protocol):
    def pending(self) -> bool:
        """True while its wait still needs its deadline."""


_S = TypeVar("_S", bound=_Parked)


class _Deadlines(Generic[_S]):
    """The deadlines of one owner's waits, earliest first; what both timer services keep.

    A wait that ended leaves its entry behind (removing it would cost a search): entries are
    dropped when they reach the top or when the heap is compacted, which happens once it has
    grown fourfold since the last compaction, so the cost per wait stays O(1) amortised.
    """

    __slots__ = ("_compact_at", "_entries", "_order")

    def __init__(self) -> None:
        self._entries: list[tuple[float, int, _S]] = []
        self._order = itertools.count()  # ties never compare the waits
        self._compact_at = 64

    def __len__(self) -> int:
        return len(self._entries)

    def push(self, deadline: float, shot: _S) -> None:
        entries = self._entries
        heapq.heappush(entries, (deadline, next(self._order), shot))
        if len(entries) >= self._compact_at:
            entries[:] = [entry for entry in entries if entry[2].pending()]
            heapq.heapify(entries)
            self._compact_at = max(64, 4 * len(entries))

    def earliest(self) -> float:
        """The top entry's deadline (perhaps of an ended wait), or inf when there is none."""
        return self._entries[0][0] if self._entries else math.inf

    def pop_due(self, now: float) -> Iterator[_S]:
        """Pop the entries due by `now` and those of ended waits, up to the first live one."""
        entries = self._entries
        while entries and (entries[0][0] <= now or not entries[0][2].pending()):
            yield heapq.heappop(entries)[2]

    def pop_all(self) -> Iterator[_S]:
        entries = self._entries
        while entries:
            yield heapq.heappop(entries)[2]


class _AsyncioOneShot:
    __slots__ = ("_deadline", "_future", "_loop", "_timed_out", "_timer", "_timers")

    def __init__(self, loop: asyncio.AbstractEventLoop, timers: _AsyncioTimers | None) -> None:
        self._loop = loop
        self._future: asyncio.Future[None] = loop.create_future()
        self._timed_out = False
        self._timers = timers
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = 0.0

    def set(self) -> None:
        if not self._future.done():
            self._future.set_result(None)

    def is_set(self) -> bool:
        return self._future.done()

    def _expire(self) -> None:
        if not self._future.done():
            self._timed_out = True
            self._future.set_result(None)

    def pending(self) -> bool:
        return not self._future.done()

    def _orphan(self) -> None:
        """The timers stopped under this wait: it keeps its deadline with a handle of its own."""
        if not self._future.done():
            self._timer = self._loop.call_at(self._deadline, self._expire)

    async def wait(self, deadline: float) -> bool:
        future = self._future
        if future.done():
            return not self._timed_out
        timers = self._timers
        if timers is not None and timers.running:
            self._deadline = deadline
            timers.add(deadline, self)
        else:
            self._timer = self._loop.call_at(deadline, self._expire)
        try:
            await future
        finally:
            if self._timer is not None:
                self._timer.cancel()
        return not self._timed_out


class _AsyncioTimers:
    """The deadlines of one owner's waits on asyncio, behind one loop timer handle.

    A timer handle per wait would be armed, cancelled when the reply comes, and cleaned up by
    the loop, on every request. Here a wait is a heap push (`_Deadlines`), and one handle stays
    armed for the earliest deadline; a reply almost always comes long before its deadline, so
    that handle seldom moves.
    """

    __slots__ = ("_handle", "_handle_at", "_heap", "_loop", "running")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._heap: _Deadlines[_AsyncioOneShot] = _Deadlines()
        self._handle: asyncio.TimerHandle | None = None
        self._handle_at = math.inf
        self.running = False

    def add(self, deadline: float, shot: _AsyncioOneShot) -> None:
        self._heap.push(deadline, shot)
        if deadline < self._handle_at:
            self._arm(deadline)

    def _arm(self, deadline: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self._loop.call_at(deadline, self._fire)
        self._handle_at = deadline

    def oneshot(self) -> OneShot:
        return _AsyncioOneShot(self._loop, self)

    def _fire(self) -> None:
        self._handle, self._handle_at = None, math.inf
        for shot in self._heap.pop_due(self._loop.time()):
            shot._expire()
        if self._heap:
            self._arm(self._heap.earliest())

    async def run(self) -> None:
        self.running = True
        try:
            await self._loop.create_future()  # until the owner's task group is cancelled
        finally:
            self.running = False
            if self._handle is not None:
                self._handle.cancel()
            self._handle, self._handle_at = None, math.inf
            for shot in self._heap.pop_all():
                shot._orphan()


def _trio_factory() -> tuple[Callable[[], OneShot], Callable[[], Timers]]:
    """trio's one-shot: the waiting task parks itself, and is woken with True (set) or False.

    A `trio.Event` under `trio.move_on_at` attaches a cancel scope to the task and registers
    its deadline with the run loop on every wait. Here a wait is `wait_task_rescheduled` and a
    heap push: the deadlines live in a `_TrioTimers` whose one task (in the owner's task
    group, e.g. the session's, next to its reader) sleeps until the earliest one. Entries are
    removed lazily (`_Deadlines`). Without timers, or once their task has ended (the owner
    shutting down), a wait falls back to a cancel scope of its own for the time left.
    """
    import outcome
    import trio
    from trio.lowlevel import Abort, current_task, reschedule, wait_task_rescheduled

    # What a parked wait is woken with. (A fresh `outcome.Value` each time: one unwraps once.)
    timed_out, woken, gone = False, True, None  # gone: the timers stopped, use a scope

    class _TrioTimers:
        __slots__ = ("_heap", "_scope", "running")

        def __init__(self) -> None:
            self._heap: _Deadlines[_TrioOneShot] = _Deadlines()
            self._scope: trio.CancelScope | None = None
            self.running = False

        def oneshot(self) -> OneShot:
            return _TrioOneShot(self)

        def add(self, deadline: float, shot: _TrioOneShot) -> None:
            self._heap.push(deadline, shot)
            scope = self._scope
            if scope is not None and deadline < scope.deadline:
                scope.deadline = deadline

        async def run(self) -> None:
            heap = self._heap
            self.running = True
            try:
                while True:
                    for shot in heap.pop_due(trio.current_time()):
                        shot._wake(timed_out)
                    with trio.CancelScope(deadline=heap.earliest()) as scope:
                        self._scope = scope
                        await trio.sleep_forever()
                    self._scope = None
            finally:
                self.running = False
                self._scope = None
                for shot in heap.pop_all():
                    shot._wake(gone)

    class _TrioOneShot:
        __slots__ = ("_set", "_task", "_timers")

        def __init__(self, timers: _TrioTimers | None = None) -> None:
            self._set = False
            self._task: trio.lowlevel.Task | None = None  # the waiting task, while it waits
            self._timers = timers

        def set(self) -> None:
            if not self._set:
                self._set = True
                self._wake(woken)

        def is_set(self) -> bool:
            return self._set

        def pending(self) -> bool:
            return self._task is not None

        def _wake(self, answer: bool | None) -> None:
            task = self._task
            if task is not None:
                self._task = None  # never rescheduled twice
                reschedule(task, outcome.Value(answer))

        def _abort(self, raise_cancel: object) -> Abort:
            self._task = None  # cancelled: nothing may wake it now
            return Abort.SUCCEEDED

        async def wait(self, deadline: float) -> bool:
            if self._set:
                return True
            timers = self._timers
            if timers is not None and timers.running:
                self._task = current_task()
                timers.add(deadline, self)
                answer: bool | None = await wait_task_rescheduled(self._abort)
                if answer is not None:
                    return answer
                if self.is_set():  # (a method: mypy would take `_set` as still False here)
                    return True
                # The timers stopped (their owner is shutting down): wait out the time left.
            with trio.move_on_at(deadline):
                self._task = current_task()
                await wait_task_rescheduled(self._abort)
            return self.is_set()

    return _TrioOneShot, _TrioTimers


_trio_kinds: tuple[Callable[[], OneShot], Callable[[], Timers]] | None = None


def _trio() -> tuple[Callable[[], OneShot], Callable[[], Timers]]:
    global _trio_kinds
    if _trio_kinds is None:
        _trio_kinds = _trio_factory()
    return _trio_kinds


# -- choosing -------------------------------------------------------------------------------


def oneshot() -> OneShot:
    """A new signal for the running backend; call it inside the event loop.

    Each wait serves its own deadline; for a deadline served by an owner's timers, use
    `new_timers().oneshot()`.
    """
    if _fast.ENABLED:
        backend = current_backend()
        if backend == "asyncio":
            return _AsyncioOneShot(asyncio.get_running_loop(), None)
        if backend == "trio":
            return _trio()[0]()
    return _GeneralOneShot()


def new_timers() -> Timers:
    """Deadline service for the waits of one owner, on the running backend.

    The owner runs `timers.run()` in its task group for as long as it creates waits.
    """
    if _fast.ENABLED:
        backend = current_backend()
        if backend == "asyncio":
            return _AsyncioTimers(asyncio.get_running_loop())
        if backend == "trio":
            return _trio()[1]()
    return _GeneralTimers()
