"""Which event loop runs the current task, and its clock: the one probe and the one clock
accessor every backend-specific path uses.

anyio runs on asyncio or trio. The probe asks trio first, and only when trio is already
imported (nothing here imports it): a trio task may run on a thread whose asyncio loop is also
running (trio's guest mode), and then it is trio's primitives that work. Neither question
raises, so the answer is cheap on both backends. sniffio is not used: a plain
`pip install anytcm` does not bring it.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import Literal

__all__ = ("Backend", "clock", "current_backend")

Backend = Literal["asyncio", "trio", "other"]


def current_backend() -> Backend:
    """ "asyncio" or "trio" inside a running loop of either; "other" anywhere else."""
    trio = sys.modules.get("trio")
    if trio is not None and trio.lowlevel.in_trio_task():
        return "trio"
    if asyncio._get_running_loop() is not None:
        return "asyncio"
    return "other"


def clock() -> Callable[[], float]:
    """The running backend's clock: the function `anyio.current_time()` ends up calling.

    Every deadline in anytcm is an absolute time on this clock. An owner (client, pool,
    stream) fetches the function once, inside the event loop, and calls it as often as it
    needs: it reads the time directly, where `anyio.current_time()` looks the backend up
    first on every call. Outside asyncio and trio it is `anyio.current_time` itself.
    """
    backend = current_backend()
    if backend == "asyncio":
        return asyncio.get_running_loop().time
    if backend == "trio":
        import trio

        return trio.current_time
    import anyio

    return anyio.current_time
