"""Our nftables tables as text for ``nft -f`` and as read back from ``nft -j``. Pure.

Owns: the tag on every rule of ours (a comment ``ov:<12 hex>`` of the rule's text, so a
read-back can tell which rules are there without parsing nft's expression JSON, whose
spelling varies across nft versions), the script that replaces or deletes a table in
one transaction, and ``shape_of_json``: the chains and rule tags of a ``nft -j list
table`` document. Does not: run nft (``kernel``) or decide the rules (``compile``).

Why replace a whole table: a transaction "add table; delete table; add table {...}" is
atomic in the kernel (packets see the old or the new ruleset, never a half), works
whether the table exists or not, and drops anything an operator added inside it.
Limitation (docs/dataplane.md): a rule edited in place that keeps our comment is not
noticed; one deleted, added or reordered is.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from dataplane.nft.model import ChainShape, Table, TableShape

POLICY = "accept"


def tag(family: str, chain: str, rule: str) -> str:
    digest = hashlib.sha256(f"{family}\0{chain}\0{rule}".encode()).hexdigest()
    return f"ov:{digest[:12]}"


def shape(table: Table) -> TableShape:
    """What a read-back of ``table`` shows when the kernel holds exactly it."""
    return tuple(
        (c.name, c.type, c.hook, c.priority, POLICY, tuple(tag(table.family, c.name, r) for r in c.rules))
        for c in table.chains
    )


def replace_script(table: Table) -> str:
    """An ``nft -f`` script that makes ``table`` the whole content of our table, atomically."""
    lines = [f"table {table.family} {table.name} {{}}", f"delete table {table.family} {table.name}",
             f"table {table.family} {table.name} {{"]
    for c in table.chains:
        lines.append(f"  chain {c.name} {{")
        lines.append(f"    type {c.type} hook {c.hook} priority {c.priority}; policy {POLICY};")
        for rule in c.rules:
            lines.append(f'    {rule} comment "{tag(table.family, c.name, rule)}"')
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def delete_script(family: str, name: str) -> str:
    """Delete our table if it exists (the empty add makes the delete never fail)."""
    return f"table {family} {name} {{}}\ndelete table {family} {name}\n"


def shape_of_json(text: str) -> TableShape:
    """The shape of the one table a ``nft -j list table FAMILY NAME`` printed; ValueError
    when the document is not that."""
    try:
        doc = json.loads(text)
        items = doc["nftables"]
        if not isinstance(items, list):
            raise TypeError("nftables is not a list")
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"unexpected nft -j output: {e}") from None
    chains: dict[str, list[Any]] = {}
    order: list[str] = []
    for item in items:
        if not isinstance(item, dict):
            continue
        if isinstance(c := item.get("chain"), dict):
            name = str(c.get("name", ""))
            prio = c.get("prio")
            chains[name] = [name, str(c.get("type", "")), str(c.get("hook", "")),
                            prio if isinstance(prio, int) else -1 << 31, str(c.get("policy", "")), []]
            order.append(name)
        elif isinstance(r := item.get("rule"), dict):
            entry = chains.get(str(r.get("chain", "")))
            if entry is not None:
                entry[5].append(str(r.get("comment", "")))
    out: list[ChainShape] = []
    for name in order:
        n, t, h, p, pol, tags = chains[name]
        out.append((n, t, h, p, pol, tuple(tags)))
    return tuple(out)
