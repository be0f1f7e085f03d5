"""The lab's netboot boards (the Tilera shape) and the proxy services they boot from.

A board is a network namespace (made by the lab core) that, at power-on, behaves like a
TILEmpower board:

1. It fetches its boot file (`vmlinux_<board>`) over real TFTP, with the tftp-hpa client run
   inside the board's netns, from the lab's `in.tftpd`. No file, no boot: the board stays
   powered and unbooted, and says why in DIR/boards/<name>/console.log.
2. The boot file is a small text "kernel" (see KERNEL FORMAT below) whose `TLR_ROOT=` line
   picks the root: `nfs` (the export `fs_<board>` that nfs-ganesha publishes; checked with a
   real NFS client, `nfs-ls`, from the board's netns), `tmpfs` (a copy of the board's built-in
   initramfs, the first stage of the two-stage boot) or `/dev/sda1` (the board's disk, an ext4
   image on a loop device; the second stage).
3. It then "runs": pid 1 (`python -m bmm_lab.netboot init SPEC`) in new pid/mount/uts
   namespaces inside the board's netns mounts the root on /mnt/root (a node-private tmpfs on
   /mnt), gives it /proc, a minimal /dev with /dev/sda1, and starts the host's sshd with
   `ChrootDirectory /mnt/root`. Keys: the root's own /root/.ssh/authorized_keys plus the lab
   key (DIR/ssh/authorized_keys). reboot(2) in the board ends only its pid namespace, and the
   board boots again from TFTP, as firmware would.

KERNEL FORMAT (a "vmlinux" the lab understands; docs/lab-internals.md, "Boards"):

    # any comment
    BMM_LAB_KERNEL=1
    TLR_ROOT=nfs | tmpfs | /dev/sda1
    NFS_ROOT=<path>            optional with TLR_ROOT=nfs; default <nfs_root>/fs_<board>

Services (one set per lab, `NetbootServices`): `in.tftpd -L` serving DIR/netboot/tftpboot and
one `ganesha.nfsd` (FSAL VFS, NFSv3 over TCP) exporting DIR/netboot/nfsroot, the parent of every
`fs_<board>`. In a lab they listen on the lab's board ports at the proxy's own address
10.X.0.1 (the PDU at 10.X.0.2), both put on the root namespace's `lo` by `prepare()`: unique
per lab, reached by the boards through their gateway and by the host directly, and never in
conflict with another lab's or a stray client's sockets on the same port numbers. The NFS
export only admits 127.0.0.1 and the lab net. NFS clients name the ports:
`nfs://10.X.0.1<path>?nfsport=P&mountport=Q` (rpcbind runs only while ganesha starts,
unless the host already had one).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tarfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from bmm.errors import BmmError
from bmm_lab import HOST_LOCK, IMPORT_PATH, LabError, file_lock
from bmm_lab.addresses import (PORT_MOUNT, PORT_NFS, PORT_PDU_SSH, PORT_PDU_TELNET, PORT_TFTP, board_port, clients,
                               ensure_addr, pdu_addr, proxy_addr, remove_addr)
from bmm_lab.state import netboot_dir
from bmm.runner import run

from bmm_lab.machine import Machine
from bmm_lab.nodeinit import chroot_users, populate_dev, supervise_sshd


BOARD_MNT = "/mnt"            # node-private tmpfs inside the board's mount namespace
BOARD_ROOT = "/mnt/root"      # the board's root: sshd ChrootDirectory
ROOT_KINDS = ("nfs", "tmpfs", "/dev/sda1")
SDA_SIZE = 256 * 1024 * 1024
TMPFS_SIZE = "512m"
# What a booted board's OS reads about its hardware (emulated; BoardInit.hardware_view).
BOARD_CPUS = 64                  # the TILEPro64's 8x8 tiles
BOARD_MHZ = 866
BOARD_MEMORY_MB = 16384          # the inventory's figure
BOARD_SEEN_MEMORY_KB = 16218 * 1024   # what its Linux sees (the blueprint's memory_mb)
REPO = IMPORT_PATH

FETCH_TIMEOUT = 15.0
FETCH_TRIES = 3
SSH_UP_TIMEOUT = 30.0
KILL_TIMEOUT = 5.0


# ---------------------------------------------------------------------------------------------
# Paths and small helpers




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


def _ns_argv(ns: str | None, argv: list[str]) -> list[str]:
    if not ns:
        return list(argv)
    try:
        from bmm_lab.netns import ns_exec_argv
    except ImportError:  # pragma: no cover
        return ["ip", "netns", "exec", ns, *argv]
    return ns_exec_argv(ns, list(argv))


def _check_path_word(value: str, what: str) -> str:
    """Paths that go into sshd/ganesha config files: no whitespace, quotes, % or control chars."""
    if not value or re.search(r'[\s"\'%\\]', value) or any(ord(c) < 32 for c in value):
        raise LabError(f"{what} {value!r} cannot be used in a config file (spaces, quotes or %)")
    return value


def _ssh_keygen(path: Path, comment: str) -> None:
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], timeout=30)


def host_lock(timeout: float = 60.0):
    """The host-wide lab lock (shared with the lab core): serialises rpcbind/ganesha start."""
    return file_lock(HOST_LOCK, wait=timeout, what="the host-wide lab lock")


def _tcp_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _ssh_banner(host: str, port: int, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            return s.recv(4).startswith(b"SSH-")
    except OSError:
        return False


def _stop_process(proc: subprocess.Popen, timeout: float, sig: int = signal.SIGTERM) -> None:
    """Signal a process (its whole group when it leads one), then SIGKILL after timeout."""
    if proc.poll() is not None:
        return

    def send(s):
        try:
            if os.getpgid(proc.pid) == proc.pid:
                os.killpg(proc.pid, s)
            else:
                proc.send_signal(s)
        except ProcessLookupError:
            pass

    send(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


# ---------------------------------------------------------------------------------------------
# Board root file systems


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


# ---------------------------------------------------------------------------------------------
# Lab-wide services: tftpd-hpa and nfs-ganesha


class NetbootServices:
    """The proxy's TFTP and NFS servers for one lab. start() / stop(); every process is
    started with lab paths on its command line and stopped by pid."""

    def __init__(self, lab_dir: Path | str, *, tftp_port: int, nfs_port: int, mount_port: int,
                 clients: list[str] | tuple[str, ...] = ("127.0.0.1",), listen: str = "127.0.0.1",
                 spawn=None, log=None):
        self.dir = Path(lab_dir)
        self.tftp_port = tftp_port
        self.nfs_port = nfs_port
        self.mount_port = mount_port
        self.clients = list(clients)
        self.listen = listen
        self.address = "127.0.0.1" if listen == "0.0.0.0" else listen     # where clients connect
        self._spawn = spawn
        self._log = log or (lambda msg: None)
        self.tftp_root = tftp_root(self.dir)
        self.nfs_root = nfs_root(self.dir)
        self.ganesha_dir = ganesha_dir(self.dir)
        self.tftpd: subprocess.Popen | None = None
        self.ganesha: subprocess.Popen | None = None

    # spawn through the daemon (own process group, killed on shutdown) or by ourselves
    def _start(self, argv: list[str], name: str, **kw) -> subprocess.Popen:
        kw.setdefault("stdin", subprocess.DEVNULL)
        try:
            if self._spawn is not None:
                return self._spawn(argv, name, **kw)
            return subprocess.Popen([str(a) for a in argv], start_new_session=True, **kw)
        except FileNotFoundError:
            raise LabError(f"{argv[0]} is not installed (needed for the lab's boards)") from None

    def start(self) -> "NetbootServices":
        try:
            self._start_tftpd()
            self._start_ganesha()
        except BaseException:
            self.stop()
            raise
        self._log(f"netboot: tftpd {self.listen}:{self.tftp_port} ({self.tftp_root}), "
                  f"nfs {self.listen}:{self.nfs_port}/mount {self.mount_port} ({self.nfs_root})")
        return self

    def stop(self) -> None:
        if self.ganesha is not None:
            _stop_process(self.ganesha, 3.0)     # v3 only, graceless: nothing to flush
            self.ganesha = None
        if self.tftpd is not None:
            _stop_process(self.tftpd, 3.0)
            self.tftpd = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- TFTP ----------------------------------------------------------------------------------

    def _start_tftpd(self) -> None:
        self.tftp_root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.tftp_root, 0o755)
        probe = self.tftp_root / "bmm-lab-tftp-probe"
        probe.write_text("ok\n")
        os.chmod(probe, 0o644)
        log_path = netboot_dir(self.dir) / "tftpd.log"
        with open(log_path, "ab") as log_fh:
            self.tftpd = self._start(
                ["in.tftpd", "-L", "-v", "-s", str(self.tftp_root), "-a", f"{self.listen}:{self.tftp_port}"],
                "tftpd", stdout=log_fh, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        out = netboot_dir(self.dir) / "tftp-probe.out"
        while True:
            if self.tftpd.poll() is not None:
                raise LabError(f"in.tftpd exited at once (exit {self.tftpd.returncode}); is UDP port "
                               f"{self.tftp_port} in use?")
            ok, why = tftp_get(self.address, self.tftp_port, probe.name, out, timeout=3)
            if ok:
                out.unlink(missing_ok=True)
                return
            if time.monotonic() > deadline:
                raise LabError(f"in.tftpd on port {self.tftp_port} does not serve files: {why}")
            time.sleep(0.2)

    # -- NFS -----------------------------------------------------------------------------------

    @property
    def exports_dir(self) -> Path:
        return exports_dir(self.dir)

    @property
    def probe_dir(self) -> Path:
        """A small export of the proxy's own, for readiness checks: never a board's root."""
        return netboot_dir(self.dir) / "nfsprobe"

    def ganesha_config(self) -> str:
        probe = _check_path_word(str(self.probe_dir), "NFS probe directory")
        exports = _check_path_word(str(self.exports_dir), "NFS exports directory")
        clients = ", ".join(self.clients)
        return f"""# bmm lab: nfs-ganesha for the boards (generated)
NFS_CORE_PARAM {{
    Protocols = 3;
    Bind_addr = {self.listen};
    NFS_Port = {self.nfs_port};
    MNT_Port = {self.mount_port};
    Enable_NLM = false;
    Enable_RQUOTA = false;
    Enable_UDP = false;
}}
NFSV4 {{
    Graceless = true;
}}
NFS_KRB5 {{
    Active_krb5 = false;
}}
EXPORT {{
    Export_Id = 1;
    Path = "{probe}";
    Pseudo = "{probe}";
    Protocols = 3;
    Transports = TCP;
    SecType = sys;
    Squash = Root_Squash;
    Access_Type = None;
    CLIENT {{
        Clients = {clients};
        Access_Type = RO;
    }}
    FSAL {{
        Name = VFS;
    }}
}}
# one EXPORT per board, for that board's address only
%dir "{exports}"
"""

    @property
    def pid_file(self) -> Path:
        return self.ganesha_dir / "ganesha.pid"

    def _start_ganesha(self) -> None:
        for d in (self.nfs_root, self.probe_dir):
            d.mkdir(parents=True, exist_ok=True)
            os.chmod(d, 0o755)
        (self.probe_dir / "ready").write_text("ok\n")
        self.ganesha_dir.mkdir(parents=True, exist_ok=True)
        self.exports_dir.mkdir(parents=True, exist_ok=True)
        conf = self.ganesha_dir / "ganesha.conf"
        conf.write_text(self.ganesha_config())
        log_path = self.ganesha_dir / "ganesha.log"
        pid_path = self.pid_file
        # ganesha must register with rpcbind to start; clients then use explicit ports
        with host_lock():
            rpcbind = None
            if not _tcp_open("127.0.0.1", 111):
                rpcbind = self._start(["rpcbind", "-f"], "rpcbind",
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                deadline = time.monotonic() + 5
                while not _tcp_open("127.0.0.1", 111):
                    if rpcbind.poll() is not None or time.monotonic() > deadline:
                        _stop_process(rpcbind, 2)
                        raise LabError("rpcbind did not start (ganesha needs it to register)")
                    time.sleep(0.05)
            try:
                with open(self.ganesha_dir / "ganesha.out", "ab") as out:
                    self.ganesha = self._start(
                        ["ganesha.nfsd", "-F", "-f", str(conf), "-L", str(log_path), "-p", str(pid_path),
                         "-N", "NIV_EVENT"],
                        "ganesha", stdout=out, stderr=subprocess.STDOUT)
                self._wait_nfs()
            finally:
                if rpcbind is not None:
                    _stop_process(rpcbind, 3)

    def _wait_nfs(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        url = nfs_url(self.address, self.probe_dir, self.nfs_port, self.mount_port)
        why = "no answer"
        while True:
            if self.ganesha.poll() is not None:
                raise LabError(f"ganesha.nfsd exited at once (exit {self.ganesha.returncode}): "
                               f"{_last_log_line(self.ganesha_dir / 'ganesha.log')}")
            if _tcp_open(self.address, self.mount_port, 0.5):
                res = run(["nfs-ls", url], timeout=10, check=False)
                if res.ok:
                    return
                why = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["nfs-ls failed"]
                why = why[0]
            if time.monotonic() > deadline:
                raise LabError(f"ganesha.nfsd does not export {self.probe_dir} within {timeout:g} s: {why}")
            time.sleep(0.3)

    def url(self, path: Path | str, server: str | None = None) -> str:
        return nfs_url(server or self.address, path, self.nfs_port, self.mount_port)


def _last_log_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines()
                 if ":CRIT :" in line or ":MAJ :" in line or ":FATAL :" in line]
    except OSError:
        return "no log"
    interesting = [line for line in lines if "DBUS" not in line]
    return (interesting or lines or ["no error logged"])[-1].split(" : ")[-1].strip()


def tftp_get(server: str, port: int, remote: str, local: Path | str, *, ns: str | None = None,
             timeout: float = FETCH_TIMEOUT) -> tuple[bool, str]:
    """Fetch one file with the tftp-hpa client (in netns `ns` when given). (ok, why-not).
    tftp-hpa exits 0 even on errors, so its output decides; a failed fetch leaves no file."""
    local = Path(local)
    local.unlink(missing_ok=True)
    argv = _ns_argv(ns, ["tftp", "-m", "binary", server, str(port), "-c", "get", remote, str(local)])
    try:
        res = run(argv, timeout=timeout, check=False)
    except LabError:
        raise
    except Exception as exc:  # TimeoutExpired / FatalError from the runner
        local.unlink(missing_ok=True)
        return False, getattr(exc, "reason", str(exc))
    text = (res.stdout + "\n" + res.stderr).strip()
    if res.returncode != 0 or re.search(r"(?i)error|timed out|refused|unreachable", text) \
            or not local.exists():
        local.unlink(missing_ok=True)
        return False, (text.splitlines()[-1] if text else f"tftp exit {res.returncode}")
    return True, ""


# ---------------------------------------------------------------------------------------------
# The board machine


@dataclass
class BoardSpec:
    """Everything one board needs; `from_node()` builds it from a lab.json node entry."""

    name: str
    lab_dir: Path
    ns: str | None                 # the board's network namespace (None: the root namespace)
    addr: str                      # the board's address (sshd listens there)
    server: str                    # the proxy's address as the board sees it (TFTP, NFS)
    tftp_port: int
    nfs_port: int
    mount_port: int
    board: str | None = None       # id in file names (vmlinux_<board>, fs_<board>); default name
    boot_file: str | None = None   # default vmlinux_<board>
    ssh_port: int = 22
    lab_authorized_keys: Path | None = None

    @property
    def board_id(self) -> str:
        return str(self.board if self.board is not None else self.name)

    @property
    def dir(self) -> Path:
        return board_dir(self.lab_dir, self.name)

    @property
    def kernel_name(self) -> str:
        return self.boot_file or f"vmlinux_{self.board_id}"

    @property
    def export(self) -> Path:
        return nfs_root(self.lab_dir) / f"fs_{self.board_id}"

    @property
    def sda_image(self) -> Path:
        return self.dir / "sda1.img"

    @property
    def console(self) -> Path:
        return self.dir / "console.log"

    @property
    def sshd_config(self) -> Path:
        return self.dir / "sshd_config"

    @property
    def initramfs(self) -> Path:
        return self.dir / "initramfs"

    @classmethod
    def from_node(cls, lab: dict, node: dict) -> "BoardSpec":
        lab_dir = Path(lab["dir"])
        return cls(
            name=node["name"], lab_dir=lab_dir, ns=node.get("ns"), addr=node["addr"],
            server=proxy_addr(lab) if lab.get("net") else (node.get("host_addr") or "127.0.0.1"),
            tftp_port=board_port(lab, PORT_TFTP), nfs_port=board_port(lab, PORT_NFS),
            mount_port=board_port(lab, PORT_MOUNT), board=node.get("board"),
            boot_file=node.get("boot_file"),
            lab_authorized_keys=lab_dir / "ssh" / "authorized_keys",
        )


def prepare_board(spec: BoardSpec, *, authorized_keys: str, listen: str = "0.0.0.0") -> None:
    """Build a board's files (idempotent): dirs, ssh host key, sshd_config, its initramfs, the
    export fs_<board> (a bootable busybox root unless it already has one), the boot files
    vmlinux_<board>_{nfs,1,2} (+ vmlinux_<board> = the NFS one, unless present) and the disk
    image behind /dev/sda1 (ext4)."""
    d = spec.dir
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o755)
    (d / "tftp").mkdir(exist_ok=True)
    hostkey = d / "ssh_host_ed25519_key"
    _ssh_keygen(hostkey, f"bmm-lab-{spec.name}")
    extra_keys = str(spec.lab_authorized_keys) if spec.lab_authorized_keys else ""
    for p in (str(hostkey), str(spec.sshd_config), extra_keys):
        if p:
            _check_path_word(p, "lab path")
    spec.sshd_config.write_text(f"""# bmm lab board {spec.name} (generated)
Port {spec.ssh_port}
ListenAddress {listen}
HostKey {hostkey}
PidFile none
ChrootDirectory {BOARD_ROOT}
AuthorizedKeysFile {BOARD_ROOT}/root/.ssh/authorized_keys {extra_keys}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
UseDNS no
PrintMotd no
PrintLastLog no
X11Forwarding no
AllowTcpForwarding no
SetEnv PATH=/bin:/sbin:/usr/bin:/usr/sbin
Subsystem sftp internal-sftp
""")
    res = run(["/usr/sbin/sshd", "-t", "-f", str(spec.sshd_config)], timeout=15, check=False)
    if not res.ok:
        raise LabError(f"sshd_config of the board is invalid: {res.stderr.strip()}", node=spec.name)
    if not (spec.initramfs / "bin/busybox").exists():
        populate_root(spec.initramfs, hostname=spec.name, authorized_keys=authorized_keys,
                      label="bmm lab board installer (tmpfs)", marker=f"{spec.name} stage1 tmpfs")
    if not (spec.export / "bin").exists():
        populate_root(spec.export, hostname=spec.name, authorized_keys=authorized_keys,
                      label="bmm lab board OS (NFS root)", marker=f"{spec.name} nfsroot")
    tftp = tftp_root(spec.lab_dir)
    tftp.mkdir(parents=True, exist_ok=True)
    b = spec.board_id
    write_kernel(tftp / f"vmlinux_{b}_nfs", "nfs", comment=f"{spec.name}, NFS root fs_{b}")
    write_kernel(tftp / f"vmlinux_{b}_1", "tmpfs", comment=f"{spec.name}, stage 1 (tmpfs root)")
    write_kernel(tftp / f"vmlinux_{b}_2", "/dev/sda1", comment=f"{spec.name}, stage 2 (root on sda1)")
    if spec.boot_file is None and not (tftp / spec.kernel_name).exists():
        shutil.copy2(tftp / f"vmlinux_{b}_nfs", tftp / spec.kernel_name)
    if not spec.sda_image.exists():
        with open(spec.sda_image, "wb") as fh:
            fh.truncate(SDA_SIZE)
        run(["mkfs.ext4", "-q", "-F", "-L", f"{b}-sda1"[:16], str(spec.sda_image)], timeout=60)


class BoardMachine(Machine):
    """A netboot board behind a PDU outlet (implements the lab's Machine interface).

    power_on() applies power and returns; the board then boots in a thread (TFTP, root check,
    sshd). power_off() is a hard off: the board's namespaces die with everything in them.
    reset, soft_off (a board has no ACPI: the outlet is the only switch) and os_request are
    the Machine defaults."""

    def __init__(self, spec: BoardSpec, *, spawn=None, log=None):
        self.spec = spec
        self.name = spec.name
        self._spawn = spawn
        self._log = log or (lambda msg: None)
        self._lock = threading.RLock()
        self._powered = False
        self._state = "off"
        self._detail = ""
        self._gen = 0
        self._proc: subprocess.Popen | None = None
        self._loop: str | None = None
        self._console_lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    # -- Machine interface ---------------------------------------------------------------------

    def powered(self) -> bool:
        return self._powered

    def state(self) -> str:
        return self._state

    def detail(self) -> str:
        return self._detail

    def power_on(self) -> None:
        with self._lock:
            if self._powered:
                return
            self._powered = True
            self._gen += 1
            gen = self._gen
            self._set("booting", "power applied")
            self.console("power on")
            t = threading.Thread(target=self._boot_thread, args=(gen,), daemon=True,
                                 name=f"board-{self.name}-boot")
            self._threads = [x for x in self._threads if x.is_alive()] + [t]
            t.start()

    def power_off(self) -> None:
        with self._lock:
            was_powered = self._powered
            self._powered = False
            self._gen += 1
            proc, self._proc = self._proc, None
            if proc is not None:
                self._set("stopping", "power removed")
        if proc is not None:
            _stop_process(proc, KILL_TIMEOUT, sig=signal.SIGKILL)
        with self._lock:
            if not self._powered:
                self._set("off", "")
        if was_powered:
            self.console("power off")

    def close(self) -> None:
        self.power_off()
        for t in list(self._threads):
            t.join(timeout=KILL_TIMEOUT)
        self._detach_loop()

    # -- internals -----------------------------------------------------------------------------

    def _set(self, state: str, detail: str) -> None:
        self._state = state
        self._detail = detail

    def console(self, message: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {message}\n"
        with self._console_lock:
            self.spec.dir.mkdir(parents=True, exist_ok=True)
            with open(self.spec.console, "a") as fh:
                fh.write(line)

    def _current(self, gen: int) -> bool:
        return self._powered and self._gen == gen

    def _fail(self, gen: int, why: str) -> None:
        with self._lock:
            if not self._current(gen):
                return                 # powered off meanwhile: nothing failed
            self._set("failed", why)
        self.console(f"boot failed: {why}")
        self._log(f"{self.name}: boot failed: {why}")

    def _boot_thread(self, gen: int) -> None:
        try:
            while self._current(gen):
                outcome = self._boot_once(gen)
                if outcome != "reboot":
                    return
                with self._lock:
                    if not self._current(gen):
                        return
                    self._set("booting", "rebooting")
        except Exception as exc:  # a boot bug must leave the board clearly failed, never silent
            self._fail(gen, f"internal error: {type(exc).__name__}: {exc}")

    def _boot_once(self, gen: int) -> str:
        """One boot: fetch, check the root, run. Returns 'reboot' when the OS asked for one."""
        s = self.spec
        self._set_if(gen, "booting", f"TFTP: fetching {s.kernel_name} from {s.server}:{s.tftp_port}")
        self.console(f"TFTP from server {s.server}:{s.tftp_port}; our IP address is {s.addr}")
        self.console(f"Filename '{s.kernel_name}'.")
        scratch = s.dir / "tftp" / f"boot.{gen}"
        why = ""
        for attempt in range(1, FETCH_TRIES + 1):
            if not self._current(gen):
                return "off"
            ok, why = tftp_get(s.server, s.tftp_port, s.kernel_name, scratch, ns=s.ns)
            if ok:
                break
            if re.search(r"(?i)not found|access violation|permission", why):
                break                          # the server answered: no retry helps
            time.sleep(1.0)
        else:
            ok = False
        if not ok:
            self.console(f"TFTP error: {why}")
            self._fail(gen, f"no boot file: {s.kernel_name} could not be fetched over TFTP ({why})")
            return "failed"
        data = scratch.read_bytes()
        scratch.unlink(missing_ok=True)
        self.console(f"Bytes transferred = {len(data)}")
        try:
            kernel = parse_kernel(data)
        except LabError as exc:
            self.console(f"Bad boot image: {exc.reason}")
            self._fail(gen, f"{s.kernel_name}: {exc.reason}")
            return "failed"
        self.console(f"Starting kernel ... TLR_ROOT={kernel.root}")
        source = ""
        if kernel.root == "nfs":
            path = kernel.nfs_path or str(s.export)
            self._set_if(gen, "booting", f"NFS: mounting root {s.server}:{path}")
            url = nfs_url(s.server, path, s.nfs_port, s.mount_port)
            try:
                res = run(_ns_argv(s.ns, ["nfs-ls", url]), timeout=20, check=False)
                ok = res.ok
                cause = (res.stderr or res.stdout).strip().splitlines()
                cause = cause[-1] if cause else f"nfs-ls exit {res.returncode}"
            except BmmError as exc:
                ok, cause = False, exc.reason
            if not ok:
                self.console(f"VFS: Unable to mount root fs via NFS ({cause})")
                self._fail(gen, f"NFS root {s.server}:{path} is not exported ({cause})")
                return "failed"
            self.console(f"VFS: Mounted root (nfs filesystem) {s.server}:{path}")
            source = path
        elif kernel.root == "tmpfs":
            source = str(s.initramfs)
            if not (s.initramfs / "bin").exists():
                self._fail(gen, f"the board's initramfs {s.initramfs} is missing")
                return "failed"
        try:
            loop = self._attach_loop()
        except LabError as exc:
            self._fail(gen, exc.reason)
            return "failed"
        spec = {
            "name": s.name, "root": kernel.root, "source": source, "sda": loop,
            "sshd_config": str(s.sshd_config), "tmpfs_size": TMPFS_SIZE,
            "host_pidns": os.readlink("/proc/self/ns/pid"), "lab_dir": str(s.lab_dir),
        }
        spec_path = s.dir / "boot.json"
        spec_path.write_text(json.dumps(spec, indent=1))
        argv = _ns_argv(s.ns, [
            "unshare", "--pid", "--fork", "--kill-child", "--mount-proc", "--mount", "--uts",
            "--propagation", "private", sys.executable, "-m", "bmm_lab.netboot", "init", str(spec_path)])
        env = dict(os.environ)
        env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        with self._lock:
            if not self._current(gen):
                return "off"
            with open(s.console, "ab") as out:
                if self._spawn is not None:
                    proc = self._spawn(argv, f"board-{s.name}", stdout=out, stderr=subprocess.STDOUT, env=env)
                else:
                    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                            stderr=subprocess.STDOUT, env=env, start_new_session=True)
            self._proc = proc
        self._set_if(gen, "booting", f"starting the OS (root {kernel.root})")
        deadline = time.monotonic() + SSH_UP_TIMEOUT
        while not _ssh_banner(s.addr, s.ssh_port, 1.0):
            if proc.poll() is not None or not self._current(gen):
                break
            if time.monotonic() > deadline:
                self._fail(gen, f"sshd did not answer on {s.addr}:{s.ssh_port} within {SSH_UP_TIMEOUT:g} s")
                break
            time.sleep(0.1)
        else:
            root_desc = {"nfs": f"nfs:{source}", "tmpfs": "tmpfs (stage 1)", "/dev/sda1": "/dev/sda1"}
            self._set_if(gen, "running", f"root {root_desc[kernel.root]}, ssh {s.addr}:{s.ssh_port}")
            self.console(f"{s.name} is up: ssh root@{s.addr}")
            self._log(f"{s.name}: running, root {root_desc[kernel.root]}")
        rc = proc.wait()
        with self._lock:
            if not self._current(gen) or self._proc is not proc:
                return "off"
            self._proc = None
        if rc in (129, -signal.SIGHUP):
            self.console("reboot: Restarting system")
            return "reboot"
        if rc in (130, -signal.SIGINT):
            self.console("reboot: System halted")
            self._fail(gen, "halted by its OS (the outlet is still on; cycle it to boot again)")
            return "halted"
        self._fail(gen, f"the board's OS stopped (exit {rc}); see {s.console}")
        return "failed"

    def _set_if(self, gen: int, state: str, detail: str) -> None:
        with self._lock:
            if self._current(gen):
                self._set(state, detail)

    def _attach_loop(self) -> str:
        img = self.spec.sda_image
        if not img.exists():
            raise LabError(f"disk image {img} is missing", node=self.name)
        with self._lock:
            if self._loop:
                res = run(["losetup", "--list", "--noheadings", "-O", "BACK-FILE", self._loop],
                          timeout=10, check=False)
                if res.ok and res.stdout.strip() == str(img):
                    return self._loop
                self._loop = None
            res = run(["losetup", "-f", "--show", str(img)], timeout=20, check=False)
            if not res.ok:
                raise LabError(f"cannot attach {img} to a loop device: {res.stderr.strip()}", node=self.name)
            self._loop = res.stdout.strip()
            return self._loop

    def _detach_loop(self) -> None:
        with self._lock:
            loop, self._loop = self._loop, None
        if loop:
            run(["losetup", "-d", loop], timeout=10, check=False)


# ---------------------------------------------------------------------------------------------
# pid 1 of a booted board (runs inside the board's netns + new pid/mount/uts namespaces)

RB_AUTOBOOT = 0x01234567
RB_POWER_OFF = 0x4321FEDC


def _say(msg: str) -> None:
    sys.stdout.write(f"[{time.strftime('%H:%M:%S')}] {msg}\n")
    sys.stdout.flush()


def _sh(*argv: str) -> None:
    res = subprocess.run(list(argv), capture_output=True, text=True, timeout=60)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {res.stderr.strip() or res.returncode}")


def _resolve_in_root(root: str, path: str, depth: int = 0) -> str | None:
    """Where `path` (symlinks followed as they resolve inside root) lands, or None."""
    if depth > 20:
        return None
    parts = [p for p in path.split("/") if p]
    cur = ""
    for i, part in enumerate(parts):
        full = root + cur + "/" + part
        if os.path.islink(full):
            target = os.readlink(full)
            rest = "/".join(parts[i + 1:])
            base = target if target.startswith("/") else f"{cur}/{target}"
            return _resolve_in_root(root, os.path.normpath(base + ("/" + rest if rest else "")), depth + 1)
        if not os.path.lexists(full):
            return None
        cur = cur + "/" + part
    return root + (cur or "/")


def tile_cpuinfo(cpus: int = BOARD_CPUS, mhz: int = BOARD_MHZ) -> str:
    """/proc/cpuinfo as a TILEPro64 Linux writes it (the layout of arch/tile/kernel/proc.c:
    one header, then one `processor` line per tile)."""
    head = (f"cpu count\t: {cpus}\ncpu list\t: 0-{cpus - 1}\nmodel name\t: TILEPro64\n"
            f"flags\t\t:\ncpu MHz\t\t: {mhz}.000000\nbogomips\t: {2 * mhz - 0.42:.2f}\n\n")
    return head + "\n\n".join(f"processor\t: {n}" for n in range(cpus)) + "\n"


def board_meminfo(total_kb: int = BOARD_SEEN_MEMORY_KB) -> str:
    free = total_kb * 9 // 10
    return (f"MemTotal:       {total_kb:8d} kB\nMemFree:        {free:8d} kB\n"
            f"MemAvailable:   {free:8d} kB\nBuffers:               0 kB\nCached:                0 kB\n"
            "SwapTotal:             0 kB\nSwapFree:              0 kB\n")


class BoardInit:
    def __init__(self, spec: dict):
        self.spec = spec
        import ctypes
        self.libc = ctypes.CDLL(None, use_errno=True)

    def _private(self) -> bool:
        return os.getpid() == 1 and os.readlink("/proc/self/ns/pid") != self.spec["host_pidns"]

    def reboot(self, cmd: int) -> None:
        if not self._private():
            sys.exit(97)             # never reach the real machine
        sys.stdout.flush()
        self.libc.reboot(cmd)        # in a pid namespace: ends this namespace (SIGHUP/SIGINT)
        sys.exit(129 if cmd == RB_AUTOBOOT else 130)

    def mount_root(self) -> None:
        s = self.spec
        _sh("mount", "-t", "tmpfs", "-o", "mode=0755,size=4m", "bmmboard", BOARD_MNT)
        os.mkdir(BOARD_ROOT, 0o755)
        kind = s["root"]
        if kind == "nfs":
            _sh("mount", "--rbind", s["source"], BOARD_ROOT)
        elif kind == "tmpfs":
            _sh("mount", "-t", "tmpfs", "-o", f"mode=0755,size={s['tmpfs_size']}", "rootfs", BOARD_ROOT)
            _sh("cp", "-a", s["source"] + "/.", BOARD_ROOT + "/")
        else:
            try:
                _sh("mount", "-t", "ext4", s["sda"], BOARD_ROOT)
            except RuntimeError as exc:
                _say(f"VFS: Cannot open root device \"sda1\" or unknown-block: {exc}")
                raise RuntimeError("VFS: Unable to mount root fs on /dev/sda1") from None
        missing = [p for p in ("/sbin/init", "/bin/sh") if _resolve_in_root(BOARD_ROOT, p) is None]
        if missing:
            raise RuntimeError(f"No working init found ({', '.join(missing)} missing on root {kind})")
        st = os.stat(BOARD_ROOT)          # sshd's ChrootDirectory: root-owned, not group/world-writable
        if st.st_uid != 0:
            os.chown(BOARD_ROOT, 0, -1)
        if st.st_mode & 0o022:
            os.chmod(BOARD_ROOT, st.st_mode & ~0o022 & 0o7777)

    def make_dev(self) -> None:
        dev = BOARD_ROOT + "/dev"
        populate_dev(dev, _sh, _say)
        sda = self.spec.get("sda")
        if sda:
            # a node of the loop device's own numbers, not a bind mount over a file: a mount
            # point at /dev/sda1 would make mke2fs in the board refuse a "mounted" device
            os.mknod(f"{dev}/sda1", 0o600 | stat.S_IFBLK, os.stat(sda).st_rdev)
        proc = BOARD_ROOT + "/proc"
        if os.path.isdir(proc):
            _sh("mount", "-t", "proc", "proc", proc)
            self.hardware_view()

    def hardware_view(self) -> None:
        """What the board's OS reads about its hardware, in place of this host's: a TILEPro64
        /proc/cpuinfo and /proc/meminfo (files bound over procfs's), and a read-only sysfs of
        the board's netns (its own eth0) whose PCI bus and DMI are empty and whose only
        disk is sda, the size of the lab's sda1 image."""
        for name, text in (("cpuinfo", tile_cpuinfo()), ("meminfo", board_meminfo())):
            view = f"{BOARD_MNT}/{name}"
            with open(view, "w") as f:
                f.write(text)
            _sh("mount", "--bind", "-o", "ro", view, f"{BOARD_ROOT}/proc/{name}")
        sys_dir = BOARD_ROOT + "/sys"
        if not os.path.isdir(sys_dir):
            return
        _sh("mount", "-t", "sysfs", "-o", "ro", "sysfs", sys_dir)
        for masked in ("bus/pci/devices", "class/dmi/id"):
            if os.path.isdir(f"{sys_dir}/{masked}"):
                _sh("mount", "-t", "tmpfs", "-o", "ro,mode=0755,size=16k", "bmmboard", f"{sys_dir}/{masked}")
        block = f"{sys_dir}/block"
        _sh("mount", "-t", "tmpfs", "-o", "mode=0755,size=1m", "bmmboard", block)
        for rel, value in (("sda/size", SDA_SIZE // 512), ("sda/removable", 0), ("sda/ro", 0),
                           ("sda/queue/rotational", 1), ("sda/device/model", "bmm lab sda1.img")):
            os.makedirs(os.path.dirname(f"{block}/{rel}"), exist_ok=True)
            with open(f"{block}/{rel}", "w") as f:
                f.write(f"{value}\n")
        _sh("mount", "-o", "remount,ro", block)

    def users(self) -> None:
        chroot_users(BOARD_ROOT, BOARD_MNT, _sh)

    def hostname(self) -> None:
        """As an init's `hostname -F /etc/hostname`: the root's own name, if it has a valid one."""
        path = _resolve_in_root(BOARD_ROOT, "/etc/hostname")
        try:
            name = open(path).read(256).strip() if path else ""
        except OSError:
            return
        if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.-]{0,62}", name):
            socket.sethostname(name)

    def run(self) -> int:
        s = self.spec
        if not self._private():
            _say("board init: not pid 1 of a private pid namespace; refusing to run")
            return 97
        socket.sethostname(s["name"])
        try:
            self.mount_root()
            self.make_dev()
            self.users()
        except (RuntimeError, OSError) as exc:
            _say(f"Kernel panic - not syncing: {exc}")
            return 3
        self.hostname()
        os.makedirs("/run/sshd", exist_ok=True)
        signal.signal(signal.SIGTERM, lambda *a: self.reboot(RB_AUTOBOOT))
        signal.signal(signal.SIGHUP, lambda *a: self.reboot(RB_AUTOBOOT))
        signal.signal(signal.SIGINT, lambda *a: self.reboot(RB_POWER_OFF))
        signal.signal(signal.SIGUSR1, lambda *a: self.reboot(RB_POWER_OFF))
        signal.signal(signal.SIGUSR2, lambda *a: self.reboot(RB_POWER_OFF))
        name = "Linux"
        try:
            for line in open(BOARD_ROOT + "/etc/os-release"):
                if line.startswith("PRETTY_NAME="):
                    name = shlex.split(line.split("=", 1)[1])[0]
        except (OSError, ValueError, IndexError):
            pass
        _say(f"Welcome to {name}! (root {s['root']})")
        return supervise_sshd(s["sshd_config"], _say, os_name="the board's OS",
                              started=f"{s['name']} login: sshd started")


# ---------------------------------------------------------------------------------------------
# Hooks for the lab core (docs/lab-internals.md, "How the board half plugs in")

PDU_NAME = "pdu1"


def _lab_key_text(lab_dir: Path) -> str:
    pub = lab_dir / "ssh" / "lab_key.pub"
    try:
        return pub.read_text()
    except OSError:
        raise LabError(f"the lab key {pub} is missing (the lab core creates it before boards)") from None














def install_tile_monitor(lab_dir: Path) -> Path:
    """DIR/bin/tile-monitor: the stand-in, with the lab key and known_hosts baked in."""
    bin_dir = lab_dir / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / "tile-monitor"
    env = {
        "BMM_TILE_MONITOR_KEY": str(lab_dir / "ssh" / "lab_key"),
        "BMM_TILE_MONITOR_KNOWN_HOSTS": str(lab_dir / "ssh" / "known_hosts"),
        "PYTHONPATH": REPO,
    }
    lines = ["#!/bin/sh", f"# bmm lab {lab_dir}: tile-monitor stand-in (lab/bmm_lab/tile_monitor.py)"]
    lines += [f"{k}={shlex.quote(v)}; export {k}" for k, v in env.items()]
    lines.append(f'exec {shlex.quote(sys.executable)} -m bmm_lab.tile_monitor "$@"')
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.chmod(tmp, 0o755)
    os.replace(tmp, path)
    return path


def prepare(lab: dict, node: dict) -> None:
    """`bmm lab up`, root namespace, once per board (after its netns exists)."""
    from bmm_lab import pdu
    lab_dir = Path(lab["dir"])
    nb = netboot_dir(lab_dir)
    for d in (nb, tftp_root(lab_dir), nfs_root(lab_dir), nb / "images"):
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o755)
    _check_path_word(str(lab_dir), "lab directory")
    ensure_addr(proxy_addr(lab))
    ensure_addr(pdu_addr(lab))
    pdu.ensure_lab_secret(lab_dir, PDU_NAME)
    install_tile_monitor(lab_dir)
    keys = _lab_key_text(lab_dir)
    spec = BoardSpec.from_node(lab, node)
    prepare_board(spec, authorized_keys=keys)
    # the board's own export, for its address only (bmm replaces and removes it as it deploys)
    from bmm.boot.netboot import GaneshaExports
    from bmm.runner import LocalExecutor
    GaneshaExports(str(exports_dir(lab_dir)), None).add(LocalExecutor(), spec.board_id, str(spec.export),
                                                         node["addr"], reload=False)
    image = sample_image(lab_dir)
    if not image.exists():
        tmp_root = nb / "images" / "board-rootfs"
        populate_root(tmp_root, hostname="board", authorized_keys=keys,
                      label="bmm lab board OS (disk image)", marker="board-rootfs image")
        make_image(tmp_root, image)
        shutil.rmtree(tmp_root)
    mac = ""
    if node.get("ns"):
        res = run(["ip", "-n", node["ns"], "-j", "link", "show", "eth0"], timeout=10, check=False)
        if res.ok:
            try:
                mac = json.loads(res.stdout)[0].get("address", "")
            except (ValueError, IndexError, AttributeError):
                mac = ""
    node.update({
        "board": spec.board_id, "boot_file": spec.kernel_name, "tftp_root": str(tftp_root(lab_dir)),
        "nfs_root": str(nfs_root(lab_dir)), "nfs_export": str(spec.export),
        "sda_image": str(spec.sda_image), "console": str(spec.console), "mac": mac or node.get("mac", ""),
        "pdu": PDU_NAME, "host_key_pub": str(spec.dir / "ssh_host_ed25519_key.pub"),
    })


class _Services:
    def __init__(self, services: NetbootServices):
        self.services = services

    def stop(self) -> None:
        self.services.stop()


def start(fw) -> _Services | None:
    """Daemon: the lab's tftpd and ganesha (only when the lab has boards)."""
    if not any(n.get("kind") == "netboot" for n in fw.lab.get("nodes", [])):
        return None
    ensure_addr(proxy_addr(fw.lab))
    services = NetbootServices(
        fw.dir, tftp_port=fw.board_port(PORT_TFTP), nfs_port=fw.board_port(PORT_NFS),
        mount_port=fw.board_port(PORT_MOUNT), clients=clients(fw.lab), listen=proxy_addr(fw.lab),
        spawn=fw.spawn, log=fw.log)
    return _Services(services.start())


def make_machine(fw, node: dict) -> BoardMachine:
    lab = dict(fw.lab)
    lab.setdefault("dir", str(fw.dir))
    return BoardMachine(BoardSpec.from_node(lab, node), spawn=fw.spawn, log=fw.log)


def inventory(lab: dict, node: dict) -> dict:
    """The board's [nodes.<name>] table (docs/inventory.md)."""
    lab_dir = Path(lab["dir"])
    from bmm_lab import pdu
    table = {
        "kind": "netboot",
        "arch": "tilepro64",
        "model": "TILEmpower (bmm lab board)",
        "cpus": BOARD_CPUS,
        "memory_mb": BOARD_MEMORY_MB,
        "disk_gb": 1,
        "ip": node["addr"],
        "ssh": {
            "address": node["addr"], "port": 22, "user": "root",
            "key": str(lab_dir / "ssh" / "lab_key"),
            "known_hosts": str(lab_dir / "ssh" / "known_hosts"),
            "host_key_policy": "accept-new",
        },
        "power": {
            "driver": "pdu", "host": pdu_addr(lab), "port": board_port(lab, PORT_PDU_TELNET),
            "protocol": "telnet", "user": pdu.LAB_USER,
            "password_file": str(pdu.lab_password_file(lab_dir, PDU_NAME)),
            "outlet": int(node["outlet"]), "dialect": "apc",
        },
        "boot": boot_table(lab, node),
        "hardware": {
            "vendor": "tilera", "cpu_model": "TILEPro64", "topology": "8x8 tiles", "tile_grid": "8x8",
            "lab_sda1": "/dev/sda1 (256 MB, ext4)",
        },
    }
    if node.get("mac"):
        table["macs"] = [node["mac"]]
    return table


def boot_method(node: dict) -> str:
    """Odd boards boot their NFS root, even boards are set up for the two-stage TFTP boot
    (both kinds boot vmlinux_<board> = the NFS kernel when the lab comes up)."""
    return "tftp2stage" if int(node.get("n") or node.get("outlet") or 1) % 2 == 0 else "nfsroot"


def boot_table(lab: dict, node: dict) -> dict:
    lab_dir = Path(lab["dir"])
    common = {
        "tftp_root": str(tftp_root(lab_dir)),
        "tile_monitor": str(lab_dir / "bin" / "tile-monitor"),
        "board": str(node.get("board") or node["name"]),
    }
    if boot_method(node) == "tftp2stage":
        return {"method": "tftp2stage", **common, "rootfs_device": "/dev/sda1",
                "stage_dir": str(stage_dir(lab_dir))}
    return {"method": "nfsroot", **common, "nfs_root": str(nfs_root(lab_dir)),
            "nfs_server": proxy_addr(lab), "exports": "ganesha", "exports_dir": str(exports_dir(lab_dir)),
            "ganesha_pid_file": str(ganesha_dir(lab_dir) / "ganesha.pid")}


def status(lab: dict, node: dict) -> dict:
    lab_dir = Path(lab["dir"])
    from bmm_lab import pdu
    nfs_port, mount_port = board_port(lab, PORT_NFS), board_port(lab, PORT_MOUNT)
    export = node.get("nfs_export") or str(nfs_root(lab_dir) / f"fs_{node.get('board') or node['name']}")
    return {
        "pdu": {
            "name": PDU_NAME, "host": pdu_addr(lab), "port": board_port(lab, PORT_PDU_TELNET),
            "ssh_port": board_port(lab, PORT_PDU_SSH), "outlet": node.get("outlet"),
            "protocol": "telnet", "user": pdu.LAB_USER,
            "password_file": str(pdu.lab_password_file(lab_dir, PDU_NAME)),
        },
        "tftp": {"host": proxy_addr(lab), "port": board_port(lab, PORT_TFTP),
                 "root": str(tftp_root(lab_dir)),
                 "boot_file": node.get("boot_file") or f"vmlinux_{node.get('board') or node['name']}"},
        "nfs": {"host": proxy_addr(lab), "port": nfs_port, "mount_port": mount_port,
                "root": str(nfs_root(lab_dir)), "export": export,
                "url": nfs_url(proxy_addr(lab), export, nfs_port, mount_port)},
        "tftp_root": str(tftp_root(lab_dir)),
        "nfs_export": export,
        "sda_image": node.get("sda_image", ""),
        "console": node.get("console") or str(board_dir(lab_dir, node["name"]) / "console.log"),
        "tile_monitor": str(lab_dir / "bin" / "tile-monitor"),
        "boot_method": boot_method(node),
    }


def cleanup(lab: dict) -> None:
    """`bmm lab down`, after every lab process is gone: detach the boards' loop devices, take
    the proxy's and the PDU's addresses off lo."""
    lab_dir = Path(lab["dir"])
    if any(n.get("kind") == "netboot" for n in lab.get("nodes", [])) and lab.get("net"):
        with contextlib.suppress(LabError):
            remove_addr(proxy_addr(lab))
            remove_addr(pdu_addr(lab))
    for node in lab.get("nodes", []):
        if node.get("kind") != "netboot":
            continue
        img = board_dir(lab_dir, node["name"]) / "sda1.img"
        if not img.exists():
            continue
        res = run(["losetup", "-j", str(img), "-O", "NAME", "--noheadings"], timeout=10, check=False)
        for loop in res.stdout.split():
            run(["losetup", "-d", loop], timeout=10, check=False)


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["init"] and len(argv) == 2:
        with open(argv[1]) as f:
            spec = json.load(f)
        return BoardInit(spec).run()
    parser = argparse.ArgumentParser(prog="python -m bmm_lab.netboot")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("kernel", help="write a lab boot file (vmlinux_*)")
    p.add_argument("path")
    p.add_argument("root", choices=ROOT_KINDS)
    p.add_argument("--nfs-root")
    p = sub.add_parser("populate", help="make a directory a bootable board root")
    p.add_argument("root")
    p.add_argument("--hostname", default="board")
    p.add_argument("--authorized-keys", help="file whose keys go to /root/.ssh/authorized_keys")
    p.add_argument("--marker")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "kernel":
            write_kernel(args.path, args.root, nfs_path=args.nfs_root)
        elif args.cmd == "populate":
            keys = Path(args.authorized_keys).read_text() if args.authorized_keys else ""
            populate_root(args.root, hostname=args.hostname, authorized_keys=keys, marker=args.marker)
    except LabError as exc:
        print(f"netboot: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
