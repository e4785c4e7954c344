"""Files of the ``endpoints`` scenario: per-row CSV, per-second bytes CSV, PNG plots.

Owns: the layouts of ``endpoints.csv`` (one line per endpoint row created in the
window: when it reached 50/90/99/100 % of its network's other members, and every
node taking part) and ``endpoints_bytes.csv`` (cumulative bytes sent, per
simulated second, split into membership and tables traffic), the per-run figure
``endpoints.png`` and the comparison figure of several runs::

    python -m sim.tablesplots compare OUT.png LABEL=RUN_DIR [LABEL=RUN_DIR ...]

Does not own: the measurements (``tablesim.RowTracker``). Same style as
``plots.py`` (matplotlib optional: without it no PNG, and say so).
"""

from __future__ import annotations

import csv
import itertools
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sim.output import _write
from sim.plots import DPI, _plt, available, labelled_dirs

if TYPE_CHECKING:
    from sim.tablesim import RowTracker

ROWS_HEADER = ["row", "network", "owner", "created_at", "members", "members_reached", "t50", "t90",
               "t99", "t100", "participants", "participants_reached", "t100_participants"]
BYTES_HEADER = ["t", "running", "udp", "tcp", "tables_net_gossip", "tables_bulk_sync",
                "tables_piggyback", "tables_push_pull_state", "tables", "membership"]
SPLIT = (("membership", "membership (SWIM + framing)", "tab:grey"),
         ("tables_net_gossip", "tables: network gossip (UDP)", "tab:blue"),
         ("tables_bulk_sync", "tables: bulk sync (TCP)", "tab:orange"),
         ("tables_piggyback", "tables: piggybacked rows", "tab:green"),
         ("tables_push_pull_state", "tables: push/pull state", "tab:red"))


def write_csv(out: Path, tracker: RowTracker) -> list[Path]:
    p = out / "endpoints.csv"
    _write(p, ROWS_HEADER, tracker.per_row())
    q = out / "endpoints_bytes.csv"
    rows: list[list[object]] = []
    for t, tot, running in tracker.seconds:
        tables = tot.gossip + tot.bulk + tot.piggyback + tot.user_state
        rows.append([t, running, tot.udp, tot.tcp, tot.gossip, tot.bulk, tot.piggyback, tot.user_state,
                     tables, tot.udp + tot.tcp - tables])
    _write(q, BYTES_HEADER, rows)
    return [p, q]


def _label(result: dict[str, Any]) -> str:
    ep = result["endpoints"]
    return "scoped" if ep["scoped"] else "whole cluster"


def _cdf(values: Sequence[float]) -> tuple[list[float], list[float]]:
    s = sorted(values)
    return [0.0, *s], [0.0, *[(i + 1) / len(s) * 100 for i in range(len(s))]]


def run_plot(out: Path, result: dict[str, Any], tracker: RowTracker) -> list[Path]:
    """endpoints.png: CDF of time to 99 % / 100 % of members, and bytes per node per second."""
    if not available() or "endpoints" not in result:
        return []
    plt = _plt()
    rows = tracker.per_row()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for col, name, style in ((8, "99 % of members", "--"), (9, "100 % of members", "-")):
        vals = [v for r in rows if isinstance(v := r[col], float)]
        if vals:
            xs, ys = _cdf(vals)
            ax1.step(xs, ys, style, where="post", label=name)
    ax1.set_xlabel("seconds since the endpoint was created")
    ax1.set_ylabel("% of endpoint rows")
    ax1.set_ylim(-2, 102)
    ax1.legend(fontsize=8, loc="lower right")
    secs = tracker.seconds
    for key, name, color in SPLIT:
        xs, ys = [], []
        for (t0, a, _), (t1, b, running) in itertools.pairwise(secs):
            d = b.minus(a)
            tables = {"tables_net_gossip": d.gossip, "tables_bulk_sync": d.bulk,
                      "tables_piggyback": d.piggyback, "tables_push_pull_state": d.user_state}
            v = tables[key] if key in tables else d.udp + d.tcp - sum(tables.values())
            xs.append(t1)
            ys.append(v / running / (t1 - t0) if running and t1 > t0 else 0.0)
        ax2.plot(xs, ys, color=color, label=name)
    ax2.set_xlabel("simulated time (s)")
    ax2.set_ylabel("bytes sent / node / s")
    ax2.legend(fontsize=7)
    spec = result["spec"]
    fig.suptitle(f"N={spec['nodes']}  endpoint rows, {_label(result)}  seed={spec['seed']}", fontsize=10)
    fig.tight_layout()
    p = out / "endpoints.png"
    fig.savefig(p, dpi=DPI)
    plt.close(fig)
    return [p]


def _read_t100(directory: Path) -> list[float]:
    with (directory / "endpoints.csv").open() as f:
        return [float(r["t100"]) for r in csv.DictReader(f) if r["t100"]]


def compare_plot(out: Path, runs: Sequence[tuple[str, Path]]) -> Path | None:
    """CDF of time to 100 % of members per run, and bytes per node per second split."""
    if not available():
        return None
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [1.3, 1]})
    results = []
    for label, directory in runs:
        result = json.loads((directory / "result.json").read_text())
        results.append((label, result))
        xs, ys = _cdf(_read_t100(directory))
        ep = result["endpoints"]
        ax1.step(xs, ys, where="post",
                 label=f"{label}: p50 {ep['t100']['p50']:.2f} s, p99 {ep['t100']['p99']:.2f} s")
    ax1.set_xscale("log")
    ax1.set_xlabel("seconds until every other member of the network sees the row (log)")
    ax1.set_ylabel("% of endpoint rows")
    ax1.set_ylim(-2, 102)
    ax1.legend(fontsize=8, loc="lower right")
    bottoms = [0.0] * len(results)
    for key, name, color in SPLIT:
        vals = [float(r["endpoints"]["bytes_per_node_per_s"][key]) / 1024 for _, r in results]
        ax2.bar(range(len(results)), vals, 0.6, bottom=bottoms, color=color, label=name)
        bottoms = [b + v for b, v in zip(bottoms, vals, strict=True)]
    for i, total in enumerate(bottoms):
        ax2.text(i, total, f"{total:,.1f} KiB/s", ha="center", va="bottom", fontsize=8)
    ax2.set_xticks(range(len(results)), [label for label, _ in results])
    ax2.set_ylabel("KiB sent / node / s")
    ax2.legend(fontsize=7)
    spec = results[0][1]["spec"] if results else {"nodes": "?"}
    ep0 = results[0][1]["endpoints"] if results else {}
    fig.suptitle(f"N={spec['nodes']}, {ep0.get('networks')} networks × {ep0.get('size')} members, "
                 f"{ep0.get('rate_per_network_per_s')} endpoint / network / s", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=DPI)
    plt.close(fig)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 3 or args[0] != "compare":
        print("usage: python -m sim.tablesplots compare OUT.png LABEL=RUN_DIR [LABEL=RUN_DIR ...]",
              file=sys.stderr)
        return 2
    try:
        runs = labelled_dirs(args[2:], "RUN_DIR")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for _label, directory in runs:
        if not (directory / "endpoints.csv").is_file():
            print(f"error: {directory} has no endpoints.csv (run an 'endpoints' scenario with --out)",
                  file=sys.stderr)
            return 2
    try:
        made = compare_plot(Path(args[1]), runs)
    except (OSError, ValueError, KeyError) as e:
        print(f"error: cannot read a run: {e}", file=sys.stderr)
        return 2
    if made is None:
        print("error: matplotlib is not installed (pip install -e '.[sim]')", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
