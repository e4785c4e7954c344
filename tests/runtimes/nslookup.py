"""What busybox ``nslookup NAME`` printed inside a test container, read one way for the
Docker and podman tests.

Owns: the IPv4 address of an answer, and the rcode of every query that failed
(busybox asks A and AAAA, and with a ``search`` line in the container's resolv.conf
reports the search name's outcome), so a "name gone" check can demand NXDOMAIN rather
than accept any failure (a SERVFAIL, REFUSED or an unreachable server is no proof that
a name went). Does not: run the command (the labs' ``exec``).

busybox 1.35's forms (stdout), checked against a responder in a scratch namespace:
``Name:\tweb\nAddress: 10.1.2.3`` for an answer, ``** server can't find web: NXDOMAIN``
per failed query, ``;; connection timed out; no servers could be reached`` when no
server answered (no rcode at all).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_FAILED = re.compile(r"^\*\* server can't find (\S+): (\S+)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class Lookup:
    address: str | None
    """The first IPv4 address after ``Name:``, if any."""
    rcodes: tuple[str, ...]
    """The rcode of each query busybox reports as failed (NXDOMAIN, SERVFAIL, ...)."""

    @property
    def nxdomain(self) -> bool:
        """The name does not exist: no address, and every reported failure is NXDOMAIN."""
        return self.address is None and bool(self.rcodes) and all(r == "NXDOMAIN" for r in self.rcodes)


def parse(out: str) -> Lookup:
    tail = out.split("Name:", 1)[1] if "Name:" in out else ""
    address = next((w for w in tail.split() if w.count(".") == 3 and w.replace(".", "").isdigit()), None)
    return Lookup(address, tuple(m.group(2) for m in _FAILED.finditer(out)))
