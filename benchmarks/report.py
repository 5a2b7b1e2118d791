"""Every benchmark of the project in one go, then one report: `results/report.md` + `report.png`.

Runs, one after the other, each in its own process with its own reference manager:

1. `run_client_bench.py --only small,large,out,in`: anytcm (asyncio, trio) vs the vendor SDK
   tcm-client vs the ceiling client, in the fixed cases (small, large; sequential and 8
   connections) and the tensor-size sweeps (outputs and inputs by carrier, 64 B to 4 MiB);
2. `bench_carriers.py`: the input path by carrier (json, shm, zstd) against a plain memcpy;
3. `bench_json_decode.py`: anytcm's JSON tensor codec against orjson + numpy;
4. `bench_managers.py`: several managers: throughput over 1, 2 and 3, failover, rolling restart.

Each writes its figures as JSON into `results/report-data/` (and its own Markdown beside them);
this script then renders `results/report.md` (the ratio tables) and `results/report.png` (the
chart: throughput, latency and client CPU by carrier and tensor size). `--render-only` renders
from the JSON already there, running nothing.

Run: `nox -s bench` (a fresh venv with everything needed), or with the project's venv
`python benchmarks/report.py [--quick] [--render-only]`. See `benchmarks/README.md`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run_client_bench import (  # noqa: E402
    DEFAULT_SCENARIOS,
    OTHER_LOAD_CLEAN,
    SWEEP_BYTES,
    build_report,
    fmt_bytes,
    load_results,
    sweep_points,
)

RESULTS = HERE / "results"
DATA = RESULTS / "report-data"
BENCHMARKS = ("clients", "carriers", "json-decode", "managers")
ALL_SCENARIOS = "small,large,out,in"
FRAME_CAP = 64 * 1024


@dataclass(frozen=True)
class Benchmark:
    """One benchmark script and the JSON file it writes into the data folder."""

    name: str
    script: str
    data_file: str

    def command(self, args: argparse.Namespace, data: Path) -> list[str]:
        command = [sys.executable, str(HERE / self.script), "--results", str(data / self.data_file)]
        if self.name == "clients":
            command += ["--only", args.scenarios, "--repeat", str(args.repeat)]
            if args.sizes:
                command += ["--sizes", args.sizes]
            if args.no_vendor:
                command.append("--no-vendor")
            if args.quick:
                command.append("--quick")
        elif self.name in ("carriers", "managers"):
            command += ["--quick"] if args.quick else []
        elif args.quick:  # json-decode
            command += ["--repeat", "3"]
        return command


SCRIPTS = {
    b.name: b
    for b in (
        Benchmark("clients", "run_client_bench.py", "clients.json"),
        Benchmark("carriers", "bench_carriers.py", "carriers.json"),
        Benchmark("json-decode", "bench_json_decode.py", "json_decode.json"),
        Benchmark("managers", "bench_managers.py", "managers.json"),
    )
}


# -- running -----------------------------------------------------------------------------------


def run_benchmarks(args: argparse.Namespace, names: list[str], data: Path) -> list[dict[str, Any]]:
    """Runs the benchmarks one after the other (each would skew the others' timings), their
    output going to stderr as progress; returns what ran, how long it took and how it ended."""
    data.mkdir(parents=True, exist_ok=True)
    runs = []
    for name in names:
        command = SCRIPTS[name].command(args, data)
        # as one would type it from the repository's root
        shown = " ".join(command[1:]).replace(f"{HERE.parent}/", "")
        print(f"== {name}: {shown}", file=sys.stderr, flush=True)
        started = time.perf_counter()
        done = subprocess.run(command, check=False, stdout=sys.stderr)
        elapsed = time.perf_counter() - started
        print(f"== {name}: exit {done.returncode} after {elapsed:.0f} s", file=sys.stderr)
        runs.append(
            {
                "benchmark": name,
                "command": shown,
                "finished": time.strftime("%Y-%m-%d %H:%M"),
                "elapsed_s": elapsed,
                "exit": done.returncode,
            }
        )
    return runs


def git_revision() -> str:
    """The checkout's commit, with `+changes` when the work tree differs from it (the report's
    own files in `results/` aside: a previous run rewrote them)."""

    def git(*args: str) -> str:
        command = ["git", "-C", str(HERE), *args]
        return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!results")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+changes" if dirty else "")


# -- the Markdown report -----------------------------------------------------------------------


def shown_path(path: Path) -> str:
    """`path` relative to the repository's root when it is inside it."""
    resolved = path.resolve()
    root = HERE.parent
    return str(resolved.relative_to(root)) if resolved.is_relative_to(root) else str(resolved)


def load_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def demote(markdown: str) -> str:
    """A report's body one heading level down, its title dropped (it becomes a section here)."""
    lines = markdown.splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    return "\n".join("#" + line if line.startswith("## ") else line for line in lines)


def other_load(clients: dict[str, Any]) -> float | None:
    """The median of the CPU cores other processes used during the client benchmark's runs."""
    loads = [
        run["other_util"]
        for entry in clients["results"]
        for run in entry["raw"].get("runs") or []
        if run.get("other_util") is not None
    ]
    return statistics.median(loads) if loads else None


def missing(name: str) -> str:
    return (
        f"*Not run yet: `python benchmarks/report.py --only {name}` (or `nox -s bench`) "
        "produces it.*\n"
    )


MEASURES = """\
What each point measures (one reference manager per benchmark, loopback, 2-core machine):

* **Output sweep** (chart, top row): model `generate`, request `SIZE` INT64[1] = n, reply
  `OUTPUT0` FP32[n] as JSON (outputs only ever travel as JSON). One connection, one request in
  flight; each request's reply decoded into a float32 ndarray. Every client can take part;
  tcm-client as shipped stops where the reply's JSON exceeds its 1 MiB `max_size`, and
  `tcm-client(max_size=None)` (the SDK patched) continues from FP32[262144] on.
* **Input sweep** (chart, middle row): model `checksum`, request `INPUT0` FP32[n], reply FP64[1]
  (8 bytes). The same tensor for every client: 1% of its elements non-zero (compressible, so
  the zstd carrier can carry it; dense data would make JSON larger and not compress). anytcm
  sends it by each carrier (json, shm: shared memory on the same host, zstd: compressed inline,
  with the manager started with `--capability zstd`); ceiling and tcm-client send JSON. A JSON
  request must fit the manager's 64 KiB frame cap: those points stop at 16 KiB, zstd's at 1 MiB.
* **Fixed cases** (chart, bottom row): `double` FP32[16] (per-request overhead) and `generate`
  FP32[262144] (a 1 MiB tensor, ~2.8 MB of JSON), with 1 connection (seq) and 8 (conc).
* **Throughput** is tensor bytes per second: req/s times 4n bytes (the FP32 tensor, not the
  JSON around it), in MB/s (10^6 bytes). **Latency**: one call, send to decoded ndarray.
  **Client CPU**: the client process's user + system CPU per request.
* Each figure is the median of the timed runs (rounds interleaved across clients), every client
  in its own process; see the tables below and `benchmarks/README.md`.
"""


def render_markdown(
    data: Path,
    clients: dict[str, Any] | None,
    carriers: dict[str, Any] | None,
    json_decode: dict[str, Any] | None,
    managers: dict[str, Any] | None,
    runs: list[dict[str, Any]],
    chart: str | None,
) -> str:
    from bench_carriers import render as render_carriers
    from bench_json_decode import render as render_codec
    from bench_managers import render as render_managers

    out: list[str] = ["# anytcm benchmarks\n"]
    out.append(
        f"Rendered {time.strftime('%Y-%m-%d %H:%M')} from `{shown_path(data)}/` · "
        f"checkout {git_revision()} · `nox -s bench` runs every benchmark and renders this; "
        "`python benchmarks/report.py --render-only` renders again from the saved figures.\n"
    )
    if chart:
        out.append(f"![throughput, latency and client CPU by carrier and tensor size]({chart})\n")
    else:
        out.append("*No chart: the client benchmark has not run yet.*\n")
    load = other_load(clients) if clients else None
    if load is not None and load >= OTHER_LOAD_CLEAN:
        out.append(
            f"**The machine was busy during the client benchmark**: other processes used "
            f"{load:.2f} CPU cores (median over its runs; 2 cores in all). req/s and latency "
            "are skewed by that (p99 most); CPU per request much less. See *other load* in the "
            "tables.\n"
        )
    out.append(MEASURES)

    out.append("## Clients: anytcm vs tcm-client vs ceiling\n")
    out.append(demote(build_report(clients)[0]) if clients else missing("clients"))

    out.append("\n## Carriers: the input path by carrier (`bench_carriers.py`)\n")
    if carriers:
        meta = carriers["meta"]
        out.append(
            f"{meta['date']} · {meta['backend']} · reference manager "
            f"`{' '.join(meta['server_args']) or '(defaults)'}`"
            f"{' · quick' if meta['quick'] else ''}. Random FP32 inputs (and, for zstd, the "
            "same with 1% non-zero) to `checksum` (8-byte reply): the round trip, MB/s of "
            "input, the carrier's staging time against a `numpy.copyto` into shared memory; "
            "then the `double` round trip, whose reply is the same size as the input, as "
            "JSON. Medians of several runs.\n"
        )
        out.append(render_carriers(carriers["rows"]))
    else:
        out.append(missing("carriers"))

    out.append("\n## JSON tensor codec (`bench_json_decode.py`)\n")
    if json_decode:
        meta = json_decode["meta"]
        out.append(
            f"{meta['date']} · repeat {meta['repeat']} · ratio > 1: anytcm faster than the "
            "orjson + numpy one-liner. Medians, timed alternately.\n"
        )
        out.append(render_codec(json_decode["rows"], level="###"))
    else:
        out.append(missing("json-decode"))

    out.append("\n## Several managers (`bench_managers.py`)\n")
    out.append(render_managers(managers) if managers else missing("managers"))

    if runs:
        out.append("\n## Runs\n")
        out.append("| benchmark | command | finished | minutes | exit |")
        out.append("|---|---|---|---:|---:|")
        for run in runs:
            out.append(
                f"| {run['benchmark']} | `{run['command']}` | {run['finished']} "
                f"| {run['elapsed_s'] / 60:.1f} | {run['exit']} |"
            )
    return "\n".join(out) + "\n"


# -- the chart ---------------------------------------------------------------------------------

# colour and marker per client, the same in every panel
STYLE = {
    "anytcm[asyncio]": ("tab:blue", "o"),
    "anytcm[trio]": ("tab:cyan", "D"),
    "anytcm[asyncio] json": ("tab:blue", "o"),
    "anytcm[asyncio] shm": ("tab:green", "s"),
    "anytcm[asyncio] zstd": ("tab:purple", "^"),
    "ceiling": ("black", "v"),
    "tcm-client": ("tab:red", "X"),
    "tcm-client(max_size=None)": ("tab:orange", "P"),
}
ROW_TITLES = {
    "out": "Output sweep: model generate, reply FP32[n] as JSON",
    "in": "Input sweep: model checksum, request FP32[n] by carrier",
}
FIXED_CASES = [("small", "seq"), ("small", "conc"), ("large", "seq"), ("large", "conc")]
FIXED_LABELS = {
    ("small", "seq"): "small, 1 conn\nFP32[16]",
    ("small", "conc"): "small, 8 conn\nFP32[16]",
    ("large", "seq"): "large, 1 conn\nFP32[262144]",
    ("large", "conc"): "large, 8 conn\nFP32[262144]",
}


def _series(points: list[dict[str, Any]], scenario: str) -> dict[str, list[dict[str, Any]]]:
    """Per client (in run order): its successful points of one sweep, by size."""
    series: dict[str, list[dict[str, Any]]] = {}
    for point in points:
        if point["scenario"] != scenario:
            continue
        found = series.setdefault(point["client"], [])
        summary = point["summary"]
        if not summary.get("error") and summary.get("rps") is not None:
            found.append({"bytes": point["bytes"], **summary})
    return {client: sorted(p, key=lambda q: q["bytes"]) for client, p in series.items() if p}


def _legend_label(client: str, scenario: str) -> str:
    if scenario == "in" and client in ("ceiling", "tcm-client"):
        return f"{client} json"
    if client == "tcm-client(max_size=None)":
        return "tcm-client, max_size=None patched"
    return client


def _log_y(ax: Any, unit: str) -> None:
    """A log y axis with plain-number labels: at 1, 2 and 5 of each decade when the data span
    little more than two decades (else one label a decade would leave an axis nearly bare)."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    ax.set_yscale("log")
    ax.set_ylabel(unit)
    low, high = ax.get_ylim()
    subs = (1.0, 2.0, 5.0) if high / low < 300 else (1.0,)
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=subs))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))


def _size_axis(ax: Any, sizes: list[int], cap: bool) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [fmt_bytes(n) for n in sizes])
    ax.minorticks_off()
    ax.set_xlabel("tensor size (FP32, bytes; log scale)")
    ax.grid(True, which="major", alpha=0.3)
    if cap:
        ax.axvline(FRAME_CAP, color="grey", linestyle="--", linewidth=1)
        ax.annotate(
            "64 KiB frame cap\n(JSON, zstd requests)",
            xy=(FRAME_CAP, 1),
            xycoords=("data", "axes fraction"),
            xytext=(4, -4),
            textcoords="offset points",
            va="top",
            fontsize=7,
            color="dimgrey",
        )


def _plot_sweep(axes: Any, points: list[dict[str, Any]], scenario: str) -> None:
    ax_thr, ax_lat, ax_cpu = axes
    series = _series(points, scenario)
    sizes = sorted({p["bytes"] for p in points if p["scenario"] == scenario})
    for client, pts in series.items():
        colour, marker = STYLE.get(client, ("grey", "."))
        label = _legend_label(client, scenario)
        xs = [p["bytes"] for p in pts]
        style = {"color": colour, "marker": marker, "markersize": 5, "linewidth": 1.4}
        ax_thr.plot(xs, [p["rps"] * p["bytes"] / 1e6 for p in pts], label=label, **style)
        ax_lat.plot(xs, [p["p50_ms"] for p in pts], label=label, **style)
        ax_lat.plot(xs, [p["p99_ms"] for p in pts], color=colour, linestyle=":", linewidth=1)
        ax_cpu.plot(xs, [p["cpu_ms_per_req"] for p in pts], label=label, **style)
    title = ROW_TITLES[scenario]
    for ax, what, unit in (
        (ax_thr, "throughput", "MB/s of tensor data (log)"),
        (ax_lat, "latency per request", "ms, solid p50 · dotted p99 (log)"),
        (ax_cpu, "client CPU per request", "CPU ms per request (log)"),
    ):
        _log_y(ax, unit)
        ax.set_title(f"{title}\n{what}", fontsize=10)
        _size_axis(ax, sizes, cap=scenario == "in")
    ax_thr.legend(fontsize=8, loc="upper left")


def _plot_fixed(axes: Any, clients: dict[str, Any]) -> None:
    summary = {
        (e["scenario"], e["mode"], e["client"]): e["summary"]
        for e in clients["results"]
        if e["scenario"] in ("small", "large")
    }
    cases = [c for c in FIXED_CASES if any(k[:2] == c for k in summary)]
    names = list(dict.fromkeys(k[2] for k in summary))
    width = 0.8 / max(1, len(names))
    for ax, key, unit in (
        (axes[0], "rps", "requests/s (log)"),
        (axes[1], "p50_ms", "p50 latency, ms (log)"),
        (axes[2], "cpu_ms_per_req", "client CPU ms per request (log)"),
    ):
        for index, name in enumerate(names):
            colour, _ = STYLE.get(name, ("grey", "."))
            xs, ys = [], []
            for position, case in enumerate(cases):
                row = summary.get((*case, name))
                if row is None:
                    continue  # this client does not run this case
                x = position + (index - (len(names) - 1) / 2) * width
                if row.get("error") or row.get(key) is None:
                    ax.text(x, 0.02, "failed", transform=ax.get_xaxis_transform(), rotation=90,
                            ha="center", va="bottom", fontsize=7, color=colour)  # fmt: skip
                    continue
                xs.append(x)
                ys.append(row[key])
            ax.bar(xs, ys, width=width, color=colour, label=_legend_label(name, "fixed"))
        _log_y(ax, unit)
        ax.set_xticks(range(len(cases)), [FIXED_LABELS[c] for c in cases], fontsize=8)
        ax.set_title(f"Fixed cases: models double and generate\n{unit.split(' (')[0]}", fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].legend(fontsize=8, loc="upper right")


def render_chart(clients: dict[str, Any], path: Path) -> None:
    """report.png: a row per sweep (throughput, latency, client CPU against tensor size, log-log)
    and a row of bars for the fixed cases."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = sweep_points(clients)
    rows: list[str] = [s for s in ("out", "in") if any(p["scenario"] == s for p in points)]
    has_fixed = any(e["scenario"] in ("small", "large") for e in clients["results"])
    count = len(rows) + has_fixed
    fig, grid = plt.subplots(count, 3, figsize=(17, 5.2 * count), squeeze=False)
    for axes, scenario in zip(grid, rows, strict=False):  # the last row may be the fixed cases
        _plot_sweep(axes, points, scenario)
    if has_fixed:
        _plot_fixed(grid[-1], clients)
    meta = clients["meta"]
    load = other_load(clients)
    fig.suptitle(
        "anytcm vs tcm-client 2.0.0 vs ceiling client, against the reference manager on loopback"
        f" — {meta['date']}, {meta['cpus']} CPUs, Python {meta['python']}, medians of "
        f"{meta['repeat']} runs"
        + (f", other processes' load {load:.2f} cores" if load is not None else ""),
        fontsize=12,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    fig.savefig(path, dpi=100)
    plt.close(fig)


# -- main --------------------------------------------------------------------------------------


def render(data: Path) -> list[Path]:
    """report.md and report.png from the JSON in `data`; returns what it wrote."""
    clients = load_results(data / "clients.json") if (data / "clients.json").exists() else None
    carriers = load_json(data / "carriers.json")
    json_decode = load_json(data / "json_decode.json")
    managers = load_json(data / "managers.json")
    runs = (load_json(data / "runs.json") or {}).get("runs", [])
    written = []
    chart = None
    if clients is not None:
        render_chart(clients, RESULTS / "report.png")
        chart = "report.png"
        written.append(RESULTS / "report.png")
    markdown = render_markdown(data, clients, carriers, json_decode, managers, runs, chart)
    (RESULTS / "report.md").write_text(markdown)
    written.insert(0, RESULTS / "report.md")
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="rebuild report.md and report.png from the saved JSON; run nothing",
    )
    parser.add_argument(
        "--only",
        default=",".join(BENCHMARKS),
        help=f"comma-separated benchmarks to run among {','.join(BENCHMARKS)} (the others' "
        "saved figures still go into the report)",
    )
    parser.add_argument("--quick", action="store_true", help="fewer requests and repeats")
    parser.add_argument(
        "--repeat", type=int, default=3, help="client benchmark: timed runs per client"
    )
    parser.add_argument("--no-vendor", action="store_true", help="client benchmark: no SDK")
    parser.add_argument(
        "--scenarios",
        default=ALL_SCENARIOS,
        help=f"client benchmark: its --only (default {ALL_SCENARIOS}; its own default is "
        f"{DEFAULT_SCENARIOS})",
    )
    parser.add_argument(
        "--sizes",
        default="",
        help="client benchmark: sweep sizes in bytes, a subset of "
        + ",".join(map(str, SWEEP_BYTES)),
    )
    parser.add_argument(
        "--data", type=Path, default=DATA, help="where the benchmarks' JSON goes and is read"
    )
    args = parser.parse_args()

    failed = []
    if not args.render_only:
        names = [name for name in args.only.split(",") if name]
        unknown = sorted(set(names) - set(BENCHMARKS))
        if unknown:
            parser.error(f"--only: unknown benchmarks {unknown}; choose among {BENCHMARKS}")
        runs = run_benchmarks(args, names, args.data)
        failed = [run["benchmark"] for run in runs if run["exit"] != 0]
        # Keep the latest run of each benchmark, so a partial run does not hide the others.
        saved = (load_json(args.data / "runs.json") or {}).get("runs", [])
        kept = [r for r in saved if r["benchmark"] not in names] + runs
        kept.sort(key=lambda r: BENCHMARKS.index(r["benchmark"]))
        (args.data / "runs.json").write_text(json.dumps({"runs": kept}, indent=1))
    for path in render(args.data):
        print(path)
    if failed:
        print(f"failed: {', '.join(failed)} (see the output above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
