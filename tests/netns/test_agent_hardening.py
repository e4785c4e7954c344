"""Issue 18 items 7, 8 and 11 against real agents and the real kernel.

- a state dir that fills up (a 64 KiB tmpfs) or turns read-only: every create either
  is saved or fails with a clear error and leaves no veth; a restart keeps exactly what
  was reported created;
- a corrupt ``endpoints.json``: loud (error line, status warning naming the file), and
  no interface is deleted;
- a full bridge (the kernel's 1,023 ports, "Exchange full"): the create is refused with
  a message that says so, and nothing is left.
Mounts made here are unmounted whatever happens.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.ctl.client import CtlError
from agent.lab.netlab import Lab
from tests.netns.overlaylab import OverlayLab, wait_for

pytestmark = pytest.mark.netns

LabFactory = Callable[..., Lab]


def host_veths(ol: OverlayLab, i: int) -> set[str]:
    r = ol.lab.run(ol.nodes[i].host, ["ip", "-j", "link", "show", "type", "veth"], check=True)
    return {lk["ifname"] for lk in json.loads(r.stdout) if lk["ifname"].startswith("ov-")}


@contextlib.contextmanager
def tmpfs(path: str, size: str) -> Iterator[str]:
    Path(path).mkdir(mode=0o700, parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", path], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", path], check=False)


def create(ol: OverlayLab, i: int, network: str, netns: str, ifname: str) -> dict[str, object] | str:
    """The endpoint, or the one-line error."""
    try:
        result: dict[str, object] = ol.request(i, "endpoint", {"action": "create", "network": network,
                                                               "netns": netns, "ifname": ifname})
        return result
    except CtlError as exc:
        return str(exc)


def test_a_full_or_read_only_state_dir_fails_creates_and_a_restart_keeps_the_rest(
    lab_factory: LabFactory,
) -> None:
    lab = lab_factory(1)
    ol = OverlayLab(lab)
    with tmpfs(ol.nodes[0].state_dir, "64k") as state:
        ol.start(0)
        ol.create_network(0, "blue", "--subnet", "10.30.0.0/16")
        c = ol.container()
        made: dict[str, dict[str, object]] = {}
        errors: list[str] = []
        for n in range(200):
            got = create(ol, 0, "blue", c, f"e{n}")
            if isinstance(got, str):
                errors.append(got)
                if len(errors) >= 5:
                    break
            else:
                made[str(got["id"])] = got
        assert made and errors, (len(made), errors)
        for e in errors:
            assert "\n" not in e and "nothing was changed" in e, e
            assert "is full" in e or "No space left on device" in e, e
        # No veth beyond the saved endpoints; the tables agree.
        assert host_veths(ol, 0) == {str(e["host_ifname"]) for e in made.values()}
        assert {e["id"] for e in ol.endpoints(0)} == set(made)

        # Read-only (a read-only bind mount over it: the agent holds its lock file open
        # for writing, so the tmpfs itself cannot be remounted): refused, nothing changes.
        subprocess.run(["mount", "--bind", state, state], check=True)
        try:
            subprocess.run(["mount", "-o", "remount,bind,ro", state], check=True)
            got = create(ol, 0, "blue", c, "ro0")
            assert isinstance(got, str) and "read-only" in got and "nothing was changed" in got, got
            assert host_veths(ol, 0) == {str(e["host_ifname"]) for e in made.values()}
        finally:
            subprocess.run(["umount", state], check=True)

        # A restart brings back exactly what was reported created, interfaces untouched.
        ol.stop(0)
        ol.start(0)
        assert {e["id"] for e in ol.endpoints(0)} == set(made)
        assert host_veths(ol, 0) == {str(e["host_ifname"]) for e in made.values()}
        ol.stop(0)


def test_a_corrupt_endpoints_record_is_loud_and_deletes_nothing(lab_factory: LabFactory) -> None:
    lab = lab_factory(1)
    ol = OverlayLab(lab)
    ol.start(0)
    ol.create_network(0, "blue", "--subnet", "10.31.0.0/24")
    containers = [ol.container() for _ in range(3)]
    eps = [ol.create_endpoint(0, "blue", c) for c in containers]
    before = host_veths(ol, 0)
    assert before == {e["host_ifname"] for e in eps}
    ol.stop(0)
    record = Path(ol.nodes[0].state_dir) / "endpoints.json"
    record.write_text(record.read_text()[:200])  # a torn hand edit
    ol.start(0)
    st = ol.request(0, "status")
    warnings = "\n".join(st["warnings"])
    assert f"state file {record} was unreadable" in warnings, warnings
    assert "3 endpoint interface(s)" in warnings and all(name in warnings for name in before)
    assert "level=error event=state-record-corrupt" in ol.log(0)
    # The interfaces and the containers' ends are still there, through another restart.
    assert host_veths(ol, 0) == before
    ol.stop(0)
    ol.start(0)
    assert host_veths(ol, 0) == before
    for c in containers:
        assert ol.in_container(c, ["ip", "link", "show", "eth0"]).returncode == 0
    ol.stop(0)


def test_a_full_bridge_refuses_the_endpoint_and_says_so(lab_factory: LabFactory) -> None:
    lab = lab_factory(1)
    ol = OverlayLab(lab)
    ol.start(0)
    net = ol.create_network(0, "blue", "--subnet", "10.32.0.0/16")
    vni = int(net["Options"]["com.docker.network.driver.overlay.vxlanid_list"])
    bridge = f"ov-br-{vni}"
    first = ol.create_endpoint(0, "blue", ol.container())
    wait_for(lambda: bridge in json.dumps(ol.request(0, "dataplane")), "the bridge")
    # Fill the bridge the way an operator's own ports would: VXLAN device + 1 endpoint + 1,021.
    lines = [f"link add hx{n} type veth peer name hy{n}" for n in range(1021)]
    lines += [f"link set hx{n} master {bridge}" for n in range(1021)]
    lab.batch(ol.nodes[0].host, lines)
    c = ol.container()
    got = create(ol, 0, "blue", c, "eth0")
    assert isinstance(got, str), got
    assert f"the bridge {bridge} has no free port (Exchange full)" in got and "1023 ports" in got, got
    assert host_veths(ol, 0) == {first["host_ifname"]}
    assert [e["id"] for e in ol.endpoints(0)] == [first["id"]]
    assert ol.in_container(c, ["ip", "link", "show", "eth0"]).returncode != 0
    # A freed port is used again.
    lab.batch(ol.nodes[0].host, ["link del hx0"])
    got = create(ol, 0, "blue", c, "eth0")
    assert isinstance(got, dict), got
    ol.stop(0)
