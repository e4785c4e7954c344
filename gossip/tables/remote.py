"""Merging rows that arrived from peers into one node's replica.

Owns: what a received row does to the replica: the Lamport clock witnessing it, the
LWW merge, owner authority (a version of our own row we do not hold makes us
re-publish our truth above it), relaying what was news, the views it invalidates,
a network deleted elsewhere while in use here coming back, and IPsec key rows.
Functions on the replica (``replica.Tables._receive`` calls them); sans-IO.
Does not: decode messages (``framing``), decide when or to whom rows are sent
(``sync``), or write rows of this node's own accord (``replica``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from gossip.effects import Effect, Log
from gossip.tables import framing, ipsecrows
from gossip.tables.rows import (
    AnyRow,
    ClaimRow,
    EndpointRow,
    MemberRow,
    NetworkRow,
    encode_row,
    newer,
    queue_key,
)

if TYPE_CHECKING:
    from gossip.tables.replica import Tables


def merge_ipsec(
    t: Tables, now: float, row: ipsecrows.IpsecKeysRow, effects: list[Effect], *, rebroadcast: bool
) -> None:
    t._witness(row.lamport)
    if row.node == t.node:
        # Owner authority: a row of ours we do not hold (a life before a restart)
        # is superseded by our current keys, or by "no keys" if we have none yet.
        cur = t.ipsec.get(t.node)
        if cur is None or ipsecrows.newer(row, cur):
            t.stats.reasserts += 1
            t._store_ipsec(ipsecrows.IpsecKeysRow(
                t.node, t._tick(), t.vtep, cur.keys if cur is not None else ()))
        return
    if t.visibility.reaped(row.node, now) or not t.ipsec.merge(row):
        return
    t.stats.rows_applied += 1
    t.visibility.note_owner(row.node, now)
    if rebroadcast:
        t._bcast.queue(f"k\0{row.node}", ipsecrows.encode_event(row))


def merge_cluster(
    t: Tables, now: float, row: framing.ClusterRow, effects: list[Effect], *, rebroadcast: bool
) -> None:
    t._witness(row.lamport)
    if isinstance(row, NetworkRow):
        t._unconfirmed.pop(row.id, None)  # the cluster's version is known now
    else:
        if row.writer == t.node:
            own_echo(t, now, row, effects)
            return
        if t.visibility.reaped(row.writer, now):
            return
    if not t.store.merge(row):
        return
    t.stats.rows_applied += 1
    if rebroadcast:
        t._bcast.queue(queue_key(row), framing.encode_event(encode_row(row, now)))
    if isinstance(row, NetworkRow):
        t._touch(row.id, networks=True)
        t.extras.refresh_opts()
        keep_in_use(t, now, row.id, effects)
        if not row.deleted:
            t._tidy_claims(now, row.id)
        t._follow_unscoped(now, row.id, effects)
    elif isinstance(row, ClaimRow):
        t.visibility.note_owner(row.writer, now)
        t._tidy_claims(now, row.net)
    else:
        t.visibility.note_owner(row.writer, now)
        t.visibility.forget_peers(row.net)
        t._touch(row.net)
        if not row.deleted and t.visibility.up(row.node):
            t.sync.new_peer(now, row.net, row.node, effects)


def merge_endpoints(
    t: Tables, now: float, net: str, rows: Sequence[EndpointRow], effects: list[Effect], *, rebroadcast: bool
) -> None:
    if net not in t.sync.joined:
        return  # scoping: we do not take part in this network
    changed = False
    for row in rows:
        t._witness(row.lamport)
        if row.owner == t.node:
            own_echo(t, now, row, effects)
            continue
        if t.visibility.reaped(row.owner, now):
            continue
        row.since = now
        if not t.store.merge(row):
            continue
        t.stats.rows_applied += 1
        t.visibility.note_owner(row.owner, now)
        changed = True
        if t.trace is not None:
            t.trace("merge", row.id, row.owner)
        if rebroadcast:  # not rows from a bulk sync: that is anti-entropy already
            t.sync.queue(now, net, queue_key(row), encode_row(row, now))
    if changed:
        t._touch(net)


def own_echo(t: Tables, now: float, row: AnyRow, effects: list[Effect]) -> None:
    """Owner authority: a version of our own row we do not hold supersedes ours
    (a life before a restart, or a delete whose tombstone we reaped): publish
    our truth above it."""
    cur = t.store.current(row)
    if cur is not None and not newer(row, cur):
        return
    t.stats.reasserts += 1
    if isinstance(row, MemberRow):
        joined = row.net in t.sync.joined
        t._write(now, t._member_row(now, row.net, joined))
        if joined and row.deleted:
            # Peers dropped our rows older than that leave: publish them above it.
            for ep in t.extras.mine_on(row.net):
                t._write(now, EndpointRow(ep.network, t.node, ep.id, t._tick(), False, ep, since=now))
            t.sync.gossip(now, row.net, effects)
    elif isinstance(row, ClaimRow):
        live = cur is not None and not cur.deleted
        t._write(now, t._claim_row(now, row.net, row.family, row.block, live))
    elif isinstance(row, EndpointRow):
        mine = t._local.get(row.id) or t.host_endpoint(row.net)
        if mine is not None and mine.network == row.net and mine.id == row.id:
            t._write(now, EndpointRow(row.net, t.node, mine.id, t._tick(), False, mine, since=now))
        else:
            t._write(now, t._endpoint_tombstone(now, row.net, row.id))


def keep_in_use(t: Tables, now: float, net: str, effects: list[Effect]) -> None:
    """A network deleted elsewhere while we have endpoints on it is re-published
    (in use wins over a concurrent delete)."""
    row = t.store.networks.get(net)
    if row is None or not row.deleted or row.value is None or not t.visibility.local_on(net):
        return
    t._write(now, NetworkRow(net, t._tick(), t.node, False, row.value))
    effects.append(Log("warning", f"tables: network {row.value.name!r} ({net[:12]}) was removed "
                                  "elsewhere while local endpoints use it; re-published it"))
