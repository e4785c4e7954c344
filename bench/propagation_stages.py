"""Where each millisecond of a propagation sample goes: the agents' stage marks, read back.

Agents started with ``--log-level debug`` log a ``row-trace`` line at each stage of a
table row (``Tables.trace``: the create call reaches the tables, the row is written,
it is pushed to peers, a peer merges it) and a ``pass-trace`` line for each reconciler
pass (start, apply, end). Every stamp is ``time.monotonic()``, one clock for every
process of the machine (CLOCK_MONOTONIC; the lab uses no time namespaces), so stamps
from the bench, the creating agent and the observing agent can be subtracted.

Stages of one sample (ms), summing to the sample:

* ``control``: request sent by the bench -> the create call reaches the creator's tables
  (client, control socket, the agent's checks, the driver's inbox);
* ``table_write``: -> the row is written (validation, addresses, the Lamport write);
* ``gossip_wait``: -> the row leaves for the observer: the push to every peer when the
  observer was among the pushed peers (``direct``), else until the observer merged it
  through a relay (``receive`` is then included here and not reported);
* ``receive``: push -> merged on the observer (the core's effects performed, the
  datagram's transit, the observer's inbox, decode and merge; direct samples only);
* ``coalesce``: merged -> the observer's reconciler pass starts (at once when it was
  idle; else its ``quiescent`` window after the poke, or a pass already running);
* ``plan``: pass start -> its apply (source view, compile, kernel read, plan);
* ``netlink``: the apply (batched netlink to the kernel);
* ``observe``: apply returned -> the bench's netlink monitor saw both entries
  (negative when the monitor's event came before the apply call returned).

Owns: parsing those lines and the per-stage breakdown. Pure: no I/O, no clock.
Does not: run agents or take samples (``bench.propagation``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.log import parse_kv

STAGES = ("control", "table_write", "gossip_wait", "receive", "coalesce", "plan", "netlink", "observe")


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


@dataclass(frozen=True, slots=True)
class Pass:
    start: float
    apply: float
    end: float
    ops: int


@dataclass(slots=True)
class Marks:
    """One agent's stage marks, from its log."""

    calls: list[float] = field(default_factory=list)
    writes: dict[str, float] = field(default_factory=dict)
    pushes: dict[str, tuple[float, list[str]]] = field(default_factory=dict)
    merges: dict[str, float] = field(default_factory=dict)
    passes: list[Pass] = field(default_factory=list)


def parse_marks(lines: Iterable[str]) -> Marks:
    marks = Marks()
    for line in lines:
        if "-trace" not in line:
            continue
        f = parse_kv(line.strip())
        if f is None:
            continue
        event = f.get("event")
        if event == "row-trace":
            t, stage, ident = float(f["t"]), str(f.get("stage")), str(f.get("id", ""))
            if stage == "call":
                marks.calls.append(t)
            elif stage == "write":
                marks.writes.setdefault(ident, t)
            elif stage == "push":
                detail = str(f.get("detail", ""))
                marks.pushes.setdefault(ident, (t, [p for p in detail.split(",") if p]))
            elif stage == "merge":
                marks.merges.setdefault(ident, t)
        elif event == "pass-trace":
            marks.passes.append(Pass(float(f["start"]), float(f["apply"]), float(f["end"]), int(f["ops"])))
    marks.calls.sort()
    marks.passes.sort(key=lambda p: p.start)
    return marks


def breakdown(sent: float, observed: float, ep_id: str, creator: Marks, observer: Marks,
              observer_name: str) -> dict[str, float | None]:
    """One sample's stages in ms (None: a mark is missing), plus ``direct`` (1.0/0.0)."""
    out: dict[str, float | None] = dict.fromkeys(STAGES)
    out["direct"] = None
    write = creator.writes.get(ep_id)
    call = max((t for t in creator.calls if write is not None and t <= write), default=None)
    push = creator.pushes.get(ep_id)
    merged = observer.merges.get(ep_id)
    run = next((p for p in observer.passes if merged is not None and p.start >= merged and p.ops), None)

    def ms(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else round((b - a) * 1000, 3)

    out["control"] = ms(sent, call)
    out["table_write"] = ms(call, write)
    if push is not None and observer_name in push[1]:
        out["direct"] = 1.0
        out["gossip_wait"] = ms(write, push[0])
        out["receive"] = ms(push[0], merged)
    elif write is not None:
        out["direct"] = 0.0
        out["gossip_wait"] = ms(write, merged)
    if run is not None:
        out["coalesce"] = ms(merged, run.start)
        out["plan"] = ms(run.start, run.apply)
        out["netlink"] = ms(run.apply, run.end)
        out["observe"] = ms(run.end, observed)
    return out


def summarize(rows: Sequence[dict[str, float | None]]) -> dict[str, Any]:
    """p50/p99/mean/max per stage over the samples that have it."""
    stages: dict[str, Any] = {}
    for stage in STAGES:
        values = [v for r in rows if (v := r.get(stage)) is not None]
        if not values:
            stages[stage] = {"n": 0}
            continue
        stages[stage] = {"n": len(values), "p50": round(percentile(values, 50), 2),
                         "p99": round(percentile(values, 99), 2),
                         "mean": round(sum(values) / len(values), 2), "max": round(max(values), 2)}
    complete = sum(1 for r in rows if all(r.get(s) is not None for s in STAGES if s != "receive"))
    direct = sum(1 for r in rows if r.get("direct") == 1.0)
    return {"stages_ms": stages, "samples_complete": complete, "samples_direct": direct}
