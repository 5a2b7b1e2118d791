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


async def retrying(
    attempt_once: Callable[[], Awaitable[_T]],
    deadline: float,
    policy: RetryPolicy,
    what: str,
    *,
    now: Callable[[], float],
    on_retry: Callable[[], None],
    failed: TcmError | None = None,
    started: float | None = None,
) -> _T:
    """Run attempts until one succeeds or the policy, the attempts or the deadline say stop.

    `failed` is the error of a first attempt the caller already made (at time `started`,
    from which the policy's budget counts); the next attempt is then the second.
    """
    stop = deadline
    if policy.budget is not None:
        stop = min(deadline, (now() if started is None else started) + policy.budget)
    attempt = 1
    error = failed
    while True:
        if error is None:
            try:
                return await attempt_once()
            except TcmError as exc:
                error = exc
        decision = policy.classify(error)
        if decision is None or attempt >= policy.attempts:
            raise error
        wait = policy.delay(decision, attempt)
        if now() + wait >= stop:
            raise error
        on_retry()
        logger.info(
            "retrying %s (attempt %d of %d) in %.3f s after: %s",
            what,
            attempt + 1,
            policy.attempts,
            wait,
            error,
            extra={"attempt": attempt + 1, "delay": wait, "error": type(error).__name__},
        )
        error = None
        attempt += 1
        await anyio.sleep(wait)


def caller_timeout(exc: RequestTimeout, seconds: float, what: str) -> RequestTimeout:
    """A timeout reported as the caller's own `timeout`, wherever inside it ran out."""
    return RequestTimeout(
        f"{what}: no result within the {seconds:g} s timeout ({exc})", timeout=seconds
    )
