"""One DNS responder per network whose gateway is on this host, started and stopped with it.

Owns (started by ``agent.overlay.extension.Overlay.run`` when the gateway reconciler runs
and ``dns`` is on): the name index (``agent.dns.resolver.NameIndex``), refreshed on every
table change (``Overlay.change_listeners``, i.e. ``Tables.subscribe``) and not per query;
the set of responders, which follows the gateway rule of ``dataplane.nft.compile`` (a
network gets its gateway on this host while it has a local endpoint here): a responder
starts as the gateway appears, stops as it goes, and is restarted on its new addresses
when they change; a responder that cannot bind (port 53 taken on that address) is
retried every ``RETRY`` s and named in the agent's warnings; which local containers are
on several networks (``homes``: their endpoints share a namespace), so a responder also
answers a container the names of its other networks; the ``dns`` status section and
``overlay_dns_*`` metrics.
Does not: answer queries (``agent.dns.server``, ``agent.dns.resolver``), put the gateway
address on the bridge (``dataplane.nft``).
"""

from __future__ import annotations

import ipaddress
import logging
import random
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import trio

from agent.dns.resolver import NameIndex, NetworkNames
from agent.dns.server import DNS_PORT, RESOLV_CONF, DnsLimits, DnsStats, Responder, Upstreams
from agent.log import kv

if TYPE_CHECKING:
    from agent.overlay.extension import Overlay
    from agent.runtime import MetricFamily, Runtime

log = logging.getLogger("agent.dns.manager")

HOMES_MAX_AGE = 1.0
"""Seconds the map of multi-network containers is trusted without a table change (a
namespace can be recorded after its row: Docker's Join, the veth after the create)."""
RETRY = 2.0
"""Seconds between attempts to bind a responder that could not be bound."""


class DnsManager:
    """See the module docstring."""

    def __init__(self, overlay: Overlay, *, port: int = DNS_PORT, resolv_conf: str = RESOLV_CONF,
                 limits: DnsLimits | None = None) -> None:
        self.overlay = overlay
        self.port = port
        self.limits = limits or DnsLimits()
        self.index = NameIndex()
        self.stats = DnsStats()
        self.upstreams = Upstreams(resolv_conf, self._gateway_addresses)
        self.running: dict[str, tuple[tuple[str, ...], trio.CancelScope]] = {}
        """Network id -> (addresses, the scope of its responder task)."""
        self.serving: dict[str, Responder] = {}
        """Network id -> its responder, while bound and serving."""
        self.problems: dict[str, str] = {}
        """Network id -> why its responder is not serving (a bind error)."""
        self._wake = trio.Event()
        self._rng = random.Random()
        self._homes: dict[tuple[str, str], tuple[str, ...]] = {}
        self._homes_key: tuple[int, float] = (-1, -HOMES_MAX_AGE)

    def setup(self, rt: Runtime) -> None:
        self.overlay.change_listeners.append(self.poke)
        rt.status_sections.append(self.status_section)
        rt.warning_sources.append(self.warnings)
        rt.metric_sources.append(self.metrics)

    def poke(self) -> None:
        """A table change (called in the driver task: only sets an event)."""
        self._wake.set()

    async def run(self, rt: Runtime, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.setup(rt)
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                self._wake = trio.Event()
                self.refresh(nursery)
                await self._wake.wait()  # changes that come meanwhile are taken together

    def _names(self, network_id: str) -> Callable[[], NetworkNames | None]:
        return lambda: self.index.get(network_id)

    def _also(self, network_id: str) -> Callable[[str], Sequence[NetworkNames]]:
        def also(client: str) -> Sequence[NetworkNames]:
            others = self.homes().get((network_id, _canonical(client)), ())
            return tuple(n for m in others if (n := self.index.get(m)) is not None)
        return also

    def homes(self) -> dict[tuple[str, str], tuple[str, ...]]:
        """(network id, address of a local endpoint) -> the other networks of the
        endpoint's container (local endpoints sharing its namespace), for containers on
        several networks; rebuilt on a table change, else at most once a second."""
        t = self.overlay.tables
        assert t is not None
        now = trio.current_time()
        version, at = self._homes_key
        if version == t.version and now - at < HOMES_MAX_AGE:
            return self._homes
        by_netns: dict[str, list[tuple[str, str | None, str | None]]] = {}
        for e in t.local_endpoints():
            netns = self.overlay.interfaces.get(e.id, {}).get("netns")
            if netns:
                by_netns.setdefault(str(netns), []).append((e.network, e.ipv4, e.ipv6))
        homes: dict[tuple[str, str], tuple[str, ...]] = {}
        for eps in by_netns.values():
            nets = tuple(dict.fromkeys(net for net, _, _ in eps))
            if len(nets) > 1:
                for net, v4, v6 in eps:
                    others = tuple(n for n in nets if n != net)
                    for addr in (v4, v6):
                        if addr:
                            homes[(net, _canonical(addr))] = others
        self._homes, self._homes_key = homes, (t.version, now)
        return homes

    def _gateway_addresses(self) -> list[str]:
        return [a for addrs, _ in self.running.values() for a in addrs]

    def desired(self) -> dict[str, tuple[str, ...]]:
        """Network id -> its gateway addresses, for every network with a local endpoint."""
        t = self.overlay.tables
        assert t is not None
        local = {e.network for e in t.local_endpoints()}
        return {n.id: tuple(g for _, g in n.gateways()) for n in t.networks() if n.id in local}

    def refresh(self, nursery: trio.Nursery) -> None:
        """Bring the index and the responders in line with the tables."""
        t = self.overlay.tables
        assert t is not None
        eps = t.endpoints()
        self.index.update(t.networks(), eps, t.extras.aliases(eps))
        want = self.desired()
        for net_id, (addrs, scope) in list(self.running.items()):
            if want.get(net_id) != addrs:
                scope.cancel()
                del self.running[net_id]
                self.serving.pop(net_id, None)
                self.problems.pop(net_id, None)
                log.info(kv("dns-responder-stopped", network=net_id[:12]))
        for net_id, addrs in want.items():
            if net_id not in self.running and addrs:
                scope = trio.CancelScope()
                self.running[net_id] = (addrs, scope)
                nursery.start_soon(self._keep, net_id, addrs, scope)

    async def _keep(self, net_id: str, addrs: tuple[str, ...], scope: trio.CancelScope) -> None:
        """Run one network's responder until cancelled, re-binding after bind errors."""
        with scope:
            while True:
                responder = Responder(net_id, addrs, self._names(net_id), self.upstreams, also=self._also(net_id),
                                      port=self.port, limits=self.limits, stats=self.stats, rng=self._rng)
                try:
                    await responder.bind()
                except OSError as exc:
                    self.serving.pop(net_id, None)
                    reason = exc.strerror or str(exc)
                    if self.problems.get(net_id) != reason:
                        log.warning(kv("dns-responder-bind-failed", network=net_id[:12],
                                       addresses=",".join(addrs), port=self.port, error=reason))
                    self.problems[net_id] = reason
                else:
                    self.serving[net_id] = responder
                    self.problems.pop(net_id, None)
                    log.info(kv("dns-responder-started", network=net_id[:12], addresses=",".join(addrs),
                                port=self.port))
                    try:
                        await responder.serve()
                    except Exception as exc:  # a bug of ours must cost names, not the agent
                        log.exception(kv("dns-responder-failed", network=net_id[:12], error=repr(exc)))
                    self.serving.pop(net_id, None)
                await trio.sleep(RETRY)

    # -- status, warnings, metrics ----------------------------------------------------------

    def _netname(self, net_id: str) -> str:
        names = self.index.get(net_id)
        return names.name if names is not None else net_id[:12]

    def status_section(self) -> dict[str, Any]:
        s = self.stats
        return {"dns": {
            "port": self.port,
            "responders": {self._netname(n): list(addrs) for n, (addrs, _) in sorted(self.running.items())},
            "serving": len(self.serving),
            "upstreams": self.upstreams.current(),
            "queries": s.queries, "answered": s.answered, "nxdomain": s.nxdomain, "refused": s.refused,
            "forwarded": s.forwarded, "forward_failed": s.forward_failed, "malformed": s.malformed,
            "rate_limited": s.rate_limited, "tcp_rejected": s.tcp_rejected,
        }}

    def warnings(self) -> list[str]:
        return [f"dns: no name service for network {self._netname(n)} on "
                f"{', '.join(self.running[n][0]) if n in self.running else '?'} port {self.port}: {why}; retrying"
                for n, why in sorted(self.problems.items())]

    def metrics(self) -> list[MetricFamily]:
        from agent.runtime import MetricFamily

        s = self.stats
        return [
            MetricFamily.single("overlay_dns_responders", "gauge", "DNS responders serving", len(self.serving)),
            MetricFamily("overlay_dns_queries", "counter", "DNS queries by outcome",
                         [({"result": k}, float(v)) for k, v in (
                             ("answered", s.answered), ("nxdomain", s.nxdomain), ("refused", s.refused),
                             ("forwarded", s.forwarded), ("forward_failed", s.forward_failed),
                             ("malformed", s.malformed), ("rate_limited", s.rate_limited))]),
        ]


def _canonical(addr: str) -> str:
    try:
        return str(ipaddress.ip_address(addr.split("%", 1)[0]))
    except ValueError:
        return addr
