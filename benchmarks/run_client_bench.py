"""Client benchmark: anytcm (asyncio, trio) vs the vendor SDK vs a minimal ceiling client.

One reference manager for the whole run; every client runs in its own subprocess so that its
`time.process_time()` covers that client only. See `benchmarks/README.md`.

Run: `/work/venv/bin/python benchmarks/run_client_bench.py [--quick] [--repeat 3]`; add
`--only small,large,out,in` for the tensor-size sweeps too. Writes
`benchmarks/results/client_bench.md` and `client_bench.json` (`--results` moves them).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import timeit
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _bench_common import (  # noqa: E402
    LARGE_SIZE,
    SCENARIOS,
    SMALL_SIZE,
    add_results_argument,
    proc_cpu_seconds,
    save_results,
)

VENDOR_VENV = HERE / ".venv-vendor"
VENDOR_PYTHON = VENDOR_VENV / "bin" / "python"
VENDOR_REQUIREMENTS = ["tcm-client==2.0.0", "numpy", "orjson"]
RESULTS = HERE / "results"

# server CPU s per wall s at which the manager counts as saturated (one Python process, one GIL)
SERVER_SATURATED = 0.85
# cores used by foreign processes during a run that still counts as clean
OTHER_LOAD_CLEAN = 0.25
# FP32 tensor sizes (bytes) of the sweeps: 64 B to 4 MiB, x16 a step. With the sweep's sparse
# inputs, JSON requests fit the 64 KiB frame cap up to 16 KiB and zstd ones up to 1 MiB.
SWEEP_BYTES = (64, 1 << 10, 16 << 10, 256 << 10, 1 << 20, 4 << 20)
# Tensor bytes one timed run of a sweep point moves (fewer requests for bigger tensors), so
# that a run takes ~1-2 s with the fastest client: JSON replies decode at ~30-40 MB/s, inputs
# through shared memory go at ~1 GB/s.
SWEEP_RUN_BYTES = {"out": 48 << 20, "in": 512 << 20}
SWEEP_MAX_COUNT = 1000
SWEEP_MIN_COUNT = 12
DEFAULT_SCENARIOS = "small,large"


@dataclass(frozen=True)
class ClientSpec:
    label: str
    python: str
    script: str
    extra: tuple[str, ...] = ()
    scenarios: tuple[str, ...] = SCENARIOS
    count_scale: float = 1.0  # a slow client runs fewer requests (rates stay comparable)
    min_size: int = 0  # runs only in cases whose tensor has at least this many elements

    def runs(self, case: Case) -> bool:
        return case.scenario in self.scenarios and case.size >= self.min_size


@dataclass(frozen=True)
class Case:
    scenario: str  # small | large | out | in (the sweeps)
    mode: str  # seq | conc
    connections: int
    count: int
    warmup: int
    size: int  # FP32 elements of the tensor that scales (small: the input; others: see workload)

    @property
    def sweep(self) -> bool:
        return self.scenario in ("out", "in")


def clients(vendor: bool, carriers: Sequence[str]) -> list[ClientSpec]:
    """The clients; `carriers` are anytcm's carriers measured in the input sweep."""
    py = sys.executable
    fixed_and_out = ("small", "large", "out")
    specs = [
        ClientSpec("anytcm[asyncio]", py, "anytcm_client.py", ("--backend", "asyncio"),
                   scenarios=fixed_and_out),
        ClientSpec("anytcm[trio]", py, "anytcm_client.py", ("--backend", "trio"),
                   scenarios=fixed_and_out),
    ]  # fmt: skip
    # The input sweep compares carriers, on one backend (the backends differ elsewhere).
    specs += [
        ClientSpec(f"anytcm[asyncio] {name}", py, "anytcm_client.py",
                   ("--backend", "asyncio", "--carrier", name), scenarios=("in",))
        for name in carriers
    ]  # fmt: skip
    specs.append(ClientSpec("ceiling", py, "ceiling_client.py"))
    if vendor:
        specs += [
            ClientSpec("tcm-client", str(VENDOR_PYTHON), "vendor_client.py"),
            # The SDK's 1 MiB max_size refuses the JSON of an FP32 [262144] reply (~2.8 MB):
            # the patched SDK gives a figure from there on.
            ClientSpec(
                "tcm-client(max_size=None)",
                str(VENDOR_PYTHON),
                "vendor_client.py",
                ("--vendor-max-size", "none"),
                scenarios=("large", "out"),
                count_scale=0.25,
                min_size=LARGE_SIZE,
            ),
        ]
    return specs


def sweep_count(scenario: str, nbytes: int) -> int:
    """Requests per timed run of a sweep point: SWEEP_RUN_BYTES of tensor data, within bounds."""
    return max(SWEEP_MIN_COUNT, min(SWEEP_MAX_COUNT, SWEEP_RUN_BYTES[scenario] // nbytes))


def cases(quick: bool, sweep_bytes: tuple[int, ...] = SWEEP_BYTES) -> list[Case]:
    k = 5 if quick else 1
    fixed = [
        Case("small", "seq", 1, 2000 // k, 200 // k, SMALL_SIZE),
        Case("small", "conc", 8, 4000 // k, 400 // k, SMALL_SIZE),
        Case("large", "seq", 1, 100 // k, 10 // k, LARGE_SIZE),
        Case("large", "conc", 8, 160 // k, 16 // k, LARGE_SIZE),
    ]
    sweeps = []
    for scenario in ("out", "in"):
        for nbytes in sweep_bytes:
            count = max(1, sweep_count(scenario, nbytes) // k)
            sweeps.append(Case(scenario, "seq", 1, count, max(2, count // 10), nbytes // 4))
    return fixed + sweeps


# -- vendor venv -------------------------------------------------------------------------------


def ensure_vendor_venv() -> str | None:
    """Create benchmarks/.venv-vendor with tcm-client 2.0.0 if needed; returns an error or None."""
    probe = "import tcm_client, numpy, orjson; print(tcm_client.__version__)"
    if VENDOR_PYTHON.exists():
        done = subprocess.run(
            [str(VENDOR_PYTHON), "-c", probe], check=False, capture_output=True, text=True
        )
        if done.returncode == 0 and done.stdout.strip() == "2.0.0":
            return None
    print(f"creating {VENDOR_VENV} (tcm-client 2.0.0) ...", file=sys.stderr)
    steps = [
        [sys.executable, "-m", "venv", "--clear", str(VENDOR_VENV)],
        [str(VENDOR_PYTHON), "-m", "pip", "install", "-q", *VENDOR_REQUIREMENTS],
    ]
    for step in steps:
        done = subprocess.run(step, check=False, capture_output=True, text=True)
        if done.returncode != 0:
            return f"{' '.join(step)} failed:\n{done.stderr[-2000:]}"
    return None


# -- running clients ---------------------------------------------------------------------------


def run_client(
    spec: ClientSpec, case: Case, url: str, server_pid: int, repeat: int
) -> dict[str, Any]:
    command = [
        spec.python,
        str(HERE / spec.script),
        "--url", url,
        "--scenario", case.scenario,
        "--size", str(case.size),
        "--connections", str(case.connections),
        "--count", str(max(1, int(case.count * spec.count_scale))),
        "--warmup", str(max(1, int(case.warmup * spec.count_scale))),
        "--repeat", str(repeat),
        "--server-pid", str(server_pid),
        *spec.extra,
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(HERE))
    try:
        done = subprocess.run(
            command, check=False, capture_output=True, text=True, timeout=240, env=env
        )
    except subprocess.TimeoutExpired as exc:
        return {"client": spec.label, "runs": [], "error": f"timed out after {exc.timeout} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = done.stderr.strip().splitlines()[-6:]
        return {
            "client": spec.label,
            "runs": [],
            "error": f"exit {done.returncode}: " + " | ".join(tail),
        }
    record: dict[str, Any] = json.loads(lines[-1])
    record["client"] = spec.label
    if done.stderr.strip():
        record["stderr_tail"] = done.stderr.strip().splitlines()[-10:]
    return record


def median_of(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def summarize(record: dict[str, Any]) -> dict[str, Any]:
    """Medians over the runs; runs with foreign load on the machine are left out when at least
    one clean run exists (other people's jobs on a 2-core box skew req/s and latency)."""
    all_runs = record.get("runs") or []
    clean = [r for r in all_runs if (r.get("other_util") or 0.0) < OTHER_LOAD_CLEAN]
    runs = clean or all_runs
    keys = (
        "rps",
        "p50_ms",
        "p99_ms",
        "cpu_ms_per_req",
        "server_cpu_ms_per_req",
        "server_util",
        "other_util",
    )
    out: dict[str, Any] = {k: median_of(runs, k) for k in keys}
    if runs:
        out["client_util"] = statistics.median(r["cpu_s"] / r["wall_s"] for r in runs)
    else:
        out["client_util"] = None
    out["error"] = record.get("error")
    out["runs_used"] = f"{len(runs)}/{len(all_runs)}"
    return out


# -- decode micro-benchmark --------------------------------------------------------------------


def fetch_frame(url: str, model: str, inputs: list[dict[str, Any]]) -> bytes:
    import orjson
    from websockets.sync.client import connect

    with connect(url, compression=None, max_size=None) as ws:
        uid = f"bench-decode-{os.getpid()}"
        ws.send(orjson.dumps({"uuid": uid, "type": "auth", "payload": {}}), text=True)
        ws.recv()
        frame = {
            "uuid": uid,
            "type": "inference",
            "payload": {
                "vm_ip": "127.0.0.1",
                "container_id": "ref-0",
                "model_name": model,
                "request": {"inputs": inputs},
            },
        }
        ws.send(orjson.dumps(frame), text=True)
        while True:
            data = ws.recv(decode=False)
            assert isinstance(data, bytes)
            if orjson.loads(data).get("type") == "inference":
                return data


def decode_bench(url: str) -> list[dict[str, Any]]:
    """Whole reply frame -> float32 ndarray: anytcm's path vs orjson + numpy.asarray."""
    import numpy as np
    import orjson

    from anytcm import wire
    from anytcm.tensors import decode_output

    frames = {
        "small (FP32[16])": fetch_frame(
            url,
            "double",
            [{"name": "INPUT0", "shape": [16], "datatype": "FP32", "data": [0.1] * 16}],
        ),
        f"large (FP32[{LARGE_SIZE}])": fetch_frame(
            url,
            "generate",
            [{"name": "SIZE", "shape": [1], "datatype": "INT64", "data": [LARGE_SIZE]}],
        ),
    }
    decoder = wire.ServerFrameDecoder()
    rows = []
    for label, frame in frames.items():

        def baseline(frame: bytes = frame) -> Any:
            return np.asarray(orjson.loads(frame)["payload"]["data"]["OUTPUT0"], dtype=np.float32)

        def anytcm_path(frame: bytes = frame) -> Any:
            reply = decoder.decode(frame)
            assert isinstance(reply, wire.InferenceReply)
            data = reply.payload.data
            assert isinstance(data, dict)
            return decode_output(data["OUTPUT0"], "FP32")  # as InferResult.as_numpy does

        if not np.array_equal(baseline(), anytcm_path()):
            raise AssertionError(f"decode mismatch for {label}")
        number = 2000 if "small" in label else 5
        times = {}
        for name, fn in (("orjson+asarray", baseline), ("anytcm", anytcm_path)):
            samples = timeit.repeat(fn, number=number, repeat=7)
            times[name] = min(samples) / number * 1e3
        rows.append(
            {
                "output": label,
                "frame_bytes": len(frame),
                "baseline_ms": times["orjson+asarray"],
                "anytcm_ms": times["anytcm"],
                "speedup": times["orjson+asarray"] / times["anytcm"],
            }
        )
    return rows


# -- report ------------------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "—"
    return f"{value:.{digits}f}"


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "—"
    return f"{a / b:.2f}x"


def build_report(data: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    lines: list[str] = []
    out = lines.append
    meta = data["meta"]
    out("# anytcm client benchmark\n")
    out(
        f"{meta['date']} · {meta['machine']} · {meta['cpus']} CPUs · Python {meta['python']} · "
        f"reference manager `{' '.join(meta['server_args'])}` · median of {meta['repeat']} runs\n"
    )
    out(
        "req/s, p50/p99 latency (ms), client CPU ms per request (`time.process_time` in the "
        "client process), the manager's CPU ms per request and its CPU utilisation (CPU s / wall "
        "s; ~1.0 = one core busy = saturated, it is one Python process), the client's own CPU "
        "utilisation, and *other load*: CPU cores used by everything else on the machine during "
        "the timed run (other people's jobs; it skews req/s and latency, much less CPU/req). "
        "Medians over the runs with other load < 0.25 cores when there is one (*runs used*). "
        "Ratios: CPU columns "
        "are *client CPU / other's client CPU* (lower is better), req/s columns are *req/s / "
        "other's req/s* (higher is better). vs tcm-client compares the same mode.\n"
    )
    summary: dict[tuple[str, str, str], dict[str, Any]] = {}
    for entry in data["results"]:
        if entry["scenario"] in ("small", "large"):
            summary[(entry["scenario"], entry["mode"], entry["client"])] = entry["summary"]

    for case in data["cases"]:
        sc, mode = case["scenario"], case["mode"]
        if sc not in ("small", "large"):
            continue
        title = (
            "small: `double` FP32[16]" if sc == "small" else f"large: `generate` FP32[{LARGE_SIZE}]"
        )
        how = (
            "sequential, 1 connection"
            if mode == "seq"
            else f"concurrent, {case['connections']} connections"
        )
        out(f"\n## {title} — {how} ({case['count']} requests per run)\n")
        out(
            "| client | req/s | p50 ms | p99 ms | CPU ms/req | CPU vs tcm-client | "
            "CPU vs ceiling | req/s vs tcm-client | req/s vs ceiling | server CPU ms/req | "
            "server util | client util | other load | runs used |"
        )
        out("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        vendor = summary.get((sc, mode, "tcm-client"), {})
        if sc == "large" and (vendor.get("error") or vendor.get("rps") is None):
            vendor = summary.get((sc, mode, "tcm-client(max_size=None)"), {})
        ceiling = summary.get((sc, mode, "ceiling"), {})
        for (s, m, label), row in summary.items():
            if (s, m) != (sc, mode):
                continue
            if row.get("error"):
                out(f"| {label} | **failed**: {row['error'][:160]} |" + " |" * 12)
                continue
            out(
                f"| {label} | {fmt(row['rps'], 0)} | {fmt(row['p50_ms'])} | {fmt(row['p99_ms'])} "
                f"| {fmt(row['cpu_ms_per_req'])} "
                f"| {ratio(row['cpu_ms_per_req'], vendor.get('cpu_ms_per_req'))} "
                f"| {ratio(row['cpu_ms_per_req'], ceiling.get('cpu_ms_per_req'))} "
                f"| {ratio(row['rps'], vendor.get('rps'))} "
                f"| {ratio(row['rps'], ceiling.get('rps'))} "
                f"| {fmt(row['server_cpu_ms_per_req'])} | {fmt(row['server_util'], 2)} "
                f"| {fmt(row['client_util'], 2)} | {fmt(row['other_util'], 2)} "
                f"| {row['runs_used']} |"
            )
        if sc == "large":
            out(
                "\n(In the large case the CPU/req-s ratios vs tcm-client use "
                "`tcm-client(max_size=None)` when the SDK as shipped fails.)"
            )

    lines.extend(sweep_report(data))

    out("\n## Reference manager CPU per scenario\n")
    out(
        "| scenario | mode | server CPU s (all clients, incl. warm-up) | wall s "
        "| max util in a timed run |"
    )
    out("|---|---|---:|---:|---:|")
    for sc_entry in data["server_cpu"]:
        where = sc_entry["scenario"]
        if where in ("out", "in"):
            where += f" {fmt_bytes(4 * sc_entry['size'])}"
        out(
            f"| {where} | {sc_entry['mode']} | {sc_entry['cpu_s']:.2f} "
            f"| {sc_entry['wall_s']:.1f} | {fmt(sc_entry['max_util'], 2)} |"
        )

    if data.get("decode"):
        out("\n## Decoding a reply frame into a float32 ndarray (min of 7 repeats)\n")
        out("| output | frame bytes | orjson + np.asarray ms | anytcm ms | speed-up |")
        out("|---|---:|---:|---:|---:|")
        for row in data["decode"]:
            out(
                f"| {row['output']} | {row['frame_bytes']:,} | {row['baseline_ms']:.4f} "
                f"| {row['anytcm_ms']:.4f} | {row['speedup']:.2f}x |"
            )

    targets = evaluate_targets(summary, data.get("decode") or [])
    out("\n## Targets\n")
    out("| target | client | scenario | value | limit | result |")
    out("|---|---|---|---:|---:|---|")
    for t in targets:
        out(
            f"| {t['target']} | {t['client']} | {t['scenario']} | {t['value']} | {t['limit']} "
            f"| {t['result']} |"
        )
    return "\n".join(lines) + "\n", targets


SWEEP_TITLES = {
    "out": (
        "Tensor-size sweep, outputs: `generate`, request SIZE INT64[1], reply OUTPUT0 FP32[n] "
        "(JSON, the only way outputs travel)"
    ),
    "in": (
        "Tensor-size sweep, inputs: `checksum`, request INPUT0 FP32[n] (1% non-zero) by carrier, "
        "reply OUTPUT0 FP64[1]"
    ),
}


def fmt_bytes(nbytes: int) -> str:
    """64 B, 16 KiB, 4 MiB: the sweep's sizes are powers of two."""
    for unit, shift in (("MiB", 20), ("KiB", 10)):
        if nbytes >= 1 << shift and nbytes % (1 << shift) == 0:
            return f"{nbytes >> shift} {unit}"
    return f"{nbytes} B"


def brief(error: str, limit: int = 110) -> str:
    """The head of an error message, fit for a table cell."""
    head = error.split("; ")[0].replace("|", "/")  # websockets: "sent 1009 (...); no close..."
    return head if len(head) <= limit else head[: limit - 1] + "…"


def sweep_points(data: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per sweep scenario, tensor size and client, in run order: `scenario`, `bytes`
    (FP32 tensor bytes), `client`, `requests` (per timed run) and the client's `summary`."""
    rows = []
    for entry in data["results"]:
        if entry["scenario"] not in ("out", "in"):
            continue
        runs = entry["raw"].get("runs") or [{}]
        rows.append(
            {
                "scenario": entry["scenario"],
                "bytes": 4 * entry["size"],
                "client": entry["client"],
                "requests": runs[0].get("requests"),
                "summary": entry["summary"],
            }
        )
    return rows


def sweep_reference(rows: list[dict[str, Any]], label: str) -> dict[str, Any]:
    """The summary of client `label` among one size's rows; for tcm-client, the patched SDK's
    when the SDK as shipped failed (as in the large case)."""
    by_client = {r["client"]: r["summary"] for r in rows}
    found = by_client.get(label) or {}
    if label == "tcm-client" and (found.get("error") or found.get("rps") is None):
        found = by_client.get("tcm-client(max_size=None)") or found
    return {} if found.get("error") else found


def sweep_report(data: dict[str, Any]) -> list[str]:
    """Markdown tables of the sweeps: per size and client, rate, throughput, latency, CPU and
    the ratios to tcm-client and to the ceiling client at the same size."""
    points = sweep_points(data)
    lines: list[str] = []
    for scenario, title in SWEEP_TITLES.items():
        rows = [r for r in points if r["scenario"] == scenario]
        if not rows:
            continue
        lines.append(f"\n## {title} — sequential, 1 connection\n")
        lines.append(
            "| size | client | req/run | req/s | MB/s | p50 ms | p99 ms | CPU ms/req "
            "| CPU vs tcm-client | CPU vs ceiling | req/s vs tcm-client | req/s vs ceiling "
            "| server CPU ms/req | other load | runs used |"
        )
        lines.append("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for nbytes in sorted({r["bytes"] for r in rows}):
            same_size = [r for r in rows if r["bytes"] == nbytes]
            vendor = sweep_reference(same_size, "tcm-client")
            ceiling = sweep_reference(same_size, "ceiling")
            for r in same_size:
                row = r["summary"]
                head = f"| {fmt_bytes(nbytes)} | {r['client']} "
                if row.get("error"):
                    lines.append(head + f"| failed: {brief(row['error'])} |" + " |" * 12)
                    continue
                mb_s = row["rps"] * nbytes / 1e6 if row["rps"] is not None else None
                lines.append(
                    head + f"| {r['requests']} | {fmt(row['rps'], 0)} | {fmt(mb_s, 1)} "
                    f"| {fmt(row['p50_ms'])} | {fmt(row['p99_ms'])} "
                    f"| {fmt(row['cpu_ms_per_req'])} "
                    f"| {ratio(row['cpu_ms_per_req'], vendor.get('cpu_ms_per_req'))} "
                    f"| {ratio(row['cpu_ms_per_req'], ceiling.get('cpu_ms_per_req'))} "
                    f"| {ratio(row['rps'], vendor.get('rps'))} "
                    f"| {ratio(row['rps'], ceiling.get('rps'))} "
                    f"| {fmt(row['server_cpu_ms_per_req'])} | {fmt(row['other_util'], 2)} "
                    f"| {row['runs_used']} |"
                )
    if points:
        lines.append(
            "\nMB/s = req/s times the tensor's bytes (the FP32 tensor of the size column, not "
            "the JSON around it) / 10^6. Ratios compare clients at the same size; tcm-client "
            "ratios use `tcm-client(max_size=None)` where the SDK as shipped fails. In the "
            "input sweep, ceiling and tcm-client send JSON; a *failed* row over 16 KiB is a "
            "request over the manager's 64 KiB frame cap (anytcm refuses it unsent: "
            "`PayloadTooLarge`; the others send it and the manager closes the connection with "
            "1009)."
        )
    return lines


def evaluate_targets(
    summary: dict[tuple[str, str, str], dict[str, Any]], decode: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    targets: list[dict[str, Any]] = []

    def add(
        target: str,
        client: str,
        scenario: str,
        value: str,
        limit: str,
        ok: bool | None,
        note: str = "",
        *,
        waived: bool = False,
    ) -> None:
        result = "n/a" if ok is None else ("PASS" if ok else ("WAIVED" if waived else "FAIL"))
        targets.append(
            {
                "target": target,
                "client": client,
                "scenario": scenario,
                "value": value,
                "limit": limit,
                "result": result + (f" ({note})" if note else ""),
            }
        )

    def get(sc: str, mode: str, client: str, key: str) -> float | None:
        row = summary.get((sc, mode, client)) or {}
        value = row.get(key)
        return value if not row.get("error") else None

    def vendor_label(sc: str, mode: str) -> str:
        if sc == "large" and get(sc, mode, "tcm-client", "rps") is None:
            return "tcm-client(max_size=None)"
        return "tcm-client"

    for client in ("anytcm[asyncio]", "anytcm[trio]"):
        for sc in ("small", "large"):
            for mode in ("seq", "conc"):
                where = f"{sc} {mode}"
                cpu = get(sc, mode, client, "cpu_ms_per_req")
                vlabel = vendor_label(sc, mode)
                vcpu = get(sc, mode, vlabel, "cpu_ms_per_req")
                ccpu = get(sc, mode, "ceiling", "cpu_ms_per_req")
                if cpu is not None and vcpu is not None:
                    add(
                        "CPU/req ≤ ½ tcm-client",
                        client,
                        where,
                        f"{cpu:.3f} ms",
                        f"{vcpu / 2:.3f} ms ({vlabel})",
                        cpu <= vcpu / 2,
                    )
                elif cpu is not None:
                    add("CPU/req ≤ ½ tcm-client", client, where, fmt(cpu), "—", None)
                if cpu is not None and ccpu is not None:
                    add(
                        "CPU/req ≤ ceiling",
                        client,
                        where,
                        f"{cpu:.3f} ms",
                        f"{ccpu:.3f} ms",
                        cpu <= ccpu,
                    )
            rps = get(sc, "conc", client, "rps")
            util = get(sc, "conc", client, "server_util")
            server_cpu = get(sc, "conc", client, "server_cpu_ms_per_req")
            # The issue's rule: the throughput targets hold "unless the reference manager
            # saturates first (then show its CPU figures)". A miss while it is saturated is
            # reported as WAIVED with those figures, never as a PASS.
            saturated = util is not None and util >= SERVER_SATURATED
            note = ""
            if util is not None:
                note = f"server util {util:.2f}"
                if saturated:
                    note += f", manager saturated at {fmt(server_cpu)} ms CPU/req"
            crps = get(sc, "conc", "ceiling", "rps")
            if rps is not None and crps is not None:
                add(
                    "pool=8 req/s ≥ 0.9x ceiling(8)",
                    client,
                    f"{sc} conc",
                    f"{rps:.0f}",
                    f"{0.9 * crps:.0f}",
                    rps >= 0.9 * crps,
                    note,
                    waived=saturated,
                )
            vlabel = vendor_label(sc, "seq")
            vrps = get(sc, "seq", vlabel, "rps")
            if rps is not None and vrps is not None:
                add(
                    "pool=8 req/s ≥ 4x tcm-client seq",
                    client,
                    f"{sc} conc",
                    f"{rps:.0f}",
                    f"{4 * vrps:.0f} ({vlabel})",
                    rps >= 4 * vrps,
                    note,
                    waived=saturated,
                )
    for row in decode:
        add(
            "decode ≥ orjson+asarray speed",
            "anytcm",
            row["output"],
            f"{row['anytcm_ms']:.4f} ms",
            f"{row['baseline_ms']:.4f} ms",
            row["anytcm_ms"] <= row["baseline_ms"],
        )
    return targets


def write_report(data: dict[str, Any], results: Path) -> None:
    """Writes the JSON (every raw figure) to `results` and the Markdown report beside it."""
    report, targets = build_report(data)
    data["targets"] = targets
    save_results(results, data, report)
    print(report)


def load_results(results: Path) -> dict[str, Any]:
    """A saved run, its summaries recomputed from the raw figures (the rules may have changed)."""
    saved: dict[str, Any] = json.loads(results.read_text())
    for entry in saved["results"]:
        entry["summary"] = summarize(entry["raw"])
    return saved


# -- main --------------------------------------------------------------------------------------


def run_case(
    case: Case, specs: list[ClientSpec], url: str, pid: int, repeat: int
) -> dict[str, dict[str, Any]]:
    """Every client of `case`, `repeat` rounds; returns each client's runs merged (by label).

    Rounds are interleaved (A B C D, A B C D, ...) so that a burst of foreign load on the
    machine does not land on one client's runs only. A client that failed without a single run
    is not started again: here that is deterministic (a request over the frame cap, a reply
    over the SDK's max_size).
    """
    records: dict[str, dict[str, Any]] = {}
    where = f"{case.scenario} {fmt_bytes(4 * case.size)}" if case.sweep else case.scenario
    for rep in range(repeat):
        for spec in specs:
            merged = records.get(spec.label)
            if merged is not None and merged.get("error") and not merged["runs"]:
                continue
            t0 = time.perf_counter()
            record = run_client(spec, case, url, pid, 1)
            merged = records.setdefault(spec.label, {**record, "runs": []})
            merged["runs"].extend(record.get("runs") or [])
            if record.get("error") and not merged.get("error"):
                merged["error"] = record["error"]
            run = (record.get("runs") or [None])[0]
            status = record.get("error") or (
                f"{run['rps']:.0f} req/s, {run['cpu_ms_per_req']:.3f} CPU ms/req, "
                f"server util {fmt(run['server_util'], 2)}, "
                f"other load {fmt(run['other_util'], 2)}"
            )
            print(
                f"  {where:12} {case.mode:4} #{rep + 1} {spec.label:26} "
                f"{time.perf_counter() - t0:5.1f} s  {status[:150]}",
                file=sys.stderr,
            )
    return records


def parse_sizes(text: str) -> tuple[int, ...]:
    """`--sizes 64,1024`: a subset of the sweep's sizes, in bytes; ValueError otherwise."""
    sizes = tuple(int(part) for part in text.split(",") if part.strip())
    unknown = [n for n in sizes if n not in SWEEP_BYTES]
    if unknown:
        raise ValueError(f"{unknown} not among the sweep's sizes {list(SWEEP_BYTES)}")
    return sizes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per client (median)")
    parser.add_argument("--quick", action="store_true", help="1/5 of the request counts")
    parser.add_argument("--no-vendor", action="store_true", help="skip the vendor SDK")
    parser.add_argument("--inference-workers", type=int, default=8)
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="re-render the report from the results JSON without running anything",
    )
    parser.add_argument(
        "--only",
        default=DEFAULT_SCENARIOS,
        help="comma-separated scenarios among small,large,out,in (out, in: the tensor-size "
        f"sweeps); default {DEFAULT_SCENARIOS}",
    )
    parser.add_argument(
        "--sizes",
        default=",".join(map(str, SWEEP_BYTES)),
        help="comma-separated tensor sizes in bytes of the sweeps (a subset of the default)",
    )
    add_results_argument(parser, RESULTS / "client_bench.json")
    args = parser.parse_args()

    if args.report_only:
        write_report(load_results(args.results), args.results)
        return 0

    scenarios = [name for name in args.only.split(",") if name]
    unknown = sorted(set(scenarios) - set(SCENARIOS))
    if unknown:
        parser.error(f"--only: unknown scenarios {unknown}; choose among {', '.join(SCENARIOS)}")
    try:
        sizes = parse_sizes(args.sizes)
    except ValueError as exc:
        parser.error(f"--sizes: {exc}")

    from anytcm.plugins import carrier_names
    from anytcm.testing import ReferenceManager

    vendor = not args.no_vendor
    vendor_error = ensure_vendor_venv() if vendor else None
    if vendor_error:
        print(f"vendor SDK unavailable, skipped: {vendor_error}", file=sys.stderr)
        vendor = False

    server_args = ["--workers", f"inference={args.inference_workers}"]
    carriers = [name for name in ("json", "shm", "zstd") if name in carrier_names()]
    if "in" in scenarios and "zstd" in carriers:
        server_args += ["--capability", "zstd"]  # the manager accepts zstd items only then
    selected = [c for c in cases(args.quick, sizes) if c.scenario in scenarios]
    specs = clients(vendor, carriers)
    data: dict[str, Any] = {
        "meta": {
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "machine": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "server_args": server_args,
            "repeat": args.repeat,
            "vendor_error": vendor_error,
        },
        "cases": [c.__dict__ for c in selected],
        "results": [],
        "server_cpu": [],
    }
    started = time.perf_counter()
    with ReferenceManager(extra_args=server_args) as manager:
        pid = manager.pid
        assert pid is not None
        url = manager.ws_url
        print(f"reference manager {url} (pid {pid})", file=sys.stderr)
        for case in selected:
            cpu0, wall0 = proc_cpu_seconds(pid), time.perf_counter()
            active = [s for s in specs if s.runs(case)]
            records = run_case(case, active, url, pid, args.repeat)
            utils: list[float] = []
            for spec in active:
                summary = summarize(records[spec.label])
                if summary.get("server_util") is not None:
                    utils.append(summary["server_util"])
                data["results"].append(
                    {
                        "scenario": case.scenario,
                        "mode": case.mode,
                        "size": case.size,
                        "client": spec.label,
                        "summary": summary,
                        "raw": records[spec.label],
                    }
                )
            data["server_cpu"].append(
                {
                    "scenario": case.scenario,
                    "mode": case.mode,
                    "size": case.size,
                    "cpu_s": proc_cpu_seconds(pid) - cpu0,
                    "wall_s": time.perf_counter() - wall0,
                    "max_util": max(utils) if utils else None,
                }
            )
        try:
            data["decode"] = decode_bench(url)
        except Exception as exc:  # noqa: BLE001 - the table is still worth having
            data["decode_error"] = f"{type(exc).__name__}: {exc}"
            print(f"decode benchmark failed: {exc}", file=sys.stderr)
    data["meta"]["elapsed_s"] = time.perf_counter() - started

    write_report(data, args.results)
    print(
        f"(written to {args.results} and .md; {data['meta']['elapsed_s']:.0f} s)",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
