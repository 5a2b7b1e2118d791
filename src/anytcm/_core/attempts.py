"""One attempt of a request, on whichever connection of the pool can take it.

A connection that ended before anything was written is not a failure of the request: the
attempt goes on another one. With several managers each attempt keeps its manager's counters.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, TypeVar

import msgspec

from .. import wire
from ..errors import RequestTimeout, TcmError
from ..protocol import InferenceCompleted
from .managers import Manager
from .pool import Pool
from .session import NotSent

_T = TypeVar("_T")


async def infer(
    pool: Pool, payload: msgspec.Raw, deadline: float, what: str, manager: Manager | None = None
) -> InferenceCompleted:
    """One HTTP-protocol inference on a checked-out session (to `manager`, if given),
    answered by `deadline`.

    A connection that ended before anything was written is not a failure of the request:
    it is sent on another one.
    """
    while True:
        session = await pool.checkout(deadline, manager)
        if pool.now() >= deadline:
            pool.checkin(session)
            raise RequestTimeout("no time left after waiting for a connection", timeout=0.0)
        # The counters are kept inline, not by `_counted`: a coroutine more per inference
        # would cost every request, with one manager too.
        served = session.manager
        if served is not None:
            served.requests += 1
            served.in_flight += 1
        try:
            return await session.infer(payload, deadline, what)
        except NotSent:
            if served is not None:
                served.requests -= 1  # it never reached the manager
            continue  # the connection ended before anything was written: try another
        except TcmError:
            if served is not None:
                served.failures += 1
            raise
        finally:
            if served is not None:
                served.in_flight -= 1
            pool.checkin(session)


async def info(pool: Pool, action: str, deadline: float) -> wire.InfoResponsePayload:
    """One info request on any session that can take it, answered by `deadline`."""
    what = f"info request {action!r}"
    while True:
        session = await pool.pick(lambda s: s.protocol.info_ready(action), deadline, what)
        try:
            if session.manager is None:
                return await session.info(action, deadline)
            return await _counted(session.manager, session.info(action, deadline))
        except NotSent:
            continue
        finally:
            pool.slot_freed()


async def management(
    pool: Pool, payload: dict[str, Any], deadline: float, manager: Manager | None = None
) -> tuple[wire.ManagementResult, Manager | None]:
    """One management request on any session that can take it (of `manager`, if given),
    answered by `deadline`; returns the reply and the manager that gave it.

    Re-sent elsewhere only when it was never written: once written, a lost reply means
    an unknown outcome, which only the caller may decide about.
    """
    what = f"management action {str(payload.get('action'))!r}"
    while True:
        session = await pool.pick(lambda s: s.protocol.management_ready, deadline, what, manager)
        served = session.manager
        try:
            if served is None:
                return await session.management(payload, deadline), None
            return await _counted(served, session.management(payload, deadline)), served
        except NotSent:
            continue
        finally:
            pool.slot_freed()


async def _counted(manager: Manager, request: Awaitable[_T]) -> _T:
    """Await one request sent to `manager`, keeping its request counters."""
    manager.requests += 1
    manager.in_flight += 1
    try:
        return await request
    except NotSent:
        manager.requests -= 1  # never reached it
        raise
    except TcmError:
        manager.failures += 1
        raise
    finally:
        manager.in_flight -= 1
