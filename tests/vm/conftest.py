"""Fixtures for VM tests: skip with the reason (no root, no QEMU, image not prepared).

The tests install nothing. What a machine needs (the Makefile's job):
``apt-get install --no-install-recommends qemu-system-x86 busybox-static tcpdump`` and
``python -m tests.vm.image prepare`` (downloads Debian's kernel .deb, ~70 MB, ~15 s).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.vm.harness import VmResult, run_in_vm, skip_reason

REPO = Path(__file__).resolve().parents[2]


def run_guest_module(
    module: str, out_dir: Path, args: Sequence[str] = (), timeout: float = 240.0
) -> VmResult:
    """Run ``python -m MODULE`` from this checkout and venv inside a fresh VM."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    return run_in_vm(
        [sys.executable, "-m", module, *args],
        env={"PYTHONPATH": str(REPO)},
        timeout=timeout,
        out_dir=out_dir,
    )


@pytest.fixture(scope="session")
def vm_available() -> None:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
