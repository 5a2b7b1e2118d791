"""The one-shot signal every request waits on (`anytcm._core.deadlines`), on asyncio and trio.

The deadlines are served by the owner's timers (`new_timers()`: one loop timer handle on
asyncio, one timer task on trio), or without them by each wait itself. The same behaviour is
asserted on both, with the timers running, without them, and when they stop under a waiting
task. Signals with timers come from `timers.oneshot()`, those without from `oneshot()`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest

from anytcm._core.deadlines import Timers, new_timers, oneshot

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def running_timers() -> AsyncIterator[Timers]:
    """Timers with their `run()` running for the block."""
    timers = new_timers()
    async with anyio.create_task_group() as tg:
        tg.start_soon(timers.run)
        await anyio.sleep(0.01)  # let it start: waits before that serve their own deadline
        assert timers.running  # type: ignore[attr-defined]
        yield timers
        tg.cancel_scope.cancel()


@pytest.mark.parametrize("with_timers", [True, False], ids=["timers", "no-timers"])
async def test_set_before_and_during_the_wait(with_timers: bool) -> None:
    async with running_timers() as timers:
        make = timers.oneshot if with_timers else oneshot
        early = make()
        early.set()
        early.set()  # later calls do nothing
        assert early.is_set()
        assert await early.wait(5.0) is True

        late = make()
        async with anyio.create_task_group() as tg:
            tg.start_soon(_set_after, late, 0.05)
            with anyio.fail_after(5):
                assert await late.wait(5.0) is True
        assert late.is_set()


async def _set_after(shot: object, delay: float) -> None:
    await anyio.sleep(delay)
    shot.set()  # type: ignore[attr-defined]


@pytest.mark.parametrize("with_timers", [True, False], ids=["timers", "no-timers"])
async def test_timeout_returns_false_at_the_deadline(with_timers: bool) -> None:
    async with running_timers() as timers:
        shot = timers.oneshot() if with_timers else oneshot()
        started = anyio.current_time()
        with anyio.fail_after(5):  # a deadline nobody serves would hang here
            assert await shot.wait(0.1) is False
        elapsed = anyio.current_time() - started
        assert 0.09 <= elapsed < 2.0
        assert await timers.oneshot().wait(0) is False
        assert await timers.oneshot().wait(-1.0) is False


async def test_many_waiters_each_get_their_own_answer() -> None:
    answers: dict[int, bool] = {}
    woke_at: dict[int, float] = {}
    async with running_timers() as timers:
        start = anyio.current_time()
        # Deadlines added latest-first, so each new one is earlier than the timer's current
        # deadline: the timer must move its deadline forward every time.
        shots = {index: timers.oneshot() for index in range(20)}

        async def wait(index: int) -> None:
            answers[index] = await shots[index].wait(0.05 + 0.02 * (19 - index))
            woke_at[index] = anyio.current_time() - start

        with anyio.fail_after(5):  # a timer that never moved its deadline would hang here
            async with anyio.create_task_group() as tg:
                for index in range(20):
                    tg.start_soon(wait, index)
                await anyio.sleep(0.01)
                for index in range(0, 20, 2):
                    shots[index].set()  # the even ones are answered, the odd ones time out
    assert answers == {index: index % 2 == 0 for index in range(20)}
    for index in range(1, 20, 2):
        assert woke_at[index] >= 0.05 + 0.02 * (19 - index) - 0.01  # not before its deadline
        assert woke_at[index] < 0.05 + 0.02 * (19 - index) + 0.3  # and not much after


async def test_outside_cancellation_is_never_swallowed() -> None:
    async with running_timers() as timers:
        shot = timers.oneshot()
        with anyio.move_on_after(0.05) as scope:
            await shot.wait(10.0)
        assert scope.cancelled_caught
        shot.set()  # nobody waits any more: harmless
        assert shot.is_set()
        # The timers keep serving other waits.
        assert await timers.oneshot().wait(0.05) is False
        other = timers.oneshot()
        other.set()
        assert await other.wait(1.0) is True


async def test_a_wait_outlives_its_timers_with_its_deadline_intact() -> None:
    timers = new_timers()
    shot, timed = timers.oneshot(), timers.oneshot()
    results: dict[str, bool] = {}

    async def wait(name: str, which: object, timeout: float) -> None:
        results[name] = await which.wait(timeout)  # type: ignore[attr-defined]

    async with anyio.create_task_group() as outer:
        async with anyio.create_task_group() as owner:
            owner.start_soon(timers.run)
            await anyio.sleep(0.01)
            outer.start_soon(wait, "answered", shot, 5.0)
            outer.start_soon(wait, "timed", timed, 0.3)
            await anyio.sleep(0.05)
            owner.cancel_scope.cancel()  # the timers' owner shuts down under both waits
        await anyio.sleep(0.05)
        assert results == {}  # neither woke early
        shot.set()
    assert results == {"answered": True, "timed": False}


async def test_ended_waits_do_not_pile_up() -> None:
    async with running_timers() as timers:
        for _ in range(2000):
            shot = timers.oneshot()
            async with anyio.create_task_group() as tg:
                tg.start_soon(_set_after, shot, 0)
                assert await shot.wait(30.0) is True
        # Every wait left an entry behind (30 s deadlines); compaction keeps them bounded.
        assert len(timers._heap) < 300  # type: ignore[attr-defined]
