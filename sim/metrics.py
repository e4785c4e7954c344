"""What a run measured: traffic, failure detection, false positives, dissemination, views.

Owns: the counters the world feeds (per-node datagrams and bytes, per-second
bins, member events each node reports, ground-truth changes) and their
summary as plain JSON-able dicts and CSV rows. Does not own: running anything.

The world increments ``sent_msgs``/``sent_bytes``/bins directly on its hot
path; everything else arrives through the ``on_*`` methods, which are called
only for member events and scenario actions.

Definitions (docs/simulation.md explains them):
- detection latency: crash time → the moment an observer reports the crashed
  member failed (or left), per (crashed node, observer running throughout);
- false positive: a suspicion or death reported about a node that is running
  (paused counts as running) and, if it was restarted, was restarted at least
  ``fp_grace`` seconds ago (older news about its previous life is not an error);
  counted per accusation (subject, incarnation, kind) and per observer event;
- dissemination: for a watched update, the fraction of the nodes running at its
  start (excluding its subject) that have reported it, against time.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from gossip.members import Member, Status
from gossip.wire.messages import MessageType
from sim.views import Views

JOINED, UPDATED, SUSPECTED, FAILED, LEFT, REAPED = 1, 2, 3, 4, 5, 6
CODE_NAMES = {JOINED: "joined", UPDATED: "updated", SUSPECTED: "suspected", FAILED: "failed",
              LEFT: "left", REAPED: "reaped"}
INF = math.inf


def quantile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank quantile of already sorted values (None when empty)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


def time_to_fraction(sorted_times: Sequence[float], population: int, q: float) -> float | None:
    """When ``q`` of ``population`` had the news, given the sorted arrival times (None: never)."""
    if population <= 0:
        return None
    need = max(1, math.ceil(q * population - 1e-9))
    return sorted_times[need - 1] if need <= len(sorted_times) else None


def distribution(values: Sequence[float]) -> dict[str, float | int | None]:
    s = sorted(values)
    return {
        "count": len(s),
        "mean": (sum(s) / len(s)) if s else None,
        "p50": quantile(s, 0.5),
        "p90": quantile(s, 0.9),
        "p99": quantile(s, 0.99),
        "max": s[-1] if s else None,
        "min": s[0] if s else None,
    }


class Extension(Protocol):
    """Measurements a scenario component adds to a run (``Metrics.extensions``); its
    result.json section goes through ``World.reports``."""

    def write_csv(self, out: Path, end: float) -> list[Path]: ...

    def plots(self, out: Path, result: dict[str, Any]) -> list[Path]: ...


@dataclass
class Outage:
    """A node stopped (crash or leave); we measure how fast the others notice."""

    subject: int
    kind: str
    at: float
    n: int
    ended_at: float | None = None
    first_suspect: float = INF
    seen: array[float] = field(default_factory=lambda: array("d"))

    def __post_init__(self) -> None:
        self.seen = array("d", [INF]) * self.n


@dataclass
class Watch:
    """An update whose spread we measure: events of ``codes`` about ``subject``."""

    label: str
    subject: int
    codes: tuple[int, ...]
    at: float
    n: int
    meta: bytes | None = None
    first: array[float] = field(default_factory=lambda: array("d"))

    def __post_init__(self) -> None:
        self.first = array("d", [INF]) * self.n


class Metrics:
    def __init__(self, n: int, duration: float, fp_grace: float) -> None:
        self.n = n
        self.duration = duration
        self.fp_grace = fp_grace
        self.views = Views(n)
        # Hot-path counters (world writes them directly).
        self.sent_msgs = [0] * n
        self.sent_bytes = [0] * n
        self.bins = math.ceil(duration) + 1
        self.bin_msgs = [0] * self.bins
        self.bin_bytes = [0] * self.bins
        self.by_type = [0] * 256
        self.tcp_msgs = 0
        self.tcp_bytes = 0
        self.tcp_failures = 0
        self.decode_errors = 0
        self.core_calls = 0
        # Ground truth over time.
        self.up_since = [INF] * n
        self.up_time = [0.0] * n
        self.restarted_at = [-INF] * n
        self.last_first_start = 0.0
        self.bootstrapped = False
        """Nodes were started one by one (a bootstrap), not pre-converged."""
        """When the last node started for the first time (the end of a bootstrap)."""
        self.stalling = bytearray(n)
        self.stall_count = 0
        self.crash_count = 0
        # Outcomes.
        self.outages: list[Outage] = []
        self._open: dict[int, Outage] = {}
        self.watches: list[Watch] = []
        self._watching: dict[int, list[Watch]] = {}
        self.accusations: dict[tuple[int, int, int], list[float | int]] = {}
        self.fp_events = {SUSPECTED: 0, FAILED: 0}
        self.event_counts = dict.fromkeys(CODE_NAMES, 0)
        self.samples: list[tuple[float, int, float, float]] = []
        self.convergence_log: list[tuple[float, bool]] = []
        self._converged = True
        self.extensions: dict[str, Extension] = {}
        """Measurements a scenario component adds (e.g. ``endpoints``): a result.json
        section, CSVs and plots each."""

    # -- ground truth -----------------------------------------------------------

    def on_start(self, now: float, x: int, *, restart: bool = False, knows_all: bool = False) -> None:
        self.up_since[x] = now
        if not restart:
            self.last_first_start = now
            self.bootstrapped = True
        if restart:
            self.restarted_at[x] = now
        out = self._open.pop(x, None)
        if out is not None:
            out.ended_at = now
        self.views.start(x, knows_all)
        self._note_convergence(now)

    def on_start_all(self, now: float) -> None:
        self.views.start_all_converged()
        self.up_since = [now] * self.n

    def begin_outage(self, now: float, x: int, kind: str) -> None:
        """``x`` crashes now, or starts to leave (it stops later, see ``on_stop``)."""
        if kind == "crash":
            self.crash_count += 1
        out = Outage(x, kind, now, self.n)
        self.outages.append(out)
        self._open[x] = out

    def on_stop(self, now: float, x: int) -> None:
        if self.up_since[x] != INF:
            self.up_time[x] += now - self.up_since[x]
        self.up_since[x] = INF
        self.views.stop(x)
        self._note_convergence(now)

    def on_stall(self, x: int) -> None:
        self.stalling[x] = 1
        self.stall_count += 1

    def watch(self, label: str, subject: int, codes: tuple[int, ...], at: float,
              meta: bytes | None = None) -> Watch:
        w = Watch(label, subject, codes, at, self.n, meta)
        self.watches.append(w)
        self._watching.setdefault(subject, []).append(w)
        return w

    # -- member events ----------------------------------------------------------

    def on_event(self, now: float, o: int, code: int, x: int, member: Member) -> None:
        self.event_counts[code] += 1
        up = 1 if code != REAPED and member.status <= Status.SUSPECT else 0
        self.views.see(o, x, up)
        if code in (SUSPECTED, FAILED):
            out = self._open.get(x)
            if out is not None:
                if code == SUSPECTED:
                    out.first_suspect = min(out.first_suspect, now - out.at)
                elif out.seen[o] == INF:
                    out.seen[o] = now - out.at
            elif self.views.truth[x] and now - self.restarted_at[x] >= self.fp_grace:
                self.fp_events[code] += 1
                key = (x, member.incarnation, code)
                acc = self.accusations.get(key)
                if acc is None:
                    self.accusations[key] = [now, o, 1]
                else:
                    acc[2] = int(acc[2]) + 1
        elif code == LEFT:
            out = self._open.get(x)
            if out is not None and out.seen[o] == INF:
                out.seen[o] = now - out.at
        ws = self._watching.get(x)
        if ws is not None:
            for w in ws:
                if code in w.codes and w.first[o] == INF and (w.meta is None or member.meta == w.meta):
                    w.first[o] = now - w.at
        self._note_convergence(now)

    def _note_convergence(self, now: float) -> None:
        c = self.views.bad == 0
        if c != self._converged:
            self._converged = c
            if len(self.convergence_log) < 100_000:
                self.convergence_log.append((now, c))

    def sample(self, now: float) -> None:
        v = self.views
        self.samples.append((now, v.running, v.converged_fraction(), v.wrong_fraction()))

    # -- summaries ---------------------------------------------------------------

    def _observers(self, since: float, end: float, exclude: int) -> list[int]:
        """Nodes running at the end that have been running since ``since``."""
        return [o for o in range(self.n)
                if o != exclude and self.views.truth[o] and self.up_since[o] <= since]

    def node_seconds(self, end: float) -> float:
        total = 0.0
        for i in range(self.n):
            total += self.up_time[i]
            if self.up_since[i] != INF:
                total += end - self.up_since[i]
        return total

    def traffic(self, end: float) -> dict[str, object]:
        ns = self.node_seconds(end)
        per_node = []
        for i in range(self.n):
            alive = self.up_time[i] + (end - self.up_since[i] if self.up_since[i] != INF else 0.0)
            if alive >= 1.0:
                per_node.append(self.sent_msgs[i] / alive)
        names = {int(t): t.name.lower() for t in MessageType}
        # Per-second rates; their median ignores bursts (start-up, a crash's broadcasts).
        msgs_s, bytes_s = [], []
        for t, running, _c, _w in self.samples:
            b = int(t) - 1
            if running and 0 <= b < self.bins:
                msgs_s.append(self.bin_msgs[b] / running)
                bytes_s.append(self.bin_bytes[b] / running)
        return {
            "node_seconds": ns,
            "udp_msgs": sum(self.sent_msgs),
            "udp_bytes": sum(self.sent_bytes),
            "udp_msgs_per_node_per_s": sum(self.sent_msgs) / ns if ns else None,
            "udp_bytes_per_node_per_s": sum(self.sent_bytes) / ns if ns else None,
            "udp_msgs_per_node_per_s_median_second": quantile(sorted(msgs_s), 0.5),
            "udp_bytes_per_node_per_s_median_second": quantile(sorted(bytes_s), 0.5),
            "udp_msgs_per_node_per_s_dist": distribution(per_node),
            "tcp_bytes_per_node_per_s": self.tcp_bytes / ns if ns else None,
            "tcp_streams": self.tcp_msgs,
            "tcp_bytes": self.tcp_bytes,
            "tcp_failures": self.tcp_failures,
            "udp_by_type": {names.get(t, str(t)): c for t, c in enumerate(self.by_type) if c},
        }

    def detection(self, end: float) -> dict[str, object]:
        pooled: list[float] = []
        first_suspect: list[float] = []
        first_failed: list[float] = []
        all_failed: list[float] = []
        undetected = 0
        per_subject = []
        for out in self.outages:
            if out.kind != "crash" or out.ended_at is not None:
                continue
            obs = self._observers(out.at, end, out.subject)
            times = sorted(out.seen[o] for o in obs if out.seen[o] != INF)
            undetected += len(obs) - len(times)
            pooled.extend(times)
            if out.first_suspect != INF:
                first_suspect.append(out.first_suspect)
            if times:
                first_failed.append(times[0])
            complete = len(times) == len(obs)
            if complete and times:
                all_failed.append(times[-1])
            per_subject.append({
                "subject": out.subject, "at": out.at, "observers": len(obs),
                "detected": len(times), "first_suspect": _fin(out.first_suspect),
                "first_failed": times[0] if times else None,
                "t50": time_to_fraction(times, len(obs), 0.5),
                "t99": time_to_fraction(times, len(obs), 0.99),
                "all": times[-1] if complete and times else None,
            })
        return {
            "crashed": len(per_subject),
            "undetected_pairs": undetected,
            "latency": distribution(pooled),
            "first_suspicion": distribution(first_suspect),
            "first_failed": distribution(first_failed),
            "all_observers_failed": distribution(all_failed),
            "per_subject": per_subject[:200],
        }

    def false_positives(self) -> dict[str, object]:
        rows = self.accusation_rows()
        sus = [r for r in rows if r[3] == "suspected"]
        dead = [r for r in rows if r[3] == "failed"]
        return {
            "suspicions": len(sus),
            "deaths": len(dead),
            "suspicions_of_stalling_nodes": sum(1 for r in sus if r[5]),
            "deaths_of_stalling_nodes": sum(1 for r in dead if r[5]),
            "nodes_declared_dead": len({r[2] for r in dead}),
            "observer_events": {"suspected": self.fp_events[SUSPECTED], "failed": self.fp_events[FAILED]},
            "grace_s": self.fp_grace,
            "stalling_nodes": sum(self.stalling),
        }

    def accusation_rows(self) -> list[tuple[float, int, int, str, int, int, int]]:
        """(first time, first observer, subject, kind, incarnation, subject stalls, observers)."""
        rows = [(float(v[0]), int(v[1]), k[0], CODE_NAMES[k[2]], k[1], self.stalling[k[0]], int(v[2]))
                for k, v in self.accusations.items()]
        rows.sort()
        return rows

    def dissemination(self, end: float) -> list[dict[str, object]]:
        out = []
        for w in self.watches:
            obs = self._observers(w.at, end, w.subject)
            times = sorted(w.first[o] for o in obs if w.first[o] != INF)
            out.append({
                "label": w.label, "subject": w.subject, "at": w.at, "population": len(obs),
                "reached": len(times) / len(obs) if obs else None,
                "t50": time_to_fraction(times, len(obs), 0.5),
                "t99": time_to_fraction(times, len(obs), 0.99),
                "t100": time_to_fraction(times, len(obs), 1.0),
            })
        return out

    def dissemination_curves(self, end: float) -> list[tuple[str, list[float], int]]:
        """(label, sorted arrival times, population) for plotting and CSV."""
        res = []
        for w in self.watches:
            obs = self._observers(w.at, end, w.subject)
            res.append((w.label, sorted(w.first[o] for o in obs if w.first[o] != INF), len(obs)))
        return res

    def convergence(self) -> dict[str, object]:
        log = self.convergence_log
        t0 = self.last_first_start
        # The join convergence: the first moment after the last node started at which
        # every running node's view is correct (the state just before t0 if none changed).
        after = [(t, c) for t, c in log if t >= t0]
        before = [c for t, c in log if t < t0]
        if after and after[0][1] and after[0][0] == t0:
            joined: float | None = t0
        elif after:
            joined = next((t for t, c in after if c), None)
        else:
            joined = t0 if (before[-1] if before else True) else None
        if not self.bootstrapped:
            joined = None
        return {
            "all_started_at": t0,
            "join_converged_at": joined,
            "join_convergence_s": None if joined is None else joined - t0,
            "converged_at_end": self.views.converged(),
            "converged_fraction_at_end": self.views.converged_fraction(),
            "first_converged_at": next((t for t, c in log if c), None),
            "last_converged_at": next((t for t, c in reversed(log) if c), None),
            "transitions": len(log),
        }

    def timeseries(self) -> list[tuple[float, int, float, float, int, int]]:
        """Per simulated second: (t, running, converged, wrong pairs, msgs, bytes in [t-1, t))."""
        rows = []
        for t, running, conv, wrong in self.samples:
            b = int(t) - 1
            msgs = self.bin_msgs[b] if 0 <= b < self.bins else 0
            nbytes = self.bin_bytes[b] if 0 <= b < self.bins else 0
            rows.append((t, running, conv, wrong, msgs, nbytes))
        return rows


def _fin(x: float) -> float | None:
    return None if x == INF else x
