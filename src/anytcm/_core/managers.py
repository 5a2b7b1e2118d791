"""The managers one client talks to, and the health it keeps of each.

TCM is deployed as replicas, each with state of its own (contract §14). The client treats a set
of managers as one service: connections spread over the live ones, a manager that fails is
marked dead for a while (capped exponential backoff with jitter) and comes back only through
its `/ready` gate and a successful connection, and a manager that announced its shutdown
(`SYSTEM_SHUTDOWN`, close 1012) is draining: no new work goes to it, because its `/ready` still
answers 200 for a while after it began to stop.

Nothing here does I/O or reads a clock: the pool passes `now` in, so the rules are tested
without sockets or sleeps.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

ManagerState = Literal["live", "draining", "dead"]


@dataclass(frozen=True)
class ManagerStatus:
    """What the client knows of one manager: `client.managers()` returns one per URL."""

    url: str
    state: ManagerState
    #: Failures in a row since the last successful connection.
    consecutive_failures: int
    #: Seconds until the manager may be tried again (0 when it may be tried now).
    retry_in: float
    #: The last failure seen from this manager, as text (None if none yet).
    last_failure: str | None
    #: Open connections to it now.
    connections: int
    #: Requests in progress on it now.
    in_flight: int
    #: Requests sent to it, and those of them that failed.
    requests: int
    failures: int
    #: Connections opened to it, over the client's life.
    connects: int


@dataclass(frozen=True)
class DeadTime:
    """How long a failing manager is left alone: `base * factor**(failures-1)`, at most `cap`
    seconds, drawn from its upper half so that many clients do not come back in lockstep."""

    base: float = 1.0
    factor: float = 2.0
    cap: float = 30.0
    uniform: Callable[[float, float], float] = field(default=random.uniform, repr=False)

    def __post_init__(self) -> None:
        if not (0 < self.base <= self.cap < float("inf") and self.factor >= 1):
            raise ValueError("need 0 < base <= cap < inf and factor >= 1")

    def seconds(self, failures: int) -> float:
        ceiling = self.cap
        if failures < 64:  # beyond that the exponential is long past any cap
            ceiling = min(self.cap, self.base * self.factor ** max(0, failures - 1))
        return self.uniform(ceiling / 2, ceiling)


class Manager:
    """One manager's health and counters, owned by the pool."""

    __slots__ = (
        "connections",
        "connects",
        "consecutive_failures",
        "dead_until",
        "failures",
        "in_flight",
        "last_failure",
        "requests",
        "state",
        "url",
    )

    def __init__(self, url: str) -> None:
        self.url = url
        self.state: ManagerState = "live"
        self.consecutive_failures = 0
        self.dead_until = 0.0
        self.last_failure: str | None = None
        self.connections = 0
        self.in_flight = 0
        self.requests = 0
        self.failures = 0
        self.connects = 0

    def __repr__(self) -> str:
        return f"<Manager {self.url} {self.state}>"

    def eligible(self, now: float) -> bool:
        """May a new connection be tried now? Live ones always; the others once their time
        is up (the pool's readiness gate and the connection itself are then the trial)."""
        return self.state == "live" or now >= self.dead_until

    def status(self, now: float) -> ManagerStatus:
        return ManagerStatus(
            url=self.url,
            state=self.state,
            consecutive_failures=self.consecutive_failures,
            retry_in=max(0.0, self.dead_until - now) if self.state != "live" else 0.0,
            last_failure=self.last_failure,
            connections=self.connections,
            in_flight=self.in_flight,
            requests=self.requests,
            failures=self.failures,
            connects=self.connects,
        )


class SelectionPolicy(Protocol):
    """Which manager serves the next request, among those with a free connection now.

    `candidates` is never empty; return one of them. Called once per request when the client
    has more than one manager, so it must be cheap. Built in: `RoundRobin` (the default) and
    `LeastBusy`.
    """

    def choose(self, candidates: Sequence[Manager]) -> Manager: ...


class RoundRobin:
    """Each manager in turn."""

    def __init__(self) -> None:
        self._turn = random.randrange(1 << 16)  # many clients do not all start on one manager

    def choose(self, candidates: Sequence[Manager]) -> Manager:
        self._turn += 1
        return candidates[self._turn % len(candidates)]


class LeastBusy:
    """The manager with the fewest requests in progress (ties: the fewest connections busy)."""

    def choose(self, candidates: Sequence[Manager]) -> Manager:
        return min(candidates, key=lambda m: m.in_flight)


class Managers:
    """Every manager of one client, in the order given, and the rules that change their state."""

    def __init__(self, urls: Sequence[str], dead_time: DeadTime | None = None) -> None:
        self.all = tuple(Manager(url) for url in distinct_urls(urls))
        self.dead_time = dead_time or DeadTime()
        self._start = random.randrange(len(self.all))  # spread clients' first connections

    def __len__(self) -> int:
        return len(self.all)

    def place(self, now: float) -> Manager | None:
        """The manager a new connection should go to: an eligible one with the fewest
        connections (the first live one after a random start on ties), or None if every
        manager must be left alone for now (see `next_trial`)."""
        best: Manager | None = None
        count = len(self.all)
        for offset in range(count):
            manager = self.all[(self._start + offset) % count]
            if not manager.eligible(now):
                continue
            if best is None or _placement_key(manager) < _placement_key(best):
                best = manager
        if best is not None:
            self._start = (self.all.index(best) + 1) % count
        return best

    def next_trial(self, now: float) -> float:
        """When the earliest of the managers left alone may be tried again."""
        return min((m.dead_until for m in self.all if not m.eligible(now)), default=now)

    def connected(self, manager: Manager) -> None:
        manager.state = "live"
        manager.consecutive_failures = 0
        manager.dead_until = 0.0
        manager.connects += 1

    def failed(self, manager: Manager, error: BaseException, now: float) -> float:
        """A connection attempt, or a live connection, failed. Returns the dead time given.

        Failures while the manager is already left alone (its other connections ending one
        after the other) are one event: they do not lengthen its dead time.
        """
        manager.last_failure = str(error) or type(error).__name__
        if manager.state != "live" and now < manager.dead_until:
            manager.state = "dead"
            return manager.dead_until - now
        manager.consecutive_failures += 1
        manager.state = "dead"
        wait = self.dead_time.seconds(manager.consecutive_failures)
        manager.dead_until = max(manager.dead_until, now + wait)
        return wait

    def draining(self, manager: Manager, error: BaseException, now: float, floor: float) -> None:
        """The manager announced its shutdown: no new work goes there for at least `floor`
        seconds, and then only through its readiness gate."""
        manager.last_failure = str(error) or type(error).__name__
        if manager.state != "live" and now < manager.dead_until:
            return  # its other connections hearing the same notice
        manager.consecutive_failures += 1
        manager.state = "draining"
        wait = max(floor, self.dead_time.seconds(manager.consecutive_failures))
        manager.dead_until = max(manager.dead_until, now + wait)

    def due_for_trial(self, now: float) -> list[Manager]:
        """Managers left alone whose time is up and that no connection is trying: the pool
        asks their `/ready` and, if they answer, lets a connection move there."""
        return [
            m for m in self.all if m.state != "live" and now >= m.dead_until and m.connections == 0
        ]

    def revived(self, manager: Manager) -> None:
        """Its `/ready` answered 200: it may take connections again. Its failures in a row are
        forgotten only once a connection to it succeeds (`connected`)."""
        manager.state = "live"
        manager.dead_until = 0.0

    def rebalance_excess(self) -> Manager | None:
        """A manager holding more connections than an even spread over the live managers
        gives it, while another live one holds fewer: one of its idle connections should
        move. None when the spread is even (within one)."""
        live = [m for m in self.all if m.state == "live"]
        if len(live) < 2:
            return None
        most = max(live, key=lambda m: m.connections)
        least = min(live, key=lambda m: m.connections)
        return most if most.connections - least.connections > 1 else None

    def statuses(self, now: float) -> tuple[ManagerStatus, ...]:
        return tuple(m.status(now) for m in self.all)

    def all_down_message(self, now: float) -> str:
        """Every manager and its last failure, for the error that says none can be reached."""
        parts = []
        for m in self.all:
            failure = m.last_failure or "no connection yet"
            parts.append(f"{m.url}: {m.state}, {failure}")
        return "; ".join(parts)


def distinct_urls(urls: Sequence[str]) -> tuple[str, ...]:
    """The managers, in order. One named twice is a mistake (it would get twice the share of
    the connections), not something to fold silently; none at all is one too."""
    if not urls:
        raise ValueError("at least one manager URL is needed")
    seen: set[str] = set()
    for url in urls:
        if url in seen:
            raise ValueError(f"the manager {url} is given twice; name each manager once")
        seen.add(url)
    return tuple(urls)


def _placement_key(manager: Manager) -> tuple[int, int]:
    # Live before a trial of a dead or draining one; then the fewest connections.
    return (0 if manager.state == "live" else 1, manager.connections)
