"""The versioned tables protocol (issue 19 item 1): ranges, the common version, and rows of
kinds this build does not know being kept and relayed.

A "newer node" is played by injecting the bytes a later protocol would send (a row of
kind 9) into one replica; the others must carry it on unchanged. Release 0.1.0's own
decoder is run on this build's messages (its source unpacked from git, in a subprocess)
to show that the fields added by protocol 2 are invisible to it.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import msgpack
import pytest

from gossip.errors import DecodeError
from gossip.serf.payloads import encode_tags
from gossip.tables import extrows, framing, protocol
from gossip.tables.agenttag import AGENT_TAG, with_agent_tag
from gossip.tables.rows import NetworkRow, encode_row
from tests.stateful.tablesnet import cluster

REPO = Path(__file__).resolve().parents[2]
RELEASE_0_1_0 = "8e6c42b6a1fce85a0729bf3a08b148926b466fad"
NET = "cd" * 32


def _meta(**tags: str) -> bytes:
    return encode_tags(tags)


# ------------------------------------------------------------------ ranges


@pytest.mark.parametrize(("value", "expected"), [
    ("1", (1, 1)), ("1-2", (1, 2)), ("2-7", (2, 7)), ("3-2", None), ("0", None), ("", None),
    ("x", None), ("1-", None), ("-2", None), ("1-2-3", None), ("9999", None), (" 1", None),
])
def test_parse_range(value: str, expected: tuple[int, int] | None) -> None:
    assert protocol.parse_range(value) == expected


def test_this_build_advertises_its_range_in_the_agent_tag() -> None:
    tags = msgpack.unpackb(with_agent_tag(b"")[1:], raw=False)
    assert tags == {AGENT_TAG: protocol.tag_value()} == {AGENT_TAG: "1-2"}
    assert protocol.member_range(with_agent_tag(b"")) == (protocol.PROTOCOL_MIN, protocol.PROTOCOL_MAX)


def test_member_ranges_of_releases_legacy_agents_and_serf() -> None:
    assert protocol.member_range(_meta(**{AGENT_TAG: "1"})) == (1, 1)  # release 0.1.0
    assert protocol.member_range(_meta(role="overlay-agent")) == (1, 1)  # before the tag
    assert protocol.member_range(_meta(role="web")) is None  # a serf agent
    assert protocol.member_range(b"") is None
    assert protocol.member_range(_meta(**{AGENT_TAG: "bogus"})) is None


def test_common_version_is_what_every_agent_speaks() -> None:
    v2, v1 = _meta(**{AGENT_TAG: "1-2"}), _meta(**{AGENT_TAG: "1"})
    serf = _meta(role="db")
    assert protocol.common_version([v2, v2, serf]) == 2
    assert protocol.common_version([v2, v1]) == 1  # one old agent holds the cluster at 1
    assert protocol.common_version([_meta(**{AGENT_TAG: "3-4"})]) == 0  # no overlap with 1-2
    assert protocol.usable("extension-rows", 2) and not protocol.usable("extension-rows", 1)


def test_replica_reports_the_cluster_version_and_one_old_member_lowers_it() -> None:
    net = cluster(3)
    assert {net.nodes[n].tables.protocol_version() for n in net.nodes} == {2}
    old = net.add("old")
    old.tables.meta = _meta(**{AGENT_TAG: "1"})  # as release 0.1.0 advertises itself
    net.perform("old", old.swim.set_meta(net.now, old.tables.meta))
    net.perform("old", old.swim.join(net.now, [net.nodes["n0"].addr]))
    net.wait(lambda: all(net.nodes[n].tables.protocol_version() == 1 for n in ("n0", "n1", "n2")), 30)


# ------------------------------------------------------- extension rows


def _ext_obj(writer: str, ident: int, payload: Any, kind: int = 9, lamport: int = 50) -> list[Any]:
    return [kind, lamport, writer, ident.to_bytes(32, "big"), False, payload]


def test_extension_row_round_trip_keeps_unknown_payload_and_key_fields() -> None:
    obj = [*_ext_obj("n1", 7, ["10.0.0.1", [1, 2], b"\xff"]), 3, b"\x01"]
    row = extrows.decode(obj, now=100.0, net=NET)
    assert (row.kind, row.writer, row.net, row.extra) == (9, "n1", NET, (3, b"\x01"))
    assert msgpack.unpackb(extrows.encode(row, 100.0), raw=False) == obj
    tomb = extrows.decode([9, 51, "n1", (7).to_bytes(32, "big"), True, 600], now=100.0)
    assert tomb.expires == 700.0 and extrows.encode_obj(tomb, 400.0)[5] == 300


@pytest.mark.parametrize("obj", [
    [3, 1, "n1", b"\0" * 32, False, []],  # a known kind is not an extension
    [9, -1, "n1", b"\0" * 32, False, []],
    [9, 1, "", b"\0" * 32, False, []],
    [9, 1, "n1", b"\0" * 31, False, []],
    [9, 1, "n1", b"\0" * 32, 0, []],
    [9, 1, "n1", b"\0" * 32, True, -5],
    [9, 1, "n1", b"\0" * 32, False, "x" * 5000],  # over MAX_ROW_BYTES
    [9, 1, "n1", b"\0" * 32, False, {"a": 1}],  # no maps: release 0.1.0 refuses them
    [9, 1, "n1", b"\0" * 32, False, [], *range(9)],  # too many key fields
    "not a row",
])
def test_malformed_extension_rows_are_refused(obj: Any) -> None:
    with pytest.raises(DecodeError):
        extrows.decode(obj, now=0.0)


def test_store_bounds_new_keys_per_writer_and_in_all() -> None:
    store = extrows.ExtensionStore(max_rows=5, max_per_writer=3)
    rows = [extrows.decode(_ext_obj(w, i, i), 0.0) for w in ("a", "b") for i in range(4)]
    stored = [store.merge(r) for r in rows]
    assert stored == [True, True, True, False, True, True, False, False]
    assert len(store) == 5 and store.dropped == 3
    newer = extrows.decode(_ext_obj("a", 0, "v2", lamport=51), 0.0)
    assert store.merge(newer)  # a held key still merges at the bound
    assert not store.merge(extrows.decode(_ext_obj("a", 0, "old", lamport=49), 0.0))
    assert store.reap(0.0, lambda w: w == "b", ()) == 2 and len(store) == 3


def test_unknown_row_kind_is_relayed_cluster_wide_and_survives_push_pull() -> None:
    net = cluster(3)
    row = _ext_obj("n1", 1, ["future", True])
    # n0 hears it from a newer node; n2 gets it only through n0's relay.
    effects = net.nodes["n0"].tables.on_user_message(net.now, bytes([extrows.EXT_EVENT]) + msgpack.packb(row))
    net.perform("n0", effects)
    net.wait(lambda: all(len(net.nodes[n].tables.ext) == 1 for n in ("n1", "n2")), 10)
    held = net.nodes["n2"].tables.ext.cluster_rows()[0]
    assert extrows.encode_obj(held, net.now) == row
    # A node that joins after the relays' retransmissions are spent gets it in the
    # push/pull state of its join.
    net.run_for(30)
    assert not any(net.nodes[n].tables.has_broadcasts() for n in ("n0", "n1", "n2"))
    late = net.add("late")
    net.perform("late", late.swim.join(net.now, [net.nodes["n2"].addr]))
    net.wait(lambda: len(late.tables.ext) == 1, 30)


def test_unknown_scoped_rows_ride_bulk_sync_to_the_networks_peers() -> None:
    net = cluster(3)
    netw = net.call("n0", lambda t: t.create_network(net.now, "blue", ["10.1.0.0/24"]))
    net.wait(lambda: bool(net.nodes["n1"].tables.networks()), 10)
    for n in ("n0", "n1"):
        net.call(n, lambda t: t.create_endpoint(net.now, "blue"))
    net.wait(lambda: len(net.nodes["n1"].tables.endpoints("blue")) == 2, 10)
    payload = framing.encode_net_gossip(netw.id, [], [_ext_obj("n0", 5, "scoped")])
    net.perform("n0", net.nodes["n0"].tables.on_user_message(net.now, payload))
    assert len(net.nodes["n0"].tables.ext.scoped_rows(netw.id)) == 1
    net.wait(lambda: len(net.nodes["n1"].tables.ext.scoped_rows(netw.id)) == 1, 60)
    # n2 does not take part in the network: it neither keeps nor gets the row.
    assert len(net.nodes["n2"].tables.ext) == 0


def _release_decoder_script() -> str:
    return (
        "import json, sys\n"
        "from gossip import netgossip, ipsecrows\n"
        "out = []\n"
        "for hexed in json.loads(sys.stdin.read()):\n"
        "    data = bytes.fromhex(hexed)\n"
        "    msg = netgossip.decode(data, 0.0)\n"
        "    rows = getattr(msg, 'rows', None)\n"
        "    keys = ipsecrows.rows_in_state(data)\n"
        "    out.append([type(msg).__name__, None if rows is None else len(rows), len(keys)])\n"
        "print(json.dumps(out))\n"
    )


def test_release_0_1_0_reads_protocol_2_messages_and_skips_the_additions(tmp_path: Path) -> None:
    probe = subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{RELEASE_0_1_0}^{{commit}}"],
                           capture_output=True)
    if probe.returncode != 0:
        pytest.fail(f"release 0.1.0 (commit {RELEASE_0_1_0}) is not in this clone: clone with history")
    tar = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", RELEASE_0_1_0, "gossip", "crypto"],
                         capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        archive.extractall(tmp_path, filter="data")
    ext = [_ext_obj("n1", 1, "x"), _ext_obj("n2", 2, [1, [2, b"\x00"]], kind=40)]
    net_row = encode_row(NetworkRow(NET, 3, "n1", True, None, 60.0), 0.0)
    messages = [
        framing.encode_state([net_row], [[], ext]),
        framing.encode_net_gossip(NET, [], ext),
        framing.encode_bulk_sync(NET, "n1", True, [], ext),
        bytes([extrows.EXT_EVENT]) + msgpack.packb(ext[0]),
    ]
    r = subprocess.run([sys.executable, "-c", _release_decoder_script()], cwd=tmp_path,
                       env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
                       input=json.dumps([m.hex() for m in messages]), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [["State", 1, 0], ["NetGossip", 0, 0], ["BulkSync", 0, 0], ["NoneType", None, 0]]
