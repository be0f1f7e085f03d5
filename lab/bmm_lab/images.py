"""Small bootable tenant OS images for tests and the demo (no mount, no loop device needed).

`build_image()` makes an ext4 filesystem (mkfs.ext4 -d) holding busybox-static as /bin/busybox
with applet symlinks (sh, cat, ls, ...), /sbin/init, /etc/os-release with the chosen ID/NAME,
/etc/fstab with a root line and a swap line, /etc/passwd, and placeholder /boot/vmlinuz and
/boot/initrd.img. `layout="fs"` gives the bare filesystem image; `layout="disk"` a raw disk
with an MBR and the filesystem as partition 1 (at 1 MiB). `fmt="qcow2"` converts with qemu-img.
`build_context_iso()` makes a one-context CONTEXT iso (context.sh) with xorriso.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid as uuidlib
from pathlib import Path

from bmm_lab import LabError
from bmm.runner import run

BUSYBOX = "/bin/busybox"
APPLETS = (
    "sh", "ash", "cat", "ls", "echo", "mount", "umount", "hostname", "uname", "ps", "sleep", "reboot",
    "poweroff", "halt", "mkdir", "rm", "cp", "mv", "grep", "sed", "id", "true", "false", "dd", "head",
    "tail", "wc", "df", "sync", "env", "test", "[", "ln", "chmod", "touch", "vi", "md5sum", "sha256sum",
    "stat", "date", "find", "xargs", "tr", "cut", "awk", "sort", "uniq", "tee", "ip", "ifconfig", "free",
    "uptime", "whoami", "which", "less", "more", "du", "readlink", "basename", "dirname", "printf",
)
SBIN_APPLETS = ("init", "reboot", "poweroff", "halt", "ifconfig", "ip", "swapon", "swapoff")
MIB = 2**20


def _parse_size(size: str | int) -> int:
    if isinstance(size, int):
        return size
    from bmm_lab.rack import parse_size
    return parse_size(size)


def build_root(root: Path, *, os_id: str, name: str, version: str = "1", hostname: str | None = None,
               authorized_keys: str | None = None, fs_uuid: str | None = None,
               extra_files: dict[str, str | bytes] | None = None) -> None:
    """Populate a directory with a tiny busybox OS."""
    if not Path(BUSYBOX).exists():
        raise LabError(f"{BUSYBOX} is missing (apt-get install busybox-static)")
    for d in ("bin", "sbin", "etc", "root", "dev", "proc", "sys", "tmp", "run", "boot", "var/log", "usr/bin", "mnt"):
        (root / d).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "tmp", 0o1777)
    os.chmod(root / "root", 0o700)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    for a in APPLETS:
        link = root / "bin" / a
        if not link.exists():
            link.symlink_to("busybox")
    for a in SBIN_APPLETS:
        link = root / "sbin" / a
        if not link.exists():
            link.symlink_to("../bin/busybox")
    pretty = f"{name} {version}"
    (root / "etc" / "os-release").write_text(
        f'PRETTY_NAME="{pretty}"\nNAME="{name}"\nVERSION_ID="{version}"\nID={os_id}\n'
        f'HOME_URL="https://github.com/bmm"\n')
    (root / "etc" / "fstab").write_text(
        "# <file system> <mount point> <type> <options> <dump> <pass>\n"
        f"UUID={fs_uuid or uuidlib.uuid4()} / ext4 errors=remount-ro 0 1\n"
        f"UUID={uuidlib.uuid4()} none swap sw 0 0\n")
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\n")
    (root / "etc" / "shadow").write_text("root:*:19000:0:99999:7:::\n")
    os.chmod(root / "etc" / "shadow", 0o600)
    (root / "etc" / "hostname").write_text((hostname or os_id) + "\n")
    (root / "etc" / "inittab").write_text("::sysinit:/bin/hostname -F /etc/hostname\n::ctrlaltdel:/sbin/reboot\n")
    (root / "boot" / "vmlinuz").write_bytes(b"bmm lab placeholder kernel\n")
    (root / "boot" / "initrd.img").write_bytes(b"bmm lab placeholder initrd\n")
    if authorized_keys:
        ssh = root / "root" / ".ssh"
        ssh.mkdir(mode=0o700, exist_ok=True)
        (ssh / "authorized_keys").write_text(authorized_keys.rstrip("\n") + "\n")
        os.chmod(ssh / "authorized_keys", 0o600)
    for rel, content in (extra_files or {}).items():
        p = root / rel.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content)


def build_image(path: str | Path, *, os_id: str = "bmmtest", name: str = "bmm test OS", version: str = "1",
                layout: str = "fs", fmt: str = "raw", size: str | int = "32M", hostname: str | None = None,
                authorized_keys: str | None = None, label: str = "rootfs",
                extra_files: dict[str, str | bytes] | None = None) -> Path:
    """Build a bootable tenant image at path; return it."""
    if layout not in ("fs", "disk"):
        raise LabError(f"image layout must be fs or disk, not {layout!r}")
    if fmt not in ("raw", "qcow2"):
        raise LabError(f"image format must be raw or qcow2, not {fmt!r}")
    path = Path(path)
    fs_bytes = _parse_size(size)
    fs_bytes -= fs_bytes % MIB
    if fs_bytes < 8 * MIB:
        raise LabError("an image needs at least 8M")
    fs_uuid = str(uuidlib.uuid4())
    with tempfile.TemporaryDirectory(prefix="bmm-image-", dir=path.parent) as tmp:
        tmp = Path(tmp)
        root = tmp / "root"
        root.mkdir()
        build_root(root, os_id=os_id, name=name, version=version, hostname=hostname,
                   authorized_keys=authorized_keys, fs_uuid=fs_uuid, extra_files=extra_files)
        fs = tmp / "fs.img"
        run(["mkfs.ext4", "-q", "-F", "-L", label, "-U", fs_uuid, "-d", str(root), str(fs),
             str(fs_bytes // 1024) + "k"], timeout=60)
        raw = fs
        if layout == "disk":
            raw = tmp / "disk.img"
            with open(raw, "wb") as out, open(fs, "rb") as src:
                out.truncate(MIB + fs_bytes)
                out.seek(MIB)
                while chunk := src.read(4 * MIB):
                    out.write(chunk)
            run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(raw)],
                input=f"label: dos\nstart=2048, size={fs_bytes // 512}, type=83, bootable\n", timeout=30)
        if fmt == "qcow2":
            run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(path)], timeout=120)
        else:
            os.replace(raw, path)
    return path


def build_context_iso(path: str | Path, *, ssh_public_key: str | None = None, hostname: str | None = None,
                      extra: dict[str, str] | None = None) -> Path:
    """A one-context CONTEXT iso9660 holding context.sh (the way OpenNebula builds it)."""
    import shlex
    path = Path(path)
    values = {}
    if ssh_public_key:
        values["SSH_PUBLIC_KEY"] = ssh_public_key.strip()
    if hostname:
        values["SET_HOSTNAME"] = hostname
    values.update(extra or {})
    with tempfile.TemporaryDirectory(prefix="bmm-ctx-", dir=path.parent) as tmp:
        ctx = Path(tmp) / "context.sh"
        ctx.write_text("# Context variables generated by OpenNebula\n" +
                       "".join(f"{k}={shlex.quote(v)}\n" for k, v in values.items()))
        run(["xorriso", "-as", "mkisofs", "-quiet", "-V", "CONTEXT", "-J", "-R", "-o", str(path), tmp],
            timeout=60)
    return path
