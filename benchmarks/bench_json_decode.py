"""Benchmark the JSON tensor codec against the obvious orjson + numpy baseline.

Decoding: `anytcm.tensors.decode_output(raw, "FP32")` against
`np.asarray(orjson.loads(raw), dtype=np.float32)`, for FP32 outputs of 1k, 100k and 1M elements,
1-D and 2-D, in the two number formats a reply can hold: the float64 repr the manager writes
(`arr.tolist()` then JSON, so 0.1f arrives as 0.10000000149011612) and the shortest float32 repr.

Encoding: `encode_input(name, arr)` against `orjson.dumps(arr.tolist())` (which writes float64
reprs and is the one-liner most clients use).

Run: `python benchmarks/bench_json_decode.py [--repeat N]`. Prints Markdown tables; a ratio
above 1 means anytcm is faster. Medians of `--repeat` runs timed with `time.perf_counter`.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import orjson

from anytcm.tensors import decode_output, encode_input

SHAPES: list[tuple[int, ...]] = [
    (1_000,),
    (10, 100),
    (100_000,),
    (100, 1_000),
    (1_000_000,),
    (1_000, 1_000),
]


def paired_ms(
    baseline: Callable[[], Any], candidate: Callable[[], Any], repeat: int
) -> tuple[float, float]:
    """Median milliseconds of each, timed alternately so that machine noise hits both alike."""
    baseline()  # warm up
    candidate()
    base_times: list[float] = []
    cand_times: list[float] = []
    for _ in range(repeat):
        for fn, times in ((baseline, base_times), (candidate, cand_times)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return statistics.median(base_times) * 1e3, statistics.median(cand_times) * 1e3


def baseline_decode(raw: bytes, dtype: np.dtype[Any]) -> Any:
    return np.asarray(orjson.loads(raw), dtype=dtype)


def baseline_encode(arr: Any) -> bytes:
    return orjson.dumps(arr.tolist())


def repeat_for(size: int, repeat: int) -> int:
    """More runs for small tensors, whose timings are short and noisy."""
    return repeat * max(1, 100_000 // size // 10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeat", type=int, default=11)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    fp32 = np.dtype(np.float32)

    print("## decode_output vs np.asarray(orjson.loads(raw), dtype=float32)\n")
    print("| shape | format | JSON bytes | baseline ms | decode_output ms | ratio |")
    print("|---|---|---:|---:|---:|---:|")
    for shape in SHAPES:
        arr = rng.standard_normal(shape).astype(np.float32)
        formats = {
            "float64 repr (server)": orjson.dumps(arr.tolist()),
            "float32 shortest": orjson.dumps(arr, option=orjson.OPT_SERIALIZE_NUMPY),
        }
        for label, raw in formats.items():
            ours = decode_output(raw, "FP32")
            assert ours.shape == arr.shape, (shape, label)
            assert np.array_equal(ours, arr), (shape, label)
            base, mine = paired_ms(
                partial(baseline_decode, raw, fp32),
                partial(decode_output, raw, "FP32"),
                repeat_for(arr.size, args.repeat),
            )
            print(
                f"| {shape} | {label} | {len(raw):,} | {base:.3f} | {mine:.3f} "
                f"| {base / mine:.2f}x |"
            )

    print("\n## encode_input vs orjson.dumps(arr.tolist())\n")
    print("| shape | baseline ms | baseline bytes | encode_input ms | encode_input bytes | ratio |")
    print("|---|---:|---:|---:|---:|---:|")
    for shape in SHAPES:
        arr = rng.standard_normal(shape).astype(np.float32)
        base_bytes = len(orjson.dumps(arr.tolist()))
        our_bytes = len(encode_input("INPUT0", arr))
        base, mine = paired_ms(
            partial(baseline_encode, arr),
            partial(encode_input, "INPUT0", arr),
            repeat_for(arr.size, args.repeat),
        )
        print(
            f"| {shape} | {base:.3f} | {base_bytes:,} | {mine:.3f} | {our_bytes:,} "
            f"| {base / mine:.2f}x |"
        )


if __name__ == "__main__":
    main()
