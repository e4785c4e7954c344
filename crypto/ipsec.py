"""IPsec parameters for encrypted overlays: epoch keys, pair keys, SPIs, rotation phases, MTU.

Owns (pure, sans-IO; randomness and ``now`` are arguments):
- per-epoch X25519 key pairs (``EpochKey.generate``); each host publishes only the
  public half of its keys in the replicated tables, never a secret;
- the pair key of one direction of one pair in one epoch: HKDF-SHA256 over the X25519
  shared secret, bound to the epoch, both addresses (ordered: src, dst) and both public
  keys. Both hosts compute the same 20 bytes (AES-128 key + 4-byte rfc4106 salt), the
  two directions and every epoch get different keys, and once both private keys of an
  epoch are discarded nobody can recompute its keys;
- SPIs: derived from public data only (epoch, sender, receiver), so any host can
  compute every host's inbound SPIs and resolve hash collisions the same way
  (``SpiTable``): unique among one receiver's inbound SAs, stable across restarts
  within an epoch, and the low two bits carry ``epoch % 4`` so the at most three live
  epochs of a pair can never collide with each other;
- rotation phases as a pure function of (epochs published by both hosts, now): which
  epochs have SAs in both directions, and which epoch the out policy sends with
  (make-before-break: epoch x+1 is published and installed one interval before anyone
  sends with it; epoch x-1 is removed ``grace`` seconds after the switch);
- the ESP overhead for the overlay MTU.
Does not: touch the kernel (dataplane/xfrm/), store keys (the agent keeps private keys
in a tmpfs state dir so a reboot, which also empties the kernel's SA database, starts
from fresh keys: never re-add an outbound SA with a key that already sent packets, GCM
nonces come from the sequence number), or decide which peers share an encrypted
network (the compile step).
References: docs/ipsec.md (the scheme, where Docker's differs and how it failed, the
XFRM messages); RFC 4106 (GCM in ESP), RFC 4303 (ESP, ESN), RFC 5869 (HKDF),
RFC 7748 (X25519).
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from crypto import esp
from crypto.esp import VXLAN_ENCAP

# ``cryptography`` is imported by the functions that use it, not here: the schedule,
# SPI and plan functions are used by every agent, key material only once an encrypted
# network exists, and the library costs ~10 ms of CPU and ~7 MiB of RSS to load.

# Part of the wire protocol: changing any of these changes every key or SPI, and
# hosts running different versions stop talking (Docker's mixed-version outage).
PROTOCOL_SALT = b"overlay-agent ipsec v1"
SPI_PERSON = b"oa-spi1"  # blake2s personalisation, <= 8 bytes
KEY_INFO = b"esp rfc4106 key+salt"

AEAD_NAME = "rfc4106(gcm(aes))"
AEAD_KEY_BYTES = 20  # 16-byte AES-128 key + 4-byte salt (RFC 4106 §8.1)
X25519_BYTES = 32
SPI_MIN = 256  # 1..255 are reserved by IANA, 0 means "no SA"
SPI_MAX_PROBES = 64
EPOCH_BITS = 2  # low SPI bits = epoch % 4; at most 3 epochs are live at once

# ESP in transport mode with AES-GCM-128 (RFC 4106): the sizes live in crypto.esp.


class IpsecError(ValueError):
    """Bad input to a derivation (malformed address or key, invalid policy)."""


@functools.lru_cache(maxsize=1 << 16)
def addr16(addr: str) -> bytes:
    """Canonical 16-byte form of an address: IPv6 as is, IPv4 as ``::ffff:a.b.c.d``.

    One encoding for both families, always 16 bytes: Docker hashed IPv4 in 4-byte
    form in one release and 16-byte form in another, which split mixed clusters.
    """
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError as e:
        raise IpsecError(f"not an IP address: {addr!r}") from e
    if isinstance(ip, ipaddress.IPv4Address):
        return b"\0" * 10 + b"\xff\xff" + ip.packed
    return ip.packed


def _epoch_bytes(epoch: int) -> bytes:
    if not 0 <= epoch < 1 << 63:
        raise IpsecError(f"epoch out of range: {epoch}")
    return epoch.to_bytes(8, "big")


def _check_public(public: bytes) -> bytes:
    if not isinstance(public, bytes) or len(public) != X25519_BYTES:
        raise IpsecError(f"X25519 public key must be {X25519_BYTES} bytes")
    return public


# ---------------------------------------------------------------- epoch keys


@dataclass(frozen=True)
class EpochKey:
    """One host's X25519 key pair for one epoch. Only ``public`` leaves the host."""

    epoch: int
    private: bytes = field(repr=False)
    public: bytes

    @classmethod
    def generate(cls, epoch: int, random_bytes: Callable[[int], bytes]) -> EpochKey:
        """A fresh key pair from the injected randomness (``os.urandom`` in the agent)."""
        raw = random_bytes(X25519_BYTES)
        if len(raw) != X25519_BYTES:
            raise IpsecError("random source returned the wrong number of bytes")
        return cls.from_private(epoch, raw)

    @classmethod
    def from_private(cls, epoch: int, private: bytes) -> EpochKey:
        """Rebuild a key pair from its stored private half (agent restart)."""
        _epoch_bytes(epoch)
        if len(private) != X25519_BYTES:
            raise IpsecError(f"X25519 private key must be {X25519_BYTES} bytes")
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

        pub = X25519PrivateKey.from_private_bytes(private).public_key()
        return cls(epoch, bytes(private), pub.public_bytes_raw())


def shared_secret(mine: EpochKey, peer_public: bytes) -> bytes:
    """X25519(mine, peer); rejects low-order peer keys (all-zero shared secret)."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

    priv = X25519PrivateKey.from_private_bytes(mine.private)
    try:
        peer = X25519PublicKey.from_public_bytes(_check_public(peer_public))
        return priv.exchange(peer)
    except ValueError as e:  # cryptography refuses an all-zero result
        raise IpsecError(f"unusable peer public key: {e}") from e


def derive_sa_key(
    shared: bytes, epoch: int, src: str, dst: str, src_public: bytes, dst_public: bytes
) -> bytes:
    """The 20-byte rfc4106 key (AES-128 key || salt) for traffic src -> dst in ``epoch``.

    The info string binds the key to the direction (ordered addresses), the epoch and
    the exact public keys, so no two SAs ever share a key, even if a host re-keys an
    epoch after losing its private key.
    """
    if len(shared) != X25519_BYTES:
        raise IpsecError("shared secret must be 32 bytes")
    info = (
        KEY_INFO
        + _epoch_bytes(epoch)
        + addr16(src)
        + addr16(dst)
        + _check_public(src_public)
        + _check_public(dst_public)
    )
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    hkdf = HKDF(algorithm=hashes.SHA256(), length=AEAD_KEY_BYTES, salt=PROTOCOL_SALT, info=info)
    return hkdf.derive(shared)


# ---------------------------------------------------------------------- SPIs


def spi_candidate(epoch: int, src: str, dst: str, probe: int) -> int:
    """Probe ``probe`` of the SPI for src -> dst in ``epoch`` (public data only).

    The low ``EPOCH_BITS`` bits are ``epoch % 4``, so SPIs of different live epochs
    never collide; the rest is a plain hash of (epoch, src, dst, probe).
    """
    return _candidate(_epoch_bytes(epoch), addr16(src), addr16(dst), probe)


def _candidate(epoch8: bytes, src16: bytes, dst16: bytes, probe: int) -> int:
    h = hashlib.blake2s(epoch8 + src16 + dst16 + bytes([probe]), digest_size=4, person=SPI_PERSON)
    mask = (1 << EPOCH_BITS) - 1
    return (int.from_bytes(h.digest(), "big") & ~mask) | (epoch8[-1] & mask)


def assign_spis(receiver: str, epoch: int, senders: Iterable[str]) -> dict[str, int]:
    """SPIs of every sender's inbound SA at ``receiver`` in ``epoch``, all distinct.

    Senders are taken in canonical address order and each takes its first probe that is
    valid (>= 256) and not already taken. Every host that knows the same sender set
    computes the same table; with 30 hash bits a collision needs ~2^15 senders to be
    likely, so in practice every sender keeps probe 0 and a change in the set moves no
    existing SPI.
    """
    recv = addr16(receiver)
    e8 = _epoch_bytes(epoch)
    ordered = sorted({addr16(s): s for s in senders if addr16(s) != recv}.items())
    taken: dict[int, str] = {}
    out: dict[str, int] = {}
    for key, sender in ordered:
        for probe in range(SPI_MAX_PROBES):
            spi = _candidate(e8, key, recv, probe)
            if spi >= SPI_MIN and spi not in taken:
                taken[spi] = sender
                out[sender] = spi
                break
        else:  # pragma: no cover - needs 64 consecutive collisions
            raise IpsecError(f"no free SPI for {sender} -> {receiver} in epoch {epoch}")
    return out


class SpiTable:
    """Memoised ``assign_spis`` over one view of the hosts that use IPsec.

    ``hosts`` is every host address with published IPsec keys (not only those sharing
    a network with us): using the widest set keeps SPIs independent of which networks
    a pair shares. Build a new table when the host set changes.
    """

    def __init__(self, hosts: Iterable[str]) -> None:
        self._hosts = sorted({addr16(h): h for h in hosts}.items())
        self._known = {k for k, _ in self._hosts}
        self._cache: dict[tuple[bytes, int], dict[bytes, int]] = {}

    def spi(self, epoch: int, src: str, dst: str) -> int:
        s, d = addr16(src), addr16(dst)
        if s not in self._known or d not in self._known:
            raise IpsecError(f"{src} -> {dst}: both hosts must be in the SPI table")
        if s == d:
            raise IpsecError(f"no SA from a host to itself ({src})")
        table = self._cache.get((d, epoch))
        if table is None:
            assigned = assign_spis(dst, epoch, [h for _, h in self._hosts])
            table = {addr16(a): spi for a, spi in assigned.items()}
            self._cache[(d, epoch)] = table
        return table[s]


# ------------------------------------------------------------------ rotation


@dataclass(frozen=True)
class RotationPolicy:
    """Epoch schedule. Epoch x runs over [x * interval, (x + 1) * interval).

    Keys of epoch x+1 are published at the start of epoch x, so every receiver has a
    full interval to install its inbound SAs before anyone sends with them; epoch x-1
    stays installed until ``grace`` seconds into epoch x. ``grace`` must exceed the
    worst clock skew between hosts plus the time a packet spends in flight.
    """

    interval: float = 12 * 3600.0
    grace: float = 60.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.interval) and self.interval > 0):
            raise IpsecError(f"rotation interval must be > 0 seconds, got {self.interval}")
        if not (math.isfinite(self.grace) and 0 <= self.grace < self.interval):
            raise IpsecError(
                f"grace must be in [0, interval) = [0, {self.interval}), got {self.grace}"
            )

    def epoch_at(self, now: float) -> int:
        return max(0, math.floor(now / self.interval))

    def epoch_start(self, epoch: int) -> float:
        return epoch * self.interval


def epochs_to_publish(now: float, policy: RotationPolicy) -> tuple[int, ...]:
    """Epochs whose public key a host must have in the tables at ``now``."""
    cur = policy.epoch_at(now)
    return (cur, cur + 1)


def epochs_to_keep(now: float, policy: RotationPolicy) -> tuple[int, ...]:
    """Epochs whose private key a host keeps (and whose SAs may exist) at ``now``.

    Everything older must be deleted: that is what makes past traffic undecryptable.
    """
    cur = policy.epoch_at(now)
    if cur > 0 and now < policy.epoch_start(cur) + policy.grace:
        return (cur - 1, cur, cur + 1)
    return (cur, cur + 1)


def next_change(now: float, policy: RotationPolicy) -> float:
    """The next instant at which ``plan_pair``/``epochs_to_*`` can change."""
    cur = policy.epoch_at(now)
    end_of_grace = policy.epoch_start(cur) + policy.grace
    nxt = policy.epoch_start(cur + 1)
    return end_of_grace if cur > 0 and now < end_of_grace else nxt


@dataclass(frozen=True)
class PairPlan:
    """What one host wants toward one peer at one instant."""

    epochs: tuple[int, ...]  # epochs with SAs in both directions, ascending
    send: int | None  # epoch the out policy sends with; None: nothing usable (fail closed)


def plan_pair(
    mine: Iterable[int], theirs: Iterable[int], now: float, policy: RotationPolicy
) -> PairPlan:
    """Rotation phase for one pair, from the epochs each host has published.

    SAs exist for every live epoch both hosts have keys for. The sender uses the newest
    such epoch that has started; only if none has (a host that just came up with
    nothing but future keys in common) it falls back to the oldest common one, which
    the receiver also installs from the same view.
    """
    live = set(epochs_to_keep(now, policy))
    common = sorted(live.intersection(mine).intersection(theirs))
    cur = policy.epoch_at(now)
    started = [x for x in common if x <= cur]
    send = started[-1] if started else (common[0] if common else None)
    return PairPlan(tuple(common), send)


# ------------------------------------------------------------ SA parameters


@dataclass(frozen=True)
class SaParams:
    """One ESP SA as both ends must install it. ``key`` is secret: never log it."""

    epoch: int
    src: str
    dst: str
    spi: int
    key: bytes = field(repr=False)


@dataclass(frozen=True)
class PairSAs:
    """Every SA one host wants for one peer, and the SPI its out policy names."""

    peer: str
    inbound: tuple[SaParams, ...]  # peer -> me, ascending epoch
    outbound: tuple[SaParams, ...]  # me -> peer, ascending epoch
    send: SaParams | None  # the outbound SA in use; None: drop (no usable epoch)


def pair_sas(
    me: str,
    my_keys: Mapping[int, EpochKey],
    peer: str,
    peer_publics: Mapping[int, bytes],
    now: float,
    policy: RotationPolicy,
    spis: SpiTable,
) -> PairSAs:
    """Derive all SAs between ``me`` and ``peer`` for the epochs ``plan_pair`` wants.

    Costs one X25519 per live epoch (~3 per peer); callers with many peers may cache
    results per (epoch, peer, peer public key).
    """
    plan = plan_pair(my_keys, peer_publics, now, policy)
    inbound: list[SaParams] = []
    outbound: list[SaParams] = []
    send: SaParams | None = None
    for epoch in plan.epochs:
        mine = my_keys[epoch]
        if mine.epoch != epoch:
            raise IpsecError(f"key filed under epoch {epoch} is for epoch {mine.epoch}")
        theirs = _check_public(peer_publics[epoch])
        shared = shared_secret(mine, theirs)
        out_key = derive_sa_key(shared, epoch, me, peer, mine.public, theirs)
        in_key = derive_sa_key(shared, epoch, peer, me, theirs, mine.public)
        out = SaParams(epoch, me, peer, spis.spi(epoch, me, peer), out_key)
        outbound.append(out)
        inbound.append(SaParams(epoch, peer, me, spis.spi(epoch, peer, me), in_key))
        if epoch == plan.send:
            send = out
    return PairSAs(peer, tuple(inbound), tuple(outbound), send)


# ----------------------------------------------------------------------- MTU


def encrypted_mtu(underlay_mtu: int, ipv6_underlay: bool = False) -> int:
    """Largest overlay MTU whose VXLAN-in-ESP packets fit the underlay MTU.

    outer = IP + ESP header + IV + pad4(UDP + VXLAN + Ethernet + inner + trailer) + ICV.
    1500 over IPv4 gives 1416 (plain VXLAN: 1450), over IPv6 1396 (plain: 1430).
    """
    mtu = esp.encrypted_mtu(underlay_mtu, ipv6_underlay)
    if mtu < 68:  # RFC 791 minimum MTU
        raise IpsecError(f"underlay MTU {underlay_mtu} leaves no room for VXLAN + ESP")
    return mtu


def esp_overhead(underlay_mtu: int = 1500, ipv6_underlay: bool = False) -> int:
    """Bytes ESP costs on top of plain VXLAN at this underlay MTU (34 at 1500)."""
    plain = underlay_mtu - (40 if ipv6_underlay else 20) - VXLAN_ENCAP
    return plain - encrypted_mtu(underlay_mtu, ipv6_underlay)
