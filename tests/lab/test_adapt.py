"""Adapting a copied image on the node: fstab, kernel/initrd discovery, safety, cleanup."""

import os
import shutil
import subprocess

import pytest

from bmm.boot.grub import TenantEntry, format_tenant_entry
from bmm.storage.lvm import mapper_name
from bmm.errors import BmmError
from bmm.storage import adapt, image, lvm, stream
from tests.lab.lvm_support import (
    FSTAB,
    KERNEL,
    OLD_KERNEL,
    MiB,
    build_disk_image,
    build_fs_image,
    build_rootfs_dir,
    lab_vg,
)
from tests.support import require_lab

TOOLS = ("lvm", "losetup", "blkdiscard", "blockdev", "qemu-img", "qemu-nbd", "sfdisk", "blkid", "mkfs.ext4",
         "debugfs", "mount", "umount", "find")


# ---------------------------------------------------------------------------------------------
# pure rules

def test_rewrite_fstab():
    new, changes = adapt.rewrite_fstab(FSTAB, "/dev/mapper/vg-one--1--0", "ext4")
    lines = new.splitlines()
    assert lines[0] == "# /etc/fstab: static file system information."
    assert lines[1] == "/dev/mapper/vg-one--1--0\t/\text4\terrors=remount-ro\t0\t1"
    assert "# bmm: swap device will not exist on the node: UUID=2222-swap none swap sw 0 0" in lines
    assert "# bmm: swap device will not exist on the node: /dev/sda5 none swap sw 0 0" in lines
    assert "/swapfile none swap sw 0 0" in lines                      # a swap file stays
    assert "# bmm: device will not exist on the node: UUID=ABCD-EF01 /boot/efi vfat umask=0077 0 1" in lines
    assert "proc /proc proc defaults 0 0" in lines and "tmpfs /tmp tmpfs defaults 0 0" in lines
    assert "LABEL=data /data ext4 defaults,nofail 0 2" in lines          # nofail mounts stay
    assert changes == ["root: UUID=1111-root -> /dev/mapper/vg-one--1--0", "dropped swap on UUID=2222-swap",
                       "dropped swap on /dev/sda5", "dropped mount of UUID=ABCD-EF01 on /boot/efi"]
    again, none = adapt.rewrite_fstab(new, "/dev/mapper/vg-one--1--0", "ext4")
    assert again == new and none == []                                 # idempotent


def test_rewrite_fstab_without_root_entry():
    new, changes = adapt.rewrite_fstab("", "/dev/mapper/vg-lv", "xfs")
    assert new == "/dev/mapper/vg-lv\t/\txfs\tdefaults\t0\t1\n" and changes == ["added root entry on /dev/mapper/vg-lv"]
    new, _ = adapt.rewrite_fstab("LABEL=a / ext4 rw 0 1\nLABEL=b / ext4 rw 0 1\n", "/dev/mapper/vg-lv", "ext4")
    assert new.splitlines()[1].startswith("# bmm: second root entry")


def listing(**kw):
    return {name: (v[0], v[1] if len(v) > 1 else "") for name, v in kw.items()}


def test_choose_kernel():
    boot = listing(**{f"vmlinuz-{OLD_KERNEL}": "f", f"initrd.img-{OLD_KERNEL}": "f",
                      f"vmlinuz-{KERNEL}": "f", f"initrd.img-{KERNEL}": "f", "grub": "d"})
    # Debian's /vmlinuz symlinks win, relative or absolute (resolved inside the image)
    top = listing(vmlinuz=("l", f"boot/vmlinuz-{OLD_KERNEL}"), **{"initrd.img": ("l", f"/boot/initrd.img-{OLD_KERNEL}")})
    assert adapt.choose_kernel(top, boot) == (f"/boot/vmlinuz-{OLD_KERNEL}", f"/boot/initrd.img-{OLD_KERNEL}")
    # else the newest version with an initrd (6.1.0 > 5.10.0, by numbers, not by text)
    assert adapt.choose_kernel({}, boot) == (f"/boot/vmlinuz-{KERNEL}", f"/boot/initrd.img-{KERNEL}")
    rhel = listing(**{"vmlinuz-5.14.0-362.el9.x86_64": "f", "initramfs-5.14.0-362.el9.x86_64.img": "f",
                      "vmlinuz-0-rescue-abc": "f", "initramfs-0-rescue-abc.img": "f"})
    assert adapt.choose_kernel({}, rhel) == ("/boot/vmlinuz-5.14.0-362.el9.x86_64",
                                             "/boot/initramfs-5.14.0-362.el9.x86_64.img")
    # a symlink leaving /boot is not followed; falls back to /boot's own files
    evil = listing(vmlinuz=("l", "/etc/shadow"), **{"initrd.img": ("l", "../../../etc/passwd")})
    assert adapt.choose_kernel(evil, boot)[0] == f"/boot/vmlinuz-{KERNEL}"
    with pytest.raises(BmmError, match="image has no kernel in /boot"):
        adapt.choose_kernel({}, listing(grub="d"))
    with pytest.raises(BmmError, match=f"image has no initrd for kernel /boot/vmlinuz-{KERNEL}"):
        adapt.choose_kernel({}, listing(**{f"vmlinuz-{KERNEL}": "f"}))


# ---------------------------------------------------------------------------------------------
# on a (lab) node

@pytest.fixture
def lab():
    require_lab(*TOOLS)
    with lab_vg(256 * MiB) as vg:
        yield vg
    assert not vg.leaks, f"left behind: {vg.leaks}"


def mounts_of(lab) -> list[str]:
    loops = set(lab.loops_over_pv())
    out = subprocess.run(["findmnt", "--noheadings", "--list", "--output", "SOURCE,TARGET"], capture_output=True,
                         text=True).stdout
    return [line for line in out.splitlines() if line.split()[0] in loops or "/run/bmm/adapt-" in line]


def deploy(lab, tmp_path, name="one-7-0", *, whole_disk=False, fmt="raw", **rootfs):
    """Build an image, copy it (root partition only for a whole-disk image) into a new LV."""
    root = tmp_path / "root"
    build_rootfs_dir(str(root), **rootfs)
    fs = tmp_path / "fs.raw"
    build_fs_image(str(fs), str(root), 32 * MiB)
    path = str(fs)
    if whole_disk:
        path = str(tmp_path / "disk.raw")
        build_disk_image(path, str(fs))
    if fmt == "qcow2":
        subprocess.run(["qemu-img", "convert", "-O", "qcow2", path, path + ".qcow2"], check=True)
        path += ".qcow2"
    layout = image.probe_layout(path, fmt)
    lv = lvm.create_lv(lab.ex, lab.vg, name, layout.root_size)
    with lvm.open_lv(lab.ex, lab.vg, name) as dev:
        stream.copy_image_to_lv(lab.ex, path, fmt, dev, lv.size, offset=layout.root_offset,
                                length=layout.root_size)
    return lv


def debugfs_cat(dev: str, path: str) -> str:
    return subprocess.run(["debugfs", "-R", f"cat {path}", dev], capture_output=True, text=True).stdout


@pytest.mark.parametrize("whole_disk, fmt", [(False, "raw"), (True, "raw"), (True, "qcow2")])
def test_adapt_copied_image(lab, tmp_path, whole_disk, fmt):
    require_lab(*TOOLS)
    lv = deploy(lab, tmp_path, whole_disk=whole_disk, fmt=fmt)
    with lvm.open_lv(lab.ex, lab.vg, lv.name) as dev:
        res = adapt.adapt_root(lab.ex, dev, vg=lab.vg, lv=lv.name)
        assert mounts_of(lab) == []
        fstab = debugfs_cat(dev, "/etc/fstab")
    mapper = f"/dev/mapper/{lab.vg}-one--7--0"
    assert res.root_device == mapper and res.fstype == "ext4"
    assert (res.kernel, res.initrd) == (f"/boot/vmlinuz-{KERNEL}", f"/boot/initrd.img-{KERNEL}")
    assert res.changes[0] == f"root: UUID=1111-root -> {mapper}" and len(res.changes) == 4
    assert res.warnings == []
    assert fstab.splitlines()[1] == f"{mapper}\t/\text4\terrors=remount-ro\t0\t1"
    assert "# bmm: swap device will not exist" in fstab
    entry = format_tenant_entry(TenantEntry("bmm-vm7", "bmm vm 7", mapper_name(lab.vg, lv.name), res.kernel, res.initrd))
    assert f"linux /boot/vmlinuz-{KERNEL} root={mapper} ro" in entry
    assert lab.loops_over_pv() == []


def test_adapt_reports_missing_kernel_and_cleans_up(lab, tmp_path):
    require_lab(*TOOLS)
    lv = deploy(lab, tmp_path, kernels=(), links=False)
    with lvm.open_lv(lab.ex, lab.vg, lv.name) as dev:
        with pytest.raises(BmmError, match="node labnode: image has no kernel in /boot"):
            adapt.adapt_root(lab.ex, dev, vg=lab.vg, lv=lv.name)
        assert mounts_of(lab) == [] and len(lab.loops_over_pv()) == 1
        assert debugfs_cat(dev, "/etc/fstab") == FSTAB                 # nothing changed
    assert lab.loops_over_pv() == []


def test_adapt_missing_initrd_and_fstab(lab, tmp_path):
    require_lab(*TOOLS)
    lv = deploy(lab, tmp_path, initrds=False, links=False)
    with lvm.open_lv(lab.ex, lab.vg, lv.name) as dev:
        with pytest.raises(BmmError, match="image has no initrd for kernel"):
            adapt.adapt_root(lab.ex, dev, vg=lab.vg, lv=lv.name)
    (tmp_path / "b").mkdir()
    lv2 = deploy(lab, tmp_path / "b", "one-8-0", fstab=None, lvm_tool=False)
    with lvm.open_lv(lab.ex, lab.vg, lv2.name) as dev:
        res = adapt.adapt_root(lab.ex, dev, vg=lab.vg, lv=lv2.name)
        assert debugfs_cat(dev, "/etc/fstab") == f"/dev/mapper/{lab.vg}-one--8--0\t/\text4\terrors=remount-ro\t0\t1\n"
    assert res.changes == [f"added root entry on /dev/mapper/{lab.vg}-one--8--0"]
    assert res.warnings == ["image has no lvm2 tools: its initramfs may not activate the root LV"]


def test_adapt_never_follows_image_symlinks_to_the_node(lab, tmp_path):
    """A hostile image whose /etc/fstab points at a node file must not read or write it."""
    require_lab(*TOOLS)
    victim = tmp_path / "node-file"
    victim.write_text("node secret\n")
    root = tmp_path / "root"
    build_rootfs_dir(str(root), fstab=None)
    os.symlink(str(victim), root / "etc" / "fstab")
    fs = tmp_path / "fs.raw"
    build_fs_image(str(fs), str(root), 32 * MiB)
    lv = lvm.create_lv(lab.ex, lab.vg, "evil", 32 * MiB)
    with lvm.open_lv(lab.ex, lab.vg, lv.name) as dev:
        stream.copy_image_to_lv(lab.ex, str(fs), "raw", dev, lv.size)
        with pytest.raises(BmmError, match="/etc/fstab is not a regular file"):
            adapt.adapt_root(lab.ex, dev, vg=lab.vg, lv=lv.name)
    assert victim.read_text() == "node secret\n"
    shutil.rmtree(root)
    build_rootfs_dir(str(root))
    shutil.rmtree(root / "etc")
    os.symlink(str(tmp_path), root / "etc")                           # /etc -> a node directory
    build_fs_image(str(fs), str(root), 32 * MiB)
    with lvm.open_lv(lab.ex, lab.vg, lv.name) as dev:
        stream.copy_image_to_lv(lab.ex, str(fs), "raw", dev, lv.size)
        with pytest.raises(BmmError, match="/etc is a symlink"):
            adapt.adapt_root(lab.ex, dev, vg=lab.vg, lv=lv.name)
    assert victim.read_text() == "node secret\n" and not (tmp_path / "fstab").exists()
    assert mounts_of(lab) == []


def test_adapt_whole_disk_in_lv(lab, tmp_path):
    require_lab(*TOOLS)
    root = tmp_path / "root"
    build_rootfs_dir(str(root))
    fs = tmp_path / "fs.raw"
    build_fs_image(str(fs), str(root), 32 * MiB)
    disk = tmp_path / "disk.raw"
    build_disk_image(str(disk), str(fs))
    lv = lvm.create_lv(lab.ex, lab.vg, "whole", os.path.getsize(disk))
    with lvm.open_lv(lab.ex, lab.vg, lv.name) as dev:
        stream.copy_image_to_lv(lab.ex, str(disk), "raw", dev, lv.size)
        with pytest.raises(BmmError, match="holds a whole-disk image \\(dos partition table\\)"):
            adapt.adapt_root(lab.ex, dev, vg=lab.vg, lv=lv.name)
        res = adapt.adapt_root(lab.ex, dev, vg=lab.vg, lv=lv.name, allow_partitioned=True)
        assert res.root_offset == MiB and res.kernel == f"/boot/vmlinuz-{KERNEL}"
        assert mounts_of(lab) == [] and len(lab.loops_over_pv()) == 1
    assert lab.loops_over_pv() == []


def test_adapt_refuses_what_is_not_a_root_filesystem(lab, tmp_path):
    require_lab(*TOOLS)
    lv = lvm.create_lv(lab.ex, lab.vg, "empty", 8 * MiB)
    lvm.wipe_lv(lab.ex, lab.vg, lv.name)
    with lvm.open_lv(lab.ex, lab.vg, lv.name) as dev:
        with pytest.raises(BmmError, match="no root filesystem found"):
            adapt.adapt_root(lab.ex, dev, vg=lab.vg, lv=lv.name)
        subprocess.run(["mkfs.ext4", "-q", "-F", dev], check=True)
        with pytest.raises(BmmError, match="no root filesystem found \\(the filesystem has no /etc\\)"):
            adapt.adapt_root(lab.ex, dev, vg=lab.vg, lv=lv.name)
        assert mounts_of(lab) == []
