"""Serf's network coordinates (gossip/serf/coordinate.py) and their place in pings.

Reference: serf ``coordinate/client.go`` and ``serf/ping_delegate.go``. The Go code is
not run here; the checks are the properties serf's own tests check (a pair converges
to its RTT, bad input is refused, the coordinate stays finite) and the wire format
byte by byte as Go's msgpack handle writes the struct.
"""

from __future__ import annotations

import dataclasses
import random
import struct

import msgpack
import pytest

from gossip.config import Config
from gossip.errors import DecodeError
from gossip.serf import coordinate as vivaldi
from gossip.serf.coordinate import Coordinate, CoordinateClient
from tests.unit.swimharness import Harness


def _go_payload(vec: list[float], error: float, adjustment: float, height: float) -> bytes:
    """What serf's AckPayload writes: version 1, then a fixmap of 4 in field order."""
    out = b"\x01\x84" + b"\xa3Vec" + b"\x98" + b"".join(b"\xcb" + struct.pack(">d", x) for x in vec)
    for name, value in (("Error", error), ("Adjustment", adjustment), ("Height", height)):
        out += bytes([0xA0 | len(name)]) + name.encode() + b"\xcb" + struct.pack(">d", value)
    return out


def test_the_ack_payload_is_byte_for_byte_what_serf_writes() -> None:
    c = Coordinate(tuple(float(i) / 1000 for i in range(8)), 0.5, -0.001, 2e-5)
    assert vivaldi.encode_ack_payload(c) == _go_payload(list(c.vec), 0.5, -0.001, 2e-5)
    assert vivaldi.decode_ack_payload(_go_payload(list(c.vec), 0.5, -0.001, 2e-5)) == c


@pytest.mark.parametrize("bad", [b"", b"\x02\x80", b"\x01\xc1", b"\x01\x93\x01\x02\x03",
                                 b"\x01" + msgpack.packb({"Vec": "x"}), b"\x01" + msgpack.packb({"Vec": [None]})])
def test_a_bad_payload_is_refused_with_a_decode_error(bad: bytes) -> None:
    with pytest.raises(DecodeError):
        vivaldi.decode_ack_payload(bad)


def test_bad_updates_are_refused_and_leave_the_coordinate_alone() -> None:
    client = CoordinateClient(random.Random(1))
    other = Coordinate.origin()
    assert client.update("b", Coordinate((0.0,) * 3), 0.01) is None  # dimensionality
    assert client.update("b", dataclasses.replace(other, error=float("nan")), 0.01) is None
    assert client.update("b", other, -0.1) is None and client.update("b", other, 11.0) is None
    assert client.coord == Coordinate.origin()


def _converge(rtt: float, rounds: int = 200, seed: int = 7) -> float:
    a, b = CoordinateClient(random.Random(seed)), CoordinateClient(random.Random(seed + 1))
    for _ in range(rounds):
        b_seen = b.coord
        a.update("b", b_seen, rtt)
        b.update("a", a.coord, rtt)
    return a.coord.distance(b.coord)


@pytest.mark.parametrize("rtt", [0.0005, 0.010, 0.150])
def test_a_pair_converges_to_its_round_trip(rtt: float) -> None:
    est = _converge(rtt)
    assert est == pytest.approx(rtt, rel=0.1), est


def test_four_nodes_in_a_square_estimate_sides_and_diagonals() -> None:
    # 10 ms sides, ~14 ms diagonals, as serf's TestPerformance_Height-style grids.
    pos = {"a": (0, 0), "b": (1, 0), "c": (1, 1), "d": (0, 1)}
    rtt = {(x, y): 0.010 * ((pos[x][0] - pos[y][0]) ** 2 + (pos[x][1] - pos[y][1]) ** 2) ** 0.5
           for x in pos for y in pos if x != y}
    clients = {n: CoordinateClient(random.Random(n)) for n in pos}
    rng = random.Random(3)
    names = sorted(pos)
    for _ in range(2000):
        x, y = rng.sample(names, 2)
        clients[x].update(y, clients[y].coord, rtt[(x, y)])
    for (x, y), true in rtt.items():
        assert clients[x].coord.distance(clients[y].coord) == pytest.approx(true, rel=0.25)


def test_coordinates_ride_on_acks_between_cores_once_enabled() -> None:
    h = Harness(dataclasses.replace(Config.local()), seed=2, latency=0.004)
    for name in ("a", "b", "c"):
        h.add(name)
    for name in ("a", "b"):
        h.nodes[name].serf.enable_coordinates(name)
    h.join_all("a")
    h.wait(lambda: h.converged(["a", "b", "c"]), timeout=10)
    h.run_for(20.0)
    a, b = h.nodes["a"].serf, h.nodes["b"].serf
    ab, ba = a.coordinate("b"), b.coordinate("a")
    assert ab is not None and ba is not None
    own = a.coordinate("a")
    assert own is not None and own.distance(ab) == pytest.approx(0.008, rel=0.5)  # 2 x 4 ms
    assert a.coordinate("c") is None  # c answers pings without a coordinate (off)
    assert h.nodes["c"].serf.ack_payload() is None
