"""The event trace of a run: a running hash, and optionally a readable log.

Owns: what goes into the trace (every datagram and stream sent, every member
event a node reports, every scenario action) and its hash. Two runs with the
same arguments and seed must produce the same hash; the determinism tests
compare it across processes with different ``PYTHONHASHSEED`` values.

Times are hashed as IEEE doubles, node identities as indices, payloads as the
exact bytes, so any divergence in protocol behaviour changes the hash.
"""

from __future__ import annotations

import hashlib
import json
import struct
from typing import TextIO

_SEND = struct.Struct("<BdII").pack
_EVENT = struct.Struct("<BdIB").pack

KIND_UDP = 1
KIND_TCP = 2
KIND_EVENT = 3
KIND_ACTION = 4


class Trace:
    """Accumulates the trace hash; writes JSON lines too when given a file."""

    __slots__ = ("_h", "_out", "records")

    def __init__(self, out: TextIO | None = None) -> None:
        self._h = hashlib.blake2b(digest_size=16)
        self._out = out
        self.records = 0

    def send(self, kind: int, at: float, src: int, dst: int, data: bytes) -> None:
        self.records += 1
        h = self._h
        h.update(_SEND(kind, at, src, dst))
        h.update(data)
        if self._out is not None:
            # memberlist type byte; a CRC frame (12) is named by what it carries.
            mtype = data[5] if len(data) > 5 and data[0] == 12 else (data[0] if data else None)
            self._line({"t": at, "k": "udp" if kind == KIND_UDP else "tcp", "src": src, "dst": dst,
                        "len": len(data), "type": mtype})

    def event(self, at: float, observer: int, code: int, subject: str) -> None:
        self.records += 1
        self._h.update(_EVENT(KIND_EVENT, at, observer, code))
        self._h.update(subject.encode())
        if self._out is not None:
            self._line({"t": at, "k": "event", "node": observer, "code": code, "subject": subject})

    def action(self, at: float, text: str) -> None:
        self.records += 1
        self._h.update(_EVENT(KIND_ACTION, at, 0, 0))
        self._h.update(text.encode())
        if self._out is not None:
            self._line({"t": at, "k": "action", "what": text})

    def _line(self, obj: dict[str, object]) -> None:
        assert self._out is not None
        self._out.write(json.dumps(obj, separators=(",", ":")) + "\n")

    def hexdigest(self) -> str:
        return self._h.hexdigest()
