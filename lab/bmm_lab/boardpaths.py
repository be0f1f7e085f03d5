"""Where the board half keeps its files under the lab directory DIR, and how it names them.

DIR/netboot (`bmm_lab.state.netboot_dir`) holds what the proxy serves and keeps:
`tftpboot/` (the TFTP root: the boards' boot files), `nfsroot/` (the NFS root, parent of
every board's export `fs_<board>`), `ganesha/` (ganesha's config, log and pid file;
`exports.d/` holds one EXPORT block per board), `stage/` (root filesystems bmm stages for
two-stage boards, never served) and `images/` (the sample disk image). DIR/boards/<name>
holds one board's own files (console.log, sshd_config, host key, initramfs/, sda1.img,
boot.json). Also here: the `nfs://` URL form the NFS clients take (they name the ports), and
the check that a path may go into an sshd or ganesha config file.
"""

from __future__ import annotations

import re
from pathlib import Path

from bmm_lab import LabError
from bmm_lab.state import netboot_dir


def tftp_root(lab_dir: Path | str) -> Path:
    return netboot_dir(lab_dir) / "tftpboot"


def nfs_root(lab_dir: Path | str) -> Path:
    return netboot_dir(lab_dir) / "nfsroot"


def ganesha_dir(lab_dir: Path | str) -> Path:
    return netboot_dir(lab_dir) / "ganesha"


def exports_dir(lab_dir: Path | str) -> Path:
    """Per-board EXPORT blocks, one file each (ganesha.conf `%dir`s it)."""
    return ganesha_dir(lab_dir) / "exports.d"


def stage_dir(lab_dir: Path | str) -> Path:
    """Where bmm keeps staged root filesystems of two-stage boards (never served by TFTP)."""
    return netboot_dir(lab_dir) / "stage"


def board_dir(lab_dir: Path | str, name: str) -> Path:
    return Path(lab_dir) / "boards" / name


def sample_image(lab_dir: Path | str) -> Path:
    """A bootable board root fs as tar.gz (busybox), for the two-stage boot and the drivers."""
    return netboot_dir(lab_dir) / "images" / "board-rootfs.tar.gz"


def nfs_url(server: str, path: Path | str, nfs_port: int, mount_port: int) -> str:
    return f"nfs://{server}{path}?nfsport={nfs_port}&mountport={mount_port}"


def check_config_path(value: str, what: str) -> str:
    """Paths that go into sshd/ganesha config files: no whitespace, quotes, % or control chars."""
    if not value or re.search(r'[\s"\'%\\]', value) or any(ord(c) < 32 for c in value):
        raise LabError(f"{what} {value!r} cannot be used in a config file (spaces, quotes or %)")
    return value

