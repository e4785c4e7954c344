"""Row codec, message framing and the LWW order of the replicated tables."""

from __future__ import annotations

import contextlib
import itertools
import math

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gossip.errors import DecodeError
from gossip.tables import framing
from gossip.tables.rows import (
    AnyRow,
    ClaimRow,
    Endpoint,
    EndpointRow,
    MemberRow,
    Network,
    NetworkRow,
    decode_row,
    encode_row,
    newer,
)
from gossip.tables.store import TableStore

NET = "ab" * 32
EP = "cd" * 32


def _network(**kw: object) -> Network:
    base = dict(id=NET, name="web", subnets=("10.1.0.0/24", "fd00:1::/64"), vni=4242,
                encrypted=True, mtu=1450, created_at=1700000000.5, creator="n1", created=3)
    base.update(kw)
    return Network(**base)  # type: ignore[arg-type]


def _endpoint(**kw: object) -> Endpoint:
    base = dict(id=EP, name="ep-1", network=NET, ipv4="10.1.0.5", ipv6="fd00:1::5",
                mac="02:42:0a:01:00:05", owner="n1", vtep="192.0.2.1", created=7)
    base.update(kw)
    return Endpoint(**base)  # type: ignore[arg-type]


def _roundtrip(row: AnyRow, net: str | None = None) -> AnyRow:
    return decode_row(msgpack.unpackb(encode_row(row, 100.0), raw=False), 100.0, net)


def test_every_row_kind_roundtrips() -> None:
    rows: list[AnyRow] = [
        NetworkRow(NET, 5, "n2", False, _network()),
        MemberRow(NET, "n1", 6, False, "192.0.2.1"),
        MemberRow(NET, "n1", 6, False, "2001:db8::1"),
        ClaimRow(NET, 4, 63, "n1", 8, False),
        ClaimRow(NET, 6, (1 << 60) - 1, "n1", 8, False),
    ]
    rows.append(NetworkRow(NET, 5, "n2", False, _network(mtu=None, subnets=("10.1.0.0/24",))))
    for row in rows:
        assert _roundtrip(row) == row
    ep = EndpointRow(NET, "n1", EP, 9, False, _endpoint(), since=100.0)
    assert _roundtrip(ep, NET) == ep
    v6only = EndpointRow(NET, "n1", EP, 9, False, _endpoint(ipv4=None), since=100.0)
    assert _roundtrip(v6only, NET) == v6only


def test_tombstones_carry_their_residual_lifetime() -> None:
    row = EndpointRow(NET, "n1", EP, 9, True, None, expires=130.2, since=0.0)
    back = _roundtrip(row, NET)
    assert isinstance(back, EndpointRow) and back.deleted and back.value is None
    assert back.expires == 100.0 + 31  # ceil(130.2 - 100): a relay never extends it
    net_tomb = NetworkRow(NET, 5, "n2", True, _network(), expires=160.0)
    back_net = _roundtrip(net_tomb)
    assert isinstance(back_net, NetworkRow) and back_net.value is None and back_net.expires == 160.0


def test_endpoint_rows_need_their_network_context_and_cluster_rows_refuse_one() -> None:
    ep = EndpointRow(NET, "n1", EP, 9, False, _endpoint(), since=100.0)
    with pytest.raises(DecodeError):
        _roundtrip(ep)
    with pytest.raises(DecodeError):
        _roundtrip(MemberRow(NET, "n1", 6, False, "192.0.2.1"), NET)


def test_rows_are_compact() -> None:
    ep = EndpointRow(NET, "n1", EP, 9, False, _endpoint(), since=0.0)
    assert len(encode_row(ep, 0.0)) < 90
    assert len(encode_row(NetworkRow(NET, 5, "n2", False, _network()), 0.0)) < 120


@pytest.mark.parametrize(
    "obj",
    [
        None, [], [9, 1, "n", b"x" * 32, False, 0], [0, -1, "n", b"x" * 32, False, 0],
        [1, 1, "", b"x" * 32, False, b"\x01\x02\x03\x04"], [1, 1, "n", b"x" * 31, False, b"\x01" * 4],
        [1, 1, "n", b"x" * 32, "yes", b"\x01" * 4], [1, 1, "n", b"x" * 32, False, b"\x01" * 5],
        [1, 1, "n", b"x" * 32, True, -5], [2, 1, "n", b"x" * 32, False, 0, 5, 1],
        [0, 1, "n", b"x" * 32, False, ["web", ["10.0.0.1/24"], 5, False, 1450, 0.0, "n", 1]],
        [0, 1, "n", b"x" * 32, False, ["web", ["10.0.0.0/24"], 0, False, 1450, 0.0, "n", 1]],
        [0, 1, "n", b"x" * 32, False, ["b d", ["10.0.0.0/24"], 5, False, 1450, 0.0, "n", 1]],
        [0, 1, "n", b"x" * 32, False, ["web", ["10.0.0.0/24"], 5, False, 1450, float("nan"), "n", 1]],
    ],
)
def test_malformed_rows_raise_decode_error(obj: object) -> None:
    with pytest.raises(DecodeError):
        decode_row(obj, 0.0)


@given(st.binary(max_size=300))
@settings(max_examples=300)
def test_arbitrary_payloads_raise_only_decode_error(data: bytes) -> None:
    for kind in (0x90, 0x91, 0x92, 0x93):
        with contextlib.suppress(DecodeError):
            framing.decode(bytes([kind]) + data, 0.0)


def test_messages_roundtrip() -> None:
    ep = EndpointRow(NET, "n1", EP, 9, False, _endpoint(), since=5.0)
    items = [encode_row(ep, 5.0)]
    gossip = framing.decode(framing.encode_net_gossip(NET, items), 5.0)
    assert gossip == framing.NetGossip(NET, (ep,))
    bulk = framing.decode(framing.encode_bulk_sync(NET, "n1", True, items * 20), 5.0)
    assert bulk == framing.BulkSync(NET, "n1", True, (ep,) * 20)
    member = MemberRow(NET, "n1", 6, False, "192.0.2.1")
    state = framing.decode(framing.encode_state([encode_row(member, 5.0)] * 17), 5.0)
    assert state == framing.State((member,) * 17)
    assert framing.decode(b"\xfe\x00", 0.0) is None  # a private type that is not ours


# --------------------------------------------------------------- LWW order


def _versions() -> list[EndpointRow]:
    """Versions of one key: live/deleted at several times, two contents at one time."""
    out = []
    for lamport in (3, 5, 5, 8):
        out.append(EndpointRow(NET, "n1", EP, lamport, False, _endpoint(ipv4=f"10.1.0.{lamport}")))
    out.append(EndpointRow(NET, "n1", EP, 5, False, _endpoint(ipv4="10.1.0.99")))
    out.append(EndpointRow(NET, "n1", EP, 5, True, None, expires=50.0))
    out.append(EndpointRow(NET, "n1", EP, 9, True, None, expires=20.0))
    return out


def test_newer_is_a_strict_total_order_on_distinct_versions() -> None:
    vs = _versions()
    for a, b in itertools.permutations(vs, 2):
        if a == b:
            continue
        assert newer(a, b) != newer(b, a), (a, b)
    for a in vs:
        assert not newer(a, a)


def test_tombstone_wins_a_tie_and_a_higher_time_wins_everything() -> None:
    live = EndpointRow(NET, "n1", EP, 5, False, _endpoint())
    dead = EndpointRow(NET, "n1", EP, 5, True, None)
    later = EndpointRow(NET, "n1", EP, 6, False, _endpoint())
    assert newer(dead, live) and newer(later, dead)


@given(st.permutations(range(7)), st.lists(st.integers(0, 6), max_size=6))
def test_merge_is_order_independent_and_idempotent(order: list[int], dups: list[int]) -> None:
    """The join-semilattice argument: any delivery order, with duplicates, converges."""
    vs = _versions()
    store = TableStore()
    store.endpoints[NET] = {}
    for i in [*order, *dups]:
        v = vs[i]
        store.merge(EndpointRow(v.net, v.owner, v.id, v.lamport, v.deleted, v.value, v.expires))
    final = store.endpoints[NET][("n1", EP)]
    best = vs[0]
    for v in vs[1:]:
        if newer(v, best):
            best = v
    assert (final.lamport, final.deleted, final.value) == (best.lamport, best.deleted, best.value)
    assert final.expires == 20.0


def test_an_equal_tombstone_keeps_the_earliest_expiry() -> None:
    store = TableStore()
    store.merge(NetworkRow(NET, 4, "n1", True, None, expires=90.0))
    store.merge(NetworkRow(NET, 4, "n1", True, None, expires=70.0))
    store.merge(NetworkRow(NET, 4, "n1", True, None, expires=80.0))
    assert store.networks[NET].expires == 70.0


def test_a_leave_obsoletes_the_owners_older_endpoint_rows() -> None:
    store = TableStore()
    store.endpoints[NET] = {}
    store.merge(MemberRow(NET, "n1", 2, False, "192.0.2.1"))
    store.merge(EndpointRow(NET, "n1", EP, 3, False, _endpoint()))
    store.merge(EndpointRow(NET, "n2", EP, 3, False, _endpoint(owner="n2")))
    store.merge(MemberRow(NET, "n1", 5, True, "", expires=math.inf))
    assert list(store.endpoints[NET]) == [("n2", EP)]
    # A late copy from before the leave is refused; a row of the next life is kept.
    assert not store.merge(EndpointRow(NET, "n1", EP, 4, False, _endpoint()))
    assert store.merge(EndpointRow(NET, "n1", "ef" * 32, 7, False, _endpoint(id="ef" * 32)))
