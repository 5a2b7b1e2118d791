"""Client benchmark: anytcm (asyncio, trio) vs the vendor SDK vs a minimal ceiling client.

One reference manager for the whole run; every client runs in its own subprocess so that its
`time.process_time()` covers that client only. See `benchmarks/README.md`.

Run: `/work/venv/bin/python benchmarks/run_client_bench.py [--quick] [--repeat 3]`.
Writes `benchmarks/results/client_bench.md` and `client_bench.json`.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _bench_common import LARGE_SIZE, proc_cpu_seconds  # noqa: E402

VENDOR_VENV = HERE / ".venv-vendor"
VENDOR_PYTHON = VENDOR_VENV / "bin" / "python"
VENDOR_REQUIREMENTS = ["tcm-client==2.0.0", "numpy", "orjson"]
RESULTS = HERE / "results"

# server CPU s per wall s at which the manager counts as saturated (one Python process, one GIL)
SERVER_SATURATED = 0.85
# cores used by foreign processes during a run that still counts as clean
OTHER_LOAD_CLEAN = 0.25


@dataclass(frozen=True)
class ClientSpec:
    label: str
    python: str
    script: str
    extra: tuple[str, ...] = ()
    scenarios: tuple[str, ...] = ("small", "large")
    count_scale: float = 1.0  # a slow client runs fewer requests (rates stay comparable)


@dataclass(frozen=True)
class Case:
    scenario: str  # small | large
    mode: str  # seq | conc
    connections: int
    count: int
    warmup: int


def clients(vendor: bool) -> list[ClientSpec]:
    py = sys.executable
    specs = [
        ClientSpec("anytcm[asyncio]", py, "anytcm_client.py", ("--backend", "asyncio")),
        ClientSpec("anytcm[trio]", py, "anytcm_client.py", ("--backend", "trio")),
        ClientSpec("ceiling", py, "ceiling_client.py"),
    ]
    if vendor:
        specs += [
            ClientSpec("tcm-client", str(VENDOR_PYTHON), "vendor_client.py"),
            ClientSpec(
                "tcm-client(max_size=None)",
                str(VENDOR_PYTHON),
                "vendor_client.py",
                ("--vendor-max-size", "none"),
                scenarios=("large",),
                count_scale=0.25,
            ),
        ]
    return specs


def cases(quick: bool) -> list[Case]:
    k = 5 if quick else 1
    return [
        Case("small", "seq", 1, 2000 // k, 200 // k),
        Case("small", "conc", 8, 4000 // k, 400 // k),
        Case("large", "seq", 1, 100 // k, 10 // k),
        Case("large", "conc", 8, 160 // k, 16 // k),
    ]


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
            return decode_output(bytes(data["OUTPUT0"]), "FP32")

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
        summary[(entry["scenario"], entry["mode"], entry["client"])] = entry["summary"]

    for case in data["cases"]:
        sc, mode = case["scenario"], case["mode"]
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

    out("\n## Reference manager CPU per scenario\n")
    out(
        "| scenario | mode | server CPU s (all clients, incl. warm-up) | wall s "
        "| max util in a timed run |"
    )
    out("|---|---|---:|---:|---:|")
    for sc_entry in data["server_cpu"]:
        out(
            f"| {sc_entry['scenario']} | {sc_entry['mode']} | {sc_entry['cpu_s']:.2f} "
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
    ) -> None:
        result = "n/a" if ok is None else ("PASS" if ok else "FAIL")
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
            saturated = util is not None and util >= SERVER_SATURATED
            note = (
                f"server util {util:.2f}" + (", manager saturated" if saturated else "")
                if util is not None
                else ""
            )
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


def write_report(data: dict[str, Any]) -> None:
    report, targets = build_report(data)
    data["targets"] = targets
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "client_bench.md").write_text(report)
    (RESULTS / "client_bench.json").write_text(json.dumps(data, indent=1))
    print(report)


# -- main --------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per client (median)")
    parser.add_argument("--quick", action="store_true", help="1/5 of the request counts")
    parser.add_argument("--no-vendor", action="store_true", help="skip the vendor SDK")
    parser.add_argument("--inference-workers", type=int, default=8)
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="re-render the report from results/client_bench.json without running anything",
    )
    parser.add_argument("--only", default="", help="comma-separated scenarios: small,large")
    args = parser.parse_args()

    if args.report_only:
        saved: dict[str, Any] = json.loads((RESULTS / "client_bench.json").read_text())
        for entry in saved["results"]:
            entry["summary"] = summarize(entry["raw"])
        write_report(saved)
        return 0

    from anytcm.testing import ReferenceManager

    vendor = not args.no_vendor
    vendor_error = ensure_vendor_venv() if vendor else None
    if vendor_error:
        print(f"vendor SDK unavailable, skipped: {vendor_error}", file=sys.stderr)
        vendor = False

    server_args = ["--workers", f"inference={args.inference_workers}"]
    selected = [c for c in cases(args.quick) if not args.only or c.scenario in args.only.split(",")]
    specs = clients(vendor)
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
            active = [s for s in specs if case.scenario in s.scenarios]
            records: dict[str, dict[str, Any]] = {}
            # Repeats are interleaved (A B C D, A B C D, ...) so that a burst of foreign load
            # on the machine does not land on one client's runs only.
            for rep in range(args.repeat):
                for spec in active:
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
                        f"  {case.scenario:5} {case.mode:4} #{rep + 1} {spec.label:26} "
                        f"{time.perf_counter() - t0:5.1f} s  {status}",
                        file=sys.stderr,
                    )
            utils: list[float] = []
            for spec in active:
                record = records[spec.label]
                summary = summarize(record)
                if summary.get("server_util") is not None:
                    utils.append(summary["server_util"])
                data["results"].append(
                    {
                        "scenario": case.scenario,
                        "mode": case.mode,
                        "client": spec.label,
                        "summary": summary,
                        "raw": record,
                    }
                )
            data["server_cpu"].append(
                {
                    "scenario": case.scenario,
                    "mode": case.mode,
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

    write_report(data)
    print(
        f"(written to {RESULTS}/client_bench.md and .json; {data['meta']['elapsed_s']:.0f} s)",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
