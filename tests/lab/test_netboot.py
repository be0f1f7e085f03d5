"""Lab boards (lab/bmm_lab/netboot.py, board.py, boardinit.py, boardroot.py, netservices.py
+ pdu.py + tile_monitor.py) against real peers: the lab daemon with two boards, in.tftpd and
the tftp-hpa client, nfs-ganesha and nfs-ls, the PDU over telnet/ssh (the real binaries
under pexpect), OpenSSH on the boards, the tile-monitor stand-in as the installed
executable."""

import os
import shutil
import subprocess
import time
from pathlib import Path

import pexpect
import pytest

from bmm_lab import LabError, boardpaths, boardroot, netservices
from tests.support import require_lab

BOARD_TOOLS = ("in.tftpd", "tftp", "ganesha.nfsd", "nfs-ls", "rpcbind", "busybox", "sshd", "ssh",
               "telnet", "unshare", "losetup", "mkfs.ext4")


@pytest.fixture(scope="module")
def boards():
    """A fresh lab (tests/lab/conftest.py) with two boards and no servers, always torn down."""
    require_lab(*BOARD_TOOLS)
    from tests.lab.conftest import lab_session
    for handle in lab_session(servers=0, boards=2):
        yield Lab(handle)


class Lab:
    """The conftest's LabHandle plus what board tests need."""

    def __init__(self, handle):
        self.h = handle
        self.dir = handle.dir
        self.key = handle.key

    def node(self, name):
        return self.h.node(name)

    def ssh(self, name, command, timeout=15):
        return self.h.ssh(name, command, timeout=timeout, check=False)

    def wait_ssh(self, name, up=True, timeout=30):
        try:
            self.h.wait_ssh(name, up=up, timeout=timeout)
        except Exception as exc:
            raise AssertionError(f"{exc}\n{self.console(name)[-2000:]}") from None

    def console(self, name):
        return self.h.console(name)

    def pdu_password(self):
        return Path(self.node("board1")["pdu"]["password_file"]).read_text().splitlines()[0]

    def pdu(self, protocol="telnet"):
        return Pdu(self, protocol)

    def tile_monitor(self, *args, timeout=120, env=None):
        return subprocess.run([str(self.dir / "bin" / "tile-monitor"), *args], capture_output=True,
                              text=True, timeout=timeout, env=env)

    def tftp_file(self, name):
        return Path(self.node(name)["tftp"]["root"]) / self.node(name)["tftp"]["boot_file"]


class Pdu:
    """An operator at the PDU's CLI: the real telnet / ssh client under pexpect."""

    def __init__(self, lab: Lab, protocol: str):
        p = lab.node("board1")["pdu"]
        if protocol == "telnet":
            self.child = pexpect.spawn("telnet", [p["host"], str(p["port"])], timeout=20, encoding="utf-8")
            self.child.expect("User Name : ")
            self.child.sendline(p["user"])
            self.child.expect("Password  : ")
        else:
            self.child = pexpect.spawn(
                "ssh", ["-F", "/dev/null", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                        "-o", "PubkeyAuthentication=no", "-o", "LogLevel=ERROR", "-tt",
                        "-p", str(p["ssh_port"]), f"{p['user']}@{p['host']}"], timeout=20, encoding="utf-8")
            self.child.expect("(?i)password:")
        self.child.sendline(lab.pdu_password())
        self.child.expect("apc>")

    def cmd(self, line):
        self.child.sendline(line)
        self.child.expect(r"E\d{3}: [^\r\n]*")
        code = self.child.after
        self.child.expect("apc>")
        assert code.startswith("E000"), f"{line}: {code}"
        return self.child.before

    def outlet_on(self, outlet):
        out = self.cmd(f"olStatus {outlet}")
        assert f"{outlet:2d}: " in out, out
        return out.split(f"{outlet:2d}: ", 1)[1].split("\r")[0].rstrip().endswith(": On")

    def close(self):
        self.child.sendline("exit")
        self.child.expect(pexpect.EOF)


def daemon_state(lab: Lab, name: str) -> dict:
    return lab.h.daemon_status(name)


def wait_state(lab: Lab, name: str, want: str, timeout=30) -> dict:
    return lab.h.wait_state(name, want, timeout=timeout)


# ---------------------------------------------------------------------------------------------


def test_tftp_get_boot_file(boards, tmp_path):
    t = boards.node("board1")["tftp"]
    out = tmp_path / "vmlinux"
    res = subprocess.run(["tftp", "-m", "binary", t["host"], str(t["port"]), "-c", "get", t["boot_file"],
                          str(out)], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0 and "Error" not in res.stdout + res.stderr
    assert out.read_bytes() == (Path(t["root"]) / t["boot_file"]).read_bytes()
    kernel = boardroot.parse_kernel(out.read_bytes())
    assert kernel.root == "nfs"
    # the stage kernels of the two-stage boot are served too; a missing file is a TFTP error
    assert netservices.tftp_get(t["host"], t["port"], "vmlinux_board1_1", tmp_path / "s1")[0]
    assert boardroot.parse_kernel((tmp_path / "s1").read_bytes()).root == "tmpfs"
    res = subprocess.run(["tftp", "-m", "binary", t["host"], str(t["port"]), "-c", "get", "vmlinux_nope",
                          str(tmp_path / "nope")], capture_output=True, text=True, timeout=30)
    assert "File not found" in res.stdout + res.stderr


def _nfs(boards, board, url):
    """nfs-ls of url from inside the board's own network namespace (its address)."""
    ns = boards.h.lab_node(board)["ns"]
    return subprocess.run(["ip", "netns", "exec", ns, "nfs-ls", url], capture_output=True, text=True, timeout=30)


def test_each_board_has_one_export_for_its_address_only(boards):
    nfs = boards.node("board1")["nfs"]
    res = _nfs(boards, "board1", nfs["url"])
    assert res.returncode == 0, res.stderr
    names = {line.split()[-1] for line in res.stdout.splitlines() if line.strip()}
    assert {"bin", "sbin", "etc", "root", "dev"} <= names
    # the same export refuses another board, and the proxy's own address
    assert _nfs(boards, "board2", nfs["url"]).returncode != 0
    assert subprocess.run(["nfs-ls", nfs["url"]], capture_output=True, timeout=30).returncode != 0
    # board2 reaches its own root, never board1's nor the parent directory of all roots
    url2 = boards.node("board2")["nfs"]["url"]
    assert _nfs(boards, "board2", url2).returncode == 0
    parent = boardpaths.nfs_url(nfs["host"], nfs["root"], nfs["port"], nfs["mount_port"])
    assert _nfs(boards, "board1", parent).returncode != 0
    assert _nfs(boards, "board1", boardpaths.nfs_url(nfs["host"], "/etc", nfs["port"], nfs["mount_port"])).returncode != 0
    # the exports are one file per board, each naming only that board's address
    conf = sorted((boardpaths.exports_dir(boards.dir)).glob("bmm-*.conf"))
    assert [c.name for c in conf] == ["bmm-board1.conf", "bmm-board2.conf"]
    assert f"Clients = {boards.h.lab_node('board1')['addr']};" in conf[0].read_text()


def test_board_powered_through_pdu_boots_from_tftp_and_nfs(boards):
    pdu = boards.pdu("telnet")
    try:
        assert pdu.outlet_on(1)
        pdu.cmd("olOff 1")
        assert not pdu.outlet_on(1)
        assert daemon_state(boards, "board1")["state"] == "off"
        boards.wait_ssh("board1", up=False, timeout=10)
        before = boards.console("board1")
        pdu.cmd("olOn 1")
        assert pdu.outlet_on(1)
    finally:
        pdu.close()
    boards.wait_ssh("board1", timeout=30)
    res = boards.ssh("board1", "hostname; cat /etc/bmm-lab-marker; ls /dev/sda1")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["board1", "board1", "nfsroot", "/dev/sda1"]
    log = boards.console("board1")[len(before):]
    assert "power on" in log and "Filename 'vmlinux_board1'." in log and "Bytes transferred" in log
    assert "Mounted root (nfs filesystem)" in log
    st = daemon_state(boards, "board1")
    assert st["state"] == "running" and "nfs:" in st["detail"]
    # the root really is the export: a file written on the board appears on the proxy side
    assert boards.ssh("board1", "echo written-on-board > /root/proof").returncode == 0
    assert (Path(boards.node("board1")["nfs_export"]) / "root" / "proof").read_text() == "written-on-board\n"


def test_missing_boot_file_means_no_boot(boards):
    kernel = boards.tftp_file("board2")
    saved = kernel.with_name(kernel.name + ".saved")
    kernel.rename(saved)
    pdu = boards.pdu("ssh")
    try:
        pdu.cmd("olReboot 2")
        st = wait_state(boards, "board2", "failed", timeout=30)
        assert "no boot file" in st["detail"]
        assert pdu.outlet_on(2)                       # powered, but nothing booted
        assert "no boot file" in boards.console("board2")
        assert boards.ssh("board2", "true").returncode != 0
        saved.rename(kernel)
        pdu.cmd("olReboot 2")
    finally:
        if saved.exists():
            saved.rename(kernel)
        pdu.close()
    boards.wait_ssh("board2", timeout=30)


@pytest.mark.parametrize("content, why", [
    (b"\x7fELF\x01\x01 not a lab kernel", "not a bmm lab kernel"),
    (b"BMM_LAB_KERNEL=1\nTLR_ROOT=/dev/sdz9\n", "TLR_ROOT"),
    (b"BMM_LAB_KERNEL=1\nTLR_ROOT=nfs\nNFS_ROOT=/var/empty/nowhere\n", "is not exported"),
])
def test_bad_boot_file_or_root_fails_clearly(boards, content, why):
    kernel = boards.tftp_file("board2")
    original = kernel.read_bytes()
    kernel.write_bytes(content)
    try:
        boards.h.power("board2", "reset")
        st = wait_state(boards, "board2", "failed", timeout=30)
        assert why in st["detail"]
        assert boards.ssh("board2", "true").returncode != 0
    finally:
        kernel.write_bytes(original)
    boards.h.power("board2", "reset")
    boards.wait_ssh("board2", timeout=30)


def test_two_stage_boot_with_tile_monitor(boards, tmp_path):
    name, outlet = "board2", 2
    tftp = Path(boards.node(name)["tftp"]["root"])
    kernel = boards.tftp_file(name)
    original = kernel.read_bytes()
    addr = boards.node(name)["ip"]
    # the tenant's root fs, with a marker only this image carries
    image_root = tmp_path / "rootfs"
    boardroot.populate_root(image_root, hostname=name, authorized_keys=(boards.dir / "ssh" / "lab_key.pub").read_text(),
                          label="tenant image", marker="tenant-image-42")
    image = boardroot.make_image(image_root, tmp_path / "tilera_fs.tar.gz")
    pdu = boards.pdu("telnet")
    try:
        # stage 1: vmlinux_<board>_1, root on tmpfs
        shutil.copyfile(tftp / f"vmlinux_{name}_1", kernel)
        pdu.cmd(f"olReboot {outlet}")
        boards.wait_ssh(name, timeout=30)
        res = boards.ssh(name, "cat /etc/bmm-lab-marker; grep ' / ' /proc/mounts")
        assert res.stdout.splitlines()[0] == f"{name} stage1 tmpfs" and "tmpfs" in res.stdout
        tm = boards.tile_monitor("--resume", "--net", addr, "--upload", str(image), "/tilera_fs.tar.gz", "--quit")
        assert tm.returncode == 0, tm.stderr
        tm = boards.tile_monitor(
            "--resume", "--net", addr,
            "--run", "-", "mount", "/dev/sda1", "/mnt", "-", "--wait",
            "--run", "-", "sh", "-c", "rm -rf /mnt/*", "-", "--wait",
            "--run", "-", "tar", "-xzpf", "/tilera_fs.tar.gz", "-C", "/mnt/", "-", "--wait",
            "--run", "-", "umount", "/mnt", "-", "--wait", "--quit")
        assert tm.returncode == 0, tm.stderr
        # stage 2: vmlinux_<board>_2, root on /dev/sda1
        shutil.copyfile(tftp / f"vmlinux_{name}_2", kernel)
        pdu.cmd(f"olReboot {outlet}")
        boards.wait_ssh(name, timeout=30)
        res = boards.ssh(name, "cat /etc/bmm-lab-marker; cat /etc/os-release")
        assert res.returncode == 0 and res.stdout.splitlines()[0] == "tenant-image-42"
        assert "/dev/sda1" in daemon_state(boards, name)["detail"]
        tm = boards.tile_monitor("--resume", "--net", addr, "--", "cat", "/etc/bmm-lab-marker")
        assert tm.returncode == 0 and tm.stdout.strip() == "tenant-image-42"
    finally:
        kernel.write_bytes(original)
        try:
            pdu.cmd(f"olReboot {outlet}")
        finally:
            pdu.close()
    boards.wait_ssh(name, timeout=30)
    assert boards.ssh(name, "cat /etc/bmm-lab-marker").stdout.strip() == f"{name} nfsroot"


def test_reboot_inside_the_board_boots_it_again(boards):
    before = boards.console("board1")
    boards.ssh("board1", "reboot", timeout=15)
    deadline = time.monotonic() + 30
    while "Restarting system" not in boards.console("board1")[len(before):]:
        assert time.monotonic() < deadline, boards.console("board1")[-2000:]
        time.sleep(0.2)
    boards.wait_ssh("board1", timeout=30)
    log = boards.console("board1")[len(before):]
    assert log.count("Filename 'vmlinux_board1'.") == 1     # it fetched its kernel again
    assert daemon_state(boards, "board1")["state"] == "running"


def test_tile_monitor_reports_a_dead_board(boards):
    pdu = boards.pdu("telnet")
    try:
        pdu.cmd("olOff 1")
        env = dict(os.environ, BMM_TILE_MONITOR_CONNECT_TIMEOUT="2")
        tm = boards.tile_monitor("--resume", "--net", boards.node("board1")["ip"], "--", "dmesg", env=env)
        assert tm.returncode == 1
        assert f"board {boards.node('board1')['ip']} does not answer" in tm.stderr
        tm = boards.tile_monitor("--net", boards.node("board1")["ip"], "--quit")
        assert tm.returncode == 2 and "--resume" in tm.stderr
    finally:
        pdu.cmd("olOn 1")
        pdu.close()
    boards.wait_ssh("board1", timeout=30)


def test_inventory_describes_the_boards(boards):
    import tomllib

    from bmm.inventory import validate_inventory
    assert validate_inventory(boards.h.inventory) == []
    nodes = tomllib.loads(boards.h.inventory.read_text())["nodes"]
    b1, b2 = nodes["board1"], nodes["board2"]
    assert b1["kind"] == b2["kind"] == "netboot"
    assert b1["boot"]["method"] == "nfsroot" and b2["boot"]["method"] == "tftp2stage"
    assert b1["boot"]["nfs_root"] == boards.node("board1")["nfs"]["root"]
    assert b2["boot"]["rootfs_device"] == "/dev/sda1"
    for n, outlet in ((b1, 1), (b2, 2)):
        assert n["power"]["driver"] == "pdu" and n["power"]["outlet"] == outlet
        assert n["power"]["port"] == boards.node("board1")["pdu"]["port"]
        assert os.access(n["boot"]["tile_monitor"], os.X_OK)
    pw = Path(b1["power"]["password_file"])
    assert pw.stat().st_mode & 0o077 == 0


# --- pure logic (no lab needed) ------------------------------------------------------------


def test_kernel_format_round_trip(tmp_path):
    for root in boardroot.ROOT_KINDS:
        k = boardroot.parse_kernel(boardroot.write_kernel(tmp_path / "k", root).read_bytes())
        assert k.root == root and k.nfs_path is None
    k = boardroot.parse_kernel(boardroot.write_kernel(tmp_path / "k", "nfs", nfs_path="/x/fs_7").read_bytes())
    assert k.nfs_path == "/x/fs_7"
    for bad in (b"", b"TLR_ROOT=nfs\n", b"BMM_LAB_KERNEL=1\nTLR_ROOT=ramfs\n", b"\xff\xfe\x00",
                b"BMM_LAB_KERNEL=1\nTLR_ROOT=nfs\nNFS_ROOT=relative\n", b"BMM_LAB_KERNEL=1\ngarbage\n"):
        with pytest.raises(LabError):
            boardroot.parse_kernel(bad)


def test_tile_monitor_grammar():
    from bmm_lab.tile_monitor import UsageError, parse
    plan = parse(["--resume", "--net", "10.0.2.7", "--run", "-", "ifconfig", "xgbe0", "hw", "ether",
                  "00:1A:CA:00:58:5C", "-", "--wait", "--run", "-", "/usr/sbin/sshd", "-", "--wait", "--quit"])
    assert plan.net == "10.0.2.7" and plan.quit
    assert plan.actions == [("run", ["ifconfig", "xgbe0", "hw", "ether", "00:1A:CA:00:58:5C"]), ("wait",),
                            ("run", ["/usr/sbin/sshd"]), ("wait",)]
    plan = parse(["--resume", "--net", "1.2.3.4", "--upload", "/a b", "/c;d", "--quit"])
    assert plan.actions == [("upload", "/a b", "/c;d")]
    plan = parse(["--resume", "--net", "1.2.3.4", "--", "dmesg", "-T"])
    assert plan.actions == [("run", ["dmesg", "-T"])] and plan.quit
    plan = parse(["--resume", "--net", "1.2.3.4", "--run", "+", "echo", "-", "+"])
    assert plan.actions == [("run", ["echo", "-"])]
    for bad in (["--net", "1.2.3.4", "--quit"],                      # no --resume
                ["--resume", "--quit"],                                # no --net
                ["--resume", "--net", "1.2.3.4", "--run", "-", "ls"],  # unclosed
                ["--resume", "--net", "1.2.3.4", "--run", "-", "-"],   # empty
                ["--resume", "--net", "1.2.3.4", "--upload", "x"],
                ["--resume", "--net", "1.2.3.4", "--bogus"]):
        with pytest.raises(UsageError):
            parse(bad)
