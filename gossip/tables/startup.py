"""How a replica starts: from this node's persisted rows after a restart, or converged.

Owns: ``Tables.restore_local_endpoints`` (re-publishing the persisted local endpoints
and the networks they are on, with fresh Lamport times) and ``Tables.bootstrap_rows``
(a converged start without traffic, for simulators and tests). Functions on the
replica (``replica.Tables`` calls them); sans-IO like it.
Does not: persist anything (the agent's ``agent.store``), or merge rows from peers
(``remote``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import TYPE_CHECKING

from gossip.effects import Effect
from gossip.tables import remote
from gossip.tables.rows import AnyRow, Endpoint, EndpointRow, Network, NetworkRow

if TYPE_CHECKING:
    from gossip.tables.replica import Tables


def restore_local_endpoints(
    t: Tables,
    now: float,
    endpoints: Iterable[Endpoint],
    networks: Iterable[Network] = (),
    clock: int = 0,
) -> list[Effect]:
    """After a restart: re-publish this node's persisted endpoints with fresh Lamport
    times (owner, VTEP and conflict flag become this node's). ``networks`` are their
    definitions (``local_networks()``), so a network deleted meanwhile comes back
    while in use; ``clock`` is the persisted ``clock``. Call before ``Swim.join``.
    Raises TableError, restoring nothing, if any row is malformed."""
    from gossip.tables import validation

    t._now = now
    eps, nets = list(endpoints), list(networks)
    validation.check_restored(eps, nets)
    if isinstance(clock, int) and not isinstance(clock, bool):
        t.clock = max(t.clock, clock)
    t.clock = max([t.clock, *(e.created for e in eps), *(n.created for n in nets)])
    in_use = {e.network for e in eps}
    for n in nets:
        if n.id not in t.store.networks and n.id in in_use:
            # Published at once: if it was deleted (or even forgotten) meanwhile, it
            # comes back because it is in use; any other version is the same network.
            t._write(now, NetworkRow(n.id, t._tick(), t.node, False, replace(n, options=None)))
            # The join push/pull brings the cluster's version if anyone has one.
            t._unconfirmed[n.id] = now + 2 * t.sync.push_pull_interval()
        if n.options is not None and n.id in in_use and n.id not in t.visibility.netopts:
            t.extras.write_opts(now, n.id, n.options)
    effects: list[Effect] = []
    touched: dict[str, None] = {}
    for e in eps:
        if e.id in t._local:
            continue
        ep = replace(e, owner=t.node, vtep=t.vtep, conflict=False)
        if ep.network not in t.sync.joined:
            t._join(now, ep.network, effects)
        t._local[ep.id] = ep
        t._write(now, EndpointRow(ep.network, t.node, ep.id, t._tick(), False, ep, since=now))
        touched[ep.network] = None
    t._tidy_hosts(now)
    for net in touched:
        t._tidy_claims(now, net)
        remote.keep_in_use(t, now, net, effects)
    t._finish(effects)
    return effects


def bootstrap_rows(t: Tables, rows: Iterable[AnyRow]) -> None:
    """Install rows as an already converged start, without traffic: for simulators
    and tests only (the counterpart of ``Swim.bootstrap_members``); a real node learns
    rows from gossip and push/pull.

    Rows are merged by the usual order and held as given, not copied, so replicas may
    share them (no replica mutates a live row it holds). The clock witnesses every
    row. Skipped: rows this node writes (its own truth comes from its API calls) and
    endpoint rows of networks it does not take part in. Owners are taken to be up.
    Nothing is queued for gossip and no effect results; views are recomputed.
    """
    clock = t.clock
    merge = t.store.merge
    joined = t.sync.joined
    for row in rows:
        if row.lamport > clock:
            clock = row.lamport
        if row.writer == t.node or (isinstance(row, EndpointRow) and row.net not in joined):
            continue
        merge(row)
    t.clock = clock
    t._touch_all()
    t.changes.announce(t._now)
