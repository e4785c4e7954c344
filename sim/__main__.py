"""Command line: ``python -m sim --nodes N --duration S --scenario SPEC --seed S --out DIR``.

Owns: argument parsing, sweeps (``--sweep KEY=V1,V2``, repeatable: the product
is run by ``sim/sweep.py`` on the engine ``--engine`` names), replay (``--replay DIR/result.json`` re-runs a recorded spec and
checks the trace hash) and the one-paragraph summary printed at the end.
Errors in the arguments or the scenario are reported in one line, exit 2.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

from sim import keyplots, keyrotation, plots, scenarios, sweep
from sim.engines import ENGINES, EngineError, make_engine, parse_bytes
from sim.engines.point import die_with_parent
from sim.output import write_run
from sim.progress import Progress
from sim.run import RunSpec, SpecError, execute


def _pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value.strip()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sim", description=(
        "Deterministic discrete-event simulation of N nodes running the real gossip core."))
    p.add_argument("--nodes", "-n", type=int, default=100, help="number of nodes (default 100)")
    p.add_argument("--duration", "-d", type=float, default=60.0, help="simulated seconds (default 60)")
    p.add_argument("--scenario", "-s", default="crash-1pct",
                   help="scenario spec: components and presets, comma separated (see --list-scenarios)")
    p.add_argument("--seed", type=int, default=1, help="seed of every random choice (default 1)")
    p.add_argument("--out", "-o", type=Path, help="output directory (result.json, CSV, PNG)")
    p.add_argument("--profile", default="lan", choices=("lan", "wan", "local"), help="memberlist profile")
    p.add_argument("--set", dest="overrides", action="append", type=_pair, default=[], metavar="FIELD=VALUE",
                   help="override a gossip Config field, e.g. --set lifeguard=false (repeatable)")
    p.add_argument("--sweep", action="append", type=_pair, default=[], metavar="KEY=V1,V2,...",
                   help="run once per value; KEY is nodes, seed, duration or a Config field (repeatable: product)")
    p.add_argument("--engine", default="local", metavar="|".join(ENGINES),
                   help="where sweep points run: local (processes on this machine, default) or dask")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="dask scheduler, e.g. tcp://HOST:8786 (default: a LocalCluster on this machine)")
    p.add_argument("--workers", type=int, metavar="N",
                   help="points run at once (default: this machine's cores; with --scheduler: its worker threads)")
    p.add_argument("--memory-limit", metavar="SIZE",
                   help="memory the concurrent points of a sweep may use together, e.g. 6G "
                        "(default: MemAvailable here, or the dask workers' limits)")
    p.add_argument("--trace", type=Path, help="also write every traced event as JSON lines (small runs only)")
    p.add_argument("--replay", type=Path, metavar="RESULT_JSON",
                   help="re-run the spec recorded in a result.json and check that the trace hash matches")
    p.add_argument("--no-plots", action="store_true", help="skip PNG plots")
    prog = p.add_mutually_exclusive_group()
    prog.add_argument("--progress", dest="progress", action="store_true", default=None,
                      help="progress bar on stderr (default: when stderr is a terminal)")
    prog.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--list-scenarios", action="store_true", help="describe scenario components and presets")
    return p


def summary_line(result: dict[str, Any]) -> str:
    spec, perf, tr = result["spec"], result["perf"], result["traffic"]
    det, fp = result["detection"], result["false_positives"]
    parts = [
        f"N={spec['nodes']} {spec['duration']:g}s '{spec['scenario']}' seed={spec['seed']}",
        f"wall {perf['wall_s']:.1f}s, cpu {perf['cpu_s']:.1f}s ({perf['events']:,} events, "
        f"{perf['events_per_wall_s'] or 0:,.0f}/s wall), "
        f"peak RSS {perf['peak_rss_mib']:,.0f} MiB",
        f"per node: {tr['udp_msgs_per_node_per_s'] or 0:.2f} datagrams/s, "
        f"{tr['udp_bytes_per_node_per_s'] or 0:,.0f} B/s",
    ]
    if det["crashed"]:
        lat = det["latency"]
        parts.append(f"detection of {det['crashed']} crashes: first suspicion mean "
                     f"{_f(det['first_suspicion']['mean'])} s, observers p50 {_f(lat['p50'])} s / "
                     f"p99 {_f(lat['p99'])} s / max {_f(lat['max'])} s, undetected pairs "
                     f"{det['undetected_pairs']}")
    for d in result["dissemination"]:
        parts.append(f"{d['label']}: 50% {_f(d['t50'])} s, 99% {_f(d['t99'])} s, 100% {_f(d['t100'])} s")
    conv = result["convergence"]
    if conv["join_converged_at"] is not None or conv["all_started_at"] > 0:
        parts.append(f"join: all {spec['nodes']} started by {conv['all_started_at']:.2f} s, every view "
                     f"correct at {_f(conv['join_converged_at'])} s")
    ep = result.get("endpoints")
    if ep:
        b = ep["bytes_per_node_per_s"]
        parts.append(f"endpoint rows ({'scoped' if ep['scoped'] else 'whole cluster'}): {ep['rows']} rows, "
                     f"{ep['rows_reaching_all_members']} reached all members; t99 p50 {_f(ep['t99']['p50'])} s "
                     f"/ p99 {_f(ep['t99']['p99'])} s, t100 p50 {_f(ep['t100']['p50'])} s / p99 "
                     f"{_f(ep['t100']['p99'])} s / max {_f(ep['t100']['max'])} s; per node "
                     f"{b['total']:,.0f} B/s ({b['tables']:,.0f} tables, {b['membership']:,.0f} membership)")
    if "key_rotation" in result:
        parts += keyrotation.summary(result["key_rotation"])
    parts.append(f"false positives: {fp['suspicions']} suspicions, {fp['deaths']} deaths; "
                 f"views converged at end: {result['convergence']['converged_at_end']}")
    parts.append(f"trace {result['trace_hash']}")
    return "\n  ".join(parts)


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def run_one(spec: RunSpec, out: Path | None, args: argparse.Namespace, label: str = "") -> dict[str, Any]:
    show = args.progress if args.progress is not None else sys.stderr.isatty()
    progress = Progress(spec.duration, label=label, enabled=show)
    trace_file = args.trace.open("w") if args.trace else None
    try:
        outcome = execute(spec, progress=progress, trace_out=trace_file)
    finally:
        if trace_file is not None:
            trace_file.close()
    result = outcome.result
    # What the run built (~10^7 objects at 10,000 nodes) lives until the process
    # exits: out of the cyclic GC's reach, or the first full collection while the
    # outputs and plots are made walks all of it (seconds at 10,000 nodes).
    gc.freeze()
    if out is not None:
        write_run(out, result, outcome.metrics, spec.duration)
        if not args.no_plots:
            made = plots.run_plots(out, result, outcome.metrics, spec.duration)
            if not made and not plots.available():
                print("note: matplotlib is missing, no PNG plots (pip install -e '.[sim]')", file=sys.stderr)
        if "key_rotation" in result:
            keyplots.write_files(out, result, plots=not args.no_plots)
    return result


def run_sweep(base: RunSpec, args: argparse.Namespace) -> int:
    axes: list[tuple[str, list[str]]] = [(k, [v for v in vs.split(",") if v]) for k, vs in args.sweep]
    if args.trace:
        raise SpecError("--trace is for single runs, not sweeps")
    sweep.plan(base, axes)  # every point's spec checked before an engine starts
    memory_limit = parse_bytes(args.memory_limit) if args.memory_limit else None
    engine = make_engine(args.engine, args.workers, args.scheduler)
    try:
        return sweep.run_sweep(base, axes, args.out, engine, plots_on=not args.no_plots,
                               memory_limit=memory_limit, show_progress=args.progress is not False)
    finally:
        engine.close()


def replay(path: Path, args: argparse.Namespace) -> int:
    try:
        recorded = json.loads(path.read_text())
        spec = RunSpec.from_dict(recorded["spec"])
        expected = recorded["trace_hash"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"error: cannot read a result from {path}: {e}", file=sys.stderr)
        return 2
    result = run_one(spec, args.out, args)
    ok = result["trace_hash"] == expected
    print(summary_line(result))
    print(f"replay {'OK' if ok else 'MISMATCH'}: recorded {expected}, now {result['trace_hash']}")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    die_with_parent()
    args = build_parser().parse_args(argv)
    if args.list_scenarios:
        print(scenarios.describe())
        return 0
    try:
        if args.replay:
            return replay(args.replay, args)
        spec = RunSpec(nodes=args.nodes, duration=args.duration, scenario=args.scenario, seed=args.seed,
                       profile=args.profile, overrides=tuple(args.overrides))
        spec.validate()
        if args.sweep:
            return run_sweep(spec, args)
        result = run_one(spec, args.out, args)
        print(summary_line(result))
        return 0
    except (SpecError, scenarios.ScenarioError, EngineError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def exit_now(code: int) -> NoReturn:
    """Leave without tearing the run down object by object: every output is written
    and closed by now, and a 10,000-node run's ~10^7 objects took ~7 s of the
    command's wall time to free one by one at interpreter exit (the OS frees the
    process's memory at once). Buffered output is flushed first."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
