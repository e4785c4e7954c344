"""One simulation run: from a ``RunSpec`` to a result dict and the metrics behind it.

Owns: building the world (config, network, metrics, cores), installing the
scenario, running the clock, sampling once per simulated second and
assembling ``result.json``'s content. Does not own: files and plots
(``output.py``, ``plots.py``) or the command line (``__main__.py``).
"""

from __future__ import annotations

import dataclasses
import random
import time
import typing
from dataclasses import dataclass
from typing import Any, TextIO

from gossip.config import Config, suspicion_bounds
from sim import scenarios
from sim.analytic import predictions
from sim.cores import CoreFactory, SwimFactory
from sim.metrics import Metrics
from sim.network import Network
from sim.progress import Progress, cpu_seconds, current_rss_mib, peak_rss_mib
from sim.trace import Trace
from sim.world import World

RESULT_VERSION = 1


class SpecError(ValueError):
    """Run parameters that do not make sense (reported without a traceback)."""


@dataclass(frozen=True)
class RunSpec:
    nodes: int
    duration: float
    scenario: str = "crash-1pct"
    seed: int = 1
    profile: str = "lan"
    overrides: tuple[tuple[str, str], ...] = ()
    """Config fields to change, as (name, text value)."""

    def config(self) -> Config:
        try:
            config = Config.profile(self.profile)
        except ValueError as e:
            raise SpecError(str(e)) from None
        return config.with_(**parse_overrides(self.overrides)) if self.overrides else config

    def validate(self) -> None:
        if self.nodes < 1:
            raise SpecError("--nodes must be at least 1")
        if not self.duration > 0:
            raise SpecError("--duration must be positive")
        self.config()
        scenarios.parse(self.scenario)

    def as_dict(self) -> dict[str, object]:
        d = dataclasses.asdict(self)
        d["overrides"] = [f"{k}={v}" for k, v in self.overrides]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, typing.Any]) -> RunSpec:
        overrides = tuple(tuple(o.split("=", 1)) for o in d.get("overrides", []))
        return cls(nodes=int(d["nodes"]), duration=float(d["duration"]), scenario=str(d["scenario"]),
                   seed=int(d["seed"]), profile=str(d.get("profile", "lan")),
                   overrides=overrides)  # type: ignore[arg-type]


def parse_overrides(pairs: tuple[tuple[str, str], ...]) -> dict[str, object]:
    hints = typing.get_type_hints(Config)
    out: dict[str, object] = {}
    for key, raw in pairs:
        typ = hints.get(key)
        if typ is None:
            names = ", ".join(f.name for f in dataclasses.fields(Config))
            raise SpecError(f"unknown config field {key!r} (fields: {names})")
        try:
            if typ is bool:
                if raw.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                    raise ValueError(raw)
                out[key] = raw.lower() in ("1", "true", "yes", "on")
            elif typ is int:
                out[key] = int(raw)
            else:
                out[key] = float(raw)
        except ValueError:
            raise SpecError(f"config {key}: {raw!r} is not a valid {typ.__name__}") from None
    return out


@dataclass
class Outcome:
    result: dict[str, Any]
    metrics: Metrics
    world: World


def execute(spec: RunSpec, *, progress: Progress | None = None, trace_out: TextIO | None = None,
            factory: CoreFactory | None = None) -> Outcome:
    spec.validate()
    config = spec.config()
    components = scenarios.parse(spec.scenario)
    n = spec.nodes
    wall0 = time.perf_counter()
    cpu0 = cpu_seconds()
    # Any leftover suspicion about a restarted node's previous life ends within the
    # maximum suspicion timeout plus a few probe periods of gossip.
    fp_grace = suspicion_bounds(config, n)[1] + 5 * config.probe_interval
    metrics = Metrics(n, spec.duration, fp_grace)
    network = Network(n, random.Random(f"{spec.seed}:network"))
    trace = Trace(trace_out)
    world = World(n, factory or SwimFactory(config, spec.seed), network, metrics,
                  tcp_timeout=config.tcp_timeout, trace=trace)
    for s in range(1, int(spec.duration) + 1):
        world.at(float(s), "sample", lambda: metrics.sample(world.now))
    scenarios.install(components, world, spec.seed, spec.duration)
    setup_s = time.perf_counter() - wall0
    if progress is not None:
        progress.started = time.monotonic()
    world.run(spec.duration, progress)
    if progress is not None:
        progress.done(world.now, world.events)
    wall = time.perf_counter() - wall0
    run_s = wall - setup_s
    end = spec.duration
    result: dict[str, Any] = {
        "version": RESULT_VERSION,
        "spec": spec.as_dict(),
        "scenario_canonical": scenarios.canonical(components),
        "config": dataclasses.asdict(config),
        "trace_hash": trace.hexdigest(),
        "trace_records": trace.records,
        "perf": {
            "wall_s": wall, "setup_s": setup_s, "run_s": run_s, "cpu_s": cpu_seconds() - cpu0,
            "events": world.events, "core_calls": metrics.core_calls,
            "events_per_wall_s": world.events / run_s if run_s > 0 else None,
            "sim_s_per_wall_s": spec.duration / run_s if run_s > 0 else None,
            "peak_rss_mib": peak_rss_mib(),
            "rss_end_mib": current_rss_mib(),
        },
        "traffic": metrics.traffic(end),
        "detection": metrics.detection(end),
        "false_positives": metrics.false_positives(),
        "dissemination": metrics.dissemination(end),
        "convergence": metrics.convergence(),
        "network": {
            "dropped": network.dropped, "duplicated": network.duplicated,
            "to_stopped_nodes": world.dropped_off, "socket_buffer_overflow": world.dropped_buffer,
        },
        "nodes_running_at_end": metrics.views.running,
        "crashes": metrics.crash_count,
        "member_events": {k: v for k, v in zip(
            ("joined", "updated", "suspected", "failed", "left", "reaped"),
            metrics.event_counts.values(), strict=True)},
        "core": {"decode_errors": metrics.decode_errors, "stuck_ticks": world.stuck_ticks,
                 "joins_failed": world.joins_failed, "logs": world.logs,
                 "first_logs": [list(x) for x in world.first_logs[:10]]},
        "analytic": predictions(config, n),
    }
    for key, build in world.reports.items():
        result[key] = build()
    return Outcome(result, metrics, world)
