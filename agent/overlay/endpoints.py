"""The overlay's endpoint operations: create, rename, alias, remove and withdraw local endpoints.

Owns (methods of ``agent.overlay.extension.Overlay``, through the ``EndpointOps`` mixin):
the all-or-nothing create (the checks up front: room on the bridge, ``admission``, a
writable state dir; then row, veth, bridge port, record, each undone on a later
failure), a retried create answered with the same endpoint, the create of an endpoint
whose interface another layer builds (Docker), renames and aliases (persisted), the
remove (record first) and the withdrawal of an endpoint whose namespace vanished.
Does not: persist or restore the record (``agent.overlay.record``), build veths
(``agent.overlay.veths``), parse requests (``agent.overlay.ops``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import trio

from agent.control import protocol as api
from agent.limits import BRIDGE_MAX_PORTS, ENDPOINTS_PER_NETWORK
from agent.log import kv
from agent.overlay import admission
from agent.overlay.base import OverlayBase
from agent.overlay.hostnets import underlay_prefixes
from agent.overlay.veths import (
    PlumbError,
    VethSpec,
    bridge_full_message,
    check_ifname,
    host_ifname,
    netns_path,
    prefixed,
)
from dataplane.naming import bridge_name
from gossip.effects import Effect
from gossip.tables.replica import Tables
from gossip.tables.rows import Endpoint, Network, TableError

log = logging.getLogger("agent.overlay.extension")  # the layer's logger, as before the split

LOCAL_SETTLE = 5.0
"""``endpoint create`` waits up to this long for the local pass (bridge, port) to finish
when the network's bridge did not exist yet."""


class EndpointOps(OverlayBase):
    """Local endpoint operations; mixed into ``Overlay``."""

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
        if any(n.id == net.id for n in local):
            # Admitted with its first endpoint here; the checks (a full read of the host's
            # links, addresses and routes: ~0.7 CPU-s at 1,000 veths) are not repeated
            # per create, which keeps a create's cost flat in the endpoints it has.
            return
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
        await self.ensure_dataplane()  # normally running since the network appeared
        try:
            check_ifname(ifname)
            path = netns_path(netns)
        except PlumbError as exc:
            raise api.ApiError(str(exc)) from None
        from gossip.tables import aliases as tables_aliases  # with the first network

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


def _create_with_aliases(t: Tables, now: float, create: Callable[[], tuple[Endpoint, Sequence[Effect]]],
                         names: Sequence[str]) -> tuple[Endpoint, list[Effect]]:
    """An endpoint's row and, in the same driver step, its alias row (names already checked)."""
    ep, effects = create()
    out = list(effects)
    if names:
        out += t.extras.set_aliases(now, ep.id, names)[1]
    return ep, out

