"""Metric definitions: quantiles, detection latency, false positives, dissemination."""

from __future__ import annotations

import pytest

from gossip.members import Member, Status
from gossip.wire.messages import DEFAULT_VSN
from sim import metrics as m
from sim.analytic import serf_rounds, serf_time, swim_first_detection_periods
from sim.metrics import Metrics, distribution, quantile, time_to_fraction


def member(name: str, status: Status = Status.ALIVE, inc: int = 0, meta: bytes = b"") -> Member:
    return Member(name, "10.0.0.1", 7946, inc, status, meta, DEFAULT_VSN, 0.0)


def test_quantile_nearest_rank() -> None:
    xs = [1.0, 2.0, 3.0, 4.0]
    assert quantile(xs, 0.5) == 2.0
    assert quantile(xs, 0.75) == 3.0
    assert quantile(xs, 1.0) == 4.0
    assert quantile([], 0.5) is None


def test_time_to_fraction_counts_the_whole_population() -> None:
    times = [0.1, 0.2, 0.3]
    assert time_to_fraction(times, 4, 0.5) == 0.2
    assert time_to_fraction(times, 4, 0.75) == 0.3
    assert time_to_fraction(times, 4, 1.0) is None  # one node never heard
    assert time_to_fraction(times, 3, 1.0) == 0.3
    assert time_to_fraction([], 0, 0.5) is None
    # 99 % of 100 needs the 99th arrival, not a rounding artefact.
    hundred = [float(i) for i in range(1, 101)]
    assert time_to_fraction(hundred, 100, 0.99) == 99.0


def test_distribution() -> None:
    d = distribution([3.0, 1.0, 2.0])
    assert d["count"] == 3 and d["mean"] == 2.0 and d["max"] == 3.0 and d["p50"] == 2.0
    assert distribution([])["mean"] is None


def test_detection_latency_and_first_suspicion() -> None:
    mt = Metrics(4, 60.0, fp_grace=10.0)
    mt.on_start_all(0.0)
    mt.begin_outage(5.0, 3, "crash")
    mt.on_stop(5.0, 3)
    dead = member("n3", Status.DEAD)
    mt.on_event(6.0, 0, m.SUSPECTED, 3, member("n3", Status.SUSPECT))
    mt.on_event(9.0, 0, m.FAILED, 3, dead)
    mt.on_event(9.5, 1, m.FAILED, 3, dead)
    mt.on_event(9.6, 1, m.FAILED, 3, dead)  # a repeat does not count twice
    det = mt.detection(60.0)
    assert det["crashed"] == 1
    assert det["undetected_pairs"] == 1  # observer 2 never noticed
    lat = det["latency"]
    assert isinstance(lat, dict) and lat["count"] == 2 and lat["max"] == 4.5
    fs = det["first_suspicion"]
    assert isinstance(fs, dict) and fs["mean"] == 1.0
    assert not mt.views.converged()
    mt.on_event(10.0, 2, m.FAILED, 3, dead)
    assert mt.views.converged()
    assert mt.convergence()["last_converged_at"] == 10.0


def test_false_positives_only_for_running_nodes() -> None:
    mt = Metrics(3, 60.0, fp_grace=10.0)
    mt.on_start_all(0.0)
    mt.on_stall(2)
    mt.on_event(1.0, 0, m.SUSPECTED, 2, member("n2", Status.SUSPECT, inc=1))
    mt.on_event(1.1, 1, m.SUSPECTED, 2, member("n2", Status.SUSPECT, inc=1))
    mt.on_event(5.0, 0, m.FAILED, 1, member("n1", Status.DEAD, inc=0))
    fp = mt.false_positives()
    assert fp["suspicions"] == 1 and fp["deaths"] == 1
    assert fp["suspicions_of_stalling_nodes"] == 1 and fp["deaths_of_stalling_nodes"] == 0
    assert fp["observer_events"] == {"suspected": 2, "failed": 1}
    rows = mt.accusation_rows()
    assert rows[0] == (1.0, 0, 2, "suspected", 1, 1, 2)


def test_old_news_about_a_restarted_node_is_not_a_false_positive() -> None:
    mt = Metrics(3, 60.0, fp_grace=10.0)
    mt.on_start_all(0.0)
    mt.begin_outage(1.0, 2, "crash")
    mt.on_stop(1.0, 2)
    mt.on_start(3.0, 2, restart=True)
    mt.on_event(4.0, 0, m.FAILED, 2, member("n2", Status.DEAD))
    assert mt.false_positives()["deaths"] == 0
    mt.on_event(14.0, 0, m.FAILED, 2, member("n2", Status.DEAD, inc=3))
    assert mt.false_positives()["deaths"] == 1


def test_dissemination_of_a_watched_update() -> None:
    mt = Metrics(5, 60.0, fp_grace=10.0)
    mt.on_start_all(0.0)
    mt.watch("meta", 0, (m.UPDATED, m.JOINED), 2.0, meta=b"new")
    for o, t in ((1, 2.1), (2, 2.3), (3, 2.6)):
        mt.on_event(t, o, m.UPDATED, 0, member("n0", meta=b"new"))
    mt.on_event(2.2, 4, m.UPDATED, 0, member("n0", meta=b"old"))  # not the watched value
    [d] = mt.dissemination(60.0)
    assert d["population"] == 4 and d["reached"] == 0.75
    assert d["t50"] == pytest.approx(0.3) and d["t100"] is None


def test_traffic_rates_per_node_second() -> None:
    mt = Metrics(2, 10.0, fp_grace=10.0)
    mt.on_start_all(0.0)
    mt.sent_msgs[0] = 20
    mt.sent_bytes[0] = 2000
    tr = mt.traffic(10.0)
    assert tr["node_seconds"] == 20.0
    assert tr["udp_msgs_per_node_per_s"] == 1.0 and tr["udp_bytes_per_node_per_s"] == 100.0


def test_analytic_reference_numbers() -> None:
    # SWIM paper: e/(e-1) ≈ 1.58 periods; serf's convergence page table (docs/simulation.md).
    assert swim_first_detection_periods() == pytest.approx(1.582, abs=1e-3)
    from gossip.config import Config

    lan = Config.lan()
    for n, rounds in ((30, 9), (100, 10), (1000, 11), (10000, 13), (100000, 14)):
        assert serf_time(n, 0.9999, lan) == pytest.approx(rounds * 0.2)
    assert serf_rounds(30, 0.5) * 0.2 == pytest.approx(0.46, abs=0.01)


def test_join_convergence_only_for_bootstraps() -> None:
    mt = Metrics(3, 60.0, fp_grace=10.0)
    mt.on_start_all(0.0)
    assert mt.convergence()["join_converged_at"] is None
    boot = Metrics(2, 60.0, fp_grace=10.0)
    boot.on_start(0.0, 0)
    boot.on_start(1.0, 1)
    assert boot.convergence()["join_converged_at"] is None  # nobody knows anybody yet
    boot.on_event(1.2, 0, m.JOINED, 1, member("n1"))
    boot.on_event(1.5, 1, m.JOINED, 0, member("n0"))
    conv = boot.convergence()
    assert conv["all_started_at"] == 1.0
    assert conv["join_converged_at"] == 1.5 and conv["join_convergence_s"] == 0.5
