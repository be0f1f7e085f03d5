"""A lab board (the Tilera shape): its spec, its files, and the machine its PDU outlet powers.

A board is a network namespace (made by the lab core) that, at power-on, behaves like a
TILEmpower board (`BoardMachine`):

1. It fetches its boot file (`vmlinux_<board>`) over real TFTP, with the tftp-hpa client run
   inside the board's netns, from the lab's `in.tftpd` (bmm_lab.netservices). No file, no
   boot: the board stays powered and unbooted, and says why in DIR/boards/<name>/console.log.
2. The boot file is a small text "kernel" (KERNEL FORMAT in bmm_lab.boardroot) whose
   `TLR_ROOT=` line picks the root: `nfs` (the export `fs_<board>` that nfs-ganesha
   publishes; checked with a real NFS client, `nfs-ls`, from the board's netns), `tmpfs` (a
   copy of the board's built-in initramfs, the first stage of the two-stage boot) or
   `/dev/sda1` (the board's disk, an ext4 image on a loop device; the second stage).
3. It then "runs": pid 1 (`python -m bmm_lab.boardinit SPEC`, bmm_lab.boardinit) in new
   pid/mount/uts namespaces inside the board's netns mounts that root and starts sshd in it.
   reboot(2) in the board ends only its pid namespace, and the board boots again from TFTP,
   as firmware would.

`BoardSpec` is what one board needs (from its lab.json node entry); `prepare_board()` builds
its files at `bmm lab up`: sshd_config, host key, initramfs, the export fs_<board>, the boot
files and the sda1 image. The constants below are the board's layout and the hardware its OS
sees (bmm_lab.boardinit shows it; bmm_lab.netboot.inventory reports it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from bmm.errors import BmmError
from bmm_lab import IMPORT_PATH, LabError
from bmm_lab.addresses import PORT_MOUNT, PORT_NFS, PORT_TFTP, board_port, proxy_addr
from bmm_lab.boardpaths import board_dir, check_config_path, nfs_root, nfs_url, tftp_root
from bmm_lab.boardroot import parse_kernel, populate_root, write_kernel
from bmm_lab.machine import Machine
from bmm_lab.netns import ns_argv
from bmm_lab.netservices import stop_process, tftp_get
from bmm.runner import run


BOARD_MNT = "/mnt"            # node-private tmpfs inside the board's mount namespace
BOARD_ROOT = "/mnt/root"      # the board's root: sshd ChrootDirectory
SDA_SIZE = 256 * 1024 * 1024
TMPFS_SIZE = "512m"
# What a booted board's OS reads about its hardware (emulated; bmm_lab.boardinit.BoardInit.hardware_view).
BOARD_CPUS = 64                  # the TILEPro64's 8x8 tiles
BOARD_MHZ = 866
BOARD_MEMORY_MB = 16384          # the inventory's figure
BOARD_SEEN_MEMORY_KB = 16218 * 1024   # what its Linux sees (the blueprint's memory_mb)
REPO = IMPORT_PATH

FETCH_TRIES = 3
SSH_UP_TIMEOUT = 30.0
KILL_TIMEOUT = 5.0


def _ssh_keygen(path: Path, comment: str) -> None:
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], timeout=30)


def _ssh_banner(host: str, port: int, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            return s.recv(4).startswith(b"SSH-")
    except OSError:
        return False


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
            check_config_path(p, "lab path")
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
            stop_process(proc, KILL_TIMEOUT, sig=signal.SIGKILL)
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

    def _served_otherwise(self, path: str, listing: str) -> str | None:
        """Why what the export serves is not the directory `path` on this host, or None.

        A real board runs the tree its NFS server serves; this emulation runs `path` itself.
        So it checks that the two agree: the names at the top and /etc/os-release, read
        through the real NFS client. An NFS server can serve another tree than the one on disk
        (nfs-ganesha keeps serving an export's old directory after it was replaced, and caches
        what it read), and the emulation must not hide that."""
        served = sorted(line.split()[-1] for line in listing.splitlines() if line.split())
        try:
            on_disk = sorted(os.listdir(path))
        except OSError as exc:
            return f"the proxy's {path} cannot be read: {exc.strerror}"
        if served != on_disk:
            return f"it lists {len(served)} entries at the top, the proxy's directory {len(on_disk)}"
        try:
            release = (Path(path) / "etc" / "os-release").read_text(errors="replace")
        except OSError:
            return None             # a root without one: the names are all there is to compare
        s = self.spec
        url = nfs_url(s.server, f"{path}/etc/os-release", s.nfs_port, s.mount_port)
        res = run(ns_argv(s.ns, ["nfs-cat", url]), timeout=20, check=False)
        if not res.ok or res.stdout != release:
            return "its /etc/os-release differs from the proxy's"
        return None

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
                res = run(ns_argv(s.ns, ["nfs-ls", url]), timeout=20, check=False)
                ok = res.ok
                cause = (res.stderr or res.stdout).strip().splitlines()
                cause = cause[-1] if cause else f"nfs-ls exit {res.returncode}"
            except BmmError as exc:
                ok, cause = False, exc.reason
            if not ok:
                self.console(f"VFS: Unable to mount root fs via NFS ({cause})")
                self._fail(gen, f"NFS root {s.server}:{path} is not exported ({cause})")
                return "failed"
            other = self._served_otherwise(path, res.stdout)
            if other:
                self.console(f"VFS: the NFS root {s.server}:{path} is not the tree on the proxy ({other})")
                self._fail(gen, f"NFS root {s.server}:{path} serves another tree than the proxy's ({other})")
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
        argv = ns_argv(s.ns, [
            "unshare", "--pid", "--fork", "--kill-child", "--mount-proc", "--mount", "--uts",
            "--propagation", "private", sys.executable, "-m", "bmm_lab.boardinit", str(spec_path)])
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

