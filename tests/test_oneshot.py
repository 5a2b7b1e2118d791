"""The one-shot signal every request waits on (`anytcm._core.deadlines`), on asyncio and trio.

A wait ends when the signal is set or when the backend's clock reaches its deadline, an
absolute time. The native signals' deadlines are served by the owner's timers (`new_timers()`:
one loop timer handle on asyncio, one timer task on trio), or without them by each wait itself;
the general path (anyio's event under a cancel scope, what every signal is with fast paths off)
keeps its own deadline always. The same behaviour is asserted on all of them, with the timers
running, without them, and when they stop under a waiting task.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio
import pytest

from anytcm import _fast
from anytcm._core import deadlines
from anytcm._core.deadlines import OneShot, Timers, new_timers, oneshot

pytestmark = pytest.mark.anyio

KINDS = pytest.mark.parametrize("kind", ["native", "general"])


def timers_of(kind: str) -> Timers:
    return new_timers() if kind == "native" else deadlines._GeneralTimers()


def in_(seconds: float) -> float:
    """The deadline `seconds` from now."""
    return anyio.current_time() + seconds


@asynccontextmanager
async def running_timers(kind: str = "native") -> AsyncIterator[Timers]:
    """Timers with their `run()` running for the block."""
    timers = timers_of(kind)
    async with anyio.create_task_group() as tg:
        tg.start_soon(timers.run)
        await _started(timers)  # waits before that serve their own deadline
        yield timers
        tg.cancel_scope.cancel()


async def _started(timers: Timers) -> None:
    with anyio.fail_after(5):
        while not timers.running:  # type: ignore[attr-defined]
            await anyio.sleep(0.001)


def test_the_switch_picks_the_general_path() -> None:
    """Outside an event loop (and so with fast paths off) a signal is the general one."""
    assert isinstance(oneshot(), deadlines._GeneralOneShot)
    assert isinstance(new_timers(), deadlines._GeneralTimers)


async def test_native_signals_only_with_fast_paths_on() -> None:
    general = (deadlines._GeneralOneShot, deadlines._GeneralTimers)
    made = (oneshot(), new_timers(), new_timers().oneshot())
    assert all(isinstance(each, general) for each in made) is (not _fast.ENABLED)


@KINDS
@pytest.mark.parametrize("with_timers", [True, False], ids=["timers", "no-timers"])
async def test_set_before_and_during_the_wait(kind: str, with_timers: bool) -> None:
    async with running_timers(kind) as timers:
        make: Callable[[], OneShot] = timers.oneshot if with_timers else oneshot
        early = make()
        early.set()
        early.set()  # later calls do nothing
        assert early.is_set()
        assert await early.wait(in_(5.0)) is True

        late = make()
        async with anyio.create_task_group() as tg:
            tg.start_soon(_set_after, late, 0.05)
            with anyio.fail_after(5):
                assert await late.wait(in_(5.0)) is True
        assert late.is_set()


async def _set_after(shot: OneShot, delay: float) -> None:
    await anyio.sleep(delay)
    shot.set()


@KINDS
@pytest.mark.parametrize("with_timers", [True, False], ids=["timers", "no-timers"])
async def test_timeout_returns_false_at_the_deadline(kind: str, with_timers: bool) -> None:
    async with running_timers(kind) as timers:
        shot = timers.oneshot() if with_timers else oneshot()
        started = anyio.current_time()
        with anyio.fail_after(5):  # a deadline nobody serves would hang here
            assert await shot.wait(started + 0.1) is False
        elapsed = anyio.current_time() - started
        assert 0.09 <= elapsed < 2.0
        with anyio.fail_after(5):  # a deadline already past answers at once
            assert await timers.oneshot().wait(anyio.current_time()) is False
            assert await timers.oneshot().wait(anyio.current_time() - 1.0) is False


@KINDS
async def test_many_waiters_each_get_their_own_answer(kind: str) -> None:
    answers: dict[int, bool] = {}
    woke_at: dict[int, float] = {}
    async with running_timers(kind) as timers:
        start = anyio.current_time()
        # Deadlines added latest-first, so each new one is earlier than the timer's current
        # deadline: the timer must move its deadline forward every time.
        shots = {index: timers.oneshot() for index in range(20)}

        async def wait(index: int) -> None:
            answers[index] = await shots[index].wait(start + 0.05 + 0.02 * (19 - index))
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


@KINDS
async def test_outside_cancellation_is_never_swallowed(kind: str) -> None:
    async with running_timers(kind) as timers:
        shot = timers.oneshot()
        with anyio.move_on_after(0.05) as scope:
            await shot.wait(in_(10.0))
        assert scope.cancelled_caught
        shot.set()  # nobody waits any more: harmless
        assert shot.is_set()
        # The timers keep serving other waits.
        assert await timers.oneshot().wait(in_(0.05)) is False
        other = timers.oneshot()
        other.set()
        assert await other.wait(in_(1.0)) is True


@KINDS
async def test_a_wait_outlives_its_timers_with_its_deadline_intact(kind: str) -> None:
    timers = timers_of(kind)
    shot, timed = timers.oneshot(), timers.oneshot()
    results: dict[str, bool] = {}

    async def wait(name: str, which: OneShot, seconds: float) -> None:
        results[name] = await which.wait(in_(seconds))

    async with anyio.create_task_group() as outer:
        async with anyio.create_task_group() as owner:
            owner.start_soon(timers.run)
            await _started(timers)
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
                assert await shot.wait(in_(30.0)) is True
        # Every wait left an entry behind (30 s deadlines); compaction keeps them bounded.
        heap = getattr(timers, "_heap", [])  # none at all on the general path
        assert len(heap) < 300
