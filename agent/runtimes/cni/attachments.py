"""The agent's side of ``overlay-cni``: the ``cni`` control op, container attachments as endpoints.

A CNI attachment is (container id, ifname) on one network. Each is one local endpoint
of ``agent.overlay.extension.Overlay``, made like ``agentctl endpoint create`` and
marked in its persisted interface record with ``{"runtime": "cni", "container": ID}``,
so DEL, CHECK and GC find it again, also after an agent restart. Requests
(``agent.runtimes.cni.plugin`` sends them):

    {"op": "cni", "args": {"action": "add", "network": N, "container": ID, "netns": PATH,
                           "ifname": IF, "name": N?, "ip": IP?, "ip6": IP?, "mac": MAC?}}
        -> the endpoint object (as ``agentctl endpoint create --format json``)
    {"op": "cni", "args": {"action": "del", "network": N, "container": ID, "ifname": IF}}
        -> {"removed": [endpoint ids]}; nothing to remove is no error
    {"op": "cni", "args": {"action": "check", "network": N, "container": ID, "netns": PATH, "ifname": IF}}
        -> the endpoint object; an error when it, its host veth or the container's
           interface is missing
    {"op": "cni", "args": {"action": "gc", "network": N, "valid": [{"container": ID, "ifname": IF}...]}}
        -> {"removed": [...]}: this network's CNI endpoints not listed
    {"op": "cni", "args": {"action": "status", "network": N}} -> {"network": ID, "ready": bool}

Owns: argument checks (bounded, one-line errors), the attachment lookup, the choice of
the endpoint's name (the container's name when it is free on this host), and the
kernel check of CHECK. Does not: build veths or write rows (``Overlay``), speak CNI
(``agent.runtimes.cni.spec``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from agent.control import protocol as api
from agent.control.server import Op
from agent.overlay.base import OPS
from agent.overlay.ops import endpoint_json
from gossip.tables import netopts
from gossip.tables.rows import Endpoint, IpamPool, Network, TableError, check_name

if TYPE_CHECKING:
    from agent.overlay.extension import Overlay
    from agent.runtime import Runtime

RUNTIME = "cni"
ACTIONS = ("add", "del", "check", "gc", "status")
MAX_VALID = 100_000
_CONTAINER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,1023}\Z")


def _str(args: dict[str, Any], key: str, required: bool = True) -> str | None:
    value = args.get(key)
    if value is None or value == "":
        if required:
            raise api.ApiError(f"cni: missing {key!r}")
        return None
    if not isinstance(value, str) or len(value) > 4096:
        raise api.ApiError(f"cni: {key!r} must be a string")
    return value


def _container(args: dict[str, Any]) -> str:
    value = _str(args, "container")
    assert value is not None
    if not _CONTAINER_ID.match(value):
        raise api.ApiError("cni: invalid container id (letters, digits, '_', '.', '-'; up to 1024)")
    return value


def _aliases(args: dict[str, Any]) -> list[str]:
    value = args.get("aliases") or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise api.ApiError("cni: 'aliases' must be a list of strings")
    return value


def _pools(pools: Any, subnets: Any) -> list[tuple[str, str | None, str | None]]:
    """(subnet, IP range, gateway) of a network or of a conflist, the gateway explicit."""
    if pools is None:
        pools = [IpamPool(s, None, None, ()) for s in subnets]
    return sorted((p.subnet, p.ip_range, p.gateway_address) for p in pools)


def _describe(pools: list[tuple[str, str | None, str | None]]) -> str:
    return "; ".join(f"{s}" + (f" range {r}" if r else "") + f" gateway {g}" for s, r, g in pools)


def kernel_check(host_ifname: str, netns: str, ifname: str) -> str | None:
    """What is wrong with the attachment's veth, or None: the host side exists, and so does
    ``ifname`` inside ``netns``, up. Blocking (a worker thread)."""
    from dataplane import rtnl

    try:
        sock = rtnl.RtnlSocket()
        try:
            host = rtnl.get_link(sock, host_ifname)
        finally:
            sock.close()
        if host is None:
            return f"the host side {host_ifname} of the veth is gone"
        if not os.path.exists(netns):
            return f"network namespace {netns} is gone"
        inner_sock = rtnl.RtnlSocket(netns)
        try:
            inner = rtnl.get_link(inner_sock, ifname)
        finally:
            inner_sock.close()
    except OSError as exc:
        return f"cannot read interfaces: {exc.strerror or exc}"
    if inner is None:
        return f"{ifname} is missing in {netns}"
    if not inner.up:
        return f"{ifname} in {netns} is down"
    return None


class Attachments:
    """The ``cni`` op over one ``Overlay``. ``check_kernel`` is replaceable (fake kernels)."""

    def __init__(self, overlay: Overlay,
                 check_kernel: Callable[[str, str, str], str | None] | None = None) -> None:
        self.o = overlay
        self.check_kernel = check_kernel or kernel_check

    def find(self, container: str, ifname: str | None = None) -> list[str]:
        """Endpoint ids of this host's CNI attachments of ``container`` (and ``ifname``)."""
        return sorted(ep_id for ep_id, info in self.o.interfaces.items()
                      if info.get("runtime") == RUNTIME and info.get("container") == container
                      and (ifname is None or info.get("ifname") == ifname))

    async def _network(self, ref: str) -> Network:
        net: Network = await self.o.read(lambda t: t.find_network(ref))
        return net

    async def _shape(self, ep: Endpoint) -> dict[str, Any]:
        o = self.o

        def shape(t: Any) -> dict[str, Any]:
            net = next((n for n in t.networks() if n.id == ep.network), None)
            out = endpoint_json(ep, net, t.node, o.interfaces.get(ep.id), o.prefix,
                                o.effective_mtu(net) if net is not None else None)
            # The anycast gateways the container's default routes use (the CNI result's
            # routes), only while this agent runs them (dataplane.nft).
            out["gateways"] = [g for _, g in net.gateways()] if net is not None and o.gw is not None else []
            return out

        result: dict[str, Any] = await o.read(shape)
        result["container"] = o.interfaces.get(ep.id, {}).get("container")
        return result

    async def _endpoint(self, ep_id: str) -> Endpoint | None:
        def find(t: Any) -> Endpoint | None:
            return next((e for e in t.local_endpoints() if e.id == ep_id), None)

        ep: Endpoint | None = await self.o.read(find)
        return ep

    async def _free_name(self, name: str | None) -> str | None:
        """The container's name for the endpoint when valid and unused on this host, else
        None (the tables name it ``ep-<id>``): a name must not make an ADD fail."""
        if name is None:
            return None
        try:
            check_name(name, "endpoint")
        except TableError:
            return None
        taken: bool = await self.o.read(lambda t: any(e.name == name for e in t.local_endpoints()))
        return None if taken else name

    async def handle(self, rt: Runtime, req: api.Request, stream: trio.SocketStream) -> Any:
        args = req.args
        action = args.get("action")
        if action not in ACTIONS:
            raise api.ApiError(f"cni: unknown action {action!r} (known: {', '.join(ACTIONS)})")
        network = _str(args, "network")
        assert network is not None
        if action == "status":
            net = await self._network(network)
            if not self.o.dataplane:
                raise api.ApiError("this agent runs without a dataplane (dataplane = false): it cannot host endpoints")
            return {"network": net.id, "ready": rt.readiness.ready}
        if action == "gc":
            return {"removed": await self.gc(network, args.get("valid"))}
        container = _container(args)
        ifname = _str(args, "ifname")
        assert ifname is not None
        if action == "del":
            return {"removed": await self.delete(network, container, ifname)}
        netns = _str(args, "netns")
        assert netns is not None
        if action == "check":
            return await self.check(network, container, netns, ifname)
        return await self.add(network, container, netns, ifname, args)

    async def _network_for_add(self, network: str, ranges: Any) -> Network:
        """The network of an ADD. With the conflist's ``ipam.ranges`` (``spec.ipam_ranges``):
        created from them when there is no such network yet, else they must be what the
        network has (its subnets, IP ranges and gateways), so a conflist never silently
        means another network than the one its containers join."""
        if ranges is None:
            return await self._network(network)
        if not isinstance(ranges, list) or not all(isinstance(r, dict) and isinstance(r.get("subnet"), str)
                                                   for r in ranges):
            raise api.ApiError("cni: 'ranges' must be a list of objects with a 'subnet'")
        subnets = [r["subnet"] for r in ranges]
        ip_ranges = [str(r["ip_range"]) for r in ranges if r.get("ip_range")]
        gateways = [str(r["gateway"]) for r in ranges if r.get("gateway")]
        try:
            base, opts = netopts.parse_options(subnets, ip_ranges, gateways)
        except TableError as exc:
            raise api.ApiError(f"ipam.ranges: {exc}") from None
        found: Network | None = await self.o.read(
            lambda t: next((n for n in t.networks() if network in (n.name, n.id)), None))
        if found is None:
            return await self.o.create_network(network, list(base), None, False, None, opts)
        want = _pools(opts.pools if opts is not None else None, base)
        have = _pools(found.pools, ())
        if want != have:
            raise api.ApiError(f"ipam.ranges differ from network {found.name!r}'s subnets, IP ranges and "
                               f"gateways ({_describe(have)}); make the conflist match or use another network")
        return found

    async def add(self, network: str, container: str, netns: str, ifname: str, args: dict[str, Any]) -> Any:
        net = await self._network_for_add(network, args.get("ranges"))
        for ep_id in self.find(container, ifname):
            info = self.o.interfaces.get(ep_id, {})
            ep = await self._endpoint(ep_id)
            if ep is not None and ep.network == net.id and info.get("netns") == netns:
                return await self._shape(ep)  # a repeated ADD: the same attachment
            raise api.ApiError(f"container {container[:12]} already has {ifname} on another network "
                               "or namespace (DEL it first)")
        # The overlay hands a retried create on the same interface back as it is (a client
        # that timed out); for CNI that interface must also be this container's.
        taken = next((ep_id for ep_id, info in self.o.interfaces.items()
                      if info.get("netns") == netns and info.get("ifname") == ifname), None)
        if taken is not None:
            raise api.ApiError(f"{ifname} already exists in {netns}: it is endpoint {taken[:12]} of another "
                               "container (DEL that one first)")
        ip, ip6 = _str(args, "ip", False), _str(args, "ip6", False)
        ep = await self.o.create_endpoint(
            net.id, netns, name=await self._free_name(_str(args, "name", False)), ipv4=ip, ipv6=ip6,
            mac=_str(args, "mac", False), ifname=ifname,
            attachment={"runtime": RUNTIME, "container": container}, aliases=_aliases(args))
        return await self._shape(ep)

    async def _remove(self, ids: list[str]) -> list[str]:
        removed = []
        for ep_id in ids:
            try:
                await self.o.remove_endpoint(ep_id)
            except api.ApiError:
                if ep_id in self.o.interfaces and await self._endpoint(ep_id) is not None:
                    raise
                continue  # withdrawn meanwhile (its namespace went): the goal state
            removed.append(ep_id)
        return removed

    async def delete(self, network: str, container: str, ifname: str) -> list[str]:
        ids = self.find(container, ifname)
        try:
            net_id: str | None = (await self._network(network)).id
        except api.ApiError:
            net_id = None  # a network deleted meanwhile: match on the container alone
        if net_id is not None:
            mine = [i for i in ids if (ep := await self._endpoint(i)) is None or ep.network == net_id]
            ids = mine
        return await self._remove(ids)

    async def check(self, network: str, container: str, netns: str, ifname: str) -> Any:
        net = await self._network(network)
        for ep_id in self.find(container, ifname):
            ep = await self._endpoint(ep_id)
            if ep is None or ep.network != net.id:
                continue
            info = self.o.interfaces.get(ep_id, {})
            host = str(info.get("host_ifname") or "")
            problem = await trio.to_thread.run_sync(self.check_kernel, host, netns, ifname)
            if problem is not None:
                raise api.ApiError(f"container {container[:12]} on network {net.name!r}: {problem}")
            return await self._shape(ep)
        raise api.ApiError(f"container {container[:12]} has no interface {ifname} on network {net.name!r}")

    async def gc(self, network: str, valid: Any) -> list[str]:
        if not isinstance(valid, list) or len(valid) > MAX_VALID:
            raise api.ApiError("cni: 'valid' must be a list of {container, ifname}")
        keep: set[tuple[str, str]] = set()
        for item in valid:
            if not isinstance(item, dict) or not isinstance(item.get("container"), str) \
                    or not isinstance(item.get("ifname"), str):
                raise api.ApiError("cni: 'valid' entries need 'container' and 'ifname' strings")
            keep.add((item["container"], item["ifname"]))
        net = await self._network(network)
        stale = []
        for ep_id, info in sorted(self.o.interfaces.items()):
            if info.get("runtime") != RUNTIME or (info.get("container"), info.get("ifname")) in keep:
                continue
            ep = await self._endpoint(ep_id)
            if ep is not None and ep.network == net.id:
                stale.append(ep_id)
        return await self._remove(stale)


def ops(overlay: Overlay) -> dict[str, Op]:
    return {"cni": Op(Attachments(overlay).handle, OPS["cni"])}
