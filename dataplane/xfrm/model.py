"""Values of the XFRM side: the SAs and policies we program, and what the kernel reports.

Owns:
- ``XfrmState``: one ESP transport-mode SA, rfc4106(gcm(aes)) with a 128-bit ICV,
  extended sequence numbers and an anti-replay window (carried in
  XFRMA_REPLAY_ESN_VAL); ``StateInfo``: an SA read back, with its counters;
- ``XfrmPolicy``: a host-to-host selector on UDP to the VXLAN port with one ESP
  transport template; ``PolicyInfo``: a policy read back;
- the reconciler's values: ``XfrmView`` (compile input), ``XfrmDesired`` (compile
  output) and ``XfrmActual`` (a read-back);
- ``XfrmError``: a request the kernel refused, with its extended-ack text;
- the ownership label ``REQID`` and the parameters every SA of ours shares.
Does not: pack or parse bytes (``codec``), decide anything (``compile``, ``plan``) or
do I/O (``kernel``).

Ownership: every SA and policy template we create carries ``REQID``; dumps return
everything and callers keep only objects with that reqid. Identity: an SA is
(dst, SPI, ESP); a policy is (selector, direction). No FWD policy is needed: VXLAN in
transport mode terminates on the host, so inbound packets meet the IN policy.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import IntEnum

from crypto import esp
from crypto.ipsec import PairSAs

IPPROTO_ESP = 50
IPPROTO_UDP = 17
VXLAN_PORT = 4789

AEAD_NAME = "rfc4106(gcm(aes))"
ICV_BITS = esp.ICV_BITS
REPLAY_WINDOW = 1024
# Ownership label on our SAs and policy templates ("OVE"); other IPsec users keep theirs.
REQID = 0x4F5645


class Direction(IntEnum):
    IN = 0
    OUT = 1
    FWD = 2


class XfrmError(OSError):
    """A request the kernel refused; ``str()`` names the request and the reason."""

    def __init__(self, err: int, what: str, detail: str = "") -> None:
        reason = os.strerror(err) + (f": {detail}" if detail else "")
        super().__init__(err, f"{what}: {reason}")
        self.what = what
        self.detail = detail


@dataclass(frozen=True)
class XfrmState:
    """One ESP transport-mode SA. ``key`` is AES key || 4-byte salt; never log it.

    ``oseq``/``seq`` (64-bit, split into ESN halves on the wire) only matter on
    creation and are not part of equality.
    """

    src: str
    dst: str
    spi: int
    key: bytes = field(repr=False)
    reqid: int = REQID
    aead: str = AEAD_NAME
    icv_bits: int = ICV_BITS
    replay_window: int = REPLAY_WINDOW
    esn: bool = True
    oseq: int = field(default=0, compare=False)
    seq: int = field(default=0, compare=False)


@dataclass(frozen=True)
class StateInfo:
    """An SA read back from the kernel, with its counters."""

    state: XfrmState
    bytes: int
    packets: int
    add_time: int  # seconds since the epoch, kernel clock
    use_time: int
    replay_failures: int
    integrity_failures: int
    oseq: int  # 64-bit sequence numbers (ESN)
    seq: int
    mode: int
    flags: int


@dataclass(frozen=True)
class XfrmPolicy:
    """Require ESP for ``proto``/``dport`` traffic from ``src`` to ``dst`` (host /32 or /128).

    The template names the SA: ``spi`` 0 accepts any SA with our reqid (IN), a fixed
    SPI pins the outbound SA, which makes switching epochs one atomic UPDPOLICY (OUT).
    """

    src: str
    dst: str
    direction: Direction
    spi: int = 0
    reqid: int = REQID
    proto: int = IPPROTO_UDP
    dport: int = VXLAN_PORT
    priority: int = 0


@dataclass(frozen=True)
class PolicyInfo:
    """A policy read back from the kernel (ours or not: check ``policy.reqid``)."""

    policy: XfrmPolicy
    prefixlen_s: int
    prefixlen_d: int
    templates: int
    index: int
    action: int


# ------------------------------------------------------------ reconciler values


@dataclass(frozen=True)
class XfrmView:
    """What ``compile`` turns into kernel objects: this host's address and, per peer we
    share an encrypted network with, the SAs ``crypto.ipsec.pair_sas`` derived."""

    local: str
    pairs: tuple[PairSAs, ...] = ()


@dataclass(frozen=True)
class XfrmDesired:
    """The SAs and policies this host should hold (in ``desired_xfrm`` order)."""

    states: tuple[XfrmState, ...] = ()
    policies: tuple[XfrmPolicy, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.states and not self.policies


@dataclass(frozen=True)
class XfrmActual:
    """A read-back of the kernel's SA and policy databases (everyone's, not only ours)."""

    states: tuple[StateInfo, ...] = ()
    policies: tuple[PolicyInfo, ...] = ()
