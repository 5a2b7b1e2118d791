"""The retry loop every retried call runs, and the timeout error the caller sees."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

from ..errors import RequestTimeout, TcmError
from ..retry import RetryPolicy

logger = logging.getLogger("anytcm.client")

_T = TypeVar("_T")

DeadlineOf = Callable[[float | None], tuple[float, float]]
"""A call's `timeout` (None: the client's default) -> (its seconds, its absolute deadline).

A timeout becomes a deadline once, at the public call; everything below sees the deadline."""


class Retrier:
    """Runs attempts until one succeeds or the policy, the attempts or the deadline say stop.

    One per client: it holds the client's default policy and clock, and counts the retries.
    """

    __slots__ = ("_now", "_policy", "count")

    def __init__(self, policy: RetryPolicy, now: Callable[[], float]) -> None:
        self._policy = policy
        self._now = now
        self.count = 0

    async def run(
        self,
        attempt_once: Callable[[], Awaitable[_T]],
        deadline: float,
        what: str,
        *,
        started: float,
        policy: RetryPolicy | None = None,
    ) -> _T:
        """`attempt_once` until it succeeds, under `policy` (None: the client's).

        `started` is when the call began, from which the policy's budget counts. The first
        attempt runs before anything of the policy is looked at: a call that succeeds at once
        (nearly all of them) pays for nothing else. Errors are kept outside their handler, so a
        later error never chains to an earlier one.
        """
        try:
            return await attempt_once()
        except TcmError as exc:
            error = exc
        policy = policy or self._policy
        now = self._now
        stop = deadline
        if policy.budget is not None:
            stop = min(deadline, started + policy.budget)
        attempt = 1
        while True:
            decision = policy.classify(error)
            if decision is None or attempt >= policy.attempts:
                raise error
            wait = policy.delay(decision, attempt)
            if now() + wait >= stop:
                raise error
            self.count += 1
            logger.info(
                "retrying %s (attempt %d of %d) in %.3f s after: %s",
                what,
                attempt + 1,
                policy.attempts,
                wait,
                error,
                extra={"attempt": attempt + 1, "delay": wait, "error": type(error).__name__},
            )
            attempt += 1
            await anyio.sleep(wait)
            try:
                return await attempt_once()
            except TcmError as exc:
                error = exc


def caller_timeout(exc: RequestTimeout, seconds: float, what: str) -> RequestTimeout:
    """A timeout reported as the caller's own `timeout`, wherever inside it ran out."""
    return RequestTimeout(
        f"{what}: no result within the {seconds:g} s timeout ({exc})", timeout=seconds
    )
