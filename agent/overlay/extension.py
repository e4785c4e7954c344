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
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import logging
import os
import random
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import trio

from agent.config import AgentConfig
from agent.control import protocol as api
from agent.control.server import ControlServer
from agent.limits import BRIDGE_MAX_PORTS, ENDPOINTS_PER_NETWORK, Limits
from agent.log import kv
from agent.overlay import admission
from agent.overlay import ops as netops
from agent.overlay.hostnets import underlay_prefixes
from agent.overlay.lifecycle import Lifecycle
from agent.overlay.underlay import underlay_mtu
from agent.overlay.veths import (
    LinuxPlumber,
    Plumber,
    PlumbError,
    VethSpec,
    bridge_full_message,
    check_ifname,
    host_ifname,
    netns_path,
    prefixed,
)
from agent.runtimes.cni.attachments import ops as cni_ops
from dataplane.compile import overlay_mtu
from dataplane.kernel import Kernel, LinuxKernel
from dataplane.model import NetworkSpec
from dataplane.naming import bridge_name
from dataplane.nft.kernel import NftKernel
from dataplane.nft.target import NftReconciler, NftTarget
from dataplane.reconciler import ReconcilerConfig
from dataplane.target import VxlanReconciler, VxlanTarget
from gossip.effects import Address, Effect, JoinFinished
from gossip.serf.payloads import encode_tags
from gossip.swim import Swim
from gossip.tables import aliases as tables_aliases
from gossip.tables.replica import Tables, TablesConfig
from gossip.tables.rows import Endpoint, Network, TableError, endpoint_from_dict, network_from_dict
from gossip.tables.view import ViewSource

if TYPE_CHECKING:
    from agent.runtime import MetricFamily, Runtime
    from gossip.tables.rows import NetworkOptions

log = logging.getLogger("agent.overlay.extension")


def _trace_row(stage: str, ident: str, detail: str) -> None:
    """``Tables.trace`` at debug level: stage marks for ``bench/propagation.py``."""
    log.debug(kv("row-trace", stage=stage, id=ident or None, detail=detail or None, t=f"{time.monotonic():.6f}"))


def _trace_pass(trigger: str, start: float, applying: float, end: float, ops: int) -> None:
    log.debug(kv("pass-trace", trigger=trigger, start=f"{start:.6f}", apply=f"{applying:.6f}",
                 end=f"{end:.6f}", ops=ops))

PREFIX = "ov-"
"""Name prefix of every device the agent owns (bridges, VXLAN devices, endpoint veths)."""
RECORD = "endpoints"
"""State-dir record of this host's endpoints."""
READY_CONDITION = "dataplane-reconciled"
DEFAULT_UNDERLAY_MTU = 1500
SYNC_WAIT = 10.0
"""After the join, how long to wait for the first bulk sync of our networks before
the reconciler may delete (a peer that never answers must not block it forever)."""
LOCAL_SETTLE = 5.0
"""``endpoint create`` waits up to this long for the local pass (bridge, port) to finish
when the network's bridge did not exist yet."""
RECORD_GROWTH = 4096
"""Room a create needs in the state dir beyond the record's current size."""
KEPT_CHECK_INTERVAL = 10.0
"""How often interfaces kept without a record (``Overlay.kept``) are checked for deletion
by the operator, so their warning goes away."""


class Overlay:
    """See the module docstring. One instance per agent run."""

    def __init__(
        self,
        *,
        kernel_factory: Callable[[str], Kernel] | None = None,
        plumber: Plumber | None = None,
        reconciler_config: ReconcilerConfig | None = None,
        tables_config: TablesConfig | None = None,
        ipsec_probe: Callable[[], str | None] | None = None,
        prefix: str = PREFIX,
        dataplane: bool | None = None,
        gateway: bool | None = None,
    ) -> None:
        self.gateway = kernel_factory is None if gateway is None else gateway
        """Run the gateway/egress reconciler (``dataplane.nft``): by default only with the
        real kernel (a fake VXLAN kernel must never come with real nft rules)."""
        self.gw: NftReconciler | None = None
        self.kernel_factory = kernel_factory or (lambda p: LinuxKernel(prefix=p))
        self.ipsec_view: Callable[[str], list[dict[str, Any]]] | None = None
        """Per-peer SA state of an encrypted network (set by ``agent.overlay.ipsec``), for inspect."""
        self.plumber: Plumber = plumber or LinuxPlumber()
        self.reconciler_config = reconciler_config or ReconcilerConfig()
        self.tables_config = tables_config
        self.ipsec_probe = ipsec_probe
        self.prefix = prefix
        self._dataplane_override = dataplane
        self.dataplane = True
        self.tables: Tables | None = None
        self.rt: Runtime | None = None
        self.rec: VxlanReconciler | None = None
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
        for name, op in {**netops.ops(self), **cni_ops(self)}.items():
            server.register(name, op)
        if self.dataplane:
            rt.readiness.require(READY_CONDITION)
        rt.driver.on_effect(JoinFinished, self._join_finished)
        rt.status_sections.append(self.status_section)
        rt.warning_sources.append(self.warnings)
        rt.metric_sources.append(self.metrics)

    def _join_finished(self, effect: JoinFinished) -> None:
        self._join_done.set()
        if effect.contacted:
            self._joined.set()

    def _changed(self) -> None:
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
                assert self.tables is not None
                view = ViewSource(self.tables, rt.driver.swim.members, local_vtep=self.vtep,
                                  underlay_mtu=self.underlay_mtu, vxlan_port=rt.config.vxlan_port,
                                  prefix=self.prefix, ifname=functools.partial(host_ifname, self.prefix))
                self.rec = VxlanReconciler(VxlanTarget(self.kernel_factory(self.prefix)), view,
                                           self.reconciler_config)
                if log.isEnabledFor(logging.DEBUG):  # --log-level debug: propagation stage marks
                    self.tables.trace, self.rec.trace = _trace_row, _trace_pass
                await nursery.start(self.rec.run)
                if self.gateway:  # the same view: gateways, egress and isolation rules
                    self.gw = NftReconciler(NftTarget(NftKernel()), view, self.reconciler_config, name="gateway")
                    await nursery.start(self.gw.run)
                    if rt.config.dns:  # names on each gateway address (docs/dns.md)
                        nursery.start_soon(self._dns_once_needed, rt)
                nursery.start_soon(Lifecycle(self).run)  # endpoints die with their namespace
                if self.kept:
                    nursery.start_soon(self._watch_kept)
                nursery.start_soon(self._become_ready, rt)
            self._started.set()
            task_status.started()

    async def _become_ready(self, rt: Runtime) -> None:
        """READY=1 after the first pass that follows the first join attempt; deletions
        allowed (``ready()``) once a join succeeded and our networks had their first sync."""
        assert self.rec is not None
        await self._join_done.wait()
        if self._joined.is_set():
            await self._wait_synced()
        await self.rec.settled()
        rt.readiness.mark(READY_CONDITION)
        if not self._joined.is_set():
            # The seeds did not answer: the reconciler only adds until a later join
            # (retries, rejoin) succeeds or its startup grace ends.
            await self._joined.wait()
            await self._wait_synced()

    async def _wait_synced(self) -> None:
        assert self.rec is not None
        with trio.move_on_after(SYNC_WAIT):
            while not self._synced():
                self._tables_moved = trio.Event()
                with trio.move_on_after(0.2):  # peers are also learned without a version bump
                    await self._tables_moved.wait()
        self.rec.ready()
        if self.gw is not None:
            self.gw.ready()
        log.info(kv("dataplane-view-complete", synced=self._synced()))

    def _synced(self) -> bool:
        """Every network we take part in had its first bulk sync, or has no peer to give one."""
        assert self.tables is not None
        t = self.tables
        return all(j.synced or not t.network_peers(net) for net, j in t.sync.joined.items())

    # -- persistence -----------------------------------------------------------------------------

    def _ep_dict(self, e: Endpoint) -> dict[str, Any]:
        """``dataclasses.asdict`` of a local endpoint, computed once per version of it
        (asdict costs ~20 µs a row: the record is rewritten on every create)."""
        cached = self._ep_dicts.get(e.id)
        if cached is None or cached[0] != e:
            cached = (e, dataclasses.asdict(e))
            self._ep_dicts[e.id] = cached
        return cached[1]

    def _record(self, without: str | None = None) -> dict[str, Any]:
        """The endpoints record (without endpoint ``without``: a remove saves first)."""
        assert self.tables is not None
        eps = [e for e in self.tables.local_endpoints() if e.id != without]
        if len(self._ep_dicts) > len(eps):
            live = {e.id for e in eps}
            self._ep_dicts = {k: v for k, v in self._ep_dicts.items() if k in live}
        record: dict[str, Any] = {
            "version": 1,
            "clock": self.tables.clock,
            "networks": [dataclasses.asdict(n) for n in self.tables.local_networks()],
            "endpoints": [self._ep_dict(e) for e in eps],
            # A copy: the write runs in a worker thread while the loop goes on.
            "interfaces": {k: dict(v) for k, v in self.interfaces.items() if k != without},
        }
        if self.kept:
            record["kept_interfaces"] = sorted(self.kept)
        return record

    async def _save(self, without: str | None = None) -> str | None:
        """Write the record; the reason when it could not be written (None: saved, or
        there is no state dir)."""
        assert self.rt is not None
        if self.rt.store is None:
            return None
        if await self.rt.persister.save_json(RECORD, self._record(without)):
            return None
        return self.rt.persister.last_error or "unknown error"

    async def _persist(self) -> None:
        """Best effort: the write of a change that has happened anyway (a withdrawn
        endpoint, an amended interface record); a failure is logged and shown by status."""
        error = await self._save()
        if error is not None:
            log.warning(kv("endpoints-not-persisted", error=error))

    def _check_writable(self, what: str) -> None:
        """ApiError now, before anything changes, when the state dir cannot take the
        record (read-only, full): a change that cannot be saved would be undone by the
        next restart."""
        assert self.rt is not None
        store = self.rt.store
        if store is None:
            return
        try:
            size = os.stat(store.file(RECORD)).st_size
        except OSError:
            size = 0
        problem = store.writable(size + RECORD_GROWTH)
        if problem is not None:
            log.warning(kv("endpoint-refused", reason=problem))
            raise api.ApiError(f"{what}: {problem}; nothing was changed")

    async def _restore(self, rt: Runtime) -> None:
        """Persisted endpoints back into the tables (before the join), veths checked.

        Only a record that was read and understood is trusted to say which of our
        interfaces are orphans (deleted): when it is unreadable (moved aside, see
        ``StateStore.load_json``), malformed or absent, every endpoint interface found is
        kept as it is (``kept``), listed in the record and in a status warning, until the
        operator restores the record or deletes the interfaces (docs/operations.md,
        "State directory")."""
        assert self.tables is not None
        store = rt.store
        record = store.load_json(RECORD) if store is not None else None
        eps: list[Endpoint] = []
        nets: list[Network] = []
        clock = 0
        ifaces: dict[str, dict[str, Any]] = {}
        kept: set[str] = set()
        trusted = record is not None  # an unreadable one is reported by the store (status too)
        if record is not None:
            try:
                if not isinstance(record, dict):
                    raise TableError("not an object")
                eps = [endpoint_from_dict(d) for d in record.get("endpoints") or []]
                nets = [network_from_dict(d) for d in record.get("networks") or []]
                saved = record.get("clock")
                clock = saved if isinstance(saved, int) and not isinstance(saved, bool) else 0
                raw = record.get("interfaces")
                ifaces = {k: v for k, v in raw.items() if isinstance(v, dict)} if isinstance(raw, dict) else {}
                raw_kept = record.get("kept_interfaces") or []
                kept = {k for k in raw_kept if isinstance(k, str)} if isinstance(raw_kept, list) else set()
            except TableError as exc:
                log.error(kv("endpoints-record-ignored", file=store.file(RECORD) if store else None,
                             reason=str(exc)))
                self._record_problem = (f"state file {store.file(RECORD) if store else RECORD} could not be "
                                        f"used ({exc})")
                eps, nets, trusted = [], [], False
        if self.dataplane and store is not None:
            eps = await self._check_interfaces(eps, kept, trusted)
        if eps:

            def restore(swim: Swim, now: float) -> tuple[str | None, list[Effect]]:
                assert self.tables is not None
                try:
                    effects = list(self.tables.restore_local_endpoints(now, eps, nets, clock))
                except TableError as exc:
                    return str(exc), []
                for e in eps:  # the aliases of each endpoint, published again
                    names = ifaces.get(e.id, {}).get("aliases")
                    if isinstance(names, list) and names:
                        try:
                            effects += self.tables.extras.set_aliases(now, e.id, names)[1]
                        except TableError as exc:
                            log.warning(kv("endpoint-aliases-not-restored", id=e.id[:12], reason=str(exc)))
                return None, effects

            problem = await rt.driver.call(restore)
            if problem is not None:
                log.error(kv("endpoints-not-restored", reason=problem))
                self._record_problem = f"the endpoints in state file {RECORD}.json could not be restored ({problem})"
                self.kept |= {host_ifname(self.prefix, e.id) for e in eps}
                eps = []
        self.interfaces = {e.id: ifaces.get(e.id, {"host_ifname": host_ifname(self.prefix, e.id)}) for e in eps}
        if eps:
            log.info(kv("endpoints-restored", count=len(eps)))
        if record is not None or self.kept:
            await self._persist()

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

    async def _watch_kept(self) -> None:
        """Forget kept interfaces the operator deleted (their warning goes with them)."""
        while self.kept:
            await trio.sleep(KEPT_CHECK_INTERVAL)
            try:
                present = set(await trio.to_thread.run_sync(self.plumber.existing, self.prefix))
            except PlumbError:
                continue
            async with self._lock:
                gone = self.kept - present
                if gone:
                    self.kept -= gone
                    log.info(kv("kept-interfaces-gone", interfaces=",".join(sorted(gone)), left=len(self.kept)))
                    await self._persist()

    async def _check_interfaces(self, eps: list[Endpoint], kept: set[str], trusted: bool) -> list[Endpoint]:
        """Keep endpoints whose veth still exists. Our veths that no endpoint owns are
        deleted when the record is ``trusted`` (a crash between creating one and saving
        the record), unless the operator has not decided about them yet (``kept``);
        otherwise they are all kept: an unreadable record never deletes interfaces."""
        try:
            present = set(await trio.to_thread.run_sync(self.plumber.existing, self.prefix))
        except PlumbError as exc:
            log.warning(kv("endpoint-interfaces-unknown", reason=str(exc)))
            self.kept = kept
            return eps
        keep = [e for e in eps if host_ifname(self.prefix, e.id) in present]
        for e in eps:
            if e not in keep:
                note = f"endpoint {e.name} ({e.id[:12]}) was not restored: its interface is gone"
                self._restore_notes.append(note)
                log.warning(kv("endpoint-dropped", endpoint=e.id[:12], name=e.name, reason="interface gone"))
        wanted = {host_ifname(self.prefix, e.id) for e in keep}
        unowned = sorted(present - wanted)
        if not trusted:
            self.kept = set(unowned)
            if unowned:
                log.error(kv("endpoint-interfaces-kept", count=len(unowned), interfaces=",".join(unowned[:20]),
                             reason="no readable endpoints record: they are left as they are"))
            return keep
        self.kept = kept & set(unowned)
        for name in unowned:
            if name in self.kept:
                continue
            try:
                await trio.to_thread.run_sync(self.plumber.remove, name)
                log.warning(kv("orphan-interface-removed", ifname=name))
            except PlumbError as exc:
                log.warning(kv("orphan-interface-kept", ifname=name, reason=str(exc)))
        return keep

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

    async def _room_for(self, network: str) -> None:
        """ApiError unless one more local endpoint fits on ``network``'s bridge."""
        limit = self.limits.endpoints_per_network

        def count(t: Tables) -> tuple[Network, int]:
            net = t.find_network(network)
            return net, sum(1 for e in t.local_endpoints() if e.network == net.id)

        net, n = await self.read(count)
        if n >= limit:
            if limit >= ENDPOINTS_PER_NETWORK:
                why = (f"a Linux bridge holds at most {BRIDGE_MAX_PORTS} ports: the network's VXLAN "
                       f"device and {ENDPOINTS_PER_NETWORK} endpoints")
            else:
                why = f"limits.endpoints_per_network = {limit}"
            log.warning(kv("endpoint-refused", network=net.name, endpoints=n, reason="network full on this host"))
            raise api.ApiError(f"network {net.name!r} already has {n} endpoints on this host, the most it "
                               f"can have ({why}); put further endpoints on another network or host")

    async def _admit(self, network: str) -> None:
        """ApiError when this host cannot serve ``network`` (``agent.overlay.admission``)."""

        def nets(t: Tables) -> tuple[Network, list[Network]]:
            net = t.find_network(network)
            local = {e.network for e in t.local_endpoints()}
            return net, [n for n in t.networks() if n.id in local]

        net, local = await self.read(nets)
        underlay = await trio.to_thread.run_sync(underlay_prefixes, self.prefix)
        why = admission.refusal(net, local, underlay)
        if why is not None:
            log.warning(kv("endpoint-refused", network=net.name, reason=why))
            raise api.ApiError(why)

    async def _confirm_attached(self, spec: VethSpec) -> None:
        """ApiError when the new host-side interface did not end up on its bridge because
        the dataplane refused it (a full bridge: EXFULL). When the bridge did not exist
        yet, the reconciler makes it and attaches the port: waits for that pass."""
        is_attached = getattr(self.plumber, "is_attached", None)
        if self.rec is None or spec.bridge is None or is_attached is None:
            return
        try:
            if await trio.to_thread.run_sync(is_attached, spec.host_ifname, spec.bridge):
                return
            with trio.move_on_after(LOCAL_SETTLE):
                await self.rec.settled()
            if await trio.to_thread.run_sync(is_attached, spec.host_ifname, spec.bridge):
                return
        except PlumbError as exc:
            raise api.ApiError(str(exc)) from None
        errors = [e for e in self.rec.status()["last_reconcile"]["errors"]
                  if spec.host_ifname in e or spec.bridge in e]
        if errors:
            reason = bridge_full_message(spec.bridge) if "Exchange full" in errors[0] else errors[0]
            raise api.ApiError(f"the endpoint's interface {spec.host_ifname} could not be attached to "
                               f"{spec.bridge}: {reason}")
        # No refusal seen: the reconciler is slow (a large first apply) and will attach it.
        log.warning(kv("endpoint-not-attached-yet", ifname=spec.host_ifname, bridge=spec.bridge))

    async def _undo_create(self, ep: Endpoint, ifname: str) -> None:
        """Take back a create that failed after its row and interface were made."""
        self.interfaces.pop(ep.id, None)
        try:
            await trio.to_thread.run_sync(self.plumber.remove, ifname)
        except PlumbError as exc:
            log.warning(kv("endpoint-rollback-incomplete", ifname=ifname, reason=str(exc)))
        try:
            await self._table_call(lambda t, now: t.remove_endpoint(now, ep.id))
        except api.ApiError as exc:
            log.warning(kv("endpoint-rollback-incomplete", id=ep.id[:12], reason=str(exc)))

    async def _save_or_fail(self, what: str) -> None:
        error = await self._save()
        if error is not None:
            log.warning(kv("endpoint-not-saved", error=error))
            raise api.ApiError(f"{what}: the state could not be saved ({error}); nothing was changed")

    async def create_endpoint(
        self,
        network: str,
        netns: str,
        *,
        name: str | None,
        ipv4: str | None,
        ipv6: str | None,
        mac: str | None,
        ifname: str,
        attachment: dict[str, Any] | None = None,
        aliases: Sequence[str] = (),
    ) -> Endpoint:
        """``attachment``: extra keys for the persisted interface record (a runtime's
        container id, ``agent.runtimes.cni.attachments``); ``aliases``: further DNS names
        of the endpoint (``gossip.tables.aliases``), published with its row.

        All or nothing: the row is published, the veth made and attached to the
        network's bridge, the record saved; a failure at any step (the bridge is full,
        the state dir is full or read-only) undoes the earlier ones and is the error.
        Refused before anything changes when the network already has
        ``limits.endpoints_per_network`` endpoints here or the state dir cannot take
        the record."""
        if not self.dataplane:
            raise api.ApiError("this agent runs without a dataplane (dataplane = false): it cannot host endpoints")
        await self._started.wait()
        try:
            check_ifname(ifname)
            path = netns_path(netns)
        except PlumbError as exc:
            raise api.ApiError(str(exc)) from None
        try:
            names = tables_aliases.check(aliases)
        except TableError as exc:
            raise api.ApiError(str(exc)) from None
        async with self._lock:
            same = await self._repeated_create(network, path, ifname, name, ipv4, ipv6, mac)
            if same is not None:
                return same
            try:
                await trio.to_thread.run_sync(self.plumber.check_target, path, ifname)
            except PlumbError as exc:
                raise api.ApiError(str(exc)) from None
            await self._room_for(network)
            await self._admit(network)
            self._check_writable("endpoint not created")
            ep: Endpoint = await self._table_call(lambda t, now: _create_with_aliases(
                t, now, lambda: t.create_endpoint(now, network, name, ipv4, ipv6, mac), names))
            net: Network = await self.read(lambda t: t.find_network(ep.network))
            spec = VethSpec(host_ifname(self.prefix, ep.id), path, ifname, ep.mac,
                            prefixed([(a, net.subnet_of(a) if a else None) for a in (ep.ipv4, ep.ipv6)]), self.effective_mtu(net),
                            bridge=bridge_name(self.prefix, net.vni) if self.rec is not None else None,
                            gateways=net.gateways_of(ep.ipv4, ep.ipv6) if self.gw is not None else ())
            if self.rec is not None:
                # A pass that read the tables before this row would detach the new port.
                await self.rec.current_pass_done()
            try:
                await trio.to_thread.run_sync(self.plumber.create, spec)
            except PlumbError as exc:
                with trio.CancelScope(shield=True):
                    await self._table_call(lambda t, now: t.remove_endpoint(now, ep.id))
                log.warning(kv("endpoint-create-failed", network=net.name, reason=str(exc)))
                raise api.ApiError(str(exc)) from None
            self.interfaces[ep.id] = {**(attachment or {}), "netns": path, "ifname": ifname,
                                      "host_ifname": spec.host_ifname}
            if names:
                self.interfaces[ep.id]["aliases"] = list(names)
            try:
                await self._confirm_attached(spec)
                await self._save_or_fail("endpoint not created")
            except BaseException as exc:
                with trio.CancelScope(shield=True):
                    await self._undo_create(ep, spec.host_ifname)
                if isinstance(exc, api.ApiError):
                    log.warning(kv("endpoint-create-failed", network=net.name, reason=str(exc)))
                raise
        log.info(kv("endpoint-created", id=ep.id[:12], name=ep.name, network=net.name,
                    ipv4=ep.ipv4, ipv6=ep.ipv6, mac=ep.mac, netns=path, ifname=ifname))
        return ep

    async def _repeated_create(self, network: str, path: str, ifname: str, name: str | None,
                               ipv4: str | None, ipv6: str | None, mac: str | None) -> Endpoint | None:
        """The local endpoint that already is this create (same namespace and interface,
        same network, and every given name/address/MAC equal): a client that timed out
        and retries gets it back instead of a conflict. ApiError when that interface
        belongs to an endpoint with a different spec; None when no endpoint has it."""
        owner = next((ep_id for ep_id, info in self.interfaces.items()
                      if info.get("netns") == path and info.get("ifname") == ifname), None)
        if owner is None:
            return None

        def find(t: Tables) -> tuple[Endpoint | None, Network]:
            return next((e for e in t.local_endpoints() if e.id == owner), None), t.find_network(network)

        found: tuple[Endpoint | None, Network] = await self.read(find)
        ep, net = found
        if ep is None:
            return None
        wanted = {"network": net.id, "name": name, "ipv4": ipv4, "ipv6": ipv6, "mac": mac}
        differs = [k for k, v in wanted.items() if v is not None and str(getattr(ep, k)).lower() != v.lower()]
        if differs:
            raise api.ApiError(f"interface {ifname} in network namespace {path} already belongs to endpoint "
                               f"{ep.name} ({ep.id[:12]}), whose {', '.join(differs)} differ from this request")
        log.info(kv("endpoint-create-repeated", id=ep.id[:12], name=ep.name, netns=path, ifname=ifname))
        return ep

    async def create_endpoint_with(
        self,
        network: str,
        build: Callable[[Endpoint, Network, str, int], dict[str, Any]],
        *,
        name: str | None = None,
        ipv4: str | None = None,
        mac: str | None = None,
    ) -> Endpoint:
        """An endpoint whose interface another layer builds (the Docker plugin: a veth pair
        left in the agent's namespace for dockerd to move). Publishes the row, then runs
        ``build(ep, net, host_ifname, mtu)`` in a worker thread (blocking; PlumbError) and
        keeps what it returns as the endpoint's interface record. A failure takes the row
        back, as ``create_endpoint`` does (a record that cannot be saved too)."""
        if not self.dataplane:
            raise api.ApiError("this agent runs without a dataplane (dataplane = false): it cannot host endpoints")
        await self._started.wait()
        async with self._lock:
            await self._room_for(network)
            await self._admit(network)
            self._check_writable("endpoint not created")
            ep: Endpoint = await self._table_call(
                lambda t, now: t.create_endpoint(now, network, name, ipv4, None, mac))
            net: Network = await self.read(lambda t: t.find_network(ep.network))
            ifname = host_ifname(self.prefix, ep.id)
            try:
                info = await trio.to_thread.run_sync(build, ep, net, ifname, self.effective_mtu(net))
            except PlumbError as exc:
                with trio.CancelScope(shield=True):
                    await self._table_call(lambda t, now: t.remove_endpoint(now, ep.id))
                raise api.ApiError(str(exc)) from None
            self.interfaces[ep.id] = {**info, "host_ifname": ifname}
            try:
                await self._save_or_fail("endpoint not created")
            except BaseException:
                with trio.CancelScope(shield=True):
                    await self._undo_create(ep, ifname)
                raise
        log.info(kv("endpoint-created", id=ep.id[:12], name=ep.name, network=net.name,
                    ipv4=ep.ipv4, mac=ep.mac, ifname=info.get("ifname")))
        return ep

    async def update_interface(self, endpoint_id: str, **info: Any) -> None:
        """Amend a local endpoint's interface record (e.g. the namespace Docker moved it
        into) and persist it; unknown ids are ignored."""
        async with self._lock:
            if endpoint_id in self.interfaces:
                self.interfaces[endpoint_id].update(info)
                await self._persist()

    async def rename_endpoint(self, endpoint_id: str, name: str) -> Endpoint:
        """Give a local endpoint another name (a runtime that learns the container's name
        after the row was published: the Docker plugin) and persist it. ApiError."""
        async with self._lock:
            ep: Endpoint = await self._table_call(lambda t, now: t.rename_endpoint(now, endpoint_id, name))
            await self._persist()
        log.info(kv("endpoint-renamed", id=ep.id[:12], name=ep.name))
        return ep

    async def set_aliases(self, endpoint_id: str, aliases: Sequence[str]) -> tuple[str, ...]:
        """Publish a local endpoint's aliases (replacing earlier ones) and persist them
        (the Docker plugin: Docker's ``--network-alias``, learnt after Join). ApiError."""
        async with self._lock:
            names: tuple[str, ...] = await self._table_call(
                lambda t, now: t.extras.set_aliases(now, endpoint_id, aliases))
            ep: Endpoint = await self.read(lambda t: t.find_endpoint(endpoint_id))
            if ep.id in self.interfaces:
                if names:
                    self.interfaces[ep.id]["aliases"] = list(names)
                else:
                    self.interfaces[ep.id].pop("aliases", None)
                await self._persist()
        log.info(kv("endpoint-aliases", id=ep.id[:12], aliases=",".join(names)))
        return names

    async def remove_endpoint(self, ref: str) -> Endpoint:
        """The record without the endpoint is saved first: a remove that cannot be saved
        is refused and changes nothing (a restart would bring the endpoint back without
        its interface)."""
        assert self.tables is not None
        me = self.tables.node
        async with self._lock:
            ep: Endpoint = await self.read(lambda t: t.find_endpoint(ref))
            if ep.owner != me:
                raise api.ApiError(f"endpoint {ref} belongs to node {ep.owner}; remove it there")
            info = self.interfaces.get(ep.id, {})
            ifname = str(info.get("host_ifname") or host_ifname(self.prefix, ep.id))
            error = await self._save(without=ep.id)
            if error is not None:
                log.warning(kv("endpoint-not-saved", error=error))
                raise api.ApiError(f"endpoint {ep.name} not removed: the state could not be saved "
                                   f"({error}); nothing was changed")
            if self.dataplane:
                try:
                    await trio.to_thread.run_sync(self.plumber.remove, ifname)
                except PlumbError as exc:
                    await self._persist()  # it is still here: back into the record
                    raise api.ApiError(str(exc)) from None
            await self._table_call(lambda t, now: t.remove_endpoint(now, ep.id))
            self.interfaces.pop(ep.id, None)
        log.info(kv("endpoint-removed", id=ep.id[:12], name=ep.name))
        return ep

    async def withdraw_vanished(self, endpoint_id: str, ifname: str) -> bool:
        """Withdraw a local endpoint whose host-side interface ``ifname`` vanished (its
        container's namespace went: ``agent.overlay.lifecycle``), if it still is ours and
        still gone once the lock is held (a create or remove may have been in flight)."""
        async with self._lock:
            if endpoint_id not in self.interfaces:
                return False
            try:
                if ifname in await trio.to_thread.run_sync(self.plumber.existing, self.prefix):
                    return False
            except PlumbError:
                return False
            try:
                ep: Endpoint = await self._table_call(lambda t, now: t.remove_endpoint(now, endpoint_id))
            except api.ApiError as exc:
                log.warning(kv("endpoint-withdraw-failed", id=endpoint_id[:12], reason=str(exc)))
                return False
            self.interfaces.pop(endpoint_id, None)
            await self._persist()
        log.info(kv("endpoint-withdrawn", id=ep.id[:12], name=ep.name, ifname=ifname,
                    reason="interface gone (its network namespace was deleted)"))
        return True

    # -- status, warnings, metrics -----------------------------------------------------------------

    def status_section(self) -> dict[str, Any]:
        assert self.tables is not None
        t = self.tables
        local = len(t.local_endpoints())
        section: dict[str, Any] = {
            "overlay": {
                "vtep": self.vtep,
                "dataplane": self.dataplane,
                "device_prefix": self.prefix,
                "underlay_mtu": self.underlay_mtu,
                "underlay_mtu_source": self.underlay_source,
                "networks": len(t.networks()),
                "networks_joined": len(t.sync.joined),
                "endpoints_local": local,
                "endpoints_remote": len(t.endpoints()) - local,
                "conflicts": len(t.conflicts()),
            },
        }
        if self.rec is not None:
            st = self.rec.status()
            section["last_reconcile"] = st["last_reconcile"]
            section["overlay"]["additive_only"] = st["additive_only"]
        return section

    def warnings(self) -> list[str]:
        assert self.tables is not None
        out: list[str] = []
        conflicts = self.tables.conflicts()
        out.extend(c.text for c in conflicts[:3])
        if len(conflicts) > 3:
            out.append(f"... and {len(conflicts) - 3} more table conflicts (agentctl network inspect)")
        if self.rec is not None:
            last = self.rec.status()["last_reconcile"]
            if last["at"] and not last["ok"]:
                first = last["errors"][0] if last["errors"] else "unknown error"
                out.append(f"dataplane: the last reconcile failed ({first}); retrying")
        if self.dataplane and self.underlay_source.startswith("default"):
            out.append(f"underlay MTU unknown, assuming {DEFAULT_UNDERLAY_MTU}: {self.underlay_source}; "
                       "set underlay_mtu")
        out.extend(self._restore_notes)
        if self._record_problem is not None:
            out.append(self._record_problem)
        if self.kept:
            names = sorted(self.kept)
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            out.append(f"{len(names)} endpoint interface(s) without a readable endpoints record are kept "
                       f"as they are, not published: {shown}; restore {RECORD}.json from the copy moved "
                       f"aside and restart, or delete them (ip link del NAME) (docs/operations.md, "
                       f"\"State directory\")")
        return out

    def metrics(self) -> list[MetricFamily]:
        from agent.runtime import MetricFamily

        assert self.tables is not None
        t = self.tables
        local = len(t.local_endpoints())
        fams = [
            MetricFamily.single("overlay_networks", "gauge", "Networks in force", len(t.networks())),
            MetricFamily("overlay_endpoints", "gauge", "Visible endpoints by scope",
                         [({"scope": "local"}, float(local)),
                          ({"scope": "remote"}, float(len(t.endpoints()) - local))]),
            MetricFamily.single("overlay_table_conflicts", "gauge", "Unresolved table conflicts",
                                len(t.conflicts())),
            MetricFamily.single("overlay_table_rows_applied", "counter", "Remote table rows merged",
                                t.stats.rows_applied),
        ]
        if self.rec is not None:
            c = self.rec.counters
            last = self.rec.last
            desired = self.rec.desired
            fams += [
                MetricFamily.single("overlay_dataplane_reconciles", "counter", "Reconcile passes", c.reconciles),
                MetricFamily.single("overlay_dataplane_reconcile_failures", "counter",
                                    "Passes with errors", c.failures),
                MetricFamily.single("overlay_dataplane_last_reconcile_seconds", "gauge",
                                    "Duration of the last pass", last.duration_s),
                MetricFamily("overlay_dataplane_entries", "gauge", "Entries the kernel should hold",
                             [({"table": "fdb"}, float(len(desired.fdb))),
                              ({"table": "flood"}, float(len(desired.flood))),
                              ({"table": "neigh"}, float(len(desired.neigh)))]),
            ]
        return fams


def _create_with_aliases(t: Tables, now: float, create: Callable[[], tuple[Endpoint, Sequence[Effect]]],
                         names: Sequence[str]) -> tuple[Endpoint, list[Effect]]:
    """An endpoint's row and, in the same driver step, its alias row (names already checked)."""
    ep, effects = create()
    out = list(effects)
    if names:
        out += t.extras.set_aliases(now, ep.id, names)[1]
    return ep, out
