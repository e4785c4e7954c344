"""The crash storm's fast paths (issue 15 item 3) give exactly what the plain code gives."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from gossip.antientropy import _raw_forms
from gossip.errors import DecodeError
from gossip.members import ip_text
from gossip.wire import codec as wire
from gossip.wire.messages import Dead, Nack, Suspect

_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=20)


@given(st.booleans(), st.integers(0, 0xFFFFFFFF), _names, _names)
def test_memoised_accusations_encode_as_the_messages(suspect: bool, inc: int, node: str, from_: str) -> None:
    msg = Suspect(inc, node, from_) if suspect else Dead(inc, node, from_)
    assert wire.encode_accusation(suspect, inc, node, from_) == wire.encode(msg)
    assert wire.encode_accusation(suspect, inc, node, from_) == wire.encode(msg)  # memoised


def test_raw_forms_are_exactly_the_addresses_that_read_as_the_text() -> None:
    candidates = [
        ipaddress.ip_address(a).packed
        for a in ("10.0.0.1", "10.0.0.2", "::ffff:10.0.0.1", "::ffff:10.0.0.2", "fe80::1", "::1", "::a00:1")
    ]
    for text in ("10.0.0.1", "fe80::1", "::ffff:10.0.0.1", "FE80::1", "010.0.0.1", "nonsense", "::1"):
        want = sorted(raw for raw in candidates if ip_text(raw) == text)
        got = sorted(raw for raw in candidates if raw in _raw_forms(text))
        assert got == want, text


def test_a_repeated_datagram_is_the_same_bytes_and_flags_still_count() -> None:
    parts = [wire.encode(Nack(i)) for i in range(5)]
    first = wire.encode_packet(parts, compress=True, crc=False, keyring=None)
    assert wire.encode_packet(list(parts), compress=True, crc=False, keyring=None) == first
    with_crc = wire.encode_packet(parts, compress=True, crc=True, keyring=None)
    assert with_crc != first and with_crc.endswith(first) and with_crc[0] == 12
    other = wire.encode_packet(parts[:4], compress=True, crc=True, keyring=None)
    assert wire.decode_packet(other, None) == [Nack(i) for i in range(4)]


def test_compound_fast_path_falls_back_for_nested_and_bad_parts() -> None:
    wire.clear_caches()
    inner = wire.encode_compound([wire.encode(Nack(1)), wire.encode(Nack(2))])
    packet = wire.encode_compound([wire.encode(Nack(0)), inner, wire.encode(Nack(3))])
    assert wire.decode_packet(packet, None) == [Nack(0), Nack(1), Nack(2), Nack(3)]
    errors: list[DecodeError] = []
    bad = wire.encode_compound([wire.encode(Nack(0)), b"\x0d\xc1", wire.encode(Nack(3))])
    assert wire.decode_packet(bad, None, errors=errors) == [Nack(0), Nack(3)]
    assert len(errors) == 1


_parts_st = st.lists(
    st.one_of(
        st.builds(lambda i, n, f: wire.encode(Suspect(i, n, f)), st.integers(0, 0xFFFFFFFF), _names, _names),
        st.builds(lambda i, n, f: wire.encode(Dead(i, n, f)), st.integers(0, 0xFFFFFFFF), _names, _names),
        st.builds(lambda s: wire.encode(Nack(s)), st.integers(0, 0xFFFFFFFF)),
        st.binary(min_size=1, max_size=40),  # bad parts, a stray nested or label byte
        st.sampled_from([b"\x07\x01\x00\x01\x0b", b"\x0c", b"\xf4\x01a", bytes([5]) * 2100]),
    ),
    min_size=1,
    max_size=30,
)


@given(_parts_st, st.booleans(), st.booleans())
def test_preseeded_decodes_are_the_plain_decodes(parts: list[bytes], compress: bool, crc: bool) -> None:
    """A datagram whose decode ``encode_packet`` filed (the simulator's switch) decodes
    to exactly what the receiver's own decode of its bytes gives."""
    wire.clear_caches()
    wire.set_preseed_decodes(True)
    try:
        data = wire.encode_packet(parts, compress=compress, crc=crc, keyring=None)
        wire._last_packet = None  # type: ignore[attr-defined]
    finally:
        wire.set_preseed_decodes(False)
    filed = wire._plain_memo.get(data)  # type: ignore[attr-defined]
    wire.clear_caches()
    msgs, errs, _ = wire._decode_plain(data)  # type: ignore[attr-defined]
    if filed is not None:
        assert filed == (msgs, errs)
        assert not errs
    if all(0 < len(p) <= 2048 and p[0] not in (7, 9) for p in parts) and not errs and len(data) <= 2048 and data[0] != 0xF4:
        assert filed is not None  # the plain case is filed


def test_a_push_pull_half_from_a_shared_image_is_the_encoded_message() -> None:
    """The simulator's converged tables build their push/pull half from the image's
    joined states with their own changes patched in: the bytes of the message."""
    from gossip.config import Config
    from gossip.members import Member, Status, ip_bytes
    from gossip.wire.messages import NodeState, PushNodeState, PushPull
    from sim.cores import SwimFactory, node_addr, node_name

    factory = SwimFactory(Config(), seed=3)
    n = 60
    cores = [factory(i, node_name(i, n), node_addr(i), 0.0, 0) for i in range(n)]
    factory.preconverge(0.0, cores)

    def expected(swim: object, join: bool) -> bytes:
        table = swim._table  # type: ignore[attr-defined]
        nodes = tuple(
            PushNodeState(m.name, ip_bytes(m.addr), m.port, m.meta, m.incarnation, NodeState(int(m.status)), m.vsn)
            for m in table.members.values()
        )
        return wire.encode_stream(PushPull(join, nodes), compress=True, keyring=None)

    # Nodes 7 and 8 make the same changes (as observers of one crash do): the second
    # one's half may come from the memo of recent halves, and must still be its own.
    for swim in (cores[7], cores[8], cores[8]):
        table = swim._table  # type: ignore[attr-defined]
        for i in (0, 9, 31, n - 1):
            m = table.members[node_name(i, n)]
            table.set(Member(m.name, m.addr, m.port, m.incarnation + 1, Status.SUSPECT, m.meta, m.vsn, 1.0))
        assert table._image is not None and len(table._over) >= 4  # still sharing the image
        for join in (False, True):
            assert swim._sync.stream(join, False) == expected(swim, join)  # type: ignore[attr-defined]
    assert swim._sync.stream(False, False) != cores[7]._sync.stream(False, False)  # type: ignore[attr-defined]
