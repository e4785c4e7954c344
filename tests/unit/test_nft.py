"""The gateway/egress target's pure parts: compile, plan, rules (read-back shape), diverges."""

from __future__ import annotations

import json

from dataplane.model import EndpointSpec, NetworkSpec, OverlayView
from dataplane.nft.compile import compile, gateway_mac, gateway_of
from dataplane.nft.model import (
    IPV4_FORWARD,
    IPV6_FORWARD,
    AddAddress,
    BridgeSeen,
    DeleteAddress,
    DeleteTable,
    LoadTable,
    NftActual,
    NftDesired,
    SetMac,
    SetSysctl,
)
from dataplane.nft.monitor import AddrEvent, MacEvent, NftEvent
from dataplane.nft.plan import additive, plan
from dataplane.nft.rules import replace_script, shape, shape_of_json, tag
from dataplane.nft.target import NftTarget

A, B = "a" * 64, "b" * 64


def ep(net: str, eid: str, ip: str, *, local: bool) -> EndpointSpec:
    return EndpointSpec(net, eid * 64, "02:42:0a:00:00:05", ip, None, "me" if local else "peer",
                        "192.0.2.1" if local else "192.0.2.2", local=local, ifname_host="ov-x" if local else None)


def view(*eps: EndpointSpec, nets: tuple[NetworkSpec, ...] | None = None) -> OverlayView:
    nets = nets or (NetworkSpec(A, 5000, None, ("10.1.0.0/24", "fd00:1::/64")), NetworkSpec(B, 5001, None, ("10.2.0.0/24",)))
    return OverlayView(nets, eps, "192.0.2.1", owner_alive={"peer": True})


def kernel_matching(d: NftDesired) -> NftActual:
    return NftActual({b.bridge: BridgeSeen(b.mac, frozenset(b.addresses)) for b in d.bridges},
                     {t.family: shape(t) for t in d.tables}, dict.fromkeys(d.sysctls, "1"))


def test_gateway_mac_is_stable_unicast_local_and_not_dockers() -> None:
    mac = gateway_mac(A)
    assert mac == gateway_mac(A) != gateway_mac(B)
    first = int(mac[:2], 16)
    assert first & 1 == 0 and first & 2 and not mac.startswith("02:42")
    assert gateway_of("10.1.0.0/24") == ("10.1.0.1", 24) and gateway_of("fd00:1::/64") == ("fd00:1::1", 64)


def test_only_networks_with_a_local_endpoint_get_a_gateway_and_rules() -> None:
    assert compile(view()).empty
    assert compile(view(ep(A, "1", "10.1.0.5", local=False))).empty  # remote rows alone: no bridge here
    d = compile(view(ep(A, "1", "10.1.0.5", local=True)))
    assert [(b.bridge, b.mac, b.addresses) for b in d.bridges] == [
        ("ov-br-5000", gateway_mac(A), ("10.1.0.1/24", "fd00:1::1/64"))]
    assert d.sysctls == (IPV4_FORWARD, IPV6_FORWARD)
    inet, bridge = d.tables
    rules = {c.name: c.rules for c in inet.chains}
    assert rules["postrouting"] == ('ip saddr 10.1.0.0/24 oifname != "ov-br-5000" masquerade',
                                    'ip6 saddr fd00:1::/64 oifname != "ov-br-5000" masquerade')
    assert rules["forward"][-1] == 'oifname "ov-br-5000" iifname != "ov-br-5000" drop'
    assert all(gateway_mac(A) in r for c in bridge.chains for r in c.rules)
    v4only = compile(view(ep(B, "2", "10.2.0.5", local=True)))
    assert v4only.sysctls == (IPV4_FORWARD,)


def test_overlapping_local_subnets_get_no_second_gateway() -> None:
    nets = (NetworkSpec(A, 5000, None, ("10.1.0.0/24",)), NetworkSpec(B, 5001, None, ("10.1.0.0/16",)))
    d = compile(view(ep(A, "1", "10.1.0.5", local=True), ep(B, "2", "10.1.0.6", local=True), nets=nets))
    assert [b.network_id for b in d.bridges] == [A]
    assert len(d.problems) == 1 and "overlaps" in d.problems[0]


def test_plan_creates_everything_in_order_and_nothing_when_in_sync() -> None:
    d = compile(view(ep(A, "1", "10.1.0.5", local=True)))
    bare = NftActual({"ov-br-5000": BridgeSeen("aa:bb:cc:00:00:01", frozenset())}, {}, {IPV4_FORWARD: "0"})
    ops = plan(d, bare)
    kinds = [type(o) for o in ops]
    assert kinds == [SetSysctl, SetSysctl, LoadTable, LoadTable, SetMac, AddAddress, AddAddress]
    assert plan(d, kernel_matching(d)) == []
    # a bridge the VXLAN side has not made yet is skipped, the rules are not
    assert [type(o) for o in plan(d, NftActual({}, {}, dict.fromkeys(d.sysctls, "1")))] == [LoadTable, LoadTable]


def test_plan_repairs_drift_and_removes_what_is_no_longer_wanted() -> None:
    d = compile(view(ep(A, "1", "10.1.0.5", local=True)))
    have = kernel_matching(d)
    inet = next(t for t in d.tables if t.family == "inet")
    fewer = (*shape(inet)[:1], (*shape(inet)[1][:5], ()))  # the operator emptied postrouting
    drift = NftActual({"ov-br-5000": BridgeSeen(gateway_mac(A), frozenset({"10.1.0.1/24", "10.9.9.9/8",
                                                                             "fe80::1/64"}))},
                      {**have.tables, "inet": fewer}, have.sysctls)
    assert plan(d, drift) == [LoadTable(inet), AddAddress("ov-br-5000", "fd00:1::1/64"),
                              DeleteAddress("ov-br-5000", "10.9.9.9/8")]
    gone = plan(compile(view()), have)
    assert gone == [DeleteTable("inet"), DeleteTable("bridge")]
    assert additive(gone) == [] and additive(plan(d, drift)) == plan(d, drift)[:2]


def test_replace_script_tags_read_back_as_the_shape() -> None:
    d = compile(view(ep(A, "1", "10.1.0.5", local=True)))
    inet = d.tables[0]
    script = replace_script(inet)
    assert script.startswith("table inet overlay_agent {}\ndelete table inet overlay_agent\n")
    items: list[dict[str, object]] = [{"metainfo": {}}, {"table": {"family": "inet", "name": "overlay_agent"}}]
    for c in inet.chains:
        items.append({"chain": {"family": "inet", "table": "overlay_agent", "name": c.name, "type": c.type,
                                "hook": c.hook, "prio": c.priority, "policy": "accept"}})
    for c in inet.chains:
        for r in c.rules:
            assert f'comment "{tag("inet", c.name, r)}"' in script
            items.append({"rule": {"chain": c.name, "comment": tag("inet", c.name, r), "expr": []}})
    assert shape_of_json(json.dumps({"nftables": items})) == shape(inet)
    items.append({"rule": {"chain": "forward", "expr": []}})  # someone else's rule in our table
    assert shape_of_json(json.dumps({"nftables": items})) != shape(inet)
    for bad in ("", "[]", '{"nftables": 3}'):
        try:
            shape_of_json(bad)
        except ValueError:
            continue
        raise AssertionError(bad)


def test_diverges_only_for_our_objects_moving_away() -> None:
    d = compile(view(ep(A, "1", "10.1.0.5", local=True)))
    t = NftTarget(None, blocking=False)  # type: ignore[arg-type]
    assert t.diverges(d, AddrEvent("ov-br-5000", "10.1.0.1/24", False))
    assert not t.diverges(d, AddrEvent("ov-br-5000", "10.1.0.1/24", True))  # our own write
    assert t.diverges(d, AddrEvent("ov-br-5000", "10.7.0.1/24", True))
    assert not t.diverges(d, AddrEvent("ov-br-9999", "10.7.0.1/24", True))
    assert t.diverges(d, MacEvent("ov-br-5000", "aa:aa:aa:aa:aa:aa"))
    assert not t.diverges(d, MacEvent("ov-br-5000", gateway_mac(A)))
    assert t.diverges(d, NftEvent("inet", "overlay_agent")) and not t.diverges(d, NftEvent("ip", "overlay_agent"))
