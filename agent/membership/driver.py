"""The shell around the sans-IO core: the one task that owns ``Swim``.

Owns: the inbox (a bounded trio memory channel fed by the UDP reader, the TCP
server, outbound stream tasks and the control API), the deadline loop, performing
effects in order, the agent's gossip counters, and publishing member events to the
``agent.events.EventHub``. Obeys the driver contract of docs/design.md ("Driver
obligations"): one caller at a time, calls never await, ``now`` is
``trio.current_time()``, effects are performed in order, ``tick`` runs when
``next_deadline()`` passes, and decode errors are counted and logged in exactly one
place (``note_decode_error``). Other layers reach the core only through ``Driver.call``
and ``Driver.on_effect``.
Does not: bind sockets (``agent.membership.transport``), parse control requests
(``agent.control``), assemble the agent (``agent.service``), hold what extensions share
(``agent.runtime``), or decide anything about members (the core does).
"""

from __future__ import annotations

import base64
import collections
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import trio

from agent.addresses import format_address
from agent.control import protocol as api
from agent.events import EventHub
from agent.limits import Limits
from agent.log import kv
from agent.membership import transport
from gossip.config import Config
from gossip.effects import (
    Address,
    Effect,
    JoinFinished,
    KeyringChanged,
    Log,
    MemberFailed,
    MemberJoined,
    MemberLeft,
    MemberReaped,
    MemberSuspected,
    MemberUpdated,
    QueryFinished,
    QueryResponse,
    Send,
    StreamRequest,
    UserEvent,
)
from gossip.errors import DecodeError
from gossip.members import Status
from gossip.swim import Swim

log = logging.getLogger("agent.membership.driver")

T = TypeVar("T")
E = TypeVar("E")
CoreCall = Callable[[Swim, float], tuple[T, Sequence[Effect]]]
"""A command run inside the driver: (swim, now) -> (result, effects)."""

INBOX_SIZE = 1024
"""Pending inputs; memberlist's handoff queue holds 1024 messages too."""
STREAM_CONCURRENCY = 32
"""Outbound TCP exchanges at once; more wait their turn (the core times them out)."""
RECENT_USER_EVENTS = 512
"""User events kept for ``agentctl events --recent`` (serf's EventBuffer is 512 too)."""
DECODE_WARNING_INTERVAL = 60.0
"""At most one warning per source address per interval; every error is logged at debug."""

EVENT_NAMES: dict[type, str] = {
    MemberJoined: "member-joined",
    MemberUpdated: "member-updated",
    MemberSuspected: "member-suspected",
    MemberFailed: "member-failed",
    MemberLeft: "member-left",
    MemberReaped: "member-reaped",
}
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class _Slot(Generic[T]):
    """A one-shot reply from the driver task to a waiting producer."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.value: T | None = None
        self.error: Exception | None = None

    def set(self, value: T | None, error: Exception | None = None) -> None:
        self.value, self.error = value, error
        self.done.set()


@dataclass(slots=True)
class _Datagram:
    src: Address
    data: bytes


@dataclass(slots=True)
class _Unreachable:
    dest: Address


@dataclass(slots=True)
class _Stream:
    src: Address
    data: bytes
    slot: _Slot[bytes]


@dataclass(slots=True)
class _StreamOutcome:
    token: int
    reply: bytes | None


@dataclass(slots=True)
class _Call:
    fn: CoreCall[Any]
    slot: _Slot[Any]


_Item = _Datagram | _Unreachable | _Stream | _StreamOutcome | _Call


@dataclass
class Counters:
    datagrams_in: int = 0
    datagrams_dropped: int = 0
    unreachable_in: int = 0
    """ICMP port-unreachable answers to our datagrams."""
    datagrams_out: int = 0
    send_errors: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    streams_in: int = 0
    streams_out: int = 0
    stream_failures: int = 0
    decode_errors: int = 0
    internal_errors: int = 0
    member_events: dict[str, int] = field(default_factory=dict)


class Driver:
    def __init__(
        self,
        swim: Swim,
        udp: trio.socket.SocketType,
        config: Config,
        hub: EventHub,
        *,
        inbox_size: int = INBOX_SIZE,
        stream_concurrency: int = STREAM_CONCURRENCY,
        limits: Limits | None = None,
    ) -> None:
        self.swim = swim
        serf = getattr(swim, "serf", None)  # absent from the tests' fake cores
        if serf is not None:
            serf.enable_coordinates(swim.name)  # serf's network coordinates in our acks
        self.udp = udp
        self.config = config
        self.hub = hub
        self.counters = Counters()
        self.started_at = time.time()
        self._send, self._receive = trio.open_memory_channel[_Item](inbox_size)
        self._stream_limiter = trio.CapacityLimiter(stream_concurrency)
        self._leaving = False
        self._left = trio.Event()
        self._warned_at: dict[str, float] = {}
        self._listeners: dict[type, list[Callable[[Any], None]]] = {}
        self._member_ip: dict[str, str] = {}
        """Member name -> IP, for every member in the table (until reaped)."""
        self._ips: dict[str, int] = {}
        """IP -> how many members have it."""
        self.user_events: collections.deque[dict[str, Any]] = collections.deque(maxlen=RECENT_USER_EVENTS)
        """The user events new to this node, oldest first (``user_event_json``)."""
        self._live: set[str] = set()
        """Other members alive or suspect, from the member events."""
        self.streams = transport.StreamBudget(limits, is_known=self.is_member_address)
        """Slots and byte budget of stream messages (``agent.membership.transport``)."""
        self._sender: transport.DatagramSender | None = None
        """Sends datagrams while ``run`` runs (``transport.DatagramSender``)."""

    def is_member_address(self, ip: str) -> bool:
        """Whether ``ip`` is the address of a member in the table (this node's too): the
        stream budget keeps slots for these."""
        return ip in self._ips or ip == self.swim.local.addr

    @property
    def others_live(self) -> int:
        """How many other members are alive or suspect (0: this node is alone)."""
        return len(self._live)

    def _track_address(self, effect: MemberJoined | MemberUpdated | MemberSuspected | MemberFailed
                       | MemberLeft | MemberReaped) -> None:
        m = effect.member
        if m.name != self.swim.local.name:
            if not isinstance(effect, MemberReaped) and m.status in (Status.ALIVE, Status.SUSPECT):
                self._live.add(m.name)
            else:
                self._live.discard(m.name)
        old = self._member_ip.get(m.name)
        new = None if isinstance(effect, MemberReaped) else m.addr
        if old == new:
            return
        if old is not None:
            left = self._ips.get(old, 0) - 1
            if left > 0:
                self._ips[old] = left
            else:
                self._ips.pop(old, None)
        if new is None:
            self._member_ip.pop(m.name, None)
        else:
            self._member_ip[m.name] = new
            self._ips[new] = self._ips.get(new, 0) + 1

    def on_effect(self, kind: type[E], callback: Callable[[E], None]) -> None:
        """Call ``callback(effect)`` for every effect of type ``kind``, after the driver's
        own handling. Callbacks run in the driver task: they must not block or raise
        (wake a task instead). The seam for persistence, readiness, the dataplane."""
        self._listeners.setdefault(kind, []).append(callback)

    # -- producers (other tasks) -------------------------------------------------

    def offer_datagram(self, src: Address, data: bytes) -> None:
        """Queue a datagram, or drop it when the inbox is full (honest UDP behaviour)."""
        try:
            self._send.send_nowait(_Datagram(src, data))
        except trio.WouldBlock:
            self.counters.datagrams_dropped += 1

    def offer_unreachable(self, dest: Address) -> None:
        """A datagram of ours to ``dest`` met ICMP port unreachable (dropped if full)."""
        self.counters.unreachable_in += 1
        with contextlib.suppress(trio.WouldBlock):
            self._send.send_nowait(_Unreachable(dest))

    async def stream(self, src: Address, data: bytes) -> bytes | None:
        """An inbound stream message; returns the reply to write (None: just close)."""
        slot: _Slot[bytes] = _Slot()
        await self._send.send(_Stream(src, data, slot))
        await slot.done.wait()
        return slot.value

    async def call(self, fn: CoreCall[T]) -> T:
        """Run ``fn(swim, now)`` inside the driver task; its effects are performed."""
        slot: _Slot[T] = _Slot()
        await self._send.send(_Call(fn, slot))
        await slot.done.wait()
        if slot.error is not None:
            raise slot.error
        return slot.value  # type: ignore[return-value]

    async def join(self, seeds: Sequence[Address]) -> None:
        """Start joining; the outcome arrives later as a ``JoinFinished`` (logged)."""
        await self.call(lambda swim, now: (None, swim.join(now, seeds)))

    async def leave(self, wait: float) -> bool:
        """Announce a graceful leave; wait up to ``wait`` s for it to go out."""

        def start(swim: Swim, now: float) -> tuple[None, Sequence[Effect]]:
            if self._leaving:
                return None, []
            self._leaving = True
            return None, swim.leave(now)

        await self.call(start)
        with trio.move_on_after(wait):
            await self._left.wait()
        return self._left.is_set()

    @property
    def leaving(self) -> bool:
        return self._leaving

    def note_decode_error(self, src: Address, exc: DecodeError) -> None:
        """The one place where bad bytes from peers are counted and logged."""
        self.counters.decode_errors += 1
        text = format_address(src)
        log.debug(kv("decode-error", src=text, error=str(exc)))
        now = trio.current_time()
        ip = src[0]
        last = self._warned_at.get(ip)
        if last is None or now - last >= DECODE_WARNING_INTERVAL:
            if len(self._warned_at) > 1024:  # bounded memory under a spray of sources
                self._warned_at.clear()
            self._warned_at[ip] = now
            log.warning(kv("decode-error", src=text, error=str(exc), total=self.counters.decode_errors))

    # -- the driver task -----------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if isinstance(self.udp, trio.socket.SocketType):  # the tests' fake sockets go through sendto
            self._sender = transport.DatagramSender(self.udp)
        try:
            await self._run(task_status)
        finally:
            if self._sender is not None:
                self._sender.close()
                self._sender = None

    async def _send_datagram(self, to: Address, data: bytes) -> bool:
        if self._sender is not None:
            return await self._sender.send(to, data)
        return await transport.send_datagram(self.udp, to, data)

    async def _run(self, task_status: trio.TaskStatus[None]) -> None:
        async with trio.open_nursery() as streams:
            self._streams = streams
            task_status.started()
            while True:
                item: _Item | None = None
                try:
                    # Queued input first: a deadline already due must not starve it.
                    item = self._receive.receive_nowait()
                    await trio.lowlevel.checkpoint()  # let producers and stream tasks run
                except trio.WouldBlock:
                    with trio.move_on_at(self.swim.next_deadline()):
                        item = await self._receive.receive()
                # Perform outside the deadline scope: a send must not be cut short.
                if item is not None:
                    await self._perform(self._handle(item))
                if trio.current_time() >= self.swim.next_deadline():
                    failures = self.counters.internal_errors
                    await self._perform(self._guarded(self._tick))
                    if self.counters.internal_errors != failures:
                        await trio.sleep(0.1)  # a failing tick may not move its deadline: no hot loop
                if self._leaving and not self._left.is_set() and self.swim.leave_done():
                    self._left.set()

    def _tick(self) -> Sequence[Effect]:
        return self.swim.tick(trio.current_time())

    def _guarded(self, fn: Callable[[], Sequence[Effect]]) -> Sequence[Effect]:
        """A bug in the core must not take the agent down: log it and carry on."""
        try:
            return fn()
        except Exception:
            self.counters.internal_errors += 1
            log.exception(kv("internal-error"))
            return []

    def _handle(self, item: _Item) -> Sequence[Effect]:
        now = trio.current_time()
        if isinstance(item, _Datagram):
            self.counters.datagrams_in += 1
            self.counters.bytes_in += len(item.data)
            return self._guarded(lambda: self._decoding(item.src, self.swim.handle_packet, now, item.data))
        if isinstance(item, _Unreachable):
            return self._guarded(lambda: self.swim.handle_unreachable(now, item.dest))
        if isinstance(item, _Stream):
            self.counters.streams_in += 1
            return self._guarded(lambda: self._inbound_stream(now, item))
        if isinstance(item, _StreamOutcome):
            return self._guarded(lambda: self.swim.handle_stream_reply(now, item.token, item.reply))
        try:
            result, effects = item.fn(self.swim, now)
        except api.ApiError as exc:  # the request's fault (a bad key...): its error reply only
            item.slot.set(None, exc)
            return []
        except Exception as exc:  # reported to the caller (an error reply), and logged
            item.slot.set(None, exc)
            self.counters.internal_errors += 1
            log.exception(kv("internal-error"))
            return []
        item.slot.set(result)
        return effects

    def _decoding(
        self, src: Address, fn: Callable[[float, Address, bytes], Sequence[Effect]], now: float, data: bytes
    ) -> Sequence[Effect]:
        try:
            return fn(now, src, data)
        except DecodeError as exc:
            self.note_decode_error(src, exc)
            return []

    def _inbound_stream(self, now: float, item: _Stream) -> Sequence[Effect]:
        try:
            reply, effects = self.swim.handle_stream(now, item.src, item.data)
        except DecodeError as exc:
            item.slot.set(None)
            self.note_decode_error(item.src, exc)
            return []
        except Exception:
            item.slot.set(None)
            raise
        item.slot.set(reply)
        return effects

    async def _perform(self, effects: Sequence[Effect]) -> None:
        for effect in effects:
            if isinstance(effect, Send):
                if await self._send_datagram(effect.to, effect.data):
                    self.counters.datagrams_out += 1
                    self.counters.bytes_out += len(effect.data)
                else:
                    self.counters.send_errors += 1
            elif isinstance(effect, StreamRequest):
                self._streams.start_soon(self._stream_request, effect)
            elif isinstance(effect, Log):
                level = _LEVELS.get(effect.level, logging.INFO)
                if log.isEnabledFor(level):
                    log.log(level, kv("core", msg=effect.message))
            elif isinstance(effect, KeyringChanged):
                # A remote `serf keys` changed it; agent.service persists it (a listener).
                log.info(kv("keyring-changed", keys=len(self.swim.keyring.keys) if self.swim.keyring else 0,
                            source="serf-query"))
            elif isinstance(effect, JoinFinished):
                failed = ",".join(format_address(a) for a in effect.failed) or None
                level = logging.INFO if effect.contacted else logging.WARNING
                log.log(level, kv("join-finished", contacted=effect.contacted, failed=failed))
            elif isinstance(effect, QueryResponse | QueryFinished):
                pass  # consumed by listeners (agentctl keys)
            elif isinstance(effect, UserEvent):
                self._user_event(effect)
            else:
                self._member_event(effect)
            for callback in self._listeners.get(type(effect), ()):
                try:
                    callback(effect)
                except Exception:
                    self.counters.internal_errors += 1
                    log.exception(kv("internal-error", where="effect-listener"))

    def _user_event(self, effect: UserEvent) -> None:
        body = user_event_json(effect)
        self.user_events.append(body)
        log.info(kv("user-event", name=effect.name, ltime=effect.ltime, size=len(effect.payload),
                    coalesce=effect.coalesce))
        self.hub.publish(body)

    def _member_event(self, effect: MemberJoined | MemberUpdated | MemberSuspected | MemberFailed | MemberLeft | MemberReaped) -> None:
        name = EVENT_NAMES[type(effect)]
        m = effect.member
        self._track_address(effect)
        self.counters.member_events[name] = self.counters.member_events.get(name, 0) + 1
        # Each costs ~20-30 us (tags decoded, text quoted); a 100-member join makes ~100
        # events in every agent, usually with logs at warning and nobody following events.
        if log.isEnabledFor(logging.INFO):
            log.info(kv(name, member=m.name, addr=format_address(m.address), status=m.status.label,
                        incarnation=m.incarnation))
        if self.hub.subscriber_count:
            self.hub.publish({
                "type": name,
                "time": time.time(),
                "member": api.member_json(m, self.swim.local.name),
            })

    async def _stream_request(self, req: StreamRequest) -> None:
        async with self._stream_limiter:
            self.counters.streams_out += 1
            reply = await transport.request(
                req.to, req.data, expect_reply=req.expect_reply,
                exchange_timeout=self.config.tcp_timeout, on_decode_error=self.note_decode_error,
                budget=self.streams,
            )
        if reply is None:
            self.counters.stream_failures += 1
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self._send.send(_StreamOutcome(req.token, reply))  # unless the driver is gone


def user_event_json(effect: UserEvent) -> dict[str, Any]:
    """A user event as ``agentctl events`` shows it (payload in base64)."""
    return {
        "type": "user",
        "time": time.time(),
        "name": effect.name,
        "ltime": effect.ltime,
        "coalesce": effect.coalesce,
        "payload_size": len(effect.payload),
        "payload": base64.b64encode(effect.payload).decode("ascii"),
    }
