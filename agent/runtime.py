"""The running agent's shared context: what control ops, tasks and extensions get to use.

Not to be confused with ``agent.service`` (builds the agent, fills a ``Runtime`` and
runs it) or ``agent.membership.driver`` (the task that owns the gossip core; reached
here as ``Runtime.driver``).

Owns: ``Runtime`` (config, core driver, event hub, persistence, readiness,
shutdown, and the extension hooks), ``Readiness`` (named conditions that must
all hold before systemd hears READY=1) and ``Shutdown`` (one stop request,
with STOPPING=1). Extension points for the layers above membership (the overlay,
IPsec):
- ``readiness.require("dataplane-reconciled")`` before start, ``mark`` it later;
- ``status_sections``: callables whose dicts are merged into ``agentctl status``;
- ``warning_sources``: callables returning operator warnings (status, metrics);
- ``metric_sources``: callables returning ``MetricFamily`` values (defined here, so a
  layer reports metrics without loading ``agent.metrics`` or prometheus_client).
Does not: start tasks (``agent.service``), serve requests (``agent.control.server``) or
touch the core except through the driver.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import trio

from agent.config import AgentConfig
from agent.events import EventHub
from agent.membership.driver import Driver
from agent.sdnotify import Notifier
from agent.store.files import StateStore
from agent.store.records import Persister

READY_CONDITIONS = ("sockets-bound", "control-api", "first-join")
"""What READY=1 waits for today; the lead adds e.g. "dataplane-reconciled"."""


@dataclass(frozen=True)
class MetricFamily:
    """One metric and its samples (labels -> value): what a ``metric_sources`` callable
    returns. A neutral value, so a layer reports metrics without importing
    prometheus_client or ``agent.metrics`` (loaded only when metrics are on)."""

    name: str
    kind: Literal["gauge", "counter"]
    help: str
    samples: list[tuple[dict[str, str], float]] = field(default_factory=list)

    @classmethod
    def single(cls, name: str, kind: Literal["gauge", "counter"], help: str, value: float) -> MetricFamily:
        return cls(name, kind, help, [({}, float(value))])


MetricSource = Callable[[], Iterable[MetricFamily]]


class Readiness:
    def __init__(self, conditions: Iterable[str] = READY_CONDITIONS) -> None:
        self._pending: dict[str, None] = dict.fromkeys(conditions)
        self._met: list[str] = []
        self._ready = trio.Event()
        self.ready_at: float | None = None
        if not self._pending:
            self._set()

    def require(self, name: str) -> None:
        """Add a condition (only before the agent became ready)."""
        if self._ready.is_set():
            raise RuntimeError(f"readiness condition {name!r} added after the agent became ready")
        if name not in self._met:
            self._pending[name] = None

    def mark(self, name: str) -> None:
        """Condition ``name`` holds (idempotent; unknown names are recorded too)."""
        self._pending.pop(name, None)
        if name not in self._met:
            self._met.append(name)
        if not self._pending and not self._ready.is_set():
            self._set()

    def _set(self) -> None:
        self.ready_at = time.time()
        self._ready.set()

    @property
    def pending(self) -> list[str]:
        return list(self._pending)

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    async def wait(self) -> None:
        await self._ready.wait()


class Shutdown:
    """One stop request; the first reason wins. Tells systemd STOPPING=1."""

    def __init__(self, notifier: Notifier | None = None) -> None:
        self.requested = trio.Event()
        self.reason = ""
        self.notifier = notifier
        self._stopping_sent = False

    def stopping(self) -> None:
        """Tell systemd we are on our way out (before a leave, which may take a while)."""
        if self.notifier is not None and not self._stopping_sent:
            self._stopping_sent = True
            self.notifier.send("STOPPING=1")

    def request(self, reason: str) -> None:
        self.stopping()
        if not self.requested.is_set():
            self.reason = reason
            self.requested.set()


@dataclass
class Runtime:
    config: AgentConfig
    driver: Driver
    hub: EventHub
    persister: Persister
    readiness: Readiness
    shutdown: Shutdown
    store: StateStore | None = None
    notifier: Notifier | None = None
    node_id: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    """Static facts shown by ``status`` (bind, profile, ...)."""
    status_sections: list[Callable[[], dict[str, Any]]] = field(default_factory=list)
    warning_sources: list[Callable[[], list[str]]] = field(default_factory=list)
    metric_sources: list[MetricSource] = field(default_factory=list)
    started_at: float = field(default_factory=time.time)
    queries: Any = None
    """``agent.membership.queries.QueryBook``, created on the first cluster-wide ``keys`` request."""
    join_outcome: dict[str, Any] | None = None
    """The last ``JoinFinished``: {"contacted": n, "failed": [...]}."""
    joins: Any = None
    """``agent.control.ops.JoinWaiters``, created on the first ``join`` request."""

    def warnings(self) -> list[str]:
        """Things an operator should look at; each a short sentence."""
        out: list[str] = []
        if not self.readiness.ready:
            out.append(f"not ready yet: waiting for {', '.join(self.readiness.pending)}")
        if (self.config.join and self.join_outcome is not None and not self.join_outcome["contacted"]
                and not self.driver.others_live):
            # Only while alone: a later rejoin push/pull (no JoinFinished of its own), or
            # a peer joining us, ends it.
            out.append("no join seed answered; retrying in the background")
        swim = self.driver.swim
        if swim.keyring is not None and swim.keyring.primary is not None and not swim.require_encryption:
            out.append("plaintext gossip is accepted (encryption roll-out window; "
                       "finish with 'agentctl keys require')")
        if self.persister.failing:
            out.append(f"state could not be saved ({self.persister.errors} failures; "
                       f"last: {self.persister.last_error})")
        if self.store is not None:
            out.extend(c.warning() for c in self.store.corrupt.values())
        if self.store is None:
            lost = "the incarnation does" if self.persister.keyring_path else "the incarnation and keyring changes do"
            out.append(f"no state_dir: {lost} not survive a restart")
        if self.driver.counters.internal_errors:
            out.append(f"{self.driver.counters.internal_errors} internal errors (see the log)")
        for source in self.warning_sources:
            out.extend(source())
        return out
