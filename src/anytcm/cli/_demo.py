"""`anytcm demo`: the whole client against a local reference manager, in a few seconds.

It starts the reference manager (`anytcm.testing.ReferenceManager`, a subprocess) with shared
memory on, and with the `zstd` capability when the `anytcm-zstd` carrier plugin is installed,
then runs the `double` model through every carrier the manager speaks at two sizes: 4 KiB,
which JSON carries, and 1 MiB, which no JSON frame can (the manager's cap is 64 KiB). The json
row at 1 MiB shows the client refusing it *before sending* (`PayloadTooLarge`): that refusal is
the expected result, and the table says so. A stream and a queue_stats call complete the tour.

The last row is a failover: a second reference manager starts beside the first (at the same
time, so it costs no extra wait), one client connects to both URLs with a connection to each,
runs a few inferences over the two, then the second manager is SIGKILLed and the client must
answer every following inference from the survivor. TCM runs as replicas (contract §14); this is
the row that shows the client treating several managers as one service.

Every row checks its answer (twice the input, the stream's chunks in order, the stats), and the
exit code is 1 if any check fails, so the demo doubles as an installation smoke test.

Cleanup is not optional: the managers are stopped in a `finally` that also runs on Ctrl-C
(even during their start-up), and shared-memory segments are released by the client after each
request, on error and on cancellation. The managers also exit by themselves if this process dies
(`--exit-with-parent`).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt

from ..errors import PayloadTooLarge, TcmError
from ..plugins import carrier_names
from ..results import Target
from ._context import CliContext
from ._errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, CliError, UsageError, describe, report
from ._output import console, format_bytes, format_ms, marks, print_json, print_table

if TYPE_CHECKING:
    from rich.console import Console

    from ..client import AsyncClient
    from ..testing import ReferenceCluster

TARGET: Final = Target("127.0.0.1", "ref-0")  # the reference manager's registered target
SIZES: Final = (1024, 256 * 1024)  # FP32 elements: 4 KiB (JSON fits) and 1 MiB (it cannot)
STREAM_TEXT: Final = ("alpha", "beta", "gamma")
FRAME_CAP: Final = 65536
#: The failover row: calls spread over both managers, then calls after one was SIGKILLed.
FAILOVER_BEFORE: Final = 10
FAILOVER_AFTER: Final = 20


@dataclass(frozen=True)
class DemoRow:
    """One line of the demo's table."""

    call: str
    carrier: str
    size: str  # of the input tensor(s)
    latency: float | None  # median seconds of the timed calls; None when nothing was sent
    ok: bool
    note: str = ""

    def as_json(self) -> dict[str, Any]:
        row = asdict(self)
        latency = row.pop("latency")
        row["latency_ms"] = None if latency is None else latency * 1000
        return row


def demo_carriers() -> list[str]:
    """The carriers the reference manager speaks and this installation has."""
    installed = carrier_names()
    return [name for name in ("json", "shm", "zstd") if name in installed]


def demo_tensor(elements: int) -> npt.NDArray[np.float32]:
    """FP32 values that survive every carrier exactly and compress well (for zstd)."""
    values: npt.NDArray[np.float32] = (np.arange(elements) % 251).astype(np.float32) * 0.25
    return values


def run_demo(context: CliContext, *, rounds: int, port: int, only: Sequence[str] = ()) -> int:
    """Run the demo; `only` limits it to these carriers (default: every one available)."""
    from ..testing import ReferenceCluster, ReferenceManagerError

    carriers = demo_carriers()
    unknown = [name for name in only if name not in carriers]
    if unknown:
        raise UsageError(
            f"--carrier {', '.join(unknown)}: the demo runs {', '.join(carriers)} here"
            + ("" if "zstd" in carriers else " (zstd: the anytcm-zstd plugin is not installed)")
        )
    if only:
        carriers = [name for name in carriers if name in only]
    out = None if context.json else console()  # no rich: say so before starting anything
    extra_args = ["--capability", "zstd"] if "zstd" in carriers else []
    # The demo's manager, and a second one for the failover row, started together.
    cluster = ReferenceCluster(2, extra_args=extra_args)
    manager, second = cluster[0], cluster[1]
    manager.port = port  # --port is the first one's; the second takes a free port
    try:
        try:
            cluster.start()
        except (ReferenceManagerError, OSError) as exc:
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            last = lines[-1] if lines else "no output"
            if "anytcm[testing]" in last:  # the server's own hint: a missing dependency
                message = f"the reference manager cannot start: {last}"
                raise CliError(message, exit_code=EXIT_USAGE) from None
            raise CliError(f"the reference manager did not start: {last}") from None
        if out is not None:
            out.print(
                f"anytcm demo: reference manager on {manager.ws_url} (pid {manager.pid}), "
                f"and {second.ws_url} (pid {second.pid}) for the failover row",
                soft_wrap=True,  # one line whatever the terminal's width: scripts read it
            )
        pid, second_pid = manager.pid, second.pid
        granted, rows = context.run(_exercise, context, cluster, carriers, rounds)
    finally:
        cluster.stop()
    passed = all(row.ok for row in rows)
    if context.json:
        print_json(
            {
                "ok": passed,
                "manager": {"url": manager.ws_url, "pid": pid, "granted": granted},
                "second_manager": {"url": second.ws_url, "pid": second_pid},
                "rounds": rounds,
                "rows": [row.as_json() for row in rows],
            }
        )
    else:
        assert out is not None
        _print_rows(out, carriers, rows, rounds, everything=not only)
    if not passed:
        report(f"{sum(not r.ok for r in rows)} demo check(s) failed")
        return EXIT_FAILURE
    return EXIT_OK


def _print_rows(
    out: Console, carriers: list[str], rows: list[DemoRow], rounds: int, *, everything: bool
) -> None:
    good, bad = marks(out)
    out.print(f"carriers: {', '.join(carriers)}; model double: OUTPUT0 = 2 * INPUT0")
    if everything and "zstd" not in carriers:
        out.print("(zstd: not installed; the anytcm-zstd plugin adds it)")
    print_table(
        None,
        [
            ("call", "left"),
            ("carrier", "left"),
            ("size", "right"),
            ("latency", "right"),
            ("ok", "center"),
            ("note", "left"),
        ],
        [
            (r.call, r.carrier, r.size, format_ms(r.latency), good if r.ok else bad, r.note)
            for r in rows
        ],
        out=out,
    )
    out.print(f"latency: median of {rounds} round trip(s).")
    if "json" in carriers:
        out.print(
            "json refuses 1 MiB before sending (over the manager's 64 KiB frame cap): "
            "that refusal is the expected result."
        )
    out.print(
        f"failover: one client over two managers; after {FAILOVER_BEFORE} calls over both, "
        f"the second is SIGKILLed and {FAILOVER_AFTER} more must all succeed (latency: their "
        "median)."
    )


async def _exercise(
    context: CliContext, cluster: ReferenceCluster, carriers: list[str], rounds: int
) -> tuple[list[str], list[DemoRow]]:
    from ..client import connect

    rows: list[DemoRow] = []
    async with connect(cluster[0].ws_url, pool_size=1, timeout=context.timeout) as client:
        granted = list(client.granted_capabilities or ())
        for carrier in carriers:
            for elements in SIZES:
                rows.append(await _infer_row(client, carrier, elements, rounds))
        rows.append(await _stream_row(client, rounds))
        rows.append(await _queue_stats_row(client, rounds))
    # Last: it kills the second manager (the first one, which served the rows above, lives).
    rows.append(await _failover_row(cluster.urls, cluster[1].kill, carriers[0], context.timeout))
    return granted, rows


async def _timed(
    rounds: int, call: Callable[[], Awaitable[str | None]]
) -> tuple[float, str | None]:
    """Median seconds of `rounds` calls; `call` returns a failed check's note, or None."""
    latencies = []
    for _ in range(rounds):
        started = time.perf_counter()
        problem = await call()
        latencies.append(time.perf_counter() - started)
        if problem is not None:
            return statistics.median(latencies), problem
    return statistics.median(latencies), None


async def _infer_row(client: AsyncClient, carrier: str, elements: int, rounds: int) -> DemoRow:
    x = demo_tensor(elements)
    expected = x * np.float32(2)
    size = format_bytes(x.nbytes)
    # Every JSON number takes at least two characters ("0,"): this one cannot fit a frame.
    must_refuse = carrier == "json" and elements * 2 > FRAME_CAP

    async def call() -> str | None:
        result = await client.infer(
            "double",
            {"INPUT0": x},
            target=TARGET,
            carrier=carrier,
            output_dtypes={"OUTPUT0": np.float32},
        )
        return None if np.array_equal(result.as_numpy("OUTPUT0"), expected) else "wrong result"

    row = DemoRow("infer", carrier, size, None, False)
    try:
        latency, problem = await _timed(rounds, call)
    except PayloadTooLarge as exc:
        if must_refuse:
            return replace(row, ok=True, note=f"refused: {type(exc).__name__}")
        return replace(row, note=describe(exc))
    except TcmError as exc:
        return replace(row, note=describe(exc))
    if must_refuse:
        return replace(row, latency=latency, note="sent although over the frame cap")
    return replace(row, latency=latency, ok=problem is None, note=problem or "output = 2 * input")


async def _stream_row(client: AsyncClient, rounds: int) -> DemoRow:
    text = np.array([s.encode() for s in STREAM_TEXT], dtype=object)
    expected = ["START", *(f"ONGOING {s}" for s in STREAM_TEXT), "COMPLETED"]

    async def call() -> str | None:
        async with client.infer_stream("stream", {"TEXT": text}, target=TARGET) as stream:
            seen = [
                f"{event.status} {event.text}" if event.text is not None else event.status
                async for event in stream
            ]
        return None if seen == expected else f"got {seen}"

    row = DemoRow("infer_stream", "json", f"{len(STREAM_TEXT)} strings", None, False)
    try:
        latency, problem = await _timed(rounds, call)
    except TcmError as exc:
        return replace(row, note=describe(exc))
    note = problem or f"{len(STREAM_TEXT)} chunks in order"
    return replace(row, latency=latency, ok=problem is None, note=note)


async def _queue_stats_row(client: AsyncClient, rounds: int) -> DemoRow:
    """Runs after the inferences: the manager then counts this client's uuid among its users
    (it keeps a queue per uuid that sent inference work)."""

    async def call() -> str | None:
        stats = await client.info.queue_stats()
        return None if stats.total_users >= 1 else f"no user counted: {stats}"

    row = DemoRow("queue_stats", "—", "—", None, False)
    try:
        latency, problem = await _timed(rounds, call)
    except TcmError as exc:
        return replace(row, note=describe(exc))
    return replace(row, latency=latency, ok=problem is None, note=problem or "this client counted")


async def _failover_row(
    urls: Sequence[str], kill: Callable[[], None], carrier: str, timeout: float
) -> DemoRow:
    """One client over every manager of `urls`: calls spread over them, then `kill()` (a
    SIGKILL of the last one), then calls that must all succeed on the survivors.

    The client connects with one connection per manager and the row waits until each has
    its connection, so that the calls before the kill really use both and the kill really
    breaks a connection the client holds (the note says how the calls were spread)."""
    import anyio

    from ..client import connect

    x = demo_tensor(SIZES[0])
    expected = x * np.float32(2)
    row = DemoRow("failover", carrier, format_bytes(x.nbytes), None, False)

    async def call() -> str | None:
        try:
            result = await client.infer(
                "double",
                {"INPUT0": x},
                target=TARGET,
                carrier=carrier,
                output_dtypes={"OUTPUT0": np.float32},
            )
        except TcmError as exc:
            return describe(exc)
        return None if np.array_equal(result.as_numpy("OUTPUT0"), expected) else "wrong result"

    problems: list[str] = []

    async def worker(calls: int) -> None:
        for _ in range(calls):
            problem = await call()
            if problem is not None:
                problems.append(problem)

    try:
        async with connect(list(urls), pool_size=len(urls), timeout=timeout) as client:
            if not await _connected_to_all(client, timeout):
                return replace(row, note=f"not connected to all {len(urls)} managers")
            # One worker per manager: calls in flight on every connection at once.
            async with anyio.create_task_group() as group:
                for _ in urls:
                    group.start_soon(worker, FAILOVER_BEFORE // len(urls))
            if problems:
                return replace(row, note=f"before the kill: {problems[0]}")
            spread = "+".join(str(m.requests) for m in client.managers())
            await anyio.to_thread.run_sync(kill)
            killed = time.perf_counter()
            first_answer: float | None = None
            latencies: list[float] = []
            for _ in range(FAILOVER_AFTER):
                started = time.perf_counter()
                problem = await call()
                if problem is not None:
                    problems.append(problem)
                    continue
                latencies.append(time.perf_counter() - started)
                if first_answer is None:
                    first_answer = time.perf_counter() - killed
    except TcmError as exc:
        return replace(row, note=describe(exc))
    succeeded = len(latencies)
    note = (
        f"{len(urls)} managers ({spread} calls), one SIGKILLed: {succeeded}/{FAILOVER_AFTER} ok"
        + (f", the first {format_ms(first_answer)} after" if first_answer is not None else "")
        + (f"; first failure: {problems[0]}" if problems else "")
    )
    return replace(
        row,
        latency=statistics.median(latencies) if latencies else None,
        ok=not problems,
        note=note,
    )


async def _connected_to_all(client: AsyncClient, timeout: float) -> bool:
    """Wait (at most `timeout` s) until the client holds a connection to every manager:
    `connect` returns with the first one, the others open in the background."""
    import anyio

    with anyio.move_on_after(timeout):
        # The client has no event for "a connection to each manager": it is not a state
        # anything but this demo waits for.
        while not all(m.connections for m in client.managers()):  # noqa: ASYNC110
            await anyio.sleep(0.01)
        return True
    return False
