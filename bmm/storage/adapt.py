"""Adapt a copied OS image on the node so it boots from its LV.

After the copy the LV holds the image's root filesystem (bmm copies only the root partition
of a whole-disk image, so GRUB can address it as `(lvm/<vg>-<lv>)`). `adapt_root`:
- finds the root filesystem (`blkid`; a partitioned LV is refused unless allow_partitioned,
  then its partitions come from `sfdisk --json` and the root one is mounted through a loop
  device at its offset);
- mounts it (nodev,nosuid,noexec) on a private mountpoint under /run/bmm;
- points fstab's `/` entry at `/dev/mapper/<vg>-<lv>` (the same path the kernel gets as
  `root=`; `UUID=` is not used because an image cloned onto several LVs, or the home OS
  installed from the same image, share one filesystem UUID), comments out swap entries on
  devices and other block-device mounts that will not exist on the node (`# bmm: ...`),
  keeps swap files, network and pseudo filesystems and `nofail` mounts;
- finds the kernel and initrd (`/vmlinuz` + `/initrd.img` symlinks, else the newest
  `/boot/vmlinuz-<v>` with a matching initrd) and returns their paths for the GRUB entry;
- unmounts and detaches on every path.

The image is untrusted: nothing inside it is executed, paths inside it are never resolved by
the node's kernel through an image symlink (listings come from `find -P`, symlinks are
resolved here against the image root), and fstab is replaced by a rename, never written
through a path the image controls.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
from dataclasses import dataclass, field

from bmm.errors import BmmError
from bmm.storage.image import LINUX_FS, Partition, choose_root
from bmm.storage.lvm import attach_loop, check_name, detach_loop, mapper_name
from bmm.transport import executor_node

MOUNT_BASE = "/run/bmm"
TIMEOUT = 120

PSEUDO_OR_NETWORK_FS = {
    "proc", "sysfs", "devpts", "tmpfs", "devtmpfs", "securityfs", "cgroup", "cgroup2", "debugfs",
    "tracefs", "configfs", "fusectl", "hugetlbfs", "mqueue", "pstore", "efivarfs", "binfmt_misc",
    "nfs", "nfs4", "cifs", "smbfs", "smb3", "sshfs", "glusterfs", "ceph", "9p", "virtiofs", "none",
    "bind", "overlay",
}
DEVICE_SPEC = re.compile(r"^(UUID|LABEL|PARTUUID|PARTLABEL|ID)=|^/dev/")


@dataclass
class AdaptResult:
    fstype: str
    kernel: str                   # path inside the root filesystem, e.g. /boot/vmlinuz-6.1.0-9-amd64
    initrd: str
    root_device: str              # what fstab and root= now name
    changes: list[str] = field(default_factory=list)    # one line per fstab change
    warnings: list[str] = field(default_factory=list)
    root_offset: int = 0          # > 0 only for a partitioned LV (allow_partitioned)


# ---------------------------------------------------------------------------------------------
# pure logic (unit-testable)

def root_device(vg: str, lv: str) -> str:
    return f"/dev/mapper/{mapper_name(vg, lv)}"


def rewrite_fstab(text: str, root_spec: str, fstype: str) -> tuple[str, list[str]]:
    """fstab with `/` on root_spec and entries for devices that will not exist commented out."""
    out, changes = [], []
    have_root = False
    for line in text.splitlines():
        fields = line.split()
        if not fields or fields[0].startswith("#") or len(fields) < 3:
            out.append(line)
            continue
        spec, target, vfstype = fields[0], fields[1], fields[2]
        options = fields[3].split(",") if len(fields) > 3 else []
        if target == "/":
            if have_root:
                out.append(f"# bmm: second root entry: {line}")
                changes.append(f"commented out a second root entry ({spec})")
                continue
            have_root = True
            if spec != root_spec:
                fields[0] = root_spec
                out.append("\t".join(fields))
                changes.append(f"root: {spec} -> {root_spec}")
            else:
                out.append(line)
            continue
        if vfstype == "swap":
            if DEVICE_SPEC.match(spec):
                out.append(f"# bmm: swap device will not exist on the node: {line}")
                changes.append(f"dropped swap on {spec}")
            else:
                out.append(line)      # a swap file inside the image
            continue
        if (DEVICE_SPEC.match(spec) and vfstype not in PSEUDO_OR_NETWORK_FS
                and "nofail" not in options and "noauto" not in options):
            out.append(f"# bmm: device will not exist on the node: {line}")
            changes.append(f"dropped mount of {spec} on {target}")
            continue
        out.append(line)
    if not have_root:
        opts = "errors=remount-ro" if fstype.startswith("ext") else "defaults"
        out.append(f"{root_spec}\t/\t{fstype}\t{opts}\t0\t1")
        changes.append(f"added root entry on {root_spec}")
    return "\n".join(out) + "\n", changes


def _version_key(name: str) -> list:
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", name)]


INITRD_PATTERNS = ("initrd.img-{v}", "initramfs-{v}.img", "initrd-{v}", "initramfs-{v}", "initrd-{v}.img")


def choose_kernel(top: dict[str, tuple[str, str]], boot: dict[str, tuple[str, str]]) -> tuple[str, str]:
    """(kernel, initrd) paths inside the image from listings {name: (type, link target)} of
    `/` and `/boot`. Raises BmmError saying why the image cannot boot."""

    def resolve(name: str, listing: dict, base: str) -> str | None:
        """A regular file in /boot named by listing[name], following symlinks inside the image."""
        seen = 0
        kind, target = listing.get(name, ("", ""))
        path = posixpath.join(base, name)
        while kind == "l" and seen < 8:
            seen += 1
            path = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
            if posixpath.dirname(path) != "/boot":
                return None
            kind, target = boot.get(posixpath.basename(path), ("", ""))
        return path if kind == "f" else None

    for kname, iname, listing, base in (("vmlinuz", "initrd.img", top, "/"),
                                        ("vmlinuz", "initrd.img", boot, "/boot")):
        kernel = resolve(kname, listing, base)
        initrd = resolve(iname, listing, base)
        if kernel and initrd:
            return kernel, initrd
    kernels = sorted((n for n, (t, _) in boot.items() if t == "f" and re.match(r"^(vmlinuz|vmlinux|Image)-.", n)),
                     key=_version_key, reverse=True)
    kernels.sort(key=lambda n: "rescue" in n)      # rescue kernels last, stable otherwise
    if not kernels:
        raise BmmError("image has no kernel in /boot (no /boot/vmlinuz-*; a separate /boot partition "
                       "is not supported)")
    for k in kernels:
        version = k.split("-", 1)[1]
        for pattern in INITRD_PATTERNS:
            name = pattern.format(v=version)
            if boot.get(name, ("",))[0] == "f":
                return f"/boot/{k}", f"/boot/{name}"
    raise BmmError(f"image has no initrd for kernel /boot/{kernels[0]} (booting from an LV needs an "
                   "initramfs with LVM support)")


# ---------------------------------------------------------------------------------------------
# on the node

def _listing(ex, path: str) -> dict[str, tuple[str, str]]:
    """{name: (type, link target)} of a directory's entries, symlinks not followed."""
    res = ex.run(["find", "-P", path, "-mindepth", "1", "-maxdepth", "1", "-printf", r"%y\0%P\0%l\0"],
                 timeout=TIMEOUT)
    parts = res.stdout.split("\0")
    return {parts[i + 1]: (parts[i], parts[i + 2]) for i in range(0, len(parts) - 2, 3)}


def _probe(ex, device: str, offset: int = 0, size: int | None = None) -> dict[str, str]:
    argv = ["blkid", "--probe", "--output", "export"]
    if offset:
        argv += ["--offset", str(offset)]
    if size is not None:
        argv += ["--size", str(size)]
    res = ex.run([*argv, device], timeout=TIMEOUT, check=False)
    if res.returncode not in (0, 2):
        raise BmmError(f"blkid cannot probe {device}: {res.stderr.strip() or res.returncode}", node=executor_node(ex))
    return dict(line.split("=", 1) for line in res.stdout.splitlines() if "=" in line)


def _find_root(ex, device: str, allow_partitioned: bool) -> tuple[str, int, int | None]:
    """(fstype, offset, size) of the root filesystem on device."""
    node = executor_node(ex)
    top = _probe(ex, device)
    if top.get("TYPE") and not top.get("PTTYPE"):
        if top["TYPE"] not in LINUX_FS:
            raise BmmError(f"no root filesystem found on {device} (it holds {top['TYPE']})", node=node)
        return top["TYPE"], 0, None
    if not top.get("PTTYPE"):
        raise BmmError(f"no root filesystem found on {device}", node=node)
    if not allow_partitioned:
        raise BmmError(f"{device} holds a whole-disk image ({top['PTTYPE']} partition table); GRUB boots "
                       "an LV holding a bare filesystem: copy only the image's root partition", node=node)
    table = json.loads(ex.run(["sfdisk", "--json", device], timeout=TIMEOUT).stdout)["partitiontable"]
    sector = int(table.get("sectorsize", 512))
    parts = []
    for i, p in enumerate(table.get("partitions", []), 1):
        start, size = int(p["start"]) * sector, int(p["size"]) * sector
        ptype = str(p.get("type", "")).lower()
        if ptype in ("5", "f", "85"):
            continue
        probe = _probe(ex, device, start, size)
        parts.append(Partition(i, start, size, ptype, probe.get("TYPE"), probe.get("LABEL")))
    root = choose_root(parts, image=device)
    return root.fstype, root.start, root.size


def _unmount(ex, mnt: str) -> None:
    res = ex.run(["umount", mnt], timeout=TIMEOUT, check=False)
    if not res.ok:
        ex.run(["umount", "--lazy", mnt], timeout=TIMEOUT, check=False)
        raise BmmError(f"cannot unmount {mnt}: {res.stderr.strip() or 'busy'} (lazily detached)",
                       node=executor_node(ex))


def _write_file(ex, directory: str, name: str, text: str) -> None:
    """Replace directory/name by a rename of a new file created with O_EXCL in directory."""
    tmp = f"{directory}/.{name}.bmm-{os.urandom(6).hex()}"
    ex.run(["dd", f"of={tmp}", "conv=excl,fsync", "status=none"], input=text, timeout=TIMEOUT)
    try:
        ex.run(["chmod", "0644", tmp], timeout=TIMEOUT)
        ex.run(["mv", "-f", "-T", tmp, f"{directory}/{name}"], timeout=TIMEOUT)
    except BmmError:
        ex.run(["rm", "-f", tmp], timeout=TIMEOUT, check=False)
        raise


def adapt_root(ex, device: str, *, vg: str, lv: str, allow_partitioned: bool = False,
               mount_base: str = MOUNT_BASE) -> AdaptResult:
    """Make the root filesystem on device (the open LV vg/lv) boot from that LV; see module doc."""
    check_name("VG", vg)
    check_name("LV", lv)
    node = executor_node(ex)
    fstype, offset, size = _find_root(ex, device, allow_partitioned)
    root_spec = root_device(vg, lv)
    loop = attach_loop(ex, device, offset, size) if offset or size is not None else None
    mnt = f"{mount_base}/adapt-{os.urandom(6).hex()}"
    mounted = False
    try:
        ex.run(["mkdir", "-p", "-m", "0700", mount_base], timeout=TIMEOUT)
        ex.run(["mkdir", "-m", "0700", mnt], timeout=TIMEOUT)
        try:
            ex.run(["mount", "-t", fstype, "-o", "nodev,nosuid,noexec", loop or device, mnt], timeout=TIMEOUT)
        except BmmError as exc:
            raise BmmError(f"cannot mount the image's {fstype} root filesystem: {exc.reason}", node=node) from None
        mounted = True
        top = _listing(ex, mnt)
        for d in ("etc", "boot"):
            kind = top.get(d, ("",))[0]
            if kind == "l":
                raise BmmError(f"image's /{d} is a symlink; bmm does not follow it", node=node)
            if kind != "d" and d == "etc":
                raise BmmError("no root filesystem found (the filesystem has no /etc)", node=node)
        boot = _listing(ex, f"{mnt}/boot") if top.get("boot", ("",))[0] == "d" else {}
        try:
            kernel, initrd = choose_kernel(top, boot)
        except BmmError as exc:
            raise BmmError(exc.reason, node=node) from None
        etc = _listing(ex, f"{mnt}/etc")
        kind = etc.get("fstab", ("",))[0]
        if kind not in ("f", ""):
            raise BmmError(f"image's /etc/fstab is not a regular file (type {kind})", node=node)
        old = ex.run(["cat", f"{mnt}/etc/fstab"], timeout=TIMEOUT).stdout if kind == "f" else ""
        new, changes = rewrite_fstab(old, root_spec, fstype)
        if new != old:
            _write_file(ex, f"{mnt}/etc", "fstab", new)
        warnings = []
        if not _has_lvm(ex, mnt, top):
            warnings.append("image has no lvm2 tools: its initramfs may not activate the root LV")
        result = AdaptResult(fstype, kernel, initrd, root_spec, changes, warnings, offset)
    except BaseException:
        _cleanup(ex, mnt if mounted else None, mnt, loop, quiet=True)
        raise
    _cleanup(ex, mnt if mounted else None, mnt, loop, quiet=False)
    return result


def _cleanup(ex, mounted: str | None, mnt: str, loop: str | None, *, quiet: bool) -> None:
    """Unmount, remove the mountpoint, detach the loop: all attempted; the first failure is
    raised unless quiet (when another error is already on its way up)."""
    errors = []
    if mounted:
        try:
            _unmount(ex, mounted)
        except BmmError as exc:
            errors.append(exc)
    try:
        ex.run(["rmdir", mnt], timeout=TIMEOUT, check=False)
    except BmmError as exc:
        errors.append(exc)
    if loop:
        try:
            detach_loop(ex, loop)
        except BmmError as exc:
            errors.append(exc)
    if errors and not quiet:
        raise errors[0]


def _has_lvm(ex, mnt: str, top: dict) -> bool:
    dirs = []
    if top.get("sbin", ("",))[0] == "d":
        dirs.append(f"{mnt}/sbin")
    if top.get("usr", ("",))[0] == "d":
        usr = _listing(ex, f"{mnt}/usr")
        if usr.get("sbin", ("",))[0] == "d":
            dirs.append(f"{mnt}/usr/sbin")
    return any(_listing(ex, d).get("lvm", ("",))[0] in ("f", "l") for d in dirs)
