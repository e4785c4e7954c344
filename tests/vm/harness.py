"""Boot the prepared Debian kernel in QEMU, run one script inside, collect output and status.

Owns: the QEMU command line (TCG unless hardware KVM is really there: this machine's
/dev/kvm is PVM, which cannot boot a stock kernel), the per-run output directory
shared into the guest, the wrapper script that passes arguments and environment
across ``env -i``, reading ``OVM_EXIT=<rc>`` from the console, and the timeout.
Does not: prepare the image (tests/vm/image.py) or know what the guest tests.

The guest runs as root in its own kernel, chrooted into this host's root file system
(read-only 9p + tmpfs overlay), so the repo, the venv and /usr/bin tools keep their
paths. It has no network device: all traffic stays in namespaces inside the VM.
Under TCG every process start costs ~0.1 s and Python start-up ~1 s: run one VM with
many checks, not one VM per check.
References: docs/ipsec.md, "The VM: recipe and pitfalls".
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.vm.image import Image, find_image

QEMU = "qemu-system-x86_64"
EXIT_RE = re.compile(r"OVM_EXIT=(\d+)")


@dataclass(frozen=True)
class VmResult:
    status: int | None  # the guest command's exit status; None: the VM never reported one
    console: str
    out_dir: Path  # files the guest wrote to $OVM_OUT
    wall: float  # seconds from QEMU start to exit
    timed_out: bool

    @property
    def ok(self) -> bool:
        return self.status == 0


def skip_reason() -> str | None:
    """Why VM tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "VM tests need root (9p passthrough of /)"
    if shutil.which(QEMU) is None:
        return f"{QEMU} not found: apt-get install --no-install-recommends qemu-system-x86"
    if find_image() is None:
        return (
            "VM image not prepared: apt-get install busybox-static && "
            "python -m tests.vm.image prepare (downloads Debian's linux-image-amd64 .deb)"
        )
    return None


def _accel() -> list[str]:
    # Real KVM only with a hardware-virtualisation module; PVM's /dev/kvm hangs a
    # stock kernel right after "Probing EDD".
    hw = Path("/sys/module/kvm_intel").exists() or Path("/sys/module/kvm_amd").exists()
    if hw and os.access("/dev/kvm", os.W_OK) and os.environ.get("OVERLAY_VM_ACCEL") != "tcg":
        return ["-enable-kvm", "-cpu", "host"]
    # -cpu max: TCG emulates AES-NI and PCLMUL, so the kernel uses rfc4106-gcm-aesni.
    # tb-size caps the translation cache (QEMU's RSS ~450 MB instead of ~1 GB).
    return ["-accel", "tcg,tb-size=128", "-cpu", "max"]


def qemu_command(image: Image, script: Path, out_dir: Path, memory_mb: int = 512) -> list[str]:
    for p in (script, out_dir):
        if not p.is_absolute() or re.search(r"\s", str(p)):
            raise ValueError(f"guest paths must be absolute without spaces: {p}")
    append = f"console=ttyS0 quiet panic=-1 mitigations=off ovm.cmd={script} ovm.out={out_dir}"
    return [
        QEMU,
        *_accel(),
        "-m",
        str(memory_mb),
        "-smp",
        "1",
        "-nic",
        "none",
        "-display",
        "none",
        "-monitor",
        "none",
        "-serial",
        "stdio",
        "-no-reboot",
        "-kernel",
        str(image.kernel),
        "-initrd",
        str(image.initrd),
        "-append",
        append,
        "-virtfs",
        "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        "-virtfs",
        f"local,path={out_dir},mount_tag=ovmout,security_model=none",
    ]


def run_in_vm(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 180.0,
    out_dir: Path | None = None,
    memory_mb: int = 512,
) -> VmResult:
    """Run ``argv`` as root inside a fresh VM; returns its status, console and out dir.

    ``env`` is exported to the command, along with ``OVM_OUT`` (the shared writable
    directory). The console holds the command's stdout/stderr.
    """
    image = find_image()
    if image is None:
        raise RuntimeError(skip_reason() or "VM image missing")
    if out_dir is None:
        out_dir = Path(tempfile.mkdtemp(prefix="ovm-"))
    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    script = out_dir / "ovm-run.sh"
    lines = ["#!/bin/sh", f"export OVM_OUT={shlex.quote(str(out_dir))}"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in sorted((env or {}).items())]
    lines.append("exec " + " ".join(shlex.quote(a) for a in argv) + " 2>&1")
    script.write_text("\n".join(lines) + "\n")
    cmd = qemu_command(image, script, out_dir, memory_mb)
    start = time.monotonic()
    timed_out = False
    with subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    ) as proc:
        try:
            raw, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            proc.kill()
            raw, _ = proc.communicate()
    wall = time.monotonic() - start
    console = raw.decode("utf-8", "replace").replace("\r\n", "\n")
    (out_dir / "console.log").write_text(console)
    found = EXIT_RE.findall(console)
    status = int(found[-1]) if found and not timed_out else None
    return VmResult(status, console, out_dir, wall, timed_out)
