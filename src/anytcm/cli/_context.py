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
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, TypeVar

import anyio

from ..errors import ConnectError
from ..readiness import ReadinessGate, ReadyState
from ..transports import collapse_exception_group
from ._errors import Interrupted, UsageError

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

if TYPE_CHECKING:
    from ..client import AsyncClient
    from ..options import ConnectOptions

_T = TypeVar("_T")

DEFAULT_URL: Final = "ws://127.0.0.1:8000/ws"
DEFAULT_TIMEOUT: Final = 10.0
BACKENDS: Final = ("asyncio", "trio")


@dataclass(frozen=True)
class CliContext:
    """The global options of one run. `token` is a secret: it never appears in a repr.

    `urls` are the managers (`--url` repeated, or `$ANYTCM_URL` with commas), in order; `url`
    is the first of them, which is all there is to know when there is one. `urls` defaults to
    `(url,)`, so a context built with one `url` is a one-manager context.
    """

    url: str
    token: str | None = field(repr=False)
    json: bool = False
    timeout: float = DEFAULT_TIMEOUT
    backend: str = "asyncio"
    urls: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.urls:
            object.__setattr__(self, "urls", (self.url,))  # frozen: the one place it is set
        elif self.urls[0] != self.url:
            raise ValueError(f"url must be urls[0], got {self.url!r} and {self.urls!r}")
        # Checked here, before a command starts anything (the demo's manager, a file read).
        if self.backend == "trio" and importlib.util.find_spec("trio") is None:
            raise UsageError('--backend trio needs trio: pip install "anytcm[trio]"')

    @property
    def where(self) -> str:
        """The managers, for a message or a title: "ws://a:8000/ws" or "ws://a/ws, ws://b/ws"."""
        return ", ".join(self.urls)

    @property
    def connect_url(self) -> str | list[str]:
        """What `anytcm.connect` is given: the plain string for one manager, as before several
        were possible, else the list (each URL its own manager)."""
        return self.url if len(self.urls) == 1 else list(self.urls)

    def run(self, func: Callable[..., Awaitable[_T]], *args: Any) -> _T:
        """Run `func(*args)` on the chosen backend; a single failure comes out ungrouped.

        SIGINT and SIGTERM (see `SIGNALS`) cancel `func` instead of interrupting it wherever
        it happens to be, then raise `Interrupted` here: a cancellation is what every part of
        the client is written to clean up after (shared-memory segments are unlinked, the
        connection closed), and no KeyboardInterrupt ever unwinds the event loop itself, which
        would leave AnyIO worker threads (non-daemon) waiting for a loop that is gone.
        """

        outcome: list[_T] = []

        async def guarded() -> None:
            # Returns rather than raising Interrupted: a KeyboardInterrupt out of a task
            # unwinds asyncio's loop abruptly, the very thing this avoids.
            with anyio.CancelScope() as scope:
                SIGNALS.arm(_thread_safe_caller(), scope.cancel)
                try:
                    outcome.append(await func(*args))
                except BaseExceptionGroup as group:
                    error = collapse_exception_group(group)
                    if error is None:
                        raise
                    raise error from error.__cause__  # keeps e.g. the NotReady behind ConnectError
                finally:
                    SIGNALS.disarm()

        with SIGNALS.deferred():
            try:
                anyio.run(guarded, backend=self.backend)
            except BaseException:
                if SIGNALS.received is not None:  # what failed while cancelled is not the story
                    raise Interrupted(SIGNALS.received) from None
                raise
        if SIGNALS.received is not None or not outcome:
            raise Interrupted(SIGNALS.received or signal.SIGINT)
        return outcome[0]

    async def readiness(self, url: str | None = None) -> ReadyState:
        """One `GET /ready` of the manager at `url` (default: the first manager); never raises
        for network failures."""
        gate = ReadinessGate(url or self.url, timeout=self.timeout)
        try:
            return await gate.check()
        finally:
            await gate.aclose()

    async def readiness_of_all(self) -> list[ReadyState]:
        """`GET /ready` of every manager at once (a dead one costs one timeout, not one each);
        the answers are in the order of `urls`."""
        states: list[ReadyState | None] = [None] * len(self.urls)

        async def ask(index: int) -> None:
            states[index] = await self.readiness(self.urls[index])

        async with anyio.create_task_group() as group:
            for index in range(len(self.urls)):
                group.start_soon(ask, index)
        return [state for state in states if state is not None]

    async def _until_one_answers(self) -> list[ReadyState] | None:
        """Ask every manager's `/ready` at once and return as soon as one answers (ready or
        not: the client waits for readiness itself), so that a frozen manager does not hold
        the command for a whole timeout. None when one answered; else every failure, in the
        order of `urls`."""
        failures: dict[str, ReadyState] = {}

        async def ask(url: str, scope: anyio.CancelScope) -> None:
            state = await self.readiness(url)
            if state.status_code is None:
                failures[url] = state
            else:
                scope.cancel()

        async with anyio.create_task_group() as group:
            for url in self.urls:
                group.start_soon(ask, url, group.cancel_scope)
        if len(failures) < len(self.urls):
            return None
        return [failures[url] for url in self.urls]

    def connect_options(self, *, pool_size: int = 1) -> ConnectOptions:
        """The options of `anytcm.connect` that the global options set: `--timeout` bounds
        connecting as well as each call. With several managers the pool has at least one
        connection per manager, which the client requires."""
        return {
            "token": self.token,
            "pool_size": max(pool_size, len(self.urls)),
            "timeout": self.timeout,
            "connect_timeout": self.timeout,
        }

    @asynccontextmanager
    async def client(self, *, pool_size: int = 1) -> AsyncIterator[AsyncClient]:
        """`anytcm.connect` with the global options (`connect_options`).

        `/ready` is asked once first: when nothing answers at all, waiting `timeout` seconds
        for a connection that cannot come only delays the one useful message. With several
        managers the command goes ahead when any of them answers: the client spreads its
        connections over those that are up and keeps retrying the others.
        """
        from ..client import connect

        states = await self._until_one_answers()
        if states is not None:
            raise ConnectError(unreachable_message_all(self.urls, states))
        options = self.connect_options(pool_size=pool_size)
        async with connect(self.connect_url, **options) as client:
            yield client


def _thread_safe_caller() -> Callable[[Callable[[], object]], object]:
    """How to schedule a callback on the running loop (asyncio or trio) from a signal handler."""
    import asyncio

    from .._backend import current_backend

    if current_backend() == "trio":
        import trio

        return trio.lowlevel.current_trio_token().run_sync_soon  # documented signal-safe
    return asyncio.get_running_loop().call_soon_threadsafe


class InstalledSignals:
    """SIGINT and SIGTERM routed to `_handle` between `install()` and `uninstall()`, from the
    main thread (the only one Python lets set handlers). A signal that was ignored when we
    started (`nohup`, a `cmd &` job) stays ignored."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        self.received = None
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(signum) is not signal.SIG_IGN:
                self._previous[signum] = signal.signal(signum, self._handle)

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: object) -> None:
        raise NotImplementedError


class SignalHandling(InstalledSignals):
    """SIGINT and SIGTERM of the `anytcm` process (installed by `cli.run`).

    Outside the event loop a signal raises `Interrupted` at once: nothing holds a resource.
    While `CliContext.run` runs the loop ("deferred"), the handler never raises: the first
    signal cancels the command's scope (through the loop's thread-safe callback, so the loop
    wakes up), later ones are ignored so that the cleanup finishes; `run` then raises
    `Interrupted`. A signal that was ignored when we started (`nohup`, a `cmd &` job) stays
    ignored.
    """

    def __init__(self) -> None:
        super().__init__()
        self._deferring = False
        self._cancel: Callable[[], object] | None = None

    @contextmanager
    def deferred(self) -> Iterator[None]:
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False

    def arm(
        self, call_soon: Callable[[Callable[[], object]], object], cancel: Callable[[], object]
    ) -> None:
        def cancel_soon() -> None:
            with suppress(RuntimeError):  # the loop is closing: nothing left to cancel
                call_soon(cancel)

        self._cancel = cancel_soon
        if self.received is not None:  # arrived while the loop was starting
            cancel()

    def disarm(self) -> None:
        self._cancel = None

    def _handle(self, signum: int, frame: object) -> None:
        first = self.received is None
        if first:
            self.received = signum
        if not self._deferring:
            if first:
                raise Interrupted(signum)
            return  # a second Ctrl-C while we exit: already on our way out

        if first and self._cancel is not None:
            self._cancel()


SIGNALS: Final = SignalHandling()


def unreachable_message(url: str, state: ReadyState) -> str:
    """Why nothing answered at `url`, by its root cause (the readiness detail chains every
    wrapper: "ConnectError <- OSError <- ConnectionRefusedError: ...")."""
    cause = state.detail.rsplit(" <- ", 1)[-1]
    return (
        f"cannot reach a manager at {url} ({cause}); is it running? `anytcm serve-dev` "
        "starts a local one; --url (or $ANYTCM_URL) points elsewhere"
    )


def unreachable_message_all(urls: Sequence[str], states: Sequence[ReadyState]) -> str:
    """Why no manager answered: `unreachable_message` for one, each one's cause for several."""
    if len(urls) == 1:
        return unreachable_message(urls[0], states[0])
    causes = "; ".join(
        f"{url} ({state.detail.rsplit(' <- ', 1)[-1]})"
        for url, state in zip(urls, states, strict=True)
    )
    return (
        f"cannot reach any of {len(urls)} managers: {causes}; are they running? `anytcm "
        "serve-dev --replicas N` starts N local ones; --url (or $ANYTCM_URL) points elsewhere"
    )
