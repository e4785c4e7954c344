"""The world's mechanics with a fake core: heap order, wakes, delivery, streams, pauses, crashes."""

from __future__ import annotations

import random

import pytest

from sim.cores import node_addr, node_name
from sim.metrics import Metrics
from sim.network import Cut, Latency, Network
from sim.world import World
from tests.sim.fakecore import FakeFactory

LAT = 0.01


def make(n: int = 3, period: float = 1.0, sigma: float = 0.0, seed: int = 1,
         tcp_timeout: float = 10.0) -> tuple[World, FakeFactory]:
    factory = FakeFactory(n, period)
    network = Network(n, random.Random(f"{seed}:network"), latency=Latency(0.0, LAT, sigma))
    world = World(n, factory, network, Metrics(n, 100.0, 1.0), tcp_timeout=tcp_timeout)
    return world, factory


def only_reply(log: list[tuple[float, str, object]]) -> tuple[float, bytes | None]:
    """The single stream outcome a node was told: (time, reply)."""
    [(t, _, payload)] = kinds(log, "reply")
    assert isinstance(payload, tuple)
    return t, payload[1]


def kinds(log: list[tuple[float, str, object]], *wanted: str) -> list[tuple[float, str, object]]:
    return [e for e in log if e[1] in wanted]


def test_names_and_addresses() -> None:
    assert node_name(0, 10) == "n0000"
    assert node_name(12345, 20000) == "n12345"
    assert node_addr(0) == ("10.0.0.1", 7946)
    assert node_addr(9999) == ("10.0.39.16", 7946)
    assert node_addr(300) == ("10.0.1.45", 7946)


def test_actions_at_equal_times_run_in_scheduling_order() -> None:
    world, _ = make()
    seen: list[str] = []
    for label in "abcde":
        world.at(1.0, label, lambda label=label: seen.append(label))  # type: ignore[misc]
    world.at(0.5, "first", lambda: seen.append("first"))
    world.run(2.0)
    assert seen == ["first", "a", "b", "c", "d", "e"]
    assert world.now == 2.0


def test_ping_ack_round_trip_and_wakes() -> None:
    world, f = make(n=2)
    world.start_converged()
    world.run(1.5)
    # Node 0 ticked at 1.0 and pinged node 1, which acked; each took one link latency.
    log1 = kinds(f.log(1), "packet")
    assert log1[0][0] == pytest.approx(1.0 + LAT)
    assert log1[0][2] == b"ping1"
    acks = [e for e in kinds(f.log(0), "packet") if e[2] == b"ack1"]
    assert acks and acks[0][0] == pytest.approx(1.0 + 2 * LAT)
    ticks = kinds(f.log(0), "tick")
    assert [t for t, _, _ in ticks] == [1.0]
    assert world.metrics.sent_msgs == [2, 2]


def test_total_loss_delivers_nothing() -> None:
    world, f = make(n=2)
    world.net.set_loss(1.0)
    world.start_converged()
    world.run(5.0)
    assert not kinds(f.log(0), "packet") and not kinds(f.log(1), "packet")
    assert world.net.dropped == 10


def test_asymmetric_cut() -> None:
    world, f = make(n=2)
    world.net.add_cut(Cut("x", 2, [0], [1]))
    world.start_converged()
    world.run(3.5)
    assert not kinds(f.log(1), "packet")  # 0 → 1 is cut
    assert [e[2] for e in kinds(f.log(0), "packet")] == [b"ping1", b"ping2", b"ping3"]


def test_duplicates_arrive_twice() -> None:
    world, f = make(n=2)
    world.net.set_duplicate(1.0)
    world.start_converged()
    world.run(1.5)
    assert [e[2] for e in kinds(f.log(1), "packet")].count(b"ping1") == 2


def test_paused_node_handles_timers_first_then_queued_packets() -> None:
    world, f = make(n=2)
    world.start_converged()
    world.at(0.5, "pause", lambda: world.pause(1, 2.0))
    world.run(3.0)
    log1 = f.log(1)
    after = [e for e in log1 if e[0] > 0.5]
    assert after[0][:2] == (2.5, "tick")  # the overdue tick first
    packets = [e for e in kinds(after, "packet") if str(e[2]).startswith("b'ping")]
    assert [e[0] for e in packets] == [2.5, 2.5]  # ping1 (t=1) and ping2 (t=2), handled on resume
    assert [e[2] for e in packets] == [b"ping1", b"ping2"]
    # It did not tick while paused.
    assert not [e for e in log1 if 0.5 < e[0] < 2.5]


def test_decode_error_is_counted_not_raised() -> None:
    world, _ = make(n=2)
    world.start_converged()
    world.push(0.1, 0, 1, 0, b"bad")  # DELIVER
    world.run(0.2)
    assert world.metrics.decode_errors == 1


def test_stream_round_trip() -> None:
    world, f = make(n=2, period=0.0)
    world.start(1)
    world.start(0, [node_addr(1)])
    world.run(1.0)
    served = kinds(f.log(1), "stream")
    assert served and served[0][0] == pytest.approx(3 * LAT)  # SYN, SYN-ACK, data
    t, reply = only_reply(f.log(0))
    assert t == pytest.approx(4 * LAT) and reply == b"re:join"
    # The MemberJoined the responder reported reached the metrics (unknown name: ignored).
    assert world.metrics.tcp_msgs == 1


def test_stream_to_crashed_process_is_refused_quickly() -> None:
    world, f = make(n=2, period=0.0)
    world.start(1)
    world.crash(1)
    world.start(0, [node_addr(1)])
    world.run(20.0)
    t, reply = only_reply(f.log(0))
    assert reply is None and t < 0.1


def test_stream_to_crashed_host_times_out() -> None:
    world, f = make(n=2, period=0.0, tcp_timeout=7.0)
    world.start(1)
    world.crash(1, host=True)
    world.start(0, [node_addr(1)])
    world.run(20.0)
    t, reply = only_reply(f.log(0))
    assert reply is None and t == pytest.approx(7.0)


def test_stream_through_cut_times_out() -> None:
    world, f = make(n=2, period=0.0, tcp_timeout=5.0)
    world.net.add_cut(Cut("x", 2, [0], [1]))
    world.start(1)
    world.start(0, [node_addr(1)])
    world.run(20.0)
    t, reply = only_reply(f.log(0))
    assert reply is None and t == pytest.approx(5.0)
    assert world.metrics.tcp_failures == 1


def test_stream_to_paused_node_waits_for_resume() -> None:
    world, f = make(n=2, period=0.0)
    world.start(1)
    world.pause(1, 2.0)
    world.start(0, [node_addr(1)])
    world.run(5.0)
    assert kinds(f.log(1), "stream")[0][0] == pytest.approx(2.0)
    t, reply = only_reply(f.log(0))
    assert reply == b"re:join" and t == pytest.approx(2.0 + LAT)


def test_reply_for_a_previous_life_is_dropped() -> None:
    world, f = make(n=2, period=0.0)
    world.start(1)
    world.start(0, [node_addr(1)])
    world.at(0.015, "crash", lambda: world.crash(0))
    world.at(0.02, "restart", lambda: world.start(0))
    world.run(1.0)
    assert not kinds(f.log(0, 0), "reply")
    assert not kinds(f.log(0, 1), "reply")


def test_crashed_node_receives_nothing_and_restart_gets_a_fresh_core() -> None:
    world, f = make(n=2)
    world.start_converged()
    world.at(0.5, "crash", lambda: world.crash(1))
    world.at(2.5, "restart", lambda: world.start(1))
    world.run(4.0)
    assert not kinds(f.log(1, 0), "packet")
    assert world.dropped_off >= 2
    assert kinds(f.log(1, 1), "tick")  # the new life ticks
    assert world.metrics.views.running == 2


def test_same_seed_same_trace_other_seed_differs() -> None:
    def run(seed: int) -> str:
        world, _ = make(n=5, sigma=0.5, seed=seed)
        world.net.set_loss(0.2)
        world.start_converged()
        world.run(20.0)
        return world.trace.hexdigest()

    assert run(1) == run(1)
    assert run(1) != run(2)


@pytest.mark.parametrize("host", [False, True])
def test_datagram_to_a_crashed_process_comes_back_as_port_unreachable(host: bool) -> None:
    world, f = make(n=2)
    world.start_converged()
    world.crash(1, host=host)
    world.run(1.5)
    # Node 0 pinged node 1 at 1.0; a live host without the process answers ICMP one
    # link latency later each way; a dead host answers nothing.
    got = kinds(f.log(0), "unreachable")
    if host:
        assert got == []
    else:
        [(t, _, addr)] = got
        assert t == pytest.approx(1.0 + 2 * LAT) and addr == node_addr(1)
