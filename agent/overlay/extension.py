"""The overlay layer of the agent: replicated tables, endpoint interfaces and the dataplane reconciler.

Owns (an ``agent.service.Extension``):
- the gossip delegate: ``gossip.tables.replica.Tables``, whose change signal
  (``Tables.subscribe``) pokes the reconciler on every table change (``make_delegate``);
- this host's endpoints: creating one publishes its row, builds its veth pair
  (``agent.overlay.veths``), attaches it to the network's bridge when that exists and
  saves the record; a failure at any step (the bridge is full, the state cannot be
  saved) undoes the earlier ones, so nothing half-created or unsaved stays; a create is
  refused up front when the network has ``limits.endpoints_per_network`` endpoints here
  (a Linux bridge holds 1,023 ports) or the state dir cannot take the record. Removing
  one saves the record without it first, then deletes the pair, then the row. Local
  endpoints are persisted in the state dir (record ``endpoints``) and handed back to
  ``restore_local_endpoints`` on the next start, before the join, so a restarted owner
  reasserts its rows while the kernel keeps forwarding; an endpoint whose veth vanished
  meanwhile is dropped, and an orphan veth of ours (a crash between the steps) is
  deleted, but only when the record was read and understood: without one, every
  endpoint interface found is kept (``kept``, a status warning) until the operator acts;
- endpoints live and die with their container: ``agent.overlay.lifecycle`` (started by
  ``run``) withdraws a local endpoint whose veth vanished with its namespace
  (``withdraw_vanished``); the ``cni`` control op of ``agent.runtimes.cni.attachments``
  is registered with the layer's own ops (``create_endpoint``'s ``attachment`` keys, e.g.
  the container id, are kept in the persisted interface record);
- the reconciler task (``dataplane.reconciler``) fed by ``gossip.tables.view``;
  ``ready()`` once a join reached a member (or there is nothing to join) and the
  networks we take part in had their first bulk sync, so a restart deletes nothing
  on a half-filled view; readiness condition ``dataplane-reconciled`` (READY=1) after
  the first pass that followed the first join attempt (with the complete view when
  the join succeeded; with what we have, adding only, when no seed answered);
- status section, operator warnings and metrics of the layer.
Encrypted networks: refused with ``dataplane.xfrm.probe.kernel_support_problem()``'s message
when the kernel lacks ESP/GCM; accepted otherwise (``agent.overlay.ipsec`` programs ESP
between the hosts that share one). ``dataplane = false`` keeps the tables (this node sees and creates
networks) but runs no reconciler and refuses endpoints.
Does not: parse requests or shape replies (``agent.overlay.ops``), build veths itself.

Split by responsibility: this module wires the layer into the agent (delegate, ops,
tasks, readiness) and holds the table calls and network operations; the endpoint
operations are ``agent.overlay.endpoints``, the record ``agent.overlay.record``, the
status, warnings and metrics ``agent.overlay.report`` (mixins of ``Overlay``, so every
name stays importable from here).
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import trio

from agent.config import AgentConfig
from agent.control import protocol as api
from agent.control.server import ControlServer, Handler, Op
from agent.limits import Limits
from agent.log import kv
from agent.overlay.base import OPS
from agent.overlay.endpoints import LOCAL_SETTLE, EndpointOps
from agent.overlay.hostnets import underlay_prefixes
from agent.overlay.lifecycle import Lifecycle
from agent.overlay.record import KEPT_CHECK_INTERVAL, RECORD, RECORD_GROWTH, EndpointRecord
from agent.overlay.report import DEFAULT_UNDERLAY_MTU, OverlayReport
from agent.overlay.underlay import underlay_mtu
from agent.overlay.veths import (
    LinuxPlumber,
    Plumber,
    host_ifname,
)
from dataplane.model import NetworkSpec
from gossip.effects import Address, Effect, JoinFinished
from gossip.serf.payloads import encode_tags
from gossip.swim import Swim
from gossip.tables.replica import Tables, TablesConfig
from gossip.tables.rows import Endpoint, Network, TableError

if TYPE_CHECKING:
    from agent.runtime import Runtime
    from dataplane.kernel import Kernel
    from dataplane.nft.target import NftReconciler
    from dataplane.reconciler import ReconcilerConfig
    from dataplane.target import VxlanReconciler
    from gossip.tables.rows import NetworkOptions
    from gossip.tables.view import ViewSource

log = logging.getLogger("agent.overlay.extension")


def _trace_row(stage: str, ident: str, detail: str) -> None:
    """``Tables.trace`` at debug level: stage marks for ``bench/propagation.py``."""
    log.debug(kv("row-trace", stage=stage, id=ident or None, detail=detail or None, t=f"{time.monotonic():.6f}"))


def _trace_pass(trigger: str, start: float, applying: float, end: float, ops: int) -> None:
    log.debug(kv("pass-trace", trigger=trigger, start=f"{start:.6f}", apply=f"{applying:.6f}",
                 end=f"{end:.6f}", ops=ops))

def _linux_kernel(prefix: str) -> Kernel:
    from dataplane.kernel import LinuxKernel  # with the reconcilers (the first network)

    return LinuxKernel(prefix=prefix)


def _kernel_leftovers(prefix: str, nft: bool) -> bool:
    from agent.overlay.leftovers import kernel_leftovers

    return kernel_leftovers(prefix, nft=nft)


def _maybe_leftovers(prefix: str, nft: bool) -> bool:
    return True


def _deferred(ops: Callable[[], dict[str, Op]], name: str) -> Handler:
    """Op ``name``'s handler, taken from ``ops()`` when it is first called."""

    async def handler(rt: Runtime, req: api.Request, stream: trio.SocketStream) -> Any:
        return await ops()[name].handler(rt, req, stream)

    return handler


PREFIX = "ov-"
"""Name prefix of every device the agent owns (bridges, VXLAN devices, endpoint veths)."""
READY_CONDITION = "dataplane-reconciled"
STARTUP_GRACE = 15.0
"""``dataplane.reconciler.ReconcilerConfig.startup_grace``'s default (a unit test keeps
them equal), for the grace counted before any reconciler exists."""
SYNC_WAIT = 10.0
"""After the join, how long to wait for the first bulk sync of our networks before
the reconciler may delete (a peer that never answers must not block it forever)."""


class Overlay(EndpointOps, EndpointRecord, OverlayReport):
    """See the module docstring. One instance per agent run. Its endpoint operations,
    record and reports are in ``agent.overlay.endpoints``, ``record`` and ``report``."""

    def __init__(
        self,
        *,
        kernel_factory: Callable[[str], Kernel] | None = None,
        plumber: Plumber | None = None,
        reconciler_config: ReconcilerConfig | None = None,
        tables_config: TablesConfig | None = None,
        ipsec_probe: Callable[[], str | None] | None = None,
        leftovers: Callable[[str, bool], bool] | None = None,
        prefix: str = PREFIX,
        dataplane: bool | None = None,
        gateway: bool | None = None,
    ) -> None:
        self.gateway = kernel_factory is None if gateway is None else gateway
        """Run the gateway/egress reconciler (``dataplane.nft``): by default only with the
        real kernel (a fake VXLAN kernel must never come with real nft rules)."""
        self.gw: NftReconciler | None = None
        self.kernel_factory = kernel_factory or _linux_kernel
        self.leftovers = leftovers or (_kernel_leftovers if kernel_factory is None else _maybe_leftovers)
        """Whether the kernel may hold objects of ours (then the reconcilers start at boot,
        not with the first network): ``agent.overlay.leftovers`` with the real kernel; with
        another kernel (tests' fakes) always True unless given, i.e. they start at boot."""
        self.ipsec_view: Callable[[str], list[dict[str, Any]]] | None = None
        """Per-peer SA state of an encrypted network (set by ``agent.overlay.ipsec``), for inspect."""
        self.plumber: Plumber = plumber or LinuxPlumber()
        self._reconciler_config = reconciler_config
        """None: ``dataplane.reconciler``'s defaults (that module loads with the reconcilers)."""
        self.tables_config = tables_config
        self.ipsec_probe = ipsec_probe
        self.prefix = prefix
        self._dataplane_override = dataplane
        self.dataplane = True
        self.tables: Tables | None = None
        self.rt: Runtime | None = None
        self.rec: VxlanReconciler | None = None
        """The VXLAN reconciler, once started: at boot when networks or objects of ours
        exist, else with the first network (``_start_dataplane``); never with
        ``dataplane = false``."""
        self.vtep = ""
        self.underlay_mtu = DEFAULT_UNDERLAY_MTU
        self.underlay_source = "default"
        self.interfaces: dict[str, dict[str, Any]] = {}
        """Endpoint id -> {"netns", "ifname", "host_ifname"} of local endpoints."""
        self._ipsec: list[str | None] = []
        self._lock = trio.Lock()
        self._started = trio.Event()
        self._join_done = trio.Event()
        """Set by the first join attempt's outcome (or at once without seeds)."""
        self._joined = trio.Event()
        """Set once a join reached a member (or at once without seeds)."""
        self._tables_moved = trio.Event()
        self._view_complete = trio.Event()
        """Set when reconcilers may delete: the view was complete after a join
        (``_wait_synced``) or the startup grace ended (``_grace``)."""
        self._view: ViewSource | None = None
        self._nursery: trio.Nursery | None = None
        self.change_listeners: list[Callable[[], None]] = []
        """Called (in the driver task; must not block) whenever the tables changed."""
        self._restore_notes: list[str] = []
        self.kept: set[str] = set()
        """Endpoint interfaces (host side) found with no endpoint to own them while the
        endpoints record was unreadable or absent: left alone until the operator acts."""
        self._record_problem: str | None = None
        """Why the endpoints record could not be used at start (a status warning)."""
        self._ep_dicts: dict[str, tuple[Endpoint, dict[str, Any]]] = {}
        self.limits = Limits()
        self._ops: dict[str, Op] | None = None

    # -- wiring (agent.service) -----------------------------------------------------------------

    def make_delegate(self, config: AgentConfig, advertise: Address, rng: random.Random) -> Tables:
        """The gossip delegate (called by ``service`` before the core exists). ValueError."""
        self.vtep = str(ipaddress.ip_address(advertise[0]))
        self.dataplane = config.dataplane if self._dataplane_override is None else self._dataplane_override
        self.tables = Tables(node=config.node, vtep=self.vtep, rng=rng, config=self.tables_config,
                             meta=encode_tags(config.tags))
        self.tables.subscribe(lambda now: self._changed())
        return self.tables

    def setup(self, rt: Runtime, server: ControlServer) -> None:
        if self.tables is None:
            raise RuntimeError("Overlay.setup before make_delegate (pass it to service.run)")
        self.rt = rt
        self.limits = rt.config.limits_config()
        self.tables.attach(rt.driver.swim)
        for name, summary in OPS.items():
            server.register(name, Op(_deferred(self._layer_ops, name), summary))
        if self.dataplane:
            rt.readiness.require(READY_CONDITION)
        rt.driver.on_effect(JoinFinished, self._join_finished)
        rt.status_sections.append(self.status_section)
        rt.warning_sources.append(self.warnings)
        rt.metric_sources.append(self.metrics)

    def _layer_ops(self) -> dict[str, Op]:
        """The layer's ops (``OPS``), made at the first call of one of them: their code
        (``agent.overlay.ops``, ``agent.runtimes.cni.attachments``, with network options
        and IPAM) is not loaded by an agent that is never asked (~0.1 MiB, docs/performance.md)."""
        if self._ops is None:
            from agent.overlay import ops as netops
            from agent.runtimes.cni.attachments import ops as cni_ops

            self._ops = {**netops.ops(self), **cni_ops(self)}
            assert {n: (o.summary, o.streaming, o.stops_agent) for n, o in self._ops.items()} == {
                n: (s, False, False) for n, s in OPS.items()}, "OPS and the ops made differ"
        return self._ops

    def _join_finished(self, effect: JoinFinished) -> None:
        self._join_done.set()
        if effect.contacted:
            self._joined.set()

    def _changed(self) -> None:
        if self.rec is None and self._nursery is not None and self.tables is not None and self.tables.networks():
            self._start_dataplane("first-network")
        if self.rec is not None:
            self.rec.poke("tables")
        if self.gw is not None:
            self.gw.poke("tables")
        self._tables_moved.set()
        for listener in self.change_listeners:
            listener()

    async def run(self, rt: Runtime, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if not rt.config.join:
            self._join_done.set()  # nothing to wait for: our view is the cluster's
            self._joined.set()
        if rt.config.underlay_mtu:
            self.underlay_mtu, self.underlay_source = rt.config.underlay_mtu, "underlay_mtu"
        elif self.dataplane:
            mtu, source = await trio.to_thread.run_sync(underlay_mtu, self.vtep, rt.config.underlay_interface)
            if mtu is not None:
                self.underlay_mtu, self.underlay_source = mtu, source
            else:
                self.underlay_source = f"default ({source})"
                log.warning(kv("underlay-mtu-unknown", reason=source, assumed=DEFAULT_UNDERLAY_MTU))
        await self._restore(rt)
        async with trio.open_nursery() as nursery:
            if self.dataplane:
                from gossip.tables.view import ViewSource

                assert self.tables is not None
                self._view = ViewSource(self.tables, rt.driver.swim.members, local_vtep=self.vtep,
                                        underlay_mtu=self.underlay_mtu, vxlan_port=rt.config.vxlan_port,
                                        prefix=self.prefix, ifname=functools.partial(host_ifname, self.prefix))
                self._nursery = nursery
                # Reconcilers at boot only for networks (restored endpoints) or what an
                # earlier run left in the kernel; else the first network starts them
                # (``_changed``), and an agent without networks never loads their code.
                if self.tables.networks():
                    await nursery.start(self._run_dataplane, "networks")
                elif await trio.to_thread.run_sync(self.leftovers, self.prefix, self.gateway):
                    await nursery.start(self._run_dataplane, "leftovers")
                else:
                    log.info(kv("dataplane-deferred", reason="no network and nothing of ours in the kernel"))
                if self.gateway and rt.config.dns:  # names on each gateway address (docs/dns.md)
                    nursery.start_soon(self._dns_once_needed, rt)
                nursery.start_soon(Lifecycle(self).run)  # endpoints die with their namespace
                if self.kept:
                    nursery.start_soon(self._watch_kept)
                nursery.start_soon(self._grace)
                nursery.start_soon(self._become_ready, rt)
            self._started.set()
            task_status.started()

    def _start_dataplane(self, reason: str) -> None:
        """Make the reconcilers now (``rec``/``gw`` exist when this returns) and start them
        in the layer's nursery; a second call does nothing."""
        if self.rec is not None or self._nursery is None:
            return
        self._nursery.start_soon(self._run_dataplane, reason)
        self._make_reconcilers(reason)

    def _make_reconcilers(self, reason: str) -> None:
        if self.rec is not None:
            return
        from dataplane.target import VxlanReconciler, VxlanTarget  # with the first network

        assert self.tables is not None and self._view is not None
        self.rec = VxlanReconciler(VxlanTarget(self.kernel_factory(self.prefix)), self._view, self.reconciler_config)
        if log.isEnabledFor(logging.DEBUG):  # --log-level debug: propagation stage marks
            self.tables.trace, self.rec.trace = _trace_row, _trace_pass
        if self.gateway:  # the same view: gateways, egress and isolation rules
            from dataplane.nft.kernel import NftKernel
            from dataplane.nft.target import NftReconciler, NftTarget

            self.gw = NftReconciler(NftTarget(NftKernel()), self._view, self.reconciler_config, name="gateway")
        if self._view_complete.is_set():
            self.rec.ready()
            if self.gw is not None:
                self.gw.ready()
        log.info(kv("dataplane-started", reason=reason, gateway=self.gw is not None))

    async def _run_dataplane(self, reason: str, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._make_reconcilers(reason)
        assert self.rec is not None
        async with trio.open_nursery() as nursery:
            await nursery.start(self.rec.run)
            if self.gw is not None:
                await nursery.start(self.gw.run)
            task_status.started()
            await self.rec.wait_complete()  # its startup grace may end first
            self._view_complete.set()

    async def ensure_dataplane(self) -> None:
        """Start the reconcilers if they are not running yet (``agentctl dataplane`` on an
        agent without networks reads the kernel like any other)."""
        if self.rec is None and self._nursery is not None:
            await self._nursery.start(self._run_dataplane, "inspect")

    async def view_complete(self) -> None:
        """Return once reconcilers may delete (the IPsec one follows the VXLAN side)."""
        await self._view_complete.wait()

    @property
    def reconciler_config(self) -> ReconcilerConfig:
        if self._reconciler_config is None:
            from dataplane.reconciler import ReconcilerConfig

            self._reconciler_config = ReconcilerConfig()
        return self._reconciler_config

    async def _grace(self) -> None:
        """Deletions are allowed after the startup grace even with no reconciler yet (the
        join never succeeded), as a reconciler started at boot would allow them."""
        cfg = self._reconciler_config
        await trio.sleep(cfg.startup_grace if cfg is not None else STARTUP_GRACE)
        self._view_complete.set()

    async def _become_ready(self, rt: Runtime) -> None:
        """READY=1 after the first pass that follows the first join attempt (at once when
        no reconciler runs: nothing to program); deletions allowed (``ready()``) once a
        join succeeded and our networks had their first sync."""
        await self._join_done.wait()
        if self._joined.is_set():
            await self._wait_synced()
        if self.rec is not None:
            await self.rec.settled()
        rt.readiness.mark(READY_CONDITION)
        if not self._joined.is_set():
            # The seeds did not answer: the reconciler only adds until a later join
            # (retries, rejoin) succeeds or its startup grace ends.
            await self._joined.wait()
            await self._wait_synced()

    async def _wait_synced(self) -> None:
        with trio.move_on_after(SYNC_WAIT):
            while not self._synced():
                self._tables_moved = trio.Event()
                with trio.move_on_after(0.2):  # peers are also learned without a version bump
                    await self._tables_moved.wait()
        self._view_complete.set()
        if self.rec is not None:
            self.rec.ready()
        if self.gw is not None:
            self.gw.ready()
        log.info(kv("dataplane-view-complete", synced=self._synced()))

    def _synced(self) -> bool:
        """Every network we take part in had its first bulk sync, or has no peer to give one."""
        assert self.tables is not None
        t = self.tables
        return all(j.synced or not t.network_peers(net) for net, j in t.sync.joined.items())

    async def _dns_once_needed(self, rt: Runtime) -> None:
        """Start the DNS responders' manager once this host has a local endpoint. Why
        not at once: dnspython imports hashlib, which maps OpenSSL (~5 MiB per agent),
        and a host with no endpoint serves no names."""
        assert self.tables is not None
        changed = trio.Event()

        def poke() -> None:
            changed.set()

        self.change_listeners.append(poke)
        try:
            while not self.tables.local_endpoints():
                await changed.wait()
                changed = trio.Event()
        finally:
            self.change_listeners.remove(poke)
        from agent.dns.manager import DnsManager

        await DnsManager(self).run(rt)

    # -- operations (called by agent.overlay.ops) ------------------------------------------------------

    async def _table_call(self, fn: Callable[[Tables, float], tuple[Any, Sequence[Effect]]]) -> Any:
        """Run ``fn(tables, now)`` in the driver; a TableError becomes the operator's ApiError."""
        assert self.rt is not None and self.tables is not None
        tables = self.tables

        def call(swim: Swim, now: float) -> tuple[Any, Sequence[Effect]]:
            try:
                return fn(tables, now)
            except TableError as exc:
                return exc, []

        result = await self.rt.driver.call(call)
        if isinstance(result, TableError):
            raise api.ApiError(str(result))
        return result

    async def read(self, fn: Callable[[Tables], Any]) -> Any:
        """A consistent read of the tables (inside the driver, like every core read)."""
        return await self._table_call(lambda t, now: (fn(t), []))

    async def ipsec_problem(self) -> str | None:
        if not self._ipsec:
            if self.ipsec_probe is not None:
                probe = self.ipsec_probe
            else:
                from dataplane.xfrm.probe import kernel_support_problem as probe
            self._ipsec.append(await trio.to_thread.run_sync(probe))
        return self._ipsec[0]

    def effective_mtu(self, net: Network) -> int:
        """The network's MTU on this host: as set, else from this host's underlay (the
        reconciler derives the same for the bridge and the VXLAN device)."""
        from dataplane.compile import overlay_mtu  # loaded with the first endpoint

        v6 = ipaddress.ip_address(self.vtep).version == 6
        return overlay_mtu(NetworkSpec(net.id, net.vni, net.mtu, net.subnets, net.encrypted), self.underlay_mtu, v6)

    async def create_network(
        self, name: str, subnets: list[str], vni: int | None, encrypted: bool, mtu: int | None,
        options: NetworkOptions | None = None,
    ) -> Network:
        """``options``: ``netopts.parse_options``; subnets on the underlay are refused."""
        await self._started.wait()
        if encrypted:
            problem = await self.ipsec_problem()
            if problem is not None:
                raise api.ApiError(f"cannot create encrypted network {name!r}: {problem}")
        created_at = time.time()
        underlay = await trio.to_thread.run_sync(underlay_prefixes, self.prefix) if self.dataplane else []
        network: Network = await self._table_call(
            lambda t, now: t.create_network(now, name, subnets, vni, encrypted, mtu, created_at, options, underlay))
        log.info(kv("network-created", name=network.name, id=network.id[:12], vni=network.vni,
                    subnets=",".join(network.subnets), encrypted=network.encrypted, mtu=network.mtu))
        return network

    async def remove_network(self, ref: str) -> Network:
        network: Network = await self._table_call(lambda t, now: t.remove_network(now, ref))
        log.info(kv("network-removed", name=network.name, id=network.id[:12]))
        return network


__all__ = ["DEFAULT_UNDERLAY_MTU", "KEPT_CHECK_INTERVAL", "LOCAL_SETTLE", "PREFIX", "READY_CONDITION", "RECORD",
           "RECORD_GROWTH", "SYNC_WAIT", "Overlay"]
