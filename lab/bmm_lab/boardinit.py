"""pid 1 of a booted lab board: `python -m bmm_lab.boardinit SPEC`.

bmm_lab.board.BoardMachine starts it once the board's root is known, with SPEC =
DIR/boards/<name>/boot.json (name, root kind and source, loop device of sda1, sshd_config),
in new pid/mount/uts namespaces inside the board's netns. It mounts the root on /mnt/root (a
node-private tmpfs on /mnt): the NFS export bound, a tmpfs filled from the board's
initramfs, or the ext4 on /dev/sda1; gives it /proc (with a TILEPro64 /proc/cpuinfo and
/proc/meminfo), a read-only sysfs of the board's own, a minimal /dev with /dev/sda1, and
starts the host's sshd with `ChrootDirectory /mnt/root`. Keys: the root's own
/root/.ssh/authorized_keys plus the lab key (DIR/ssh/authorized_keys). reboot(2) in the
board ends only its pid namespace (exit by SIGHUP: reboot; SIGINT: halt) and the machine
boots it again; SIGTERM/SIGHUP ask for a reboot, SIGINT/SIGUSR1/SIGUSR2 for a power-off (as
busybox's init). It refuses to run unless it is pid 1 of a pid namespace of its own.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import stat
import subprocess
import sys
import time

from bmm_lab.board import (BOARD_CPUS, BOARD_MHZ, BOARD_MNT, BOARD_ROOT, BOARD_SEEN_MEMORY_KB,
                           SDA_SIZE)
from bmm_lab.nodeinit import chroot_users, populate_dev, supervise_sshd

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


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 1:
        print("usage: python -m bmm_lab.boardinit SPEC", file=sys.stderr)
        return 2
    with open(argv[0]) as f:
        spec = json.load(f)
    return BoardInit(spec).run()


if __name__ == "__main__":
    sys.exit(main())
