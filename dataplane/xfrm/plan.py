"""plan: what the kernel holds vs what should exist -> the XFRM requests that make them equal. Pure.

Owns: the diff (touching only objects with our reqid and host-to-host selectors),
its make-before-break order, and the ``additive`` filter used while the view may
be incomplete. Does not: send anything (``kernel``) or decide what should exist
(``compile``).

Order: add SAs first (an SA whose key or parameters changed is deleted and re-added
right there: UPDSA cannot change a live SA's key), then add/update policies
(UPDPOLICY creates or switches in place, so pointing the OUT policy at a new SA is
atomic), then delete stale policies, then stale SAs. ``plan(d, read(d)) == []`` once
the kernel matches.
"""

from __future__ import annotations

from collections.abc import Iterable

from dataplane.xfrm.codec import (
    XFRM_MSG_DELPOLICY,
    XFRM_MSG_DELSA,
    XFRM_MSG_NEWSA,
    Request,
    add_policy,
    add_state,
    delete_policy,
    delete_state,
)
from dataplane.xfrm.model import (
    REQID,
    PolicyInfo,
    StateInfo,
    XfrmActual,
    XfrmDesired,
    XfrmPolicy,
    XfrmState,
)


def _policy_key(p: XfrmPolicy) -> tuple[str, str, int, int, int]:
    return (p.src, p.dst, int(p.direction), p.proto, p.dport)


def ours(policy: PolicyInfo, reqid: int = REQID) -> bool:
    """A policy we manage: our reqid in its single template, host-to-host selector."""
    full = 32 if ":" not in policy.policy.src else 128
    return (
        policy.templates == 1
        and policy.policy.reqid == reqid
        and policy.prefixlen_s == policy.prefixlen_d == full
    )


def sync_requests(
    want_states: Iterable[XfrmState],
    want_policies: Iterable[XfrmPolicy],
    have_states: Iterable[StateInfo],
    have_policies: Iterable[PolicyInfo],
    reqid: int = REQID,
) -> list[Request]:
    """Requests that turn what the kernel has into what we want, touching only ours.

    Order is make-before-break: new SAs first (an SA whose key or parameters changed
    is deleted and re-added right there), then policies (UPDPOLICY: create or switch
    in place), then stale policies, then stale SAs.
    """
    have_sa = {(s.state.dst, s.state.spi): s.state for s in have_states if s.state.reqid == reqid}
    want_sa: dict[tuple[str, int], XfrmState] = {}
    for st in want_states:
        want_sa[(st.dst, st.spi)] = st
    have_pol = {_policy_key(p.policy): p.policy for p in have_policies if ours(p, reqid)}
    want_pol: dict[tuple[str, str, int, int, int], XfrmPolicy] = {}
    for pol in want_policies:
        want_pol[_policy_key(pol)] = pol

    reqs: list[Request] = []
    for key, st in want_sa.items():
        cur = have_sa.get(key)
        if cur == st:
            continue
        if cur is not None:
            reqs.append(delete_state(cur.dst, cur.spi, cur.src))
        reqs.append(add_state(st))
    for pkey, pol in want_pol.items():
        if have_pol.get(pkey) != pol:
            reqs.append(add_policy(pol, update=True))
    for pkey, pol in have_pol.items():
        if pkey not in want_pol:
            reqs.append(delete_policy(pol))
    for key, st in have_sa.items():
        if key not in want_sa:
            reqs.append(delete_state(st.dst, st.spi, st.src))
    return reqs


def plan(desired: XfrmDesired, actual: XfrmActual, reqid: int = REQID) -> list[Request]:
    """``sync_requests`` for the reconciler's values."""
    return sync_requests(desired.states, desired.policies, actual.states, actual.policies, reqid)


def _replaced(reqs: list[Request], i: int) -> bool:
    """A DELSA right before a NEWSA of the same SA (same daddr + SPI: the first 20 bytes
    of ``xfrm_usersa_id`` and bytes 56..76 of ``xfrm_usersa_info``) is a key change,
    not a deletion."""
    req = reqs[i]
    return (
        req.type == XFRM_MSG_DELSA
        and i + 1 < len(reqs)
        and reqs[i + 1].type == XFRM_MSG_NEWSA
        and req.payload[:20] == reqs[i + 1].payload[56:76]
    )


def additive(reqs: list[Request]) -> list[Request]:
    """``reqs`` without deletions (key changes, a delete and re-add of one SA, stay):
    while the view may be incomplete after a start, SAs of peers we have not heard
    from yet must survive."""
    return [
        r
        for i, r in enumerate(reqs)
        if r.type not in (XFRM_MSG_DELSA, XFRM_MSG_DELPOLICY) or _replaced(reqs, i)
    ]
