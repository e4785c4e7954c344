"""The link model: latency, loss, duplication, cuts and TCP timing."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from sim.network import DATA_RTO, DROPPED, SYN_RTO, Cut, Latency, Network


def net(n: int = 4, **kw: object) -> Network:
    return Network(n, random.Random("test"), **kw)  # type: ignore[arg-type]


def test_latency_median_and_floor() -> None:
    lat = Latency(floor=0.001, median=0.002, sigma=0.5)
    rng = random.Random(1)
    xs = [lat.sample(rng) for _ in range(5000)]
    assert min(xs) > 0.001
    assert statistics.median(xs) == pytest.approx(0.003, rel=0.05)


def test_constant_latency() -> None:
    n = net(latency=Latency(0.0, 0.01, 0.0))
    assert n.transit(0, 1) == 0.01


def test_negative_latency_rejected() -> None:
    with pytest.raises(ValueError):
        Latency(floor=-1.0)


@pytest.mark.parametrize("p", [0.0, 0.1, 0.5])
def test_loss_rate(p: float) -> None:
    n = net(loss=p)
    lost = sum(1 for _ in range(20000) if n.transit(0, 1) == DROPPED)
    assert lost == n.dropped
    assert lost / 20000 == pytest.approx(p, abs=0.015)


def test_bad_probabilities_rejected() -> None:
    with pytest.raises(ValueError):
        net(loss=1.5)
    with pytest.raises(ValueError):
        net(duplicate=-0.1)
    with pytest.raises(ValueError):
        Cut("c", 4, [0], [1], loss=2.0)


def test_cut_is_directed() -> None:
    n = net()
    n.add_cut(Cut("a", 4, [0, 1], [2, 3]))
    assert n.transit(0, 2) == DROPPED
    assert n.transit(1, 3) == DROPPED
    assert n.transit(2, 0) != DROPPED  # asymmetric: the other way works
    assert n.transit(0, 1) != DROPPED  # same side
    n.remove_cut("a")
    assert n.transit(0, 2) != DROPPED


def test_partial_cut_loses_a_fraction() -> None:
    n = net()
    n.add_cut(Cut("a", 4, [0], [1], loss=0.3))
    lost = sum(1 for _ in range(20000) if n.transit(0, 1) == DROPPED)
    assert lost / 20000 == pytest.approx(0.3, abs=0.015)


def test_duplication() -> None:
    n = net(duplicate=1.0)
    assert n.duplicates() and n.duplicated == 1
    assert not net().duplicates()


def test_inbound_delay_adds_to_transit() -> None:
    n = net(latency=Latency(0.0, 0.01, 0.0))
    n.inbound_delay[1] = 0.5
    assert n.transit(0, 1) == pytest.approx(0.51)
    assert n.transit(1, 0) == pytest.approx(0.01)


def test_stream_request_is_three_one_way_trips_without_loss() -> None:
    n = net(latency=Latency(0.0, 0.01, 0.0))
    assert n.stream_request(0, 1, 10.0) == pytest.approx(0.03)
    assert n.stream_reply(1, 0, 10.0) == pytest.approx(0.01)


def test_stream_through_full_cut_never_completes() -> None:
    n = net()
    n.add_cut(Cut("a", 4, [0], [1]))
    assert math.isinf(n.stream_request(0, 1, 10.0))
    # The reverse direction carries the SYN-ACK: also blocked for a stream from 1 to 0.
    assert math.isinf(n.stream_request(1, 0, 10.0))


def test_stream_retransmits_after_loss() -> None:
    # With 50 % loss some handshakes need retransmissions: durations are sums of RTOs.
    n = net(latency=Latency(0.0, 0.0, 0.0), loss=0.5)
    seen = {round(n.stream_request(0, 1, 100.0), 6) for _ in range(300)}
    assert 0.0 in seen
    assert SYN_RTO in seen and DATA_RTO in seen
