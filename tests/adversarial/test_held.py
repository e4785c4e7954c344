"""Attacks that held when issue 18 was filed, kept held: real agents, an attacker on the underlay.

Random datagrams, malformed compounds, msgpack bombs (memberlist bodies and the tables'
user messages, over UDP and TCP), wrong CRCs, foreign gossip keys, oversized streams,
oversized control lines, path-traversal names and duplicate addresses. After each
attack: every agent runs, answers ``members`` and sees the others alive, a new agent
joins, tables and kernel equal the snapshot from before, RSS grew by at most a slack
(``AttackLab.assert_healthy``). The two agents and their network are shared by the
module (``shared_lab``); attacks that need their own agents make them (``attack_lab``).
"""

from __future__ import annotations

import base64
import os
import random
import socket
from collections.abc import Callable
from typing import Any

import pytest

from agent.ctl.client import Client, CtlError
from crypto.keyring import Keyring
from gossip.wire.messages import DEFAULT_VSN
from tests.adversarial import craft
from tests.adversarial.attacklab import AttackLab
from tests.netns.overlaylab import wait_for

pytestmark = [pytest.mark.adversarial, pytest.mark.netns, pytest.mark.slow]

AttackLabFactory = Callable[..., AttackLab]


@pytest.fixture
def before(shared_lab: AttackLab) -> tuple[dict[str, Any], list[int]]:
    """The shared agents' tables/kernels and RSS before this test's attack."""
    return shared_lab.snapshot(), shared_lab.rss()


def test_random_datagrams(shared_lab: AttackLab, before: tuple[dict[str, Any], list[int]]) -> None:
    rng = random.Random(18)
    datagrams = [rng.randbytes(rng.randint(1, 1400)) for _ in range(1500)]
    # Random bodies behind every valid first byte reach each message decoder.
    datagrams += [bytes([t]) + rng.randbytes(rng.randint(0, 300)) for t in range(16) for _ in range(60)]
    for to in (0, 1):
        shared_lab.udp(datagrams, to)
    shared_lab.assert_healthy(*before)


def test_malformed_compounds(shared_lab: AttackLab, before: tuple[dict[str, Any], list[int]]) -> None:
    ok = craft.alive("ghost", 1, meta=b"")
    bad = [
        craft.raw_compound([b""]),  # an empty part: crashes serf 0.9.4
        craft.raw_compound([], count=0),
        b"\x07",
        craft.raw_compound([ok], count=200),  # lengths of 200 parts announced, one present
        craft.raw_compound([ok], lengths=[60000]),  # a part longer than the datagram
        craft.raw_compound([ok] * 3, lengths=[len(ok), 0, len(ok)]),
        craft.nested_compounds(ok[:5], 50),  # nested far beyond MAX_NESTING, truncated leaf
        craft.raw_compound([craft.raw_compound([b"\x07"] * 255)] * 4),
        craft.compress(craft.raw_compound([b""] * 10)),
        craft.crc(b""),  # a CRC frame around nothing: crashes serf 0.9.4
        craft.compress_raw(b"\x00\x01\x02"),  # LZW garbage
        craft.compress_raw(craft.lzw_bomb(1000), algo=7),  # unknown algorithm
    ]
    # Truncations of a valid compound of valid messages at every length.
    whole = craft.compound([craft.suspect("ghost", 1), craft.dead("ghost", 1), ok])
    bad += [whole[:k] for k in range(1, len(whole))]
    shared_lab.udp(bad * 3, 0)
    shared_lab.assert_healthy(*before)


def test_msgpack_bombs_over_udp_and_tcp(shared_lab: AttackLab, before: tuple[dict[str, Any], list[int]]) -> None:
    bombs = craft.msgpack_bombs()
    datagrams = [craft.message_with_body(t, b) for t in range(14) for b in bombs]
    datagrams += [craft.user(p) for p in craft.tables_payloads()]
    datagrams = [d for d in datagrams if len(d) <= 65507]  # a UDP datagram's limit
    shared_lab.udp(datagrams, 0)
    for body in [craft.message_with_body(t, b) for t in (2, 6, 8, 13) for b in bombs[:6]]:
        shared_lab.send_stream(body, 1)
    for payload in craft.tables_payloads()[::4]:
        shared_lab.send_stream(craft.user_stream(payload), 1)
    shared_lab.assert_healthy(*before)


def test_wrong_crcs_are_dropped(shared_lab: AttackLab, before: tuple[dict[str, Any], list[int]]) -> None:
    """A dead message about host1 inside a frame with a wrong CRC must not count: had it
    counted, host1 would have refuted it with a higher incarnation."""
    inc = shared_lab.incarnation(0, "host1")
    assert inc is not None
    lies = [craft.dead("host1", inc + k, "host0") for k in range(3)] + [craft.suspect("host1", inc + 5)]
    datagrams = [craft.crc(m, wrong=True) for m in lies]
    datagrams += [craft.crc(craft.compound(lies), wrong=True), craft.crc(craft.compress(craft.compound(lies)), wrong=True)]
    shared_lab.udp(datagrams * 5, 0)
    shared_lab.assert_healthy(*before)
    assert shared_lab.incarnation(0, "host1") == inc


def test_foreign_keys_are_refused(attack_lab: AttackLabFactory) -> None:
    """An encrypted cluster: datagrams and streams sealed under another key (or plain)
    claiming host1 dead change nothing."""
    key = bytes(range(32))
    foreign = bytes(range(100, 132))
    flag = ["--encrypt-key", base64.b64encode(key).decode()]
    al = attack_lab(2, extra=flag, join_extra=flag).start()
    al.keyring = Keyring([key], os.urandom)
    before, rss = al.snapshot(), al.rss()
    inc = al.incarnation(0, "host1")
    assert inc is not None
    lie = craft.dead("host1", inc, "host0")
    datagrams = [craft.sealed(lie, foreign), craft.sealed(craft.crc(lie), foreign), lie, craft.crc(lie),
                 craft.sealed(lie, foreign)[:40], craft.sealed(b"", foreign)]
    al.udp(datagrams * 5, 0)
    dead_state = craft.node_state("host1", inc + 1, al.addr(1), state=2)
    for body in (craft.push_pull([dead_state]), craft.user_stream(craft.tables_payloads()[0])):
        al.send_stream(craft.sealed_stream(body, foreign), 0)
        al.send_stream(body, 0)  # plaintext at a node that requires encryption
    al.assert_healthy(before, rss)
    assert al.incarnation(0, "host1") == inc


def test_oversized_and_stalled_streams(shared_lab: AttackLab, before: tuple[dict[str, Any], list[int]]) -> None:
    from gossip.wire.messagecodec import MAX_USER_MSG, MAX_USER_STATE

    # (Streams of the largest sizes the limits allow: test_items.py, item 5.)
    # Headers that announce more than any limit: refused from the header alone.
    shared_lab.send_stream(craft.user_stream_head(1 << 30) + b"\x00" * (1 << 20))
    shared_lab.send_stream(craft.push_pull_head(user_state_len=1 << 31) + b"\x00" * (1 << 20))
    shared_lab.send_stream(craft.push_pull_head(nodes=1 << 30) + b"\x81" * (1 << 20))
    shared_lab.send_stream(b"\x0a\xff\xff\xff\xff" + b"\x00" * (1 << 20))  # a 4 GiB encrypted stream
    # More bytes than any limit (100 MB) behind a header that lies.
    with shared_lab.tcp(0) as s:
        s.sendall(craft.push_pull_head(user_state_len=MAX_USER_STATE + 1))
        sent = 0
        try:
            while sent < 100_000_000:
                s.sendall(b"\x00" * (1 << 20))
                sent += 1 << 20
        except OSError:
            pass  # the agent closed it: what it should do at the end of the message
    # A stream that announces a large message and then stalls is closed by the agent.
    with shared_lab.tcp(1) as s:
        s.sendall(craft.user_stream_head(MAX_USER_MSG) + b"\x80" * 1000)
        s.settimeout(60)
        assert s.recv(1) == b""
    shared_lab.assert_healthy(*before)


def test_oversized_and_hostile_control_lines(shared_lab: AttackLab, before: tuple[dict[str, Any], list[int]]) -> None:
    path = shared_lab.ol.nodes[0].socket
    for payload in (b"x" * (8 << 20), b'{"v":1,"op":"' + b"m" * (8 << 20) + b'"}\n', b"\xff\xfe\x00\n" * 1000,
                    b'{"v":1,"op":"members","args":[]}\n', b'{"v":1}\n', b"[]\n", b"\n" * 10000):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(60)
            s.connect(path)
            try:
                s.sendall(payload)
                s.shutdown(socket.SHUT_WR)
                while s.recv(65536):
                    pass
            except OSError:
                pass  # closed by the agent for the oversized line: fine
        assert Client(path, 15).request("members")
    shared_lab.assert_healthy(*before)


TRAVERSAL = ["../../etc/evil", "a/b", "..", ".", "/abs", "x\x00y", "a" * 300, " ", "a b"]
"""Names no network, endpoint or interface may have (the empty name is refused too)."""


def test_path_traversal_names_are_refused(shared_lab: AttackLab, before: tuple[dict[str, Any], list[int]]) -> None:
    ol = shared_lab.ol
    c = shared_lab.containers[0]
    for name in ["", "~root", "-rf", "évil", *TRAVERSAL]:
        with pytest.raises(CtlError):
            ol.request(0, "network", {"action": "create", "name": name, "subnets": ["10.78.0.0/24"]})
        with pytest.raises(CtlError):
            ol.request(0, "endpoint", {"action": "create", "network": "adv", "netns": c, "name": name})
    for name in TRAVERSAL:  # "~root" or "-rf" are valid interface names
        with pytest.raises(CtlError):
            ol.request(0, "endpoint", {"action": "create", "network": "adv", "netns": c, "ifname": name})
    with pytest.raises(CtlError):
        ol.request(0, "endpoint", {"action": "create", "network": "adv", "netns": "../../../proc/self/ns/x"})
    shared_lab.assert_healthy(*before)


def test_duplicate_addresses_are_refused(shared_lab: AttackLab, before: tuple[dict[str, Any], list[int]]) -> None:
    ol = shared_lab.ol
    theirs = next(e for e in ol.endpoints(0) if e["node"] == "host1")
    c = shared_lab.containers[0]
    for args in ({"ip": theirs["ipv4"]}, {"mac": theirs["mac"]}, {"ip": "10.77.0.0"}, {"ip": "10.77.0.255"},
                 {"ip": "10.99.0.5"}):
        with pytest.raises(CtlError):
            ol.request(0, "endpoint", {"action": "create", "network": "adv", "netns": c, "ifname": "dup", **args})
    with pytest.raises(CtlError):
        ol.request(0, "network", {"action": "create", "name": "adv", "subnets": ["10.79.0.0/24"]})
    # A spoofed member that claims host1's address: host1 keeps its name, address and entries.
    shared_lab.udp([craft.alive("imposter", 1, shared_lab.addr(1), meta=b"", vsn=DEFAULT_VSN),
                    craft.alive("host1", 0, "192.0.2.250")], 0)
    assert next(m for m in ol.members(0) if m["name"] == "host1")["address"] == shared_lab.addr(1)
    wait_for(lambda: ol.status_of(0, "imposter") in (None, "suspect", "dead"),
             "the imposter (nothing answers for it) not to stay alive", within=60)
    shared_lab.assert_healthy(*before)


def test_invalid_gossip_key_is_one_line_without_a_traceback(shared_lab: AttackLab) -> None:
    r = shared_lab.ol.ctl(0, "keys", "install", "not-base64!", check=False)
    assert r.returncode != 0
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "Traceback" not in shared_lab.ol.log(0)
