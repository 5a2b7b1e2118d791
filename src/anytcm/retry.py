"""Retry policy for inference and info requests (management is never re-sent automatically).

The manager's `retriable` flag is only a hint (contract §6.2: nearly everything arrives as
TRITON_INFERENCE_FAILED, retriable=false), so the client owns the decision. The default
classifier retries what cannot have been the request's fault and cannot do harm twice:

* connection loss (inference is side-effect free, so "outcome unknown" is safe to resend);
* `BACKPRESSURE_QUEUE_FULL` / `BACKPRESSURE_EXECUTOR_FULL` NACKs and shutdown NACKs;
* `TRITON_CIRCUIT_OPEN` (after `retry_after_seconds`) and codes the manager marked retriable.

It never retries contract errors (FAILED strings), 413, shape mismatches, SHM errors, auth
errors, invalid input, a request that ran out of time, or a `ProtocolError` (a manager that
answered with a frame the client cannot read would likely answer the retry the same way).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import Backpressure, ConnectionLost, InferenceFailed, ProtocolError

RETRIED_BACKPRESSURE = frozenset({"BACKPRESSURE_QUEUE_FULL", "BACKPRESSURE_EXECUTOR_FULL"})
NEVER_RETRIED_CODES = frozenset(
    {"TRITON_SHAPE_MISMATCH", "TRITON_SHM_UNAVAILABLE", "TRITON_SHM_REGISTRATION_FAILED"}
)


@dataclass(frozen=True)
class Retry:
    """Retry, waiting at least `after` seconds (from `retry_after_seconds`), else the backoff."""

    after: float | None = None


Classifier = Callable[[BaseException], "Retry | None"]


def default_classifier(error: BaseException) -> Retry | None:
    """The decision for one failed attempt: `Retry(...)` or None (raise it)."""
    if isinstance(error, ProtocolError):
        return None
    if isinstance(error, ConnectionLost):
        return Retry()
    if isinstance(error, Backpressure):
        return Retry() if error.code in RETRIED_BACKPRESSURE else None
    if isinstance(error, InferenceFailed):
        if error.code in NEVER_RETRIED_CODES or "413 Payload Too Large" in error.server_message:
            return None
        if error.code == "TRITON_CIRCUIT_OPEN":
            return Retry(after=error.retry_after)
        if error.retriable:
            return Retry(after=error.retry_after)
    return None


@dataclass(frozen=True)
class RetryPolicy:
    """How many times to try, how long to wait between tries, and what is worth retrying.

    `attempts` counts every try (1 = never retry). Waits grow as `base * 2**n` capped at `cap`,
    drawn uniformly in [0, that] when `jitter` (spreads clients that failed together). All tries
    share the one deadline of the call (`timeout`), so retries never extend it; `budget` can
    shorten the time spent retrying further. `classify` is replaceable.
    """

    attempts: int = 4
    base: float = 0.05
    cap: float = 2.0
    jitter: bool = True
    budget: float | None = None
    classify: Classifier = default_classifier
    uniform: Callable[[float, float], float] = field(default=random.uniform, repr=False)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        if self.base < 0 or self.cap < self.base:
            raise ValueError("need 0 <= base <= cap")

    def delay(self, retry: Retry, attempt: int) -> float:
        """The wait before try number `attempt + 1` (attempt counts from 1)."""
        ceiling = min(self.cap, self.base * 2 ** (attempt - 1))
        wait = self.uniform(0.0, ceiling) if self.jitter else ceiling
        if retry.after is not None:
            wait = max(wait, retry.after)
        return wait


NO_RETRY = RetryPolicy(attempts=1)
