"""The overlay's reconcilers start with the first network, not at boot, when nothing needs them.

An agent with no network and no object of ours in the kernel (``Overlay.leftovers``
False) runs no reconciler: READY=1 comes without one, ``status`` says so, and the first
network (created here or learned from a peer), an endpoint or ``agentctl dataplane``
starts them. With leftovers they start at boot, as before. ``agent.overlay.leftovers``'
netlink parsing is checked on crafted answers (the real dumps: tests/netns).
"""

from __future__ import annotations

import socket
import struct
from functools import partial
from pathlib import Path
from typing import Any

import trio

from agent import service
from agent.cli import AgentOptions
from agent.overlay import leftovers
from agent.overlay.extension import READY_CONDITION, Overlay
from dataplane.fake import FakeKernel
from dataplane.nft.model import TABLE
from dataplane.reconciler import ReconcilerConfig
from gossip.effects import Address
from tests.agent.conftest import query, wait_until
from tests.agent.test_overlay import NO_IPSEC, FakePlumber, netns_file


async def _start(nursery: trio.Nursery, sockdir: str, name: str, *, held: bool,
                 join: tuple[Address, ...] = (), ip: str = "127.0.0.1") -> tuple[Overlay, FakeKernel, str, Address]:
    kernel = FakeKernel()
    asked: list[str] = []

    def kernel_leftovers(prefix: str, nft: bool) -> bool:
        asked.append(prefix)
        return held

    overlay = Overlay(kernel_factory=lambda prefix: kernel, plumber=FakePlumber(),  # type: ignore[arg-type]
                      leftovers=kernel_leftovers,
                      reconciler_config=ReconcilerConfig(startup_grace=2.0), ipsec_probe=lambda: NO_IPSEC)
    opts = AgentOptions(node=name, bind=(ip, 0), join=join, control_socket=f"{sockdir}/{name}.sock",
                        profile="local", underlay_mtu=1500)

    async def runner(task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED) -> None:
        await service.run(opts, handle_signals=False, extensions=[overlay], task_status=task_status)

    addr: Address = await nursery.start(runner)
    assert asked == ["ov-"]
    return overlay, kernel, opts.control_socket, addr


async def _ready(path: str) -> bool:
    return bool((await query(path, "status"))["ready"])


async def test_no_network_no_reconciler_until_the_first_network(sockdir: str) -> None:
    async with trio.open_nursery() as nursery:
        a, ka, sa, _ = await _start(nursery, sockdir, "a", held=False)
        await wait_until(lambda: _ready(sa), "a ready without a reconciler")
        st: dict[str, Any] = await query(sa, "status")
        assert a.rec is None and a.gw is None and ka.reads == 0 and READY_CONDITION not in st["waiting_for"]
        assert st["overlay"]["reconcilers"] == "not started: no network yet" and "last_reconcile" not in st
        await query(sa, "network", {"action": "create", "name": "blue", "subnets": ["10.9.0.0/24"]})
        assert a.rec is not None  # at once: the create's table change made it

        async def passed() -> bool:
            st = await query(sa, "status")
            return "reconcilers" not in st["overlay"] and bool(st.get("last_reconcile", {}).get("at"))

        await wait_until(passed, "a's first reconcile pass")
        nursery.cancel_scope.cancel()


async def test_peer_network_starts_the_reconcilers(sockdir: str) -> None:
    async with trio.open_nursery() as nursery:
        a, _ka, sa, addr = await _start(nursery, sockdir, "a", held=False)
        b, _kb, sb, _ = await _start(nursery, sockdir, "b", held=False, join=(addr,), ip="127.0.0.2")
        await wait_until(lambda: _ready(sb), "b ready (joined a)")
        assert b.rec is None
        await query(sa, "network", {"action": "create", "name": "blue", "subnets": ["10.9.0.0/24"]})

        async def b_started() -> bool:
            return b.rec is not None and b.rec.counters.reconciles > 0

        await wait_until(b_started, "b's reconciler after learning blue")
        assert a.rec is not None
        nursery.cancel_scope.cancel()


async def test_dataplane_inspect_and_endpoints_start_them(sockdir: str) -> None:
    async with trio.open_nursery() as nursery:
        a, ka, sa, _ = await _start(nursery, sockdir, "a", held=False)
        await wait_until(lambda: _ready(sa), "a ready")
        report = await query(sa, "dataplane")
        assert a.rec is not None and ka.reads >= 1 and report["networks"] == []
        nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        a, ka, sa, _ = await _start(nursery, sockdir, "c", held=False)
        await query(sa, "network", {"action": "create", "name": "blue", "subnets": ["10.9.0.0/24"]})
        ep = await query(sa, "endpoint", {"action": "create", "network": "blue", "netns": netns_file(sockdir, "x")})
        assert a.rec is not None and ep["host_ifname"]
        nursery.cancel_scope.cancel()


async def test_leftovers_start_them_at_boot(sockdir: str) -> None:
    async with trio.open_nursery() as nursery:
        a, ka, sa, _ = await _start(nursery, sockdir, "a", held=True)
        assert a.rec is not None
        await wait_until(lambda: _ready(sa), "a ready")
        assert ka.reads >= 1 and "reconcilers" not in (await query(sa, "status"))["overlay"]
        nursery.cancel_scope.cancel()


def _nlmsg(kind: int, body: bytes) -> bytes:
    msg = struct.pack("=IHHII", 16 + len(body), kind, 0, 1, 0) + body
    return msg + b"\0" * (-len(msg) % 4)


def _table(name: str) -> bytes:
    value = name.encode() + b"\0"
    attr = struct.pack("=HH", 4 + len(value), leftovers.NFTA_TABLE_NAME) + value + b"\0" * (-len(value) % 4)
    return _nlmsg((leftovers.NFNL_SUBSYS_NFTABLES << 8) | leftovers.NFT_MSG_NEWTABLE,
                  struct.pack("=BBH", socket.AF_INET, 0, 0) + attr)


def test_names_and_defaults_are_the_dataplanes() -> None:
    from agent.overlay import extension

    assert leftovers.NFT_TABLE == TABLE
    assert ReconcilerConfig().startup_grace == extension.STARTUP_GRACE


def test_parse_tables() -> None:
    ours = leftovers.NFT_TABLE.encode()
    done = _nlmsg(leftovers.NLMSG_DONE, b"\0\0\0\0")
    assert leftovers._parse_tables(_table("filter") + _table(leftovers.NFT_TABLE) + done, ours) == (True, True)
    assert leftovers._parse_tables(_table("filter"), ours) == (False, False)  # more to read
    assert leftovers._parse_tables(_table("filter") + done, ours) == (False, True)
    assert leftovers._parse_tables(_table("overlay_agent2") + done, ours) == (False, True)
    no_nftables = _nlmsg(leftovers.NLMSG_ERROR, struct.pack("=i", -95) + b"\0" * 16)
    assert leftovers._parse_tables(no_nftables, ours) == (False, True)
    refused = _nlmsg(leftovers.NLMSG_ERROR, struct.pack("=i", -1) + b"\0" * 16)
    assert leftovers._parse_tables(refused, ours) == (None, True)
    assert leftovers._parse_tables(struct.pack("=IHHII", 8, 0, 0, 0, 0), ours) == (None, True)


async def test_ipsec_reconciler_starts_with_the_first_keys(sockdir: str, tmp_path: Path) -> None:
    from agent.overlay.ipsec import IpsecAgent
    from tests.unit.test_ipsec_agent import FakeXfrm

    xfrm = FakeXfrm()
    overlay = Overlay(kernel_factory=lambda prefix: FakeKernel(), plumber=FakePlumber(),  # type: ignore[arg-type]
                      leftovers=lambda prefix, nft: False, reconciler_config=ReconcilerConfig(startup_grace=2.0),
                      ipsec_probe=lambda: None)
    ipsec = IpsecAgent(overlay, key_dir=str(tmp_path / "keys"), applier_factory=lambda: xfrm,  # type: ignore[arg-type,return-value]
                       leftovers=lambda: False)
    opts = AgentOptions(node="a", bind=("127.0.0.1", 0), control_socket=f"{sockdir}/a.sock",
                        profile="local", underlay_mtu=1500)
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(service.run, opts, handle_signals=False, extensions=[overlay, ipsec]))
        await wait_until(lambda: _ready(opts.control_socket), "a ready")
        st: dict[str, Any] = await query(opts.control_socket, "status")
        assert ipsec._rec is None and st["ipsec"]["last_pass_at"] is None and not st["ipsec"]["epochs_held"]
        await query(opts.control_socket, "network",
                    {"action": "create", "name": "red", "subnets": ["10.8.0.0/24"], "encrypted": True})

        async def keyed() -> bool:
            return ipsec._rec is not None and bool(ipsec.keys) and ipsec._rec.counters.reconciles > 0

        await wait_until(keyed, "the IPsec reconciler with the first keys")
        nursery.cancel_scope.cancel()
