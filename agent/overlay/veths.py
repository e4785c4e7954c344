"""Endpoint interfaces: the veth pair between this host and a container's network namespace.

Owns: naming of the host-side interface (``<prefix><12 hex of the endpoint id>``, so
the dataplane recognises it as ours and a restarted agent finds it again), resolving
``--netns NAME|PATH``, and creating / removing / listing the pairs with pyroute2:
the host side stays in the agent's namespace and is attached to the network's bridge
when that exists already (``VethSpec.bridge``; otherwise the reconciler attaches it once
it made the bridge), so that a bridge that cannot take another port (``EXFULL``: a Linux
bridge holds at most ``agent.limits.BRIDGE_MAX_PORTS`` ports) fails the create with a
message that says so instead of leaving a veth that is never attached; the container side is created directly inside the target
namespace under its final name (``--ifname``), gets the MAC, the addresses with the
network's prefix length, the MTU, and is brought up. A failure at any step deletes
what was made, so nothing half-created is left behind.

Every call is blocking and opens its own netlink sockets: run it in a worker thread
(``trio.to_thread.run_sync``). The target namespace is entered only by the calling
thread, only long enough to open one netlink socket (``setns`` is per thread), so the
agent's own threads never leave its namespace.
Does not: publish rows (``agent.overlay.extension``) or touch bridges, FDB or neighbours
(``dataplane``). Errors are ``PlumbError`` with a one-line message for the operator.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import ipaddress
import os
import re
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

NETNS_RUN_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
IFA_F_NODAD = 0x02
"""IPv6 addresses are usable at once (no duplicate address detection delay)."""
IFNAMSIZ = 15
_NETNS_NAME = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.-]{0,254}\Z")

_libc = ctypes.CDLL(None, use_errno=True)


class PlumbError(RuntimeError):
    """An interface operation failed; the message is one line for the operator."""


@dataclass(frozen=True, slots=True)
class VethSpec:
    """One endpoint's veth pair."""

    host_ifname: str
    netns: str
    """Path of the container's network namespace file."""
    ifname: str
    """Name of the container side inside that namespace."""
    mac: str
    addresses: tuple[tuple[str, int], ...]
    """(address, prefix length) pairs put on the container side."""
    mtu: int
    bridge: str | None = None
    """The network's bridge: the host side is attached to it if it exists (else left to
    the reconciler, which creates the bridge)."""
    gateways: tuple[str, ...] = ()
    """The network's anycast gateways (one per family): the container's default routes
    through this interface, unless the namespace already has a default route of that
    family (a container on several networks keeps the first one)."""


def host_ifname(prefix: str, endpoint_id: str) -> str:
    """The host-side interface of an endpoint: the prefix plus the id's first hex digits."""
    return prefix + endpoint_id[: IFNAMSIZ - len(prefix)]


def is_host_ifname(name: str, prefix: str) -> bool:
    """Whether ``name`` is shaped like ``host_ifname(prefix, some id)``."""
    rest = name[len(prefix):] if name.startswith(prefix) else ""
    return len(rest) == IFNAMSIZ - len(prefix) and all(c in "0123456789abcdef" for c in rest)


def check_ifname(name: str) -> str:
    """A container-side interface name the kernel accepts; PlumbError otherwise."""
    if (not isinstance(name, str) or not 0 < len(name.encode()) <= IFNAMSIZ or name in (".", "..")
            or any(c in "/:" or c.isspace() or not c.isprintable() for c in name)):
        raise PlumbError(f"invalid interface name {name!r}: 1-15 characters, no '/', ':' or spaces")
    return name


def netns_path(ref: str) -> str:
    """``--netns``: a name under /run/netns (``ip netns add NAME``) or a path
    (``/proc/PID/ns/net``, a bind mount). PlumbError when it does not exist."""
    if not isinstance(ref, str) or not ref or "\0" in ref:
        raise PlumbError("no network namespace given (--netns NAME or PATH)")
    if "/" in ref:
        path = ref
    elif _NETNS_NAME.match(ref):
        path = os.path.join(NETNS_RUN_DIR, ref)
    else:
        raise PlumbError(f"invalid network namespace name {ref!r}")
    if not os.path.exists(path):
        raise PlumbError(f"network namespace {ref} does not exist"
                         + ("" if "/" in ref else f" (no {path}; create it with 'ip netns add {ref}')"))
    return path


def bridge_full_message(bridge: str) -> str:
    from agent.limits import BRIDGE_MAX_PORTS, ENDPOINTS_PER_NETWORK

    return (f"the bridge {bridge} has no free port (Exchange full): a Linux bridge holds at most "
            f"{BRIDGE_MAX_PORTS} ports, i.e. {ENDPOINTS_PER_NETWORK} endpoints of one network on one "
            f"host; put further endpoints on another network or host")


def prefixed(addresses: Sequence[tuple[str | None, str | None]]) -> tuple[tuple[str, int], ...]:
    """(address, subnet) pairs -> (address, prefix length) for the ones that are set."""
    out = []
    for addr, subnet in addresses:
        if addr is not None and subnet is not None:
            out.append((addr, ipaddress.ip_network(subnet).prefixlen))
    return tuple(out)


class Plumber(Protocol):
    """What ``agent.overlay.extension`` needs; ``LinuxPlumber`` is the real one (tests fake it)."""

    def check_target(self, path: str, ifname: str) -> None:
        """PlumbError unless ``path`` is a network namespace other than the agent's,
        without an interface named ``ifname`` (checked before anything is published)."""
        ...

    def create(self, spec: VethSpec) -> None:
        """Make the pair, all or nothing. PlumbError."""
        ...

    def remove(self, host_ifname: str) -> bool:
        """Delete the pair (both ends go); False when it was already gone. PlumbError."""
        ...

    def is_attached(self, ifname: str, bridge: str) -> bool:
        """Whether ``ifname`` is a port of ``bridge`` (False when either does not exist).
        PlumbError."""
        ...

    def existing(self, prefix: str) -> list[str]:
        """Host-side endpoint interfaces present (``is_host_ifname``), sorted."""
        ...


# -- Linux --------------------------------------------------------------------------------------


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _netlink_socket_in(ns_fd: int) -> socket.socket:
    """A NETLINK_ROUTE socket living in the namespace ``ns_fd`` (this thread goes back at once).

    SOCK_DGRAM: pyroute2's ``use_socket`` hands it to asyncio, which wants datagram sockets.
    """
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(ns_fd)
        try:
            return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 0)
        finally:
            _setns(own)  # if this failed the thread would be stranded: let it raise loudly
    finally:
        os.close(own)


def _default_route(ipr: Any, index: int, gateway: str) -> None:
    """A default route via ``gateway`` on interface ``index``; kept as is when the
    namespace already has a default route of that family (EEXIST)."""
    from pyroute2.netlink.exceptions import NetlinkError

    v6 = ":" in gateway
    try:
        ipr.route("add", dst="::/0" if v6 else "0.0.0.0/0", gateway=gateway, oif=index,
                  family=socket.AF_INET6 if v6 else socket.AF_INET)
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise


def _reason(exc: BaseException) -> str:
    code = getattr(exc, "code", None)
    if isinstance(code, int) and code > 0:
        return os.strerror(code)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return " ".join(str(exc).split()) or type(exc).__name__


def _code(exc: BaseException) -> int | None:
    code = getattr(exc, "code", None)
    if isinstance(code, int):
        return code
    return exc.errno if isinstance(exc, OSError) else None


@contextlib.contextmanager
def _iproute(sock: socket.socket | None = None) -> Iterator[Any]:
    from pyroute2 import IPRoute  # only where interfaces are made

    ipr = IPRoute(use_socket=sock) if sock is not None else IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()
        if sock is not None:
            sock.close()


class LinuxPlumber:
    """veth pairs with pyroute2 (see module docstring). Stateless: any thread may call it."""

    def check_target(self, path: str, ifname: str) -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise PlumbError(f"network namespace {path}: {_reason(exc)}") from None
        try:
            st = os.fstat(fd)
            own = os.stat("/proc/self/ns/net")
            if (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino):
                raise PlumbError(f"{path} is the agent's own network namespace, not a container's")
            try:
                sock = _netlink_socket_in(fd)
            except OSError as exc:
                if exc.errno == errno.EINVAL:
                    raise PlumbError(f"{path} is not a network namespace") from None
                raise PlumbError(f"network namespace {path}: {_reason(exc)}") from None
            try:
                with _iproute(sock) as inner:
                    taken = bool(inner.link_lookup(ifname=ifname))
            except Exception as exc:
                raise PlumbError(f"network namespace {path}: {_reason(exc)}") from None
            if taken:
                raise PlumbError(f"interface {ifname} already exists in network namespace {path}")
        finally:
            os.close(fd)

    def create(self, spec: VethSpec) -> None:
        try:
            fd = os.open(spec.netns, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise PlumbError(f"network namespace {spec.netns}: {_reason(exc)}") from None
        try:
            with _iproute() as host, _iproute(_netlink_socket_in(fd)) as inner:
                self._create(host, inner, fd, spec)
        except PlumbError:
            raise
        except Exception as exc:  # netlink or socket trouble, already cleaned up
            raise PlumbError(f"creating {spec.host_ifname}: {_reason(exc)}") from None
        finally:
            os.close(fd)

    def _create(self, host: Any, inner: Any, fd: int, spec: VethSpec) -> None:
        if host.link_lookup(ifname=spec.host_ifname):
            raise PlumbError(f"interface {spec.host_ifname} already exists on this host")
        if inner.link_lookup(ifname=spec.ifname):
            raise PlumbError(f"interface {spec.ifname} already exists in network namespace {spec.netns}")
        try:
            host.link("add", ifname=spec.host_ifname, kind="veth", mtu=spec.mtu,
                      peer={"ifname": spec.ifname, "net_ns_fd": fd, "address": spec.mac, "mtu": spec.mtu})
        except Exception as exc:
            raise PlumbError(f"cannot create the veth pair {spec.host_ifname}/{spec.ifname}: "
                             f"{_reason(exc)}") from None
        step = "find the container side"
        try:
            found = inner.link_lookup(ifname=spec.ifname)
            if not found:
                raise PlumbError(f"{spec.ifname} vanished from {spec.netns} right after its creation")
            index = found[0]
            for addr, plen in spec.addresses:
                step = f"add {addr}/{plen}"
                if ":" in addr:  # usable at once: no DAD (the tables guarantee uniqueness)
                    inner.addr("add", index=index, address=addr, prefixlen=plen, flags=IFA_F_NODAD)
                else:
                    inner.addr("add", index=index, address=addr, prefixlen=plen)
            step = f"bring {spec.ifname} up"
            inner.link("set", index=index, state="up")
            for gw in spec.gateways:
                step = f"add the default route via {gw}"
                _default_route(inner, index, gw)
            if spec.bridge is not None:
                step = f"attach {spec.host_ifname} to {spec.bridge}"
                self._attach(host, spec.host_ifname, spec.bridge)
            step = f"bring {spec.host_ifname} up"
            host.link("set", ifname=spec.host_ifname, state="up")
        except BaseException as exc:
            with contextlib.suppress(Exception):
                host.link("del", ifname=spec.host_ifname)  # the peer goes with it
            if isinstance(exc, PlumbError):
                raise
            if isinstance(exc, Exception):
                raise PlumbError(f"cannot {step} in {spec.netns}: {_reason(exc)}") from None
            raise

    @staticmethod
    def _attach(host: Any, ifname: str, bridge: str) -> None:
        """Attach ``ifname`` to ``bridge`` if the bridge exists; PlumbError when the kernel
        refuses (a full bridge: EXFULL)."""
        found = host.link_lookup(ifname=bridge)
        if not found:
            return  # the reconciler makes the bridge and attaches every port
        try:
            host.link("set", ifname=ifname, master=found[0])
        except Exception as exc:
            if _code(exc) == errno.EXFULL:
                raise PlumbError(bridge_full_message(bridge)) from None
            raise

    def is_attached(self, ifname: str, bridge: str) -> bool:
        # Two raw RTM_GETLINKs: cheaper than setting up pyroute2 once more per create.
        from dataplane import rtnl

        try:
            sock = rtnl.RtnlSocket()
            try:
                port = rtnl.get_link(sock, ifname)
                if port is None or not port.master:
                    return False
                master = rtnl.get_link(sock, bridge)
            finally:
                sock.close()
        except OSError as exc:
            raise PlumbError(f"cannot look up {ifname}: {_reason(exc)}") from None
        return master is not None and master.index == port.master

    def remove(self, host_ifname: str) -> bool:
        try:
            with _iproute() as host:
                host.link("del", ifname=host_ifname)
        except Exception as exc:
            if _code(exc) == errno.ENODEV:
                return False
            raise PlumbError(f"cannot delete {host_ifname}: {_reason(exc)}") from None
        return True

    def existing(self, prefix: str) -> list[str]:
        # A raw dump: a start-up check must not load pyroute2 (~12 MiB) on hosts without endpoints.
        from dataplane import rtnl

        try:
            sock = rtnl.RtnlSocket()
            try:
                links = rtnl.dump_links(sock, kind="veth")
            finally:
                sock.close()
        except OSError as exc:
            raise PlumbError(f"cannot list interfaces: {_reason(exc)}") from None
        return sorted(lk.name for lk in links if is_host_ifname(lk.name, prefix))
