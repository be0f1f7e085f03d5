"""Netboot methods of boards served by a proxy (the Tilera shape): an NFS root, or a two-stage
TFTP boot that unpacks the root filesystem onto the board's own disk.

What a board boots is a file on the proxy: `<tftp_root>/vmlinux_<board>`, fetched over TFTP
at every power-on. The operator provides the boards' kernels, as the blueprint's /tftpboot
does: `vmlinux_<board>_nfs` (root on NFS), `vmlinux_<board>_1` (stage 1: a tmpfs root that can
unpack a root filesystem) and `vmlinux_<board>_2` (stage 2: root on the board's disk); an
instance whose image carries a kernel for the board's architecture in its /boot boots that
one instead (`vmlinux_<board>_vm<id>`, written by the prolog). Pointing the board at a kernel
is an atomic replace of vmlinux_<board> by a copy (a TFTP server may refuse symlinks).

Every file operation runs as a command through the proxy's executor (bmm.transport.proxy), so
the same code serves a remote proxy and the front-end. The operator's files are never
removed; bmm removes what it wrote: vmlinux_<board>, vmlinux_<board>_vm<id>, the board's NFS
root and its export, the staged root filesystems.

NFS exports: one per board, for that board's address only. In production they go to the
kernel NFS server (`/etc/exports.d/bmm-<board>.exports`, then `exportfs -r`); with nfs-ganesha
(the lab's userspace server) each board's EXPORT block is a file `bmm-<board>.conf` in a
directory that ganesha.conf includes with `%dir`, and ganesha re-reads its exports on SIGHUP.
Every file is written beside its place under a name the servers ignore, then renamed.
bmm writes a board's root on the proxy's file system, not through NFS, and ganesha's VFS
back end hears nothing of such changes: its EXPORT blocks say `Attr_Expiration_Time = 0`
(else ganesha serves what it cached for up to a minute: a booting board would see the tree
before the clone or the context), and the root directory itself is never replaced (ganesha
would go on serving the replaced one: vmm_drivers.netboot keeps its inode).
"""

from __future__ import annotations

import uuid
import zlib
from collections.abc import Mapping
from typing import Any

from bmm import settings
from bmm.boot.base import Boot
from bmm.boot.tilemonitor import TileMonitor
from bmm.errors import BmmError
from bmm.settings import Setting
from bmm.transport import executor_node

TIMEOUT = 120
DEFAULT_TFTP_ROOT = "/tftpboot"


COMMON = {
    "tftp_root": Setting(settings.abs_path, "where the boards' kernels live on the proxy (default /tftpboot, "
                                            "the blueprint's)"),
    "tile_monitor": Setting(settings.string, "tile-monitor on the proxy (default: tile-monitor on its PATH)"),
    "tile_monitor_connect": Setting(settings.string_list, 'how tile-monitor reaches the board '
                                                          '(default ["--resume", "--net", "<the board\'s ip>"])'),
    "setup": Setting(settings.command_list, "commands tile-monitor runs on the board once it is up, before bmm "
                                            "waits for its ssh (set MAC/IP, start sshd); {ip} and {mac} are "
                                            "replaced by the board's"),
    "board": Setting(settings.board, "board id in file names (vmlinux_<board>, fs_<board>); default: the node name"),
}


def write_file(ex, path: str, data: bytes, *, mode: str = "0644", tmp_dir: str | None = None) -> None:
    """Atomically replace path on the executor's host: a new file (beside it, or in tmp_dir on
    the same filesystem), then a rename."""
    name = f".{path.rsplit('/', 1)[-1]}.bmm-{uuid.uuid4().hex[:10]}"
    tmp = f"{tmp_dir or path.rsplit('/', 1)[0]}/{name}"
    ex.run(["dd", f"of={tmp}", "conv=excl,fsync", "status=none"], input=data, timeout=TIMEOUT)
    try:
        ex.run(["chmod", mode, tmp], timeout=TIMEOUT)
        ex.run(["mv", "-f", "-T", tmp, path], timeout=TIMEOUT)
    except BmmError:
        ex.run(["rm", "-f", tmp], timeout=TIMEOUT, check=False)
        raise


def copy_file(ex, source: str, path: str) -> None:
    """Atomically replace path by a copy of source (both on the executor's host)."""
    tmp = f"{path.rsplit('/', 1)[0]}/.{path.rsplit('/', 1)[-1]}.bmm-{uuid.uuid4().hex[:10]}"
    ex.run(["cp", "--", source, tmp], timeout=TIMEOUT)
    try:
        ex.run(["mv", "-f", "-T", tmp, path], timeout=TIMEOUT)
    except BmmError:
        ex.run(["rm", "-f", tmp], timeout=TIMEOUT, check=False)
        raise


def exists(ex, path: str) -> bool:
    return ex.run(["test", "-e", path], timeout=TIMEOUT, check=False).ok


class BoardBoot(Boot):
    """What both netboot methods share: the board's boot file and its per-VM kernel."""

    def __init__(self, node: str, table: Mapping[str, Any]):
        super().__init__(node, table)
        self.tftp_root = self.settings.get("tftp_root", DEFAULT_TFTP_ROOT).rstrip("/") or "/"
        self.tile_monitor = self.settings.get("tile_monitor", "tile-monitor")
        self.board = str(self.settings.get("board", node))
        self.setup = [list(c) for c in self.settings.get("setup", ())]

    def monitor(self, ip: str | None) -> TileMonitor:
        connect = self.settings.get("tile_monitor_connect")
        if connect is None:
            if not ip:
                raise BmmError("has no ip in the inventory, and [boot] tile_monitor_connect does not say "
                               "how tile-monitor reaches it", node=self.node)
            connect = ["--resume", "--net", ip]
        return TileMonitor(self.tile_monitor, connect)

    def setup_commands(self, ip: str | None, mac: str | None) -> list[list[str]]:
        fill = {"{ip}": ip or "", "{mac}": mac or ""}
        out = []
        for command in self.setup:
            words = []
            for word in command:
                for key, value in fill.items():
                    word = word.replace(key, value)
                words.append(word)
            out.append(words)
        return out

    @property
    def boot_file(self) -> str:
        return f"{self.tftp_root}/vmlinux_{self.board}"

    def vm_kernel(self, vm_id: int) -> str:
        return f"{self.tftp_root}/vmlinux_{self.board}_vm{vm_id}"

    def kernel_path(self, name: str) -> str:
        return f"{self.tftp_root}/{name}"

    def point_at(self, ex, kernel: str) -> None:
        """The board's next power-on boots `kernel` (a path in tftp_root)."""
        if not exists(ex, kernel):
            raise BmmError(f"the boot file {kernel} is missing on the proxy", node=self.node)
        copy_file(ex, kernel, self.boot_file)

    def forget(self, ex, vm_id: int) -> None:
        """Remove the boot files bmm wrote for this board and VM (the operator's stay)."""
        ex.run(["rm", "-f", "--", self.boot_file, self.vm_kernel(vm_id)], timeout=TIMEOUT)


class NfsRootBoot(BoardBoot):
    method = "nfsroot"
    SETTINGS = {
        **COMMON,
        "nfs_root": Setting(settings.abs_path, "parent of fs_<board> on the proxy (default: tftp_root, as in "
                                               "the blueprint's /tftpboot/fs_<board>)"),
        "nfs_server": Setting(settings.host, "address the board mounts its root from"),
        "kernel": Setting(settings.string, "the NFS-root kernel in tftp_root (default vmlinux_<board>_nfs)"),
        "exports": Setting(settings.choice("kernel", "ganesha"), "the proxy's NFS server: kernel (default) | ganesha"),
        "exports_dir": Setting(settings.abs_path, "kernel: /etc/exports.d (default); ganesha: the directory "
                                                  "ganesha.conf includes with %dir (required)"),
        "ganesha_pid_file": Setting(settings.abs_path, "ganesha: its pid file (SIGHUP re-reads the exports)"),
    }

    @classmethod
    def validate(cls, table: Mapping[str, Any]) -> list[tuple[str, str]]:
        found = super().validate(table)
        if table.get("exports") == "ganesha" and "exports_dir" not in table:
            found.append(("exports_dir", 'required with exports = "ganesha" (the directory ganesha.conf '
                                         "includes with %dir)"))
        return found

    def __init__(self, node: str, table: Mapping[str, Any]):
        super().__init__(node, table)
        self.nfs_root = self.settings.get("nfs_root", self.tftp_root).rstrip("/") or "/"
        self.kernel = self.kernel_path(self.settings.get("kernel", f"vmlinux_{self.board}_nfs"))

    @property
    def root_dir(self) -> str:
        return f"{self.nfs_root}/fs_{self.board}"

    def exports(self) -> "Exports":
        if self.settings.get("exports", "kernel") == "ganesha":
            return GaneshaExports(self.settings["exports_dir"], self.settings.get("ganesha_pid_file"))
        return KernelExports(self.settings.get("exports_dir", "/etc/exports.d"))


class Tftp2StageBoot(BoardBoot):
    method = "tftp2stage"
    SETTINGS = {
        **COMMON,
        "rootfs_device": Setting(settings.abs_path, "where stage 1 unpacks the root fs (default /dev/sda1)"),
        "stage1_kernel": Setting(settings.string, "stage 1 (tmpfs root) in tftp_root (default vmlinux_<board>_1)"),
        "stage2_kernel": Setting(settings.string, "stage 2 (root on the disk) in tftp_root (default vmlinux_<board>_2)"),
        "stage_dir": Setting(settings.abs_path, "where the proxy keeps staged root filesystems "
                                                "(default /var/lib/one/bmm/boards; never a TFTP-served directory)"),
        "mkfs": Setting(settings.string_list, 'stage 1 makes the root fs with this, the device appended '
                                              '(default ["mke2fs", "-F"])'),
    }

    @classmethod
    def validate(cls, table: Mapping[str, Any]) -> list[tuple[str, str]]:
        found = super().validate(table)
        stage, tftp = table.get("stage_dir"), table.get("tftp_root")
        if isinstance(stage, str) and isinstance(tftp, str) and \
                (stage.rstrip("/") + "/").startswith(tftp.rstrip("/") + "/"):
            found.append(("stage_dir", "is inside tftp_root: staged root filesystems hold tenant data, "
                                       "and TFTP would serve them to anyone who asks"))
        return found

    def __init__(self, node: str, table: Mapping[str, Any]):
        super().__init__(node, table)
        self.device = self.settings.get("rootfs_device", "/dev/sda1")
        self.stage1 = self.kernel_path(self.settings.get("stage1_kernel", f"vmlinux_{self.board}_1"))
        self.stage2 = self.kernel_path(self.settings.get("stage2_kernel", f"vmlinux_{self.board}_2"))
        self.stage_dir = self.settings.get("stage_dir", "/var/lib/one/bmm/boards").rstrip("/")
        self.mkfs = list(self.settings.get("mkfs", ["mke2fs", "-F"]))

    def staged_root(self, vm_id: int) -> str:
        return f"{self.stage_dir}/{self.board}-vm{vm_id}-rootfs.tar.gz"

    def staged_context(self, vm_id: int) -> str:
        return f"{self.stage_dir}/{self.board}-vm{vm_id}-context"


# ------------------------------------------------------------------------------ NFS exports

class Exports:
    def add(self, ex, board: str, path: str, client: str, *, reload: bool = True) -> None:
        raise NotImplementedError

    def remove(self, ex, board: str) -> None:
        raise NotImplementedError


class KernelExports(Exports):
    """The kernel NFS server: one /etc/exports.d file per board, then `exportfs -r`."""

    def __init__(self, directory: str = "/etc/exports.d"):
        self.directory = directory.rstrip("/")

    def file(self, board: str) -> str:
        return f"{self.directory}/bmm-{board}.exports"

    @staticmethod
    def line(path: str, client: str) -> str:
        return f"{path} {client}(rw,sync,no_root_squash,no_subtree_check)\n"

    def add(self, ex, board, path, client, *, reload=True):
        ex.run(["mkdir", "-p", self.directory], timeout=TIMEOUT)
        write_file(ex, self.file(board), self.line(path, client).encode())
        if reload:
            ex.run(["exportfs", "-r"], timeout=TIMEOUT)

    def remove(self, ex, board):
        ex.run(["rm", "-f", "--", self.file(board)], timeout=TIMEOUT)
        ex.run(["exportfs", "-r"], timeout=TIMEOUT)


class GaneshaExports(Exports):
    """nfs-ganesha: `<directory>/bmm-<board>.conf` per board (ganesha.conf has `%dir
    <directory>`), then SIGHUP, on which ganesha adds, changes and drops exports to match."""

    def __init__(self, directory: str, pid_file: str | None):
        self.directory = directory.rstrip("/")
        self.pid_file = pid_file

    @staticmethod
    def export_id(board: str) -> int:
        """A stable id per board (ganesha needs one per export; 1..999 are left to the site)."""
        return 1000 + zlib.crc32(board.encode()) % 60000

    @classmethod
    def block(cls, board: str, path: str, client: str) -> str:
        for value in (path, client):
            if not value or any(c in value for c in '"{};#%\n'):
                raise BmmError(f"board {board}: its root path or address cannot go in a ganesha EXPORT block")
        return (f"# bmm: board {board}\nEXPORT {{\n    Export_Id = {cls.export_id(board)};\n"
                f'    Path = "{path}";\n    Pseudo = "{path}";\n    Protocols = 3, 4;\n    Transports = TCP;\n'
                f"    SecType = sys;\n    Attr_Expiration_Time = 0;\n    Squash = No_Root_Squash;\n    Access_Type = None;\n"
                f"    CLIENT {{\n        Clients = {client};\n        Access_Type = RW;\n    }}\n"
                f"    FSAL {{\n        Name = VFS;\n    }}\n}}\n")

    def file(self, board: str) -> str:
        return f"{self.directory}/bmm-{board}.conf"

    def add(self, ex, board, path, client, *, reload=True):
        tmp_dir = f"{self.directory}.tmp"
        ex.run(["mkdir", "-p", self.directory, tmp_dir], timeout=TIMEOUT)
        write_file(ex, self.file(board), self.block(board, path, client).encode(), tmp_dir=tmp_dir)
        if reload:
            self.reload(ex)

    def remove(self, ex, board):
        ex.run(["rm", "-f", "--", self.file(board)], timeout=TIMEOUT)
        self.reload(ex)

    def reload(self, ex) -> None:
        if not self.pid_file:
            return
        pid = ex.run(["cat", "--", self.pid_file], timeout=TIMEOUT, check=False).stdout.strip()
        if not pid.isdigit():
            raise BmmError(f"ganesha's pid file {self.pid_file} names no process", node=executor_node(ex))
        ex.run(["kill", "-HUP", pid], timeout=TIMEOUT)
