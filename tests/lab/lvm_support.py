"""A throw-away VG on a loop device for the storage lab tests (and benchmarks/image_copy.py).

LVM runs with a private LVM_SYSTEM_DIR whose lvm.conf disables activation (this kernel has no
device-mapper, see test-environment.md §1) and whose filter accepts only our own loop device,
so nothing here can see or touch a VG or disk it did not create. Everything is removed on exit,
and anything left behind by the code under test (a loop over our PV, a mount of one) is
detached and reported as a leak.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field

from bmm.runner import LocalExecutor

MiB = 1 << 20


def local_executor(**kw) -> LocalExecutor:
    return LocalExecutor(**kw)


def sh(*argv, check=True, env=None, input=None) -> subprocess.CompletedProcess:
    full = dict(os.environ)
    full.update(env or {})
    return subprocess.run([str(a) for a in argv], check=check, capture_output=True, text=input is None
                          or isinstance(input, str), env=full, input=input, timeout=300)


@dataclass
class LabVg:
    vg: str
    pv: str            # the loop device holding the PV
    backing: str       # the sparse file behind it
    workdir: str
    lvm_env: dict
    ex: LocalExecutor
    leaks: list = field(default_factory=list)

    def lvm(self, *argv, check=True):
        return sh(*argv, check=check, env=self.lvm_env)

    def loops_over_pv(self) -> list[str]:
        """Loop devices backed by our PV, or by such a loop (a partition of an LV), deepest last."""
        out = sh("losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE", check=False).stdout
        pairs = [line.split(None, 1) for line in out.splitlines()]
        pairs = [(p[0], p[1].strip()) for p in pairs if len(p) == 2]
        found: list[str] = []
        frontier = {self.pv}
        while frontier:
            layer = [name for name, back in pairs if back in frontier and name not in found]
            found += layer
            frontier = set(layer)
        return found


def write_lvm_conf(directory: str, device: str) -> None:
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "lvm.conf"), "w") as f:
        f.write(
            "global { activation = 0 }\n"
            f'devices {{ filter = [ "a|^{device}$|", "r|.*|" ] global_filter = [ "a|^{device}$|", "r|.*|" ]'
            " obtain_device_list_from_udev = 0 use_devicesfile = 0 }\n"
            "backup { backup = 0 archive = 0 }\n"
            "activation { udev_sync = 0 udev_rules = 0 }\n"
        )


@contextmanager
def lab_vg(size: int = 512 * MiB, *, node: str = "labnode"):
    tag = uuid.uuid4().hex[:8]
    workdir = tempfile.mkdtemp(prefix=f"bmmtest{tag}-")
    backing = os.path.join(workdir, "pv.img")
    with open(backing, "wb") as f:
        f.truncate(size)
    pv = sh("losetup", "--find", "--show", backing).stdout.strip()
    lvm_dir = os.path.join(workdir, "lvm")
    write_lvm_conf(lvm_dir, pv)
    env = {"LVM_SYSTEM_DIR": lvm_dir, "LVM_SUPPRESS_FD_WARNINGS": "1"}
    vg = f"bmmtest{tag}"
    lab = LabVg(vg, pv, backing, workdir, env, local_executor(node=node, extra_env=env))
    try:
        lab.lvm("pvcreate", "-y", pv)
        lab.lvm("vgcreate", "-y", vg, pv)
        yield lab
    finally:
        # leaks: mounts of / loops over our PV left behind by the code under test
        for loop in reversed(lab.loops_over_pv()):
            lab.leaks.append(f"loop {loop}")
            mounts = sh("findmnt", "--noheadings", "--output", "TARGET", "--source", loop, check=False).stdout
            for target in mounts.split():
                lab.leaks.append(f"mount {target}")
                sh("umount", "--lazy", target, check=False)
            sh("losetup", "--detach", loop, check=False)
        lab.lvm("vgremove", "--force", "--yes", vg, check=False)
        lab.lvm("pvremove", "--force", "--force", "--yes", pv, check=False)
        sh("losetup", "--detach", pv, check=False)
        shutil.rmtree(workdir, ignore_errors=True)


def lv_bytes(lab: LabVg, lv: str, offset: int = 0, length: int | None = None) -> bytes:
    """Read an LV's bytes straight from the PV file (pe_start + first_pe * extent)."""
    env = lab.lvm_env
    pe_start = int(sh("pvs", "--noheadings", "--units", "b", "--nosuffix", "-o", "pe_start", lab.pv, env=env).stdout)
    ext = int(sh("vgs", "--noheadings", "--units", "b", "--nosuffix", "-o", "vg_extent_size", lab.vg,
                 env=env).stdout)
    size = int(sh("lvs", "--noheadings", "--units", "b", "--nosuffix", "-o", "lv_size", f"{lab.vg}/{lv}",
                  env=env).stdout)
    rng = sh("lvs", "--noheadings", "-o", "seg_pe_ranges", f"{lab.vg}/{lv}", env=env).stdout.strip()
    first = int(rng.rpartition(":")[2].split("-")[0])
    if length is None:
        length = size - offset
    with open(lab.pv, "rb") as f:
        f.seek(pe_start + first * ext + offset)
        return f.read(length)


# ---------------------------------------------------------------------------------------------
# tiny OS images

FSTAB = """# /etc/fstab: static file system information.
UUID=1111-root / ext4 errors=remount-ro 0 1
UUID=2222-swap none swap sw 0 0
/dev/sda5 none swap sw 0 0
/swapfile none swap sw 0 0
UUID=ABCD-EF01 /boot/efi vfat umask=0077 0 1
proc /proc proc defaults 0 0
tmpfs /tmp tmpfs defaults 0 0
LABEL=data /data ext4 defaults,nofail 0 2
"""
KERNEL = "6.1.0-test-amd64"
OLD_KERNEL = "5.10.0-old-amd64"


def build_rootfs_dir(root: str, *, fstab: str | None = FSTAB, kernels=(OLD_KERNEL, KERNEL),
                     initrds=True, links=True, lvm_tool=True) -> None:
    for d in ("bin", "etc", "boot", "usr/sbin", "proc", "tmp", "root"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    shutil.copy("/bin/busybox", os.path.join(root, "bin", "busybox"))
    os.symlink("busybox", os.path.join(root, "bin", "sh"))
    if fstab is not None:
        with open(os.path.join(root, "etc", "fstab"), "w") as f:
            f.write(fstab)
    with open(os.path.join(root, "etc", "hostname"), "w") as f:
        f.write("tenant\n")
    for k in kernels:
        with open(os.path.join(root, "boot", f"vmlinuz-{k}"), "wb") as f:
            f.write(b"KERNEL " + k.encode() + b"\n" + os.urandom(200_000))
        if initrds:
            with open(os.path.join(root, "boot", f"initrd.img-{k}"), "wb") as f:
                f.write(b"INITRD " + k.encode() + b"\n" + os.urandom(100_000))
    if links and kernels:
        os.symlink(f"boot/vmlinuz-{kernels[-1]}", os.path.join(root, "vmlinuz"))
        if initrds:
            os.symlink(f"boot/initrd.img-{kernels[-1]}", os.path.join(root, "initrd.img"))
    if lvm_tool:
        with open(os.path.join(root, "usr", "sbin", "lvm"), "wb") as f:
            f.write(b"#!/bin/sh\n")


def build_fs_image(path: str, root: str, size: int = 48 * MiB, fstype: str = "ext4") -> None:
    with open(path, "wb") as f:
        f.truncate(size)
    sh(f"mkfs.{fstype}", "-q", "-F", "-d", root, "-L", "tenantroot", path)


def build_disk_image(path: str, fs_image: str, *, swap: int = 8 * MiB, table: str = "dos") -> int:
    """A whole-disk image: p1 = the filesystem image at 1 MiB, p2 = swap. Returns p1's offset."""
    fs_size = os.path.getsize(fs_image)
    total = MiB + fs_size + swap + MiB
    with open(path, "wb") as f:
        f.truncate(total)
    if table == "dos":
        script = f"label: dos\nstart=2048, size={fs_size // 512}, type=83\ntype=82\n"
    else:
        script = (f"label: gpt\nstart=2048, size={fs_size // 512}, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n"
                  "type=0657FD6D-A4AB-43C4-84E5-0933C84B4F4F\n")
    sh("sfdisk", "--quiet", path, input=script)
    sh("dd", f"if={fs_image}", f"of={path}", "bs=1M", "seek=1", "conv=notrunc,sparse", "status=none")
    swap_img = path + ".swap"
    with open(swap_img, "wb") as f:
        f.truncate(swap)
    sh("mkswap", "-q", swap_img) if shutil.which("mkswap") else None
    sh("dd", f"if={swap_img}", f"of={path}", "bs=1M", f"seek={1 + fs_size // MiB}", "conv=notrunc,sparse",
       "status=none")
    os.unlink(swap_img)
    return MiB
