"""Several managers: what a failure says of its manager, trials of managers left alone, and an
even spread of the pool's connections over the live ones (contract §14).

The rules (who is live, draining or dead, and for how long) are `managers.Managers`'; this is
what the pool does with them while it runs.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import anyio

from ..errors import NoManagerAvailable, ServerShutdown
from .managers import Manager

if TYPE_CHECKING:
    from collections import deque

    from .pool import Pool
    from .session import Session

logger = logging.getLogger("anytcm.pool")

REBALANCE_INTERVAL = 0.5  # seconds between checks of the spread over several managers
SHUTDOWN_FLOOR = 1.0  # a draining manager gets no new connection for at least this long


class Spread:
    """The several-managers side of one pool."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    def mark(self, manager: Manager, failure: BaseException) -> None:
        """What a failure says of its manager: draining after a shutdown notice, else dead."""
        pool = self._pool
        now = pool.now()
        if isinstance(failure, ServerShutdown):
            pool.managers.draining(manager, failure, now, SHUTDOWN_FLOOR)
            for session in pool.sessions:
                if session.manager is manager:
                    session.draining = True  # its requests finish; it takes no new ones
        else:
            pool.managers.failed(manager, failure, now)
        logger.info(
            "manager %s is %s (%s)",
            manager.url,
            manager.state,
            failure,
            extra={"manager": manager.url, "state": manager.state, "reason": str(failure)},
        )
        pool.changed()

    def take_idle(self, idle: deque[Session], manager: Manager | None) -> Session | None:
        """An idle session of `manager`, or of the manager the selection policy picks among
        those with one, taken out of `idle` (sessions no longer usable are dropped from it)."""
        usable = [s for s in idle if s.inference_usable and not s.draining]
        if len(usable) != len(idle):
            idle.clear()
            idle.extend(usable)
        if manager is None:
            candidates = list({id(s.manager): s.manager for s in usable if s.manager}.values())
            if not candidates:
                return None
            if len(candidates) == 1:
                manager = candidates[0]
            else:
                manager = self._pool.selection.choose(candidates)
        for session in usable:
            if session.manager is manager:
                idle.remove(session)
                return session
        return None

    def all_down(self, what: str, manager: Manager | None = None) -> NoManagerAvailable | None:
        """The error for a caller that found no manager to go to (`manager`: the one it must
        go to), or None while one of them is live or still has a connection."""
        managers = self._pool.managers
        wanted = [manager] if manager is not None else list(managers.all)
        if any(m.state == "live" or m.connections for m in wanted):
            return None
        if manager is not None:
            return NoManagerAvailable(
                f"{what}: the manager this target was created through is down: "
                f"{manager.url}: {manager.state}, {manager.last_failure}",
                failures={manager.url: manager.last_failure or "no connection yet"},
            )
        return NoManagerAvailable(
            f"{what}; every manager is down: {managers.all_down_message(self._pool.now())}",
            failures={m.url: m.last_failure or "no connection yet" for m in managers.all},
        )

    async def run(self) -> None:
        """Try the managers left alone whose time is up, and move idle connections from a
        manager holding more than its share to the others.

        A manager that came back gets connections only as they are opened; without this, a
        pool whose connections all moved to the survivors during an outage stays there
        (contract §14). Only an idle connection moves, so no request is disturbed: it is
        closed normally and its slot opens the next one on the emptiest manager.
        """
        pool = self._pool
        while not pool.closing:
            await anyio.sleep(REBALANCE_INTERVAL)
            for manager in pool.managers.due_for_trial(pool.now()):
                await self._trial(manager)
            crowded = pool.managers.rebalance_excess()
            if crowded is not None:
                await self._move_one(crowded)

    async def _move_one(self, crowded: Manager) -> None:
        session = self._pool.retire_idle(crowded)
        if session is None:
            return
        logger.info(
            "moving connection %s off %s to even the spread",
            session.uuid,
            crowded.url,
            extra={"uuid": session.uuid, "manager": crowded.url},
        )
        await session.abort("moving to another manager", code=1000)

    async def _trial(self, manager: Manager) -> None:
        """A manager left alone whose time is up, while every connection is busy elsewhere:
        its `/ready` decides whether a connection moves there (which is then the real trial).
        """
        pool = self._pool
        gate = pool.gate_of(manager)
        if gate is not None:
            gate.forget()
            state = await gate.check()
            if not state.ready:
                pool.managers.failed(manager, state.as_error(), pool.now())
                return
        pool.managers.revived(manager)
        logger.info(
            "manager %s answers again; connections will move to it",
            manager.url,
            extra={"manager": manager.url},
        )
        pool.changed()
