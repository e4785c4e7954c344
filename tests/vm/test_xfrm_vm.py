"""Real ESP on Debian's stock kernel: SAs and policies programmed with dataplane/xfrm/
from keys derived by crypto/ipsec.py, between 3 hosts in namespaces inside one VM.

One VM run (~25 s under TCG) executes tests/vm/guest_xfrm.py, which records each step
as a named check; every test below asserts one of them, so a failure names the step
and carries the guest's own explanation.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.vm.conftest import run_guest_module

pytestmark = [pytest.mark.vm, pytest.mark.slow]


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("xfrm-vm")
    res = run_guest_module("tests.vm.guest_xfrm", out)
    try:
        data: dict[str, Any] = json.loads((out / "results.json").read_text())
    except (OSError, ValueError):
        data = {"checks": {}, "info": {}}
    data["console"] = res.console
    data["status"] = res.status
    data["out"] = str(out)
    return data


def expect(guest: dict[str, Any], name: str) -> str:
    check = guest["checks"].get(name)
    if check is None:
        tail = "\n".join(guest["console"].splitlines()[-40:])
        pytest.fail(f"guest never reached check {name!r} (status {guest['status']}):\n{tail}")
    if check["ok"] is None:
        pytest.skip(check["detail"])
    assert check["ok"], f"{name}: {check['detail']} (artifacts in {guest['out']})"
    return str(check["detail"])


def test_kernel_has_esp_and_gcm(guest: dict[str, Any]) -> None:
    expect(guest, "kernel_support")


def test_overlay_works_in_clear_before_ipsec(guest: dict[str, Any]) -> None:
    expect(guest, "plain_ping_before_ipsec")


def test_programming_is_idempotent_after_read_back(guest: dict[str, Any]) -> None:
    expect(guest, "program_and_read_back")


def test_pings_pass_between_all_pairs(guest: dict[str, Any]) -> None:
    expect(guest, "encrypted_pings")


def test_full_size_packet_fits_encrypted_mtu(guest: dict[str, Any]) -> None:
    expect(guest, "full_size_ping_at_encrypted_mtu")


def test_underlay_carries_only_esp(guest: dict[str, Any]) -> None:
    expect(guest, "underlay_only_esp")


def test_ip_xfrm_shows_expected_sas_and_policies(guest: dict[str, Any]) -> None:
    expect(guest, "ip_xfrm")


def test_cleartext_vxlan_is_dropped_without_out_policy(guest: dict[str, Any]) -> None:
    expect(guest, "cleartext_vxlan_dropped")


def test_one_pass_restores_deleted_policy(guest: dict[str, Any]) -> None:
    expect(guest, "policy_restored")


def test_rotation_under_load_loses_nothing(guest: dict[str, Any]) -> None:
    expect(guest, "rotation_zero_loss")


def test_old_sas_removed_after_grace(guest: dict[str, Any]) -> None:
    expect(guest, "old_sas_removed_after_grace")


def test_ip_xfrm_after_rotation(guest: dict[str, Any]) -> None:
    expect(guest, "ip_xfrm_after_rotation")


def test_guest_exit_status(guest: dict[str, Any]) -> None:
    assert guest["status"] == 0, "\n".join(guest["console"].splitlines()[-40:])
