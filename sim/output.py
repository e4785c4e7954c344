"""Files a run leaves behind: result.json and CSV tables.

Owns: file names and CSV layouts. ``result.json`` holds the spec (enough to
replay the run), the trace hash and every summary metric; the CSVs hold the
series behind the plots:

- ``timeseries.csv``: per simulated second, running nodes, fraction with a
  correct view, wrong pairs, datagrams and bytes sent (total and per node);
- ``dissemination.csv``: for each watched update, the fraction reached at each
  arrival;
- ``detection.csv``: per crashed node, first suspicion / first failure / 50 % /
  99 % / all observers; ``detection_cdf.csv``: pooled latency quantiles;
- ``false_positives.csv``: every accusation of a running node.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path

from sim.metrics import INF, Metrics


def write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_default) + "\n")


def _default(o: object) -> object:
    if isinstance(o, bytes):
        return o.hex()
    if isinstance(o, float) and not math.isfinite(o):
        return None
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _write(path: Path, header: list[str], rows: Sequence[Sequence[object]]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in rows:
            w.writerow([_cell(x) for x in r])


def _cell(x: object) -> object:
    if isinstance(x, float):
        return "" if not math.isfinite(x) else f"{x:.6g}"
    return "" if x is None else x


def write_run(out: Path, result: dict[str, object], metrics: Metrics, end: float) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    p = out / "result.json"
    write_json(p, result)
    written.append(p)

    p = out / "timeseries.csv"
    rows: list[list[object]] = []
    for t, running, conv, wrong, msgs, nbytes in metrics.timeseries():
        rows.append([t, running, conv, wrong, msgs, nbytes,
                     msgs / running if running else 0.0, nbytes / running if running else 0.0])
    _write(p, ["t", "running", "converged_fraction", "wrong_pair_fraction", "udp_msgs", "udp_bytes",
               "udp_msgs_per_node", "udp_bytes_per_node"], rows)
    written.append(p)

    p = out / "dissemination.csv"
    rows = []
    for label, times, pop in metrics.dissemination_curves(end):
        for i, t in enumerate(times):
            rows.append([label, pop, t, (i + 1) / pop if pop else 0.0])
    _write(p, ["update", "population", "t_since_update", "fraction"], rows)
    written.append(p)

    det = result["detection"]
    assert isinstance(det, dict)
    p = out / "detection.csv"
    subj = det.get("per_subject", [])
    _write(p, ["subject", "crashed_at", "observers", "detected", "first_suspect", "first_failed",
               "t50", "t99", "all"],
           [[s["subject"], s["at"], s["observers"], s["detected"], s["first_suspect"],
             s["first_failed"], s["t50"], s["t99"], s["all"]] for s in subj])
    written.append(p)

    p = out / "detection_cdf.csv"
    pooled = detection_latencies(metrics, end)
    cdf_rows: list[list[object]] = []
    if pooled:
        steps = min(len(pooled), 1000)
        for k in range(1, steps + 1):
            idx = max(0, math.ceil(k / steps * len(pooled)) - 1)
            cdf_rows.append([pooled[idx], (idx + 1) / len(pooled)])
    _write(p, ["latency", "fraction"], cdf_rows)
    written.append(p)

    p = out / "false_positives.csv"
    _write(p, ["first_at", "first_observer", "subject", "kind", "incarnation", "subject_stalls",
               "observers"], metrics.accusation_rows())
    written.append(p)
    for ext in metrics.extensions.values():
        written += ext.write_csv(out, end)
    return written


def detection_latencies(metrics: Metrics, end: float) -> list[float]:
    """Pooled (crashed node, observer) detection latencies, sorted."""
    pooled: list[float] = []
    for out in metrics.outages:
        if out.kind != "crash" or out.ended_at is not None:
            continue
        for o in range(metrics.n):
            if o != out.subject and metrics.views.truth[o] and metrics.up_since[o] <= out.at:
                v = out.seen[o]
                if v != INF:
                    pooled.append(v)
    pooled.sort()
    return pooled
