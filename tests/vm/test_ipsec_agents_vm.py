"""Real agents program real ESP: 3 ``python -m agent`` processes in namespaces inside one
VM (Debian's stock kernel), an encrypted network, a hand-deleted policy repaired,
rotation under load, leave.

One VM run executes tests/vm/guest_ipsec_agents.py, which records each step as a named
check; each test asserts one of them, so a failure names the step with the guest's
explanation (agent log tails are on the console).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.vm.conftest import run_guest_module

pytestmark = [
    pytest.mark.vm,
    pytest.mark.slow,
]


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("ipsec-agents-vm")
    res = run_guest_module("tests.vm.guest_ipsec_agents", out, timeout=600)
    try:
        data: dict[str, Any] = json.loads((out / "results.json").read_text())
    except (OSError, ValueError):
        data = {"checks": {}, "info": {}}
    data.update(console=res.console, status=res.status, out=str(out))
    return data


def expect(guest: dict[str, Any], name: str) -> None:
    check = guest["checks"].get(name)
    if check is None:
        failed = guest["checks"].get("scenario", {}).get("detail", "")
        tail = "\n".join(guest["console"].splitlines()[-40:])
        pytest.fail(f"guest never reached check {name!r} (status {guest['status']}): {failed}\n{tail}")
    assert check["ok"], f"{name}: {check['detail']} (artifacts in {guest['out']})"


def test_pings_pass_on_encrypted_network(guest: dict[str, Any]) -> None:
    expect(guest, "encrypted_pings")


def test_underlay_carries_only_esp(guest: dict[str, Any]) -> None:
    expect(guest, "underlay_only_esp")


def test_ip_xfrm_shows_sas_and_policies_toward_both_peers(guest: dict[str, Any]) -> None:
    expect(guest, "ip_xfrm")


def test_hand_deleted_out_policy_makes_receiver_drop_cleartext(guest: dict[str, Any]) -> None:
    expect(guest, "cleartext_vxlan_dropped")


def test_agent_restores_hand_deleted_policy(guest: dict[str, Any]) -> None:
    expect(guest, "policy_restored")


def test_rotation_under_load_loses_nothing(guest: dict[str, Any]) -> None:
    expect(guest, "rotation_zero_loss")


def test_host_that_stops_sharing_has_no_sas(guest: dict[str, Any]) -> None:
    expect(guest, "no_sas_toward_non_sharing_host")


def test_leave_removes_sas_and_policies(guest: dict[str, Any]) -> None:
    expect(guest, "leave_removes_sas")


def test_guest_exit_status(guest: dict[str, Any]) -> None:
    assert guest["status"] == 0, "\n".join(guest["console"].splitlines()[-40:])
