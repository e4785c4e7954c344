"""A push/pull marks its peer heard: who counts as "alone at the peer's IP" (ourselves
never do: agents sharing our host are still told apart from each other).

Owns: the count of members at the peer's IP in ``AntiEntropy._heard_over_tcp``.
Does not: the spoofing rule itself (tests/unit/test_core_hardening.py).
"""

from __future__ import annotations

import random

from gossip.config import Config
from gossip.swim import Swim
from gossip.wire import codec as wire
from gossip.wire.messages import Alive, NodeState, PushNodeState, PushPull

CFG = Config.local().with_(relay_at_once=True)
HOST = "10.0.0.1"


def _node(others: list[tuple[str, int]]) -> Swim:
    """Us at HOST:7946 with ``others`` (name, port) also at HOST."""
    node = Swim(CFG, "a", (HOST, 7946), rng=random.Random(1), now=0.0)
    for name, port in others:
        alive = Alive(1, name, bytes([10, 0, 0, 1]), port, b"", bytes([1, 5, 2, 0, 0, 0]))
        node.handle_packet(1.0, (HOST, port), wire.encode_packet([wire.encode(alive)], compress=False, crc=False, keyring=None))
    return node


def _push_pull_from_host(node: Swim, name: str, port: int) -> None:
    claim = PushPull(False, (PushNodeState(name, bytes([10, 0, 0, 1]), port, b"", 1, NodeState.ALIVE),), b"")
    node.handle_stream(2.0, (HOST, 40000), wire.encode_stream(claim, compress=False, keyring=None))


def test_a_peer_sharing_our_host_alone_there_besides_us_is_heard() -> None:
    node = _node([("b", 7947)])
    _push_pull_from_host(node, "b", 7947)
    assert node._table.heard("b")


def test_two_peers_sharing_a_host_are_not_told_apart() -> None:
    node = _node([("b", 7947), ("c", 7948)])
    _push_pull_from_host(node, "b", 7947)
    assert not node._table.heard("b")
