"""Device names, and the rule that says which kernel objects are ours.

Owns: ``<prefix>br-<vni>`` / ``<prefix>vx-<vni>`` naming and ``owned_kind``, the
single ownership test used by ``plan`` and the kernel adapters. A device is ours
only if its name parses back to one of our names; entries (FDB, neighbours) are
ours only if they sit on a device that is ours. Everything else (operator
devices, their entries, dynamic or bridge-master FDB rows) is never touched.
Does not create anything.

Why the VNI in the name: it is unique in the cluster and per namespace the kernel
already refuses two VXLAN devices with one VNI+port, so the name is a stable,
readable key that survives agent restarts (a restarted agent adopts its devices
by name). Linux limits interface names to 15 bytes: with a VNI of up to 8 digits
the prefix may have at most 4 characters.
"""

from __future__ import annotations

import functools
import sys

IFNAMSIZ = 15
MAX_VNI = (1 << 24) - 1
MAX_PREFIX = IFNAMSIZ - len("br-") - len(str(MAX_VNI))


def check_prefix(prefix: str) -> str:
    """Validate a device-name prefix (config error -> ValueError with the reason)."""
    if not 1 <= len(prefix) <= MAX_PREFIX:
        raise ValueError(f"device prefix {prefix!r} must have 1..{MAX_PREFIX} characters")
    if not all(c.isascii() and (c.isalnum() or c in "-_.") for c in prefix):
        raise ValueError(f"device prefix {prefix!r} may only use letters, digits, '-', '_', '.'")
    return prefix


def bridge_name(prefix: str, vni: int) -> str:
    # Interned, as the kernel reads' link names are (dataplane.rtnl): rows keyed by
    # device name compare by identity.
    return sys.intern(f"{prefix}br-{vni}")


def vxlan_name(prefix: str, vni: int) -> str:
    return sys.intern(f"{prefix}vx-{vni}")


def owned_kind(name: str, prefix: str) -> str | None:
    """ "bridge" or "vxlan" if ``name`` is one of our device names, else None."""
    if not name.startswith(prefix):
        return None
    rest = name[len(prefix) :]
    for tag, kind in (("br-", "bridge"), ("vx-", "vxlan")):
        if rest.startswith(tag):
            digits = rest[3:]
            if digits.isdigit() and digits.isascii() and str(int(digits)) == digits:
                return kind if 1 <= int(digits) <= MAX_VNI else None
    return None


@functools.lru_cache(maxsize=1 << 14)
def valid_ifname(name: str) -> bool:
    """What the kernel accepts as an interface name (dev_valid_name). Memoised: every
    compile checks every local endpoint's name (a character loop: at 1,000 endpoints
    the largest part of a compile), and the names repeat from one compile to the next."""
    return (
        0 < len(name.encode()) <= IFNAMSIZ
        and name not in (".", "..")
        and not any(c == "/" or c == ":" or c.isspace() for c in name)
    )
