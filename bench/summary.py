"""Summaries of repeated benchmark runs and the ours/reference ratios.

Owns: reducing per-run result dicts (each with ``kind`` and ``n``) to
median/min/max per metric, the ``ratios`` convention every benchmark's JSON
follows (metric -> ours / reference, computed on medians; the headline value is
the worst over the sizes run), the plain-text table, and the two chores every
benchmark shares (progress lines on stderr, the ``--json FILE`` output). Does not:
know what was measured.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
from collections.abc import Mapping, Sequence
from typing import Any

Stats = dict[str, float | int | None]
"""{"median", "min", "max", "runs"} of one metric for one (kind, n)."""


def stats(values: Sequence[float | None]) -> Stats:
    xs = [float(v) for v in values if v is not None]
    return {
        "median": statistics.median(xs) if xs else None,
        "min": min(xs) if xs else None,
        "max": max(xs) if xs else None,
        "runs": len(xs),
    }


def summarize(
    results: Sequence[Mapping[str, Any]], keys: Mapping[str, str]
) -> dict[str, dict[str, dict[str, Stats]]]:
    """{kind: {str(n): {metric: Stats}}} over the runs that produced a figure."""
    out: dict[str, dict[str, dict[str, Stats]]] = {}
    for kind in dict.fromkeys(r["kind"] for r in results):
        out[kind] = {}
        for n in sorted({r["n"] for r in results if r["kind"] == kind}):
            runs = [r for r in results if r["kind"] == kind and r["n"] == n]
            out[kind][str(n)] = {m: stats([r.get(k) for r in runs]) for m, k in keys.items()}
    return out


def ratios(
    summary: Mapping[str, Mapping[str, Mapping[str, Stats]]],
    metrics: Sequence[str],
    *,
    ours: str = "ours",
    reference: str = "serf",
) -> tuple[dict[str, dict[str, float | None]], dict[str, float | None]]:
    """(ratio of medians per size, worst ratio per metric over the sizes).

    A metric's worst ratio is None unless every size has both medians.
    """
    sizes = sorted(
        set(summary.get(ours, {})) | set(summary.get(reference, {})), key=lambda s: int(s)
    )
    by_n: dict[str, dict[str, float | None]] = {}
    for n in sizes:
        row: dict[str, float | None] = {}
        for m in metrics:
            a = summary.get(ours, {}).get(n, {}).get(m, {}).get("median")
            b = summary.get(reference, {}).get(n, {}).get(m, {}).get("median")
            row[m] = float(a) / float(b) if a is not None and b else None
        by_n[n] = row
    worst: dict[str, float | None] = {}
    for m in metrics:
        vals = [v for v in (row[m] for row in by_n.values()) if v is not None]
        worst[m] = max(vals) if vals and len(vals) == len(by_n) else None
    return by_n, worst


def _cell(s: Mapping[str, float | int | None] | None, nd: int) -> str:
    if not s or s.get("median") is None:
        return "-"
    med = f"{s['median']:.{nd}f}"
    if (s.get("runs") or 0) > 1 and s.get("max") is not None:
        return f"{med} ({s['max']:.{nd}f})"
    return med


def table(
    summary: Mapping[str, Mapping[str, Mapping[str, Stats]]],
    by_n: Mapping[str, Mapping[str, float | None]],
    labels: Mapping[str, tuple[str, int]],
    targets: Mapping[str, float],
    *,
    ours: str = "ours",
    reference: str = "serf",
) -> str:
    """One line per (metric, size): reference, ours (median, max over runs), ratio, target."""
    lines = [
        f"{'metric':<30} {'N':>4} {reference:>16} {ours:>16} {'ours/ref':>9} {'target':>7}",
    ]
    for m, (label, nd) in labels.items():
        for n, row in by_n.items():
            ratio = row.get(m)
            target = f"<={targets[m]:.1f}x" if m in targets else ""
            lines.append(
                f"{label:<30} {n:>4} {_cell(summary.get(reference, {}).get(n, {}).get(m), nd):>16} "
                f"{_cell(summary.get(ours, {}).get(n, {}).get(m), nd):>16} "
                f"{(f'{ratio:.2f}x') if ratio is not None else '-':>9} {target:>7}"
            )
    return "\n".join(lines)


def log(msg: str) -> None:
    """Progress for the operator: stderr, so stdout stays the report."""
    print(msg, file=sys.stderr, flush=True)


def write_json(path: str, report: Mapping[str, Any]) -> None:
    """The ``--json FILE`` output every benchmark writes (parent directories made)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
        f.write("\n")


def machine() -> dict[str, Any]:
    """The run's machine facts every report carries (load read at the end of the run)."""
    return {
        "kernel": platform.release(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }
