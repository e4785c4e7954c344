"""Network options (``gossip.tables.netopts``): operator input, the kind-4 row, IPAM with
ranges, gateways and aux addresses, several subnets per family, --allow-overlap, the
underlay check, and the protocol gate for clusters with release-0.1.0 agents."""

from __future__ import annotations

import io
import ipaddress
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import msgpack
import pytest

from gossip.serf.payloads import encode_tags
from gossip.tables import extrows, framing, hostaccess, netopts
from gossip.tables.agenttag import AGENT_TAG
from gossip.tables.replica import Tables
from gossip.tables.rows import IpamPool, NetworkOptions, TableError, network_from_dict
from tests.stateful.tablesnet import cluster


def test_plain_input_gives_no_options_and_canonical_subnets() -> None:
    assert netopts.parse_options(["fd00::/64", "10.0.0.0/24"]) == (("10.0.0.0/24", "fd00::/64"), None)


def test_options_keep_every_subnet_and_attach_ranges_gateways_and_aux_to_their_subnet() -> None:
    base, opts = netopts.parse_options(
        ["10.1.0.0/24", "10.2.0.0/24", "fd00::/64"], ["10.2.0.128/25"], ["10.1.0.254"],
        {"printer": "10.2.0.5"}, labels={"team": "a"}, options={"com.example.x": "1"})
    assert base == ("10.1.0.0/24", "fd00::/64")
    assert opts is not None
    assert opts.pools == (IpamPool("10.1.0.0/24", None, "10.1.0.254", ()),
                          IpamPool("10.2.0.0/24", "10.2.0.128/25", None, (("printer", "10.2.0.5"),)),
                          IpamPool("fd00::/64", None, None, ()))
    assert opts.labels == (("team", "a"),) and opts.options == (("com.example.x", "1"),)


@pytest.mark.parametrize(("kw", "message"), [
    ({"subnets": ["10.0.0.0/24", "10.0.0.128/25"]}, "overlap"),
    ({"ip_ranges": ["10.9.0.0/28"]}, "in none of the network's subnets"),
    ({"ip_ranges": ["10.0.0.0/28", "10.0.0.16/28"]}, "more than one IP range"),
    ({"gateways": ["10.0.0.0"]}, "network or broadcast address"),
    ({"gateways": ["10.0.1.1"]}, "in none"),
    ({"aux": {"a": "10.0.0.1"}}, "already the gateway"),
    ({"aux": {"a": "10.0.0.9", "b": "10.0.0.9"}}, "another aux address"),
    ({"labels": {"bad key": "x"}}, "invalid label key"),
    ({"options": [("k", "a"), ("k", "b")]}, "given twice"),
])
def test_bad_options_are_refused_with_one_line(kw: dict[str, object], message: str) -> None:
    subnets = kw.pop("subnets", ["10.0.0.0/24"])
    with pytest.raises(TableError, match=message) as info:
        netopts.parse_options(subnets, **kw)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


def test_the_payload_round_trips_and_junk_decodes_to_none() -> None:
    _, opts = netopts.parse_options(["10.0.0.0/24"], ["10.0.0.64/26"], internal=True, labels={"a": "b"})
    assert opts is not None
    body = msgpack.unpackb(msgpack.packb(netopts.payload(opts)), strict_map_key=True)
    assert netopts.decode_payload(body) == opts
    for junk in (None, [], [2, [], False, False, [], []], [1, [["nope", None, None, []]], False, False, [], []],
                 [1, [["10.0.0.0/24", None, None, []]], "yes", False, [], []]):
        assert netopts.decode_payload(junk) is None


def test_the_underlay_check_names_the_clash() -> None:
    assert netopts.underlay_clash(["10.0.0.0/24"], ["192.0.2.0/24", "0.0.0.0/0"]) is None
    assert netopts.underlay_clash(["192.0.2.128/25"], ["192.0.2.0/24"]) == \
        "subnet 192.0.2.128/25 overlaps this host's underlay (192.0.2.0/24)"


def _create(net, node: str, name: str, subnets: list[str], **kw: object):  # type: ignore[no-untyped-def]
    base, opts = netopts.parse_options(subnets, **kw)  # type: ignore[arg-type]
    return net.call(node, lambda t: t.create_network(net.now, name, list(base), options=opts))


def test_options_reach_every_node_and_inspect_sees_them() -> None:
    net = cluster(3)
    created = _create(net, "n0", "web", ["10.1.0.0/24", "10.2.0.0/24"], internal=True, allow_overlap=True,
                      labels={"team": "a"})
    net.wait(lambda: all(n.tables.networks() and n.tables.networks()[0].options == created.options
                         for n in net.nodes.values()), timeout=60)
    seen = net.nodes["n2"].tables.find_network("web")
    assert seen.internal and seen.all_subnets == ("10.1.0.0/24", "10.2.0.0/24")
    assert seen.subnets == ("10.1.0.0/24",)  # what a 0.1.0 reader sees in the network row


def test_ipam_allocates_only_inside_the_range_and_skips_gateway_and_aux() -> None:
    net = cluster(2)
    _create(net, "n0", "web", ["10.1.0.0/24"], ip_ranges=["10.1.0.0/29"], gateways=["10.1.0.3"],
            aux={"dev": "10.1.0.2"})
    net.wait(lambda: all(n.tables.networks() and n.tables.networks()[0].options for n in net.nodes.values()),
             timeout=60)
    got = [net.call("n1", lambda t: t.create_endpoint(net.now, "web")).ipv4 for _ in range(4)]
    # .0 network, .2 aux, .3 gateway: .1 (the default gateway is not reserved then), .4-.7
    assert got == ["10.1.0.1", "10.1.0.4", "10.1.0.5", "10.1.0.6"]
    for addr, why in (("10.1.0.3", "gateway"), ("10.1.0.2", "aux address 'dev'")):
        t1 = net.nodes["n1"].tables
        with pytest.raises(TableError, match=why):
            t1.create_endpoint(net.now, "web", ipv4=addr)
    # an explicit address outside the range but inside the subnet is fine (like Docker)
    assert net.call("n1", lambda t: t.create_endpoint(net.now, "web", ipv4="10.1.0.200")).ipv4 == "10.1.0.200"


def test_a_full_first_subnet_continues_in_the_second() -> None:
    net = cluster(1)
    _create(net, "n0", "web", ["10.1.0.0/30", "10.2.0.0/30"])
    got = [net.call("n0", lambda t: t.create_endpoint(net.now, "web")).ipv4 for _ in range(2)]
    assert got == ["10.1.0.2", "10.2.0.2"]
    with pytest.raises(TableError, match="no free address"):
        net.call("n0", lambda t: t.create_endpoint(net.now, "web"))
    ep = net.nodes["n0"].tables.endpoints()[1]
    assert net.nodes["n0"].tables.find_network("web").subnet_of(ep.ipv4 or "") == "10.2.0.0/30"


def test_overlap_needs_both_networks_to_allow_it() -> None:
    net = cluster(2)
    _create(net, "n0", "a", ["10.1.0.0/24"])
    net.wait(lambda: len(net.nodes["n1"].tables.networks()) == 1, timeout=60)
    with pytest.raises(TableError, match="does not allow overlapping"):
        _create(net, "n1", "b", ["10.1.0.0/24"], allow_overlap=True)
    _create(net, "n0", "c", ["10.7.0.0/24"], allow_overlap=True)
    net.wait(lambda: all(len(n.tables.networks()) == 2 and all(
        x.options or x.name == "a" for x in n.tables.networks()) for n in net.nodes.values()), timeout=60)
    with pytest.raises(TableError, match="both networks need --allow-overlap"):
        _create(net, "n1", "d", ["10.7.0.0/25"])
    _create(net, "n1", "d", ["10.7.0.0/25"], allow_overlap=True)
    net.wait(lambda: all(len(n.tables.networks()) == 3 for n in net.nodes.values()), timeout=60)
    assert not any(n.tables.conflicts() for n in net.nodes.values())


def test_a_subnet_on_the_underlay_is_refused() -> None:
    net = cluster(1)
    with pytest.raises(TableError, match="overlaps this host's underlay"):
        net.call("n0", lambda t: t.create_network(net.now, "a", ["192.0.2.0/25"], underlay=["192.0.2.1/24"]))
    assert net.nodes["n0"].tables.networks() == []


def test_options_are_refused_while_a_release_0_1_0_agent_is_up() -> None:
    net = cluster(2)
    old = net.nodes["n1"]
    old.tables.meta = encode_tags({AGENT_TAG: "1"})  # as release 0.1.0 advertises itself
    net.perform("n1", old.swim.set_meta(net.now, old.tables.meta))
    net.wait(lambda: net.nodes["n0"].tables.protocol_version() == 1, timeout=60)
    with pytest.raises(TableError, match="need every agent at tables protocol 2"):
        _create(net, "n0", "x", ["10.1.0.0/24"], internal=True)
    _create(net, "n0", "y", ["10.1.0.0/24"])  # a plain network still works


def test_the_option_row_travels_outside_the_rows_0_1_0_reads() -> None:
    net = cluster(1)
    _create(net, "n0", "web", ["10.1.0.0/24"], internal=True)
    t = net.nodes["n0"].tables
    rows = [r for r in t.ext.cluster_rows() if r.kind == netopts.KIND]
    assert len(rows) == 1 and rows[0].writer == "n0"
    state = t.local_state(join=False)
    msg = framing.decode(state, net.now)
    assert isinstance(msg, framing.State)
    assert all(not extrows.is_extension(r) for r in msg.rows)  # network rows stay 0.1.0's shape


def test_options_outlive_the_creator_through_the_participants_copies() -> None:
    net = cluster(3)
    _create(net, "n0", "web", ["10.1.0.0/24"], internal=True)
    net.wait(lambda: all(n.tables.networks() and n.tables.networks()[0].internal for n in net.nodes.values()),
             timeout=60)
    net.call("n1", lambda t: t.create_endpoint(net.now, "web", name="a"))
    t1 = net.nodes["n1"].tables
    assert any(r.writer == "n1" and r.kind == netopts.KIND for r in t1.ext.cluster_rows())
    net.wait(lambda: any(r.writer == "n1" and r.kind == netopts.KIND
                         for r in net.nodes["n2"].tables.ext.cluster_rows()), timeout=60)
    # the creator's copy gone: n2 still reads n1's
    for key in [k for k, r in net.nodes["n2"].tables.ext.rows.items() if r.writer == "n0"]:
        net.nodes["n2"].tables.ext._remove(key)
    net.nodes["n2"].tables.extras.refresh_opts()
    assert net.nodes["n2"].tables.find_network("web").internal


def test_removing_the_network_tombstones_the_copies() -> None:
    net = cluster(2)
    _create(net, "n0", "web", ["10.1.0.0/24"], internal=True)
    net.wait(lambda: all(n.tables.networks() for n in net.nodes.values()), timeout=60)
    net.call("n0", lambda t: t.remove_network(net.now, "web"))
    net.wait(lambda: all(all(r.deleted for r in n.tables.ext.cluster_rows()) for n in net.nodes.values()),
             timeout=60)


def test_persisted_networks_keep_their_options() -> None:
    import dataclasses
    net = cluster(1)
    n = _create(net, "n0", "web", ["10.1.0.0/24", "10.3.0.0/24"], aux={"x": "10.3.0.9"}, labels={"k": "v"})
    back = network_from_dict(dataclasses.asdict(n))
    assert back == n and isinstance(back.options, NetworkOptions)
    old = {k: v for k, v in dataclasses.asdict(n).items() if k != "options"}
    assert network_from_dict(old).options is None
    assert ipaddress.ip_network(back.all_subnets[1]).prefixlen == 24


def test_host_access_publishes_one_host_endpoint_per_host_and_withdraws_it() -> None:
    net = cluster(2)
    _create(net, "n0", "web", ["10.1.0.0/24"], host_access=True)
    net.wait(lambda: all(n.tables.networks() and n.tables.networks()[0].options for n in net.nodes.values()),
             timeout=60)
    a = net.call("n0", lambda t: t.create_endpoint(net.now, "web", name="a"))
    net.run_for(2)  # n0's claims known (the two nodes' hashed start blocks collide here)
    net.call("n1", lambda t: t.create_endpoint(net.now, "web", name="b"))
    t0, t1 = net.nodes["n0"].tables, net.nodes["n1"].tables
    h0 = t0.host_endpoint(a.network)
    assert h0 is not None and h0.name == "host-n0" and h0.ipv4 not in (a.ipv4, "10.1.0.1")
    assert h0.mac.startswith("0a:") and h0.id == hostaccess.endpoint_id(a.network, "n0")
    assert [e.name for e in t0.local_endpoints()] == ["a"]  # no veth, not persisted
    net.wait(lambda: {e.name for e in t1.endpoints()} == {"a", "b", "host-n0"}, timeout=60)
    assert {e.name for e in t0.endpoints()} == {"a", "b", "host-n1"}  # a node does not show its own
    net.call("n0", lambda t: t.remove_endpoint(net.now, "a"))
    assert t0.host_endpoint(a.network) is None
    net.wait(lambda: {e.name for e in t1.endpoints()} == {"b"}, timeout=60)
    for n in net.nodes.values():
        n.tables.check_invariants()


def test_without_host_access_no_host_endpoint() -> None:
    net = cluster(1)
    _create(net, "n0", "web", ["10.1.0.0/24"], labels={"a": "b"})
    ep = net.call("n0", lambda t: t.create_endpoint(net.now, "web"))
    assert net.nodes["n0"].tables.host_endpoint(ep.network) is None


def test_release_0_1_0_reads_the_state_of_a_node_with_options(tmp_path: Path) -> None:
    """The push/pull state of a node holding a network with options, and the piggybacked
    options row, decode with release 0.1.0's own decoder: the network row as usual, the
    options row skipped (it never sees kind 4)."""
    from tests.unit.test_tables_protocol import RELEASE_0_1_0, REPO, _release_decoder_script
    tar = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", RELEASE_0_1_0, "gossip", "crypto"],
                         capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        archive.extractall(tmp_path, filter="data")
    net = cluster(1)
    _create(net, "n0", "web", ["10.1.0.0/24", "10.2.0.0/24", "fd00::/64"], internal=True, aux={"a": "10.1.0.9"})
    t = net.nodes["n0"].tables
    row = next(r for r in t.ext.cluster_rows() if r.kind == netopts.KIND)
    messages = [t.local_state(join=False), extrows.encode_event(row, net.now)]
    r = subprocess.run([sys.executable, "-c", _release_decoder_script()], cwd=tmp_path,
                       env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
                       input=json.dumps([m.hex() for m in messages]), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [["State", 1, 0], ["NoneType", None, 0]]


def test_concurrent_networks_clash_on_an_extra_subnet_and_every_node_picks_one_winner() -> None:
    """Item 4 (loose end): created on both sides of a partition, a network's second subnet
    overlaps the other network's only subnet; after the heal every node keeps the earlier
    one and reports a network-subnet conflict naming the contested subnet."""
    net = cluster(2)
    net.partition([["n0"], ["n1"]])
    a = _create(net, "n0", "wide", ["10.1.0.0/24", "10.2.0.0/24"])
    b = _create(net, "n1", "narrow", ["10.2.0.0/24"])
    net.heal()
    winner = min((a, b), key=lambda n: (n.created, n.creator, n.id))
    loser = b if winner is a else a

    def settled(t: Tables) -> bool:
        names = [n.name for n in t.networks()]
        return names == [winner.name] and any(c.kind == "network-subnet" and c.loser == loser.id
                                              for c in t.conflicts())

    net.wait(lambda: all(settled(n.tables) for n in net.nodes.values()), timeout=120)
    c = next(c for c in net.nodes["n0"].tables.conflicts() if c.loser == loser.id)
    assert c.value == "10.2.0.0/24", c
