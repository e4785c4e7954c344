"""``agentctl network | endpoint | dataplane``: parsing, requests sent, and output formats."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from agent.ctl import main as ctl
from agent.ctl import network as ctlnet
from agent.ctl.client import CtlError

NET = {"ID": "3b405f72df38" + "0" * 52, "Name": "blue", "Driver": "overlay", "Scope": "global",
       "VNI": 4242, "Subnets": ["10.9.0.0/24", "fd00:9::/64"], "MTU": None, "Encrypted": False,
       "Created": "2026-11-25T10:00:00.000000Z"}
EP = {"id": "1a2b3c4d5e6f" + "1" * 52, "name": "web", "network": NET["ID"], "network_name": "blue",
      "node": "h1", "vtep": "192.0.2.1", "local": True, "mac": "02:42:0a:09:00:05", "ipv4": "10.9.0.5",
      "ipv6": None, "ipv4_cidr": "10.9.0.5/24", "ipv6_cidr": None, "conflict": False}


class FakeClient:
    def __init__(self, replies: dict[str, Any]) -> None:
        self.replies = replies
        self.sent: list[tuple[str, dict[str, Any] | None]] = []

    def request(self, op: str, args: dict[str, Any] | None = None) -> Any:
        self.sent.append((op, args))
        reply = self.replies[op]
        if isinstance(reply, Exception):
            raise reply
        return reply


def run(argv: list[str], client: FakeClient) -> tuple[int, str]:
    ns = ctl.build_parser().parse_args(argv)
    out = io.StringIO()
    code: int = ns.run(client, ns, out)
    return code, out.getvalue()


def test_network_create_sends_every_option_and_prints_the_id() -> None:
    client = FakeClient({"network": NET})
    code, out = run(["network", "create", "blue", "--subnet", "10.9.0.0/24", "--subnet", "fd00:9::/64",
                     "--vni", "4242", "--encrypted", "--mtu", "1400"], client)
    assert (code, out) == (0, NET["ID"] + "\n")
    assert client.sent == [("network", {"action": "create", "name": "blue", "subnets": ["10.9.0.0/24", "fd00:9::/64"],
                                        "vni": 4242, "mtu": 1400, "encrypted": True})]


def test_network_ls_table_and_json() -> None:
    _, out = run(["network", "ls"], FakeClient({"network": [NET]}))
    assert out.splitlines() == [
        "ID             NAME   DRIVER    SCOPE    VNI    SUBNET",
        "3b405f72df38   blue   overlay   global   4242   10.9.0.0/24,fd00:9::/64",
    ]
    _, out = run(["network", "ls", "--format", "json"], FakeClient({"network": [NET]}))
    assert json.loads(out) == [NET]


def test_endpoint_ls_marks_local_rows_and_conflicts() -> None:
    remote = {**EP, "id": "9" * 64, "name": "db", "node": "h2", "vtep": "192.0.2.2", "local": False,
              "conflict": True, "ipv4_cidr": None, "ipv4": "10.9.0.6"}
    _, out = run(["endpoint", "ls"], FakeClient({"endpoint": [EP, remote]}))
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "NAME", "NETWORK", "NODE", "VTEP", "MAC", "IPV4", "IPV6"]
    assert lines[1].split() == ["1a2b3c4d5e6f", "web", "blue", "h1", "*", "192.0.2.1", "02:42:0a:09:00:05",
                                "10.9.0.5/24", "-"]
    assert "db (conflict)" in lines[2] and "10.9.0.6" in lines[2]


def test_endpoint_create_request_and_json_output() -> None:
    client = FakeClient({"endpoint": EP})
    code, out = run(["endpoint", "create", "blue", "--netns", "c1", "--ip", "10.9.0.5", "--mac",
                     "02:42:0a:09:00:05", "--name", "web"], client)
    assert code == 0 and json.loads(out) == EP
    assert client.sent == [("endpoint", {"action": "create", "network": "blue", "netns": "c1", "ifname": "eth0",
                                         "ip": "10.9.0.5", "mac": "02:42:0a:09:00:05", "name": "web"})]


def test_endpoint_create_sends_repeated_aliases_as_a_list() -> None:
    client = FakeClient({"endpoint": EP})
    code, _ = run(["endpoint", "create", "blue", "--netns", "c1", "--alias", "db", "--alias", "primary"], client)
    assert code == 0
    assert client.sent[0][1]["aliases"] == ["db", "primary"]
    run(["endpoint", "create", "blue", "--netns", "c1"], client)
    assert "aliases" not in client.sent[1][1]


def test_rm_reports_each_failure_and_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    class Partial(FakeClient):
        def request(self, op: str, args: dict[str, Any] | None = None) -> Any:
            assert args is not None
            if args["ref"] == "bad":
                raise CtlError("agent: no such network: bad")
            return NET

    code, out = run(["network", "rm", "blue", "bad"], Partial({}))
    assert code == 1 and out == "blue\n"
    assert capsys.readouterr().err == "agentctl: agent: no such network: bad\n"


def test_dataplane_text_shows_network_names() -> None:
    report = {
        "networks": [{"network": NET["ID"], "network_name": "blue", "vni": 4242, "vxlan": "ov-vx-4242",
                      "bridge": "ov-br-4242", "mtu": {"desired": 1450, "kernel": 1450},
                      "desired": {"fdb": 2, "flood": 1, "neigh": 2}, "kernel": {"fdb": 2, "flood": 1, "neigh": 2},
                      "missing": {"fdb": 0, "flood": 0, "neigh": 0}, "extra": {"fdb": 0, "flood": 0, "neigh": 0},
                      "ports": {"desired": ["ov-1a2b3c4d5e6f"], "kernel": ["ov-1a2b3c4d5e6f"]},
                      "devices_ok": True, "in_sync": True}],
        "last_reconcile": {"at": 1.0, "duration_ms": 1.5, "trigger": "tables", "ops": 3, "ok": True, "errors": []},
        "problems": [],
    }
    _, out = run(["dataplane"], FakeClient({"dataplane": report}))
    assert out.splitlines()[1].split() == ["blue", "4242", "ov-vx-4242", "1450", "2/2", "1/1", "2/2", "1/1",
                                           "in", "sync"]
    _, out = run(["dataplane", "--format", "json"], FakeClient({"dataplane": report}))
    assert json.loads(out) == report


@pytest.mark.parametrize("argv", [
    ["network", "create", "blue"],                      # --subnet is required
    ["network", "create", "blue", "--subnet", "10.0.0.0/24", "--vni", "x"],
    ["endpoint", "create", "blue"],                     # --netns is required
    ["network", "inspect"],
])
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        ctl.build_parser().parse_args(argv)
    assert exc.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_status_text_has_the_overlay_lines() -> None:
    st = {"node": "h1", "address": "192.0.2.1", "port": 7946, "members": {}, "ready": True,
          "overlay": {"vtep": "192.0.2.1", "underlay_mtu": 1500, "underlay_mtu_source": "interface eth0",
                      "networks": 2, "networks_joined": 1, "endpoints_local": 1, "endpoints_remote": 3,
                      "dataplane": True},
          "last_reconcile": {"at": 1.0, "duration_ms": 2.5, "ops": 4, "trigger": "tables", "ok": False,
                             "errors": ["FdbSet: No such device"]}}
    text = ctl.format_status(st)
    assert "Endpoints:   1 local, 3 remote" in text
    assert "2.5 ms, 4 ops, trigger tables, 1 error(s): FdbSet: No such device" in text
    assert ctlnet.format_networks([]) == "ID   NAME   DRIVER   SCOPE   VNI   SUBNET\n"
