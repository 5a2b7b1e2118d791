"""`anytcm demo`: the whole client against a local reference manager, in a few seconds.

It starts the reference manager (`anytcm.testing.ReferenceManager`, a subprocess) with shared
memory on, and with the `zstd` capability when the `anytcm-zstd` carrier plugin is installed,
then runs the `double` model through every carrier the manager speaks at two sizes: 4 KiB,
which JSON carries, and 1 MiB, which no JSON frame can (the manager's cap is 64 KiB). The json
row at 1 MiB shows the client refusing it *before sending* (`PayloadTooLarge`): that refusal is
the expected result, and the table says so. A stream and a queue_stats call complete the tour.

Every row checks its answer (twice the input, the stream's chunks in order, the stats), and the
exit code is 1 if any check fails, so the demo doubles as an installation smoke test.

Cleanup is not optional: the manager is stopped in a `finally` that also runs on Ctrl-C
(even during its start-up), and shared-memory segments are released by the client after each
request, on error and on cancellation. The manager also exits by itself if this process dies
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

TARGET: Final = Target("127.0.0.1", "ref-0")  # the reference manager's registered target
SIZES: Final = (1024, 256 * 1024)  # FP32 elements: 4 KiB (JSON fits) and 1 MiB (it cannot)
STREAM_TEXT: Final = ("alpha", "beta", "gamma")
FRAME_CAP: Final = 65536


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
    from ..testing import ReferenceManager, ReferenceManagerError

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
    manager = ReferenceManager(port=port, extra_args=extra_args)
    try:
        try:
            manager.start()
        except ReferenceManagerError as exc:
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            last = lines[-1] if lines else "no output"
            if "anytcm[testing]" in last:  # the server's own hint: a missing dependency
                message = f"the reference manager cannot start: {last}"
                raise CliError(message, exit_code=EXIT_USAGE) from None
            raise CliError(f"the reference manager did not start: {last}") from None
        if out is not None:
            out.print(f"anytcm demo: reference manager on {manager.ws_url} (pid {manager.pid})")
        granted, rows = context.run(_exercise, context, manager.ws_url, carriers, rounds)
        pid = manager.pid
    finally:
        manager.stop()
    passed = all(row.ok for row in rows)
    if context.json:
        print_json(
            {
                "ok": passed,
                "manager": {"url": manager.ws_url, "pid": pid, "granted": granted},
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


async def _exercise(
    context: CliContext, url: str, carriers: list[str], rounds: int
) -> tuple[list[str], list[DemoRow]]:
    from ..client import connect

    rows: list[DemoRow] = []
    async with connect(url, pool_size=1, timeout=context.timeout) as client:
        granted = list(client.granted_capabilities or ())
        for carrier in carriers:
            for elements in SIZES:
                rows.append(await _infer_row(client, carrier, elements, rounds))
        rows.append(await _stream_row(client, rounds))
        rows.append(await _queue_stats_row(client, rounds))
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
