"""Every bound the agent puts on what others send it or make it keep, in one place.

Owns: the agent-side limits (control API, JSON documents, state records, inbound
gossip streams, endpoints per network), their defaults, the ``[limits]`` settings an
operator may change (``Limits``; config keys ``limits.<name>``, flags
``--limit NAME=VALUE``, environment ``OVERLAY_AGENT_LIMITS_<NAME>``) and the one
bounded JSON decoder (``loads``) that the control protocol (both sides), the state
files and every other JSON reader of the agent use. docs/operations.md, "Limits",
lists every limit, its default and how to tune it; the gossip core's own limits
(decoders, member table) are ``gossip.<name>`` settings documented in the same table.
Does not: enforce the stream or control limits itself (``agent.membership.transport``,
``agent.control.server``), or read the configuration (``agent.config``).

Constants (not settings) are limits that ``agentctl`` needs too (it has no agent
configuration) or that the kernel fixes.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from typing import Any

KiB = 1024
MiB = 1024 * 1024

# -- constants -------------------------------------------------------------------------------

JSON_MAX_DEPTH = 64
"""Deepest nesting of arrays/objects accepted in any JSON document the agent or agentctl
reads. Python's parser recurses once per level: ~1,000 levels would raise RecursionError."""
CONTROL_MAX_REQUEST = 64 * KiB
"""Longest control request line (bytes)."""
CONTROL_MAX_REPLY = 64 * MiB
"""Longest control reply line agentctl reads (bytes)."""
STATE_RECORD_MAX = 16 * MiB
"""Largest state record (``<state_dir>/NAME.json``) written or read; a write beyond it fails."""
KEYRING_FILE_MAX = 1 * MiB
"""Largest keyring file read."""
BRIDGE_MAX_PORTS = 1023
"""Ports a Linux bridge can hold (BR_MAX_PORTS = 1024, port number 0 reserved): the
kernel answers "Exchange full" (EXFULL) beyond it."""
ENDPOINTS_PER_NETWORK = BRIDGE_MAX_PORTS - 1
"""Endpoints of one network on one host: the network's bridge holds its VXLAN device
and one port per endpoint (1,022)."""


# -- settings ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """The tunable agent-side limits (``[limits]`` in agent.toml). Defaults fit a
    10,000-node cluster; lower them to shed load sooner, raise them only with memory
    to match (docs/operations.md, "Limits")."""

    control_connections: int = 64
    """Control socket connections at once; more are refused with an error line."""
    control_idle_timeout: float = 60.0
    """A control connection that sends no complete request for this long is closed (s)."""
    stream_max_bytes: int = 32 * MiB
    """Largest inbound gossip stream message (push/pull, user message), framed size."""
    stream_slots: int = 128
    """Inbound gossip TCP streams at once (memberlist's 128), all sources together."""
    stream_slots_reserved: int = 64
    """Of ``stream_slots``, kept for addresses of known members: connections from other
    addresses (joiners, and anyone else) share the rest."""
    stream_slots_per_source: int = 8
    """Inbound streams at once from one IP address that is not a known member's."""
    stream_idle_timeout: float = 5.0
    """An inbound stream that sends nothing for this long before its message is complete
    is closed (s); the whole exchange is also bounded by ``gossip.tcp_timeout``."""
    stream_buffer_bytes: int = 64 * MiB
    """Bytes all stream messages (inbound, and replies to our requests) may hold at once;
    a stream waits for room (within its timeouts) before it reads more."""
    stream_buffer_unknown_bytes: int = 32 * MiB
    """Of ``stream_buffer_bytes``, what streams from addresses that are not known members
    may hold together."""
    endpoints_per_network: int = ENDPOINTS_PER_NETWORK
    """Endpoints of one network on this host (at most the bridge's 1,022)."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"limits.{f.name} must be a positive number (got {value!r})")
        if self.stream_slots_reserved >= self.stream_slots:
            raise ValueError(f"limits.stream_slots_reserved ({self.stream_slots_reserved}) must be "
                             f"below limits.stream_slots ({self.stream_slots})")
        if self.stream_buffer_unknown_bytes > self.stream_buffer_bytes:
            raise ValueError("limits.stream_buffer_unknown_bytes must not exceed limits.stream_buffer_bytes")
        if self.stream_buffer_unknown_bytes < 64 * KiB:
            raise ValueError("limits.stream_buffer_unknown_bytes must be at least 65536")
        if self.endpoints_per_network > ENDPOINTS_PER_NETWORK:
            raise ValueError(f"limits.endpoints_per_network cannot exceed {ENDPOINTS_PER_NETWORK} "
                             f"(a Linux bridge holds at most {BRIDGE_MAX_PORTS} ports)")

    @classmethod
    def fields(cls) -> dict[str, type]:
        """Setting name -> type (int or float), for ``agent.config``."""
        return {f.name: type(f.default) for f in dataclasses.fields(cls)}

    def with_(self, **changes: Any) -> Limits:
        """A copy with some settings changed; ValueError for a bad name or value."""
        unknown = set(changes) - set(self.fields())
        if unknown:
            raise ValueError(f"unknown limit {sorted(unknown)[0]!r}")
        return dataclasses.replace(self, **changes)


DEFAULT = Limits()


# -- the bounded JSON decoder ------------------------------------------------------------------------


class JSONLimitError(ValueError):
    """A JSON document refused: not JSON, too large or nested too deeply (one line)."""


_STRING = re.compile(rb'"[^"]*"')
_ALL_BUT_STRUCTURE = bytes(range(256)).translate(None, b'[]{}"')
"""Every byte but brackets and quotes (what nesting and strings are made of)."""


def nesting_depth_exceeds(data: bytes, limit: int) -> bool:
    """Whether the arrays/objects of ``data`` (JSON text) nest deeper than ``limit``.

    Linear in ``len(data)`` times min(depth, limit), all of it in C: escapes are
    dropped, only brackets and quotes are kept, strings are dropped, then innermost
    pairs are removed once per level. Exact for valid JSON; malformed input (refused
    by the parser anyway) may be called too deep.
    """
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    # Escapes go first (an escaped backslash, then an escaped quote), so every quote
    # left delimits a string; then only brackets and quotes stay, then the strings go.
    plain = data.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _ALL_BUT_STRUCTURE)
    skeleton = _STRING.sub(b"", plain).translate(None, b'"').replace(b"{", b"[").replace(b"}", b"]")
    rounds = 0
    while skeleton:
        reduced = skeleton.replace(b"[]", b"")
        if reduced == skeleton:
            # Unbalanced ("]]][[["): the parser would go as deep as the opens left.
            return rounds + skeleton.count(b"[") > limit
        rounds += 1
        if rounds > limit:
            return True
        skeleton = reduced
    return False


def loads(data: bytes | str, *, max_bytes: int, what: str = "JSON document",
          max_depth: int = JSON_MAX_DEPTH) -> Any:
    """Parse ``data`` as JSON within ``max_bytes`` and ``max_depth``.

    Raises JSONLimitError (a ValueError) with one line naming ``what`` and the problem:
    never RecursionError, whatever the input.
    """
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    if len(raw) > max_bytes:
        raise JSONLimitError(f"{what} is too large ({len(raw)} bytes; the limit is {max_bytes})")
    if nesting_depth_exceeds(raw, max_depth):
        raise JSONLimitError(f"{what} is nested too deeply (more than {max_depth} levels)")
    try:
        return json.loads(raw)
    except RecursionError:  # a backstop: the depth check above should have caught it
        raise JSONLimitError(f"{what} is nested too deeply") from None
    except UnicodeDecodeError:
        raise JSONLimitError(f"{what} is not JSON (not UTF-8 text)") from None
    except ValueError as exc:
        raise JSONLimitError(f"{what} is not JSON ({exc})") from None
