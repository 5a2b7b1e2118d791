"""Backoff: exponential ceiling, full jitter, cap, reset after a healthy period (deterministic)."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anytcm.backoff import Backoff


def upper(low: float, high: float) -> float:
    return high


class Recorder:
    """A `uniform` that records its bounds and returns a fixed fraction of the interval."""

    def __init__(self, fraction: float = 1.0) -> None:
        self.fraction = fraction
        self.calls: list[tuple[float, float]] = []

    def __call__(self, low: float, high: float) -> float:
        self.calls.append((low, high))
        return low + (high - low) * self.fraction


def test_ceiling_sequence_is_base_times_factor_to_the_n_capped() -> None:
    b = Backoff(base=0.5, factor=3.0, cap=10.0, uniform=upper)
    delays = [b.next_delay() for _ in range(6)]
    assert delays == [0.5, 1.5, 4.5, 10.0, 10.0, 10.0]
    assert b.attempt == 6


def test_default_parameters_sequence() -> None:
    b = Backoff(uniform=upper)
    delays = [b.next_delay() for _ in range(9)]
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0])


def test_ceiling_does_not_advance_the_attempt() -> None:
    b = Backoff(base=1.0, factor=2.0, cap=100.0, uniform=upper)
    assert b.ceiling() == 1.0
    assert b.ceiling() == 1.0
    b.next_delay()
    assert b.ceiling() == 2.0


def test_full_jitter_draws_between_zero_and_the_ceiling() -> None:
    rec = Recorder(fraction=0.25)
    b = Backoff(base=1.0, factor=2.0, cap=5.0, uniform=rec)
    delays = [b.next_delay() for _ in range(5)]
    assert rec.calls == [(0.0, 1.0), (0.0, 2.0), (0.0, 4.0), (0.0, 5.0), (0.0, 5.0)]
    assert delays == [0.25, 0.5, 1.0, 1.25, 1.25]


def test_factor_one_is_constant() -> None:
    b = Backoff(base=2.0, factor=1.0, cap=2.0, uniform=upper)
    assert [b.next_delay() for _ in range(4)] == [2.0, 2.0, 2.0, 2.0]


def test_reset_after_a_healthy_period() -> None:
    b = Backoff(base=1.0, factor=2.0, cap=60.0, reset_after=30.0, uniform=upper)
    for _ in range(4):
        b.next_delay()
    assert b.attempt == 4
    b.succeeded(100.0)
    b.failed(130.0)  # exactly reset_after later: healthy enough
    assert b.attempt == 0
    assert b.next_delay() == 1.0


def test_no_reset_when_the_connection_was_short_lived() -> None:
    b = Backoff(base=1.0, factor=2.0, cap=60.0, reset_after=30.0, uniform=upper)
    for _ in range(4):
        b.next_delay()
    b.succeeded(100.0)
    b.failed(129.9)
    assert b.attempt == 4
    assert b.next_delay() == 16.0


def test_failed_without_a_success_does_not_reset() -> None:
    b = Backoff(base=1.0, factor=2.0, cap=60.0, reset_after=0.0, uniform=upper)
    b.next_delay()
    b.next_delay()
    b.failed(1_000_000.0)  # never came up: nothing to reset from
    assert b.attempt == 2


def test_a_success_counts_once() -> None:
    """`failed` consumes the success: a second failure much later does not reset again."""
    b = Backoff(base=1.0, factor=2.0, cap=60.0, reset_after=10.0, uniform=upper)
    b.succeeded(0.0)
    b.failed(5.0)  # short-lived
    b.next_delay()
    b.next_delay()
    b.failed(1_000.0)  # no success in between: the old one must not count
    assert b.attempt == 2


def test_huge_attempt_counts_stay_at_the_cap() -> None:
    """Regression: float ** int overflowed (OverflowError) after ~1,030 failures."""
    b = Backoff(base=0.1, factor=2.0, cap=10.0, uniform=upper)
    b.attempt = 5_000
    assert b.ceiling() == 10.0
    assert b.next_delay() == 10.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"base": 0.0},
        {"base": -1.0},
        {"base": 5.0, "cap": 1.0},
        {"factor": 0.5},
        {"base": math.nan},
        {"cap": math.nan},
        {"factor": math.nan},
        {"cap": math.inf},
        {"reset_after": -1.0},
        {"reset_after": math.nan},
    ],
)
def test_invalid_parameters_are_rejected(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(**kwargs)  # type: ignore[arg-type]


def test_base_equal_to_cap_is_valid() -> None:
    b = Backoff(base=3.0, cap=3.0, uniform=upper)
    assert b.next_delay() == 3.0


@settings(max_examples=40, deadline=None)
@given(
    base=st.floats(min_value=1e-3, max_value=10.0),
    extra=st.floats(min_value=0.0, max_value=100.0),
    factor=st.floats(min_value=1.0, max_value=10.0),
    failures=st.integers(min_value=1, max_value=1_200),
    seed=st.randoms(use_true_random=False),
)
def test_delays_are_always_within_zero_and_cap(
    base: float, extra: float, factor: float, failures: int, seed: random.Random
) -> None:
    b = Backoff(base=base, factor=factor, cap=base + extra, uniform=seed.uniform)
    previous_ceiling = 0.0
    for _ in range(failures):
        ceiling = b.ceiling()
        assert previous_ceiling <= ceiling <= b.cap  # monotone up to the cap
        delay = b.next_delay()
        assert 0.0 <= delay <= ceiling
        previous_ceiling = ceiling


# -- the supervisor really follows the backoff (no clock: the sleep is injected) ---------------


@pytest.mark.anyio
async def test_supervisor_waits_the_backoff_sequence_between_attempts() -> None:
    """Nothing listens: each attempt fails, and the waits are exactly the backoff's delays."""
    import socket

    import anyio

    from anytcm._core.pool import Pool
    from anytcm._core.settings import PoolSettings
    from anytcm.errors import ConnectError
    from anytcm.transport import TransportOptions
    from anytcm.transports._websockets import WebsocketsTransportFactory

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    waits: list[float] = []

    async def record(delay: float) -> None:
        waits.append(delay)
        if len(waits) >= 6:
            await anyio.sleep_forever()  # enough attempts seen

    settings = PoolSettings(
        url=f"ws://127.0.0.1:{port}/ws",
        size=1,
        base_uuid="backoff-test",
        token=None,
        capabilities=None,
        roles=None,
        max_waiting=0,
        connect_timeout=2.0,
        auth_timeout=1.0,
        ready_check=False,
        stale_grace=1.0,
        backoff=lambda: Backoff(base=0.1, factor=2.0, cap=0.5, uniform=lambda lo, hi: hi),
        sleep=record,
    )
    pool = Pool(settings, WebsocketsTransportFactory(), TransportOptions(), lambda f: None, None)
    with pytest.raises(ConnectError, match="no connection"):
        await pool.run()
    assert waits[:6] == [0.1, 0.2, 0.4, 0.5, 0.5, 0.5]
