"""One HTTP-protocol inference request through the pool: attempts, retries, the caller's timeout.

What `AsyncClient.infer` and `AsyncClient.pipeline` share once their payload is built.
"""

from __future__ import annotations

import msgspec

from .._core import attempts
from .._core.managers import Manager
from .._core.pool import Pool
from ..errors import RequestTimeout
from ..protocol import InferenceCompleted
from ..retry import RetryPolicy
from .retrying import Retrier, caller_timeout


async def request_inference(
    pool: Pool,
    retrier: Retrier,
    payload: msgspec.Raw,
    *,
    deadline: float,
    seconds: float,
    what: str,
    label: str,
    policy: RetryPolicy | None = None,
    manager: Manager | None = None,
) -> InferenceCompleted:
    """Send `payload` until answered by `deadline`, retrying what `policy` deems safe.

    `seconds` is the caller's timeout (the deadline's origin, from which the policy's budget
    counts, and what a `RequestTimeout` reports); `what` names the request in errors ("inference
    of 'm'"), `label` in the retry log.
    """
    try:
        return await retrier.run(
            lambda: attempts.infer(pool, payload, deadline, what, manager),
            deadline,
            label,
            policy=policy,
            started=deadline - seconds,
        )
    except RequestTimeout as exc:
        raise caller_timeout(exc, seconds, what) from None
