"""LinuxKernel deletes FDB rows that carry extra attributes (a port, VNI or device of
their own: ``dataplane.kernel.ATTRS_SUFFIX``) in a scratch network namespace.

Owns: such rows, which only an operator or another tool makes on our VXLAN devices,
going whole (by MAC) beside plain stray rows, and a run of them sent as one column
group (``netlink_batch.FDB_DEL_ANY``). Does not: the rest of the apply
(test_kernel_apply.py).
"""

from __future__ import annotations

from typing import Any

import pytest

from dataplane.compile import compile
from dataplane.kernel import LinuxKernel
from dataplane.model import EndpointSpec, NetworkSpec, OverlayView
from dataplane.netlink_batch import FDB_DEL, FDB_DEL_ANY
from dataplane.plan import plan
from dataplane.samples import docker_mac
from dataplane.scratch import Scratch
from tests.netns.kernelhost import ME, add_host

pytestmark = pytest.mark.netns

NET = NetworkSpec("blue", 100, subnets=("10.0.0.0/24",))
DEV = "ov-vx-100"


def view() -> OverlayView:
    rows = [EndpointSpec("blue", "b1", docker_mac("10.0.0.2"), "10.0.0.2", None, "me", ME, True, "ovh-b1")]
    for i in range(3):
        ip = f"10.0.0.{20 + i}"
        rows.append(EndpointSpec("blue", f"r{i}", docker_mac(ip), ip, None, "h2", "198.51.100.2", version=1))
    return OverlayView((NET,), tuple(rows), ME, owner_alive={"h2": True})


def strays(s: Scratch, ns: str, first: int, count: int, *, attrs: bool) -> None:
    """``count`` permanent FDB rows on our device that no endpoint wants, with a port of
    their own (an extra attribute) or plain."""
    extra = " port 4790" if attrs else ""
    s.batch(ns, [f"fdb append 02:aa:00:00:{(first + k) >> 8:02x}:{(first + k) & 255:02x} dev {DEV} "
                 f"dst 198.51.100.9{extra} self permanent" for k in range(count)], tool="bridge")


def test_rows_with_extra_attributes_are_deleted_in_column_runs(kernel_scratch: Scratch) -> None:
    s = kernel_scratch
    ns = add_host(s, "host", ME, ports=("b1",))
    desired = compile(view())
    kernel = LinuxKernel(ns)
    try:
        assert kernel.apply(plan(desired, kernel.read(desired))).ok
        sent: list[tuple[Any, ...]] = []
        assert kernel._batch is not None
        real = kernel._batch.run_groups

        def spy(groups: Any) -> Any:
            sent.extend(groups)
            return real(groups)

        kernel._batch.run_groups = spy  # type: ignore[method-assign]
        # Mixed: plain strays and strays with a port, in whatever order the kernel dumps them.
        strays(s, ns, 0, 12, attrs=True)
        strays(s, ns, 100, 12, attrs=False)
        actual = kernel.read(desired)
        assert sum(dst.endswith("%attrs") for (dev, _), dst in actual.fdb.items() if dev == DEV) == 12
        result = kernel.apply(plan(desired, actual))
        assert result.ok, result.errors
        assert kernel.read(desired).fdb == desired.fdb
        whole = [g for g in sent if g[0] == FDB_DEL_ANY]
        assert sum(len(g[2]) for g in whole) == 12
        assert sum(len(g[2]) for g in sent if g[0] == FDB_DEL) == 12
        # Only rows with attributes: one run, one group (it was a group per row).
        sent.clear()
        strays(s, ns, 200, 20, attrs=True)
        result = kernel.apply(plan(desired, kernel.read(desired)))
        assert result.ok, result.errors
        assert kernel.read(desired).fdb == desired.fdb
        assert [(g[0], len(g[2])) for g in sent] == [(FDB_DEL_ANY, 20)]
        assert plan(desired, kernel.read(desired)) == []
    finally:
        kernel.close()
