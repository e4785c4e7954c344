"""The VM image: Debian's stock kernel, an uncompressed vmlinux and a busybox initramfs.

Owns: locating a prepared image (``find_image``) and preparing one
(``python -m tests.vm.image prepare``): ``apt-get download`` of the kernel
package that ``linux-image-amd64`` points to (or ``$OVERLAY_VM_KPKG``),
``dpkg -x`` into the cache dir (nothing is installed on the host, /boot and
/lib/modules are untouched), ``busybox depmod``, extraction of the ELF vmlinux
from the xz bzImage (QEMU boots it through the PVH entry, ~3x faster than the
bzImage under TCG) and an uncompressed newc initramfs holding busybox, the
module closure for ESP/GCM/XFRM/VXLAN/bridge/veth/9p/overlayfs and ``/init``.
Does not: boot anything (tests/vm/harness.py) or install Debian packages
(the Makefile does: qemu-system-x86 busybox-static).

Guest contract of ``/init`` (kernel command line): ``ovm.cmd=ABSPATH`` is run with
``/bin/sh`` as root, chrooted into the host's root file system (9p, read-only,
with a throwaway tmpfs overlay on top, so every host path works unchanged);
``ovm.out=ABSDIR`` is a writable 9p share mounted at the same path. ``/init``
prints ``OVM_EXIT=<status>`` on the console and powers off.
References: docs/ipsec.md, "The VM: recipe and pitfalls" (Debian bookworm linux-image 6.1).
"""

from __future__ import annotations

import lzma
import os
import re
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

CACHE_ENV = "OVERLAY_VM_DIR"
DEFAULT_CACHE = Path("/var/tmp/overlay-agent-vm")
BUSYBOX = Path("/bin/busybox")
IMAGE_VERSION = "ovm-image-4"  # bump when the initramfs layout or /init changes

# Loaded by /init in this order (modules.dep pulls in their dependencies).
# drbg + jitterentropy_rng + sha512_generic: seqiv (rfc4106's IV generator) needs
# the kernel's default RNG "stdrng", a module in Debian's kernel; without it
# NEWSA fails with "Kernel was unable to initialize cryptographic operations".
PRELOAD = [
    "virtio_pci",
    "9pnet_virtio",
    "9p",
    "overlay",
    "veth",
    "bridge",
    "vxlan",
    "dummy",
    "xfrm_user",
    "esp4",
    "esp6",
    "jitterentropy_rng",
    "sha512_generic",
    "drbg",
    "aesni_intel",
    "gcm",
    "ghash_clmulni_intel",
    "ghash_generic",
    "ctr",
    "seqiv",
    "echainiv",
]
# Copied but not preloaded, so the kernel's on-demand loading (crypto-*, xfrm-type-*,
# rtnl-link-* aliases) finds them through busybox modprobe in the initramfs.
MODULE_DIRS = (
    "kernel/crypto",
    "kernel/arch/x86/crypto",
    "kernel/net/xfrm",
    "kernel/net/ipv4",
    "kernel/net/ipv6",
    "kernel/net/bridge",
    "kernel/net/sched",
    "kernel/drivers/net/vxlan",
)

INIT_SCRIPT = r"""#!/bin/sh
# PID 1 in the test VM. Stays in the initramfs (so module autoloading keeps using
# busybox modprobe), mounts the host root over 9p with a tmpfs overlay, runs
# ovm.cmd chrooted into it, reports OVM_EXIT=<rc> and powers off.
export PATH=/sbin:/bin
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
for a in $(cat /proc/cmdline); do
  case "$a" in ovm.cmd=*) CMD=${a#ovm.cmd=};; ovm.out=*) OUT=${a#ovm.out=};; esac
done
for m in $(cat /etc/preload); do modprobe "$m" 2>/dev/null || echo "OVM: modprobe $m failed"; done
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 hostroot /host \
  || echo "OVM: 9p mount of the host root failed"
mount -t tmpfs -o size=75% tmpfs /rw && mkdir -p /rw/upper /rw/work
mount -t overlay overlay -o lowerdir=/host,upperdir=/rw/upper,workdir=/rw/work /newroot \
  || echo "OVM: overlay mount failed"
mount -t proc proc /newroot/proc; mount -t sysfs sysfs /newroot/sys
mount -t devtmpfs devtmpfs /newroot/dev
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts devpts /newroot/dev/pts; mount -t tmpfs tmpfs /newroot/dev/shm
mount -t tmpfs tmpfs /newroot/run  # fresh /run: ip netns keeps its mounts there
if [ -n "$OUT" ]; then
  mkdir -p "/newroot$OUT"
  mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 ovmout "/newroot$OUT" \
    || echo "OVM: 9p mount of the output dir failed"
fi
echo "OVM: guest ready after $(cut -d' ' -f1 /proc/uptime)s"
chroot /newroot /usr/bin/env -i HOME=/root LANG=C.UTF-8 \
  PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  /bin/sh -c "cd / && /bin/sh $CMD"
rc=$?
[ -n "$OUT" ] && { sync; umount "/newroot$OUT"; }
echo "OVM_EXIT=$rc"
poweroff -f
"""


class ImageError(RuntimeError):
    """The image cannot be prepared; the message says what is missing."""


@dataclass(frozen=True)
class Image:
    kernel: Path  # vmlinux (PVH entry) or, failing that, the bzImage
    initrd: Path
    kver: str


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV, str(DEFAULT_CACHE)))


def find_image(root: Path | None = None) -> Image | None:
    """The prepared image in the cache dir, or None if ``prepare`` has not run."""
    root = root or cache_dir()
    try:
        stamp = (root / "image.ok").read_text().split()
    except OSError:
        return None
    if len(stamp) != 2 or stamp[0] != IMAGE_VERSION:
        return None
    kver = stamp[1]
    kernel, initrd = root / "vmlinux", root / "initramfs.cpio"
    if not kernel.is_file():
        kernel = root / "kernel" / "boot" / f"vmlinuz-{kver}"
    if not (kernel.is_file() and initrd.is_file()):
        return None
    return Image(kernel=kernel, initrd=initrd, kver=kver)


def _log(msg: str) -> None:
    print(f"[vm-image] {msg}", file=sys.stderr, flush=True)


def _run(cmd: list[str], cwd: Path | None = None) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ImageError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def kernel_package() -> str:
    """The versioned image package behind the ``linux-image-amd64`` metapackage."""
    pinned = os.environ.get("OVERLAY_VM_KPKG")
    if pinned:
        return pinned
    for attempt in range(2):
        proc = subprocess.run(
            ["apt-cache", "depends", "linux-image-amd64"], capture_output=True, text=True
        )
        m = re.search(r"Depends: (linux-image-[0-9][^\s]*)", proc.stdout)
        if m:
            return m.group(1)
        if attempt == 0:  # empty or stale package lists on a fresh machine
            _log("apt-get update (package lists do not know linux-image-amd64)")
            _run(["apt-get", "update", "-qq"])
    raise ImageError("apt-cache knows no linux-image-amd64 even after apt-get update")


def _fetch_kernel(root: Path) -> str:
    pkg = kernel_package()
    debs = root / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    for old in debs.glob("linux-image-*.deb"):
        old.unlink()
    _log(f"apt-get download {pkg} (~70 MB; not installed on this host)")
    _run(["apt-get", "download", "-q", "-o", "Acquire::Retries=5", pkg], cwd=debs)
    deb = next(debs.glob(f"{pkg}_*.deb"), None)
    if deb is None:
        raise ImageError(f"apt-get download left no {pkg}_*.deb in {debs}")
    tree = root / "kernel"
    shutil.rmtree(tree, ignore_errors=True)
    _run(["dpkg", "-x", str(deb), str(tree)])
    kvers = os.listdir(tree / "lib" / "modules")
    if len(kvers) != 1:
        raise ImageError(f"unexpected module trees in {deb}: {kvers}")
    # The .deb ships no modules.dep (its postinst runs depmod); kmod is not needed.
    _run([str(BUSYBOX), "depmod", "-b", str(tree), kvers[0]])
    deb.unlink()  # 70 MB we no longer need
    return kvers[0]


def _extract_vmlinux(vmlinuz: Path, out: Path) -> bool:
    data = vmlinuz.read_bytes()
    start = data.find(b"\xfd7zXZ\x00")  # Debian amd64 kernels are xz-compressed
    if start < 0:
        return False
    try:
        elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data[start:])
    except lzma.LZMAError:
        return False
    if elf[:4] != b"\x7fELF":
        return False
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(elf)
    tmp.replace(out)
    return True


def _module_closure(kdir: Path) -> list[str]:
    """Relative paths of PRELOAD + MODULE_DIRS modules and all their dependencies."""
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in (kdir / "modules.dep").read_text().splitlines():
        head, _, rest = line.partition(":")
        deps[head] = rest.split()
        by_name[_modname(head)] = head
    want: list[str] = []
    for name in PRELOAD:
        path = by_name.get(name.replace("-", "_"))
        if path is None:
            _log(f"module {name} not in this kernel (skipped)")
        else:
            want.append(path)
    for d in MODULE_DIRS:
        want.extend(p for p in sorted(deps) if p.startswith(d + "/") or p == d)
    seen: dict[str, None] = {}
    stack = list(want)
    while stack:
        m = stack.pop()
        if m in seen:
            continue
        seen[m] = None
        stack.extend(deps.get(m, []))
    return sorted(seen)


def _modname(path: str) -> str:
    base = path.rsplit("/", 1)[-1]
    return re.sub(r"\.ko(\.(xz|gz|zst))?$", "", base).replace("-", "_")


def _cpio_newc(files: list[tuple[str, int, bytes]]) -> bytes:
    """An uncompressed newc archive (unpacks faster than gzip under TCG)."""
    out = bytearray()

    def entry(name: str, mode: int, data: bytes, ino: int) -> None:
        nm = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(nm), 0)
        out.extend(b"070701" + b"".join(b"%08X" % f for f in fields) + nm)
        out.extend(b"\0" * (-len(out) % 4))
        out.extend(data)
        out.extend(b"\0" * (-len(out) % 4))

    for ino, (name, mode, data) in enumerate(files, start=1):
        entry(name, mode, data, ino)
    entry("TRAILER!!!", 0, b"", 0)
    return bytes(out)


def _build_initramfs(root: Path, kver: str) -> None:
    tree = root / "kernel"
    kdir = tree / "lib" / "modules" / kver
    stage = root / "initramfs"
    shutil.rmtree(stage, ignore_errors=True)
    mods = _module_closure(kdir)
    sub = stage / "lib" / "modules" / kver
    for m in mods:
        dst = sub / m
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(kdir / m, dst)
    for extra in ("modules.builtin", "modules.order", "modules.builtin.modinfo"):
        if (kdir / extra).exists():
            shutil.copy2(kdir / extra, sub / extra)
    _run([str(BUSYBOX), "depmod", "-b", str(stage), kver])  # dep + alias for the subset

    dirs = ["bin", "sbin", "proc", "sys", "dev", "etc", "host", "rw", "newroot"]
    files: list[tuple[str, int, bytes]] = [(d, stat.S_IFDIR | 0o755, b"") for d in dirs]
    files.append(("bin/busybox", stat.S_IFREG | 0o755, BUSYBOX.read_bytes()))
    applets = _run([str(BUSYBOX), "--list"]).split()
    for a in applets:
        if a != "busybox":
            files.append((f"bin/{a}", stat.S_IFLNK | 0o777, b"busybox"))
    for a in ("modprobe", "insmod", "rmmod", "lsmod", "depmod", "poweroff"):
        files.append((f"sbin/{a}", stat.S_IFLNK | 0o777, b"../bin/busybox"))
    files.append(("init", stat.S_IFREG | 0o755, INIT_SCRIPT.encode()))
    files.append(("etc/preload", stat.S_IFREG | 0o644, " ".join(PRELOAD).encode()))
    for path in sorted(stage.rglob("*")):
        rel = str(path.relative_to(stage))
        if path.is_dir():
            files.append((rel, stat.S_IFDIR | 0o755, b""))
        else:
            files.append((rel, stat.S_IFREG | 0o644, path.read_bytes()))
    tmp = root / "initramfs.cpio.tmp"
    tmp.write_bytes(_cpio_newc(files))
    tmp.replace(root / "initramfs.cpio")
    shutil.rmtree(stage, ignore_errors=True)
    _log(f"initramfs: {len(mods)} modules, {(root / 'initramfs.cpio').stat().st_size >> 20} MiB")


def prepare(root: Path | None = None, force: bool = False) -> Image:
    """Download and build everything the VM tests need (idempotent, cached)."""
    root = root or cache_dir()
    if not force and (img := find_image(root)) is not None:
        return img
    if not BUSYBOX.is_file():
        raise ImageError(f"{BUSYBOX} is missing: apt-get install busybox-static")
    root.mkdir(parents=True, exist_ok=True)
    (root / "image.ok").unlink(missing_ok=True)
    try:
        kver = (root / "kernel.ok").read_text().strip()
        if force or not (root / "kernel" / "lib" / "modules" / kver).is_dir():
            raise FileNotFoundError
    except OSError:
        kver = _fetch_kernel(root)
        (root / "kernel.ok").write_text(kver)
    vmlinuz = root / "kernel" / "boot" / f"vmlinuz-{kver}"
    if not _extract_vmlinux(vmlinuz, root / "vmlinux"):
        _log("no xz payload in the bzImage; the VM boots the bzImage (slower)")
    _build_initramfs(root, kver)
    (root / "image.ok").write_text(f"{IMAGE_VERSION} {kver}\n")
    img = find_image(root)
    assert img is not None
    return img


def main(argv: list[str]) -> int:
    if argv[:1] != ["prepare"] or len(argv) > 2 or (len(argv) == 2 and argv[1] != "--force"):
        print("usage: python -m tests.vm.image prepare [--force]", file=sys.stderr)
        return 2
    try:
        img = prepare(force="--force" in argv)
    except ImageError as e:
        print(f"vm image: {e}", file=sys.stderr)
        return 1
    print(f"vm image ready: kernel {img.kver} at {img.kernel}, initrd {img.initrd}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
