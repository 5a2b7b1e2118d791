"""What every `anytcm` command shares: the global options, the event loop, the connection.

Commands are plain functions of a `CliContext`; this module owns the three things they must
not each get slightly wrong: which backend runs the async code, how an exception group
becomes the one error it holds, and how a command connects (failing at once, with a hint,
when nothing listens at the URL, instead of retrying until the timeout).
"""

from __future__ import annotations

import importlib.util
import signal
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, TypeVar

import anyio

from ._cli_errors import UsageError
from .errors import ConnectError
from .readiness import ReadinessGate, ReadyState
from .transport import collapse_exception_group

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

if TYPE_CHECKING:
    from .client import AsyncClient

_T = TypeVar("_T")

DEFAULT_URL: Final = "ws://127.0.0.1:8000/ws"
DEFAULT_TIMEOUT: Final = 10.0
BACKENDS: Final = ("asyncio", "trio")


@dataclass(frozen=True)
class CliContext:
    """The global options of one run. `token` is a secret: it never appears in a repr."""

    url: str
    token: str | None = field(repr=False)
    json: bool = False
    timeout: float = DEFAULT_TIMEOUT
    backend: str = "asyncio"

    def __post_init__(self) -> None:
        # Checked here, before a command starts anything (the demo's manager, a file read).
        if self.backend == "trio" and importlib.util.find_spec("trio") is None:
            raise UsageError('--backend trio needs trio: pip install "anytcm[trio]"')

    def run(self, func: Callable[..., Awaitable[_T]], *args: Any) -> _T:
        """Run `func(*args)` on the chosen backend; a single failure comes out ungrouped.

        Ctrl-C cancels `func` (then raises KeyboardInterrupt here) instead of interrupting it
        wherever it happens to be: trio, and asyncio before 3.11, would raise it at any
        bytecode, even between creating a shared-memory segment and registering its release.
        A cancellation is what every part of the client is written to clean up after.
        """

        async def guarded() -> _T:
            try:
                return await _cancel_on_interrupt(func, *args)
            except BaseExceptionGroup as group:
                error = collapse_exception_group(group)
                if error is None:
                    raise
                raise error from error.__cause__  # keeps e.g. the NotReady behind a ConnectError

        return anyio.run(guarded, backend=self.backend)

    async def readiness(self) -> ReadyState:
        """One `GET /ready` of the manager behind `url` (never raises for network failures)."""
        gate = ReadinessGate(self.url, timeout=self.timeout)
        try:
            return await gate.check()
        finally:
            await gate.aclose()

    @asynccontextmanager
    async def client(self, *, pool_size: int = 1) -> AsyncIterator[AsyncClient]:
        """`anytcm.connect` with the global options.

        `/ready` is asked once first: when nothing answers at all, waiting `timeout` seconds
        for a connection that cannot come only delays the one useful message.
        """
        from .client import connect

        state = await self.readiness()
        if state.status_code is None:
            raise ConnectError(unreachable_message(self.url, state))
        async with connect(
            self.url,
            token=self.token,
            pool_size=pool_size,
            timeout=self.timeout,
            connect_timeout=self.timeout,
        ) as client:
            yield client


async def _cancel_on_interrupt(func: Callable[..., Awaitable[_T]], *args: Any) -> _T:
    """`await func(*args)`, cancelled by SIGINT, which then surfaces as KeyboardInterrupt."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # e.g. a `nohup` or `&` job
    ):
        return await func(*args)
    interrupted = False
    outcome: list[_T] = []
    try:
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                nonlocal interrupted
                with anyio.open_signal_receiver(signal.SIGINT) as signals:
                    async for _ in signals:
                        interrupted = True
                        tg.cancel_scope.cancel()
                        return

            tg.start_soon(watch)
            outcome.append(await func(*args))
            tg.cancel_scope.cancel()
    except BaseException:
        if interrupted:  # what failed while being cancelled is not the story: Ctrl-C is
            raise KeyboardInterrupt from None
        raise
    if interrupted:
        raise KeyboardInterrupt
    return outcome[0]


def unreachable_message(url: str, state: ReadyState) -> str:
    """Why nothing answered at `url`, by its root cause (the readiness detail chains every
    wrapper: "ConnectError <- OSError <- ConnectionRefusedError: ...")."""
    cause = state.detail.rsplit(" <- ", 1)[-1]
    return (
        f"cannot reach a manager at {url} ({cause}); is it running? `anytcm serve-dev` "
        "starts a local one; --url (or $ANYTCM_URL) points elsewhere"
    )
