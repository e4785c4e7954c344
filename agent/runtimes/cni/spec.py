"""The CNI contract of ``overlay-cni`` (spec 1.1.0), as values: no I/O, no agent, no trio.

Owns: reading one invocation (the ``CNI_*`` environment and the JSON configuration on
stdin) into an ``Invocation``, with every input bounded and checked, so a bad one is a
``CniError`` with the spec's error code and a one-line message; the version rules
(results for 0.3.0, 0.3.1, 0.4.0, 1.0.0 and 1.1.0: 0.3.x/0.4.0 results carry an IP's
``version``, 1.1.0 an interface's ``mtu``); and the JSON this plugin prints (ADD result,
VERSION reply, error object). Configuration keys of ours (``network``, ``socket``) and the
conventional ones read here: ``runtimeConfig.ips`` / ``runtimeConfig.mac`` (the ``ips`` and
``mac`` capabilities), ``args.cni.ips`` / ``args.cni.mac`` and ``CNI_ARGS`` ``IP=``/``MAC=``
(a fixed address), ``K8S_POD_NAME`` or ``NAME`` (the endpoint's name), ``prevResult`` (CHECK, DEL),
``cni.dev/valid-attachments`` (GC), ``ipam.ranges`` (host-local's range sets: ``subnet``,
``rangeStart``/``rangeEnd``, ``gateway``; the network's subnets and options, ``ranges``) and
``runtimeConfig.aliases`` (the ``aliases`` capability podman uses: network name -> names).
Does not: talk to the agent (``agent.runtimes.cni.plugin``) or touch the kernel.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping

# No dataclasses or typing at run time: together they cost ~15 ms of every plugin
# process's start (a podman run starts four: VERSION, ADD, VERSION, DEL).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

PLUGIN_TYPE = "overlay-cni"
SPEC_VERSION = "1.1.0"
SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC")
MAX_CONFIG = 1 << 20
"""Bytes of stdin read at most (a conflist entry with a prevResult is a few KiB)."""
MAX_ENV = 4096
MAX_ATTACHMENTS = 100_000

# Error codes of the spec (Section 5, "Error"); 100+ are ours.
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENV = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN = 11
NOT_AVAILABLE = 50
AGENT_REFUSED = 100
"""The agent refused the request (its one-line reason is the message)."""

NAME_ARGS = ("K8S_POD_NAME", "NAME", "name")
"""``CNI_ARGS`` keys naming the endpoint, first found: Kubernetes' pod name (podman passes
the container's name there too), else a plain ``NAME=``/``name=`` (with ``IgnoreUnknown=1``
the other plugins of a chain skip it)."""

_CONTAINER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,1023}\Z")
_IFNAME_BAD = re.compile(r"[/:\s]")


class CniError(Exception):
    """A failed invocation: ``code`` from the spec, ``msg`` one line for the runtime's user."""

    def __init__(self, code: int, msg: str) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = " ".join(msg.split())


class Attachment:
    """One (container id, ifname) of GC's ``cni.dev/valid-attachments``."""

    __slots__ = ("container", "ifname")

    def __init__(self, container: str, ifname: str) -> None:
        self.container = container
        self.ifname = ifname

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Attachment) and (self.container, self.ifname) == (other.container, other.ifname)

    def __hash__(self) -> int:
        return hash((self.container, self.ifname))

    def __repr__(self) -> str:
        return f"Attachment({self.container!r}, {self.ifname!r})"


class Invocation:
    """One plugin call, checked (a plain class: see the imports)."""

    command: str
    version: str
    """The configuration's ``cniVersion`` (results are shaped for it)."""
    network: str
    """The agent's network (config ``network``, else the conflist ``name``)."""
    socket: str | None
    container: str
    netns: str
    ifname: str
    name: str | None
    """The endpoint's name (``CNI_ARGS`` ``K8S_POD_NAME``, where podman passes the container's
    name, or ``NAME``)."""
    ipv4: str | None
    ipv6: str | None
    mac: str | None
    prev_result: dict[str, Any] | None
    valid: tuple[Attachment, ...]
    """GC: the attachments still in use."""
    ranges: tuple[dict[str, str], ...]
    """ADD: ``ipam.ranges`` as ``{"subnet", "ip_range"?, "gateway"?}`` (one per subnet)."""
    aliases: tuple[str, ...]
    """ADD: ``runtimeConfig.aliases`` for this network."""

    def __init__(self, command: str, version: str, *, network: str = "", socket: str | None = None,
                 container: str = "", netns: str = "", ifname: str = "", name: str | None = None,
                 ipv4: str | None = None, ipv6: str | None = None, mac: str | None = None,
                 prev_result: dict[str, Any] | None = None, valid: tuple[Attachment, ...] = (),
                 ranges: tuple[dict[str, str], ...] = (), aliases: tuple[str, ...] = ()) -> None:
        self.command, self.version, self.network, self.socket = command, version, network, socket
        self.container, self.netns, self.ifname, self.name = container, netns, ifname, name
        self.ipv4, self.ipv6, self.mac = ipv4, ipv6, mac
        self.prev_result, self.valid = prev_result, valid
        self.ranges, self.aliases = ranges, aliases

    def but(self, **changes: Any) -> Invocation:
        """A copy with ``changes``."""
        fields = {k: getattr(self, k) for k in ("network", "socket", "container", "netns", "ifname", "name",
                                                 "ipv4", "ipv6", "mac", "prev_result", "valid", "ranges",
                                                 "aliases")}
        fields.update(changes)
        return Invocation(self.command, self.version, **fields)


def _one_line(value: str, limit: int = 200) -> str:
    text = " ".join(value.split())
    return text if len(text) <= limit else text[:limit] + "..."


def _env(env: Mapping[str, str], key: str, required: bool) -> str:
    value = env.get(key, "")
    if len(value) > MAX_ENV:
        raise CniError(INVALID_ENV, f"{key} is longer than {MAX_ENV} characters")
    if required and not value:
        raise CniError(INVALID_ENV, f"{key} is not set")
    return value


def parse_cni_args(text: str) -> dict[str, str]:
    """``CNI_ARGS`` (``K=V;K=V``) -> dict; CniError for a pair without ``=``."""
    out: dict[str, str] = {}
    for part in text.split(";"):
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise CniError(INVALID_ENV, f"CNI_ARGS: malformed pair {_one_line(part, 60)!r} (expected KEY=VALUE)")
        out[key] = value
    return out


def check_container_id(value: str) -> str:
    if not _CONTAINER_ID.match(value):
        raise CniError(INVALID_ENV, "CNI_CONTAINERID must start with a letter or digit and hold only "
                                    "letters, digits, '_', '.' and '-'")
    return value


def check_ifname(value: str) -> str:
    if not 0 < len(value.encode()) <= 15 or value in (".", "..") or _IFNAME_BAD.search(value) \
            or not value.isprintable():
        raise CniError(INVALID_ENV, f"CNI_IFNAME {_one_line(value, 40)!r} is not a valid interface name")
    return value


def decode_config(data: bytes) -> dict[str, Any]:
    if len(data) > MAX_CONFIG:
        raise CniError(IO_FAILURE, f"network configuration on stdin is larger than {MAX_CONFIG} bytes")
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise CniError(DECODE_FAILURE, f"network configuration on stdin is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise CniError(DECODE_FAILURE, "network configuration on stdin must be a JSON object")
    return obj


def _opt_str(obj: Mapping[str, Any], key: str, where: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_ENV:
        raise CniError(INVALID_CONFIG, f"{where}{key!r} must be a non-empty string")
    return value


def _fixed_addresses(ips: Any, where: str) -> tuple[str | None, str | None]:
    """A list of addresses (``10.0.0.5`` or ``10.0.0.5/24``) -> (IPv4, IPv6), one of each at most."""
    if ips is None:
        return None, None
    if not isinstance(ips, list) or len(ips) > 2 or not all(isinstance(i, str) for i in ips):
        raise CniError(INVALID_CONFIG, f"{where} must be a list of at most two addresses")
    out: dict[int, str] = {}
    for text in ips:
        try:
            addr = ipaddress.ip_interface(text).ip
        except ValueError:
            raise CniError(INVALID_CONFIG, f"{where}: {_one_line(text, 60)!r} is not an IP address") from None
        if addr.version in out:
            raise CniError(INVALID_CONFIG, f"{where}: two IPv{addr.version} addresses")
        out[addr.version] = str(addr)
    return out.get(4), out.get(6)


def _valid_attachments(raw: Any) -> tuple[Attachment, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or len(raw) > MAX_ATTACHMENTS:
        raise CniError(INVALID_CONFIG, "'cni.dev/valid-attachments' must be a list")
    out = []
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("containerID"), str) \
                or not isinstance(item.get("ifname"), str):
            raise CniError(INVALID_CONFIG, "'cni.dev/valid-attachments': each entry needs "
                                           "'containerID' and 'ifname' strings")
        out.append(Attachment(item["containerID"], item["ifname"]))
    return tuple(out)


def read_version(data: bytes) -> str:
    """VERSION's input: only ``cniVersion`` matters; an absent one means the oldest."""
    obj = decode_config(data) if data.strip() else {}
    version = obj.get("cniVersion", "0.1.0")
    if not isinstance(version, str) or len(version) > 32:
        raise CniError(DECODE_FAILURE, "'cniVersion' must be a string")
    return version


def parse(env: Mapping[str, str], data: bytes) -> Invocation:
    """One invocation: environment + stdin -> ``Invocation``; CniError names what is wrong."""
    command = _env(env, "CNI_COMMAND", True)
    if command not in COMMANDS:
        raise CniError(INVALID_ENV, f"CNI_COMMAND {_one_line(command, 40)!r} is not one of {', '.join(COMMANDS)}")
    if command == "VERSION":
        return Invocation(command, read_version(data))
    conf = decode_config(data)
    version = conf.get("cniVersion")
    if not isinstance(version, str):
        raise CniError(INVALID_CONFIG, "network configuration has no 'cniVersion'")
    if version not in SUPPORTED_VERSIONS:
        raise CniError(INCOMPATIBLE_VERSION, f"CNI version {_one_line(version, 32)!r} is not supported "
                                             f"(supported: {', '.join(SUPPORTED_VERSIONS)})")
    kind = conf.get("type")
    if kind is not None and kind != PLUGIN_TYPE:
        raise CniError(INVALID_CONFIG, f"plugin type {_one_line(str(kind), 40)!r} is not {PLUGIN_TYPE!r}")
    network = _opt_str(conf, "network", "") or _opt_str(conf, "name", "")
    if network is None:
        raise CniError(INVALID_CONFIG, "network configuration names no network ('network' or 'name')")
    sock = _opt_str(conf, "socket", "")
    if sock is not None and not sock.startswith("/"):
        raise CniError(INVALID_CONFIG, f"'socket' must be an absolute path, not {_one_line(sock, 60)!r}")
    prev = conf.get("prevResult")
    if prev is not None and not isinstance(prev, dict):
        raise CniError(INVALID_CONFIG, "'prevResult' must be an object")
    base = Invocation(command, version, network=network, socket=sock, prev_result=prev)
    if command == "STATUS":
        return base
    if command == "GC":
        return base.but(valid=_valid_attachments(conf.get("cni.dev/valid-attachments")))
    container = check_container_id(_env(env, "CNI_CONTAINERID", True))
    ifname = check_ifname(_env(env, "CNI_IFNAME", True))
    netns = _env(env, "CNI_NETNS", command != "DEL")  # containerd's DEL comes without one
    if netns and not netns.startswith("/"):
        raise CniError(INVALID_ENV, f"CNI_NETNS must be a path, not {_one_line(netns, 60)!r}")
    if "\0" in netns:
        raise CniError(INVALID_ENV, "CNI_NETNS contains a NUL byte")
    args = parse_cni_args(_env(env, "CNI_ARGS", False))
    name = next((args[k] for k in NAME_ARGS if args.get(k)), None)
    ipv4, ipv6 = _fixed_addresses(_ips_from(conf, args), "fixed addresses")
    mac = _mac_from(conf, args)
    return base.but(container=container, netns=netns, ifname=ifname, name=name,
                    ipv4=ipv4, ipv6=ipv6, mac=mac, ranges=ipam_ranges(conf.get("ipam")),
                    aliases=_aliases_from(conf, network))


MAX_RANGES = 16


def ipam_ranges(ipam: Any) -> tuple[dict[str, str], ...]:
    """``ipam.ranges`` (host-local's format: a list of range sets, each a list of ranges
    ``{"subnet", "rangeStart"?, "rangeEnd"?, "gateway"?}``) as one entry per subnet:
    ``{"subnet", "ip_range"?, "gateway"?}``. A range set must hold one range (the
    network keeps one IP range per subnet), and ``rangeStart``..``rangeEnd`` must be one
    CIDR block (how the network stores an IP range). CniError."""
    if ipam is None:
        return ()
    if not isinstance(ipam, dict):
        raise CniError(INVALID_CONFIG, "'ipam' must be an object")
    sets = ipam.get("ranges")
    if sets is None:
        return ()
    if not isinstance(sets, list) or not 0 < len(sets) <= MAX_RANGES:
        raise CniError(INVALID_CONFIG, f"'ipam.ranges' must be a list of 1-{MAX_RANGES} range sets")
    out = []
    for rs in sets:
        if not isinstance(rs, list) or len(rs) != 1 or not isinstance(rs[0], dict):
            raise CniError(INVALID_CONFIG, "'ipam.ranges': each range set must hold exactly one range "
                                           "(one IP range per subnet)")
        r = rs[0]
        subnet = _opt_str(r, "subnet", "ipam.ranges: ")
        if subnet is None:
            raise CniError(INVALID_CONFIG, "'ipam.ranges': a range without 'subnet'")
        try:
            net = ipaddress.ip_network(subnet, strict=False)
        except ValueError:
            raise CniError(INVALID_CONFIG, f"'ipam.ranges': {_one_line(subnet, 60)!r} is not a subnet") from None
        entry = {"subnet": str(net)}
        start, end = _opt_str(r, "rangeStart", "ipam.ranges: "), _opt_str(r, "rangeEnd", "ipam.ranges: ")
        if start is not None or end is not None:
            try:
                first = ipaddress.ip_address(start) if start else net.network_address
                last = ipaddress.ip_address(end) if end else net.broadcast_address
                blocks = list(ipaddress.summarize_address_range(first, last))  # type: ignore[type-var]
            except (ValueError, TypeError):
                raise CniError(INVALID_CONFIG, f"'ipam.ranges': rangeStart/rangeEnd of {net} are not "
                                               "addresses of one family, start before end") from None
            if len(blocks) != 1:
                raise CniError(INVALID_CONFIG, f"'ipam.ranges': {first}-{last} is not one CIDR block "
                                               f"(an IP range of a network is a CIDR, e.g. {blocks[0]})")
            if blocks[0] != net:
                entry["ip_range"] = str(blocks[0])
        gateway = _opt_str(r, "gateway", "ipam.ranges: ")
        if gateway is not None:
            entry["gateway"] = gateway
        out.append(entry)
    return tuple(out)


def _aliases_from(conf: Mapping[str, Any], network: str) -> tuple[str, ...]:
    """``runtimeConfig.aliases[NAME]`` for the conflist's name or the network (podman's
    ``aliases`` capability); names are checked by the agent."""
    runtime = conf.get("runtimeConfig")
    table = runtime.get("aliases") if isinstance(runtime, dict) else None
    if not isinstance(table, dict):
        return ()
    names = table.get(conf.get("name")) if conf.get("name") in table else table.get(network)
    if names is None:
        return ()
    if not isinstance(names, list) or len(names) > 32 or not all(isinstance(n, str) for n in names):
        raise CniError(INVALID_CONFIG, "'runtimeConfig.aliases' must map the network to a list of at most 32 names")
    return tuple(names)


def _ips_from(conf: Mapping[str, Any], args: Mapping[str, str]) -> Any:
    """Fixed addresses, first found: runtimeConfig.ips, args.cni.ips, CNI_ARGS IP= (comma list)."""
    runtime = conf.get("runtimeConfig")
    if isinstance(runtime, dict) and runtime.get("ips"):
        return runtime["ips"]
    cargs = conf.get("args")
    if isinstance(cargs, dict) and isinstance(cargs.get("cni"), dict) and cargs["cni"].get("ips"):
        return cargs["cni"]["ips"]
    if args.get("IP"):
        return [p for p in args["IP"].split(",") if p]
    return None


def _mac_from(conf: Mapping[str, Any], args: Mapping[str, str]) -> str | None:
    runtime = conf.get("runtimeConfig")
    if isinstance(runtime, dict) and runtime.get("mac") is not None:
        return _opt_str(runtime, "mac", "runtimeConfig.")
    cargs = conf.get("args")
    if isinstance(cargs, dict) and isinstance(cargs.get("cni"), dict) and cargs["cni"].get("mac") is not None:
        return _opt_str(cargs["cni"], "mac", "args.cni.")
    return args.get("MAC") or None


# -- output -------------------------------------------------------------------------------------


def version_reply(version: str) -> dict[str, Any]:
    return {"cniVersion": version, "supportedVersions": list(SUPPORTED_VERSIONS)}


def error_reply(version: str, err: CniError) -> dict[str, Any]:
    """The spec's error object. No ``details``: libcni appends them to ``msg`` after a
    ``;``, and the user should see one clear line."""
    return {"cniVersion": version if version in SUPPORTED_VERSIONS else SPEC_VERSION,
            "code": err.code, "msg": err.msg}


def add_result(inv: Invocation, endpoint: Mapping[str, Any]) -> dict[str, Any]:
    """ADD's result for the endpoint the agent made (``agentctl endpoint``'s JSON object):
    the host-side veth and the container's interface, its addresses (prefix length of the
    network) with the network's anycast gateway of their family, and a default route per
    gateway (the agent has already put it in the namespace), the gateways as DNS servers
with the network's name as search domain (``_dns``), shaped for ``inv.version``."""
    legacy = inv.version.startswith("0.")
    host: dict[str, Any] = {"name": str(endpoint.get("host_ifname") or "")}
    inner: dict[str, Any] = {"name": inv.ifname, "mac": str(endpoint.get("mac") or ""), "sandbox": inv.netns}
    mtu = endpoint.get("mtu")
    if inv.version == "1.1.0" and isinstance(mtu, int) and not isinstance(mtu, bool):
        host["mtu"] = inner["mtu"] = mtu
    raw = endpoint.get("gateways")
    gateways = {("6" if ":" in g else "4"): g for g in raw if isinstance(g, str)} if isinstance(raw, list) else {}
    ips: list[dict[str, Any]] = []
    routes: list[dict[str, Any]] = []
    for family, key in (("4", "ipv4_cidr"), ("6", "ipv6_cidr")):
        cidr = endpoint.get(key)
        if isinstance(cidr, str) and cidr:
            ip: dict[str, Any] = {"address": cidr, "interface": 1}
            if family in gateways:
                ip["gateway"] = gateways[family]
                routes.append({"dst": "0.0.0.0/0" if family == "4" else "::/0", "gw": gateways[family]})
            if legacy:
                ip = {"version": family, **ip}
            ips.append(ip)
    return {"cniVersion": inv.version, "interfaces": [host, inner], "ips": ips, "routes": routes,
            "dns": _dns(endpoint, gateways)}


def _dns(endpoint: Mapping[str, Any], gateways: Mapping[str, str]) -> dict[str, Any]:
    """The agent's DNS responder listens on the network's gateway addresses (agent.dns):
    those are the nameservers, and the network's name is the search domain (names resolve
    as ``NAME`` and ``NAME.NETWORK``). No gateway, no DNS server: an empty object."""
    servers = [gateways[f] for f in ("4", "6") if f in gateways]
    if not servers:
        return {}
    network = endpoint.get("network_name")
    search = [network] if isinstance(network, str) and network else []
    return {"nameservers": servers, "search": search} if search else {"nameservers": servers}


def expected_addresses(prev: Mapping[str, Any] | None) -> set[str]:
    """CHECK: the addresses (CIDR) a prevResult lists for the container's interface."""
    if not prev:
        return set()
    out: set[str] = set()
    ips = prev.get("ips")
    if isinstance(ips, list):
        for ip in ips:
            if isinstance(ip, dict) and isinstance(ip.get("address"), str):
                out.add(ip["address"])
    return out
