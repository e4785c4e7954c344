"""IPAM: address math (pure) and block-based allocation through the tables."""

from __future__ import annotations

import ipaddress
import re
from functools import partial

import pytest

from gossip.effects import Effect
from gossip.tables import ipam
from gossip.tables.replica import Tables, TablesConfig
from gossip.tables.rows import ClaimRow, Endpoint, TableError
from tests.stateful.tablesnet import cluster

# ------------------------------------------------------------------ layout


@pytest.mark.parametrize(
    ("subnet", "size", "count"),
    [
        ("10.0.0.0/24", 4, 64),  # halved until there are 64 blocks
        ("10.0.0.0/22", 16, 64),
        ("10.0.0.0/16", 16, 4096),
        ("10.0.0.0/28", 4, 4),  # never below 4 addresses
        ("10.0.0.0/30", 4, 1),
        ("fd00::/64", 16, 1 << 60),
        ("fd00::/120", 4, 64),
    ],
)
def test_layout_cuts_subnets_into_enough_blocks(subnet: str, size: int, count: int) -> None:
    lay = ipam.layout(subnet, 16, 64)
    assert (lay.size, lay.count) == (size, count)


def test_huge_v6_subnets_keep_block_numbers_within_msgpack_integers() -> None:
    lay = ipam.layout("fd00::/8", 16, 64)
    assert lay.count <= 1 << 62


def test_network_gateway_and_v4_broadcast_are_never_usable() -> None:
    lay = ipam.layout("10.0.0.0/28", 16, 64)
    first = list(lay.addresses(0))
    last = list(lay.addresses(lay.count - 1))
    assert [lay.text(v) for v in first] == ["10.0.0.2", "10.0.0.3"]
    assert [lay.text(v) for v in last] == ["10.0.0.12", "10.0.0.13", "10.0.0.14"]
    v6 = ipam.layout("fd00::/120", 16, 64)
    assert v6.text(list(v6.addresses(v6.count - 1))[-1]) == "fd00::ff"


def test_block_cidr_and_block_of_agree() -> None:
    lay = ipam.layout("10.1.0.0/24", 16, 64)
    addr = ipaddress.IPv4Address("10.1.0.173")
    block = lay.block_of(addr)
    assert lay.block_cidr(block) == "10.1.0.172/30"
    assert addr in ipaddress.ip_network(lay.block_cidr(block))


# ------------------------------------------------------------------ parsing


def test_parse_subnets_canonical_order_v4_first() -> None:
    assert ipam.parse_subnets(["fd00:1::/64", "10.0.0.0/24"]) == ("10.0.0.0/24", "fd00:1::/64")
    assert ipam.parse_subnets("10.0.0.0/24") == ("10.0.0.0/24",)


@pytest.mark.parametrize(
    ("subnets", "message"),
    [
        ([], "at least one subnet"),
        (["banana"], "invalid subnet 'banana'"),
        (["10.0.0.1/24"], "host bits set (did you mean 10.0.0.0/24?)"),
        (["10.0.0.0/31"], "too small"),
        (["fd00::/127"], "too small"),
        (["10.0.0.0/24", "10.1.0.0/24"], "more than one IPv4 subnet"),
    ],
)
def test_parse_subnets_refuses_bad_input(subnets: list[str], message: str) -> None:
    with pytest.raises(TableError, match=re.escape(message)):
        ipam.parse_subnets(subnets)


@pytest.mark.parametrize(
    ("text", "family", "subnet", "message"),
    [
        ("10.0.1.5", 4, "10.0.0.0/24", "outside the subnet"),
        ("10.0.0.0", 4, "10.0.0.0/24", "network address"),
        ("10.0.0.1", 4, "10.0.0.0/24", "gateway"),
        ("10.0.0.255", 4, "10.0.0.0/24", "broadcast"),
        ("fd00::5", 4, "10.0.0.0/24", "not an IPv4 address"),
        ("10.0.0.300", 4, "10.0.0.0/24", "invalid IPv4 address"),
        ("fd00::5", 6, None, "no IPv6 subnet"),
    ],
)
def test_parse_address_refuses(text: str, family: int, subnet: str | None, message: str) -> None:
    with pytest.raises(TableError, match=message):
        ipam.parse_address(text, subnet, family)


def test_parse_address_accepts_a_host_address() -> None:
    assert str(ipam.parse_address("10.0.0.7", "10.0.0.0/24", 4)) == "10.0.0.7"
    assert str(ipam.parse_address("fd00::ff", "fd00::/120", 6)) == "fd00::ff"


def test_mac_parsing_normalises_and_refuses_multicast_and_zero() -> None:
    assert ipam.parse_mac("02:42:0A:00:00:04") == "02:42:0a:00:00:04"
    assert ipam.parse_mac("02-42-0a-00-00-04") == "02:42:0a:00:00:04"
    for bad in ("02:42:0a:00:00", "zz:42:0a:00:00:04", "02:42-0a:00:00:04", ""):
        with pytest.raises(TableError, match="invalid MAC"):
            ipam.parse_mac(bad)
    with pytest.raises(TableError, match="multicast"):
        ipam.parse_mac("01:00:5e:00:00:01")
    with pytest.raises(TableError, match="not usable"):
        ipam.parse_mac("00:00:00:00:00:00")


def test_default_mac_is_dockers_convention() -> None:
    assert ipam.default_mac("10.0.0.4", None) == "02:42:0a:00:00:04"
    assert ipam.default_mac("172.17.0.5", "fd00::9") == "02:42:ac:11:00:05"
    assert ipam.default_mac(None, "fd00::a:b0c:d0e") == "02:42:0b:0c:0d:0e"


# ------------------------------------------------------------------ blocks


def _claim(block: int, lamport: int, node: str, deleted: bool = False) -> ClaimRow:
    return ClaimRow("0" * 64, 4, block, node, lamport, deleted)


def test_block_owner_is_the_lowest_lamport_then_node() -> None:
    owners = ipam.block_owners(
        [_claim(3, 7, "b"), _claim(3, 5, "c"), _claim(3, 5, "a"), _claim(4, 1, "z", deleted=True),
         _claim(5, 9, "q")]
    )
    assert owners == {(4, 3): "a", (4, 5): "q"}


def test_free_block_wraps_and_reports_exhaustion() -> None:
    lay = ipam.layout("10.0.0.0/28", 16, 64)  # 4 blocks
    assert ipam.free_block(lay, {2, 3}, 2) == 0
    assert ipam.free_block(lay, set(), 3) == 3
    assert ipam.free_block(lay, {0, 1, 2, 3}, 1) is None


def test_start_block_is_stable_and_spreads_nodes() -> None:
    starts = {ipam.start_block(f"n{i}", "ab" * 32, 4, 64) for i in range(20)}
    assert ipam.start_block("n1", "ab" * 32, 4, 64) == ipam.start_block("n1", "ab" * 32, 4, 64)
    assert len(starts) > 10


def test_allocate_takes_the_lowest_free_address_of_the_given_blocks_in_order() -> None:
    lay = ipam.layout("10.0.0.0/24", 16, 64)
    used = {int(ipaddress.IPv4Address("10.0.0.20"))}
    assert lay.text(ipam.allocate(lay, [5, 0], used) or 0) == "10.0.0.21"
    assert ipam.allocate(lay, [], used) is None


def test_pick_vni_hashes_then_probes_past_used() -> None:
    net_id = "00000000000000ff" + "0" * 48
    assert ipam.pick_vni(net_id, set(), 4096, 5000) == 4096 + 255 % 905
    assert ipam.pick_vni(net_id, {4096 + 255}, 4096, 5000) == 4096 + 256
    assert ipam.pick_vni(net_id, {4098}, 4096, 4097) == 4096 + 255 % 2
    with pytest.raises(TableError, match="no free VNI"):
        ipam.pick_vni(net_id, {1, 2}, 1, 2)


# ------------------------------------------------------ through the tables


def _remove(t: Tables, now: float, ref: str) -> tuple[Endpoint, list[Effect]]:
    return t.remove_endpoint(now, ref)


def test_nodes_allocate_from_their_own_blocks_and_never_the_gateway() -> None:
    net = cluster(3)
    net.call("n0", lambda t: t.create_network(net.now, "web", ["10.1.0.0/24"]))
    net.run_for(1)
    eps = []
    for _ in range(3):
        for node in ("n1", "n2"):
            eps.append(net.call(node, lambda t: t.create_endpoint(net.now, "web")))
            net.run_for(0.5)
    addrs = [e.ipv4 for e in eps]
    assert len(set(addrs)) == len(addrs)
    assert "10.1.0.1" not in addrs
    blocks = net.nodes["n0"].tables.claims("web")
    by_node: dict[str, list[str]] = {}
    for b in blocks:
        assert b.owner
        by_node.setdefault(b.node, []).append(b.cidr)
    # Each node's addresses lie in its own blocks.
    for e in eps:
        assert any(ipaddress.ip_address(e.ipv4 or "") in ipaddress.ip_network(c) for c in by_node[e.owner])
    assert sorted(by_node) == ["n1", "n2"]


def test_exhausted_subnet_gives_a_clear_error_and_changes_nothing() -> None:
    net = cluster(2)
    net.call("n0", lambda t: t.create_network(net.now, "tiny", ["10.9.0.0/30"]))
    t = net.nodes["n0"].tables
    net.call("n0", lambda t: t.create_endpoint(net.now, "tiny"))  # 10.9.0.2, the only one
    before = (t.version, t.clock, t.local_endpoints())
    with pytest.raises(TableError, match=re.escape("no free address block in 10.9.0.0/30")):
        t.create_endpoint(net.now, "tiny")
    assert (t.version, t.clock, t.local_endpoints()) == before


def test_blocks_are_released_when_emptied_except_one_spare() -> None:
    net = cluster(2, tables_config=TablesConfig(ipam_block=4))
    net.call("n0", lambda t: t.create_network(net.now, "web", ["10.1.0.0/24"]))
    t = net.nodes["n0"].tables
    eps = [net.call("n0", lambda t: t.create_endpoint(net.now, "web")) for _ in range(5)]
    assert len([b for b in t.claims("web") if b.node == "n0"]) == 2  # 4 + 1 addresses
    for ep in eps[:4]:
        net.call("n0", partial(_remove, now=net.now, ref=ep.id))
    mine = [b.cidr for b in t.claims("web") if b.node == "n0"]
    assert len(mine) == 1  # the block of the remaining endpoint serves as the spare
    net.call("n0", lambda t: t.remove_endpoint(net.now, eps[4].id))
    assert t.claims("web") == []  # left the network: everything released


def test_an_explicit_address_claims_its_block_so_others_avoid_it() -> None:
    net = cluster(2, tables_config=TablesConfig(ipam_block=4))
    net.call("n0", lambda t: t.create_network(net.now, "web", ["10.1.0.0/28"]))
    net.run_for(1)
    net.call("n0", lambda t: t.create_endpoint(net.now, "web", ipv4="10.1.0.9"))
    net.run_for(1)
    blocks = net.nodes["n1"].tables.claims("web")
    assert [(b.cidr, b.node) for b in blocks] == [("10.1.0.8/30", "n0")]
    got = [net.call("n1", lambda t: t.create_endpoint(net.now, "web")).ipv4 for _ in range(2)]
    assert all(ipaddress.ip_address(a or "") not in ipaddress.ip_network("10.1.0.8/30") for a in got)
