"""LinuxKernel's notification-fed mirror against full dumps, in a scratch namespace.

After every kind of change made behind the agent's back (FDB rows and neighbours
deleted, replaced, added; dynamic rows; ports detached, attached, deleted; new
devices; MTU and state changes; our own applies, small and big), a read answered from
the mirror must equal a full read of the kernel by a second LinuxKernel without a
mirror. And a change whose notification was lost is repaired by the reconciler's
periodic resync, which always reads everything.
"""

from __future__ import annotations

import pytest

from dataplane.compile import compile
from dataplane.kernel import LinuxKernel
from dataplane.mirror import ECHO_LIMIT
from dataplane.model import EndpointSpec, NetworkSpec, OverlayView, State
from dataplane.plan import plan
from dataplane.reconciler import ReconcilerConfig
from dataplane.samples import bulk_view, docker_mac
from dataplane.scratch import Scratch
from dataplane.target import VxlanReconciler, VxlanTarget
from tests.netns.kernelhost import ME, add_host

pytestmark = pytest.mark.netns

NET = NetworkSpec("blue", 100, subnets=("10.0.0.0/24",))


@pytest.fixture
def ns(kernel_scratch: Scratch) -> tuple[Scratch, str]:
    return kernel_scratch, add_host(kernel_scratch, "mirror", ME, ports=("b1", "b2"))


def view(local: tuple[str, ...] = ("ovh-b1",), remotes: int = 6) -> OverlayView:
    rows = [
        EndpointSpec(
            "blue",
            f"l{k}",
            docker_mac(f"10.0.0.{k + 2}"),
            f"10.0.0.{k + 2}",
            None,
            "me",
            ME,
            True,
            port,
        )
        for k, port in enumerate(local)
    ]
    for i in range(remotes):
        ip = f"10.0.0.{100 + i}"
        rows.append(
            EndpointSpec(
                "blue",
                f"r{i}",
                docker_mac(ip),
                ip,
                None,
                f"h{i % 3}",
                f"198.51.100.{10 + i % 3}",
                version=1,
            )
        )
    return OverlayView((NET,), tuple(rows), ME, owner_alive={f"h{i}": True for i in range(3)})


def fdb_macs(s: Scratch, name: str) -> set[str]:
    return {row["mac"] for row in s.json(name, "bridge", "fdb", "show", "dev", "ov-vx-100")}


def same(a: State, b: State) -> None:
    assert a.links == b.links
    assert a.ports == b.ports
    assert dict(a.fdb) == dict(b.fdb)
    assert dict(a.flood) == dict(b.flood)
    assert dict(a.neigh) == dict(b.neigh)


def test_mirror_reads_equal_full_reads_after_every_kind_of_change(
    ns: tuple[Scratch, str],
) -> None:
    s, name = ns
    kernel = LinuxKernel(name)
    full = LinuxKernel(name, mirror=False)
    try:
        desired = compile(view())
        assert kernel.apply(plan(desired, kernel.read(desired))).ok
        kernel.read(desired)  # the first read after an apply of ours may be a full one
        mirror = kernel.mirror
        assert mirror is not None and mirror.valid
        dumps = mirror.full_reads

        def check(hint: State) -> None:
            mine = kernel.read(hint)
            same(mine, full.read(hint))

        check(desired)
        # Nothing moved, same question: the same State object (targets remember plans).
        again = kernel.read(desired)
        assert kernel.read(desired) is again
        target = VxlanTarget(kernel)
        assert target.plan(desired, again) == [] and target.plan(desired, again) == []
        vx, br = "ov-vx-100", "ov-br-100"
        mac = docker_mac("10.0.0.101")
        steps: list[tuple[str, list[str]]] = [
            ("bridge", [f"fdb del {mac} dev {vx} self"]),
            (
                "bridge",
                [
                    f"fdb replace {docker_mac('10.0.0.102')} dev {vx} dst 198.51.100.99 self permanent"
                ],
            ),
            (
                "bridge",
                ["fdb append 00:00:00:00:00:00 dev ov-vx-100 dst 198.51.100.98 self permanent"],
            ),
            (
                "bridge",
                ["fdb add 02:00:00:00:aa:01 dev ov-vx-100 dst 198.51.100.97 self permanent"],
            ),
            ("bridge", ["fdb del 00:00:00:00:00:00 dev ov-vx-100 dst 198.51.100.98 self"]),
            ("bridge", ["fdb add 02:00:00:00:aa:02 dev ov-vx-100 master"]),  # the bridge's row
            ("ip", ["neigh del 10.0.0.103 dev ov-vx-100"]),
            (
                "ip",
                ["neigh replace 10.0.0.104 lladdr 02:00:00:00:00:01 dev ov-vx-100 nud permanent"],
            ),
            ("ip", ["neigh add 10.0.0.200 lladdr 02:00:00:00:00:02 dev ov-vx-100 nud reachable"]),
            ("ip", ["neigh replace 10.0.0.105 lladdr 02:00:00:00:00:03 dev ov-vx-100 nud stale"]),
            ("ip", ["link set ovh-b1 nomaster"]),
            ("ip", ["link set ovh-b2 master ov-br-100", "link set ovh-b2 up"]),
            ("ip", ["link set ovh-b2 mtu 1400"]),
            ("ip", [f"link set {vx} mtu 1300"]),
            ("ip", [f"link set {br} down"]),
            (
                "ip",
                ["link add ovh-b3 type veth peer name c-b3", "link set ovh-b3 master ov-br-100"],
            ),
            ("ip", ["link del ovh-b3"]),
            ("ip", ["link add opbr0 type bridge", "link add ov-br-77 type bridge"]),
        ]
        for tool, lines in steps:
            s.batch(name, lines, tool=tool)
            before = again
            check(desired)
            again = kernel.read(desired)
            assert again is not before, f"{lines}: the read did not move"
        # A port the hint names that came and went without being ours to follow.
        hint = compile(view(("ovh-b1", "ovh-b2")))
        check(hint)
        assert mirror.full_reads == dumps, "none of the above needed a full read"
        assert mirror.events > 0

        # Our own small apply: repairs everything above, seen through the echo.
        assert kernel.apply(plan(hint, kernel.read(hint))).ok
        check(hint)
        assert mirror.full_reads == dumps

        # A device of ours deleted by hand (its rows go with it), then re-created.
        s.ip(name, "link", "del", vx)
        check(hint)
        assert kernel.apply(plan(hint, kernel.read(hint))).ok
        check(hint)
        s.ip(name, "link", "del", br)  # the bridge: its ports are free
        check(hint)
        assert kernel.apply(plan(hint, kernel.read(hint))).ok
        check(hint)
        assert mirror.full_reads == dumps
        # An operator's rename of our device: entries are keyed by name, read it all.
        s.ip(name, "link", "set", vx, "name", "ov-vx-101")
        check(hint)
        assert mirror.full_reads == dumps + 1
    finally:
        kernel.close()
        full.close()


def test_a_big_apply_is_read_back_whole(ns: tuple[Scratch, str]) -> None:
    _, name = ns
    kernel = LinuxKernel(name)
    full = LinuxKernel(name, mirror=False)
    try:
        big = compile(bulk_view(ECHO_LIMIT, 10, local_vtep=ME))
        devices = State(big.links, big.ports)
        assert kernel.apply(plan(devices, kernel.read(devices))).ok
        kernel.read(big)
        mirror = kernel.mirror
        assert mirror is not None and mirror.valid
        dumps = mirror.full_reads
        result = kernel.apply(plan(big, kernel.read(big)))
        assert result.ok and result.applied > ECHO_LIMIT
        assert not mirror.valid  # it did not listen to its own echo
        got = kernel.read(big)
        assert mirror.full_reads == dumps + 1
        same(got, full.read(big))
        assert plan(big, got) == []
    finally:
        kernel.close()
        full.close()


async def test_a_lost_notification_is_repaired_by_the_periodic_resync(
    ns: tuple[Scratch, str],
) -> None:
    s, name = ns
    v = view()
    desired = compile(v)
    kernel = LinuxKernel(name)
    cfg = ReconcilerConfig(resync_interval=3600)
    rec = VxlanReconciler(VxlanTarget(kernel), lambda: v, cfg, threaded=False)
    rec.ready()
    try:
        assert await rec.pass_now("start")
        assert await rec.pass_now("poke")
        mirror = kernel.mirror
        assert mirror is not None and mirror.valid
        # The notification of this delete is lost (the mirror is not listening and is
        # told nothing): a pass that trusts the mirror cannot see the drift ...
        mirror.mute()
        mirror.valid = True
        mac = docker_mac("10.0.0.101")
        s.batch(name, [f"fdb del {mac} dev ov-vx-100 self"], tool="bridge")
        mirror.unmute()
        mirror.valid = True
        assert await rec.pass_now("poke")
        assert rec.last.ops == 0
        assert mac not in fdb_macs(s, name)
        # ... the periodic resync reads the kernel itself and repairs it.
        assert await rec.pass_now("resync")
        assert rec.last.ops == 1
        assert mac in fdb_macs(s, name)
        full = LinuxKernel(name, mirror=False)
        try:
            assert plan(desired, full.read(desired)) == []
        finally:
            full.close()
    finally:
        rec.target.close()
