"""pid 1 of a lab server's operating system: `python -m bmm_lab.nodeinit SPEC.json`.

The daemon starts it as `ip netns exec <ns> unshare --pid --fork --kill-child --mount-proc
--mount --uts --propagation private python -m bmm_lab.nodeinit SPEC`. It sets the hostname,
builds the node's private mounts, then runs sshd -D as the node's only service.

- home OS: this host's userland; the server's boot dir bind-mounted on /boot; shims for
  reboot/poweroff/halt/shutdown and lspci (and, without device-mapper, the LVM activation
  wrappers) laid over /usr/sbin with a read-only overlayfs; the server's emulated PCI view
  bind-mounted over /sys/bus/pci/devices.
- tenant OS: the LV's filesystem mounted on /mnt/root (a node-private tmpfs on /mnt), with
  /proc, a minimal /dev and the emulated one-context (ssh key, hostname); sshd serves it with
  ChrootDirectory.

reboot(2) in here only ends this pid namespace (the daemon sees SIGHUP = reboot, SIGINT =
poweroff). Like busybox init, SIGTERM asks for a reboot and SIGUSR1/SIGUSR2 for a poweroff.
"""

from __future__ import annotations

import ctypes
import json
import os
import shlex
import signal
import socket
import stat
import subprocess
import sys
import time

RB_AUTOBOOT = 0x01234567
RB_POWER_OFF = 0x4321FEDC
TENANT_MNT = "/mnt"
TENANT_ROOT = "/mnt/root"


def say(msg: str) -> None:
    sys.stdout.write(f"[{time.monotonic():10.3f}] {msg}\n")
    sys.stdout.flush()


def chroot_users(root: str, scratch: str, run) -> None:
    """sshd looks users up before it chroots: bind a passwd holding the chroot's users (root
    at least) plus sshd's own privilege-separation user over /etc/passwd in this namespace."""
    users = []
    try:
        with open(root + "/etc/passwd") as f:
            users = [line.rstrip("\n") for line in f if line.count(":") == 6]
    except OSError:
        pass
    if not any(u.startswith("root:") for u in users):
        users.insert(0, "root:x:0:0:root:/root:/bin/sh")
    with open("/etc/passwd") as f:
        users += [line.rstrip("\n") for line in f if line.startswith("sshd:")]
    with open(scratch + "/passwd", "w") as f:
        f.write("\n".join(users) + "\n")
    run("mount", "--bind", scratch + "/passwd", "/etc/passwd")


def populate_dev(dev: str, run, say) -> None:
    """A minimal /dev for a chrooted OS: the usual character devices, and devpts for sshd's ptys."""
    os.makedirs(dev, exist_ok=True)
    run("mount", "-t", "tmpfs", "-o", "mode=0755,size=1m", "tmpfs", dev)
    for name, major, minor in (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8),
                               ("urandom", 1, 9), ("tty", 5, 0)):
        os.mknod(f"{dev}/{name}", 0o666 | stat.S_IFCHR, os.makedev(major, minor))
        os.chmod(f"{dev}/{name}", 0o666)
    os.mkdir(f"{dev}/pts")
    try:
        run("mount", "-t", "devpts", "-o", "newinstance,ptmxmode=0666,mode=0620", "devpts", f"{dev}/pts")
        os.symlink("pts/ptmx", f"{dev}/ptmx")
    except RuntimeError as exc:
        say(f"devpts: {exc}")


def supervise_sshd(sshd_config: str, say, *, started: str, os_name: str) -> int:
    """Run sshd as the OS's one service and reap orphans (we are pid 1); when sshd dies, the
    OS is dead: return 3."""
    sshd = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", sshd_config], stdin=subprocess.DEVNULL)
    say(started)
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            time.sleep(0.5)
            continue
        if pid == sshd.pid:
            say(f"sshd exited ({status}); {os_name} is dead")
            return 3


def sh(*argv: str) -> None:
    res = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {res.stderr.strip() or res.returncode}")


class Init:
    def __init__(self, spec: dict):
        self.spec = spec
        self.libc = ctypes.CDLL(None, use_errno=True)

    def guard(self) -> None:
        """Refuse to run anywhere but as pid 1 of a private pid namespace."""
        if os.getpid() != 1 or os.readlink("/proc/self/ns/pid") == self.spec["host_pidns"]:
            say("nodeinit: not pid 1 of a private pid namespace; refusing to run")
            sys.exit(97)

    def reboot(self, cmd: int) -> None:
        if os.getpid() != 1 or os.readlink("/proc/self/ns/pid") == self.spec["host_pidns"]:
            sys.exit(97)   # never reach the real machine
        sys.stdout.flush()
        self.libc.reboot(cmd)
        sys.exit(98)

    # --------------------------------------------------------------- home
    def setup_home(self) -> None:
        spec = self.spec
        sh("mount", "--bind", spec["boot_dir"], "/boot")
        if spec.get("lvm_conf") and os.path.exists("/etc/lvm/lvm.conf"):
            # the node's own LVM config: its device filter sees only this server's disk
            sh("mount", "--bind", spec["lvm_conf"], "/etc/lvm/lvm.conf")
        if spec.get("real_sbin"):
            sh("mount", "--bind", "/usr/sbin", spec["real_sbin"])   # the wrappers' way to the real tools
        if spec.get("shims_dir"):
            sh("mount", "-t", "overlay", "overlay", "-o", f"lowerdir={spec['shims_dir']}:/usr/sbin", "/usr/sbin")
        if spec.get("pci_devices") and os.path.isdir("/sys/bus/pci/devices"):
            # the server's emulated PCI view (bmm_lab.server.write_pci_view), read-only
            sh("mount", "--bind", "-o", "ro", spec["pci_devices"], "/sys/bus/pci/devices")
        # the node's own (empty) root home: the host's dotfiles (a shell rc that blocks on a
        # lock, a pyenv) are not the home OS's and must not run in every ssh command
        sh("mount", "-t", "tmpfs", "-o", "mode=0700,size=1m", "tmpfs", "/root")
        say("Welcome to the home OS (this host's userland, private /boot and /root)")

    # --------------------------------------------------------------- tenant
    def resolve_in_root(self, root: str, path: str, depth: int = 0) -> str | None:
        """Follow symlinks of `path` the way they resolve inside `root`."""
        if depth > 20:
            return None
        parts = [p for p in path.split("/") if p]
        cur = ""
        for i, part in enumerate(parts):
            candidate = f"{cur}/{part}"
            full = root + candidate
            if os.path.islink(full):
                target = os.readlink(full)
                rest = "/".join(parts[i + 1:])
                base = target if target.startswith("/") else f"{cur}/{target}"
                return self.resolve_in_root(root, os.path.normpath(base + ("/" + rest if rest else "")), depth + 1)
            if not os.path.lexists(full):
                return None
            cur = candidate
        return root + (cur or "/")

    def setup_tenant(self) -> None:
        spec = self.spec
        sh("mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", TENANT_MNT)
        os.mkdir(TENANT_ROOT, 0o755)
        try:
            sh("mount", spec["root_dev"], TENANT_ROOT)
        except RuntimeError as exc:
            say(f"VFS: Cannot open root device {spec['root_dev']}: {exc}")
            say("Kernel panic - not syncing: VFS: Unable to mount root fs")
            sys.exit(2)
        missing = [p for p in ("/sbin/init", "/bin/sh") if self.resolve_in_root(TENANT_ROOT, p) is None]
        if missing:
            say(f"Kernel panic - not syncing: No working init found ({', '.join(missing)} missing on "
                f"{spec['entry']})")
            sys.exit(2)
        # sshd's ChrootDirectory must be root-owned and not writable by others
        os.chown(TENANT_ROOT, 0, 0)
        os.chmod(TENANT_ROOT, os.stat(TENANT_ROOT).st_mode & ~0o022)
        self.apply_context()
        populate_dev(TENANT_ROOT + "/dev", sh, say)
        proc = TENANT_ROOT + "/proc"
        if os.path.isdir(proc):
            sh("mount", "-t", "proc", "proc", proc)
        chroot_users(TENANT_ROOT, TENANT_MNT, sh)
        name = "Linux"
        try:
            for line in open(TENANT_ROOT + "/etc/os-release"):
                if line.startswith("PRETTY_NAME="):
                    name = shlex.split(line.split("=", 1)[1])[0]
        except (OSError, ValueError, IndexError):
            pass
        say(f"Welcome to {name}!")

    def apply_context(self) -> None:
        """Emulates the guest's one-context package: SSH_PUBLIC_KEY, SET_HOSTNAME."""
        ctx = self.spec.get("context")
        if not ctx:
            return
        key = ctx.get("SSH_PUBLIC_KEY", "").strip()
        if key:
            sshdir = TENANT_ROOT + "/root/.ssh"
            os.makedirs(sshdir, mode=0o700, exist_ok=True)
            path = sshdir + "/authorized_keys"
            existing = open(path).read() if os.path.exists(path) else ""
            with open(path, "a") as f:
                for k in key.splitlines():
                    if k.strip() and k.strip() not in existing:
                        f.write(("" if existing.endswith("\n") or not existing else "\n") + k.strip() + "\n")
                        existing += k.strip() + "\n"
            os.chmod(path, 0o600)
            say("one-context: installed SSH_PUBLIC_KEY for root")
        hostname = ctx.get("SET_HOSTNAME", "").strip() or ctx.get("HOSTNAME", "").strip()
        if hostname:
            socket.sethostname(hostname)
            try:
                with open(TENANT_ROOT + "/etc/hostname", "w") as f:
                    f.write(hostname + "\n")
            except OSError:
                pass
            say(f"one-context: hostname {hostname}")

    # --------------------------------------------------------------- main
    def run(self) -> int:
        self.guard()
        spec = self.spec
        socket.sethostname(spec["hostname"])
        try:
            if spec["mode"] == "home":
                self.setup_home()
            else:
                self.setup_tenant()
        except RuntimeError as exc:
            say(f"boot failed: {exc}")
            return 2
        signal.signal(signal.SIGTERM, lambda *a: self.reboot(RB_AUTOBOOT))
        signal.signal(signal.SIGINT, lambda *a: self.reboot(RB_AUTOBOOT))
        signal.signal(signal.SIGUSR1, lambda *a: self.reboot(RB_POWER_OFF))
        signal.signal(signal.SIGUSR2, lambda *a: self.reboot(RB_POWER_OFF))
        return supervise_sshd(spec["sshd_config"], say, os_name="the OS",
                              started=f"{spec['hostname']} login: sshd on {spec['address']}:22")


def main() -> int:
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    return Init(spec).run()


if __name__ == "__main__":
    sys.exit(main())
