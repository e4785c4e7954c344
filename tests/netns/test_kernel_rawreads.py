"""Raw rtnetlink reads against iproute2, in a scratch namespace.

``NftKernel``'s bridge read (MAC and addresses) goes through ``rtnl.link_address`` and
the index-filtered ``rtnl.dump_addrs`` rather than pyroute2's host-wide address dump:
it must see exactly what ``ip -j addr`` shows for the bridge, and nothing of the other
links' addresses.
"""

from __future__ import annotations

import pytest

from dataplane import rtnl
from dataplane.model import canonical_ip
from dataplane.nft.kernel import NftKernel
from dataplane.scratch import Scratch

pytestmark = pytest.mark.netns


@pytest.fixture
def ns(kernel_scratch: Scratch) -> tuple[Scratch, str]:
    s = kernel_scratch
    name = s.add("raw")
    lines = [
        "link add ov-br-9 type bridge",
        "link set ov-br-9 address 02:42:0a:00:00:01",
        "addr add 10.9.0.1/24 dev ov-br-9",
        "addr add 10.9.1.1/16 dev ov-br-9",
        "addr add fd09::1/64 dev ov-br-9 nodad",
        "link set ov-br-9 up",
    ]
    for i in range(40):  # other links with addresses of their own (link-local ones too)
        lines += [
            f"link add vr{i} type veth peer name vp{i}",
            f"addr add 10.10.{i}.1/24 dev vr{i}",
            f"link set vr{i} up",
            f"link set vp{i} up",
        ]
    s.batch(name, lines)
    return s, name


def test_bridge_read_matches_iproute2(ns: tuple[Scratch, str]) -> None:
    s, name = ns
    kernel = NftKernel(name)
    try:
        seen = kernel._bridge("ov-br-9")
        assert kernel._bridge("ov-br-404") is None
    finally:
        kernel.close()
    assert seen is not None
    (info,) = s.json(name, "ip", "-j", "addr", "show", "dev", "ov-br-9")
    want = {f"{canonical_ip(a['local'])}/{a['prefixlen']}" for a in info["addr_info"]}
    assert seen.mac == "02:42:0a:00:00:01"
    assert set(seen.addresses) == want
    assert {"10.9.0.1/24", "10.9.1.1/16", "fd09::1/64"} <= want
    assert not any(a.startswith("10.10.") for a in seen.addresses)


def test_link_reads_by_name_agree_with_iproute2(ns: tuple[Scratch, str]) -> None:
    """``get_link`` and ``link_address`` share one GETLINK request: the same index as
    ``ip link``, the MAC, None for a missing name, the kernel's error for a bad one."""
    s, name = ns
    (info,) = s.json(name, "ip", "-j", "link", "show", "dev", "vr3")
    sock = rtnl.RtnlSocket(name)
    try:
        link = rtnl.get_link(sock, "vr3")
        assert link is not None and (link.index, link.name) == (info["ifindex"], "vr3")
        assert rtnl.link_address(sock, "vr3") == (info["ifindex"], bytes.fromhex(info["address"].replace(":", "")))
        assert rtnl.get_link(sock, "nope0") is None and rtnl.link_address(sock, "nope0") is None
        with pytest.raises(rtnl.NetlinkError):
            rtnl.get_link(sock, "x" * 40)  # longer than IFNAMSIZ: refused, not "missing"
    finally:
        sock.close()
