"""The CNI contract as values (``agent.runtimes.cni.spec``): no agent, no root, no kernel.

Every bad input is a ``CniError`` with the spec's code and one line; results are shaped
per CNI version (0.4.0 IPs carry ``version``, 1.1.0 interfaces ``mtu``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.runtimes.cni import spec
from agent.runtimes.cni.spec import CniError

ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "a" * 64, "CNI_NETNS": "/run/netns/x", "CNI_IFNAME": "eth0"}


def conf(**extra: Any) -> bytes:
    return json.dumps({"cniVersion": "1.1.0", "name": "blue", "type": "overlay-cni", **extra}).encode()


def err(env: dict[str, str], data: bytes) -> CniError:
    with pytest.raises(CniError) as info:
        spec.parse(env, data)
    assert "\n" not in info.value.msg and info.value.msg
    return info.value


def test_add_invocation() -> None:
    inv = spec.parse({**ENV, "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=web;IP=10.0.0.5"},
                     conf(network="green", socket="/run/a.sock"))
    assert (inv.command, inv.version, inv.network, inv.socket) == ("ADD", "1.1.0", "green", "/run/a.sock")
    assert (inv.container, inv.netns, inv.ifname, inv.name, inv.ipv4, inv.ipv6) == (
        "a" * 64, "/run/netns/x", "eth0", "web", "10.0.0.5", None)
    assert spec.parse(ENV, conf()).network == "blue"  # the conflist's name by default


def test_fixed_addresses_and_mac_sources() -> None:
    inv = spec.parse(ENV, conf(runtimeConfig={"ips": ["10.0.0.7/24", "fd00::7/64"], "mac": "02:00:00:00:00:07"}))
    assert (inv.ipv4, inv.ipv6, inv.mac) == ("10.0.0.7", "fd00::7", "02:00:00:00:00:07")
    inv = spec.parse(ENV, conf(args={"cni": {"ips": ["10.0.0.8"]}}))
    assert inv.ipv4 == "10.0.0.8"


def test_del_without_netns_and_gc_and_status() -> None:
    inv = spec.parse({**ENV, "CNI_COMMAND": "DEL", "CNI_NETNS": ""}, conf())
    assert inv.netns == "" and inv.container == "a" * 64
    gc = spec.parse({"CNI_COMMAND": "GC"}, conf(**{"cni.dev/valid-attachments": [
        {"containerID": "c1", "ifname": "eth0"}]}))
    assert gc.valid == (spec.Attachment("c1", "eth0"),)
    assert spec.parse({"CNI_COMMAND": "STATUS"}, conf()).command == "STATUS"


def test_version() -> None:
    inv = spec.parse({"CNI_COMMAND": "VERSION"}, b'{"cniVersion": "0.4.0"}')
    assert spec.version_reply(inv.version) == {"cniVersion": "0.4.0", "supportedVersions": list(
        spec.SUPPORTED_VERSIONS)}
    assert spec.parse({"CNI_COMMAND": "VERSION"}, b"").version == "0.1.0"


@pytest.mark.parametrize(("env", "data", "code", "text"), [
    ({}, conf(), spec.INVALID_ENV, "CNI_COMMAND"),
    ({**ENV, "CNI_COMMAND": "FROB"}, conf(), spec.INVALID_ENV, "CNI_COMMAND"),
    ({**ENV, "CNI_CONTAINERID": ""}, conf(), spec.INVALID_ENV, "CNI_CONTAINERID"),
    ({**ENV, "CNI_CONTAINERID": "-x"}, conf(), spec.INVALID_ENV, "CNI_CONTAINERID"),
    ({**ENV, "CNI_IFNAME": "a/b"}, conf(), spec.INVALID_ENV, "CNI_IFNAME"),
    ({**ENV, "CNI_IFNAME": "x" * 16}, conf(), spec.INVALID_ENV, "CNI_IFNAME"),
    ({**ENV, "CNI_NETNS": ""}, conf(), spec.INVALID_ENV, "CNI_NETNS"),
    ({**ENV, "CNI_NETNS": "relative"}, conf(), spec.INVALID_ENV, "CNI_NETNS"),
    ({**ENV, "CNI_ARGS": "novalue"}, conf(), spec.INVALID_ENV, "CNI_ARGS"),
    (ENV, b"{nope", spec.DECODE_FAILURE, "not valid JSON"),
    (ENV, b"\xff\xfe", spec.DECODE_FAILURE, "not valid JSON"),
    (ENV, b"[]", spec.DECODE_FAILURE, "JSON object"),
    (ENV, b" " * (spec.MAX_CONFIG + 1), spec.IO_FAILURE, "larger"),
    (ENV, json.dumps({"name": "x"}).encode(), spec.INVALID_CONFIG, "cniVersion"),
    (ENV, conf(cniVersion="0.2.0"), spec.INCOMPATIBLE_VERSION, "0.2.0"),
    (ENV, conf(type="bridge"), spec.INVALID_CONFIG, "bridge"),
    (ENV, conf(name=None), spec.INVALID_CONFIG, "names no network"),
    (ENV, conf(socket="relative.sock"), spec.INVALID_CONFIG, "absolute"),
    (ENV, conf(prevResult=[]), spec.INVALID_CONFIG, "prevResult"),
    (ENV, conf(runtimeConfig={"ips": ["nonsense"]}), spec.INVALID_CONFIG, "not an IP"),
    (ENV, conf(runtimeConfig={"ips": ["10.0.0.1", "10.0.0.2"]}), spec.INVALID_CONFIG, "two IPv4"),
    ({"CNI_COMMAND": "GC"}, conf(**{"cni.dev/valid-attachments": [{"containerID": 1}]}), spec.INVALID_CONFIG,
     "valid-attachments"),
])
def test_bad_input_is_one_line_with_the_spec_code(env: dict[str, str], data: bytes, code: int, text: str) -> None:
    e = err(env, data)
    assert e.code == code and text in e.msg, (e.code, e.msg)


@given(st.binary(max_size=300), st.dictionaries(st.sampled_from([*sorted(ENV), "CNI_ARGS"]),
                                                st.text(max_size=40), max_size=5))
def test_any_input_parses_or_is_a_clean_error(data: bytes, env: dict[str, str]) -> None:
    try:
        spec.parse(env, data)
    except CniError as e:
        assert e.msg and "\n" not in e.msg


def test_results_per_version() -> None:
    ep = {"host_ifname": "ov-0123456789ab", "mac": "02:42:0a:00:00:05", "mtu": 1450,
          "ipv4_cidr": "10.0.0.5/24", "ipv6_cidr": "fd00::5/64"}
    new = spec.add_result(spec.parse(ENV, conf()), ep)
    assert new == {
        "cniVersion": "1.1.0",
        "interfaces": [{"name": "ov-0123456789ab", "mtu": 1450},
                       {"name": "eth0", "mac": "02:42:0a:00:00:05", "sandbox": "/run/netns/x", "mtu": 1450}],
        "ips": [{"address": "10.0.0.5/24", "interface": 1}, {"address": "fd00::5/64", "interface": 1}],
        "routes": [], "dns": {}}
    old = spec.add_result(spec.parse(ENV, conf(cniVersion="0.4.0")), ep)
    assert [ip["version"] for ip in old["ips"]] == ["4", "6"]
    assert "mtu" not in old["interfaces"][1]
    assert spec.expected_addresses(new) == {"10.0.0.5/24", "fd00::5/64"}


def test_result_dns_is_the_gateway_when_there_is_one() -> None:
    """The gateways are the nameservers (the agent's DNS responder listens there) and the
    network's name the search domain; without a gateway the result names no DNS server."""
    ep = {"host_ifname": "ov-0123456789ab", "mac": "02:42:0a:00:00:05", "network_name": "blue",
          "ipv4_cidr": "10.0.0.5/24", "ipv6_cidr": "fd00::5/64", "gateways": ["10.0.0.1", "fd00::1"]}
    res = spec.add_result(spec.parse(ENV, conf()), ep)
    assert res["dns"] == {"nameservers": ["10.0.0.1", "fd00::1"], "search": ["blue"]}
    assert res["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.0.0.1"}, {"dst": "::/0", "gw": "fd00::1"}]
    v4only = spec.add_result(spec.parse(ENV, conf()), {**ep, "gateways": ["10.0.0.1"]})
    assert v4only["dns"] == {"nameservers": ["10.0.0.1"], "search": ["blue"]}
    assert spec.add_result(spec.parse(ENV, conf()), {**ep, "gateways": []})["dns"] == {}


def test_endpoint_name_from_cni_args() -> None:
    """K8S_POD_NAME first (podman passes the container's name there), else NAME/name."""
    def name(args: str) -> str | None:
        return spec.parse({**ENV, "CNI_ARGS": args}, conf()).name

    assert name("IgnoreUnknown=1;K8S_POD_NAME=web;NAME=other") == "web"
    assert name("IgnoreUnknown=1;NAME=db") == "db"
    assert name("IgnoreUnknown=1;name=cache") == "cache"
    assert name("IgnoreUnknown=1;K8S_POD_NAME=;NAME=db") == "db"
    assert name("IgnoreUnknown=1") is None


def test_error_reply_has_no_details() -> None:
    reply = spec.error_reply("1.0.0", CniError(7, "bad\nthing"))
    assert reply == {"cniVersion": "1.0.0", "code": 7, "msg": "bad thing"}
    assert spec.error_reply("junk", CniError(1, "x"))["cniVersion"] == spec.SPEC_VERSION


def test_plugin_speaks_the_agents_control_protocol() -> None:
    """The plugin hard-codes the protocol version and default socket (start-up cost):
    they must stay those of ``agent.control.protocol`` and ``agent.ctl.client``."""
    from agent.control import protocol
    from agent.ctl import client
    from agent.runtimes.cni import plugin

    assert plugin.PROTOCOL_VERSION == protocol.VERSION
    assert (plugin.DEFAULT_SOCKET, plugin.SOCKET_ENV) == (client.DEFAULT_SOCKET, client.SOCKET_ENV)


def test_plugin_imports_stay_light() -> None:
    """No trio, typing, dataclasses or control client in the plugin's process."""
    import subprocess
    import sys

    code = ("import sys, agent.runtimes.cni.plugin; "
            "print(sorted(m for m in ('trio', 'typing', 'dataclasses', 'agent.ctl.client', 'gossip') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_ipam_ranges_become_one_entry_per_subnet() -> None:
    ipam = {"type": "ignored", "ranges": [
        [{"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.64", "rangeEnd": "10.1.0.127", "gateway": "10.1.0.254"}],
        [{"subnet": "fd00:1::/64"}],
        [{"subnet": "10.2.0.0/24", "rangeStart": "10.2.0.0", "rangeEnd": "10.2.0.255"}]]}
    inv = spec.parse(ENV, conf(ipam=ipam))
    assert inv.ranges == ({"subnet": "10.1.0.0/24", "ip_range": "10.1.0.64/26", "gateway": "10.1.0.254"},
                          {"subnet": "fd00:1::/64"}, {"subnet": "10.2.0.0/24"})
    assert spec.parse(ENV, conf()).ranges == ()
    assert spec.parse(ENV, conf(ipam={"type": "host-local"})).ranges == ()


@pytest.mark.parametrize("ipam, text", [
    ({"ranges": [[{"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.10", "rangeEnd": "10.1.0.20"}]]}, "one CIDR block"),
    ({"ranges": [[{"subnet": "10.1.0.0/24"}, {"subnet": "10.2.0.0/24"}]]}, "exactly one range"),
    ({"ranges": [[{"rangeStart": "10.1.0.1"}]]}, "without 'subnet'"),
    ({"ranges": [[{"subnet": "nope"}]]}, "is not a subnet"),
    ({"ranges": "x"}, "range sets"),
    ("x", "'ipam' must be an object"),
])
def test_bad_ipam_ranges_are_one_line_errors(ipam: Any, text: str) -> None:
    e = err(ENV, conf(ipam=ipam))
    assert e.code == spec.INVALID_CONFIG and text in e.msg, e.msg


def test_runtime_config_aliases_of_this_network() -> None:
    rc = {"aliases": {"blue": ["db", "primary"], "other": ["x"]}}
    assert spec.parse(ENV, conf(runtimeConfig=rc)).aliases == ("db", "primary")
    assert spec.parse(ENV, conf(runtimeConfig={"aliases": {"other": ["x"]}})).aliases == ()
    assert err(ENV, conf(runtimeConfig={"aliases": {"blue": "db"}})).code == spec.INVALID_CONFIG


def test_packaged_conflist_declares_every_capability_the_plugin_reads() -> None:
    """packaging/overlay-cni.conflist: the runtime hands a plugin ``runtimeConfig`` only for
    the capabilities its entry declares (libcni), so the shipped file must declare ips,
    mac and aliases (podman's ``--network-alias``); its entry, as podman 4.3 calls it
    (capability args injected, the network's name as the aliases key), parses."""
    path = Path(__file__).resolve().parents[2] / "packaging" / "overlay-cni.conflist"
    body = json.loads(path.read_text())
    entry = body["plugins"][0]
    assert entry["type"] == "overlay-cni"
    assert entry["capabilities"] == {"ips": True, "mac": True, "aliases": True}
    rc = {"ips": ["10.20.0.5/24"], "mac": "02:42:0a:14:00:05",
          "aliases": {body["name"]: ["db", "0123456789ab"]}}
    plugin_conf = {"cniVersion": body["cniVersion"], "name": body["name"], **entry, "runtimeConfig": rc}
    inv = spec.parse({**ENV, "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=web"}, json.dumps(plugin_conf).encode())
    assert inv.aliases == ("db", "0123456789ab") and inv.network == "blue"
    assert inv.mac == "02:42:0a:14:00:05" and inv.ipv4 == "10.20.0.5"
