"""The ``keyrotate`` scenario: a gossip-key rotation (install K2, use K2, remove K1).

Owns: the scenario component, the operator's procedure and what it measures.
Every node starts with key K1 (encryption on, plaintext refused). At ``at`` the
operator runs on node ``node``, like ``agentctl keys install|use|remove``:

- query mode (default): the agent's code path (``agent/control/ops.py`` ``keys_op``):
  apply the change locally (``gossip.serf.keyops.apply_key``), send the serf key query
  with ``Swim.send_query`` and the agent's timeout (``keyops.query_timeout``),
  collect ``QueryResponse`` effects like the agent's ``QueryBook``
  (``keyops.QueryTally``) until ``QueryFinished`` and build the agent's report
  (``keyops.cluster_report``). Members answer and apply in ``gossip/serf/queries.py``.
  ``wait=1``: the next step starts ``gap`` s after the command returned (agentctl
  blocks until the query finished); ``wait=0``: steps start ``gap`` s apart.
- ``loop=1``: the documented fallback, ``agentctl keys ACTION --local`` on every
  host from a parallel shell loop: each node applies within ``spread`` s.
- ``early=E`` (> 0): remove K1 E s after ``use`` was sent, before it reached everyone.

Members re-broadcast each new query they receive, as serf members do
(``gossip.serf.layer.SerfLayer``); this scenario found that the core used to only answer, so
a query reached just the few members the querier gossiped it to.

Measured (``result.json`` section ``key_rotation``): per step, the fraction of the
nodes running at its start that hold the change vs time (t50/t99/t100), the acks
and responses the querier got vs N, datagrams and streams that failed to decode
(the world's ``decode_errors``: with keys on, that is a failed decryption),
false suspicions/deaths from ``at`` on, and each node's keyring at the end.
Does not own: the mechanics of effects (``world.py``) or plotting (``keyplots.py``).
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from typing import Any

from gossip.effects import KeyringChanged, QueryFinished, QueryResponse
from gossip.serf import keyops
from gossip.swim import Swim
from sim import metrics as m
from sim.components import Component, ScenarioError, Setup
from sim.cores import SwimFactory
from sim.world import UP, World

STEPS = ("install", "use", "remove")
K1 = hashlib.sha256(b"sim gossip key 1").digest()
K2 = hashlib.sha256(b"sim gossip key 2").digest()
"""Fixed AES-256 keys: a simulation needs distinct keys, not secret ones."""
CURVE_POINTS = 300
"""At most this many points per step's applied-vs-time curve in result.json."""
SAMPLE_EVERY = 0.5


@dataclass
class KeyRotate(Component):
    name = "keyrotate"
    doc = ("all nodes start with key K1; at `at` node `node` rotates to K2 like agentctl: install, use, "
           "remove K1 (serf key queries; wait=1: each waits for its query to finish, then `gap` s); "
           "early=E: remove E s after use; loop=1: --local on every host within `spread` s")
    at: float = 10.0
    gap: float = 5.0
    wait: bool = True
    early: float = 0.0
    node: int = 0
    loop: bool = False
    spread: float = 2.0

    def configure(self, s: Setup) -> None:
        factory = s.world.factory
        if not isinstance(factory, SwimFactory):
            raise ScenarioError("keyrotate needs the real core (SwimFactory)")
        if not 0 <= self.node < s.n:
            raise ScenarioError(f"keyrotate: node {self.node} out of range")
        if self.gap < 0 or self.early < 0 or self.spread < 0:
            raise ScenarioError("keyrotate: gap, early and spread must not be negative")
        factory.keys = (K1,)

    def install(self, s: Setup) -> None:
        Rotation(self, s).install()


@dataclass
class Step:
    action: str
    key: bytes
    start: float = -1.0
    returned: float | None = None
    population: list[int] = field(default_factory=list)
    applied: dict[int, float] = field(default_factory=dict)
    query_id: int | None = None
    timeout: float | None = None
    live: list[str] = field(default_factory=list)
    tally: keyops.QueryTally = field(default_factory=keyops.QueryTally)
    report: dict[str, Any] | None = None
    local_error: str | None = None
    loop_errors: dict[str, int] = field(default_factory=dict)

    def holds(self, ring_keys: tuple[bytes, ...]) -> bool:
        """Whether a node's keyring reflects this step."""
        if self.action == "install":
            return K2 in ring_keys
        if self.action == "use":
            return bool(ring_keys) and ring_keys[0] == K2
        return K1 not in ring_keys


class Rotation:
    """One run of the procedure: schedules the steps, hooks the effects, builds the report."""

    def __init__(self, comp: KeyRotate, s: Setup) -> None:
        self.c = comp
        self.s = s
        self.w: World = s.world
        self.steps = [Step(a, K2 if a != "remove" else K1) for a in STEPS]
        self.by_query: dict[int, Step] = {}
        self.timeline: list[tuple[float, int, int, int]] = []
        self.decode_at_start = 0
        self.fp_at_start = (0, 0)

    def install(self) -> None:
        w = self.w
        w.effect_hooks[KeyringChanged] = self._keyring_changed
        w.effect_hooks[QueryResponse] = self._response
        w.effect_hooks[QueryFinished] = self._finished
        w.reports["key_rotation"] = self.report
        w.at(self.c.at, "keyrotate install", functools.partial(self._run, 0))
        t = max(0.0, self.c.at - 2.0)
        while t <= self.s.duration:
            w.at(t, "keyrotate sample", self._sample)
            t += SAMPLE_EVERY

    # -- measuring ---------------------------------------------------------------

    def _sample(self) -> None:
        met = self.w.metrics
        self.timeline.append((self.w.now, met.decode_errors, met.fp_events[m.SUSPECTED], met.fp_events[m.FAILED]))

    def _ring(self, idx: int) -> tuple[bytes, ...] | None:
        core = self.w.nodes[idx].core
        if not isinstance(core, Swim) or core.keyring is None:
            return None
        return core.keyring.keys

    def _check(self, idx: int) -> None:
        ring = self._ring(idx)
        if ring is None:
            return
        for st in self.steps:
            if st.start >= 0 and idx not in st.applied and st.holds(ring):
                st.applied[idx] = self.w.now

    def _keyring_changed(self, idx: int, _e: Any) -> None:
        self._check(idx)

    def _response(self, idx: int, e: Any) -> None:
        assert isinstance(e, QueryResponse)
        st = self.by_query.get(e.query_id)
        if st is not None and idx == self.c.node:
            st.tally.add(e)

    def _finished(self, idx: int, e: Any) -> None:
        assert isinstance(e, QueryFinished)
        st = self.by_query.get(e.query_id)
        if st is None or idx != self.c.node or st.returned is not None:
            return
        st.returned = self.w.now
        me = self.w.nodes[self.c.node].name
        st.report = keyops.cluster_report(me, st.live, st.tally.acks, st.tally.responses)
        if self.c.wait and not self._early_next(st):
            self._next(st, self.w.now + self.c.gap)

    # -- the operator ---------------------------------------------------------------

    def _early_next(self, st: Step) -> bool:
        return self.c.early > 0 and st.action == "use"

    def _next(self, st: Step, when: float) -> None:
        k = self.steps.index(st) + 1
        if k < len(self.steps):
            self.w.at(when, f"keyrotate {self.steps[k].action}", functools.partial(self._run, k))

    def _run(self, k: int) -> None:
        w = self.w
        st = self.steps[k]
        if st.start >= 0:
            return
        if k == 0:
            self.decode_at_start = w.metrics.decode_errors
            self.fp_at_start = (w.metrics.fp_events[m.SUSPECTED], w.metrics.fp_events[m.FAILED])
        st.start = w.now
        st.population = w.live()
        if self.c.loop:
            self._run_loop(st)
        else:
            self._run_query(st)
        if st.start < 0:
            return  # the operator's node could not run the command
        if self._early_next(st):
            self._next(st, w.now + self.c.early)
        elif self.c.loop:
            self._next(st, w.now + self.c.spread + self.c.gap)
        elif not self.c.wait:
            self._next(st, w.now + self.c.gap)

    def _run_query(self, st: Step) -> None:
        """What ``keys_op`` does inside ``Driver.call``: local change, then the serf query."""
        w = self.w
        q = self.c.node
        node = w.nodes[q]
        core = node.core
        if node.state != UP or not isinstance(core, Swim) or core.keyring is None:
            st.local_error = "the operator's node is not running"
            st.start = -1.0
            # agentctl cannot reach a stopped agent; the operator retries a second later.
            w.at(w.now + 1.0, f"keyrotate {st.action} retry", functools.partial(self._run, self.steps.index(st)))
            return
        try:
            keyops.apply_key(core.keyring, st.action, st.key)
        except ValueError as exc:
            st.local_error = str(exc)
            return  # agentctl reports the error; nothing is sent
        for i in st.population:
            self._check(i)
        name, payload = keyops.key_query(st.action, st.key)
        st.timeout = keyops.query_timeout(core)
        st.live = keyops.live_members(core)
        qid, effects = core.send_query(w.now, name, payload, timeout=st.timeout)
        st.query_id = qid
        self.by_query[qid] = st
        w.perform(q, effects)

    def _run_loop(self, st: Step) -> None:
        """``agentctl keys ACTION --local`` on every host, from a parallel shell loop."""
        w = self.w
        for i in st.population:
            when = w.now + self.s.rng.uniform(0.0, self.c.spread)
            w.at(when, f"keyrotate {st.action} {i}", functools.partial(self._apply_local, st, i))

    def _apply_local(self, st: Step, idx: int) -> None:
        core = self.w.nodes[idx].core
        if not isinstance(core, Swim) or core.keyring is None:
            return
        try:
            keyops.apply_key(core.keyring, st.action, st.key)
        except ValueError as exc:
            st.loop_errors[str(exc)] = st.loop_errors.get(str(exc), 0) + 1
        self._check(idx)

    # -- the result ---------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        w = self.w
        live = w.live()
        final = {"live": len(live), "only_k2": 0, "primary_k2": 0, "holding_k1": 0, "missing_k2": 0}
        for i in live:
            ring = self._ring(i) or ()
            final["only_k2"] += ring == (K2,)
            final["primary_k2"] += bool(ring) and ring[0] == K2
            final["holding_k1"] += K1 in ring
            final["missing_k2"] += K2 not in ring
        rows = w.metrics.accusation_rows()
        during = [r for r in rows if r[0] >= self.c.at]
        met = w.metrics
        return {
            "mode": "loop" if self.c.loop else "query",
            "operator_node": w.nodes[self.c.node].name,
            "nodes": w.n,
            "steps": [self._step_report(st) for st in self.steps],
            "final": final,
            "decode_errors": {
                "before_rotation": self.decode_at_start,
                "from_rotation_on": met.decode_errors - self.decode_at_start,
            },
            "false_positives_from_rotation_on": {
                "suspicions": sum(1 for r in during if r[3] == "suspected"),
                "deaths": sum(1 for r in during if r[3] == "failed"),
                "nodes_declared_dead": len({r[2] for r in during if r[3] == "failed"}),
                "observer_events": {"suspected": met.fp_events[m.SUSPECTED] - self.fp_at_start[0],
                                    "failed": met.fp_events[m.FAILED] - self.fp_at_start[1]},
            },
            "timeline": [list(r) for r in self.timeline],
            "timeline_columns": ["t", "decode_errors", "fp_suspect_events", "fp_failed_events"],
        }

    def _step_report(self, st: Step) -> dict[str, Any]:
        if st.start < 0:
            return {"action": st.action, "ran": False, "local_error": st.local_error}
        pop = len(st.population)
        times = sorted(st.applied[i] - st.start for i in st.population if i in st.applied)
        out: dict[str, Any] = {
            "action": st.action, "ran": True, "start": st.start, "returned": st.returned,
            "population": pop, "applied": len(times),
            "applied_fraction": len(times) / pop if pop else None,
            "t50": m.time_to_fraction(times, pop, 0.5),
            "t99": m.time_to_fraction(times, pop, 0.99),
            "t100": m.time_to_fraction(times, pop, 1.0),
            "local_error": st.local_error,
        }
        if st.query_id is not None:
            rep = st.report or keyops.cluster_report(
                self.w.nodes[self.c.node].name, st.live, st.tally.acks, st.tally.responses)
            reasons: dict[str, int] = {}
            for why in rep["failed"].values():
                reasons[why] = reasons.get(why, 0) + 1
            out["query"] = {
                "timeout_s": st.timeout, "finished": st.returned is not None,
                "members_known": rep["members"], "acks": len(st.tally.acks),
                "responses": len(st.tally.responses), "applied_reported": len(rep["applied"]),
                "failed": len(rep["failed"]), "failed_reasons": reasons,
                "no_answer": len(rep["no_answer"]),
            }
        if st.loop_errors:
            out["loop_errors"] = dict(sorted(st.loop_errors.items()))
        step = max(1, len(times) // CURVE_POINTS)
        curve = [[times[j], (j + 1) / pop] for j in range(step - 1, len(times), step)]
        if times and (not curve or curve[-1][0] != times[-1]):
            curve.append([times[-1], len(times) / pop])
        out["curve"] = curve
        return out


def summary(section: dict[str, Any]) -> list[str]:
    """Lines for the CLI's end-of-run paragraph."""
    parts = []
    for st in section["steps"]:
        if not st.get("ran"):
            parts.append(f"{st['action']}: not run ({st.get('local_error')})")
            continue
        q = st.get("query")
        ans = f", {q['responses']}/{q['members_known'] - 1} answered" if q else ""
        t99, t100 = (_s(st[k]) for k in ("t99", "t100"))
        parts.append(f"{st['action']}: {100 * (st['applied_fraction'] or 0):.1f} % applied"
                     f" (t99 {t99} s, t100 {t100} s){ans}")
    fin, fp = section["final"], section["false_positives_from_rotation_on"]
    return [
        "key rotation: " + "; ".join(parts),
        f"key rotation end: {fin['only_k2']}/{fin['live']} nodes hold only K2, {fin['holding_k1']} still hold K1; "
        f"{section['decode_errors']['from_rotation_on']} failed decodes, {fp['suspicions']} false suspicions, "
        f"{fp['deaths']} false deaths from the rotation on",
    ]


def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"
