"""What a lab board boots: its root file systems and its boot files ("kernels").

`populate_root()` makes a directory a minimal bootable busybox root (the boards' NFS exports
`fs_<board>`, their initramfs, the sample disk image); `make_image()` packs one as the tar.gz
that stage 1 of the two-stage boot unpacks onto /dev/sda1. `write_kernel()` writes the boot
files the boards fetch over TFTP (also `python -m bmm_lab.netboot kernel ...`) and
`parse_kernel()` reads one, as a board's firmware does (bmm_lab.board).

KERNEL FORMAT (a "vmlinux" the lab understands; docs/pdu-dialect.md, "Boot files"):

    # any comment
    BMM_LAB_KERNEL=1
    TLR_ROOT=nfs | tmpfs | /dev/sda1
    NFS_ROOT=<path>            optional with TLR_ROOT=nfs; default <nfs_root>/fs_<board>

`TLR_ROOT` picks the board's root: `nfs` (its NFS export), `tmpfs` (a copy of its built-in
initramfs: stage 1 of the two-stage boot) or `/dev/sda1` (its disk: stage 2).
"""

from __future__ import annotations

import os
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

from bmm_lab import LabError
from bmm.runner import run

ROOT_KINDS = ("nfs", "tmpfs", "/dev/sda1")


def populate_root(root: Path | str, *, hostname: str, authorized_keys: str = "",
                  label: str = "bmm lab board OS", marker: str | None = None) -> Path:
    """Make `root` a minimal bootable board root: busybox-static with its applet links,
    /etc (os-release, passwd, group, hostname), /sbin/init, /root/.ssh/authorized_keys and
    the usual mount points. Owned by root, mode 0755 (sshd's ChrootDirectory needs that)."""
    root = Path(root)
    busybox = shutil.which("busybox") or "/bin/busybox"
    if not os.path.exists(busybox):
        raise LabError("busybox (busybox-static) is not installed; boards need it for their root fs")
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "dev", "proc", "sys", "mnt", "run",
              "var/log", "root/.ssh", "tmp", "context"):
        (root / d).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "tmp", 0o1777)
    os.chmod(root / "root", 0o700)
    os.chmod(root / "root/.ssh", 0o700)
    shutil.copy2(busybox, root / "bin/busybox")
    applets = run([busybox, "--list-full"], timeout=10).stdout.split()
    for applet in applets:
        link = root / applet
        if applet == "bin/busybox" or link.exists() or link.is_symlink():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        depth = len(Path(applet).parts) - 1
        os.symlink("../" * depth + "bin/busybox", link)
    init = root / "sbin/init"
    if init.is_symlink() or init.exists():
        init.unlink()
    init.write_text("#!/bin/sh\n# placeholder: the lab's pid 1 starts sshd for this board\n"
                    "exec /bin/sh\n")
    os.chmod(init, 0o755)
    bash = root / "bin/bash"
    if not bash.exists():
        bash.write_text('#!/bin/sh\nexec /bin/sh "$@"\n')
        os.chmod(bash, 0o755)
    etc = root / "etc"
    (etc / "os-release").write_text(
        f'NAME="{label}"\nPRETTY_NAME="{label}"\nID=bmmlab\nVERSION_ID=1\n'
        'HOME_URL="https://opennebula.io/"\n')
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (etc / "group").write_text("root:x:0:\n")
    (etc / "shadow").write_text("root:*:19000:0:99999:7:::\n")
    os.chmod(etc / "shadow", 0o600)
    (etc / "hostname").write_text(hostname + "\n")
    (etc / "hosts").write_text(f"127.0.0.1 localhost\n127.0.1.1 {hostname}\n")
    (etc / "fstab").write_text("# the lab board's root is mounted by its firmware\n")
    keys = root / "root/.ssh/authorized_keys"
    keys.write_text(authorized_keys if authorized_keys.endswith("\n") or not authorized_keys
                    else authorized_keys + "\n")
    os.chmod(keys, 0o600)
    if marker is not None:
        (etc / "bmm-lab-marker").write_text(marker + "\n")
    return root


def make_image(root: Path | str, out: Path | str) -> Path:
    """tar.gz of a root fs (numeric owners, permissions kept): what stage 1 unpacks to sda1."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with tarfile.open(tmp, "w:gz", compresslevel=6) as tar:
        tar.add(str(root), arcname=".", recursive=True)
    os.replace(tmp, out)
    return out


def write_kernel(path: Path | str, root: str, *, nfs_path: str | None = None,
                 comment: str = "") -> Path:
    """Write a lab "kernel" (boot file): see KERNEL FORMAT in this module's docstring."""
    if root not in ROOT_KINDS:
        raise LabError(f"TLR_ROOT must be one of {', '.join(ROOT_KINDS)}, not {root!r}")
    lines = [f"# bmm lab board kernel{': ' + comment if comment else ''}", "BMM_LAB_KERNEL=1",
             f"TLR_ROOT={root}"]
    if nfs_path:
        lines.append(f"NFS_ROOT={nfs_path}")
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path


@dataclass(frozen=True)
class Kernel:
    root: str                    # nfs | tmpfs | /dev/sda1
    nfs_path: str | None = None


def parse_kernel(data: bytes) -> Kernel:
    """Parse a boot file; raise LabError (one line) when it is not a lab kernel."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise LabError("boot file is not a bmm lab kernel (binary data)") from None
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise LabError(f"boot file is not a bmm lab kernel (bad line {line[:40]!r})")
        values[key.strip()] = value.strip()
    if values.get("BMM_LAB_KERNEL") != "1":
        raise LabError("boot file is not a bmm lab kernel (no BMM_LAB_KERNEL=1 line)")
    root = values.get("TLR_ROOT", "")
    if root not in ROOT_KINDS:
        raise LabError(f"boot file has TLR_ROOT={root!r}; expected one of {', '.join(ROOT_KINDS)}")
    nfs_path = values.get("NFS_ROOT") or None
    if nfs_path is not None and not nfs_path.startswith("/"):
        raise LabError(f"boot file has NFS_ROOT={nfs_path!r}; expected an absolute path")
    return Kernel(root=root, nfs_path=nfs_path)

