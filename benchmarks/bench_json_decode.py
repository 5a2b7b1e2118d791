"""Benchmark the JSON tensor codec against the obvious orjson + numpy baseline.

Decoding: `anytcm.tensors.decode_output(raw, "FP32")` against
`np.asarray(orjson.loads(raw), dtype=np.float32)`, for FP32 outputs of 1k, 100k and 1M elements,
1-D and 2-D, in the two number formats a reply can hold: the float64 repr the manager writes
(`arr.tolist()` then JSON, so 0.1f arrives as 0.10000000149011612) and the shortest float32 repr.

Encoding: `encode_input(name, arr)` against `orjson.dumps(arr.tolist())` (which writes float64
reprs and is the one-liner most clients use).

Run: `python benchmarks/bench_json_decode.py [--repeat N]`. Prints Markdown tables; a ratio
above 1 means anytcm is faster. Medians of `--repeat` runs timed with `time.perf_counter`.
Writes every figure to benchmarks/results/json_decode.json and the tables beside it (.md);
`--results` moves them.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from _bench_common import add_results_argument, save_results

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


def measure(repeat: int) -> list[dict[str, Any]]:
    """One row per measurement: `kind` "decode" (per shape and number format) or "encode"."""
    rng = np.random.default_rng(0)
    fp32 = np.dtype(np.float32)
    rows: list[dict[str, Any]] = []
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
                repeat_for(arr.size, repeat),
            )
            rows.append(
                {"kind": "decode", "shape": list(shape), "format": label, "json_bytes": len(raw),
                 "baseline_ms": base, "anytcm_ms": mine}
            )  # fmt: skip
            print(render_row(rows[-1]), flush=True)
    for shape in SHAPES:
        arr = rng.standard_normal(shape).astype(np.float32)
        base, mine = paired_ms(
            partial(baseline_encode, arr),
            partial(encode_input, "INPUT0", arr),
            repeat_for(arr.size, repeat),
        )
        rows.append(
            {"kind": "encode", "shape": list(shape), "baseline_ms": base, "anytcm_ms": mine,
             "baseline_bytes": len(orjson.dumps(arr.tolist())),
             "anytcm_bytes": len(encode_input("INPUT0", arr))}
        )  # fmt: skip
        print(render_row(rows[-1]), flush=True)
    return rows


def render_row(row: dict[str, Any]) -> str:
    shape = tuple(row["shape"])
    speed = row["baseline_ms"] / row["anytcm_ms"]
    if row["kind"] == "decode":
        return (
            f"| {shape} | {row['format']} | {row['json_bytes']:,} | {row['baseline_ms']:.3f} "
            f"| {row['anytcm_ms']:.3f} | {speed:.2f}x |"
        )
    return (
        f"| {shape} | {row['baseline_ms']:.3f} | {row['baseline_bytes']:,} "
        f"| {row['anytcm_ms']:.3f} | {row['anytcm_bytes']:,} | {speed:.2f}x |"
    )


def render(rows: list[dict[str, Any]], level: str = "##") -> str:
    """The decode and encode tables as Markdown (`level`: the headings' level)."""
    lines = [
        f"{level} decode_output vs np.asarray(orjson.loads(raw), dtype=float32)\n",
        "| shape | format | JSON bytes | baseline ms | decode_output ms | ratio |",
        "|---|---|---:|---:|---:|---:|",
    ]
    lines += [render_row(r) for r in rows if r["kind"] == "decode"]
    lines += [
        f"\n{level} encode_input vs orjson.dumps(arr.tolist())\n",
        "| shape | baseline ms | baseline bytes | encode_input ms | encode_input bytes | ratio |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines += [render_row(r) for r in rows if r["kind"] == "encode"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeat", type=int, default=11)
    add_results_argument(parser, Path(__file__).parent / "results" / "json_decode.json")
    args = parser.parse_args()
    rows = measure(args.repeat)
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": platform.platform(),
        "python": platform.python_version(),
        "repeat": args.repeat,
    }
    tables = render(rows)
    save_results(args.results, {"meta": meta, "rows": rows}, tables)
    print("\n" + tables)


if __name__ == "__main__":
    main()
