"""``agent.overlay.leftovers`` against the kernel: a scratch namespace with nothing, then
with a device of ours, our nft table and an XFRM policy (each only where the tool and the
kernel support it). The namespace is deleted after the test."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from agent.lab.netns import entered, netns_path
from agent.overlay import leftovers
from tests.netns.conftest import lab_skip_reason


@pytest.fixture
def scratch() -> Iterator[str]:
    reason = lab_skip_reason()
    if reason:
        pytest.skip(reason)
    name = f"olab-leftovers-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def _ip(ns: str, *args: str) -> bool:
    return subprocess.run(["ip", "-n", ns, *args], capture_output=True, check=False).returncode == 0


def _ask(ns: str) -> tuple[bool, bool | None, bool, bool]:
    with entered(netns_path(ns)):
        return (leftovers.links_with_prefix("ov-"), leftovers.nft_table_exists(), leftovers.xfrm_objects(),
                leftovers.kernel_leftovers("ov-", nft=True))


def test_leftovers_in_a_scratch_namespace(scratch: str) -> None:
    assert _ask(scratch) == (False, False, False, False)

    assert _ip(scratch, "link", "add", "ov-lt0", "type", "veth", "peer", "name", "lt0p")
    assert _ask(scratch)[0] and _ask(scratch)[3]
    assert _ip(scratch, "link", "del", "ov-lt0")
    assert _ask(scratch) == (False, False, False, False)

    if shutil.which("nft") is not None:
        added = subprocess.run(["ip", "netns", "exec", scratch, "nft", "add", "table", "ip6", leftovers.NFT_TABLE],
                               capture_output=True, check=False)
        if added.returncode == 0:
            links, nft, _, any_left = _ask(scratch)
            assert not links and nft is True and any_left
            with entered(netns_path(scratch)):
                assert not leftovers.kernel_leftovers("ov-", nft=False)  # no gateway: not asked
            subprocess.run(["ip", "netns", "exec", scratch, "nft", "delete", "table", "ip6", leftovers.NFT_TABLE],
                           capture_output=True, check=True)

    # A policy needs no cipher in the kernel (states may: an AEAD can be missing).
    if _ip(scratch, "xfrm", "policy", "add", "src", "192.0.2.1/32", "dst", "192.0.2.2/32", "dir", "out"):
        assert _ask(scratch)[2]
        assert _ip(scratch, "xfrm", "policy", "flush")
    assert _ask(scratch) == (False, False, False, False)
