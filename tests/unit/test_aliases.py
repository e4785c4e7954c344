"""Endpoint aliases (gossip/tables/aliases.py): checked, carried in a scoped extension row
that old readers skip, in force only with their endpoint, tombstoned with it."""

from __future__ import annotations

import msgpack
import pytest

from gossip.tables import aliases, extrows, framing
from gossip.tables.replica import Tables
from gossip.tables.rows import Endpoint, TableError
from tests.stateful.tablesnet import Net, cluster


def test_check_keeps_order_drops_case_duplicates_and_refuses_bad_names() -> None:
    assert aliases.check(["Web", "db", "web"]) == ("Web", "db")
    with pytest.raises(TableError, match="invalid alias name"):
        aliases.check(["ok", "no spaces"])
    with pytest.raises(TableError, match="too many aliases"):
        aliases.check([f"a{i}" for i in range(aliases.MAX_ALIASES + 1)])


def test_payload_round_trips_and_junk_decodes_to_none() -> None:
    assert aliases.decode_payload(aliases.payload(["a", "b"])) == ("a", "b")
    for junk in (None, [], [2, ["a"]], [1, "a"], [1, [1]], [1, ["bad name"]]):
        assert aliases.decode_payload(junk) is None


def _ep(ep_id: str, owner: str, net: str = "aa" * 32) -> Endpoint:
    return Endpoint(ep_id, "x", net, "10.0.0.2", None, "02:42:0a:00:00:02", owner, "192.0.2.1", 1)


def test_pick_needs_a_live_row_by_the_endpoints_owner_in_its_network() -> None:
    net, ep_id = "aa" * 32, "bb" * 32
    good = aliases.row(net, "n0", ep_id, 5, ["web"])
    assert aliases.pick([good], [_ep(ep_id, "n0")]) == {ep_id: ("web",)}
    assert aliases.pick([good], [_ep(ep_id, "n1")]) == {}  # another node cannot alias n0's endpoint
    assert aliases.pick([good], [_ep(ep_id, "n0", net="cc" * 32)]) == {}
    assert aliases.pick([good], []) == {}  # the endpoint is gone: so are its aliases
    assert aliases.pick([aliases.row(net, "n0", ep_id, 6, None, 100.0)], [_ep(ep_id, "n0")]) == {}


def _setup(n: int) -> tuple[Net, Endpoint]:
    net = cluster(n)
    net.call("n0", lambda t: t.create_network(net.now, "web", ["10.1.0.0/24"]))
    net.wait(lambda: all(x.tables.networks() for x in net.nodes.values()), timeout=60)
    for name in net.nodes:
        if name != "n0":  # every node takes part (the network's gossip reaches them)
            net.call(name, lambda t, name=name: t.create_endpoint(net.now, "web", name=f"c-{name}"))
    ep = net.call("n0", lambda t: t.create_endpoint(net.now, "web", name="api"))
    return net, ep


def _aliases(t: Tables) -> dict[str, tuple[str, ...]]:
    return t.extras.aliases(t.endpoints())


def test_aliases_reach_every_peer_and_go_with_the_endpoint() -> None:
    net, ep = _setup(4)
    got = net.call("n0", lambda t: t.extras.set_aliases(net.now, ep.id, ["db", "primary"]))
    assert got == ("db", "primary")
    net.wait(lambda: all(_aliases(x.tables).get(ep.id) == ("db", "primary") for x in net.nodes.values()),
             timeout=30)
    # replaced
    net.call("n0", lambda t: t.extras.set_aliases(net.now, "api", ["db"]))
    net.wait(lambda: all(_aliases(x.tables).get(ep.id) == ("db",) for x in net.nodes.values()), timeout=30)
    net.call("n0", lambda t: t.remove_endpoint(net.now, ep.id))
    net.wait(lambda: all(ep.id not in _aliases(x.tables) for x in net.nodes.values()), timeout=30)
    # the alias row itself is a tombstone everywhere that holds it
    net.wait(lambda: all(r.deleted for x in net.nodes.values() for r in x.tables.ext.rows.values()
                         if r.kind == aliases.KIND), timeout=30)


def test_an_alias_change_bumps_the_version_peers_watch() -> None:
    net, ep = _setup(2)
    t1 = net.nodes["n1"].tables
    before = t1.version
    net.call("n0", lambda t: t.extras.set_aliases(net.now, ep.id, ["db"]))
    net.wait(lambda: _aliases(t1).get(ep.id) == ("db",), timeout=30)
    assert t1.version != before


def test_withdrawing_aliases_writes_a_tombstone() -> None:
    net, ep = _setup(2)
    net.call("n0", lambda t: t.extras.set_aliases(net.now, ep.id, ["db"]))
    net.wait(lambda: _aliases(net.nodes["n1"].tables).get(ep.id) == ("db",), timeout=30)
    net.call("n0", lambda t: t.extras.set_aliases(net.now, ep.id, []))
    net.wait(lambda: ep.id not in _aliases(net.nodes["n1"].tables), timeout=30)


def test_only_local_endpoints_take_aliases() -> None:
    net, ep = _setup(2)
    with pytest.raises(TableError):
        net.nodes["n1"].tables.extras.set_aliases(net.now, ep.id, ["db"])
    with pytest.raises(TableError, match="invalid alias"):
        net.nodes["n0"].tables.extras.set_aliases(net.now, ep.id, ["-bad"])


def test_the_alias_row_rides_where_older_readers_skip_it() -> None:
    """NET_GOSSIP's rows (field [2]) stay endpoint rows only; the alias row is field [3]."""
    net, ep = _setup(2)
    t0 = net.nodes["n0"].tables
    row = aliases.row(ep.network, "n0", ep.id, 99, ["db"])
    data = framing.encode_net_gossip(ep.network, [], ext_encoded=[extrows.encode(row, net.now)])
    fields = msgpack.unpackb(data[1:], raw=False)
    assert fields[2] == [] and len(fields) == 4
    msg = framing.decode(data, net.now)
    assert isinstance(msg, framing.NetGossip) and msg.ext == (row,)
    # byte-identical with the msgpack-ready form, which release 0.1.0's decoder is shown to
    # skip (tests/unit/test_tables_protocol.py)
    assert data == framing.encode_net_gossip(ep.network, [], [extrows.encode_obj(row, net.now)])
    assert t0.sync.joined  # the node takes part: it would keep the row


def test_aliases_of_a_node_that_restarts_without_the_endpoint_are_tidied() -> None:
    net, ep = _setup(2)
    t0 = net.nodes["n0"].tables
    net.call("n0", lambda t: t.extras.set_aliases(net.now, ep.id, ["db"]))
    # the endpoint goes without remove_endpoint's hook (as after a restore that dropped it)
    del t0._local[ep.id]
    t0.extras.tidy_aliases(net.now)
    assert t0.extras.own_aliases(ep) == ()
