"""The driver contract (docs/design.md, "The core's contract") against a scripted fake core, plus pub/sub and API framing."""

from __future__ import annotations

import math
import socket
from typing import Any

import pytest
import trio

from agent.control import protocol as api
from agent.events import OVERFLOW, EventHub
from agent.membership.driver import Driver
from gossip.config import Config
from gossip.effects import Address, Effect, MemberFailed, Send, StreamRequest
from gossip.errors import DecodeError
from gossip.members import Member, Status
from gossip.serf.payloads import encode_tags


def _member(name: str, status: Status = Status.ALIVE, meta: bytes = b"") -> Member:
    return Member(name, "127.0.0.1", 7946, 1, status, meta, bytes([1, 5, 2, 2, 5, 5]), 0.0)


class FakeCore:
    """Just enough of Swim's surface; records what the driver calls, in order."""

    def __init__(self, deadline: float, effects: list[Effect]) -> None:
        self.deadline = deadline
        self.tick_effects = effects
        self.calls: list[tuple[str, Any]] = []
        self.replied = trio.Event()
        self.local = _member("me")

    def next_deadline(self) -> float:
        return self.deadline

    def tick(self, now: float) -> list[Effect]:
        self.calls.append(("tick", now))
        self.deadline = math.inf
        return self.tick_effects

    def handle_packet(self, now: float, src: Address, data: bytes) -> list[Effect]:
        if data == b"bad":
            raise DecodeError("bad bytes")
        self.calls.append(("packet", data))
        return []

    def handle_stream_reply(self, now: float, token: int, reply: bytes | None) -> list[Effect]:
        self.calls.append(("stream-reply", (token, reply)))
        self.replied.set()
        return []

    def leave_done(self) -> bool:
        return False


def _closed_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_effects_in_order_tick_at_deadline_and_stream_failure_reported() -> None:
    hub = EventHub()
    receiver = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with receiver, sender:
        await receiver.bind(("127.0.0.1", 0))
        to = receiver.getsockname()
        deadline = trio.current_time() + 0.05
        core = FakeCore(deadline, [
            Send(to, b"first"),
            Send(to, b"second"),
            StreamRequest(("127.0.0.1", _closed_tcp_port()), b"x", token=7),
            MemberFailed(_member("peer", Status.DEAD, encode_tags({"k": "v"}))),
        ])
        driver = Driver(core, sender, Config.local(), hub)  # type: ignore[arg-type]
        with hub.subscribe() as events:
            async with trio.open_nursery() as nursery:
                await nursery.start(driver.run)
                driver.offer_datagram(("127.0.0.1", 1), b"bad")
                driver.offer_datagram(("127.0.0.1", 1), b"good")
                with trio.fail_after(10):
                    assert (await receiver.recvfrom(100))[0] == b"first"
                    assert (await receiver.recvfrom(100))[0] == b"second"
                    event = await events.receive()
                    await core.replied.wait()
                nursery.cancel_scope.cancel()
    tick_at = next(now for kind, now in core.calls if kind == "tick")
    assert tick_at >= deadline
    assert ("packet", b"good") in core.calls
    assert ("stream-reply", (7, None)) in core.calls
    assert driver.counters.decode_errors == 1
    assert driver.counters.datagrams_out == 2
    assert driver.counters.stream_failures == 1
    assert event["type"] == "member-failed"
    assert event["member"]["name"] == "peer" and event["member"]["status"] == "dead"
    assert event["member"]["tags"] == {"k": "v"}
    assert driver.counters.member_events == {"member-failed": 1}


async def test_full_inbox_drops_and_counts_datagrams() -> None:
    core = FakeCore(math.inf, [])
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        driver = Driver(core, sock, Config.local(), EventHub(), inbox_size=2)  # type: ignore[arg-type]
        for i in range(5):
            driver.offer_datagram(("127.0.0.1", 1), bytes([i]))
    assert driver.counters.datagrams_dropped == 3


async def test_hub_cuts_off_a_lagging_subscriber() -> None:
    hub = EventHub(buffer=2)
    with hub.subscribe() as slow, hub.subscribe() as fast:
        for i in range(2):
            hub.publish({"n": i})
        assert [await fast.receive() for _ in range(2)] == [{"n": 0}, {"n": 1}]
        hub.publish({"n": 2})  # slow already holds 2: it gets the overflow marker and is dropped
        hub.publish({"n": 3})
        assert hub.subscriber_count == 1
        assert hub.dropped_subscribers == 1
        got = [item async for item in slow]
        assert got == [{"n": 0}, {"n": 1}, OVERFLOW]
        assert [await fast.receive() for _ in range(2)] == [{"n": 2}, {"n": 3}]
    assert hub.subscriber_count == 0


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        (b"{", "not JSON"),
        (b"\xff", "not JSON"),
        (b"[]", "JSON object"),
        (b'{"op":"members"}', "version"),
        (b'{"v":true,"op":"members"}', "version"),
        (b'{"v":"1","op":"members"}', "version"),
        (b'{"v":1,"op":""}', "op"),
        (b'{"v":1,"op":3}', "op"),
        (b'{"v":1,"op":"x","args":[]}', "args"),
    ],
)
def test_bad_requests(line: bytes, needle: str) -> None:
    with pytest.raises(api.ApiError, match=needle):
        api.parse_request(line)


def test_request_round_trip() -> None:
    line = api.request_line("members", {"x": 1})
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    req = api.parse_request(line.strip())
    assert (req.op, req.args, req.id) == ("members", {"x": 1}, None)
    assert api.parse_request(b'{"v":1,"op":"status","id":"q1"}').id == "q1"
    assert api.ok([1], "q1") == {"v": 1, "ok": True, "result": [1], "id": "q1"}
    assert api.error("no") == {"v": 1, "ok": False, "error": "no"}


def test_member_json() -> None:
    m = _member("h2", Status.SUSPECT, encode_tags({"role": "overlay-agent"}))
    assert api.member_json(m, "h1") == {
        "name": "h2", "address": "127.0.0.1", "port": 7946, "status": "suspect",
        "incarnation": 1, "tags": {"role": "overlay-agent"}, "protocol": "1", "self": False,
    }
    serf = _member("s1", Status.ALIVE, encode_tags({"role": "web"}))
    assert api.member_json(serf, "h1")["protocol"] is None
    assert api.member_json(m, "h2")["self"] is True
    # serf shows meta without its 0xFF magic as a role; broken tag maps become no tags.
    assert api.member_json(_member("x", meta=b"web"), "h1")["tags"] == {"role": "web"}
    assert api.member_json(_member("x", meta=b"\xff\x01"), "h1")["tags"] == {}
