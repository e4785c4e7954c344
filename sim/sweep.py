"""Sweeps: the product of ``--sweep`` axes, run on an engine, resumable, with a memory bound.

Owns: the plan (one ``RunSpec`` per point of the product, named
``key=value_key=value``), resume (a point whose ``DIR/result.json`` has an
equal canonical spec is not run again), the bound on concurrent points
(``estimate_bytes`` per point, summed over running points, kept under the
memory limit), retries of points whose process or worker died, progress lines
on stderr (done, running, failed, ETA) and the sweep's own files
(``sweep.json``, ``sweep.csv``, ``sweep.png``), always in plan order whatever
the completion order. Does not own: where points run (``sim/engines``) or a
point's own files (the point's ``python -m sim`` process writes them).

A point is a pure function of its spec: its ``result.json`` (``perf`` aside)
and trace hash do not depend on the engine, the worker count or the order in
which points finish.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

from sim import plots, scenarios
from sim.engines import Engine, PointOutcome, PointTask
from sim.output import write_json
from sim.run import RESULT_VERSION, RunSpec, SpecError, parse_overrides

MIB = 1 << 20
BASE_BYTES = 64 * MIB
NODE_BYTES = 32 * 1024
PAIR_BYTES = 16
"""The estimate is BASE + NODE·N + PAIR·N² bytes. Measured peaks with the compact member
table (crash-1pct, defaults; docs/scaling.md §7 and §6): 84 MiB at 1,000 nodes,
232 MiB at 3,000, 1,560 MiB at 10,000, i.e. ≈ 48 MiB + 24 KiB·N + 13.5 B·N² (the N²
term is the crash storm's per-(observer, crashed) state: N²/100 pairs; per-node tables,
RNGs and buffers are the N term). The constants are rounded up (by 20-30 % at 3,000 and
10,000 nodes) since an estimate too low would start points that do not fit."""
RETRIES = 2
"""Times a point whose process or worker died is run again before it counts as failed."""
HEARTBEAT_S = 30.0
POLL_S = 0.2

SUMMARY_KEYS = ("spec", "config", "trace_hash", "perf", "traffic", "detection", "false_positives", "dissemination",
                "convergence", "network", "analytic", "core", "endpoints")


def estimate_bytes(spec: RunSpec) -> int:
    """Peak memory of one point, from N (see ``PAIR_BYTES``)."""
    n = spec.nodes
    return BASE_BYTES + NODE_BYTES * n + PAIR_BYTES * n * n


def cost(spec: RunSpec) -> float:
    """Relative CPU cost, for ordering (largest first) and the ETA only."""
    return float(spec.duration * spec.nodes ** 1.5)


def with_value(spec: RunSpec, key: str, value: str) -> RunSpec:
    try:
        if key == "nodes":
            return replace(spec, nodes=int(value))
        if key == "seed":
            return replace(spec, seed=int(value))
        if key == "duration":
            return replace(spec, duration=float(value))
    except ValueError:
        raise SpecError(f"--sweep {key}: {value!r} is not a number") from None
    if key == "profile":
        return replace(spec, profile=value)
    others = tuple(kv for kv in spec.overrides if kv[0] != key)
    return replace(spec, overrides=(*others, (key, value)))


def canonical_spec(spec: RunSpec) -> dict[str, Any]:
    """What makes two specs the same run: presets expanded, defaults spelled out,
    overrides by field with parsed values (``false`` and ``0`` are one value)."""
    return {
        "nodes": spec.nodes, "duration": float(spec.duration), "seed": spec.seed, "profile": spec.profile,
        "scenario": scenarios.canonical(scenarios.parse(spec.scenario)),
        "overrides": sorted((k, repr(v)) for k, v in parse_overrides(spec.overrides).items()),
    }


@dataclass
class Point:
    name: str
    values: dict[str, str]
    spec: RunSpec
    result: dict[str, Any] | None = None
    status: str = "pending"
    """pending, running, done (run now), resumed (found in --out), failed."""
    message: str = ""
    attempts: int = 0


def plan(base: RunSpec, axes: list[tuple[str, list[str]]]) -> list[Point]:
    points = []
    for combo in itertools.product(*(vals for _, vals in axes)):
        spec = base
        for (key, _), value in zip(axes, combo, strict=True):
            spec = with_value(spec, key, value)
        spec.validate()
        name = "_".join(f"{k}={v}" for (k, _), v in zip(axes, combo, strict=True))
        points.append(Point(name, dict(zip([k for k, _ in axes], combo, strict=True)), spec))
    names = [p.name for p in points]
    if len(set(names)) != len(names):
        raise SpecError("--sweep: the same value twice on an axis")
    return points


def recorded(directory: Path, spec: RunSpec) -> dict[str, Any] | None:
    """The result already in ``directory`` if it is this spec's (else None: run it)."""
    try:
        result: dict[str, Any] = json.loads((directory / "result.json").read_text())
        if result.get("version") != RESULT_VERSION or "trace_hash" not in result:
            return None
        if canonical_spec(RunSpec.from_dict(result["spec"])) != canonical_spec(spec):
            return None
    except (OSError, ValueError, KeyError, TypeError, SpecError, scenarios.ScenarioError):
        return None
    return result


def slim(result: dict[str, Any]) -> dict[str, Any]:
    out = {k: result[k] for k in SUMMARY_KEYS if k in result}
    out["detection"] = {k: v for k, v in result["detection"].items() if k != "per_subject"}
    return out


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class SweepProgress:
    """One line on stderr whenever a point starts, ends or is retried, and every 30 s."""

    def __init__(self, points: list[Point], stream: TextIO | None, clock: Callable[[], float]) -> None:
        self.points = points
        self.stream = stream
        self.clock = clock
        self.started = clock()
        self.last = -math.inf
        self.done_cost = 0.0

    def line(self) -> str:
        by = {s: [p for p in self.points if p.status == s] for s in ("done", "resumed", "running", "failed",
                                                                       "pending")}
        elapsed = self.clock() - self.started
        left = sum(cost(p.spec) for p in by["pending"]) + 0.5 * sum(cost(p.spec) for p in by["running"])
        if self.done_cost > 0 and elapsed > 0:
            eta = _clock(left / (self.done_cost / elapsed))
        else:
            eta = "?" if left else "0:00"
        finished = len(by["done"]) + len(by["resumed"])
        return (f"sweep: {finished}/{len(self.points)} done ({len(by['resumed'])} resumed), "
                f"{len(by['running'])} running, {len(by['failed'])} failed, "
                f"elapsed {_clock(elapsed)}, eta {eta}")

    def show(self, force: bool = True) -> None:
        if self.stream is None:
            return
        now = self.clock()
        if force or now - self.last >= HEARTBEAT_S:
            self.last = now
            self.stream.write(self.line() + "\n")
            self.stream.flush()

    def note(self, text: str) -> None:
        if self.stream is not None:
            self.stream.write(text + "\n")
            self.stream.flush()


def _store(directory: Path, outcome: PointOutcome) -> dict[str, Any]:
    """Write a finished point's files; result.json last, so a half-written point is re-run."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "result.json").unlink(missing_ok=True)
    for name, data in outcome.files.items():
        if name != "result.json":
            (directory / name).write_bytes(data)
    result: dict[str, Any] = json.loads(outcome.files["result.json"])
    # The point process's own peak (plots included) as the kernel saw it, and where it ran.
    result["perf"]["process_peak_rss_mib"] = outcome.peak_rss_mib
    result["perf"]["worker_host"] = outcome.host
    write_json(directory / "result.json", result)
    return result


def run_sweep(base: RunSpec, axes: list[tuple[str, list[str]]], out: Path | None, engine: Engine, *,
              plots_on: bool = True, memory_limit: int | None = None, show_progress: bool = True,
              retries: int = RETRIES, echo: Callable[[str], None] = print) -> int:
    """Run every point not already in ``out``; 0 if all succeeded, 1 if any failed."""
    points = plan(base, axes)
    progress = SweepProgress(points, sys.stderr if show_progress else None, time.monotonic)
    for p in points:
        if out is not None and (r := recorded(out / p.name, p.spec)) is not None:
            p.result, p.status = r, "resumed"
    # Largest first: the long points start early and the small ones fill the gaps.
    queue = sorted((p for p in points if p.status == "pending"), key=lambda p: -cost(p.spec))
    budget = memory_limit if memory_limit is not None else engine.memory_bytes()
    running: list[tuple[Any, Point]] = []
    started = False
    wall0 = time.monotonic()
    progress.note(f"sweep: {len(points)} points, {len(queue)} to run on {engine.describe()}"
                  + (f", memory limit {budget / MIB:,.0f} MiB" if budget else ""))
    while queue or running:
        in_use = sum(estimate_bytes(p.spec) for _, p in running)
        while queue and len(running) < engine.workers:
            fits = [p for p in queue if budget is None or in_use + estimate_bytes(p.spec) <= budget]
            if not fits and not running:
                fits = queue[:1]  # too big for the limit even alone: run it alone
                progress.note(f"point {fits[0].name}: estimated {estimate_bytes(fits[0].spec) / MIB:,.0f} MiB "
                              f"exceeds the memory limit; running it alone")
            if not fits:
                break
            p = fits[0]
            queue.remove(p)
            p.attempts += 1
            p.status = "running"
            in_use += estimate_bytes(p.spec)
            task = PointTask(p.name, p.spec.as_dict(), plots=plots_on, attempt=p.attempts)
            running.append((engine.submit(task), p))
            started = True
        if started:
            progress.show()
            started = False
        time.sleep(POLL_S)
        for ticket, p in [r for r in running if r[0].done()]:
            running.remove((ticket, p))
            try:
                outcome: PointOutcome = ticket.result()
            except Exception as e:  # a lost worker, a scheduler that gave up: run it again
                outcome = PointOutcome(p.name, "killed", -1, f"lost: {type(e).__name__}: {e}".splitlines()[0])
            if outcome.status == "ok":
                p.result = _store(out / p.name, outcome) if out is not None else \
                    json.loads(outcome.files["result.json"])
                p.status = "done"
                progress.done_cost += cost(p.spec)
                echo(outcome.stdout.rstrip("\n"))
            elif outcome.status == "killed" and p.attempts <= retries:
                p.status = "pending"
                queue.insert(0, p)
                progress.note(f"point {p.name}: {outcome.message}; running it again "
                              f"(attempt {p.attempts + 1} of {retries + 1})")
            else:
                p.status, p.message = "failed", outcome.message
                progress.note(f"point {p.name} failed: {outcome.message}")
            progress.show()
        progress.show(force=False)
    if not any(p.status == "done" for p in points):
        progress.show()  # nothing ran: still say where the sweep stands
    wall = time.monotonic() - wall0
    failed = [p for p in points if p.status == "failed"]
    if out is not None:
        _write_sweep(out, axes, points, {"engine": engine.describe(), "workers": engine.workers,
                                         "wall_s": wall, "points_run": sum(p.status == "done" for p in points),
                                         "points_resumed": sum(p.status == "resumed" for p in points)},
                     plots_on)
    if failed:
        progress.note(f"sweep: {len(failed)} of {len(points)} points failed: "
                      + ", ".join(p.name for p in failed))
    return 1 if failed else 0


def _write_sweep(out: Path, axes: list[tuple[str, list[str]]], points: list[Point], run: dict[str, Any],
                 plots_on: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    ok = [p for p in points if p.result is not None]
    summary = [(p.values[axes[0][0]], slim(p.result)) for p in ok if p.result is not None]
    write_json(out / "sweep.json", {
        "axes": [{"key": k, "values": v} for k, v in axes],
        "points": [{"value": v, "result": r} for v, r in summary],
        "failed": [{"name": p.name, "message": p.message} for p in points if p.status == "failed"],
        "run": run,
    })
    sweep_csv(out / "sweep.csv", [(p.values, p.result) for p in ok if p.result is not None])
    if plots_on:
        plots.sweep_plots(out, axes[0][0], summary)


def sweep_csv(path: Path, rows: list[tuple[dict[str, str], dict[str, Any]]]) -> None:
    cols = [
        ("wall_s", "perf", "wall_s"), ("cpu_s", "perf", "cpu_s"),
        ("events_per_wall_s", "perf", "events_per_wall_s"), ("rss_end_mib", "perf", "rss_end_mib"),
        ("peak_rss_mib", "perf", "peak_rss_mib"),
        ("udp_msgs_per_node_per_s", "traffic", "udp_msgs_per_node_per_s"),
        ("udp_bytes_per_node_per_s", "traffic", "udp_bytes_per_node_per_s"),
        ("udp_msgs_per_node_per_s_median_second", "traffic", "udp_msgs_per_node_per_s_median_second"),
        ("udp_bytes_per_node_per_s_median_second", "traffic", "udp_bytes_per_node_per_s_median_second"),
        ("tcp_bytes_per_node_per_s", "traffic", "tcp_bytes_per_node_per_s"),
        ("fp_suspicions", "false_positives", "suspicions"), ("fp_deaths", "false_positives", "deaths"),
    ]
    keys = list(rows[0][0]) if rows else []
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*keys, *(c[0] for c in cols), "first_suspicion_mean", "detect_p50", "detect_max",
                    "update_t50", "update_t99", "update_t100", "trace_hash"])
        for point, r in rows:
            det = r["detection"]
            dis = r["dissemination"][0] if r["dissemination"] else {}
            w.writerow([*(point[k] for k in keys), *(r[a][b] for _, a, b in cols),
                        det["first_suspicion"]["mean"], det["latency"]["p50"], det["latency"]["max"],
                        dis.get("t50"), dis.get("t99"), dis.get("t100"), r["trace_hash"]])
