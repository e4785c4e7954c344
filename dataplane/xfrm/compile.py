"""compile: per-peer SAs (crypto/ipsec.py) -> the XFRM states and policies this host should hold. Pure.

Owns: the shape of our kernel objects per peer: one SA per derived ``SaParams``
(both directions, every live epoch) and two policies, OUT (pinned to the SA in use)
and IN (any SA of ours from that peer, so cleartext VXLAN from it is dropped).
Does not: derive keys or SPIs, or choose epochs (``crypto.ipsec``); pick the peers
(the agent: peers sharing an encrypted network with us); touch the kernel.
"""

from __future__ import annotations

from collections.abc import Iterable

from crypto.ipsec import PairSAs, SaParams
from dataplane.xfrm.model import (
    REPLAY_WINDOW,
    REQID,
    Direction,
    XfrmDesired,
    XfrmPolicy,
    XfrmState,
    XfrmView,
)


def peer_policies(local: str, peer: str, send_spi: int, reqid: int = REQID) -> list[XfrmPolicy]:
    """OUT (VXLAN to the peer must use the SA ``send_spi``) and IN (VXLAN from the peer
    must have arrived in ESP with one of its SAs, so cleartext from it is dropped)."""
    return [
        XfrmPolicy(local, peer, Direction.OUT, spi=send_spi, reqid=reqid),
        XfrmPolicy(peer, local, Direction.IN, spi=0, reqid=reqid),
    ]


def state_from_sa(
    sa: SaParams, reqid: int = REQID, replay_window: int = REPLAY_WINDOW
) -> XfrmState:
    return XfrmState(sa.src, sa.dst, sa.spi, sa.key, reqid=reqid, replay_window=replay_window)


def desired_xfrm(
    me: str, pairs: Iterable[PairSAs], reqid: int = REQID, replay_window: int = REPLAY_WINDOW
) -> tuple[list[XfrmState], list[XfrmPolicy]]:
    """Kernel objects for every peer we share an encrypted network with.

    A peer with no usable epoch still gets both policies (the OUT template then names
    SPI 0 with no SA to match, so VXLAN to it is dropped, never sent in clear).
    """
    states: list[XfrmState] = []
    policies: list[XfrmPolicy] = []
    for pair in pairs:
        for sa in (*pair.inbound, *pair.outbound):
            states.append(state_from_sa(sa, reqid, replay_window))
        send_spi = pair.send.spi if pair.send is not None else 0
        policies.extend(peer_policies(me, pair.peer, send_spi, reqid))
    return states, policies


def compile(view: XfrmView) -> XfrmDesired:
    """``desired_xfrm`` of a view, as the reconciler's immutable desired state."""
    states, policies = desired_xfrm(view.local, view.pairs)
    return XfrmDesired(tuple(states), tuple(policies))
