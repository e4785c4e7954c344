"""The IPAM side of the Docker plugin (``IpamDriver.*``): pools and addresses from the cluster's IPAM.

Docker never tells a plugin a network's name, so a pool is tied to a cluster network
by what ``docker network create`` passes to RequestPool: ``--ipam-opt network=NAME``
(that cluster network, or a new one of that name with ``--subnet``), or ``--subnet``
alone (the cluster network with that subnet, or a new one). Subnets of cluster
networks never overlap, so a subnet names at most one network.

An address is a cluster endpoint row: RequestAddress publishes the row (the tables
allocate a conflict-free address, or check the one asked for) and makes its veth pair
(``veth.build``); the driver's CreateEndpoint binds it to Docker's endpoint.
ReleaseAddress withdraws a row nobody bound (Docker's error paths) and forgets the
reservations DeleteEndpoint already withdrew. The gateway is the network's first
address, handed out to every host alike. IPv4 only for now.

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
from gossip.tables.replica import Tables
from gossip.tables.rows import Network

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
        if opt_text(req, "SubPool") is not None:
            raise PluginError("overlay-agent: --ip-range is not supported: the cluster's IPAM hands out addresses")
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
                pool = Pool(_pool_id(), net.subnet_v4, net.id, net.name)
            elif subnet is not None:
                pool = Pool(_pool_id(), subnet, None, name)  # the network is made by CreateNetwork
            elif name is not None:
                raise PluginError(f"overlay-agent: cluster network {name!r} does not exist; "
                                  "give --subnet to create it")
            else:
                raise PluginError("overlay-agent: give --subnet CIDR (of a new or an existing cluster "
                                  f"network) or --ipam-opt {NETWORK_OPTION}=NAME")
            self.ctx.state.pools[pool.id] = pool
            await self.ctx.save()
            gw, plen = gateway(pool.subnet)
            log.info(kv("docker-pool", pool=pool.id, subnet=pool.subnet, network=pool.name or "",
                        existing=pool.network is not None))
            return {"PoolID": pool.id, "Pool": pool.subnet, "Data": {GATEWAY_OPTION: f"{gw}/{plen}"}}

        return await self.ctx.call(reserve)

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
            gw, plen = gateway(pool.subnet)
            if opts.get(REQUEST_TYPE) == GATEWAY_OPTION:
                if wanted is not None and address_of(wanted) != gw:
                    raise PluginError(f"overlay-agent: the gateway of a cluster network is its first "
                                      f"address, {gw} (leave out --gateway)")
                return {"Address": f"{gw}/{plen}", "Data": {}}
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
            if raw is None or (pool is not None and address_of(raw) == gateway(pool.subnet)[0]):
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


def _pool_id() -> str:
    return "oa-pool-" + secrets.token_hex(8)

