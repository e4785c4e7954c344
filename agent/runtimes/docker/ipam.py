"""The IPAM side of the Docker plugin (``IpamDriver.*``): pools and addresses from the cluster's IPAM.

Docker never tells a plugin a network's name, so a pool is tied to a cluster network
by what ``docker network create`` passes to RequestPool: ``--ipam-opt network=NAME``
(that cluster network, or a new one of that name with ``--subnet``), or ``--subnet``
alone (the cluster network with that subnet, or a new one). Subnets of cluster
networks never overlap, so a subnet names at most one network.

For a new network, ``--ip-range`` (RequestPool's SubPool) and ``--gateway`` (the
gateway's RequestAddress) are kept on the pool and become the cluster network's options
when CreateNetwork makes it (``driver``, with the aux addresses and ``-o``/labels it
gets there); for an existing network they must match it. An address Docker requests
before CreateNetwork without the gateway type is an ``--aux-address`` inside the range
(libnetwork reserves those in the IPAM): it is handed back as asked, no endpoint made.

An address is a cluster endpoint row: RequestAddress publishes the row (the tables
allocate a conflict-free address, or check the one asked for) and makes its veth pair
(``veth.build``); the driver's CreateEndpoint binds it to Docker's endpoint.
ReleaseAddress withdraws a row nobody bound (Docker's error paths) and forgets the
reservations DeleteEndpoint already withdrew. The gateway (the network's, by default
its first address) is handed out to every host alike. IPv4 only for now.

Owns: the ``IpamDriver`` methods. Does not: touch the tables or kernel except through
``Overlay`` (``context.Context``).
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
from typing import Any

from agent.control import protocol as api
from agent.log import kv
from agent.runtimes.docker import veth
from agent.runtimes.docker.context import (
    GATEWAY_OPTION,
    Context,
    address_of,
    gateway,
    mapping,
    opt_text,
)
from agent.runtimes.docker.server import PluginError
from agent.runtimes.docker.state import Pool, Reservation
from gossip.tables import netopts
from gossip.tables.replica import Tables
from gossip.tables.rows import Network, TableError

log = logging.getLogger("agent.runtimes.docker")

ADDRESS_SPACE = "overlay-agent"
NETWORK_OPTION = "network"
"""``--ipam-opt network=NAME``: the cluster network a Docker network is."""
REQUEST_TYPE = "RequestAddressType"
MAC_OPTION = "com.docker.network.endpoint.macaddress"


class Ipam:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def capabilities(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"RequiresMACAddress": False, "RequiresRequestReplay": False}

    async def address_spaces(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"LocalDefaultAddressSpace": ADDRESS_SPACE, "GlobalDefaultAddressSpace": ADDRESS_SPACE}

    async def request_pool(self, req: dict[str, Any]) -> dict[str, Any]:
        if req.get("V6"):
            raise PluginError("overlay-agent: IPv6 is not supported by the Docker plugin yet "
                              "(create the network without --ipv6)")
        sub_pool = _subnet(opt_text(req, "SubPool"))
        opts = mapping(req, "Options")
        unknown = sorted(k for k in opts if k != NETWORK_OPTION)
        if unknown:
            raise PluginError(f"overlay-agent: unknown --ipam-opt {unknown[0]!r} (known: {NETWORK_OPTION})")
        name = opt_text(opts, NETWORK_OPTION)
        subnet = _subnet(opt_text(req, "Pool"))

        def find(t: Tables) -> Network | None:
            if name is not None:
                return next((n for n in t.networks() if n.name == name), None)
            return next((n for n in t.networks() if subnet in n.subnets), None)

        async def reserve() -> dict[str, Any]:
            net = await self.ctx.read(find)
            if net is not None:
                if net.subnet_v4 is None:
                    raise PluginError(f"overlay-agent: cluster network {net.name!r} has no IPv4 subnet")
                if subnet is not None and subnet != net.subnet_v4:
                    raise PluginError(f"overlay-agent: cluster network {net.name!r} has subnet "
                                      f"{net.subnet_v4}, not {subnet}")
                if sub_pool is not None and sub_pool != _ip_range(net):
                    raise PluginError(f"overlay-agent: cluster network {net.name!r} exists with IP range "
                                      f"{_ip_range(net) or 'none'}, not {sub_pool}")
                pool = Pool(_pool_id(), net.subnet_v4, net.id, net.name)
            elif subnet is not None:
                if sub_pool is not None:
                    try:
                        netopts.parse_options([subnet], ip_ranges=[sub_pool])
                    except TableError as exc:
                        raise PluginError(f"overlay-agent: --ip-range: {exc}") from None
                # the network is made by CreateNetwork
                pool = Pool(_pool_id(), subnet, None, name, ip_range=sub_pool)
            elif name is not None:
                raise PluginError(f"overlay-agent: cluster network {name!r} does not exist; "
                                  "give --subnet to create it")
            else:
                raise PluginError("overlay-agent: give --subnet CIDR (of a new or an existing cluster "
                                  f"network) or --ipam-opt {NETWORK_OPTION}=NAME")
            self.ctx.state.pools[pool.id] = pool
            await self.ctx.save()
            gw, plen = net_gateway(net) if net is not None else gateway(pool.subnet)
            log.info(kv("docker-pool", pool=pool.id, subnet=pool.subnet, network=pool.name or "",
                        existing=pool.network is not None, ip_range=pool.ip_range))
            return {"PoolID": pool.id, "Pool": pool.subnet, "Data": {GATEWAY_OPTION: f"{gw}/{plen}"}}

        return await self.ctx.call(reserve)

    async def _gateway(self, pool: Pool, wanted: str | None) -> str:
        """The gateway address of ``pool``'s network: an existing network's own (``--gateway``
        must match it), else the one asked for (kept for CreateNetwork) or the first."""
        if pool.network is not None:
            ref = pool.network
            net: Network = await self.ctx.read(lambda t: t.find_network(ref))
            gw = net_gateway(net)[0]
            if wanted is not None and address_of(wanted) != gw:
                raise PluginError(f"overlay-agent: cluster network {net.name!r} has gateway {gw}, not "
                                  f"{address_of(wanted)} (leave out --gateway)")
            return gw
        if wanted is None:
            return gateway(pool.subnet)[0]
        gw = address_of(wanted)
        try:
            netopts.parse_options([pool.subnet], gateways=[gw])
        except TableError as exc:
            raise PluginError(f"overlay-agent: --gateway: {exc}") from None
        kept = None if gw == gateway(pool.subnet)[0] else gw  # the default keeps a plain network plain
        if pool.gateway != kept:
            pool.gateway = kept
            await self.ctx.save()
        return gw

    async def release_pool(self, req: dict[str, Any]) -> dict[str, Any]:
        pool_id = opt_text(req, "PoolID")

        async def release() -> dict[str, Any]:
            state = self.ctx.state
            if state.pools.pop(pool_id or "", None) is not None:
                for key, res in list(state.reservations.items()):
                    if res.pool == pool_id and res.released:
                        del state.reservations[key]
                await self.ctx.save()
            return {}

        return await self.ctx.call(release)

    async def request_address(self, req: dict[str, Any]) -> dict[str, Any]:
        pool_id = opt_text(req, "PoolID") or ""
        wanted = opt_text(req, "Address")
        opts = mapping(req, "Options")

        async def allocate() -> dict[str, Any]:
            pool = self.ctx.state.pools.get(pool_id)
            if pool is None:
                raise PluginError(f"overlay-agent: unknown pool {pool_id[:40]!r}")
            plen = ipaddress.ip_network(pool.subnet).prefixlen
            if opts.get(REQUEST_TYPE) == GATEWAY_OPTION:
                return {"Address": f"{await self._gateway(pool, wanted)}/{plen}", "Data": {}}
            if pool.docker_network is None:
                # Before CreateNetwork: libnetwork reserving an --aux-address in the range.
                if wanted is None:
                    raise PluginError("overlay-agent: an address was requested before the network was created")
                aux = address_of(wanted)
                if ipaddress.ip_address(aux) not in ipaddress.ip_network(pool.subnet):
                    raise PluginError(f"overlay-agent: --aux-address {aux} is not in {pool.subnet}")
                return {"Address": f"{aux}/{plen}", "Data": {}}
            if pool.network is None:
                raise PluginError("overlay-agent: the network of this pool was not created")
            mac = opt_text(opts, MAC_OPTION)
            ep = await self.ctx.overlay.create_endpoint_with(
                pool.network, veth.build, ipv4=address_of(wanted) if wanted else None, mac=mac)
            assert ep.ipv4 is not None  # the pool is the network's IPv4 subnet
            self.ctx.state.reservations[ep.id] = Reservation(ep.ipv4, pool.id, ep.id, veth.peer_ifname(ep.id))
            await self.ctx.save()
            return {"Address": f"{ep.ipv4}/{plen}", "Data": {}}

        return await self.ctx.call(allocate)

    async def release_address(self, req: dict[str, Any]) -> dict[str, Any]:
        pool_id = opt_text(req, "PoolID") or ""
        raw = opt_text(req, "Address")

        async def release() -> dict[str, Any]:
            state = self.ctx.state
            pool = state.pools.get(pool_id)
            if raw is None or (pool is not None and address_of(raw) in (pool.gateway, gateway(pool.subnet)[0])):
                return {}
            addr = address_of(raw)
            mine = [r for r in state.reservations.values() if r.address == addr and r.pool == pool_id]
            # A reservation DeleteEndpoint already withdrew first: the address may have been
            # handed out again meanwhile, and that newer reservation must stay.
            res = next((r for r in mine if r.released), None) or next(iter(mine), None)
            if res is None:
                return {}
            del state.reservations[res.endpoint]
            if not res.released:
                await remove_endpoint(self.ctx, res.endpoint)
                for key, dep in list(state.endpoints.items()):
                    if dep.endpoint == res.endpoint:
                        del state.endpoints[key]
            await self.ctx.save()
            return {}

        return await self.ctx.call(release)


async def remove_endpoint(ctx: Context, endpoint_id: str) -> None:
    """Withdraw a cluster endpoint and delete its veth pair; already gone is fine."""
    try:
        await ctx.overlay.remove_endpoint(endpoint_id)
    except api.ApiError as exc:
        gone: bool = await ctx.read(lambda t: not any(e.id == endpoint_id for e in t.local_endpoints()))
        if not gone:
            raise
        log.info(kv("docker-endpoint-already-gone", endpoint=endpoint_id[:12], reason=str(exc)))


def _subnet(text: str | None) -> str | None:
    if text is None:
        return None
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError:
        raise PluginError(f"overlay-agent: --subnet {text!r} is not a network in CIDR form") from None
    if net.version != 4:
        raise PluginError("overlay-agent: IPv6 is not supported by the Docker plugin yet")
    return str(net)


def net_gateway(net: Network) -> tuple[str, int]:
    """A cluster network's IPv4 gateway (``--gateway`` or its first address) and prefix length."""
    subnet, gw = next(((s, g) for s, g in net.gateways() if ":" not in g), (net.subnet_v4 or "", ""))
    if not gw:
        return gateway(subnet)
    return gw, ipaddress.ip_network(subnet).prefixlen


def _ip_range(net: Network) -> str | None:
    if net.options is None or net.subnet_v4 is None:
        return None
    return next((p.ip_range for p in net.options.pools if p.subnet == net.subnet_v4), None)


def _pool_id() -> str:
    return "oa-pool-" + secrets.token_hex(8)

