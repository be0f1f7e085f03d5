"""Netboot methods of boards served by a proxy (the Tilera shape): an NFS root, or a two-stage
TFTP boot that unpacks the root filesystem onto the board's own disk."""

from __future__ import annotations

from bmm import settings
from bmm.boot.base import Boot
from bmm.settings import Setting


class NfsRootBoot(Boot):
    method = "nfsroot"
    SETTINGS = {
        "tftp_root": Setting(settings.abs_path, "where the kernels live on the proxy"),
        "nfs_root": Setting(settings.abs_path, "parent of fs_<board>"),
        "nfs_server": Setting(settings.host, "address the board mounts its root from"),
        "tile_monitor": Setting(settings.abs_path, "path of tile-monitor on the proxy"),
        "board": Setting(settings.board, "board id in file names (fs_<board>); default: the node name"),
    }


class Tftp2StageBoot(Boot):
    method = "tftp2stage"
    SETTINGS = {
        "tftp_root": Setting(settings.abs_path, "where the kernels live on the proxy"),
        "tile_monitor": Setting(settings.abs_path, "path of tile-monitor on the proxy"),
        "board": Setting(settings.board, "board id in file names: vmlinux_<board>_1, vmlinux_<board>_2"),
        "rootfs_device": Setting(settings.abs_path, "where stage 1 unpacks the root fs (/dev/sda1)"),
    }
