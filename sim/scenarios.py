"""Declarative, composable scenarios: what happens to the cluster, and when.

Owns: the scenario language and the registry of its components. A scenario is a
comma-separated list of components, each ``name[:key=value]...``; a preset name
expands to a list. Examples::

    crash-1pct                         # = converged,crash:pct=1:at=5
    converged,loss:p=0.1,stall:pct=5:dur=2
    bootstrap:seeds=3:spread=2,meta:at=20

Exactly one start component (``converged`` or ``bootstrap``) is used; without
one, ``converged`` is assumed. Components draw every random choice from one
RNG seeded by the run's seed, at install time or when their action runs, so the
schedule is a pure function of (spec, N, seed). Does not own: the components
themselves (``components.py`` has the contract and the built-in ones,
``keyrotation.py`` and ``tablesim.py`` the subsystem ones; this module imports
them all, none of them imports it), the mechanics of crashes, pauses, etc.
(``world.py``) or links (``network.py``).
"""

from __future__ import annotations

import dataclasses
import random
import typing

from sim.components import (
    Bootstrap,
    Churn,
    Component,
    Converged,
    Crash,
    Dup,
    Lat,
    Leave,
    Loss,
    Meta,
    Partition,
    ScenarioError,
    Setup,
    Slow,
    Stall,
)
from sim.keyrotation import KeyRotate
from sim.tablesim import Endpoints
from sim.world import World

__all__ = ["COMPONENTS", "PRESETS", "ScenarioError", "canonical", "describe", "install", "parse"]

COMPONENTS: dict[str, type[Component]] = {
    c.name: c for c in (Converged, Bootstrap, Crash, Leave, Partition, Churn, Meta, Loss, Dup, Lat,
                        Stall, Slow, KeyRotate, Endpoints)
}

PRESETS: dict[str, str] = {
    "crash-1pct": "converged,crash:pct=1:at=5",
    "meta-update": "converged,meta:at=2",
    "partition-heal": "converged,partition:at=5:heal=35",
    "partial-partition": "converged,partition:at=5:heal=35:bridge=10",
    "oneway-partition": "converged,partition:at=5:heal=35:oneway=1",
    "churn-1pct": "converged,churn:pct=1:every=5:down=10",
    "lossy": "converged,loss:p=0.1",
    "stalls": "converged,stall:pct=5:dur=2",
}


def _convert(raw: str, typ: object, where: str) -> object:
    try:
        if typ is bool:
            low = raw.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if typ is int:
            return int(raw)
        if typ is float:
            return float(raw)
    except ValueError:
        raise ScenarioError(f"{where}: {raw!r} is not a valid {getattr(typ, '__name__', typ)}") from None
    raise ScenarioError(f"{where}: unsupported parameter type")


def parse_component(text: str) -> Component:
    name, *params = text.strip().split(":")
    cls = COMPONENTS.get(name)
    if cls is None:
        known = ", ".join(sorted([*COMPONENTS, *PRESETS]))
        raise ScenarioError(f"unknown scenario component {name!r} (known: {known})")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, object] = {}
    for p in params:
        key, sep, value = p.partition("=")
        if not sep or key not in fields:
            raise ScenarioError(f"{name}: unknown parameter {p!r} (parameters: {', '.join(sorted(fields)) or 'none'})")
        kwargs[key] = _convert(value, hints[key], f"{name}:{key}")
    return cls(**kwargs)


def parse(spec: str) -> list[Component]:
    """Parse a scenario spec (presets expanded) into components, start component first."""
    parts: list[Component] = []
    for raw in spec.split(","):
        raw = raw.strip()
        if not raw:
            continue
        if raw in PRESETS:
            parts.extend(parse(PRESETS[raw]))
        else:
            parts.append(parse_component(raw))
    starts = [c for c in parts if c.begins]
    if len(starts) > 1:
        raise ScenarioError("a scenario has one start component (converged or bootstrap)")
    rest = [c for c in parts if not c.begins]
    return [starts[0] if starts else Converged(), *rest]


def canonical(components: list[Component]) -> str:
    """A spec string that parses back to the same components (for result.json)."""
    out = []
    for c in components:
        params = [f"{f.name}={_fmt(getattr(c, f.name))}" for f in dataclasses.fields(c)]  # type: ignore[arg-type]
        out.append(":".join([c.name, *params]))
    return ",".join(out)


def _fmt(v: object) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def install(components: list[Component], world: World, seed: int, duration: float) -> None:
    setup = Setup(world, random.Random(f"{seed}:scenario"), duration)
    for c in components:
        c.configure(setup)
    for c in components:
        c.install(setup)


def describe() -> str:
    lines = ["components:"]
    for name, cls in COMPONENTS.items():
        params = " ".join(f"{f.name}={_fmt(f.default)}" for f in dataclasses.fields(cls))
        lines.append(f"  {name:10s} {cls.doc}")
        if params:
            lines.append(f"  {'':10s}   defaults: {params}")
    lines.append("presets:")
    lines += [f"  {k:18s} = {v}" for k, v in PRESETS.items()]
    return "\n".join(lines)

