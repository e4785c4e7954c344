"""The scaling study: how dissemination, detection, load and false positives grow with N.

Owns: reading the study's sweeps (``sweep.json`` of each, merged by point), the
least-squares fit ``y = a + b·ln N`` with its residuals, the Markdown tables
of docs/simulation.md and the study's PNG plots. Does not own: running the
points (``python -m sim --sweep``, any engine) or the metrics (``metrics.py``).

    python -m sim.study --crash DIR --meta DIR --stalls DIR [DIR ...] \\
        --workers W1_DIR W2_DIR --img docs/img > summary.md
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sim import plots

Result = dict[str, Any]


def load(dirs: Sequence[Path]) -> list[Result]:
    """Every finished point under ``dirs`` (a point in several is taken once, by spec)."""
    seen: dict[str, Result] = {}
    for d in dirs:
        # The points' own files, not sweep.json: a sweep cut off before its end counts too.
        for path in sorted(d.glob("*/result.json")):
            r = json.loads(path.read_text())
            seen[json.dumps(r["spec"], sort_keys=True)] = r
    return list(seen.values())


def get(r: Result, path: str) -> float | None:
    cur: Any = r
    for part in path.split("."):
        if isinstance(cur, list):
            cur = cur[0] if cur else None
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return float(cur) if isinstance(cur, int | float) else None


def override(r: Result, key: str) -> str | None:
    for kv in r["spec"].get("overrides", []):
        k, _, v = str(kv).partition("=")
        if k == key:
            return v
    return None


def by_n(results: list[Result], path: str) -> dict[int, list[float]]:
    out: dict[int, list[float]] = {}
    for r in sorted(results, key=lambda r: (r["spec"]["nodes"], r["spec"]["seed"])):
        v = get(r, path)
        if v is not None:
            out.setdefault(int(r["spec"]["nodes"]), []).append(v)
    return out


@dataclass
class Fit:
    a: float
    b: float
    r2: float
    rms: float
    residuals: dict[int, float]
    """Mean residual (measured − fitted) at each N."""

    def __call__(self, n: float) -> float:
        return self.a + self.b * math.log(n)


def fit_log(data: dict[int, list[float]]) -> Fit | None:
    """Least squares of y = a + b·ln N over every seed's value (not the means)."""
    pts = [(math.log(n), y) for n, ys in data.items() for y in ys]
    if len({x for x, _ in pts}) < 2:
        return None
    mx = statistics.fmean(x for x, _ in pts)
    my = statistics.fmean(y for _, y in pts)
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    b = sum((x - mx) * (y - my) for x, y in pts) / sxx
    a = my - b * mx
    ss_res = sum((y - (a + b * x)) ** 2 for x, y in pts)
    ss_tot = sum((y - my) ** 2 for _, y in pts)
    resid = {n: statistics.fmean(y - (a + b * math.log(n)) for y in ys) for n, ys in data.items()}
    return Fit(a, b, 1 - ss_res / ss_tot if ss_tot > 0 else 1.0, math.sqrt(ss_res / len(pts)), resid)


def _ms(ys: list[float]) -> str:
    if not ys:
        return "–"
    sd = statistics.stdev(ys) if len(ys) > 1 else 0.0
    return f"{statistics.fmean(ys):.2f} ± {sd:.2f}"


def fit_table(title: str, series: list[tuple[str, dict[int, list[float]]]]) -> list[str]:
    ns = sorted({n for _, d in series for n in d})
    if not ns:
        return [f"**{title}**: no points", ""]
    lines = [f"**{title}** (mean ± sd over seeds; fit y = a + b·ln N over every seed; residual = measured − fit)",
             "", "| metric | " + " | ".join(f"N={n:,}" for n in ns) + " | a | b | R² | residuals by N |",
             "|---|" + "---:|" * len(ns) + "---:|---:|---:|---|"]
    for label, d in series:
        f = fit_log(d)
        cells = [_ms(d.get(n, [])) for n in ns]
        if f is None:
            lines.append(f"| {label} | " + " | ".join(cells) + " | – | – | – | – |")
            continue
        res = ", ".join(f"{f.residuals[n]:+.2f}" for n in ns if n in f.residuals)
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {f.a:.2f} | {f.b:.3f} | {f.r2:.2f} | {res} |")
    return [*lines, ""]


def plain_table(title: str, series: list[tuple[str, dict[int, list[float]]]], fmt: str = "{:.2f}") -> list[str]:
    ns = sorted({n for _, d in series for n in d})
    if not ns:
        return [f"**{title}**: no points", ""]
    lines = [f"**{title}** (mean ± sd over seeds)", "",
             "| metric | " + " | ".join(f"N={n:,}" for n in ns) + " |", "|---|" + "---:|" * len(ns)]
    for label, d in series:
        cells = []
        for n in ns:
            ys = d.get(n, [])
            sd = statistics.stdev(ys) if len(ys) > 1 else 0.0
            cells.append(f"{fmt.format(statistics.fmean(ys))} ± {fmt.format(sd)} ({len(ys)})" if ys else "–")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _plot(path: Path, title: str, ylabel: str, series: list[tuple[str, dict[int, list[float]]]],
          fit: bool, logy: bool = False) -> None:
    plt = plots._plt()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for i, (label, d) in enumerate(series):
        color = f"C{i}"
        xs = sorted(d)
        means = [statistics.fmean(d[n]) for n in xs]
        ax.errorbar(xs, means, yerr=[[m - min(d[n]) for n, m in zip(xs, means, strict=True)],
                                     [max(d[n]) - m for n, m in zip(xs, means, strict=True)]],
                    fmt="o", color=color, capsize=3, label=label)
        f = fit_log(d) if fit else None
        if f is not None and len(xs) > 1:
            grid = [xs[0] * (xs[-1] / xs[0]) ** (k / 40) for k in range(41)]
            ax.plot(grid, [f(x) for x in grid], "-", color=color, lw=1,
                    label=f"  {f.a:.2f} + {f.b:.3f}·ln N (R² {f.r2:.2f})")
        elif len(xs) > 1:
            ax.plot(xs, means, "-", color=color, lw=1)
    ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("nodes N (log scale)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=plots.DPI)
    plt.close(fig)


def workers_table(dirs: Sequence[Path]) -> list[str]:
    lines = ["| sweep | engine | points | sweep wall (s) | Σ point wall (s) | Σ point CPU (s) | CPU / wall |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for d in dirs:
        sw = json.loads((d / "sweep.json").read_text())
        run = sw["run"]
        pts = [p["result"] for p in sw["points"]]
        cpu = sum(r["perf"]["cpu_s"] for r in pts)
        pwall = sum(r["perf"]["wall_s"] for r in pts)
        lines.append(f"| {d.name} | {run['engine']} | {run['points_run']} | {run['wall_s']:.0f} | {pwall:.0f} | "
                     f"{cpu:.0f} | {cpu / run['wall_s']:.2f} |")
    return [*lines, ""]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sim.study", description=__doc__.split("\n\n")[0])
    p.add_argument("--crash", type=Path, nargs="+", required=True, help="crash-1pct sweep directories")
    p.add_argument("--meta", type=Path, nargs="+", required=True, help="meta-update sweep directories")
    p.add_argument("--stalls", type=Path, nargs="*", default=[], help="stalls sweeps (lifeguard=true,false)")
    p.add_argument("--workers", type=Path, nargs="*", default=[], help="the same sweep with 1, 2, ... workers")
    p.add_argument("--img", type=Path, help="write the study's PNGs here")
    args = p.parse_args(argv)
    try:
        crash, meta, stalls = load(args.crash), load(args.meta), load(args.stalls)
    except (OSError, ValueError, KeyError) as e:
        print(f"error: cannot read a sweep: {e}", file=sys.stderr)
        return 2
    spread = [(f"t{q}", by_n(meta, f"dissemination.t{q}")) for q in (50, 99, 100)]
    detect = [("first suspicion (mean of crashes)", by_n(crash, "detection.first_suspicion.mean")),
              ("median observer marks failed", by_n(crash, "detection.latency.p50")),
              ("every node sees the crash (max)", by_n(crash, "detection.all_observers_failed.max"))]
    load_ = [("B/s (median second), quiet", by_n(meta, "traffic.udp_bytes_per_node_per_s_median_second")),
             ("B/s (run mean), crash 1 %", by_n(crash, "traffic.udp_bytes_per_node_per_s")),
             ("datagrams/s (median second), quiet", by_n(meta, "traffic.udp_msgs_per_node_per_s_median_second")),
             ("datagrams/s (run mean), crash 1 %", by_n(crash, "traffic.udp_msgs_per_node_per_s"))]
    fp: list[tuple[str, dict[int, list[float]]]] = []
    for lg in ("true", "false"):
        part = [r for r in stalls if override(r, "lifeguard") == lg]
        on = "on" if lg == "true" else "off"
        fp += [(f"suspicions, Lifeguard {on}", by_n(part, "false_positives.suspicions")),
               (f"deaths, Lifeguard {on}", by_n(part, "false_positives.deaths"))]
    out = [*fit_table("Time for a meta change to reach 50/99/100 % of nodes (s), meta-update", spread),
           *fit_table("Crash detection (s after the crash), crash-1pct", detect),
           *plain_table("Load per node per second", load_, "{:,.1f}"),
           *plain_table("False positives under stalls (count per 60 s run; seeds in brackets)", fp, "{:.1f}")]
    if args.workers:
        out += workers_table(args.workers)
    cost = [("CPU s per point, crash 1 %", by_n(crash, "perf.cpu_s")),
            ("peak RSS MiB per point, crash 1 %", by_n(crash, "perf.process_peak_rss_mib"))]
    out += plain_table("Cost of a point", cost, "{:,.1f}")
    print("\n".join(out))
    if args.img is not None and plots.available():
        args.img.mkdir(parents=True, exist_ok=True)
        _plot(args.img / "sim-scaling-spread.png", "meta change reaching 50/99/100 % of nodes",
              "seconds", spread, fit=True)
        _plot(args.img / "sim-scaling-detection.png", "crash 1 %: detection", "seconds after the crash",
              detect, fit=True)
        _plot(args.img / "sim-scaling-load.png", "load per node per second", "bytes or datagrams / s",
              load_, fit=False, logy=True)
        if stalls:
            _plot(args.img / "sim-scaling-lifeguard.png", "stalls (5 % of nodes, 2 s): false positives",
                  "count per run", fp, fit=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
