"""Exponential backoff with full jitter, a cap, and a reset after a healthy period.

Full jitter (a uniform draw between 0 and the exponential ceiling) spreads a fleet of clients
that all lost the same manager at the same moment, so they do not reconnect in lockstep.
The random source and the clock are injectable, so the sequence is tested without a clock.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delays for successive reconnect attempts.

    `next_delay()` returns `uniform(0, min(cap, base * factor**n))` for the n-th consecutive
    failure. `succeeded(now)` marks a connection as up; `failed(now)` after it went down resets
    the sequence if the connection had stayed up for `reset_after` seconds.
    """

    base: float = 0.1
    factor: float = 2.0
    cap: float = 10.0
    reset_after: float = 30.0
    uniform: Callable[[float, float], float] = field(default=random.uniform, repr=False)
    attempt: int = 0
    _up_since: float | None = None

    def __post_init__(self) -> None:
        # Written as one positive condition so that NaN (every comparison false) is rejected
        # too; an infinite cap would allow unbounded (eventually infinite) sleeps, and a
        # negative `reset_after` would reset after every connection, however short-lived.
        if not (0 < self.base <= self.cap < math.inf and self.factor >= 1):
            raise ValueError("need 0 < base <= cap < inf and factor >= 1")
        if not self.reset_after >= 0:
            raise ValueError("need reset_after >= 0")

    def ceiling(self) -> float:
        """The upper bound of the next delay, before jitter."""
        try:
            return min(self.cap, self.base * self.factor**self.attempt)
        except OverflowError:
            # float ** int raises instead of returning inf: with the defaults this happened
            # after ~1,030 consecutive failures (about 3 hours of a manager being down) and
            # crashed the reconnect loop. The exponential is long past the cap by then.
            return self.cap

    def next_delay(self) -> float:
        delay = self.uniform(0.0, self.ceiling())
        self.attempt += 1
        return delay

    def succeeded(self, now: float) -> None:
        self._up_since = now

    def failed(self, now: float) -> None:
        """A connection that was up went down: after a healthy period, start over."""
        if self._up_since is not None and now - self._up_since >= self.reset_after:
            self.attempt = 0
        self._up_since = None
