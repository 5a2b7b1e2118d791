"""Carrier benchmark (issue 5): the input path, apart from the JSON reply.

Outputs always come back as JSON in this protocol, so the input path is measured through the
reference manager's `checksum` model (any numeric INPUT0 -> OUTPUT0 FP64 [1], the sum), whose
reply is tiny. For FP32 inputs of 64 KiB, 1 MiB, 16 MiB and 64 MiB it reports, per carrier
(json where it fits the 64 KiB frame cap, shm, zstd when installed):

* end-to-end input MB/s (request size / round-trip time, median of several runs);
* client-side staging time against a plain `numpy.copyto` into an mmap of the same size;
* the full `double` round trip (JSON reply included) at 1 and 16 MiB, to show where time goes.

Run: `python benchmarks/bench_carriers.py` (writes benchmarks/results/carriers.md).
Targets: shm staging at most 1.5x the memcpy time; shm input path at least 1 GB/s at 16 MiB.
"""

from __future__ import annotations

import mmap
import os
import statistics
import sys
import time
from pathlib import Path

import anyio
import numpy as np

import anytcm
from anytcm.carrier import InputTensor
from anytcm.errors import CarrierUnavailable, PayloadTooLarge, UnknownCarrier
from anytcm.plugins import carrier_names, load_carrier
from anytcm.testing import ReferenceManager

TARGET = anytcm.Target("127.0.0.1", "ref-0")
SIZES = {"64 KiB": 64 * 1024, "1 MiB": 1 << 20, "16 MiB": 16 << 20, "64 MiB": 64 << 20}
RESULTS = Path(__file__).parent / "results"


def _repeats(nbytes: int) -> int:
    return 30 if nbytes <= 1 << 20 else 8 if nbytes <= 16 << 20 else 4


def memcpy_seconds(array: np.ndarray) -> float:
    """Median time of numpy.copyto into a fresh shared mapping of the same size."""
    times = []
    for _ in range(_repeats(array.nbytes)):
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


async def staging_seconds(carrier_name: str, array: np.ndarray) -> float:
    carrier = load_carrier(carrier_name)
    times = []
    for _ in range(_repeats(array.nbytes)):
        start = time.perf_counter()
        staged = await carrier.stage([InputTensor("INPUT0", array)])
        times.append(time.perf_counter() - start)
        staged.release()
    return statistics.median(times)


async def round_trip(
    client: anytcm.AsyncClient, model: str, array: np.ndarray, carrier: str
) -> float:
    times = []
    for _ in range(_repeats(array.nbytes)):
        start = time.perf_counter()
        result = await client.infer(model, {"INPUT0": array}, target=TARGET, carrier=carrier,
                                    output_dtypes={"OUTPUT0": np.float32}, timeout=120)  # fmt: skip
        result.as_numpy("OUTPUT0")
        times.append(time.perf_counter() - start)
    return statistics.median(times)


async def main(url: str) -> list[str]:
    carriers = [c for c in ("json", "shm", "zstd") if c in carrier_names()]
    lines = [
        (
            "| size | carrier | checksum round trip ms | input MB/s | staging ms | memcpy ms | "
            "staging / memcpy |"
        ),
        "|---|---|---|---|---|---|---|",
    ]
    rng = np.random.default_rng(0)
    async with anytcm.connect(url, pool_size=1, timeout=120) as client:
        for label, nbytes in SIZES.items():
            array = rng.random(nbytes // 4, dtype=np.float32)
            copy = memcpy_seconds(array)
            sparse = np.zeros_like(array)  # compressible data: 1% non-zero
            sparse[::100] = array[::100]
            runs = [(name, name, array) for name in carriers]
            if "zstd" in carriers:
                runs.append(("zstd (1% non-zero)", "zstd", sparse))
            for label_carrier, name, data in runs:
                try:
                    rtt = await round_trip(client, "checksum", data, name)
                except (PayloadTooLarge, CarrierUnavailable, UnknownCarrier) as exc:
                    lines.append(
                        f"| {label} | {label_carrier} | n/a ({type(exc).__name__}) | | | | |"
                    )
                    continue
                stage = await staging_seconds(name, data)
                lines.append(
                    f"| {label} | {label_carrier} | {rtt * 1e3:.2f} | {nbytes / rtt / 1e6:.0f} | "
                    f"{stage * 1e3:.2f} | {copy * 1e3:.3f} | {stage / copy:.2f}x |"
                )
                print(lines[-1], flush=True)
        lines += [
            "",
            "| size | carrier | `double` round trip ms (JSON reply included) |",
            "|---|---|---|",
        ]
        for label in ("1 MiB", "16 MiB"):
            array = rng.random(SIZES[label] // 4, dtype=np.float32)
            for name in carriers:
                try:
                    rtt = await round_trip(client, "double", array, name)
                except (PayloadTooLarge, CarrierUnavailable, UnknownCarrier) as exc:
                    lines.append(f"| {label} | {name} | n/a ({type(exc).__name__}) |")
                    continue
                lines.append(f"| {label} | {name} | {rtt * 1e3:.1f} |")
                print(lines[-1], flush=True)
    return lines


if __name__ == "__main__":
    args = ["--capability", "zstd"] if "zstd" in carrier_names() else []
    with ReferenceManager(extra_args=args) as manager:
        table = anyio.run(
            main, manager.ws_url, backend=sys.argv[1] if len(sys.argv) > 1 else "asyncio"
        )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "carriers.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
