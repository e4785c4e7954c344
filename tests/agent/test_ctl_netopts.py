"""``agentctl network create`` with network options: the request it sends, and bad
KEY=VALUE arguments refused as one line before anything is sent."""

from __future__ import annotations

import pytest

from agent.ctl.client import CtlError
from tests.agent.test_ctl_network import NET, FakeClient, run


def test_options_become_the_request_fields() -> None:
    client = FakeClient({"network": NET})
    code, out = run(["network", "create", "lab", "--subnet", "10.30.0.0/24", "--subnet", "10.31.0.0/24",
                     "--ip-range", "10.30.0.128/25", "--gateway", "10.30.0.254", "--aux-address", "p=10.30.0.5",
                     "--label", "team=infra", "-o", "com.example.x=a=b", "--internal", "--allow-overlap",
                     "--host-access"], client)
    assert code == 0 and out == f"{NET['ID']}\n"
    assert client.sent == [("network", {
        "action": "create", "name": "lab", "subnets": ["10.30.0.0/24", "10.31.0.0/24"],
        "ip_ranges": ["10.30.0.128/25"], "gateways": ["10.30.0.254"], "aux_addresses": {"p": "10.30.0.5"},
        "labels": {"team": "infra"}, "options": {"com.example.x": "a=b"}, "internal": True,
        "allow_overlap": True, "host_access": True})]


def test_a_plain_create_sends_no_option_fields() -> None:
    client = FakeClient({"network": NET})
    run(["network", "create", "blue", "--subnet", "10.9.0.0/24"], client)
    assert client.sent == [("network", {"action": "create", "name": "blue", "subnets": ["10.9.0.0/24"]})]


@pytest.mark.parametrize(("args", "message"), [
    (["--aux-address", "nope"], "--aux-address 'nope': expected KEY=VALUE"),
    (["--label", "=v"], "--label '=v': expected KEY=VALUE"),
    (["--opt", "a=1", "--opt", "a=2"], "--opt 'a' given twice"),
])
def test_bad_pairs_are_refused_before_sending(args: list[str], message: str) -> None:
    client = FakeClient({"network": NET})
    with pytest.raises(CtlError, match=message):
        run(["network", "create", "x", "--subnet", "10.9.0.0/24", *args], client)
    assert client.sent == []
