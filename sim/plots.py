"""PNG plots of a run and of a sweep (matplotlib, optional dependency group ``sim``).

Owns: figure layout only; the numbers come from ``Metrics`` and result dicts.
Without matplotlib the functions return no paths and say why (runs still write
JSON and CSV).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sim.analytic import serf_rounds
from sim.metrics import Metrics
from sim.output import detection_latencies

DPI = 90


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _title(result: dict[str, Any]) -> str:
    spec = result["spec"]
    return f"N={spec['nodes']}  {spec['scenario']}  seed={spec['seed']}"


def run_plots(out: Path, result: dict[str, Any], metrics: Metrics, end: float) -> list[Path]:
    if not available():
        return []
    plt = _plt()
    paths = []
    ts = metrics.timeseries()
    if ts:
        fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
        t = [r[0] for r in ts]
        ax1.plot(t, [r[2] * 100 for r in ts], label="nodes with a correct view")
        ax1.plot(t, [100 * r[1] / metrics.n for r in ts], "--", label="nodes running")
        ax1.set_ylabel("% of nodes")
        ax1.set_ylim(-2, 102)
        ax1.legend(loc="lower right", fontsize=8)
        ax2.plot(t, [r[4] / r[1] if r[1] else 0 for r in ts], label="datagrams")
        ax2.set_ylabel("datagrams sent / node / s")
        ax3 = ax2.twinx()
        ax3.plot(t, [r[5] / r[1] / 1024 if r[1] else 0 for r in ts], color="tab:orange", label="KiB")
        ax3.set_ylabel("KiB sent / node / s", color="tab:orange")
        ax2.set_xlabel("simulated time (s)")
        fig.suptitle(_title(result), fontsize=10)
        fig.tight_layout()
        p = out / "timeseries.png"
        fig.savefig(p, dpi=DPI)
        plt.close(fig)
        paths.append(p)

    curves = metrics.dissemination_curves(end)
    if curves:
        fig, ax = plt.subplots(figsize=(7, 4))
        for label, times, pop in curves[:8]:
            if pop:
                ax.step([0.0, *times], [0.0, *[(i + 1) / pop * 100 for i in range(len(times))]],
                        where="post", label=label)
        cfg = result["config"]
        n = result["spec"]["nodes"]
        xs = [i * 0.05 for i in range(0, 200)]
        beta = cfg["gossip_nodes"] * 0.5 / cfg["gossip_interval"]
        ax.plot(xs, [100 / (1 + (n + 1) * math.exp(-beta * x)) for x in xs], ":", color="grey",
                label="serf convergence formula")
        ax.set_xlabel("seconds since the update")
        ax.set_ylabel("% of nodes that know it")
        ax.set_ylim(-2, 102)
        if curves and curves[0][1]:
            ax.set_xlim(0, max(1.0, max(c[1][-1] for c in curves if c[1]) * 1.2))
        ax.legend(fontsize=8, loc="lower right")
        ax.set_title(_title(result), fontsize=10)
        fig.tight_layout()
        p = out / "dissemination.png"
        fig.savefig(p, dpi=DPI)
        plt.close(fig)
        paths.append(p)

    pooled = detection_latencies(metrics, end)
    if pooled:
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.step(pooled, [(i + 1) / len(pooled) * 100 for i in range(len(pooled))], where="post",
                label="observer marks crashed node failed")
        an = result["analytic"]
        for x, lab, st in ((an["suspicion_min_s"], "suspicion min", ":"),
                           (an["suspicion_max_s"], "suspicion max", "--")):
            if x <= pooled[-1] * 1.5:
                ax.axvline(x, linestyle=st, color="grey", label=lab)
        ax.set_xlabel("seconds since crash")
        ax.set_ylabel("% of (crashed, observer) pairs")
        ax.legend(fontsize=8, loc="lower right")
        ax.set_title(_title(result), fontsize=10)
        fig.tight_layout()
        p = out / "detection.png"
        fig.savefig(p, dpi=DPI)
        plt.close(fig)
        paths.append(p)
    for ext in metrics.extensions.values():
        paths += ext.plots(out, result)
    return paths


def _get(row: dict[str, Any], path: str) -> float | None:
    cur: Any = row
    for part in path.split("."):
        if isinstance(cur, list):
            cur = cur[0] if cur else None
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return float(cur) if isinstance(cur, int | float) else None


def sweep_plots(out: Path, key: str, points: Sequence[tuple[str, dict[str, Any]]]) -> list[Path]:
    """Headline metrics against the swept value (averaged over any inner sweep, with ranges)."""
    if not available() or not points:
        return []
    plt = _plt()
    numeric = key in ("nodes", "duration")
    groups: dict[str, list[dict[str, Any]]] = {}
    for value, result in points:
        groups.setdefault(value, []).append(result)
    labels = list(groups)
    xs = [float(v) for v in labels] if numeric else list(range(len(labels)))

    def series(path: str) -> tuple[list[float], list[float], list[float], list[float]]:
        x_out, mean, lo, hi = [], [], [], []
        for x, lab in zip(xs, labels, strict=True):
            vals = [v for v in (_get(r, path) for r in groups[lab]) if v is not None]
            if vals:
                x_out.append(x)
                mean.append(sum(vals) / len(vals))
                lo.append(sum(vals) / len(vals) - min(vals))
                hi.append(max(vals) - sum(vals) / len(vals))
        return x_out, mean, lo, hi

    panels = [
        ("time for an update to spread (s)", [("dissemination.t50", "50 %"), ("dissemination.t99", "99 %"),
                                              ("dissemination.t100", "100 %")]),
        ("sent per node per second", [("traffic.udp_msgs_per_node_per_s", "datagrams (run mean)"),
                                      ("traffic.udp_msgs_per_node_per_s_median_second", "datagrams (median s)"),
                                      ("traffic.udp_bytes_per_node_per_s_median_second", "bytes / 100 (median s)")]),
        ("failure detection (s)", [("detection.first_suspicion.mean", "first suspicion"),
                                   ("detection.latency.p50", "median observer"),
                                   ("detection.all_observers_failed.max", "all observers")]),
        ("false positives", [("false_positives.suspicions", "suspicions"),
                             ("false_positives.deaths", "deaths")]),
        ("cost of the run", [("perf.cpu_s", "CPU s"), ("perf.rss_end_mib", "RSS MiB / 10")]),
    ]
    # Only panels with something to show (no detection panel without crashes, ...).
    panels = [(t, lines) for t, lines in panels if any(series(path)[0] for path, _ in lines)]
    if not panels:
        return []
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 2.3 * len(panels)), sharex=True, squeeze=False)
    axes = [row[0] for row in axes]
    for ax, (title, lines) in zip(axes, panels, strict=True):
        for path, lab in lines:
            x, y, lo, hi = series(path)
            scale = 0.01 if "bytes" in path else 0.1 if "rss" in path else 1.0
            if x:
                ax.errorbar(x, [v * scale for v in y], yerr=[[v * scale for v in lo], [v * scale for v in hi]],
                            marker="o", capsize=3, label=lab)
        if title.startswith("time for") and numeric and key == "nodes":
            grid = sorted(xs)
            cfg = points[0][1].get("config") or {}
            interval = float(cfg.get("gossip_interval", 0.2))
            fanout = int(cfg.get("gossip_nodes", 3))
            for q, style in ((0.5, ":"), (0.99, "--")):
                ys = [math.ceil(serf_rounds(int(x), q, fanout)) * interval for x in grid]
                ax.plot(grid, ys, style, color="grey", label=f"serf formula {q:.0%}")
            # The same logistic curve without the page's factor ½ and whole rounds.
            ys = [serf_rounds(int(x), 0.99, fanout) / 2 * interval for x in grid]
            ax.plot(grid, ys, "-.", color="black", linewidth=0.8, label="logistic, β·N = fanout, 99 %")
        ax.set_ylabel(title, fontsize=8)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
        if numeric and key == "nodes":
            ax.set_xscale("log")
    axes[-1].set_xlabel(key)
    if not numeric:
        axes[-1].set_xticks(xs, labels)
    fig.tight_layout()
    p = out / "sweep.png"
    fig.savefig(p, dpi=DPI)
    plt.close(fig)
    return [p]


def compare_plot(out: Path, sweeps: Sequence[tuple[str, dict[str, Any]]],
                 metrics: Sequence[tuple[str, str]] = (("false_positives.deaths", "false deaths"),
                                                       ("false_positives.suspicions", "false suspicions"))) -> Path | None:
    """Bars per sweep (one group each) and per value of its first axis, averaged over the rest."""
    if not available() or not sweeps:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6))
    axes = list(axes) if len(metrics) > 1 else [axes]
    for ax, (path, label) in zip(axes, metrics, strict=True):
        values: list[str] = []
        for _, sw in sweeps:
            for p in sw["points"]:
                if str(p["value"]) not in values:
                    values.append(str(p["value"]))
        width = 0.8 / max(1, len(values))
        for j, value in enumerate(values):
            means, lo, hi = [], [], []
            for _, sw in sweeps:
                vals = [v for v in (_get(p["result"], path) for p in sw["points"] if str(p["value"]) == value)
                        if v is not None]
                m = sum(vals) / len(vals) if vals else 0.0
                means.append(m)
                lo.append(m - min(vals) if vals else 0.0)
                hi.append(max(vals) - m if vals else 0.0)
            xs = [i + (j - (len(values) - 1) / 2) * width for i in range(len(sweeps))]
            key = sweeps[0][1]["axes"][0]["key"]
            ax.bar(xs, means, width, yerr=[lo, hi], capsize=3, label=f"{key}={value}")
        ax.set_xticks(range(len(sweeps)), [name for name, _ in sweeps], fontsize=7)
        ax.set_title(label, fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=DPI)
    plt.close(fig)
    return out


def labelled_dirs(items: Sequence[str], what: str) -> list[tuple[str, Path]]:
    """``LABEL=DIR`` command-line items of a ``compare`` command; ValueError names a bad one."""
    out = []
    for item in items:
        label, sep, directory = item.partition("=")
        if not sep:
            raise ValueError(f"expected LABEL={what}, got {item!r}")
        out.append((label, Path(directory)))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m sim.plots sweep DIR`` redraws DIR/sweep.png from DIR/sweep.json;
    ``python -m sim.plots compare OUT.png LABEL=SWEEP_DIR ...`` draws bars across sweeps."""
    import json
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) == 2 and args[0] == "sweep":
        try:
            sw = json.loads((Path(args[1]) / "sweep.json").read_text())
        except (OSError, ValueError) as e:
            print(f"error: cannot read {args[1]}/sweep.json: {e}", file=sys.stderr)
            return 2
        points = [(str(p["value"]), p["result"]) for p in sw["points"]]
        return 0 if sweep_plots(Path(args[1]), sw["axes"][0]["key"], points) else 2
    if len(args) < 3 or args[0] != "compare":
        print("usage: python -m sim.plots sweep SWEEP_DIR\n"
              "       python -m sim.plots compare OUT.png LABEL=SWEEP_DIR [LABEL=SWEEP_DIR ...]",
              file=sys.stderr)
        return 2
    sweeps = []
    try:
        dirs = labelled_dirs(args[2:], "SWEEP_DIR")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for label, directory in dirs:
        try:
            sweeps.append((label.replace("\\n", "\n"), json.loads((directory / "sweep.json").read_text())))
        except (OSError, ValueError) as e:
            print(f"error: cannot read {directory}/sweep.json: {e}", file=sys.stderr)
            return 2
    made = compare_plot(Path(args[1]), sweeps)
    if made is None:
        print("error: matplotlib is not installed (pip install -e '.[sim]')", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
