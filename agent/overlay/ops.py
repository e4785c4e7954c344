"""Control ops of the overlay layer: ``network``, ``endpoint``, ``dataplane``.

Owns: the arguments each op accepts (checked here, so bad input is one error line
and nothing changes) and the JSON shapes of the replies: ``network inspect`` is
shaped like ``docker network inspect`` (Name, Id, Created, Scope, Driver, IPAM.Config
with Subnet/IPRange/Gateway/AuxiliaryAddresses, Internal, Labels, Options with the
``--opt`` pairs and the VNI, Containers keyed by endpoint id, Peers with their VTEPs); rows of
``network ls`` / ``endpoint ls`` and the endpoint object are documented in
docs/operations.md. Requests:

    {"op": "network",  "args": {"action": "create", "name": N, "subnets": [CIDR...],
                                "vni": int?, "encrypted": bool?, "mtu": int?,
                                "ip_ranges": [CIDR...]?, "gateways": [IP...]?,
                                "aux_addresses": {NAME: IP}?, "labels": {K: V}?,
                                "options": {K: V}?, "internal": bool?, "allow_overlap": bool?,
                                "host_access": bool?}}
    {"op": "network",  "args": {"action": "ls" | "inspect" | "rm", "ref": NAME|ID|PREFIX}}
    {"op": "endpoint", "args": {"action": "create", "network": REF, "netns": NAME|PATH,
                                "ip": IP?, "ip6": IP?, "mac": MAC?, "ifname": "eth0", "name": N?,
                                "aliases": [NAME...]?}}
    {"op": "endpoint", "args": {"action": "ls", "network": REF?} | {"action": "rm", "ref": ID|NAME}}
    {"op": "dataplane"}

Does not: change state itself (``agent.overlay.extension``) or format text (``agent.ctl.network``).
The membership ops (members, status, join, ...) are ``agent.control.ops``; both sets are
registered with the same ``agent.control.server.ControlServer``.
"""

from __future__ import annotations

import ipaddress
import time
from typing import TYPE_CHECKING, Any

import trio

from agent.control import protocol as api
from agent.control.server import Op
from agent.overlay.base import OPS
from agent.overlay.veths import host_ifname
from gossip.tables import netopts
from gossip.tables.replica import Tables
from gossip.tables.rows import Endpoint, IpamPool, Network, NetworkOptions, TableError

if TYPE_CHECKING:
    from agent.overlay.extension import Overlay
    from agent.runtime import Runtime

DRIVER = "overlay"
SCOPE = "global"
VNI_OPTION = "com.docker.network.driver.overlay.vxlanid_list"
MTU_OPTION = "com.docker.network.driver.mtu"


# -- arguments ----------------------------------------------------------------------------------


def _opt_str(args: dict[str, Any], key: str) -> str | None:
    value = args.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise api.ApiError(f"{key!r} must be a non-empty string")
    return value


def _str(args: dict[str, Any], key: str, what: str) -> str:
    value = _opt_str(args, key)
    if value is None:
        raise api.ApiError(f"missing {what}")
    return value


def _opt_int(args: dict[str, Any], key: str) -> int | None:
    value = args.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise api.ApiError(f"{key!r} must be an integer")
    return value


def _action(args: dict[str, Any], known: tuple[str, ...]) -> str:
    action = args.get("action", "ls")
    if action not in known:
        raise api.ApiError(f"unknown action {action!r} (known: {', '.join(known)})")
    return str(action)


def _list(args: dict[str, Any], key: str) -> list[str]:
    value = args.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise api.ApiError(f"{key!r} must be a list of strings")
    return value


def _map(args: dict[str, Any], key: str) -> dict[str, str]:
    value = args.get(key) or {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise api.ApiError(f"{key!r} must be an object of strings")
    return value


def _flag(args: dict[str, Any], key: str) -> bool:
    value = args.get(key, False)
    if not isinstance(value, bool):
        raise api.ApiError(f"{key!r} must be true or false")
    return value


def network_options(args: dict[str, Any], subnets: list[str]) -> NetworkOptions | None:
    """The options of a create request (``gossip.tables.netopts.parse_options``)."""
    try:
        return netopts.parse_options(
            subnets, _list(args, "ip_ranges"), _list(args, "gateways"), _map(args, "aux_addresses"),
            internal=_flag(args, "internal"), allow_overlap=_flag(args, "allow_overlap"),
            labels=_map(args, "labels"), options=_map(args, "options"),
            host_access=_flag(args, "host_access"))[1]
    except TableError as exc:
        raise api.ApiError(str(exc)) from None


def _split_ips(args: dict[str, Any]) -> tuple[str | None, str | None]:
    """``ip`` and ``ip6``; an IPv6 address given as ``ip`` counts as ``ip6``."""
    ip, ip6 = _opt_str(args, "ip"), _opt_str(args, "ip6")
    if ip is not None and ":" in ip:
        if ip6 is not None:
            raise api.ApiError("two IPv6 addresses given (--ip and --ip6)")
        ip, ip6 = None, ip
    return ip, ip6


# -- shapes ---------------------------------------------------------------------------------------


def _timestamp(epoch: float) -> str:
    """RFC 3339 in UTC, like Docker's ``Created``."""
    whole = int(epoch)
    micro = min(999999, round((epoch - whole) * 1e6))
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{micro:06d}Z"


def _cidr(addr: str | None, subnet: str | None) -> str:
    if addr is None or subnet is None:
        return ""
    return f"{addr}/{ipaddress.ip_network(subnet).prefixlen}"


def network_row(n: Network) -> dict[str, Any]:
    """One ``network ls --format json`` row."""
    return {
        "ID": n.id,
        "Name": n.name,
        "Driver": DRIVER,
        "Scope": SCOPE,
        "VNI": n.vni,
        "Subnets": list(n.all_subnets),
        "MTU": n.mtu,
        "Encrypted": n.encrypted,
        "Created": _timestamp(n.created_at),
    }


def endpoint_json(ep: Endpoint, net: Network | None, me: str, iface: dict[str, Any] | None = None,
                  prefix: str = "ov-", mtu: int | None = None, aliases: tuple[str, ...] = ()) -> dict[str, Any]:
    """The endpoint object (``endpoint create``, ``endpoint ls --format json``)."""
    out: dict[str, Any] = {
        "id": ep.id,
        "name": ep.name,
        "network": ep.network,
        "network_name": net.name if net is not None else "",
        "node": ep.owner,
        "vtep": ep.vtep,
        "local": ep.owner == me,
        "mac": ep.mac,
        "ipv4": ep.ipv4,
        "ipv6": ep.ipv6,
        "ipv4_cidr": _cidr(ep.ipv4, net.subnet_of(ep.ipv4) if net and ep.ipv4 else None) or None,
        "ipv6_cidr": _cidr(ep.ipv6, net.subnet_of(ep.ipv6) if net and ep.ipv6 else None) or None,
        "conflict": ep.conflict,
        "aliases": list(aliases),
    }
    if ep.owner == me:
        iface = iface or {}
        out.update({
            "netns": iface.get("netns"),
            "ifname": iface.get("ifname"),
            "host_ifname": iface.get("host_ifname") or host_ifname(prefix, ep.id),
            "mtu": mtu,
        })
    return out


def inspect_json(t: Tables, n: Network, mtu: int) -> dict[str, Any]:
    """``docker network inspect``-shaped object of one network, as this node sees it."""
    me = t.node
    joined = n.id in t.sync.joined
    containers: dict[str, Any] = {}
    for ep in t.endpoints(n.id) if joined else []:
        containers[ep.id] = {
            "Name": ep.name,
            "EndpointID": ep.id,
            "MacAddress": ep.mac,
            "IPv4Address": _cidr(ep.ipv4, n.subnet_of(ep.ipv4) if ep.ipv4 else None),
            "IPv6Address": _cidr(ep.ipv6, n.subnet_of(ep.ipv6) if ep.ipv6 else None),
            "Node": ep.owner,
            "VTEP": ep.vtep,
            "Local": ep.owner == me,
            "Conflict": ep.conflict,
        }
    peers = [{"Name": node, "IP": vtep} for node, vtep in t.network_peers(n.id)]
    if joined:
        peers.append({"Name": me, "IP": t.vtep})
    peers.sort(key=lambda p: p["Name"])
    opts = n.options
    options = dict(opts.options) if opts is not None else {}
    options[VNI_OPTION] = str(n.vni)
    if n.mtu is not None:
        options[MTU_OPTION] = str(n.mtu)
    if n.encrypted:
        options["encrypted"] = ""
    in_force = any(w.id == n.id for w in t.networks())
    return {
        "Name": n.name,
        "Id": n.id,
        "Created": _timestamp(n.created_at),
        "Scope": SCOPE,
        "Driver": DRIVER,
        "EnableIPv6": n.subnet_v6 is not None,
        "IPAM": {
            "Driver": "default",
            "Options": None,
            "Config": [_ipam_config(p) for p in n.pools],
        },
        "Internal": n.internal,
        "AllowOverlap": opts is not None and opts.allow_overlap,
        "HostAccess": opts is not None and opts.host_access,
        "Attachable": True,
        "Ingress": False,
        "ConfigOnly": False,
        "Containers": containers,
        "Options": options,
        "Labels": dict(opts.labels) if opts is not None else {},
        "Peers": peers,
        "Creator": n.creator,
        "MTU": mtu,
        "InForce": in_force,
        "Conflicts": [c.text for c in t.conflicts() if n.id in (c.network, c.winner, c.loser)],
    }


def _ipam_config(p: IpamPool) -> dict[str, Any]:
    """One ``IPAM.Config`` entry with Docker's keys (IPRange and AuxiliaryAddresses only when set)."""
    out: dict[str, Any] = {"Subnet": p.subnet}
    if p.ip_range is not None:
        out["IPRange"] = p.ip_range
    out["Gateway"] = p.gateway_address
    if p.aux:
        out["AuxiliaryAddresses"] = dict(p.aux)
    return out


# -- handlers ---------------------------------------------------------------------------------------


class _Handlers:
    def __init__(self, overlay: Overlay) -> None:
        self.o = overlay

    async def network(self, rt: Runtime, req: api.Request, stream: trio.SocketStream) -> Any:
        args = req.args
        action = _action(args, ("ls", "create", "inspect", "rm"))
        if action == "ls":
            nets: list[Network] = await self.o.read(lambda t: t.networks())
            return [network_row(n) for n in nets]
        if action == "create":
            name = _str(args, "name", "network name")
            subnets = args.get("subnets")
            if not isinstance(subnets, list) or not subnets or not all(isinstance(s, str) for s in subnets):
                raise api.ApiError("at least one --subnet CIDR is required")
            encrypted = args.get("encrypted", False)
            if not isinstance(encrypted, bool):
                raise api.ApiError("'encrypted' must be true or false")
            n = await self.o.create_network(name, subnets, _opt_int(args, "vni"), encrypted,
                                            _opt_int(args, "mtu"), network_options(args, subnets))
            return network_row(n)
        ref = _str(args, "ref", "network name or id")
        if action == "inspect":
            o = self.o
            def view(t: Tables) -> list[dict[str, Any]]:
                n = t.find_network(ref)
                out = inspect_json(t, n, o.effective_mtu(n))
                if n.encrypted and o.ipsec_view is not None:
                    out["IPsec"] = {"Peers": o.ipsec_view(n.id)}
                return [out]

            return await o.read(view)
        n = await self.o.remove_network(ref)
        return network_row(n)

    async def endpoint(self, rt: Runtime, req: api.Request, stream: trio.SocketStream) -> Any:
        args = req.args
        action = _action(args, ("ls", "create", "rm"))
        o = self.o
        if action == "ls":
            ref = _opt_str(args, "network")

            def rows(t: Tables) -> list[dict[str, Any]]:
                names = {n.id: n for n in t.networks()}
                if ref is not None:
                    only = t.find_network(ref)
                    names[only.id] = only
                    eps = t.endpoints(only.id) if only.id in t.sync.joined else []
                else:
                    eps = t.endpoints()
                out = []
                aliases = t.extras.aliases(eps)
                for e in eps:
                    net = names.get(e.network)
                    mtu = o.effective_mtu(net) if net is not None else None
                    out.append(endpoint_json(e, net, t.node, o.interfaces.get(e.id), o.prefix, mtu,
                                             aliases.get(e.id, ())))
                return out

            return await o.read(rows)
        if action == "create":
            ip, ip6 = _split_ips(args)
            ifname = _opt_str(args, "ifname") or "eth0"
            ep = await o.create_endpoint(
                _str(args, "network", "network name or id"), _str(args, "netns", "--netns NAME|PATH"),
                name=_opt_str(args, "name"), ipv4=ip, ipv6=ip6, mac=_opt_str(args, "mac"), ifname=ifname,
                aliases=_list(args, "aliases"))
        else:
            ep = await o.remove_endpoint(_str(args, "ref", "endpoint id or name"))

        def shape(t: Tables) -> dict[str, Any]:
            net = next((n for n in t.networks() if n.id == ep.network), None)
            return endpoint_json(ep, net, t.node, o.interfaces.get(ep.id), o.prefix,
                                 o.effective_mtu(net) if net is not None else None,
                                 t.extras.own_aliases(ep) if action == "create" else ())

        result = await o.read(shape)
        if action == "rm":
            result.update({"netns": None, "ifname": None})
        return result

    async def dataplane(self, rt: Runtime, req: api.Request, stream: trio.SocketStream) -> Any:
        if self.o.dataplane:
            await self.o.ensure_dataplane()  # not started yet when no network ever existed here
        rec = self.o.rec
        if rec is None:
            raise api.ApiError("this agent runs without a dataplane (dataplane = false)")
        report = await rec.inspect()
        names: dict[str, str] = await self.o.read(lambda t: {n.id: n.name for n in t.networks()})
        for row in report["networks"]:
            row["network_name"] = names.get(row["network"], "")
        if self.o.gw is not None:  # gateways, nft tables, forwarding (dataplane.nft)
            report["gateway"] = await self.o.gw.inspect()
        return report


def ops(overlay: Overlay) -> dict[str, Op]:
    h = _Handlers(overlay)
    return {
        "network": Op(h.network, OPS["network"]),
        "endpoint": Op(h.endpoint, OPS["endpoint"]),
        "dataplane": Op(h.dataplane, OPS["dataplane"]),
    }
