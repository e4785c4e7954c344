"""Compressed packing (Config.compressed_packing): gossip packets are filled by their
compressed size, never exceed the datagram budget, and lose no news.

A node learns many members from alive packets (each queues that member's alive for
gossip) and then gossips; every datagram it sends is decoded here.
"""

from __future__ import annotations

import dataclasses
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from gossip.config import Config
from gossip.effects import Send
from gossip.swim import Swim
from gossip.wire import codec as wire
from gossip.wire.messages import Alive

SRC = ("10.9.0.1", 7946)


def _alive(i: int, meta: bytes) -> Alive:
    return Alive(1, f"member-{i:04d}", bytes([10, 1, i // 250, i % 250 + 1]), 7946, meta)


def _node(config: Config, news: list[Alive], seed: int = 1) -> Swim:
    node = Swim(config, "local", ("10.0.0.1", 7946), rng=random.Random(seed), now=0.0)
    for msg in news:
        node.handle_packet(0.0, SRC, wire.encode(msg))
    return node


def _gossip_until_quiet(node: Swim, config: Config, rounds: int = 200) -> list[bytes]:
    """Every datagram sent during ``rounds`` gossip intervals."""
    sent: list[bytes] = []
    now = 0.0
    for _ in range(rounds):
        now += config.gossip_interval
        sent += [e.data for e in node.tick(now) if isinstance(e, Send)]
    return sent


def _alive_names(packets: list[bytes]) -> tuple[list[int], set[str]]:
    """Messages per packet that carried alives, and every member named by an alive."""
    counts: list[int] = []
    names: set[str] = set()
    for data in packets:
        alives = [
            m for m in wire.decode_packet(data, None) if isinstance(m, Alive) and m.node != "local"
        ]
        if alives:
            counts.append(len(alives))
            names.update(m.node for m in alives)
    return counts, names


def test_compressible_news_packs_beyond_the_raw_budget_within_the_datagram() -> None:
    config = Config.lan()
    news = [_alive(i, b"\xff\x82\xa4role\xadoverlay-agent\xa2ov\xa11") for i in range(300)]
    packets = _gossip_until_quiet(_node(config, news), config)
    assert packets and all(len(p) <= config.udp_buffer_size for p in packets)
    counts, names = _alive_names(packets)
    assert names == {m.node for m in news}
    # memberlist packs at most budget // raw size per packet; compression lets us pack more.
    per_packet_raw = (config.udp_buffer_size - 2) // (len(wire.encode(news[0])) + 2)
    assert max(counts) > 1.5 * per_packet_raw

    plain = dataclasses.replace(config, compressed_packing=False)
    counts_plain, names_plain = _alive_names(_gossip_until_quiet(_node(plain, news), plain))
    assert names_plain == names
    assert max(counts_plain) <= per_packet_raw
    assert sum(counts) < sum(counts_plain) * 1.01  # same transmissions, in fewer packets
    assert len(counts) < len(counts_plain)


def test_incompressible_news_never_overflows_a_datagram() -> None:
    config = Config.lan()
    rng = random.Random(7)
    news = [_alive(i, rng.randbytes(rng.randrange(20, 300))) for i in range(200)]
    packets = _gossip_until_quiet(_node(config, news), config)
    assert all(len(p) <= config.udp_buffer_size for p in packets)
    assert _alive_names(packets)[1] == {m.node for m in news}


@settings(max_examples=30, deadline=None)
@given(
    metas=st.lists(
        st.one_of(st.binary(min_size=0, max_size=400), st.sampled_from([b"", b"a" * 300])),
        min_size=2,
        max_size=120,
    ),
    seed=st.integers(0, 1000),
    encrypt=st.booleans(),
)
def test_any_mix_of_news_fits_each_datagram_and_all_of_it_goes_out(
    metas: list[bytes], seed: int, encrypt: bool
) -> None:
    config = Config.lan()
    news = [_alive(i, meta) for i, meta in enumerate(metas)]
    node = _node(config, news, seed)
    if encrypt:  # the budget then shrinks by the sealing overhead
        from crypto.keyring import Keyring

        node.keyring = Keyring([bytes(16)], nonce_source=random.Random(seed).randbytes)
    packets = _gossip_until_quiet(node, config, rounds=300)
    assert all(len(p) <= config.udp_buffer_size for p in packets)
    names: set[str] = set()
    for data in packets:
        keyring = node.keyring
        names.update(m.node for m in wire.decode_packet(data, keyring) if isinstance(m, Alive))
    names.discard("local")
    assert names == {m.node for m in news}


def test_a_packet_of_128_parts_or_more_is_split() -> None:
    config = dataclasses.replace(Config.lan(), udp_buffer_size=65000)
    node = _node(config, [_alive(i, b"") for i in range(600)])
    node._out.squeeze = 4.0  # as if news had compressed that well
    packets = _gossip_until_quiet(node, config, rounds=3)
    assert packets
    for data in packets:
        assert len(wire.decode_packet(data, None)) <= wire.SERF_SAFE_COMPOUND_PARTS
