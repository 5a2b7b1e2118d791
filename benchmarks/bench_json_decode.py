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

`--fast-paths` measures what each fast path (`anytcm._fast`) is worth instead: for each named
case (a reply frame decoded into its array, or an input encoded), the instructions one call
takes with every fast path on, with each one that the case takes switched off in turn, and with
all of them off (ANYTCM_NO_FAST_PATHS=1). Instructions are counted by callgrind (valgrind must be
installed): unlike time, the count barely moves on a busy machine. Parsing in pieces saves
memory traffic rather than instructions, so it is also timed, interleaved on and off. Writes
benchmarks/results/fast_paths.json and .md. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from _bench_common import add_results_argument, save_results

from anytcm import wire
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


# -- what each fast path is worth (--fast-paths) ------------------------------------------------


def switch_off(path: str) -> None:
    """Turn one fast path off in this process, by the knob its module reads at each call."""
    from anytcm import _fast, tensors
    from anytcm._fast import arrays, encode, floats, frames

    if path == "frames.numbers":
        frames._NUMBERS_FRAME_BYTES = -1
    elif path == "frames.cut":
        frames._CUT_FRAME_BYTES = 1 << 62
    elif path == "floats":
        floats.decode_floats = lambda raw, target: None
    elif path == "arrays":
        arrays.decode_numbers = lambda text, target, depth: None
    elif path == "arrays.pieces":
        arrays._PIECE_BYTES = 1 << 62
    elif path == "dtypes":
        tensors._KNOWN_TARGETS = {}
    elif path == "encode":
        encode.encode_plain = lambda name, arr, datatypes: None
    else:
        raise SystemExit(f"unknown fast path {path!r}")
    assert _fast.ENABLED, "a fast path is measured against the others on"


def reply_frame(arr: Any) -> bytes:
    """An inference reply as the reference manager writes it (orjson, shortest float32)."""
    payload = {"status": "COMPLETED", "data": {"OUTPUT0": arr}, "model_name": "m"}
    frame = {"type": "inference", "uuid": "bench-uuid", "payload": payload}
    return orjson.dumps(frame, option=orjson.OPT_SERIALIZE_NUMPY)


# name -> (what it is, the fast paths it takes). A reply case is its frame decoded into its array,
# as `InferResult.as_numpy` does; `small` and `large` are the client benchmark's cases.
CASES: dict[str, tuple[str, tuple[str, ...]]] = {
    "small": ("reply FP32[16], decoded as FP32", ("frames.numbers", "floats", "dtypes")),
    "small-batched": ("reply FP32[1,16], decoded as FP32", ("frames.numbers", "floats")),
    "small-int": ("reply INT64[16], decoded as INT64", ("frames.numbers", "arrays")),
    "medium": ("reply FP32[2000], decoded as FP32", ("arrays",)),
    "large": ("reply FP32[262144], decoded as FP32", ("frames.cut", "arrays", "arrays.pieces")),
    "input": ("input FP32[16] encoded, no datatype given", ("encode",)),
}
ITERATIONS = {
    "small": 200,
    "small-batched": 200,
    "small-int": 200,
    "medium": 40,
    "large": 2,
    "input": 200,
}


def case_call(case: str) -> Callable[[], Any]:
    small = (np.arange(16, dtype=np.float32) - 7.5) / 3.0
    rng = np.random.default_rng(0)
    if case == "input":
        return partial(encode_input, "INPUT0", small)
    arrays = {
        "small": (small, "FP32"),
        "small-batched": (small.reshape(1, 16), "FP32"),
        "small-int": (np.arange(16, dtype=np.int64) * 1000, "INT64"),
        "medium": (rng.standard_normal(2000).astype(np.float32), "FP32"),
        "large": (rng.standard_normal(262_144).astype(np.float32), "FP32"),
    }
    arr, dtype = arrays[case]
    frame = reply_frame(arr)
    decoder = wire.ServerFrameDecoder()

    def decode() -> Any:
        reply = decoder.decode(frame)
        assert isinstance(reply, wire.InferenceReply)
        assert isinstance(reply.payload.data, dict)
        return decode_output(reply.payload.data["OUTPUT0"], dtype)

    assert np.array_equal(decode(), arr)
    return decode


def run_case(case: str, off: str, iterations: int) -> None:
    """The child process callgrind counts: only the calls inside `functools.reduce`."""
    if off:
        switch_off(off)
    call = case_call(case)
    call()  # warm: caches and tables filled
    # Collections then scan only what the calls allocate, not the whole heap of imports, whose
    # size would make the count depend on the order the cases happen to run in.
    gc.collect()
    gc.freeze()
    functools.reduce(lambda _, __: call(), range(iterations), None)


def instructions(case: str, off: str) -> int:
    """Instructions per call of `case` with fast path `off` off ("" none, "all" every one)."""
    iterations = ITERATIONS[case]
    out = Path(f"/tmp/anytcm-callgrind-{os.getpid()}.out")
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    env.pop("ANYTCM_NO_FAST_PATHS", None)
    if off == "all":
        env["ANYTCM_NO_FAST_PATHS"] = "1"
    command = [
        "valgrind", "--tool=callgrind", "--collect-atstart=no",
        "--toggle-collect=functools_reduce", f"--callgrind-out-file={out}",
        sys.executable, __file__, "--run-case", case,
        "--off", "" if off == "all" else off, "--iterations", str(iterations),
    ]  # fmt: skip
    subprocess.run(command, env=env, check=True, capture_output=True)
    try:
        for line in out.read_text().splitlines():
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1]) // iterations
    finally:
        out.unlink(missing_ok=True)
    raise RuntimeError("callgrind wrote no total")


def pieces_ms(repeat: int) -> tuple[float, float]:
    """Median ms to decode the large case's value, parsed in pieces and in one piece."""
    from anytcm._fast import arrays

    raw = orjson.dumps(
        np.random.default_rng(0).standard_normal(262_144).astype(np.float32),
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
    size = arrays._PIECE_BYTES
    timings: dict[int, list[float]] = {size: [], 1 << 62: []}
    for _ in range(repeat):
        for piece, times in timings.items():
            arrays._PIECE_BYTES = piece
            start = time.perf_counter()
            decode_output(raw, "FP32")
            times.append(time.perf_counter() - start)
    arrays._PIECE_BYTES = size
    on, off = (statistics.median(times) * 1e3 for times in timings.values())
    return on, off


def measure_fast_paths(repeat: int) -> dict[str, Any]:
    if shutil.which("valgrind") is None:
        raise SystemExit("--fast-paths counts instructions with valgrind: install it first")
    rows = []
    for case, (what, paths) in CASES.items():
        row: dict[str, Any] = {"case": case, "what": what, "on": instructions(case, "")}
        row["off"] = {path: instructions(case, path) for path in paths}
        row["all_off"] = instructions(case, "all")
        print(render_fast_row(row), flush=True)
        rows.append(row)
    on, off = pieces_ms(max(repeat, 5))
    return {"rows": rows, "pieces_ms": {"on": on, "off": off}}


def render_fast_row(row: dict[str, Any]) -> str:
    on = row["on"]
    offs = ", ".join(
        f"{path} off {count:,} ({count / on - 1:+.0%})" for path, count in row["off"].items()
    )
    return (
        f"| {row['case']} | {row['what']} | {on:,} | {offs} "
        f"| {row['all_off']:,} ({row['all_off'] / on - 1:+.0%}) |"
    )


def render_fast(result: dict[str, Any]) -> str:
    lines = [
        "## Instructions per call, fast paths on and off (callgrind)\n",
        "| case | what | all on | one off | all off |",
        "|---|---|---:|---|---:|",
    ]
    lines += [render_fast_row(row) for row in result["rows"]]
    on, off = result["pieces_ms"]["on"], result["pieces_ms"]["off"]
    lines += [
        "\n## Parsing in pieces, timed (large case's value, median ms)\n",
        "| in pieces | in one piece | one piece / pieces |",
        "|---:|---:|---:|",
        f"| {on:.1f} | {off:.1f} | {off / on:.2f}x |",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeat", type=int, default=11)
    parser.add_argument("--fast-paths", action="store_true", help="what each fast path is worth")
    parser.add_argument("--run-case", choices=list(CASES), help=argparse.SUPPRESS)
    parser.add_argument("--off", default="", help=argparse.SUPPRESS)
    parser.add_argument("--iterations", type=int, default=100, help=argparse.SUPPRESS)
    results_dir = Path(__file__).parent / "results"
    add_results_argument(parser, results_dir / "json_decode.json")
    args = parser.parse_args()
    if args.run_case:
        run_case(args.run_case, args.off, args.iterations)
        return
    if args.fast_paths:
        result = measure_fast_paths(args.repeat)
        results = args.results
        if results == results_dir / "json_decode.json":
            results = results_dir / "fast_paths.json"
        tables = render_fast(result)
        meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.platform()}
        save_results(results, {"meta": meta, **result}, tables)
        print("\n" + tables)
        return
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
