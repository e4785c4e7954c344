"""Scratch "hosts" for the dataplane's real-kernel tests (LinuxKernel without an agent).

Owns: the namespace a kernel test programs (an underlay ``eth0`` with an address, and
the host-side veths that stand in for local endpoints), shared by test_kernel_apply,
test_kernel_apply_attrs and test_kernel_mirror (test_kernel_overlay and
test_kernel_rawreads use only the ``kernel_scratch`` fixture). That fixture (skip where
VXLAN cannot run, every namespace deleted after the test) is in conftest.py.
Does not build labs with agents (``agent.lab.netlab``, ``overlaylab``).
"""

from __future__ import annotations

from collections.abc import Sequence

from dataplane.scratch import Scratch

ME = "198.51.100.1"
"""The underlay address of a single-host kernel test."""


def add_host(s: Scratch, tag: str, addr: str = ME, ports: Sequence[str] = ()) -> str:
    """A namespace with ``eth0`` (``addr``/24, up: a veth, since the dummy module may be
    missing) and, per name in ``ports``, a veth ``ovh-<name>`` whose peer ``c-<name>``
    stands in for a container. Returns the namespace's name."""
    name = s.add(tag)
    lines = [
        "link add eth0 type veth peer name eth0p",
        "link set eth0p up",
        f"addr add {addr}/24 dev eth0",
        "link set eth0 up",
    ]
    lines += [f"link add ovh-{p} type veth peer name c-{p}" for p in ports]
    s.batch(name, lines)
    return name
