"""The proxy's boot services for the lab's boards: TFTP (tftpd-hpa) and NFS (nfs-ganesha).

Services (one set per lab, `NetbootServices`, started by the daemon through
`bmm_lab.netboot.start()`): `in.tftpd -L` serving DIR/netboot/tftpboot and one `ganesha.nfsd`
(FSAL VFS, NFSv3 over TCP) exporting DIR/netboot/nfsroot, the parent of every `fs_<board>`
(one EXPORT per board, for that board's address only, in DIR/netboot/ganesha/exports.d). In a
lab they listen on the lab's board ports at the proxy's own address 10.X.0.1 (the PDU at
10.X.0.2), both put on the root namespace's `lo` by `bmm_lab.netboot.prepare()`: unique per
lab, reached by the boards through their gateway and by the host directly, and never in
conflict with another lab's or a stray client's sockets on the same port numbers. The NFS
export only admits 127.0.0.1 and the lab net. NFS clients name the ports:
`nfs://10.X.0.1<path>?nfsport=P&mountport=Q` (rpcbind runs only while ganesha starts,
unless the host already had one).

Also here: `tftp_get()`, the tftp-hpa client (inside a board's netns when given) that the
boards' firmware and the readiness check use, and `stop_process()`, how the board half stops
the processes it starts.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

from bmm_lab import HOST_LOCK, LabError, file_lock
from bmm_lab.boardpaths import check_config_path, exports_dir, ganesha_dir, nfs_root, nfs_url, tftp_root
from bmm_lab.netns import ns_argv
from bmm_lab.state import netboot_dir
from bmm.runner import run

FETCH_TIMEOUT = 15.0


def host_lock(timeout: float = 60.0):
    """The host-wide lab lock (shared with the lab core): serialises rpcbind/ganesha start."""
    return file_lock(HOST_LOCK, wait=timeout, what="the host-wide lab lock")


def _tcp_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def stop_process(proc: subprocess.Popen, timeout: float, sig: int = signal.SIGTERM) -> None:
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
            stop_process(self.ganesha, 3.0)     # v3 only, graceless: nothing to flush
            self.ganesha = None
        if self.tftpd is not None:
            stop_process(self.tftpd, 3.0)
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
        probe = check_config_path(str(self.probe_dir), "NFS probe directory")
        exports = check_config_path(str(self.exports_dir), "NFS exports directory")
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
                        stop_process(rpcbind, 2)
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
                    stop_process(rpcbind, 3)

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
    argv = ns_argv(ns, ["tftp", "-m", "binary", server, str(port), "-c", "get", remote, str(local)])
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

