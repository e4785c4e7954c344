"""The underlay MTU the agent derives overlay MTUs from (read from the kernel)."""

from __future__ import annotations

from agent.overlay.underlay import underlay_mtu


def test_loopback_vtep_is_capped_to_the_largest_ip_datagram() -> None:
    # lo reports 65536; taken as is, every reconcile failed with "underlay MTU outside".
    mtu, source = underlay_mtu("127.0.0.1", None)
    assert mtu == 65535, source
    assert "lo" in source


def test_unknown_interface_and_address_say_why() -> None:
    assert underlay_mtu("127.0.0.1", "olabnx0") == (
        None, "underlay_interface olabnx0 does not exist")
    mtu, source = underlay_mtu("192.0.2.254", None)
    assert mtu is None and source == "no interface holds 192.0.2.254"
