"""A one-shot signal with a deadline, on each backend's native primitives.

Every request waits for exactly one thing (its reply, or a free connection) with a deadline.
Written with anyio that is an `anyio.Event` inside `anyio.fail_after`, and on asyncio that pair
costs ~25 µs per request (a cancel scope that tracks the task and reschedules cancellation,
plus an `asyncio.Event` wrapped in anyio's): a tenth of a small request's client CPU
(`benchmarks/profile_client.py`). Here the asyncio version is one future and one timer handle;
the trio version is trio's own event and cancel scope, which is what anyio runs underneath.

Cancellation from outside (an anyio cancel scope, a task group) reaches the waiting task
exactly as it would reach `anyio.Event.wait()`, and is never swallowed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

__all__ = ("OneShot", "backend_clock", "oneshot")


class OneShot(Protocol):
    """Set once by whoever has the answer; awaited once by whoever asked."""

    def set(self) -> None:
        """Wake the waiter; later calls do nothing."""

    def is_set(self) -> bool:
        """True once set (or, on asyncio, once its waiter was cancelled: nobody waits anymore)."""

    async def wait(self, timeout: float) -> bool:
        """Wait at most `timeout` seconds; True if set, False on timeout."""


class _AsyncioOneShot:
    __slots__ = ("_future", "_loop", "_timed_out")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._future: asyncio.Future[None] = loop.create_future()
        self._timed_out = False

    def set(self) -> None:
        if not self._future.done():
            self._future.set_result(None)

    def is_set(self) -> bool:
        return self._future.done()

    def _expire(self) -> None:
        if not self._future.done():
            self._timed_out = True
            self._future.set_result(None)

    async def wait(self, timeout: float) -> bool:
        future = self._future
        if future.done():
            return not self._timed_out
        if timeout <= 0:
            return False
        timer = self._loop.call_later(timeout, self._expire)
        try:
            await future
        finally:
            timer.cancel()
        return not self._timed_out


def _new_asyncio() -> OneShot | None:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    return _AsyncioOneShot(loop)


def _trio_factory() -> Callable[[], OneShot]:
    import trio

    class _TrioOneShot:
        __slots__ = ("_event",)

        def __init__(self) -> None:
            self._event = trio.Event()

        def set(self) -> None:
            self._event.set()

        def is_set(self) -> bool:
            return self._event.is_set()

        async def wait(self, timeout: float) -> bool:
            if self._event.is_set():
                return True
            with trio.move_on_after(max(0.0, timeout)):
                await self._event.wait()
            return self._event.is_set()

    return _TrioOneShot


_trio_oneshot: Callable[[], OneShot] | None = None


def oneshot() -> OneShot:
    """A new signal for the running backend (asyncio or trio); call it inside the event loop."""
    global _trio_oneshot
    made = _new_asyncio()
    if made is not None:
        return made
    if _trio_oneshot is None:
        _trio_oneshot = _trio_factory()
    return _trio_oneshot()


def backend_clock() -> Callable[[], float]:
    """The running backend's own clock, the one `anyio.current_time()` reads; call it in the loop.

    Deadlines are absolute times on this clock. Perf: `anyio.current_time()` looks up the
    backend on every call (~1.3 us); a client calls it a few times per request, so it keeps
    the backend's function instead (`loop.time` on asyncio, `trio.current_time` on trio).
    """
    try:
        return asyncio.get_running_loop().time
    except RuntimeError:
        import trio

        return trio.current_time
