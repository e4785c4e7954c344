"""The VM harness itself: a command runs as root on Debian's kernel, its output, files and
exit status come back (one ~5 s boot)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.vm.harness import run_in_vm

pytestmark = [pytest.mark.vm, pytest.mark.slow]


def test_command_output_files_and_status(vm_available: None, tmp_path: Path) -> None:
    script = 'echo "uid=$(id -u) kernel=$(uname -r) esp=$(grep -c ^esp4 /proc/modules)"; '
    script += 'echo "$GREETING" > "$OVM_OUT/greeting"; exit 7'
    res = run_in_vm(["sh", "-c", script], env={"GREETING": "hello vm"}, out_dir=tmp_path)
    assert not res.timed_out, res.console[-2000:]
    assert res.status == 7, res.console[-2000:]
    assert "uid=0 kernel=" in res.console and "esp=1" in res.console, res.console[-2000:]
    assert (tmp_path / "greeting").read_text() == "hello vm\n"
