"""Run inside the packaged unit's sandbox: try what the agent needs and what it must not do.

Owns: one attempt per capability the agent uses (netlink route, setns into a container's
namespace, a scratch network namespace, XFRM, nftables, the Docker plugin socket dir,
per-interface sysctls, the state and runtime dirs, chown for control_group) and per thing
the unit is meant to forbid (writes elsewhere, mounts, other namespaces, packet and raw
sockets, the clock, the host name, extra capabilities). Writes ``{name: "ok" | error}``
as JSON to ``argv[1]``; the test (tests/systemd/test_unit.py) judges it.
Run by tests/systemd as the ExecStart of a copy of packaging/overlay-agent.service; it
imports nothing from the repository (only the standard library and pyroute2) and
undoes everything it made. ``argv[2]`` is a network namespace name under /run/netns.
Does not: judge (every outcome is recorded), or run outside that unit.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable

CLONE_NEWNET = 0x40000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWNS = 0x00020000
DUMMY = "oaprobe0"
"""A bridge: the kind the dataplane makes (this kernel may lack dummy devices)."""

_libc = ctypes.CDLL(None, use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _run(argv: list[str]) -> None:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if r.returncode != 0:
        raise OSError(f"{' '.join(argv)}: rc={r.returncode} {r.stderr.strip()}")


# -- what the agent needs ---------------------------------------------------------------------


def netlink_route() -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        ipr.link("add", ifname=DUMMY, kind="bridge")
        try:
            (idx,) = ipr.link_lookup(ifname=DUMMY)
            ipr.link("set", index=idx, state="up")
            # Per-interface sysctls (the dataplane sets some on its bridges and VXLAN devices).
            with open(f"/proc/sys/net/ipv4/conf/{DUMMY}/arp_ignore", "w") as f:
                f.write("1")
        finally:
            ipr.link("del", ifname=DUMMY)


def setns_container(netns: str) -> None:
    """What endpoint creation does: enter the container's namespace to open a netlink socket."""
    result: list[BaseException] = []

    def body() -> None:
        try:
            own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
            target = os.open(f"/run/netns/{netns}", os.O_RDONLY)
            try:
                _check(_libc.setns(target, CLONE_NEWNET), "setns")
                socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 0).close()
                _check(_libc.setns(own, CLONE_NEWNET), "setns back")
            finally:
                os.close(own)
                os.close(target)
        except BaseException as e:
            result.append(e)

    _in_thread(body, result)


def scratch_netns() -> None:
    """What the IPsec probe does: a brand-new network namespace in a worker thread."""
    result: list[BaseException] = []

    def body() -> None:
        try:
            _check(_libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")
        except BaseException as e:
            result.append(e)

    _in_thread(body, result)


def _in_thread(body: Callable[[], None], result: list[BaseException]) -> None:
    t = threading.Thread(target=body)
    t.start()
    t.join()
    if result:
        raise result[0]


def xfrm() -> None:
    sel = ["src", "198.51.100.1/32", "dst", "198.51.100.2/32", "dir", "out"]
    _run(["ip", "xfrm", "policy", "add", *sel, "priority", "4242"])
    _run(["ip", "xfrm", "policy", "delete", *sel])


def nftables() -> None:
    _run(["nft", "add", "table", "inet", "oaprobe"])
    _run(["nft", "add", "chain", "inet", "oaprobe", "c",
          "{ type filter hook forward priority 0 ; policy accept ; }"])
    _run(["nft", "delete", "table", "inet", "oaprobe"])


def docker_plugin_socket() -> None:
    path = "/run/docker/plugins/oaprobe.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(path)
        os.unlink(path)


def write_in(directory: str) -> Callable[[], None]:
    def attempt() -> None:
        path = os.path.join(directory, "oaprobe")
        with open(path, "w") as f:
            f.write("x")
        os.unlink(path)

    return attempt


def chown_socket_group() -> None:
    path = "/run/overlay-agent/oaprobe"
    with open(path, "w"):
        pass
    try:
        os.chown(path, -1, 4242)
    finally:
        os.unlink(path)


def boot_id() -> None:
    with open("/proc/sys/kernel/random/boot_id") as f:
        f.read()


# -- what it must not be able to do ----------------------------------------------------------


def mount_tmpfs() -> None:
    _check(_libc.mount(b"none", b"/run/overlay-agent", b"tmpfs", 0, None), "mount")


def other_namespace() -> None:
    _check(_libc.unshare(CLONE_NEWUTS), "unshare(CLONE_NEWUTS)")


def mount_namespace() -> None:
    _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")


def packet_socket() -> None:
    socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0).close()


def raw_socket() -> None:
    socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP).close()


def set_clock() -> None:
    import time

    time.clock_settime(time.CLOCK_REALTIME, time.clock_gettime(time.CLOCK_REALTIME))


def set_hostname() -> None:
    socket.sethostname(socket.gethostname())


def capabilities() -> dict[str, str]:
    """The process's capability sets and no_new_privs/seccomp as /proc/self/status shows them."""
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("CapEff", "CapPrm", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp"):
                fields[key] = value.strip()
    return fields


NEEDS: dict[str, Callable[[], None]] = {
    "netlink_route": netlink_route,
    "scratch_netns": scratch_netns,
    "xfrm": xfrm,
    "nftables": nftables,
    "docker_plugin_socket": docker_plugin_socket,
    "state_dir": write_in("/var/lib/overlay-agent"),
    "runtime_dir": write_in("/run/overlay-agent"),
    "chown_socket_group": chown_socket_group,
    "boot_id": boot_id,
}
FORBIDDEN: dict[str, Callable[[], None]] = {
    "write_etc": write_in("/etc"),
    "write_usr": write_in("/usr/local"),
    "write_var_lib": write_in("/var/lib"),
    "write_run": write_in("/run"),
    "write_root_home": write_in("/root"),
    "mount": mount_tmpfs,
    "uts_namespace": other_namespace,
    "mount_namespace": mount_namespace,
    "packet_socket": packet_socket,
    "raw_socket": raw_socket,
    "set_clock": set_clock,
    "set_hostname": set_hostname,
}


def outcome(attempt: Callable[[], None]) -> str:
    try:
        attempt()
    except BaseException as e:  # every outcome is data for the test
        return f"{type(e).__name__}: {e}"
    return "ok"


def main(argv: list[str]) -> int:
    out_path, netns = argv[1], argv[2]
    report: dict[str, object] = {
        "needs": {name: outcome(f) for name, f in NEEDS.items()}
        | {"setns_container": outcome(lambda: setns_container(netns))},
        "forbidden": {name: outcome(f) for name, f in FORBIDDEN.items()},
        "status": capabilities(),
    }
    tmp = out_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=1)
    os.replace(tmp, out_path)
    with contextlib.suppress(OSError):
        os.chmod(out_path, 0o644)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
