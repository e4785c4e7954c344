"""agent.dns.manager: responders follow the gateways, the index follows the table changes.

Real replicated tables (``gossip.tables.replica.Tables``) behind a stand-in for the
overlay (its ``tables``, ``change_listeners`` and the ``interfaces`` of local endpoints
(their namespaces), which is all the manager uses); the
network's subnet is inside 127.0.0.0/8, so its gateway address is local on loopback and
the responder can be asked for real (port 0: one picked per socket).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import dns.message
import dns.rcode
import pytest
import trio
import trio.socket as tsocket

from agent.dns.manager import DnsManager
from gossip.tables.replica import Tables

DEADLINE = 10.0
CLIENT = "127.77.0.9"


@dataclass
class FakeOverlay:
    tables: Tables
    change_listeners: list[Any] = field(default_factory=list)
    interfaces: dict[str, dict[str, Any]] = field(default_factory=dict)

    def changed(self, now: float) -> None:
        for listener in self.change_listeners:
            listener()


@dataclass
class FakeRuntime:
    status_sections: list[Any] = field(default_factory=list)
    warning_sources: list[Any] = field(default_factory=list)
    metric_sources: list[Any] = field(default_factory=list)


@dataclass
class Lab:
    """Tables on host h0 behind a ``FakeOverlay``, and a manager of that overlay whose
    upstreams come from an empty resolv.conf (nothing is forwarded anywhere)."""

    tables: Tables
    overlay: FakeOverlay
    mgr: DnsManager


def _lab(tmp_path: Path, *, port: int = 0, seed: int = 1) -> Lab:
    tables = Tables(node="h0", vtep="192.0.2.1", rng=random.Random(seed))
    overlay = FakeOverlay(tables)
    tables.subscribe(overlay.changed)
    conf = tmp_path / "resolv.conf"
    conf.write_text("")
    return Lab(tables, overlay, DnsManager(cast(Any, overlay), port=port, resolv_conf=str(conf)))


@pytest.fixture
def lab(tmp_path: Path) -> Lab:
    """``_lab`` with a port picked per socket (0)."""
    return _lab(tmp_path)


async def until(cond: Any) -> None:
    with trio.fail_after(DEADLINE):
        while True:
            if cond():
                return
            await trio.sleep(0.01)


async def ask(port: int, name: str, client: str = CLIENT, server: str = "127.77.0.1") -> dns.message.Message | None:
    """The responder's answer from a client inside the network, None when none comes."""
    with tsocket.socket(tsocket.AF_INET, tsocket.SOCK_DGRAM) as s:
        await s.bind((client, 0))
        await s.connect((server, port))
        q = dns.message.make_query(name, "A")
        try:
            await s.send(q.to_wire())
        except ConnectionRefusedError:
            return None
        with trio.move_on_after(3.0):  # generous: the machine may be loaded
            try:
                return dns.message.from_wire(await s.recv(65535))
            except ConnectionRefusedError:  # ICMP port unreachable: nothing listens
                return None
        return None


async def test_responder_starts_with_the_first_local_endpoint_and_stops_with_the_last(lab: Lab) -> None:
    tables, mgr = lab.tables, lab.mgr
    rt = FakeRuntime()
    async with trio.open_nursery() as nursery:
        await nursery.start(mgr.run, cast(Any, rt))
        net, _ = tables.create_network(1.0, "blue", ["127.77.0.0/16"])
        await trio.sleep(0.05)
        assert mgr.running == {}  # a network without a local endpoint has no gateway here
        web, _ = tables.create_endpoint(2.0, "blue", "web")
        await until(lambda: net.id in mgr.serving)
        responder = mgr.serving[net.id]
        assert responder.addresses == ("127.77.0.1",)
        port = next(p for kind, _, p in responder.bound if kind == "udp")
        r = await ask(port, "web.blue")
        assert r is not None and [rd.to_text() for rrs in r.answer for rd in rrs] == [web.ipv4]
        # a second endpoint: the index follows, the responder stays the same one
        db, _ = tables.create_endpoint(3.0, "blue", "db")
        await until(lambda: mgr.index.get(net.id) is not None and "db" in mgr.index.get(net.id).v4)  # type: ignore[union-attr]
        r = await ask(port, "db")
        assert r is not None and [rd.to_text() for rrs in r.answer for rd in rrs] == [db.ipv4]
        assert mgr.serving[net.id] is responder
        tables.remove_endpoint(4.0, "db")
        await until(lambda: "db" not in mgr.index.get(net.id).v4)  # type: ignore[union-attr]
        r = await ask(port, "db")
        assert r is not None and r.rcode() == dns.rcode.NXDOMAIN
        status = rt.status_sections[0]()["dns"]
        assert status["responders"] == {"blue": ["127.77.0.1"]} and status["nxdomain"] == 1
        assert rt.warning_sources[0]() == []
        tables.remove_endpoint(5.0, "web")  # the last local endpoint: the gateway goes, so does the responder
        await until(lambda: net.id not in mgr.running and not mgr.serving)
        assert await ask(port, "web") is None
        nursery.cancel_scope.cancel()


def _addresses(r: dns.message.Message | None) -> list[str]:
    assert r is not None
    return [rd.to_text() for rrs in r.answer for rd in rrs]


async def test_a_container_on_two_networks_gets_the_names_of_both_from_either(lab: Lab) -> None:
    """A container whose endpoints on blue and green share a namespace asks blue's
    responder: green's names (``NAME``, ``NAME.green``) are answered too, blue's first;
    a container only on blue gets NXDOMAIN for them; a namespace recorded after the
    row (no table change) is seen within a second."""
    tables, overlay, mgr = lab.tables, lab.overlay, lab.mgr
    async with trio.open_nursery() as nursery:
        await nursery.start(mgr.run, cast(Any, FakeRuntime()))
        blue, _ = tables.create_network(1.0, "blue", ["127.77.0.0/16"])
        green, _ = tables.create_network(1.0, "green", ["127.79.0.0/16"])
        both_b, _ = tables.create_endpoint(2.0, "blue", "both-b", ipv4="127.77.0.20")
        both_g, _ = tables.create_endpoint(2.0, "green", "both-g", ipv4="127.79.0.20")
        only_b, _ = tables.create_endpoint(2.0, "blue", "only-b", ipv4="127.77.0.21")
        db, _ = tables.create_endpoint(2.0, "green", "db", ipv4="127.79.0.30")
        tables.create_endpoint(2.0, "blue", "shared", ipv4="127.77.0.40")
        tables.extras.set_aliases(2.5, db.id, ["shared"])  # the same name in green
        overlay.interfaces.update({both_b.id: {"netns": "/run/netns/c1"}, only_b.id: {"netns": "/run/netns/c2"},
                                   db.id: {"netns": "/run/netns/c3"}})
        await until(lambda: blue.id in mgr.serving and green.id in mgr.serving)
        port = next(p for kind, _, p in mgr.serving[blue.id].bound if kind == "udp")
        # c1's green endpoint is recorded after its row (as Docker's Join does): no table change
        await trio.sleep(0.05)
        assert _addresses(await ask(port, "db", client="127.77.0.20")) == []
        overlay.interfaces[both_g.id] = {"netns": "/run/netns/c1"}
        await until(lambda: mgr.homes().get((blue.id, "127.77.0.20")) == (green.id,))
        for name in ("db", "db.green", "DB.Green."):
            assert _addresses(await ask(port, name, client="127.77.0.20")) == ["127.79.0.30"], name
        assert _addresses(await ask(port, "shared", client="127.77.0.20")) == ["127.77.0.40"]  # blue's first
        assert _addresses(await ask(port, "shared.green", client="127.77.0.20")) == ["127.79.0.30"]
        r = await ask(port, "nobody.green", client="127.77.0.20")
        assert r is not None and r.rcode() == dns.rcode.NXDOMAIN
        # a container only on blue learns nothing of green: "db" is blue's NXDOMAIN, "db.green"
        # not a name of blue's, so forwarded (SERVFAIL: no upstream here)
        for name, rcode in (("db", dns.rcode.NXDOMAIN), ("db.green", dns.rcode.SERVFAIL)):
            r = await ask(port, name, client="127.77.0.21")
            assert r is not None and r.rcode() == rcode and not r.answer, name
        # and the other way round, through green's responder
        gport = next(p for kind, _, p in mgr.serving[green.id].bound if kind == "udp")
        assert _addresses(await ask(gport, "only-b", client="127.79.0.20", server="127.79.0.1")) == ["127.77.0.21"]
        nursery.cancel_scope.cancel()


async def test_a_port_that_cannot_be_bound_is_a_warning_and_retried(tmp_path: Path) -> None:
    taken = tsocket.socket(tsocket.AF_INET, tsocket.SOCK_DGRAM)
    await taken.bind(("127.78.0.1", 0))
    lab = _lab(tmp_path, port=taken.getsockname()[1], seed=2)
    tables, mgr = lab.tables, lab.mgr
    rt = FakeRuntime()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(mgr.run, cast(Any, rt))
            net, _ = tables.create_network(1.0, "red", ["127.78.0.0/16"])
            tables.create_endpoint(2.0, "red", "web")
            await until(lambda: net.id in mgr.problems)
            warnings = rt.warning_sources[0]()
            assert len(warnings) == 1 and "red" in warnings[0] and "127.78.0.1" in warnings[0], warnings
            taken.close()  # the port comes free: the retry binds it
            await until(lambda: net.id in mgr.serving)
            assert rt.warning_sources[0]() == []
            nursery.cancel_scope.cancel()
    finally:
        taken.close()


def _config(flags: list[str], env: dict[str, str], text: str | None, tmp_path: Path) -> bool:
    from agent import cli
    from agent import configload as cfg

    path = None
    if text is not None:
        path = tmp_path / "agent.toml"
        path.write_text(text)
    ns = cli.build_parser().parse_args(["--node", "h0", "--bind", "127.0.0.1", *flags])
    values = {name: getattr(ns, name) for name in cfg.KEYS}
    loaded = cfg.load(values, config_file=str(path) if path else None, environ=env)
    return loaded.config.dns


def test_the_dns_key_is_on_by_default_and_turned_off_by_file_env_or_flag(tmp_path: Path) -> None:
    from agent.config import ConfigError

    assert _config([], {}, None, tmp_path) is True
    assert _config([], {}, "dns = false\n", tmp_path) is False
    assert _config([], {"OVERLAY_AGENT_DNS": "false"}, None, tmp_path) is False
    assert _config(["--no-dns"], {}, None, tmp_path) is False
    assert _config(["--dns"], {"OVERLAY_AGENT_DNS": "false"}, "dns = false\n", tmp_path) is True  # flag wins
    with pytest.raises(ConfigError, match="dns") as err:
        _config([], {}, 'dns = "maybe"\n', tmp_path)
    assert "\n" not in str(err.value)
