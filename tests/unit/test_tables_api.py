"""The agent-facing API of the tables: lookups, validation, one-line errors, no half state."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest

from gossip.effects import Log
from gossip.tables.replica import Tables
from gossip.tables.rows import Endpoint, TableError
from tests.stateful.tablesnet import cluster


def _single() -> Tables:
    t = Tables(node="n0", vtep="192.0.2.1", rng=random.Random(1))
    t.create_network(0.0, "web", ["10.1.0.0/24", "fd00:1::/64"], vni=5000)
    t.create_network(0.0, "db", ["10.2.0.0/24"])
    return t


def _state(t: Tables) -> tuple[Any, ...]:
    return (t.version, t.clock, t.networks(), t.local_endpoints(), t.conflicts())


def _refused(t: Tables, call: Callable[[], object], message: str) -> None:
    before = _state(t)
    with pytest.raises(TableError) as info:
        call()
    text = str(info.value)
    assert message in text, text
    assert "\n" not in text
    assert _state(t) == before


def test_create_network_validation() -> None:
    t = _single()
    now = 1.0
    cases: list[tuple[Callable[[], object], str]] = [
        (lambda: t.create_network(now, "", ["10.9.0.0/24"]), "invalid network name ''"),
        (lambda: t.create_network(now, "a b", ["10.9.0.0/24"]), "invalid network name 'a b'"),
        (lambda: t.create_network(now, "x" * 65, ["10.9.0.0/24"]), "invalid network name"),
        (lambda: t.create_network(now, "web", ["10.9.0.0/24"]), "network 'web' already exists"),
        (lambda: t.create_network(now, "x", []), "at least one subnet"),
        (lambda: t.create_network(now, "x", ["10.9.0.1/24"]), "host bits set"),
        (lambda: t.create_network(now, "x", ["10.1.0.0/17"]), "overlaps 10.1.0.0/24 of network 'web'"),
        (lambda: t.create_network(now, "x", ["10.0.0.0/8"]), "overlaps"),
        (lambda: t.create_network(now, "x", ["10.9.0.0/24"], vni=5000), "VNI 5000 is already used by network 'web'"),
        (lambda: t.create_network(now, "x", ["10.9.0.0/24"], vni=0), "invalid VNI 0"),
        (lambda: t.create_network(now, "x", ["10.9.0.0/24"], vni=1 << 24), "invalid VNI"),
        (lambda: t.create_network(now, "x", ["10.9.0.0/24"], mtu=40), "invalid MTU 40"),
        (lambda: t.create_network(now, "x", ["fd00:9::/64"], mtu=1200), "expected 1280-65535"),
    ]
    for call, message in cases:
        _refused(t, call, message)


def test_find_network_by_id_name_and_prefix() -> None:
    t = _single()
    web = t.find_network("web")
    assert t.find_network(web.id) == web
    assert t.find_network(web.id[:12]) == web
    assert t.find_network(web.id[:12].upper()) == web
    assert [n.name for n in t.networks()] == ["db", "web"]
    with pytest.raises(TableError, match="no such network: nope"):
        t.find_network("nope")
    with pytest.raises(TableError, match="no network given"):
        t.find_network("")
    ids = [n.id for n in t.networks()]
    common = next((i for i in range(64) if ids[0][i] != ids[1][i]), 0)
    if common > 0:
        with pytest.raises(TableError, match="ambiguous"):
            t.find_network(ids[0][:common])


def test_create_endpoint_allocates_gateway_aware_addresses_and_docker_macs() -> None:
    t = _single()
    ep, _ = t.create_endpoint(1.0, "web", name="web-1")
    assert ep.ipv4 is not None and ep.ipv6 is not None
    assert ep.ipv4 not in ("10.1.0.0", "10.1.0.1") and ep.ipv6.startswith("fd00:1::")
    octets = [int(x) for x in ep.ipv4.split(".")]
    assert ep.mac == "02:42:" + ":".join(f"{o:02x}" for o in octets)
    assert (ep.owner, ep.vtep, ep.network) == ("n0", "192.0.2.1", t.find_network("web").id)
    assert t.endpoints() == [ep] and t.find_endpoint("web-1") == ep
    assert t.find_network("web").gateways() == [("10.1.0.0/24", "10.1.0.1"), ("fd00:1::/64", "fd00:1::1")]
    assert t.find_network("web").mtu is None  # derived by the dataplane from the underlay


def test_create_endpoint_validation() -> None:
    t = _single()
    taken, _ = t.create_endpoint(1.0, "web", ipv4="10.1.0.7", mac="02:00:00:00:00:07", name="one")
    now = 2.0
    cases: list[tuple[Callable[[], object], str]] = [
        (lambda: t.create_endpoint(now, "nope"), "no such network: nope"),
        (lambda: t.create_endpoint(now, "web", ipv4="10.2.0.5"), "outside the subnet 10.1.0.0/24"),
        (lambda: t.create_endpoint(now, "web", ipv4="10.1.0.1"), "gateway"),
        (lambda: t.create_endpoint(now, "web", ipv4="10.1.0.7"), "address 10.1.0.7 is already in use"),
        (lambda: t.create_endpoint(now, "web", ipv4="bogus"), "invalid IPv4 address 'bogus'"),
        (lambda: t.create_endpoint(now, "db", ipv6="fd00:2::5"), "no IPv6 subnet"),
        (lambda: t.create_endpoint(now, "web", mac="02:42"), "invalid MAC address '02:42'"),
        (lambda: t.create_endpoint(now, "web", mac="03:00:00:00:00:01"), "multicast"),
        (lambda: t.create_endpoint(now, "web", mac="02:00:00:00:00:07"), "MAC address 02:00:00:00:00:07 is already in use"),
        (lambda: t.create_endpoint(now, "web", name="one"), "an endpoint named 'one' already exists"),
        (lambda: t.create_endpoint(now, "web", name="bad name"), "invalid endpoint name"),
    ]
    for call, message in cases:
        _refused(t, call, message)
    assert t.local_endpoints() == [taken]


def test_remove_endpoint_by_name_id_or_prefix_and_refusals() -> None:
    t = _single()
    a, _ = t.create_endpoint(1.0, "web", name="a")
    b, _ = t.create_endpoint(1.0, "web", name="b")
    c, _ = t.create_endpoint(1.0, "db", name="c")
    assert t.remove_endpoint(2.0, "a")[0] == a
    assert t.remove_endpoint(2.0, b.id[:10])[0] == b
    assert t.remove_endpoint(2.0, c.id)[0] == c
    assert t.local_endpoints() == []
    _refused(t, lambda: t.remove_endpoint(3.0, "a"), "no such endpoint: a")
    _refused(t, lambda: t.remove_endpoint(3.0, ""), "no endpoint given")


def test_remote_endpoints_cannot_be_removed_here() -> None:
    net = cluster(2)
    net.call("n0", lambda t: t.create_network(net.now, "web", ["10.1.0.0/24"]))
    net.wait(lambda: bool(net.nodes["n1"].tables.networks()), timeout=60)
    remote = net.call("n0", lambda t: t.create_endpoint(net.now, "web", name="x"))
    net.call("n1", lambda t: t.create_endpoint(net.now, "web", name="y"))
    t = net.nodes["n1"].tables
    net.wait(lambda: len(t.endpoints()) == 2, timeout=60)
    _refused(t, lambda: t.remove_endpoint(net.now, remote.id), "belongs to node n0; remove it there")
    assert t.find_endpoint(remote.id[:8]).owner == "n0"


def test_remove_network_of_an_unused_network() -> None:
    t = _single()
    ep, _ = t.create_endpoint(1.0, "db")
    _refused(t, lambda: t.remove_network(2.0, "db"), "network 'db' is in use by endpoints on n0")
    t.remove_endpoint(2.0, ep.id)
    removed, _ = t.remove_network(3.0, "db")
    assert removed.name == "db" and [n.name for n in t.networks()] == ["web"]
    _refused(t, lambda: t.remove_network(4.0, "db"), "no such network: db")
    # The name is free again.
    again, _ = t.create_network(5.0, "db", ["10.2.0.0/24"])
    assert again.id != removed.id


def test_restore_validates_everything_before_changing_anything() -> None:
    t = Tables(node="n0", vtep="192.0.2.1", rng=random.Random(1))
    good = Endpoint("1" * 64, "a", "2" * 64, "10.1.0.5", None, "02:42:0a:01:00:05", "old", "192.0.2.9", 4)
    bad = Endpoint("3" * 64, "b", "2" * 64, "10.1.0.6", None, "02:42:0A:01:00:06", "old", "192.0.2.9", 4)
    _refused(t, lambda: t.restore_local_endpoints(0.0, [good, bad]), "MAC not canonical")
    _refused(t, lambda: t.restore_local_endpoints(0.0, [good, good]), "twice")
    t.restore_local_endpoints(0.0, [good], clock=41)
    (ep,) = t.local_endpoints()
    assert (ep.owner, ep.vtep) == ("n0", "192.0.2.1")  # reset to this node's
    assert t.clock > 41
    assert t.endpoints() == [ep]  # local rows show even before the network is known


def test_malformed_messages_are_logged_sparingly_and_change_nothing() -> None:
    t = _single()
    before = _state(t)
    logs = []
    for _ in range(9):
        logs += t.on_user_message(1.0, b"\x91\xc1garbage")
    assert [type(e) for e in logs] == [Log] * 4  # 1st, 2nd, 4th, 8th
    assert _state(t) == before and t.stats.decode_errors == 9
    assert t.merge_remote_state(1.0, b"\x93\x00", False) == [] and t.stats.decode_errors == 10
    assert t.on_user_message(1.0, b"\xfe") == []  # a private type that is not ours


def test_local_state_is_empty_without_rows() -> None:
    """serf peers log push/pull user state they cannot parse: say nothing when idle."""
    t = Tables(node="n0", vtep="192.0.2.1", rng=random.Random(1))
    assert t.local_state(False) == b""
    t.create_network(0.0, "web", ["10.1.0.0/24"])
    assert t.local_state(True)[0] == 0x93


def test_constructor_and_config_validation() -> None:
    with pytest.raises(ValueError, match="VTEP"):
        Tables(node="n0", vtep="nope", rng=random.Random(1))
    with pytest.raises(ValueError, match="node name"):
        Tables(node="", vtep="192.0.2.1", rng=random.Random(1))
    from gossip.tables.replica import TablesConfig

    with pytest.raises(ValueError, match="power of two"):
        TablesConfig(ipam_block=12)
    with pytest.raises(ValueError, match="VNI range"):
        TablesConfig(vni_min=0)


def test_persisted_state_roundtrips_through_plain_dicts() -> None:
    """What the agent writes to its state file (JSON) and reads back after a restart."""
    import dataclasses
    import json

    from gossip.tables.rows import endpoint_from_dict, network_from_dict

    t = _single()
    t.create_endpoint(1.0, "web", name="a")
    t.create_endpoint(1.0, "db", name="b")
    saved = json.dumps({
        "clock": t.clock,
        "endpoints": [dataclasses.asdict(e) for e in t.local_endpoints()],
        "networks": [dataclasses.asdict(n) for n in t.local_networks()],
    })
    data = json.loads(saved)
    eps = [endpoint_from_dict(d) for d in data["endpoints"]]
    nets = [network_from_dict(d) for d in data["networks"]]
    assert eps == t.local_endpoints() and nets == t.local_networks()
    fresh = Tables(node="n0", vtep="192.0.2.1", rng=random.Random(2))
    fresh.restore_local_endpoints(5.0, eps, nets, data["clock"])
    assert fresh.local_endpoints() == eps and fresh.local_networks() == nets
    assert fresh.clock > t.clock
    with pytest.raises(TableError, match="missing mac"):
        endpoint_from_dict({k: v for k, v in data["endpoints"][0].items() if k != "mac"})
    with pytest.raises(TableError, match="expected an object"):
        network_from_dict([1, 2])
    broken = dict(data["networks"][0], subnets=["10.1.0.1/24"])
    with pytest.raises(TableError, match="host bits"):
        fresh.restore_local_endpoints(6.0, [], [network_from_dict(broken)])
