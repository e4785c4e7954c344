"""Output helpers every ``agentctl`` sub-command shares: docker-style tables and JSON.

Owns: ``table`` (left-aligned columns, 3 spaces apart, like docker's tabwriter) and
``dump`` (indented, key-sorted JSON for ``--format json``), so that membership and
network commands print alike. Does not: know any command or reply shape.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, TextIO


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by 3 spaces (docker's tabwriter style)."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = []
    for row in [list(headers), *rows]:
        cells = [c.ljust(w) for c, w in zip(row, widths, strict=True)]
        lines.append("   ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def dump(obj: Any, out: TextIO) -> None:
    out.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")
