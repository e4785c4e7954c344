"""Endpoint aliases: further DNS names of an endpoint, in a network-scoped extension row.

Owns: checking an endpoint's aliases (Docker's ``--network-alias``, ``agentctl endpoint
create --alias``), the alias row (an extension row of kind ``KIND``, scoped to the
endpoint's network, id = the endpoint's id, written only by the endpoint's owner) and its
payload codec, and which aliases are in force (``pick``: only a live row whose writer
owns a visible endpoint of that id and network names it).
Does not: store, gossip or reap rows (``extrows``, ``extras``, ``sync``), answer DNS
(``agent.dns``).

Why an extension row: endpoint rows are decoded strictly by releases 0.1.0 and 0.2.0
(a fixed number of fields), so aliases cannot ride in them. A scoped extension row
travels in NET_GOSSIP ``[3]`` and BULK_SYNC ``[5]``, which older agents skip (0.1.0)
or keep and relay unread (0.2.0). Aliases change no forwarding, so no feature gate:
a host whose agent does not know the kind simply does not resolve them.

Lifetime: written with the endpoint (or later, by the Docker plugin once dockerd names
the container) and tombstoned with it; a reader ignores a row whose endpoint it does
not see (removed, hidden, lost a conflict), so an alias vanishes with its endpoint even
where the alias tombstone arrives later.

Payload (msgpack, no maps): ``[1, [alias, ...]]``; at most ``MAX_ALIASES`` names,
each an endpoint name (``rows.check_name``: 1-64 letters, digits, ``_ . -``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from gossip.tables.extrows import ExtensionRow
from gossip.tables.rows import Endpoint, TableError, check_name

KIND = 5
"""Extension row kind of endpoint aliases (``netopts.KIND`` is 4)."""
FORMAT = 1
MAX_ALIASES = 32


def check(names: Iterable[str]) -> tuple[str, ...]:
    """The aliases to publish: checked, duplicates (case-insensitive) dropped, order kept.
    Raises TableError (one line)."""
    if isinstance(names, str):
        names = [names]
    out: dict[str, str] = {}
    for name in names:
        check_name(name, "alias")
        out.setdefault(name.lower(), name)
    if len(out) > MAX_ALIASES:
        raise TableError(f"too many aliases ({len(out)}; at most {MAX_ALIASES})")
    return tuple(out.values())


def row(net: str, writer: str, endpoint: str, lamport: int, names: Sequence[str] | None,
        expires: float = math.inf) -> ExtensionRow:
    """An endpoint's alias row; ``names`` None: its tombstone (``expires``: when it may go)."""
    if names is None:
        return ExtensionRow(KIND, net, writer, endpoint, lamport, True, None, (), expires)
    return ExtensionRow(KIND, net, writer, endpoint, lamport, False, payload(names), (), math.inf)


def payload(names: Sequence[str]) -> list[Any]:
    return [FORMAT, list(names)]


def decode_payload(body: Any) -> tuple[str, ...] | None:
    """The aliases of a row's payload; None when it is not a valid one (a newer format or
    junk: the row is kept and relayed all the same)."""
    if not (isinstance(body, list) and len(body) >= 2 and body[0] == FORMAT and isinstance(body[1], list)):
        return None
    if not all(isinstance(n, str) for n in body[1]):
        return None
    try:
        return check(body[1])
    except TableError:
        return None


def pick(rows: Iterable[ExtensionRow], endpoints: Iterable[Endpoint]) -> dict[str, tuple[str, ...]]:
    """Endpoint id -> its aliases in force, for the ``endpoints`` given (the visible ones):
    a live row of ``KIND`` in the endpoint's network, written by the endpoint's owner."""
    by_key: Mapping[tuple[str, str, str], Endpoint] = {(e.network, e.owner, e.id): e for e in endpoints}
    out: dict[str, tuple[str, ...]] = {}
    for r in rows:
        if r.kind != KIND or r.deleted or (r.net, r.writer, r.id) not in by_key:
            continue
        names = decode_payload(r.payload)
        if names:
            out[r.id] = names
    return out
