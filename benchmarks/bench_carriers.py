"""Carrier benchmark (issue 5): the input path, apart from the JSON reply.

Outputs always come back as JSON in this protocol, so the input path is measured through the
reference manager's `checksum` model (any numeric INPUT0 -> OUTPUT0 FP64 [1], the sum), whose
reply is tiny. For FP32 inputs of 64 KiB, 1 MiB, 16 MiB and 64 MiB it reports, per carrier
(json where it fits the 64 KiB frame cap, shm, zstd when installed):

* end-to-end input MB/s (request size / round-trip time, median of several runs);
* client-side staging time against a plain `numpy.copyto` into an mmap of the same size;
* the full `double` round trip (JSON reply included) at 1 and 16 MiB, to show where time goes.

Run: `python benchmarks/bench_carriers.py [asyncio|trio] [--quick]` (writes
benchmarks/results/carriers.md and every figure in carriers.json; `--results` moves them).
Targets: shm staging at most 1.5x the memcpy time; shm input path at least 1 GB/s at 16 MiB.
"""

from __future__ import annotations

import argparse
import mmap
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import anyio
import numpy as np
from _bench_common import add_results_argument, save_results

import anytcm
from anytcm.carrier import InputTensor
from anytcm.errors import CarrierUnavailable, PayloadTooLarge, UnknownCarrier
from anytcm.plugins import carrier_names, load_carrier
from anytcm.testing import ReferenceManager

TARGET = anytcm.Target("127.0.0.1", "ref-0")
SIZES = {"64 KiB": 64 * 1024, "1 MiB": 1 << 20, "16 MiB": 16 << 20, "64 MiB": 64 << 20}
RESULTS = Path(__file__).parent / "results"


QUICK_SIZES = ("64 KiB", "1 MiB", "16 MiB")


def repeats(nbytes: int, quick: bool) -> int:
    """Runs per figure (its median): fewer for big tensors, a quarter of them with --quick."""
    full = 30 if nbytes <= 1 << 20 else 8 if nbytes <= 16 << 20 else 4
    return max(2, full // 4) if quick else full


def memcpy_seconds(array: np.ndarray, runs: int) -> float:
    """Median time of numpy.copyto into a fresh shared mapping of the same size."""
    times = []
    for _ in range(runs):
        fd = os.open("/dev/shm", os.O_TMPFILE | os.O_RDWR, 0o600)
        try:
            os.ftruncate(fd, array.nbytes)
            with mmap.mmap(fd, array.nbytes) as region:
                target = np.frombuffer(region, dtype=array.dtype, count=array.size)
                start = time.perf_counter()
                np.copyto(target, array)
                times.append(time.perf_counter() - start)
                del target
        finally:
            os.close(fd)
    return statistics.median(times)


async def staging_seconds(carrier_name: str, array: np.ndarray, runs: int) -> float:
    carrier = load_carrier(carrier_name)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        staged = await carrier.stage([InputTensor("INPUT0", array)])
        times.append(time.perf_counter() - start)
        staged.release()
    return statistics.median(times)


async def round_trip(
    client: anytcm.AsyncClient, model: str, array: np.ndarray, carrier: str, runs: int
) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        result = await client.infer(model, {"INPUT0": array}, target=TARGET, carrier=carrier,
                                    output_dtypes={"OUTPUT0": np.float32}, timeout=120)  # fmt: skip
        result.as_numpy("OUTPUT0")
        times.append(time.perf_counter() - start)
    return statistics.median(times)


async def main(url: str, sizes: dict[str, int], quick: bool) -> list[dict[str, Any]]:
    """Every figure of the run, one dict a row: `table` "input" (the checksum round trip,
    staging and memcpy) or "double" (the full round trip); `error` when the carrier could not
    send the tensor."""
    carriers = [c for c in ("json", "shm", "zstd") if c in carrier_names()]
    rows: list[dict[str, Any]] = []
    unsendable = (PayloadTooLarge, CarrierUnavailable, UnknownCarrier)
    rng = np.random.default_rng(0)
    async with anytcm.connect(url, pool_size=1, timeout=120) as client:
        for label, nbytes in sizes.items():
            array = rng.random(nbytes // 4, dtype=np.float32)
            runs_per_figure = repeats(nbytes, quick)
            copy = memcpy_seconds(array, runs_per_figure)
            sparse = np.zeros_like(array)  # compressible data: 1% non-zero
            sparse[::100] = array[::100]
            runs: list[tuple[str, str, np.ndarray]] = [(n, n, array) for n in carriers]
            if "zstd" in carriers:
                runs.append(("zstd (1% non-zero)", "zstd", sparse))
            for label_carrier, name, data in runs:
                row: dict[str, Any] = {"table": "input", "size": label, "bytes": nbytes}
                row["carrier"] = label_carrier
                try:
                    rtt = await round_trip(client, "checksum", data, name, runs_per_figure)
                except unsendable as exc:
                    row["error"] = type(exc).__name__
                else:
                    stage = await staging_seconds(name, data, runs_per_figure)
                    row.update(rtt_ms=rtt * 1e3, mb_s=nbytes / rtt / 1e6, staging_ms=stage * 1e3)
                    row.update(memcpy_ms=copy * 1e3, staging_vs_memcpy=stage / copy)
                rows.append(row)
                print(render_row(row), flush=True)
        for label in ("1 MiB", "16 MiB"):
            if label not in sizes:
                continue
            array = rng.random(sizes[label] // 4, dtype=np.float32)
            runs_per_figure = repeats(array.nbytes, quick)
            for name in carriers:
                row = {"table": "double", "size": label, "bytes": sizes[label], "carrier": name}
                try:
                    rtt = await round_trip(client, "double", array, name, runs_per_figure)
                    row["rtt_ms"] = rtt * 1e3
                except unsendable as exc:
                    row["error"] = type(exc).__name__
                rows.append(row)
                print(render_row(row), flush=True)
    return rows


INPUT_HEADER = [
    (
        "| size | carrier | checksum round trip ms | input MB/s | staging ms | memcpy ms | "
        "staging / memcpy |"
    ),
    "|---|---|---:|---:|---:|---:|---:|",
]
DOUBLE_HEADER = [
    "| size | carrier | `double` round trip ms (JSON reply included) |",
    "|---|---|---:|",
]


def render_row(row: dict[str, Any]) -> str:
    head = f"| {row['size']} | {row['carrier']} "
    if row["table"] == "double":
        if row.get("error"):
            return head + f"| n/a ({row['error']}) |"
        return head + f"| {row['rtt_ms']:.1f} |"
    if row.get("error"):
        return head + f"| n/a ({row['error']}) | | | | |"
    return head + (
        f"| {row['rtt_ms']:.2f} | {row['mb_s']:.0f} | {row['staging_ms']:.2f} "
        f"| {row['memcpy_ms']:.3f} | {row['staging_vs_memcpy']:.2f}x |"
    )


def render(rows: list[dict[str, Any]]) -> str:
    """The two Markdown tables of a run's rows."""
    lines = INPUT_HEADER + [render_row(r) for r in rows if r["table"] == "input"]
    lines += ["", *DOUBLE_HEADER] + [render_row(r) for r in rows if r["table"] == "double"]
    return "\n".join(lines) + "\n"


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("backend", nargs="?", default="asyncio", choices=("asyncio", "trio"))
    parser.add_argument(
        "--quick", action="store_true", help="sizes up to 16 MiB, a quarter of the runs"
    )
    add_results_argument(parser, RESULTS / "carriers.json")
    args = parser.parse_args()
    sizes = {label: SIZES[label] for label in QUICK_SIZES} if args.quick else SIZES
    server_args = ["--capability", "zstd"] if "zstd" in carrier_names() else []
    with ReferenceManager(extra_args=server_args) as manager:
        rows = anyio.run(main, manager.ws_url, sizes, args.quick, backend=args.backend)
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": platform.platform(),
        "python": platform.python_version(),
        "backend": args.backend,
        "quick": args.quick,
        "server_args": server_args,
    }
    table = render(rows)
    save_results(args.results, {"meta": meta, "rows": rows}, table)
    print(table)


if __name__ == "__main__":
    cli()
