"""``agentctl network``, ``agentctl endpoint`` and ``agentctl dataplane``: sub-commands and output.

Owns: their argument parsers (hooked into ``agent.ctl.main.build_parser``), the requests
they send (see ``agent.overlay.ops`` for the ops) and the human formats: tables in
docker's style (``network ls``: ID NAME DRIVER SCOPE VNI SUBNET; ``endpoint ls``: ID
NAME NETWORK NODE VTEP MAC IPV4 IPV6, ``*`` marking this node), ``network create``
prints the new network's id, ``endpoint create`` the endpoint as JSON, ``network
inspect`` a JSON array like ``docker network inspect``, ``dataplane`` the
reconciler's per-network table (``dataplane.report.render_text``).
Errors: one line on stderr, exit status 1 (``agent.ctl.client.CtlError``); for several
refs each is tried and reported, like docker. Does not: talk to the socket itself
(``agent.ctl.client``), import trio or the agent's state.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any, Protocol, TextIO

from agent.ctl.client import CtlError
from agent.ctl.output import dump, table
from dataplane.report import render_text


class _Client(Protocol):
    def request(self, op: str, args: dict[str, Any] | None = None) -> Any: ...


NETWORK_EPILOG = """\
examples:
  agentctl network create blue --subnet 10.10.0.0/24                 prints the network id
  agentctl network create red --subnet 10.20.0.0/24 --subnet fd00:20::/64 --vni 4200 --mtu 1400
  agentctl network create lab --subnet 10.30.0.0/24 --subnet 10.31.0.0/24 --ip-range 10.30.0.128/25 \
      --gateway 10.30.0.254 --aux-address printer=10.30.0.5 --label team=infra --opt com.example.x=1
  agentctl network create vault --subnet 10.40.0.0/24 --internal       no egress
  agentctl network create b1 --subnet 10.50.0.0/24 --allow-overlap     (b2 too: both must allow it)
  agentctl network ls
  agentctl network inspect blue        JSON like 'docker network inspect' (endpoints, peers + VTEPs)
  agentctl network rm blue             refused while endpoints use it
"""

ENDPOINT_EPILOG = """\
examples:
  ip netns add c1
  agentctl endpoint create blue --netns c1                 address and MAC allocated
  agentctl endpoint create blue --netns /proc/4242/ns/net --ip 10.10.0.20 --ifname eth1 --name web
  agentctl endpoint create blue --netns c2 --name db1 --alias db --alias primary   more DNS names
  agentctl endpoint ls --network blue                      local and remote endpoints with their VTEP
  agentctl endpoint rm web                                 removes the veth pair and the row
The container side gets the MAC (default 02:42 + the IPv4 address), the addresses with
the network's prefix length and the network's MTU, and is brought up; the host side
(ov-<id>) joins the network's bridge.
"""


def add_commands(sub: Any, parser_class: type[argparse.ArgumentParser], fmt: Any) -> None:
    """Register the sub-commands on ``agentctl``'s sub-parser object."""
    raw = argparse.RawDescriptionHelpFormatter
    n = sub.add_parser("network", help="overlay networks: create, ls, inspect, rm",
                       epilog=NETWORK_EPILOG, formatter_class=raw)
    nsub = n.add_subparsers(dest="action", metavar="ACTION", parser_class=parser_class)
    nsub.required = True
    nc = nsub.add_parser("create", help="create a network (cluster-wide); prints its id")
    nc.add_argument("name", metavar="NAME")
    nc.add_argument("--subnet", action="append", required=True, metavar="CIDR",
                    help="IPv4 and/or IPv6 subnet (repeat for several, of either family)")
    nc.add_argument("--ip-range", action="append", default=[], metavar="CIDR",
                    help="allocate addresses only from this range of the subnet holding it")
    nc.add_argument("--gateway", action="append", default=[], metavar="IP",
                    help="gateway of the subnet holding it (default: its first address)")
    nc.add_argument("--aux-address", action="append", default=[], metavar="NAME=IP",
                    help="reserve an address (never handed out)")
    nc.add_argument("--label", action="append", default=[], metavar="KEY=VALUE", help="a label (shown by inspect)")
    nc.add_argument("--opt", "-o", action="append", default=[], metavar="KEY=VALUE",
                    help="a driver option, passed through (shown by inspect under Options)")
    nc.add_argument("--internal", action="store_true", help="no egress: nothing leaves the overlay subnets")
    nc.add_argument("--allow-overlap", action="store_true",
                    help="subnets may overlap those of other networks that allow it too")
    nc.add_argument("--host-access", action="store_true",
                    help="every host holds an address of its own in the network: hosts reach containers "
                         "on other hosts")
    nc.add_argument("--vni", type=int, metavar="N", help="VXLAN network identifier (default: picked)")
    nc.add_argument("--encrypted", action="store_true", help="encrypt the network's traffic (IPsec)")
    nc.add_argument("--mtu", type=int, metavar="N", help="overlay MTU (default: underlay MTU - 50)")
    nc.set_defaults(run=cmd_network_create)
    nl = nsub.add_parser("ls", help="list networks")
    fmt(nl)
    nl.set_defaults(run=cmd_network_ls)
    ni = nsub.add_parser("inspect", help="details of networks as a JSON array")
    ni.add_argument("refs", nargs="+", metavar="NAME|ID|ID-PREFIX")
    ni.set_defaults(run=cmd_network_inspect)
    nr = nsub.add_parser("rm", help="remove networks (refused while endpoints exist)")
    nr.add_argument("refs", nargs="+", metavar="NAME|ID")
    nr.set_defaults(run=cmd_network_rm)

    e = sub.add_parser("endpoint", help="endpoints (veths in container namespaces): create, ls, rm",
                       epilog=ENDPOINT_EPILOG, formatter_class=raw)
    esub = e.add_subparsers(dest="action", metavar="ACTION", parser_class=parser_class)
    esub.required = True
    ec = esub.add_parser("create", help="create an endpoint in a network namespace; prints it as JSON")
    ec.add_argument("network", metavar="NETWORK")
    ec.add_argument("--netns", required=True, metavar="NAME|PATH",
                    help="the container's network namespace (name under /run/netns, or a path)")
    ec.add_argument("--ip", metavar="IP", help="address (IPv4, or IPv6; default: allocated)")
    ec.add_argument("--ip6", metavar="IP", help="IPv6 address (default: allocated if the network has IPv6)")
    ec.add_argument("--mac", metavar="MAC", help="MAC address (default: 02:42 + the IPv4 address)")
    ec.add_argument("--ifname", default="eth0", metavar="NAME", help="interface name inside (default: eth0)")
    ec.add_argument("--name", metavar="NAME", help="endpoint name (default: ep-<id>)")
    ec.add_argument("--alias", action="append", default=[], metavar="ALIAS",
                    help="a further DNS name of the endpoint in the network (repeat for more; "
                         "several endpoints may share one)")
    ec.set_defaults(run=cmd_endpoint_create)
    el = esub.add_parser("ls", help="list local and remote endpoints with their VTEP")
    el.add_argument("--network", metavar="NETWORK", help="only this network")
    fmt(el)
    el.set_defaults(run=cmd_endpoint_ls)
    er = esub.add_parser("rm", help="remove local endpoints (interface and row)")
    er.add_argument("refs", nargs="+", metavar="ID|NAME")
    er.set_defaults(run=cmd_endpoint_rm)

    d = sub.add_parser("dataplane", help="kernel state vs desired state per network, last reconcile",
                       epilog="columns: kernel/desired counts of FDB rows, flood rows, neighbours, ports")
    fmt(d)
    d.set_defaults(run=cmd_dataplane)


# -- formats --------------------------------------------------------------------------------------


def format_networks(rows: Sequence[dict[str, Any]]) -> str:
    return table(
        ["ID", "NAME", "DRIVER", "SCOPE", "VNI", "SUBNET"],
        [[str(r["ID"])[:12], str(r["Name"]), str(r["Driver"]), str(r["Scope"]), str(r["VNI"]),
          ",".join(r.get("Subnets") or [])] for r in rows],
    )


def format_endpoints(rows: Sequence[dict[str, Any]]) -> str:
    out = []
    for r in rows:
        name = str(r["name"]) + (" (conflict)" if r.get("conflict") else "")
        node = f"{r['node']} *" if r.get("local") else str(r["node"])
        out.append([str(r["id"])[:12], name, str(r.get("network_name") or str(r["network"])[:12]), node,
                    str(r["vtep"]), str(r["mac"]), r.get("ipv4_cidr") or r.get("ipv4") or "-",
                    r.get("ipv6_cidr") or r.get("ipv6") or "-"])
    return table(["ID", "NAME", "NETWORK", "NODE", "VTEP", "MAC", "IPV4", "IPV6"], out)


def format_dataplane(report: dict[str, Any]) -> str:
    shown = dict(report)
    shown["networks"] = [
        {**row, "network": row.get("network_name") or str(row.get("network") or "")[:12]}
        for row in report.get("networks", [])
    ]
    text = render_text(shown) + "\n"
    last = report.get("last_reconcile") or {}
    if last.get("at"):
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(last["at"])))
        text += f"last reconcile started {stamp}"
        c = report.get("counters") or {}
        if c:
            text += (f"; {c.get('reconciles', 0)} passes, {c.get('failures', 0)} failed, "
                     f"{c.get('monitor_repairs', 0)} triggered by kernel events")
        text += "\n"
    if report.get("additive_only"):
        text += "startup: only adding entries until the cluster view is complete\n"
    return text


# -- commands ---------------------------------------------------------------------------------------


def cmd_network_create(client: _Client, ns: argparse.Namespace, out: TextIO) -> int:
    args: dict[str, Any] = {"action": "create", "name": ns.name, "subnets": ns.subnet}
    if ns.vni is not None:
        args["vni"] = ns.vni
    if ns.mtu is not None:
        args["mtu"] = ns.mtu
    if ns.encrypted:
        args["encrypted"] = True
    if ns.ip_range:
        args["ip_ranges"] = ns.ip_range
    if ns.gateway:
        args["gateways"] = ns.gateway
    for flag, key, items in (("--aux-address", "aux_addresses", ns.aux_address), ("--label", "labels", ns.label),
                             ("--opt", "options", ns.opt)):
        if items:
            args[key] = _pairs(flag, items)
    if ns.internal:
        args["internal"] = True
    if ns.allow_overlap:
        args["allow_overlap"] = True
    if ns.host_access:
        args["host_access"] = True
    result = client.request("network", args)
    out.write(f"{result['ID']}\n")
    return 0


def _pairs(flag: str, items: Sequence[str]) -> dict[str, str]:
    """KEY=VALUE arguments as an object; CtlError (one line) for one without '='."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CtlError(f"{flag} {item!r}: expected KEY=VALUE")
        if key in out:
            raise CtlError(f"{flag} {key!r} given twice")
        out[key] = value
    return out


def cmd_network_ls(client: _Client, ns: argparse.Namespace, out: TextIO) -> int:
    rows = client.request("network", {"action": "ls"})
    if ns.format == "json":
        dump(rows, out)
    else:
        out.write(format_networks(rows))
    return 0


def _each(client: _Client, refs: Sequence[str], op: str, action: str) -> tuple[list[Any], int]:
    """One request per ref; errors are reported and the rest still run (like docker)."""
    results, status = [], 0
    for ref in refs:
        try:
            results.append(client.request(op, {"action": action, "ref": ref}))
        except CtlError as exc:
            print(f"agentctl: {exc}", file=sys.stderr)
            status = 1
    return results, status


def cmd_network_inspect(client: _Client, ns: argparse.Namespace, out: TextIO) -> int:
    results, status = _each(client, ns.refs, "network", "inspect")
    dump([item for r in results for item in r], out)
    return status


def cmd_network_rm(client: _Client, ns: argparse.Namespace, out: TextIO) -> int:
    results, status = _each(client, ns.refs, "network", "rm")
    for r in results:
        out.write(f"{r['Name']}\n")
    return status


def cmd_endpoint_create(client: _Client, ns: argparse.Namespace, out: TextIO) -> int:
    args: dict[str, Any] = {"action": "create", "network": ns.network, "netns": ns.netns, "ifname": ns.ifname}
    for key in ("ip", "ip6", "mac", "name"):
        value = getattr(ns, key)
        if value is not None:
            args[key] = value
    if ns.alias:
        args["aliases"] = list(ns.alias)
    dump(client.request("endpoint", args), out)
    return 0


def cmd_endpoint_ls(client: _Client, ns: argparse.Namespace, out: TextIO) -> int:
    args: dict[str, Any] = {"action": "ls"}
    if ns.network:
        args["network"] = ns.network
    rows = client.request("endpoint", args)
    if ns.format == "json":
        dump(rows, out)
    else:
        out.write(format_endpoints(rows))
    return 0


def cmd_endpoint_rm(client: _Client, ns: argparse.Namespace, out: TextIO) -> int:
    results, status = _each(client, ns.refs, "endpoint", "rm")
    for r in results:
        out.write(f"{r['id']}\n")
    return status


def cmd_dataplane(client: _Client, ns: argparse.Namespace, out: TextIO) -> int:
    report = client.request("dataplane")
    if ns.format == "json":
        dump(report, out)
    else:
        out.write(format_dataplane(report))
    return 0
