"""agent/overlay/ipsec.py + gossip/tables/ipsecrows.py: key rows in the tables, peers of encrypted
networks only, SAs that match pairwise, rotation make-before-break, removal of gone
peers, additive-only start, key file, re-key of a vanished outbound SA. The kernel is a
fake that interprets the real netlink requests (dataplane/xfrm/codec.py's encoding)."""

from __future__ import annotations

import json
import os
import stat
import struct
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio
import trio.testing

from agent.overlay import ipsec as agent_ipsec
from dataplane.xfrm import codec
from dataplane.xfrm.kernel import XfrmApplier
from dataplane.xfrm.model import Direction, PolicyInfo, StateInfo, XfrmError, XfrmPolicy, XfrmState
from gossip.errors import DecodeError
from gossip.tables import framing as netgossip
from gossip.tables import ipsecrows
from gossip.tables.replica import Tables
from tests.stateful.tablesnet import Net, cluster

INTERVAL = 30.0


class FakeXfrm:
    """An SA/policy database driven by the real request bytes."""

    def __init__(self) -> None:
        self.states: dict[tuple[str, int], XfrmState] = {}
        self.added: dict[tuple[str, int], int] = {}
        self.policies: dict[tuple[str, str, int], XfrmPolicy] = {}
        self.log: list[int] = []
        self.clock = 1000

    def apply(self, requests: Sequence[codec.Request]) -> list[XfrmError | None]:
        out: list[XfrmError | None] = []
        for r in requests:
            self.log.append(r.type)
            out.append(self._one(r))
        return out

    def _one(self, r: codec.Request) -> XfrmError | None:
        if r.type == codec.XFRM_MSG_NEWSA:
            st = codec.parse_state(r.payload).state
            if (st.dst, st.spi) in self.states:
                return XfrmError(17, r.what)
            self.states[(st.dst, st.spi)] = st
            self.clock += 1
            self.added[(st.dst, st.spi)] = self.clock
        elif r.type == codec.XFRM_MSG_DELSA:
            fam = struct.unpack_from("=H", r.payload, 20)[0]
            dst = codec.unpack_address(r.payload[:16], fam)
            spi = struct.unpack_from(">I", r.payload, 16)[0]
            if self.states.pop((dst, spi), None) is None:
                return XfrmError(3, r.what)
        elif r.type == codec.XFRM_MSG_UPDPOLICY:
            pol = codec.parse_policy(r.payload).policy
            self.policies[(pol.src, pol.dst, int(pol.direction))] = pol
        elif r.type == codec.XFRM_MSG_DELPOLICY:
            fam = struct.unpack_from("=H", r.payload, 40)[0]
            dst = codec.unpack_address(r.payload[0:16], fam)
            src = codec.unpack_address(r.payload[16:32], fam)
            direction = r.payload[60]
            if self.policies.pop((src, dst, direction), None) is None:
                return XfrmError(2, r.what)
        else:  # pragma: no cover - the agent sends nothing else
            raise AssertionError(r.what)
        return None

    def dump_states(self) -> list[StateInfo]:
        return [StateInfo(s, 0, 0, self.added[k], 0, 0, 0, 0, 0, 0, codec.XFRM_STATE_ESN)
                for k, s in self.states.items()]

    def dump_policies(self) -> list[PolicyInfo]:
        full = 32
        return [PolicyInfo(p, full, full, 1, 0, 0) for p in self.policies.values()]

    def close(self) -> None:
        pass


class Host:
    """One node's IpsecAgent over the simulated cluster, with a fake kernel and clock.

    ``ready``: the overlay's view is complete (the steady state), so passes may delete;
    otherwise the agent is in its start-up, additive-only phase."""

    def __init__(self, net: Net, name: str, key_dir: Path, clock: list[float],
                 kernel: FakeXfrm | None = None, ready: bool = True) -> None:
        self.net = net
        self.name = name
        self.kernel = kernel or FakeXfrm()
        node = net.nodes[name]
        self.overlay = SimpleNamespace(tables=node.tables, vtep=node.tables.vtep, dataplane=True,
                                       rec=None)
        self.agent = agent_ipsec.IpsecAgent(
            self.overlay,  # type: ignore[arg-type]
            interval=INTERVAL, key_dir=str(key_dir / name), applier_factory=lambda: self.kernel,
            clock=lambda: clock[0], boot="boot-1")
        self.agent.store = agent_ipsec.KeyStore(str(key_dir / name), "boot-1")

        async def call(fn: Any) -> Any:
            value, effects = fn(self.net.nodes[self.name].swim, self.net.now)
            self.net.perform(self.name, list(effects))
            return value

        self.rt = SimpleNamespace(driver=SimpleNamespace(call=call))
        self.agent.rt = self.rt  # type: ignore[assignment]
        if ready:
            self.agent.rec.ready()

    @property
    def vtep(self) -> str:
        return str(self.overlay.vtep)

    async def step(self, now: float) -> bool:
        """What the running agent does on a change: keys first, then one reconcile pass."""
        await self.agent._rotate_keys(self.rt, now)  # type: ignore[arg-type]
        return await self.agent.rec.pass_now("test")


def _setup(tmp_path: Path, n: int = 4) -> tuple[Net, dict[str, Host], list[float]]:
    """n0, n1, n2 share encrypted 'sec'; n0 and n3 share plain 'plain' only."""
    net = cluster(n)
    net.call("n0", lambda t: t.create_network(net.now, "sec", ["10.50.0.0/24"], encrypted=True))
    net.call("n0", lambda t: t.create_network(net.now, "plain", ["10.60.0.0/24"]))
    net.run_for(2)
    for name in [n for n in ("n0", "n1", "n2") if n in net.nodes]:
        net.call(name, lambda t: t.create_endpoint(net.now, "sec"))
    for other in [n for n in ("n0", "n3") if n in net.nodes]:
        net.call(other, lambda t: t.create_endpoint(net.now, "plain"))
    net.run_for(3)
    clock = [1000 * INTERVAL + 1.0]
    hosts = {name: Host(net, name, tmp_path, clock) for name in net.nodes}
    return net, hosts, clock


async def _converge(net: Net, hosts: dict[str, Host], clock: list[float], rounds: int = 2) -> None:
    for _ in range(rounds):
        for h in hosts.values():
            assert await h.step(clock[0]), h.agent.last_error
        net.run_for(2)


# ----------------------------------------------------------------- rows


def test_row_roundtrip_and_validation() -> None:
    row = ipsecrows.IpsecKeysRow("n1", 7, "192.0.2.1", ((5, b"a" * 32), (6, b"b" * 32)))
    assert ipsecrows.decode_event(ipsecrows.encode_event(row)) == row
    v6 = ipsecrows.IpsecKeysRow("n2", 1, "2001:db8::1", ())
    assert ipsecrows.decode_event(ipsecrows.encode_event(v6)) == v6
    bad = [
        [7, "n1", b"\xc0\x00\x02\x01", [[6, b"b" * 32], [5, b"a" * 32]]],  # order
        [7, "n1", b"\xc0\x00\x02\x01", [[5, b"a" * 31]]],  # key size
        [7, "", b"\xc0\x00\x02\x01", []],
        [7, "n1", b"\xc0\x00\x02", []],
        [-1, "n1", b"\xc0\x00\x02\x01", []],
        [7, "n1", b"\xc0\x00\x02\x01", [[i, b"a" * 32] for i in range(9)]],
        "junk",
    ]
    for obj in bad:
        with pytest.raises(DecodeError):
            ipsecrows.row_from_obj(obj)
    with pytest.raises(DecodeError):
        ipsecrows.decode_event(b"\x94\xc1")
    newer = ipsecrows.IpsecKeysRow("n1", 8, "192.0.2.1", ())
    assert ipsecrows.newer(newer, row) and not ipsecrows.newer(row, newer)


def test_push_pull_state_carries_rows_and_old_decoders_ignore_them() -> None:
    t = Tables(node="a", vtep="192.0.2.1", rng=__import__("random").Random(1))
    t.publish_ipsec_keys(0.0, [(3, b"k" * 32)])
    state = t.local_state(False)
    assert state and state[0] == netgossip.STATE
    msg = netgossip.decode(state, 0.0)  # what an agent without IPsec rows sees
    assert isinstance(msg, netgossip.State) and msg.rows == ()
    rows = ipsecrows.rows_in_state(state)
    assert [(r.node, r.keys) for r in rows] == [("a", ((3, b"k" * 32),))]
    # An unknown private type byte is ignored by older decoders, not an error.
    assert netgossip.decode(ipsecrows.encode_event(rows[0]), 0.0) is None


async def test_keys_spread_and_only_encrypted_peers_get_sas(tmp_path: Path) -> None:
    net, hosts, clock = _setup(tmp_path)
    await _converge(net, hosts, clock)
    t0 = net.nodes["n0"].tables
    assert [r.node for r in t0.ipsec_rows()] == ["n0", "n1", "n2", "n3"]
    for row in t0.ipsec_rows():  # public halves only, two epochs (current, next)
        assert [e for e, _ in row.keys] == [1000, 1001]
    v = {n: h.vtep for n, h in hosts.items()}
    k0 = hosts["n0"].kernel
    peers_with_policies = sorted({p.dst for p in k0.policies.values() if p.direction == Direction.OUT})
    assert peers_with_policies == sorted([v["n1"], v["n2"]])
    assert all(v["n3"] not in (s.src, s.dst) for s in k0.states.values())
    assert hosts["n3"].kernel.states == {} and hosts["n3"].kernel.policies == {}
    assert len(k0.states) == 2 * 2 * 2  # 2 peers x 2 epochs x 2 directions
    # Pairwise agreement: every SA n0 sends with exists at the receiver with the same key.
    for name in ("n1", "n2"):
        out = k0.policies[(v["n0"], v[name], int(Direction.OUT))]
        assert out.spi != 0
        mine = k0.states[(v[name], out.spi)]
        theirs = hosts[name].kernel.states[(v[name], out.spi)]
        assert mine == theirs and mine.src == v["n0"]
    # Level-triggered: another pass with nothing new sends nothing.
    before = len(k0.log)
    assert await hosts["n0"].step(clock[0])
    assert len(k0.log) == before


async def test_rotation_is_make_before_break_and_drops_old_epoch(tmp_path: Path) -> None:
    net, hosts, clock = _setup(tmp_path, 3)
    await _converge(net, hosts, clock)
    v = {n: h.vtep for n, h in hosts.items()}
    grace = hosts["n0"].agent.policy.grace
    seen_spis = set()
    # Walk across two epoch boundaries in small steps; at every instant whatever n0
    # sends with is installed at n1.
    t = clock[0]
    while t < 1002 * INTERVAL + grace + 2:
        t += 1.5
        clock[0] = t
        for h in hosts.values():
            await h.step(t)
        net.run_for(0.5)
        out = hosts["n0"].kernel.policies[(v["n0"], v["n1"], int(Direction.OUT))]
        seen_spis.add(out.spi)
        assert (v["n1"], out.spi) in hosts["n1"].kernel.states
    assert len(seen_spis) == 3  # epochs 1000, 1001, 1002
    epochs = sorted(hosts["n0"].agent.keys)
    assert epochs == [1002, 1003]
    live_spis = {s.spi & 3 for s in hosts["n0"].kernel.states.values()}
    assert live_spis == {1002 % 4, 1003 % 4}


async def test_gone_peer_and_left_network_remove_sas_and_policies(tmp_path: Path) -> None:
    net, hosts, clock = _setup(tmp_path, 3)
    await _converge(net, hosts, clock)
    v = {n: h.vtep for n, h in hosts.items()}
    k0 = hosts["n0"].kernel
    # n2 removes its endpoint: it no longer shares the encrypted network.
    ep = net.nodes["n2"].tables.local_endpoints()[0]
    net.call("n2", lambda t: t.remove_endpoint(net.now, ep.id))
    net.run_for(3)
    await _converge(net, hosts, clock, rounds=1)
    assert all(v["n2"] not in (s.src, s.dst) for s in k0.states.values())
    assert all(v["n2"] not in (p.src, p.dst) for p in k0.policies.values())
    assert any(v["n1"] in (s.src, s.dst) for s in k0.states.values())
    # n1 dies: its SAs go too.
    net.crash("n1")
    net.run_for(30)
    assert await hosts["n0"].step(clock[0])
    assert k0.states == {} and k0.policies == {}


async def test_additive_only_start_keeps_unknown_peers(tmp_path: Path) -> None:
    net, hosts, clock = _setup(tmp_path, 3)
    await _converge(net, hosts, clock)
    k0 = hosts["n0"].kernel
    held = dict(k0.states)
    net.crash("n1")
    net.run_for(30)
    # n0's agent restarts: the kernel and the key file stay, its view may be incomplete.
    restarted = Host(net, "n0", tmp_path, clock, kernel=k0, ready=False)
    await restarted.agent.restore_keys()
    assert restarted.agent.rec.additive_only
    assert await restarted.step(clock[0])
    assert k0.states == held  # nothing deleted while the view may be incomplete
    assert restarted.agent.counters.rekeys == 0  # every restored SA was still there
    restarted.agent.rec.ready()
    assert await restarted.step(clock[0])
    assert len(k0.states) == len(held) // 2


async def test_deletions_wait_for_the_overlays_view(tmp_path: Path) -> None:
    net, _hosts, clock = _setup(tmp_path, 2)
    agent = Host(net, "n0", tmp_path, clock, ready=False).agent
    complete = trio.Event()

    async def wait_complete() -> None:
        await complete.wait()

    agent.overlay.view_complete = wait_complete  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(agent._follow_overlay)
        await trio.testing.wait_all_tasks_blocked()
        assert agent.rec.additive_only
        complete.set()
    assert not agent.rec.additive_only


async def test_vanished_outbound_sa_gets_a_fresh_key_not_the_old_one(tmp_path: Path) -> None:
    net, hosts, clock = _setup(tmp_path, 2)
    await _converge(net, hosts, clock)
    v = {n: h.vtep for n, h in hosts.items()}
    k0 = hosts["n0"].kernel
    out = k0.policies[(v["n0"], v["n1"], int(Direction.OUT))]
    old = k0.states.pop((v["n1"], out.spi))  # someone flushed it behind our back
    old_public = hosts["n0"].agent.keys[1000].public
    await _converge(net, hosts, clock, rounds=3)
    assert hosts["n0"].agent.counters.rekeys == 1
    assert hosts["n0"].agent.keys[1000].public != old_public
    new = k0.states[(v["n1"], out.spi)]  # SPIs do not depend on keys
    assert new.key != old.key
    assert hosts["n1"].kernel.states[(v["n1"], out.spi)] == new


async def test_key_file_is_private_and_survives_a_restart_of_the_same_boot(tmp_path: Path) -> None:
    net, hosts, clock = _setup(tmp_path, 2)
    await _converge(net, hosts, clock)
    path = tmp_path / "n0" / agent_ipsec.KEY_FILE
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    data = json.loads(path.read_text())
    keys = hosts["n0"].agent.keys
    assert sorted(int(e) for e in data["keys"]) == sorted(keys)
    store = agent_ipsec.KeyStore(str(tmp_path / "n0"), "boot-1")
    assert store.load(hosts["n0"].vtep) == keys
    assert agent_ipsec.KeyStore(str(tmp_path / "n0"), "boot-2").load(hosts["n0"].vtep) == {}
    assert store.load("192.0.2.99") == {}
    path.write_text("{garbage")
    assert store.load(hosts["n0"].vtep) == {}


async def test_peers_view_shows_spis_and_install_times_without_keys(tmp_path: Path) -> None:
    net, hosts, clock = _setup(tmp_path, 3)
    await _converge(net, hosts, clock)
    sec = net.nodes["n0"].tables.find_network("sec").id
    view = hosts["n0"].agent.ipsec_peers_view(sec)
    assert [p["node"] for p in view] == ["n1", "n2"]
    p = view[0]
    assert p["send_epoch"] == 1000 and p["send_spi"].startswith("0x")
    assert {(s["direction"], s["epoch"]) for s in p["sas"]} == {
        ("in", 1000), ("out", 1000), ("in", 1001), ("out", 1001)}
    assert all(isinstance(s["installed_at"], int) for s in p["sas"])
    text = json.dumps(view)
    for key in hosts["n0"].kernel.states.values():
        assert key.key.hex() not in text
    for k in hosts["n0"].agent.keys.values():
        assert k.private.hex() not in text
    plain = net.nodes["n0"].tables.find_network("plain").id
    assert hosts["n0"].agent.ipsec_peers_view(plain) == []


async def test_sync_failure_is_reported_not_raised(tmp_path: Path) -> None:
    _net, hosts, clock = _setup(tmp_path, 2)

    def broken() -> XfrmApplier:
        raise XfrmError(93, "open NETLINK_XFRM socket", "no xfrm_user")

    hosts["n0"].agent.xfrm.open_socket = broken
    assert not await hosts["n0"].step(clock[0])
    assert "NETLINK_XFRM" in (hosts["n0"].agent.last_error or "")
    assert any("XFRM sync failed" in w for w in hosts["n0"].agent.warnings())


def test_owner_reasserts_its_row_over_a_previous_life() -> None:
    rnd = __import__("random").Random(1)
    t = Tables(node="a", vtep="192.0.2.1", rng=rnd)
    t.publish_ipsec_keys(0.0, [(3, b"k" * 32)])
    stale = ipsecrows.IpsecKeysRow("a", 50, "192.0.2.1", ((1, b"o" * 32),))
    t.on_user_message(1.0, ipsecrows.encode_event(stale))
    row = t.ipsec.get("a")
    assert row is not None and row.keys == ((3, b"k" * 32),) and row.lamport > 50


def test_rotation_policy_grace() -> None:
    assert agent_ipsec.rotation_policy(3.0).grace == 1.0
    assert agent_ipsec.rotation_policy(43200).grace == 60.0
