"""compile: tables + membership + local config -> desired kernel state."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane.compile import compile, overlay_mtu
from dataplane.model import EndpointSpec, Link, NetworkSpec, OverlayView, VxlanConf

NET_A = NetworkSpec("neta", 100, subnets=("10.0.0.0/24",))
NET_B = NetworkSpec("netb", 200, subnets=("10.0.0.0/24",))  # same subnet on purpose
ME = "198.51.100.1"
H2 = "198.51.100.2"
H3 = "198.51.100.3"


def ep(
    net: NetworkSpec,
    eid: str,
    mac: str,
    ipv4: str | None,
    owner: str = "h2",
    vtep: str = H2,
    *,
    local: bool = False,
    ifname: str | None = None,
    ipv6: str | None = None,
    version: int = 0,
) -> EndpointSpec:
    return EndpointSpec(net.id, eid, mac, ipv4, ipv6, owner, vtep, local, ifname, version)


def view(
    *endpoints: EndpointSpec,
    networks: tuple[NetworkSpec, ...] = (NET_A, NET_B),
    alive: dict[str, bool] | None = None,
    local_vtep: str = ME,
    **kw: Any,
) -> OverlayView:
    owners = {"h2": True, "h3": True, "me": True, **(alive or {})}
    return OverlayView(networks, tuple(endpoints), local_vtep, owner_alive=owners, **kw)


def test_network_with_local_endpoint_gets_devices_ports_and_remote_entries() -> None:
    s = compile(
        view(
            ep(NET_A, "l1", "02:42:0a:00:00:02", "10.0.0.2", "me", ME, local=True, ifname="ovh-l1"),
            ep(NET_A, "r1", "02:42:0A:00:00:03", "10.0.0.3/24", ipv6="fd00::3"),
            ep(NET_A, "r2", "02:42:0a:00:00:04", "10.0.0.4", "h3", H3),
            ep(NET_B, "r3", "02:42:0a:00:00:05", "10.0.0.5"),  # no local endpoint on netb
        )
    )
    assert s.links == {
        "ov-br-100": Link("ov-br-100", "bridge", 1450, None, True),
        "ov-vx-100": Link(
            "ov-vx-100", "vxlan", 1450, "ov-br-100", True, VxlanConf(100, ME, 4789, False, True)
        ),
    }
    assert s.ports == {"ovh-l1": Link("ovh-l1", "", 1450, "ov-br-100", True)}
    assert s.fdb == {("ov-vx-100", "02:42:0a:00:00:03"): H2, ("ov-vx-100", "02:42:0a:00:00:04"): H3}
    assert list(s.flood) == [("ov-vx-100", H2), ("ov-vx-100", H3)]
    assert s.neigh == {
        ("ov-vx-100", "10.0.0.3"): "02:42:0a:00:00:03",
        ("ov-vx-100", "fd00::3"): "02:42:0a:00:00:03",
        ("ov-vx-100", "10.0.0.4"): "02:42:0a:00:00:04",
    }
    assert s.networks == {"ov-vx-100": "neta"}
    assert s.problems == ()


def test_devices_exist_only_while_a_local_endpoint_exists() -> None:
    remote_only = compile(view(ep(NET_A, "r1", "02:42:0a:00:00:03", "10.0.0.3")))
    assert remote_only.links == {} and remote_only.entry_count() == 0
    local_only = compile(
        view(ep(NET_A, "l1", "02:42:0a:00:00:02", "10.0.0.2", "me", ME, local=True))
    )
    assert set(local_only.links) == {"ov-br-100", "ov-vx-100"}
    assert local_only.ports == {} and local_only.entry_count() == 0


def test_rows_of_dead_or_unknown_owners_are_ignored_but_local_rows_always_count() -> None:
    s = compile(
        view(
            ep(NET_A, "l1", "02:42:0a:00:00:02", "10.0.0.2", "me", ME, local=True),
            ep(NET_A, "r1", "02:42:0a:00:00:03", "10.0.0.3", "h2", H2),
            ep(NET_A, "r2", "02:42:0a:00:00:04", "10.0.0.4", "ghost", "198.51.100.9"),
            alive={"h2": False, "me": False},
        )
    )
    assert set(s.links) == {"ov-br-100", "ov-vx-100"}
    assert s.fdb == {} and s.neigh == {} and s.flood == {}


def test_overlapping_subnets_in_two_networks_are_separate_entries_on_separate_devices() -> None:
    s = compile(
        view(
            ep(NET_A, "la", "02:42:0a:00:00:02", "10.0.0.2", "me", ME, local=True, ifname="ovh-a"),
            ep(NET_B, "lb", "02:42:0a:00:00:02", "10.0.0.2", "me", ME, local=True, ifname="ovh-b"),
            ep(NET_A, "ra", "02:42:0a:00:00:03", "10.0.0.3", "h2", H2),
            ep(NET_B, "rb", "02:42:0a:00:00:03", "10.0.0.3", "h3", H3),
        )
    )
    assert s.neigh == {
        ("ov-vx-100", "10.0.0.3"): "02:42:0a:00:00:03",
        ("ov-vx-200", "10.0.0.3"): "02:42:0a:00:00:03",
    }
    assert s.fdb == {("ov-vx-100", "02:42:0a:00:00:03"): H2, ("ov-vx-200", "02:42:0a:00:00:03"): H3}
    assert s.ports["ovh-a"].master == "ov-br-100" and s.ports["ovh-b"].master == "ov-br-200"


@pytest.mark.parametrize(
    ("network", "underlay", "v6", "expected"),
    [
        (NetworkSpec("n", 1), 1500, False, 1450),
        (NetworkSpec("n", 1), 1500, True, 1430),
        (NetworkSpec("n", 1), 9000, False, 8950),
        (NetworkSpec("n", 1, mtu=1300), 1500, False, 1300),
        (NetworkSpec("n", 1, encrypted=True), 1500, False, 1416),  # ESP with a 128-bit ICV (crypto.esp)
        (NetworkSpec("n", 1, encrypted=True), 1500, True, 1396),
        (NetworkSpec("n", 1, encrypted=True), 9000, False, 8916),
        (NetworkSpec("n", 1, mtu=10), 1500, False, 1450),  # nonsense override ignored
    ],
)
def test_mtu_rules(network: NetworkSpec, underlay: int, v6: bool, expected: int) -> None:
    assert overlay_mtu(network, underlay, v6) == expected


def test_ipv6_underlay_uses_70_bytes_and_skips_ipv4_vteps() -> None:
    s = compile(
        view(
            ep(NET_A, "l1", "02:42:0a:00:00:02", "10.0.0.2", "me", "2001:db8::1", local=True),
            ep(NET_A, "r1", "02:42:0a:00:00:03", "10.0.0.3", "h2", "2001:DB8::2"),
            ep(NET_A, "r2", "02:42:0a:00:00:04", "10.0.0.4", "h3", H3),
            local_vtep="2001:db8::1",
        )
    )
    assert s.links["ov-vx-100"].mtu == 1430
    assert s.links["ov-vx-100"].vxlan == VxlanConf(100, "2001:db8::1", 4789, False, True)
    assert s.fdb == {("ov-vx-100", "02:42:0a:00:00:03"): "2001:db8::2"}
    assert any("family" in p for p in s.problems)


def test_duplicate_mac_goes_to_the_highest_version_then_owner() -> None:
    local = ep(NET_A, "l1", "02:42:0a:00:00:02", "10.0.0.2", "me", ME, local=True)
    old = ep(NET_A, "old", "02:42:0a:00:00:09", "10.0.0.9", "h2", H2, version=5)
    new = ep(NET_A, "new", "02:42:0a:00:00:09", "10.0.0.10", "h3", H3, version=7)
    s = compile(view(local, old, new))
    assert s.fdb == {("ov-vx-100", "02:42:0a:00:00:09"): H3}
    assert s.neigh == {("ov-vx-100", "10.0.0.10"): "02:42:0a:00:00:09"}
    tie = ep(NET_A, "tie", "02:42:0a:00:00:09", "10.0.0.11", "h2", H2, version=7)
    s = compile(view(local, new, tie))
    assert s.fdb == {("ov-vx-100", "02:42:0a:00:00:09"): H3}  # "h3" > "h2" breaks the tie


def test_duplicate_ip_goes_to_the_highest_claim_and_the_loser_keeps_its_fdb_row() -> None:
    local = ep(NET_A, "l1", "02:42:0a:00:00:02", "10.0.0.2", "me", ME, local=True)
    a = ep(NET_A, "a", "02:42:0a:00:00:07", "10.0.0.7", "h2", H2, version=1)
    b = ep(NET_A, "b", "02:42:0a:00:00:08", "10.0.0.7", "h3", H3, version=2)
    s = compile(view(local, a, b))
    assert s.neigh == {("ov-vx-100", "10.0.0.7"): "02:42:0a:00:00:08"}
    assert set(s.fdb) == {("ov-vx-100", "02:42:0a:00:00:07"), ("ov-vx-100", "02:42:0a:00:00:08")}


def test_bad_rows_are_skipped_and_reported() -> None:
    local = ep(
        NET_A, "l1", "02:42:0a:00:00:02", "10.0.0.2", "me", ME, local=True, ifname="bad/name"
    )
    rows = [
        local,
        ep(NET_A, "m1", "zz:42:0a:00:00:03", "10.0.0.3"),
        ep(NET_A, "m2", "01:00:5e:00:00:01", "10.0.0.4"),
        ep(NET_A, "i1", "02:42:0a:00:00:05", "10.0.0.300"),
        ep(NET_A, "v1", "02:42:0a:00:00:06", "10.0.0.6", vtep="not-an-ip"),
        ep(NET_A, "v2", "02:42:0a:00:00:07", "10.0.0.7", vtep=ME),
        ep(NET_A, "ok", "02:42:0a:00:00:08", "10.0.0.8"),
    ]
    nets = (NET_A, NetworkSpec("big", 1 << 24), NetworkSpec("zdup", 100), NetworkSpec("neta", 5))
    s = compile(view(*rows, networks=nets))
    assert s.fdb == {("ov-vx-100", "02:42:0a:00:00:08"): H2}
    assert s.ports == {}
    text = "\n".join(s.problems)
    for needle in (
        "m1",
        "m2",
        "i1",
        "v1",
        "v2",
        "bad interface name",
        "big",
        "already used by",
        "duplicate id",
    ):
        assert needle in text


def test_port_names_that_collide_with_our_devices_or_each_other_are_refused() -> None:
    s = compile(
        view(
            ep(
                NET_A,
                "l1",
                "02:42:0a:00:00:02",
                "10.0.0.2",
                "me",
                ME,
                local=True,
                ifname="ov-vx-200",
            ),
            ep(NET_A, "l2", "02:42:0a:00:00:03", "10.0.0.3", "me", ME, local=True, ifname="veth0"),
            ep(NET_B, "l3", "02:42:0a:00:00:04", "10.0.0.4", "me", ME, local=True, ifname="veth0"),
        )
    )
    assert list(s.ports) == ["veth0"]
    assert len(s.problems) == 2


@pytest.mark.parametrize(
    "kw",
    [
        {"local_vtep": "nope"},
        {"prefix": "toolong"},
        {"prefix": ""},
        {"underlay_mtu": 20},
        {"vxlan_port": 0},
    ],
)
def test_local_configuration_errors_raise_value_error(kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        compile(view(**kw))


def test_row_order_does_not_change_the_result() -> None:
    rows = [ep(NET_A, "l1", "02:42:0a:00:00:02", "10.0.0.2", "me", ME, local=True, ifname="p1")]
    rows += [
        ep(
            NET_A,
            f"r{i}",
            f"02:42:0a:00:01:{i:02x}",
            f"10.0.1.{i}",
            f"h{2 + i % 2}",
            H2 if i % 2 == 0 else H3,
        )
        for i in range(40)
    ]
    first = compile(view(*rows))
    shuffled = rows[:]
    random.Random(7).shuffle(shuffled)
    again = compile(view(*shuffled))
    assert first == again
    assert list(first.fdb) == list(again.fdb) and list(first.neigh) == list(again.neigh)


text = st.text(alphabet="0123456789abcdefABCDEF:.-/x ", max_size=20)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.builds(
            EndpointSpec,
            network_id=st.sampled_from(["neta", "netb", "nope"]),
            id=st.text(max_size=4),
            mac=text,
            ipv4=st.none() | text,
            ipv6=st.none() | text,
            owner=st.sampled_from(["h2", "h3", "me", "x"]),
            vtep=text | st.sampled_from([H2, H3, "2001:db8::5"]),
            local=st.booleans(),
            ifname_host=st.none() | st.text(max_size=18),
            version=st.integers(-5, 5),
        ),
        max_size=12,
    )
)
def test_arbitrary_rows_never_raise(rows: list[EndpointSpec]) -> None:
    s = compile(view(*rows))
    for dev, _ in [*s.fdb, *s.neigh, *s.flood]:
        assert dev in s.links
