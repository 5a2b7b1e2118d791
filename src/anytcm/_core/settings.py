"""What a pool is built with (`PoolSettings`, made by `anytcm.connect`) and what it counts."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio

from ..backoff import Backoff
from .managers import DeadTime, RoundRobin, SelectionPolicy


@dataclass(frozen=True)
class PoolSettings:
    """What the pool needs to open connections; built by `anytcm.connect`."""

    url: str
    size: int
    base_uuid: str
    token: str | None = field(repr=False)  # a secret: never in a repr
    capabilities: tuple[str, ...] | None
    roles: tuple[str, ...] | None
    max_waiting: int
    connect_timeout: float
    auth_timeout: float
    ready_check: bool
    stale_grace: float
    drain_limit: float = 60.0  # longest wait for a quarantined session's other requests
    backoff: Callable[[], Backoff] = field(default=Backoff)
    # How the supervisor waits between attempts; injectable so tests need no clock.
    sleep: Callable[[float], Awaitable[None]] = field(default=anyio.sleep)
    # Every manager, `url` first; empty means `url` alone.
    urls: tuple[str, ...] = ()
    selection: Callable[[], SelectionPolicy] = field(default=RoundRobin)
    dead_time: DeadTime = field(default_factory=DeadTime)

    @property
    def all_urls(self) -> tuple[str, ...]:
        return self.urls or (self.url,)


@dataclass
class PoolStats:
    """Counters of the pool's life, readable from the client."""

    connects: int = 0
    reconnects: int = 0
    connect_failures: int = 0
    stale_replies: int = 0
    quarantined: int = 0
