"""crypto/ipsec.py: epoch keys, pair keys, SPIs, rotation phases, MTU (pure, no kernel)."""

from __future__ import annotations

import random

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from crypto import esp, ipsec
from crypto.ipsec import EpochKey, IpsecError, RotationPolicy

# RFC 7748 §6.1 test vector: pins that we really do X25519.
ALICE_PRIV = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
ALICE_PUB = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
BOB_PRIV = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
BOB_PUB = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
SHARED = bytes.fromhex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")

A, B, C = "192.0.2.1", "192.0.2.2", "192.0.2.3"


def keypair(epoch: int, seed: int) -> EpochKey:
    return EpochKey.generate(epoch, random.Random(seed).randbytes)


# ------------------------------------------------------------ keys and KDF


def test_x25519_matches_rfc7748() -> None:
    alice = EpochKey.from_private(1, ALICE_PRIV)
    bob = EpochKey.from_private(1, BOB_PRIV)
    assert alice.public == ALICE_PUB and bob.public == BOB_PUB
    assert ipsec.shared_secret(alice, BOB_PUB) == SHARED == ipsec.shared_secret(bob, ALICE_PUB)


def test_golden_key_and_spi_vectors() -> None:
    """The derivations are wire protocol: any change splits mixed-version clusters."""
    k_ab = ipsec.derive_sa_key(SHARED, 7, A, B, ALICE_PUB, BOB_PUB)
    k_ba = ipsec.derive_sa_key(SHARED, 7, B, A, BOB_PUB, ALICE_PUB)
    assert k_ab.hex() == "4ceee257021327847aef317dc7d13c003c9fd3dc"
    assert k_ba.hex() == "f02c2da8ff5a91bfcfbc59088dd20a49c8966699"
    assert ipsec.spi_candidate(7, A, B, 0) == 0x1F5A8C83
    assert ipsec.spi_candidate(7, B, A, 0) == 0xE5216C2F
    assert ipsec.spi_candidate(7, "2001:db8::1", "2001:db8::2", 1) == 0x53B9CD53


def test_generate_uses_injected_randomness_only() -> None:
    assert keypair(3, 42) == keypair(3, 42)
    assert keypair(3, 42).public != keypair(3, 43).public
    with pytest.raises(IpsecError):
        EpochKey.generate(3, lambda n: b"\0" * (n - 1))


def test_secrets_stay_out_of_repr() -> None:
    key = keypair(1, 1)
    assert key.private.hex() not in repr(key)
    sa = ipsec.SaParams(1, A, B, 0x1234, b"\x42" * 20)
    assert "42424242" not in repr(sa) and "key" not in repr(sa)


def test_both_ends_derive_the_same_keys() -> None:
    a, b = keypair(5, 1), keypair(5, 2)
    s_a, s_b = ipsec.shared_secret(a, b.public), ipsec.shared_secret(b, a.public)
    assert s_a == s_b
    assert ipsec.derive_sa_key(s_a, 5, A, B, a.public, b.public) == ipsec.derive_sa_key(
        s_b, 5, A, B, a.public, b.public
    )


def test_bad_inputs_raise_ipsec_error() -> None:
    key = keypair(1, 1)
    with pytest.raises(IpsecError, match="not an IP address"):
        ipsec.addr16("host-1")
    with pytest.raises(IpsecError):
        ipsec.shared_secret(key, b"\x01" * 31)
    with pytest.raises(IpsecError):  # low-order point: all-zero shared secret
        ipsec.shared_secret(key, bytes(32))
    with pytest.raises(IpsecError):
        EpochKey.from_private(-1, bytes(32))
    with pytest.raises(IpsecError):
        ipsec.derive_sa_key(b"short", 1, A, B, key.public, key.public)


def test_addresses_have_one_canonical_16_byte_form() -> None:
    assert ipsec.addr16("192.0.2.1") == bytes(10) + b"\xff\xff" + bytes([192, 0, 2, 1])
    assert ipsec.addr16("::ffff:192.0.2.1") == ipsec.addr16("192.0.2.1")
    assert ipsec.addr16("2001:db8::1")[:2] == b"\x20\x01"


def _not_mapped(ip: str) -> bool:
    return not ip.startswith("::ffff:")  # would alias an IPv4 address on purpose


addresses = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str).filter(_not_mapped),
)
epochs = st.integers(min_value=0, max_value=2**40)
seeds = st.integers(min_value=0, max_value=2**32)


@settings(max_examples=60, deadline=None)
@given(a=addresses, b=addresses, c=addresses, epoch=epochs, sa=seeds, sb=seeds)
def test_keys_deterministic_and_distinct_per_pair_direction_epoch(
    a: str, b: str, c: str, epoch: int, sa: int, sb: int
) -> None:
    assume(len({ipsec.addr16(x) for x in (a, b, c)}) == 3 and sa != sb)
    ka, kb = keypair(epoch, sa), keypair(epoch, sb)
    s = ipsec.shared_secret(ka, kb.public)

    def key(src: str, dst: str, e: int) -> bytes:
        return ipsec.derive_sa_key(s, e, src, dst, ka.public, kb.public)

    assert key(a, b, epoch) == key(a, b, epoch)
    assert len(key(a, b, epoch)) == ipsec.AEAD_KEY_BYTES
    assert len({key(a, b, epoch), key(b, a, epoch), key(a, b, epoch + 1), key(a, c, epoch)}) == 4


@settings(max_examples=60, deadline=None)
@given(a=addresses, b=addresses, epoch=epochs)
def test_spis_deterministic_and_distinct_per_direction_and_epoch(
    a: str, b: str, epoch: int
) -> None:
    assume(ipsec.addr16(a) != ipsec.addr16(b))
    table = ipsec.SpiTable([a, b])
    ab, ba = table.spi(epoch, a, b), table.spi(epoch, b, a)
    assert ab == ipsec.SpiTable([b, a]).spi(epoch, a, b)
    live = {table.spi(epoch + d, a, b) for d in (0, 1, 2)}
    assert len(live) == 3  # low two bits = epoch % 4
    assert ab != ba or ipsec.addr16(a) == ipsec.addr16(b)
    for spi, e in ((ab, epoch), (ba, epoch)):
        assert spi >= ipsec.SPI_MIN and spi & 3 == e & 3


@settings(max_examples=40, deadline=None)
@given(
    hosts=st.lists(st.ip_addresses(v=4).map(str), min_size=2, max_size=40, unique=True),
    epoch=epochs,
    order=st.randoms(use_true_random=False),
)
def test_spis_unique_per_receiver_and_independent_of_order(
    hosts: list[str], epoch: int, order: random.Random
) -> None:
    receiver = hosts[0]
    shuffled = hosts[:]
    order.shuffle(shuffled)
    one = ipsec.assign_spis(receiver, epoch, hosts)
    two = ipsec.assign_spis(receiver, epoch, shuffled)
    assert one == two
    assert receiver not in one and len(one) == len(hosts) - 1
    # all inbound SAs of the receiver over the live epochs are distinct
    live = [
        spi
        for e in (epoch, epoch + 1, epoch + 2)
        for spi in ipsec.assign_spis(receiver, e, hosts).values()
    ]
    assert len(set(live)) == len(live)


def test_colliding_senders_get_distinct_spis_deterministically() -> None:
    # Found by search: both hash to 0xba49c53f at probe 0 toward this receiver.
    recv, low, high = "192.0.2.254", "10.0.90.221", "10.0.113.61"
    assert ipsec.spi_candidate(7, low, recv, 0) == ipsec.spi_candidate(7, high, recv, 0)
    spis = ipsec.assign_spis(recv, 7, [high, low, "10.9.9.9"])
    assert spis[low] == ipsec.spi_candidate(7, low, recv, 0)  # lower address keeps probe 0
    assert spis[high] == ipsec.spi_candidate(7, high, recv, 1)
    assert len(set(spis.values())) == 3
    # the sender side computes the same thing from its own view
    assert ipsec.SpiTable([recv, low, high, "10.9.9.9"]).spi(7, high, recv) == spis[high]


def test_reserved_spis_are_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    real = ipsec._candidate

    def fake(epoch8: bytes, src16: bytes, dst16: bytes, probe: int) -> int:
        return 5 if probe == 0 else real(epoch8, src16, dst16, probe)

    monkeypatch.setattr(ipsec, "_candidate", fake)
    assert ipsec.assign_spis(B, 1, [A])[A] == ipsec.spi_candidate(1, A, B, 1)


def test_spi_table_rejects_unknown_hosts_and_self() -> None:
    table = ipsec.SpiTable([A, B])
    with pytest.raises(IpsecError):
        table.spi(1, A, C)
    with pytest.raises(IpsecError):
        table.spi(1, A, A)


# ------------------------------------------------------------------ rotation


def test_policy_validation() -> None:
    with pytest.raises(IpsecError):
        RotationPolicy(interval=0)
    with pytest.raises(IpsecError):
        RotationPolicy(interval=10, grace=10)
    with pytest.raises(IpsecError):
        RotationPolicy(interval=float("nan"))
    assert RotationPolicy().interval == 12 * 3600


P = RotationPolicy(interval=10.0, grace=2.0)


@pytest.mark.parametrize(
    ("now", "mine", "theirs", "epochs", "send"),
    [
        (105.0, {10, 11}, {10, 11}, (10, 11), 10),  # steady: next epoch pre-installed
        (110.5, {10, 11, 12}, {10, 11, 12}, (10, 11, 12), 11),  # switched, old kept (grace)
        (112.5, {11, 12}, {10, 11, 12}, (11, 12), 11),  # grace over: epoch 10 gone
        (110.5, {10, 11, 12}, {10, 11}, (10, 11), 11),  # peer's 12 not seen yet
        (105.0, {10, 11}, {11}, (11,), 11),  # peer just joined with only the next key
        (105.0, {10, 11}, {20}, (), None),  # nothing in common: fail closed
        (112.5, {11, 12}, {9, 10}, (), None),  # stale peer keys are never used
    ],
)
def test_plan_pair_phases(
    now: float, mine: set[int], theirs: set[int], epochs: tuple[int, ...], send: int | None
) -> None:
    plan = ipsec.plan_pair(sorted(mine), sorted(theirs), now, P)
    assert plan == ipsec.PairPlan(epochs, send)


def test_publish_keep_and_next_change() -> None:
    assert ipsec.epochs_to_publish(105.0, P) == (10, 11)
    assert ipsec.epochs_to_keep(105.0, P) == (10, 11)
    assert ipsec.epochs_to_keep(111.0, P) == (10, 11, 12)
    assert ipsec.epochs_to_keep(112.0, P) == (11, 12)
    assert ipsec.next_change(105.0, P) == 110.0
    assert ipsec.next_change(111.0, P) == 112.0
    assert ipsec.next_change(112.0, P) == 120.0


def held(now: float) -> list[int]:
    """Epochs a host holds keys for (and publishes) at its local time ``now``."""
    return list(ipsec.epochs_to_keep(now, P))


@settings(max_examples=300, deadline=None)
@given(
    t=st.floats(min_value=30.0, max_value=200.0),
    skew_a=st.floats(min_value=-0.9, max_value=0.9),
    skew_b=st.floats(min_value=-0.9, max_value=0.9),
    delay=st.floats(min_value=0.0, max_value=5.0),
)
def test_make_before_break(t: float, skew_a: float, skew_b: float, delay: float) -> None:
    """Whatever A sends with at true time t, B accepts at t (|skew| < grace / 2, gossip
    delay < interval / 2): new SAs are in place before use, old ones outlive their use."""
    a_now, b_now = t + skew_a, t + skew_b
    a_view_of_b = held(t - delay + skew_b)
    b_view_of_a = held(t - delay + skew_a)
    send = ipsec.plan_pair(held(a_now), a_view_of_b, a_now, P).send
    accepted = ipsec.plan_pair(held(b_now), b_view_of_a, b_now, P).epochs
    assert send is not None and send in accepted


def test_pair_sas_match_on_both_ends() -> None:
    now = 105.0
    keys = {h: {e: keypair(e, i * 100 + e) for e in (10, 11)} for i, h in enumerate((A, B, C))}
    pubs = {h: {e: k.public for e, k in ks.items()} for h, ks in keys.items()}
    table = ipsec.SpiTable([A, B, C])
    ab = ipsec.pair_sas(A, keys[A], B, pubs[B], now, P, table)
    ba = ipsec.pair_sas(B, keys[B], A, pubs[A], now, P, table)
    assert ab.outbound == ba.inbound and ab.inbound == ba.outbound
    assert [sa.epoch for sa in ab.outbound] == [10, 11]
    assert ab.send == ab.outbound[0] and ab.send.src == A and ab.send.dst == B
    inbound_at_a = [
        sa.spi
        for p in (B, C)
        for sa in ipsec.pair_sas(A, keys[A], p, pubs[p], now, P, table).inbound
    ]
    assert len(set(inbound_at_a)) == 4
    assert len({sa.key for sa in (*ab.inbound, *ab.outbound)}) == 4
    with pytest.raises(IpsecError):
        ipsec.pair_sas(A, {10: keys[A][11]}, B, pubs[B], now, P, table)


# ----------------------------------------------------------------------- MTU


def test_encrypted_mtu_known_values() -> None:
    assert ipsec.encrypted_mtu(1500) == 1416
    assert ipsec.encrypted_mtu(1500, ipv6_underlay=True) == 1396
    assert ipsec.esp_overhead(1500) == 34
    assert ipsec.encrypted_mtu(9000) == 8916
    with pytest.raises(IpsecError):
        ipsec.encrypted_mtu(100)


def outer_len(inner_mtu: int, ipv6: bool) -> int:
    esp_payload = inner_mtu + esp.VXLAN_ENCAP + esp.ESP_TRAILER
    padded = -(-esp_payload // 4) * 4
    return (40 if ipv6 else 20) + esp.ESP_HEADER + esp.ESP_IV + padded + esp.ESP_ICV


@pytest.mark.parametrize("ipv6", [False, True])
def test_encrypted_mtu_is_the_largest_that_fits(ipv6: bool) -> None:
    for underlay in range(1280, 1600):
        m = ipsec.encrypted_mtu(underlay, ipv6)
        assert outer_len(m, ipv6) <= underlay
        assert outer_len(m + 1, ipv6) > underlay  # strictly the largest
        assert underlay - (40 if ipv6 else 20) - 30 - m <= esp.ESP_OVERHEAD_MAX
