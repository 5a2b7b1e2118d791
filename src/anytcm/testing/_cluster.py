"""`ReferenceCluster`: several reference managers, as TCM is deployed (contract §14).

Each manager is its own process on its own port with its own state (its registry of Triton
servers, uuid table, rate limits), exactly as real replicas are: a server created through one is
unknown to the others. Tests and demos use it to kill, drain and restart replicas one by one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import Any

from ._process import ReferenceManager, ReferenceManagerError


class ReferenceCluster:
    """`n` reference managers on 127.0.0.1 (or `host`), each on a port of its own.

    `ReferenceCluster(3)` accepts the keyword arguments of `ReferenceManager` (token, extra_args,
    faults, ...) and gives each manager the same ones. `start()` returns once every `/ready`
    answers 200. `cluster[i]` is the i-th `ReferenceManager` (kill, terminate, restart, faults);
    `cluster.urls` are their WebSocket URLs, in order.
    """

    def __init__(self, n: int = 3, **options: Any) -> None:
        if n < 1:
            raise ValueError("a cluster needs at least one manager")
        if options.get("port"):
            raise ValueError("each manager of a cluster picks its own port; do not pass port=")
        self.managers = [ReferenceManager(**options) for _ in range(n)]

    def __len__(self) -> int:
        return len(self.managers)

    def __getitem__(self, index: int) -> ReferenceManager:
        return self.managers[index]

    def __iter__(self) -> Iterator[ReferenceManager]:
        return iter(self.managers)

    @property
    def urls(self) -> list[str]:
        return [m.ws_url for m in self.managers]

    def start(self) -> ReferenceCluster:
        """Start every manager at once; raises the first failure after stopping the others."""
        errors: list[Exception] = []

        def start_one(manager: ReferenceManager) -> None:
            try:
                manager.start()
            except (ReferenceManagerError, OSError) as exc:  # raised below, in the caller
                errors.append(exc)

        threads = [
            threading.Thread(target=start_one, args=(m,), name="refcluster-start", daemon=True)
            for m in self.managers
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            self.stop()
            raise errors[0]
        return self

    def stop(self) -> None:
        """Stop every manager for good."""
        for manager in self.managers:
            manager.stop()

    def rolling_restart(self, *, graceful: bool = True, pause: float = 0.0) -> None:
        """Restart the managers one after the other, each back on its port and ready before the
        next goes down: SIGTERM (drain, contract §7) when `graceful`, else SIGKILL. `pause`
        seconds pass between one manager's return and the next one's stop."""
        for manager in self.managers:
            if graceful:
                manager.terminate()
            else:
                manager.kill()
            manager.start()
            if pause:
                time.sleep(pause)

    def running(self) -> Sequence[bool]:
        return [m.running for m in self.managers]

    def __enter__(self) -> ReferenceCluster:  # noqa: PYI034 - not meant to be subclassed
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


__all__ = ["ReferenceCluster", "ReferenceManagerError"]
