"""Serf's network coordinates: the Vivaldi client and its wire format (pure).

Owns: ``Coordinate`` (an 8-dimensional Vivaldi position, error, adjustment and
height, serf's units: seconds) and its distance rule, ``CoordinateClient`` (serf's
``coordinate.Client``: latency filter of 3 samples per node, Vivaldi update,
adjustment window of 20, gravity towards the origin, reset when a value stops being
finite), and the ack payload serf's ping delegate carries (``[PingVersion=1]`` + the
coordinate as a msgpack map ``{Vec, Error, Adjustment, Height}``).
Does not: measure round trips or send anything: the core's prober hands a direct
ping's RTT and the peer's ack payload to ``SerfLayer.ping_complete``; the only
randomness is the caller's seeded ``random.Random`` (for the direction between two
coincident coordinates, as serf uses ``rand``).
Reference: serf ``coordinate/{config,coordinate,client}.go``, ``serf/ping_delegate.go``
(AckPayload, NotifyPingComplete); docs/wire.md "Network coordinates".
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

import msgpack

from gossip.errors import DecodeError

DIMENSIONALITY = 8
VIVALDI_ERROR_MAX = 1.5
VIVALDI_CE = 0.25
VIVALDI_CC = 0.25
ADJUSTMENT_WINDOW = 20
HEIGHT_MIN = 10.0e-6
LATENCY_FILTER = 3
GRAVITY_RHO = 150.0
"""serf ``coordinate.DefaultConfig``."""
PING_VERSION = 1
"""serf ``PingVersion``: the first byte of the ack payload."""
MAX_RTT = 10.0
"""serf's Client.Update refuses round trips above 10 s (and below 0)."""
_ZERO = 1.0e-6
MAX_FILTERED_NODES = 65536
"""Ours: latency samples kept for at most this many nodes (serf forgets on reap)."""


@dataclass(frozen=True, slots=True)
class Coordinate:
    vec: tuple[float, ...]
    error: float = VIVALDI_ERROR_MAX
    adjustment: float = 0.0
    height: float = HEIGHT_MIN

    @staticmethod
    def origin() -> Coordinate:
        return Coordinate((0.0,) * DIMENSIONALITY)

    def valid(self) -> bool:
        return all(math.isfinite(x) for x in (*self.vec, self.error, self.adjustment, self.height))

    def raw_distance(self, other: Coordinate) -> float:
        return _magnitude(_diff(self.vec, other.vec)) + self.height + other.height

    def distance(self, other: Coordinate) -> float:
        """Estimated round trip in seconds (serf's DistanceTo)."""
        if len(self.vec) != len(other.vec):
            raise ValueError("coordinate dimensionality does not match")
        dist = self.raw_distance(other)
        adjusted = dist + self.adjustment + other.adjustment
        return adjusted if adjusted > 0.0 else dist

    def apply_force(self, rng: random.Random, force: float, other: Coordinate) -> Coordinate:
        unit, mag = _unit_vector_at(rng, self.vec, other.vec)
        vec = tuple(v + u * force for v, u in zip(self.vec, unit, strict=True))
        height = self.height
        if mag > _ZERO:
            height = max((height + other.height) * force / mag + height, HEIGHT_MIN)
        return Coordinate(vec, self.error, self.adjustment, height)

    def to_json(self) -> dict[str, Any]:
        return {"Vec": list(self.vec), "Error": self.error, "Adjustment": self.adjustment,
                "Height": self.height}


def _diff(a: tuple[float, ...], b: tuple[float, ...]) -> tuple[float, ...]:
    return tuple(x - y for x, y in zip(a, b, strict=True))


def _magnitude(v: tuple[float, ...]) -> float:
    return math.sqrt(sum(x * x for x in v))


def _unit_vector_at(rng: random.Random, a: tuple[float, ...], b: tuple[float, ...]) -> tuple[tuple[float, ...], float]:
    d = _diff(a, b)
    mag = _magnitude(d)
    if mag > _ZERO:
        return tuple(x / mag for x in d), mag
    d = tuple(rng.random() - 0.5 for _ in d)  # coincident: a random direction
    mag = _magnitude(d)
    if mag > _ZERO:
        return tuple(x / mag for x in d), 0.0
    return (1.0,) + (0.0,) * (len(d) - 1), 0.0


class CoordinateClient:
    """serf's coordinate.Client for one node."""

    __slots__ = ("_adj_index", "_adj_samples", "_latency", "_rng", "coord", "resets")

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self.coord = Coordinate.origin()
        self._adj_index = 0
        self._adj_samples = [0.0] * ADJUSTMENT_WINDOW
        self._latency: dict[str, list[float]] = {}
        self.resets = 0

    def forget(self, node: str) -> None:
        self._latency.pop(node, None)

    def _filtered(self, node: str, rtt: float) -> float:
        samples = self._latency.get(node)
        if samples is None:
            if len(self._latency) >= MAX_FILTERED_NODES:
                del self._latency[next(iter(self._latency))]
            samples = self._latency[node] = []
        samples.append(rtt)
        if len(samples) > LATENCY_FILTER:
            del samples[0]
        return sorted(samples)[len(samples) // 2]

    def update(self, node: str, other: Coordinate, rtt: float) -> Coordinate | None:
        """One observation (serf's Client.Update); None if refused (bad coordinate or RTT)."""
        if len(other.vec) != DIMENSIONALITY or not other.valid() or not 0.0 <= rtt <= MAX_RTT:
            return None
        filtered = self._filtered(node, rtt)
        # Vivaldi
        c = self.coord
        dist = c.distance(other)
        rtt = max(filtered, _ZERO)
        wrongness = abs(dist - rtt) / rtt
        total = max(c.error + other.error, _ZERO)
        weight = c.error / total
        error = min(VIVALDI_CE * weight * wrongness + c.error * (1.0 - VIVALDI_CE * weight), VIVALDI_ERROR_MAX)
        c = Coordinate(c.vec, error, c.adjustment, c.height)
        c = c.apply_force(self._rng, VIVALDI_CC * weight * (rtt - dist), other)
        # adjustment window
        self._adj_samples[self._adj_index] = filtered - c.raw_distance(other)
        self._adj_index = (self._adj_index + 1) % ADJUSTMENT_WINDOW
        c = Coordinate(c.vec, c.error, sum(self._adj_samples) / (2.0 * ADJUSTMENT_WINDOW), c.height)
        # gravity towards the origin
        origin = Coordinate.origin()
        pull = -1.0 * (origin.distance(c) / GRAVITY_RHO) ** 2
        c = c.apply_force(self._rng, pull, origin)
        if not c.valid():
            self.resets += 1
            c = Coordinate.origin()
        self.coord = c
        return c


def encode_ack_payload(coord: Coordinate) -> bytes:
    """serf's AckPayload: the version byte, then the coordinate as Go encodes the struct."""
    body = {"Vec": list(coord.vec), "Error": coord.error, "Adjustment": coord.adjustment,
            "Height": coord.height}
    packed: bytes = msgpack.packb(body, use_bin_type=False, use_single_float=False)
    return bytes((PING_VERSION,)) + packed


def _float(v: Any, what: str) -> float:
    if type(v) is float or type(v) is int:
        return float(v)
    raise DecodeError(f"coordinate.{what}: expected a number")


def decode_ack_payload(payload: bytes) -> Coordinate:
    """A peer's ack payload -> its coordinate; DecodeError if it is not serf's format."""
    if not payload or payload[0] != PING_VERSION:
        raise DecodeError(f"unsupported ping version {payload[:1].hex() or 'none'}")
    try:
        body = msgpack.unpackb(payload[1:], raw=True, max_array_len=64, max_map_len=16,
                               max_str_len=64, max_bin_len=64)
    except msgpack.ExtraData as e:
        body = e.unpacked
    except Exception as e:
        raise DecodeError(f"coordinate: bad msgpack: {e}") from None
    if type(body) is not dict:
        raise DecodeError("coordinate: expected a map")
    vec = body.get(b"Vec")
    if type(vec) is not list:
        raise DecodeError("coordinate.Vec: expected a list")
    return Coordinate(
        tuple(_float(x, "Vec") for x in vec),
        _float(body.get(b"Error", 0.0), "Error"),
        _float(body.get(b"Adjustment", 0.0), "Adjustment"),
        _float(body.get(b"Height", 0.0), "Height"),
    )
