"""The seam between the world and the protocol code it runs.

Owns: ``Core``, the part of ``gossip.swim.Swim``'s public API the simulator
drives (the same calls the agent's driver makes), node naming and addressing,
and ``SwimFactory``, which builds one real ``Swim`` per simulated node with
its own seeded RNG. Tests may pass a different factory (a fake core) to
exercise the world without the protocol.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from gossip.config import Config
from gossip.effects import Address, Effect
from gossip.members import Member

if TYPE_CHECKING:
    from gossip.swim import Swim

PORT = 7946


class Core(Protocol):
    """What the world calls on a node's protocol instance (``Swim``'s public API)."""

    def handle_packet(self, now: float, src: Address, data: bytes) -> list[Effect]: ...

    def handle_stream(self, now: float, src: Address, data: bytes) -> tuple[bytes | None, list[Effect]]: ...

    def handle_stream_reply(self, now: float, token: int, reply: bytes | None) -> list[Effect]: ...

    def handle_unreachable(self, now: float, addr: Address) -> list[Effect]: ...

    def tick(self, now: float) -> list[Effect]: ...

    def next_deadline(self) -> float: ...

    def join(self, now: float, seeds: Sequence[Address]) -> list[Effect]: ...

    def leave(self, now: float) -> list[Effect]: ...

    def leave_done(self) -> bool: ...

    def set_meta(self, now: float, meta: bytes) -> list[Effect]: ...

    @property
    def local(self) -> Member: ...


class CoreFactory(Protocol):
    def __call__(self, idx: int, name: str, addr: Address, now: float, generation: int) -> Core: ...

    def preconverge(self, now: float, cores: Sequence[Core]) -> None:
        """Give every core a full, converged member table without any traffic."""
        ...


def node_name(idx: int, n: int) -> str:
    """Sortable names: n0000 … n9999 (width grows with N)."""
    return f"n{idx:0{max(4, len(str(max(0, n - 1))))}d}"


def node_addr(idx: int) -> Address:
    """10.x.y.z:7946 from the index (index 0 is 10.0.0.1)."""
    v = idx + 1
    if v >= 1 << 24:
        raise ValueError("at most 16,777,215 simulated nodes")
    return (f"10.{(v >> 16) & 255}.{(v >> 8) & 255}.{v & 255}", PORT)


class SwimFactory:
    """Builds a real ``gossip.swim.Swim`` per node, seeded by ``f"{seed}:{name}"``."""

    def __init__(self, config: Config, seed: int) -> None:
        from gossip.wire import codec as wire

        # One process decodes every node's copy of the same gossip: a bigger memo of
        # decoded parts pays off here (it only saves work; results are identical). It
        # is first in, first out: 65,536 keep a 10,000-node storm's repeats (≈ 20 MiB).
        wire.set_part_cache_size(1 << 16)
        # Likewise the push/pull merge's memo of (state, member) pairs that are no news.
        from gossip import antientropy

        antientropy.set_merge_memo_size(1 << 16)
        # Every datagram a node builds is decoded by another core of this process:
        # its decode is filed as it is built (the same answer, without inflating it).
        wire.set_preseed_decodes(True)
        self.config = config
        self.seed = seed
        self.keys: tuple[bytes, ...] = ()
        """Gossip keys every node starts with, primary first (empty: no encryption).
        Scenarios set this in ``configure``, before any node starts."""
        self.swim_class: type[Swim] | None = None
        """A ``Swim`` subclass to run instead (what-if models of a core change)."""
        from gossip.membertable import NameIndex

        self.names = NameIndex(shared=True)
        """One interned name index for every node's member table: a table is then rows
        and member references, not a dict of names per node (gossip/membertable.py)."""

    def __call__(self, idx: int, name: str, addr: Address, now: float, generation: int) -> Core:
        from gossip.swim import Swim

        suffix = f":{generation}" if generation else ""
        rng = random.Random(f"{self.seed}:{name}{suffix}")
        kwargs: dict[str, Any] = {}
        if self.keys:
            from crypto.keyring import Keyring

            # Nonces from their own stream: the protocol RNG's draws stay as without keys.
            nonces = random.Random(f"{self.seed}:{name}{suffix}:nonce")
            kwargs["keyring"] = Keyring(self.keys, nonce_source=nonces.randbytes)
        swim = (self.swim_class or Swim)(self.config, name, addr, rng=rng, now=now, **kwargs)
        swim._table.share_names(self.names)  # memory layout only: behaviour is the same
        return swim

    def preconverge(self, now: float, cores: Sequence[Core]) -> None:
        # Every node's own Member value is shared by all tables, and so is the table
        # itself: each core's table keeps only what changes afterwards
        # (gossip/membertable.py, MemberImage).
        from gossip.membertable import MemberImage

        members = MemberImage(self.names, [c.local for c in cores])
        for c in cores:
            bootstrap = getattr(c, "bootstrap_members", None)
            if bootstrap is None:
                raise RuntimeError(
                    "the pre-converged start needs Swim.bootstrap_members(now, members); "
                    "use the 'bootstrap' scenario (real joins) with this core"
                )
            bootstrap(now, members)
