"""A tiny stand-in for ``Swim`` that exercises every path of the world without the protocol.

Each node pings its ring successor every ``period`` seconds; pings are answered
with acks; ``join`` opens one stream to the first seed, which answers
``b"re:" + data``. Everything a core is told is appended to ``log``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from gossip.effects import Address, Effect, MemberJoined, Send, StreamRequest
from gossip.errors import DecodeError
from gossip.members import Member, Status
from gossip.wire.messages import DEFAULT_VSN
from sim.cores import Core, node_addr


class FakeCore:
    def __init__(self, idx: int, name: str, addr: Address, now: float, n: int, period: float,
                 generation: int) -> None:
        self.idx = idx
        self.n = n
        self.period = period
        self.generation = generation
        self.next_at = now + period if period > 0 else math.inf
        self.seq = 0
        self.log: list[tuple[float, str, object]] = []
        self._local = Member(name, addr[0], addr[1], 0, Status.ALIVE, b"", DEFAULT_VSN, now)

    @property
    def local(self) -> Member:
        return self._local

    def handle_packet(self, now: float, src: Address, data: bytes) -> list[Effect]:
        if data == b"bad":
            raise DecodeError("bad")
        self.log.append((now, "packet", data))
        if data.startswith(b"ping"):
            return [Send(src, b"ack" + data[4:])]
        return []

    def handle_stream(self, now: float, src: Address, data: bytes) -> tuple[bytes | None, list[Effect]]:
        self.log.append((now, "stream", data))
        if data == b"close":
            return None, []
        joined = Member(f"peer@{src[0]}", src[0], src[1], 0, Status.ALIVE, b"", DEFAULT_VSN, now)
        return b"re:" + data, [MemberJoined(joined)]

    def handle_stream_reply(self, now: float, token: int, reply: bytes | None) -> list[Effect]:
        self.log.append((now, "reply", (token, reply)))
        return []

    def handle_unreachable(self, now: float, addr: Address) -> list[Effect]:
        self.log.append((now, "unreachable", addr))
        return []

    def tick(self, now: float) -> list[Effect]:
        self.log.append((now, "tick", None))
        out: list[Effect] = []
        while self.next_at <= now:
            self.next_at += self.period
            self.seq += 1
            out.append(Send(node_addr((self.idx + 1) % self.n), b"ping%d" % self.seq))
        return out

    def next_deadline(self) -> float:
        return self.next_at

    def join(self, now: float, seeds: Sequence[Address]) -> list[Effect]:
        self.log.append((now, "join", tuple(seeds)))
        return [StreamRequest(seeds[0], b"join", 1)]

    def leave(self, now: float) -> list[Effect]:
        self.log.append((now, "leave", None))
        return []

    def leave_done(self) -> bool:
        return True

    def set_meta(self, now: float, meta: bytes) -> list[Effect]:
        self._local = self._local.evolve(meta=meta, incarnation=self._local.incarnation + 1)
        return []


class FakeFactory:
    def __init__(self, n: int, period: float = 1.0) -> None:
        self.n = n
        self.period = period
        self.cores: dict[tuple[int, int], FakeCore] = {}

    def __call__(self, idx: int, name: str, addr: Address, now: float, generation: int) -> Core:
        core = FakeCore(idx, name, addr, now, self.n, self.period, generation)
        self.cores[(idx, generation)] = core
        return core

    def preconverge(self, now: float, cores: Sequence[Core]) -> None:
        pass

    def log(self, idx: int, generation: int = 0) -> list[tuple[float, str, object]]:
        return self.cores[(idx, generation)].log
