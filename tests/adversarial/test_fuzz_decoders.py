"""Structure-aware fuzzing of every decoder an attacker reaches (issue 18), with memory bounds.

The UDP path (``Swim.handle_packet`` with the replicated tables as its delegate: codec,
compound, LZW, CRC, message bodies, user messages into ``gossip.tables.framing``), the
TCP path (incremental framing with ``stream_message_size`` as the transport reads,
then ``Swim.handle_stream``), the tables' message decoder and the control API's request
parser get inputs built from the crafted-packet library (well-formed messages, lying
headers, msgpack bombs, LZW bombs, wrong CRCs) mutated by hypothesis. Each example
must be refused with the decoder's own error or accepted, never anything else, and
its tracemalloc peak must stay below a bound proportional to what the input may
legitimately inflate to. No timing or CPU assertions (``python -m bench soak`` and
the benchmarks own those).
"""

from __future__ import annotations

import random
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.control import protocol as api
from gossip.config import Config
from gossip.errors import DecodeError
from gossip.serf.payloads import encode_tags
from gossip.swim import Swim
from gossip.tables import framing
from gossip.tables.agenttag import with_agent_tag
from gossip.tables.replica import Tables
from gossip.wire import codec
from tests.adversarial import craft

pytestmark = pytest.mark.adversarial

MiB = 1024 * 1024
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                         HealthCheck.data_too_large])
SMALL_BOMB = 256 * 1024
"""Inflated size of the LZW bombs the strategies use (big ones are explicit examples)."""


@contextmanager
def traced() -> Iterator[Callable[[], int]]:
    """Trace allocations; yields a function giving the peak above the start (bytes)."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        yield lambda: tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def peak_of(fn: Callable[[], object]) -> int:
    with traced() as peak:
        fn()
        return peak()


def bound(data: bytes, inflates_to: int = SMALL_BOMB) -> int:
    """What one input may cost at most: a few copies of itself and of what it may
    legitimately inflate to, plus a constant for the decoder's own structures."""
    return 8 * len(data) + 6 * inflates_to + 2 * MiB


# -- strategies -----------------------------------------------------------------------------------

names = st.one_of(st.sampled_from(["n0", "peer", "", "x\n", "a b", "../etc"]), st.text(max_size=40))
incarnations = st.one_of(st.sampled_from([0, 1, craft.U32 - 1, craft.U32, craft.U32 + 1, 2**63]),
                         st.integers(0, 2**64 - 1))
metas = st.one_of(st.just(b""), st.binary(max_size=600), st.just(b"\xff" + b"m" * 60_000))


@st.composite
def leaves(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 7))
    if kind == 0:
        return craft.alive(draw(names), draw(incarnations), meta=draw(metas))
    if kind == 1:
        return craft.suspect(draw(names), draw(incarnations), draw(names))
    if kind == 2:
        return craft.dead(draw(names), draw(incarnations), draw(names))
    if kind == 3:
        return craft.user(draw(st.sampled_from(craft.tables_payloads())))
    if kind == 4:
        return craft.message_with_body(draw(st.integers(0, 13)), draw(st.sampled_from(craft.msgpack_bombs())))
    if kind == 5:
        return craft.user(draw(st.binary(min_size=1, max_size=300)))
    if kind == 6:
        return craft.compress_raw(craft.lzw_bomb(draw(st.integers(1, SMALL_BOMB))))
    return draw(st.binary(min_size=1, max_size=200))


def _wrap(children: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    def lying(parts: list[bytes], count: int, shift: int) -> bytes:
        lens = [max(0, len(p) + shift) for p in parts]
        return craft.raw_compound(parts, count=count, lengths=lens)

    return st.one_of(
        st.lists(children, min_size=1, max_size=6).map(
            lambda ps: craft.raw_compound(ps) if all(ps) and all(len(p) < 65536 for p in ps) else b"\x07\x00"),
        st.builds(lying, st.lists(children, max_size=4), st.integers(0, 255), st.integers(-3, 3)),
        children.map(lambda b: craft.compress(b) if b else b"\x09"),
        st.builds(lambda b, wrong: craft.crc(b, wrong=wrong), children, st.booleans()),
    )


packets = st.recursive(leaves(), _wrap, max_leaves=8)


def mutate(data: bytes, flips: list[tuple[int, int]]) -> bytes:
    buf = bytearray(data)
    for pos, value in flips:
        if buf:
            buf[pos % len(buf)] = value
    return bytes(buf)


flips = st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), max_size=3)


def make_core() -> Swim:
    tables = Tables(node="n0", vtep="192.0.2.1", rng=random.Random(1),
                    meta=with_agent_tag(encode_tags({"role": "overlay-agent"})))
    core = Swim(Config.lan(), "n0", ("192.0.2.1", 7946), rng=random.Random(1), now=0.0, delegate=tables)
    core.handle_packet(1.0, ("192.0.2.2", 7946), craft.alive(
        "peer", 1, "192.0.2.2", meta=with_agent_tag(encode_tags({"role": "overlay-agent"}))))
    return core


# -- UDP -------------------------------------------------------------------------------------------


@FUZZ
@given(packets, flips)
def test_udp_packet_decoder_refuses_or_accepts_within_a_memory_bound(data: bytes, flips: list[tuple[int, int]]) -> None:
    data = mutate(data, flips) if flips else data
    core = make_core()

    def run() -> None:
        with suppress(DecodeError):
            core.handle_packet(2.0, ("192.0.2.66", 7946), data)

    codec.clear_caches()  # each example pays for its own decode (the memo would hide it)
    peak = peak_of(run)
    assert peak <= bound(data), f"{peak} bytes traced for a {len(data)}-byte datagram"
    core.check_invariants()


@pytest.mark.parametrize("inflated", [codec.DECOMPRESS_LIMIT, codec.DECOMPRESS_LIMIT + 1])
def test_udp_lzw_bomb_at_the_limit_costs_a_bounded_amount_of_memory(inflated: int) -> None:
    data = craft.compress_raw(craft.lzw_bomb(inflated))
    assert len(data) < 32 * 1024  # the bomb is small on the wire
    core = make_core()

    def run() -> None:
        with suppress(DecodeError):
            core.handle_packet(2.0, ("192.0.2.66", 7946), data)

    codec.clear_caches()
    assert peak_of(run) <= bound(data, codec.DECOMPRESS_LIMIT)


def test_udp_decode_cache_keeps_a_bounded_number_of_bytes() -> None:
    """Item 3: ≤ 2 KiB datagrams that each inflate to ~1 MiB of unique user messages
    must not be kept by the decode memo (4,500 of them took an agent to 4.2 GB)."""
    core = make_core()
    codec.clear_caches()
    with traced():
        before = tracemalloc.get_traced_memory()[0]
        for i in range(100):
            data = craft.unique_user_bomb(i)
            assert len(data) <= 2048
            with suppress(DecodeError):  # refusing it (it inflates past the UDP limit) is fine too
                core.handle_packet(2.0, ("192.0.2.66", 7946), data)
        kept = tracemalloc.get_traced_memory()[0] - before
    codec.clear_caches()
    assert kept <= 16 * MiB, f"{kept / MiB:.0f} MiB kept after 100 datagrams of {len(data)} bytes"


# -- TCP -------------------------------------------------------------------------------------------


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 6))
    if kind == 0:
        states = draw(st.lists(st.builds(craft.node_state, names.filter(bool), st.integers(0, craft.U32),
                                         st.just("192.0.2.9"), state=st.integers(0, 3)), max_size=20))
        user = draw(st.one_of(st.just(b""), st.sampled_from(craft.tables_payloads()), st.binary(max_size=2000)))
        body = craft.push_pull(states, user, join=draw(st.booleans()))
    elif kind == 1:
        body = craft.push_pull_head(nodes=draw(st.integers(0, 2**32)), user_state_len=draw(st.integers(0, 2**32)))
        body += draw(st.binary(max_size=2000))
    elif kind == 2:
        body = craft.user_stream(draw(st.sampled_from(craft.tables_payloads())))
    elif kind == 3:
        body = craft.user_stream_head(draw(st.integers(0, 2**32))) + draw(st.binary(max_size=2000))
    elif kind == 4:
        body = craft.message_with_body(draw(st.sampled_from([2, 6, 8, 13])), draw(st.sampled_from(craft.msgpack_bombs())))
    elif kind == 5:
        body = craft.compress_raw(craft.lzw_bomb(draw(st.integers(1, SMALL_BOMB)), draw(st.sampled_from([6, 8, 0x61]))))
    else:
        body = draw(st.binary(min_size=1, max_size=500))
    if draw(st.booleans()) and kind != 5:
        body = craft.compress(body)
    return body


def read_like_the_transport(data: bytes, chunk: int) -> bytes | None:
    """What the transport hands the core: the first complete message, read ``chunk``
    bytes at a time; None when the framing refuses it or it never completes."""
    buf = b""
    for off in range(0, len(data), chunk):
        buf += data[off:off + chunk]
        try:
            size = codec.stream_message_size(buf)
        except DecodeError:
            return None
        if size is not None:
            return buf[:size]
    return None


@FUZZ
@given(streams(), flips, st.sampled_from([1, 7, 512, 65536]))
def test_tcp_stream_decoder_refuses_or_accepts_within_a_memory_bound(
        data: bytes, flips: list[tuple[int, int]], chunk: int) -> None:
    data = mutate(data, flips) if flips else data
    core = make_core()

    def run() -> None:
        msg = read_like_the_transport(data, chunk)
        if msg is None:
            return
        with suppress(DecodeError):
            core.handle_stream(2.0, ("192.0.2.66", 40000), msg)

    peak = peak_of(run)
    assert peak <= bound(data), f"{peak} bytes traced for a {len(data)}-byte stream"
    core.check_invariants()


def test_tcp_push_pull_with_the_largest_user_state_costs_a_bounded_amount_of_memory() -> None:
    from gossip.wire.messagecodec import MAX_USER_STATE

    data = craft.push_pull([], b"\x93" + b"\x00" * (MAX_USER_STATE - 1))
    core = make_core()

    def run() -> None:
        msg = read_like_the_transport(data, 65536)
        assert msg is not None
        with suppress(DecodeError):
            core.handle_stream(2.0, ("192.0.2.66", 40000), msg)

    peak = peak_of(run)
    assert peak <= bound(data, 0), f"{peak / MiB:.0f} MiB traced for a {len(data) / MiB:.0f} MiB push/pull"


# -- the tables' messages ----------------------------------------------------------------------------


@FUZZ
@given(st.one_of(st.sampled_from(craft.tables_payloads()),
                 st.builds(lambda k, b: bytes([k]) + b, st.sampled_from([0x90, 0x91, 0x92, 0x93, 0x95]),
                           st.binary(max_size=400))), flips)
def test_tables_message_decoder_refuses_or_accepts_within_a_memory_bound(
        payload: bytes, flips: list[tuple[int, int]]) -> None:
    payload = mutate(payload, flips) if flips else payload

    def run() -> None:
        with suppress(DecodeError):
            framing.decode(payload, 1.0)

    peak = peak_of(run)
    assert peak <= bound(payload, 0)


# -- the control API ---------------------------------------------------------------------------------

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)),
    lambda kids: st.one_of(st.lists(kids, max_size=5), st.dictionaries(st.text(max_size=8), kids, max_size=5)),
    max_leaves=30,
)


@st.composite
def control_lines(draw: st.DrawFn) -> bytes:
    import json

    kind = draw(st.integers(0, 4))
    if kind == 0:
        obj = {"v": draw(st.sampled_from([1, 2, True, None, "1"])), "op": draw(st.one_of(st.text(max_size=10), json_values)),
               "args": draw(json_values)}
        return json.dumps(obj).encode()
    if kind == 1:
        depth = draw(st.integers(1, 5000))
        opener = draw(st.sampled_from([b"[", b'{"a":']))
        closer = b"]" if opener == b"[" else b"}"
        return b'{"v":1,"op":"members","args":{"x":' + opener * depth + b"1" + closer * depth + b"}}"
    if kind == 2:
        return draw(st.binary(max_size=2000))
    if kind == 3:
        return b'{"v":1,"op":"' + b"a" * draw(st.integers(0, api.MAX_REQUEST * 2)) + b'"}'
    return craft.deep_json(draw(st.integers(1, 100_000)))


@FUZZ
@given(control_lines())
def test_control_request_parser_refuses_or_accepts_within_a_memory_bound(line: bytes) -> None:
    def run() -> None:
        with suppress(api.ApiError):
            api.parse_request(line)

    peak = peak_of(run)
    assert peak <= bound(line, 0)


def test_control_request_parser_refuses_1000_nested_brackets_with_one_line() -> None:
    """Item 2: ~1,000 nested brackets raised RecursionError out of the parser."""
    line = b'{"v":1,"op":"members","args":{"x":' + craft.deep_json(1000) + b"}}"
    with pytest.raises(api.ApiError) as err:
        api.parse_request(line)
    assert "\n" not in str(err.value)
    with pytest.raises(api.ApiError):
        api.parse_request(craft.deep_json(100_000))
