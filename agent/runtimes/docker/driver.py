"""The network-driver side of the Docker plugin (``NetworkDriver.*``).

- CreateNetwork: the Docker network becomes the cluster network of its pool (see
  ``ipam``): joined when it exists, created (name from ``--ipam-opt network=NAME``, else
  ``docker-<12 hex of Docker's id>``) otherwise, with ``-o encrypted`` / ``-o
  com.docker.network.driver.mtu=N`` and the network options ``docker network create``
  gives (``gossip.tables.netopts``, shown by ``agentctl network inspect`` under Docker's
  key names): ``--ip-range`` and ``--gateway`` (kept on the pool by ``ipam``),
  ``--aux-address`` (CreateNetwork's ``AuxAddresses``), ``--internal``, and every other
  ``-o key=value`` as a passthrough option. ``--label`` never reaches a network driver
  (dockerd passes only ``-o`` options), so it is not mapped. DeleteNetwork forgets the mapping and
  removes the cluster network only if this plugin created it and nothing uses it.
- CreateEndpoint binds Docker's endpoint to the row RequestAddress published (and
  reports its MAC); Join answers the veth's container side for dockerd to move, the
  network's anycast gateway as ``Gateway`` (the container's default route; only when the
  agent runs the gateway, ``Overlay.gw``), and always ``DisableGatewayService``: a Join
  that Docker reads as "no gateway here" would make dockerd invent a docker_gwbridge,
  and this keeps that impossible whatever else is answered. After Join the endpoint
  is renamed after its container (``naming``). DeleteEndpoint withdraws the row and
  deletes the pair, so peers drop their entries at once.
- Scope ``local``: each dockerd knows its own Docker network; the cluster network is
  what spans the hosts.

Owns: the ``NetworkDriver`` methods. Does not: allocate addresses (``ipam``).
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from agent.log import kv
from agent.runtimes.docker import veth
from agent.runtimes.docker.context import Context, address_of, mapping, opt_text, text
from agent.runtimes.docker.ipam import remove_endpoint
from agent.runtimes.docker.server import PluginError
from agent.runtimes.docker.state import DockerEndpoint, DockerNetwork
from gossip.tables import netopts
from gossip.tables.rows import Endpoint, Network, TableError

log = logging.getLogger("agent.runtimes.docker")

GENERIC = "com.docker.network.generic"
ENCRYPTED_OPTION = "encrypted"
INTERNAL_OPTION = "com.docker.network.internal"
MTU_OPTION = "com.docker.network.driver.mtu"
DST_PREFIX = "eth"


class Driver:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def capabilities(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"Scope": "local"}

    async def nothing(self, req: dict[str, Any]) -> dict[str, Any]:
        """Calls with nothing to do here (external connectivity, discovery, Leave)."""
        return {}

    async def oper_info(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"Value": {}}

    async def create_network(self, req: dict[str, Any]) -> dict[str, Any]:
        nid = text(req, "NetworkID")
        if req.get("IPv6Data"):
            raise PluginError("overlay-agent: IPv6 is not supported by the Docker plugin yet")
        v4 = req.get("IPv4Data")
        if not isinstance(v4, list) or len(v4) != 1 or not isinstance(v4[0], dict):
            raise PluginError("overlay-agent: exactly one IPv4 subnet per network")
        subnet = opt_text(v4[0], "Pool")
        aux = {str(k): address_of(str(v)) for k, v in mapping(v4[0], "AuxAddresses").items()}
        generic = mapping(mapping(req, "Options"), GENERIC)
        passthrough = {str(k): str(v) for k, v in generic.items() if k not in (ENCRYPTED_OPTION, MTU_OPTION)}
        encrypted = str(generic.get(ENCRYPTED_OPTION, "false")).lower() not in ("false", "0", "no") \
            if ENCRYPTED_OPTION in generic else False
        mtu = _mtu(generic.get(MTU_OPTION))
        # docker network create --internal: libnetwork puts it among the driver's options.
        internal = mapping(req, "Options").get(INTERNAL_OPTION) is True

        async def create() -> dict[str, Any]:
            state = self.ctx.state
            if nid in state.networks:
                return {}
            pool = next((p for p in reversed(state.pools.values())
                         if p.subnet == subnet and p.docker_network is None), None)
            if pool is None:
                raise PluginError(f"overlay-agent: use --ipam-driver {self.ctx.name} together with "
                                  f"--driver {self.ctx.name}: addresses must come from the cluster's IPAM")
            created = pool.network is None
            if pool.network is not None:
                ref = pool.network
                net: Network = await self.ctx.read(lambda t: t.find_network(ref))
                if encrypted and not net.encrypted:
                    raise PluginError(f"overlay-agent: cluster network {net.name!r} exists and is not encrypted")
                if aux or passthrough or internal:
                    # Options belong to the network's creation; a host joining it gets them
                    # from the cluster (agentctl network inspect).
                    log.info(kv("docker-network-options-ignored", network=net.name,
                                reason="the cluster network exists; its own options apply"))
            else:
                name = pool.name or f"docker-{nid[:12]}"
                try:
                    opts = netopts.parse_options(
                        [pool.subnet], [pool.ip_range] if pool.ip_range else [],
                        [pool.gateway] if pool.gateway else [], aux, internal=internal, options=passthrough)[1]
                except TableError as exc:
                    raise PluginError(f"overlay-agent: {exc}") from None
                net = await self.ctx.overlay.create_network(name, [pool.subnet], None, encrypted, mtu, opts)
                pool.network = net.id
            pool.docker_network = nid
            state.networks[nid] = DockerNetwork(nid, net.id, pool.id, created)
            await self.ctx.save()
            log.info(kv("docker-network", docker_id=nid[:12], network=net.name, id=net.id[:12],
                        created=created, encrypted=net.encrypted))
            return {}

        return await self.ctx.call(create)

    async def delete_network(self, req: dict[str, Any]) -> dict[str, Any]:
        nid = text(req, "NetworkID")

        async def delete() -> dict[str, Any]:
            state = self.ctx.state
            dn = state.networks.pop(nid, None)
            if dn is None:
                return {}
            for pool in state.pools.values():
                if pool.docker_network == nid:
                    pool.docker_network = None
            await self.ctx.save()
            if dn.created and all(other.network != dn.network for other in state.networks.values()):
                try:
                    await self.ctx.overlay.remove_network(dn.network)
                except Exception as exc:  # in use elsewhere: whoever uses it last removes it
                    log.info(kv("docker-network-kept", id=dn.network[:12], reason=str(exc)))
            return {}

        return await self.ctx.call(delete)

    async def create_endpoint(self, req: dict[str, Any]) -> dict[str, Any]:
        nid, eid = text(req, "NetworkID"), text(req, "EndpointID")
        iface = mapping(req, "Interface")
        if opt_text(iface, "AddressIPv6") is not None:
            raise PluginError("overlay-agent: IPv6 is not supported by the Docker plugin yet")
        raw = opt_text(iface, "Address")
        mac = opt_text(iface, "MacAddress")

        async def create() -> dict[str, Any]:
            state = self.ctx.state
            dn = state.networks.get(nid)
            if dn is None:
                raise PluginError(f"overlay-agent: network {nid[:12]} is not one of this plugin's")
            if raw is None:
                raise PluginError(f"overlay-agent: no address for the endpoint: use --ipam-driver {self.ctx.name}")
            addr = address_of(raw)
            res = next((r for r in state.reservations.values()
                        if r.address == addr and not r.released and r.docker_endpoint in (None, eid)), None)
            if res is None:
                raise PluginError(f"overlay-agent: address {addr} was not handed out by this plugin's IPAM "
                                  f"(use --ipam-driver {self.ctx.name})")
            ep_id = res.endpoint
            ep: Endpoint = await self.ctx.read(lambda t: t.find_endpoint(ep_id))
            if mac is not None and mac.lower() != ep.mac:
                raise PluginError("overlay-agent: --mac-address is not supported (the cluster assigns MACs)")
            res.docker_endpoint = eid
            state.endpoints[eid] = DockerEndpoint(eid, nid, res.endpoint, addr)
            await self.ctx.save()
            return {"Interface": {"MacAddress": ep.mac}} if mac is None else {}

        return await self.ctx.call(create)

    async def join(self, req: dict[str, Any]) -> dict[str, Any]:
        eid = text(req, "EndpointID")
        sandbox = opt_text(req, "SandboxKey")

        async def join() -> dict[str, Any]:
            state = self.ctx.state
            dep = state.endpoints.get(eid)
            res = state.reservations.get(dep.endpoint) if dep is not None else None
            if dep is None or res is None:
                raise PluginError(f"overlay-agent: unknown endpoint {eid[:12]}")
            if not await trio.to_thread.run_sync(veth.exists, res.peer):
                raise PluginError(f"overlay-agent: the interface {res.peer} of endpoint {eid[:12]} is gone")
            dep.sandbox = sandbox
            await self.ctx.save()
            await self.ctx.overlay.update_interface(dep.endpoint, netns=sandbox, docker_endpoint=eid)
            reply: dict[str, Any] = {"InterfaceName": {"SrcName": res.peer, "DstPrefix": DST_PREFIX},
                                     "DisableGatewayService": True}
            if self.ctx.overlay.gw is not None:
                gateways = await self.ctx.overlay.read(
                    lambda t: t.find_network(t.find_endpoint(dep.endpoint).network).gateways())
                for _, gw in gateways:
                    reply["GatewayIPv6" if ":" in gw else "Gateway"] = gw
            if self.ctx.joined is not None:
                self.ctx.joined(eid, dep.endpoint, dep.docker_network)
            return reply

        return await self.ctx.call(join)

    async def delete_endpoint(self, req: dict[str, Any]) -> dict[str, Any]:
        eid = text(req, "EndpointID")

        async def delete() -> dict[str, Any]:
            state = self.ctx.state
            dep = state.endpoints.pop(eid, None)
            if dep is None:
                return {}
            res = state.reservations.get(dep.endpoint)
            if res is not None:
                res.released = True
                res.docker_endpoint = None
            await remove_endpoint(self.ctx, dep.endpoint)
            await self.ctx.save()
            log.info(kv("docker-endpoint-removed", docker_id=eid[:12], endpoint=dep.endpoint[:12]))
            return {}

        return await self.ctx.call(delete)


def _mtu(value: Any) -> int | None:
    if value is None:
        return None
    try:
        mtu = int(str(value))
    except ValueError:
        raise PluginError(f"overlay-agent: {MTU_OPTION} must be a number") from None
    return mtu
