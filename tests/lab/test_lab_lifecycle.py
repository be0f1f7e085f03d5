"""`bmm lab up/down`: nothing remains after down (also after kill -9), labs never touch each
other, and a live lab's dir is refused."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from bmm_lab.testing import LabHandle, leftovers
from tests.support import require_lab

pytestmark = pytest.mark.lab

BMM = [sys.executable, "-c", "import sys; from bmm.cli import main; sys.exit(main())"]
TOOLS = ("ipmi_sim", "ipmitool", "sshd", "lvm", "grub-editenv", "unshare", "xorriso")


def bmm(*args, timeout=120):
    return subprocess.run([*BMM, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def lab_dir():
    require_lab(*TOOLS)
    d = tempfile.mkdtemp(prefix="bmmlab-t-", dir="/var/tmp")
    yield d
    if Path(d, "lab.json").exists():
        bmm("lab", "down", "--dir", d, "--purge")
    else:
        subprocess.run(["rm", "-rf", d])


def assert_nothing_left(lab_id, d):
    assert leftovers(lab_id, d) == {}
    assert d not in subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    assert f"bmmlab-{lab_id}" not in subprocess.run(["ip", "netns"], capture_output=True, text=True).stdout
    assert f"bl{lab_id}" not in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    assert not [line for line in ps.splitlines() if d + "/" in line and "pytest" not in line]
    vgs = subprocess.run(["lvm", "vgs", "--noheadings", "-o", "vg_name"], capture_output=True, text=True,
                         env={**os.environ, "LVM_SYSTEM_DIR": f"{d}/lvm", "LVM_SUPPRESS_FD_WARNINGS": "1"})
    assert f"bl{lab_id}" not in vgs.stdout


def test_up_status_down_leaves_nothing(lab_dir):
    r = bmm("lab", "up", "--dir", lab_dir, "--servers", "2", "--boards", "0")
    assert r.returncode == 0, r.stderr + r.stdout
    assert "is up" in r.stdout and "s)" in r.stdout           # progress lines with timings
    st = json.loads(bmm("lab", "status", "--dir", lab_dir, "--json").stdout)
    lab_id = st["id"]
    assert [n["state"] for n in st["nodes"]] == ["running", "running"]
    r = bmm("lab", "down", "--dir", lab_dir)
    assert r.returncode == 0, r.stderr
    assert_nothing_left(lab_id, lab_dir)
    assert bmm("lab", "down", "--dir", lab_dir).returncode == 0      # twice is fine
    st = json.loads(bmm("lab", "status", "--dir", lab_dir, "--json").stdout)
    assert st["state"] == "down"


def test_up_refuses_a_dir_with_a_live_lab(lab):
    r = bmm("lab", "up", "--dir", str(lab.dir), "--servers", "1", "--boards", "0")
    assert r.returncode == 1
    assert "already up" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert lab.ssh_ok(lab.servers[0])


def test_down_after_kill_9_of_daemon_and_children(lab_dir):
    h = LabHandle.up(lab_dir, servers=2, boards=0)
    lab_id = h.id
    from bmm_lab.rack import lab_processes
    pids = lab_processes(Path(lab_dir), lab_id)
    assert len(pids) >= 5              # daemon, 2 ipmi_sim, 2 x (unshare, nodeinit, sshd)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    time.sleep(0.2)
    r = bmm("lab", "down", "--dir", lab_dir)
    assert r.returncode == 0, r.stderr + r.stdout
    assert_nothing_left(lab_id, lab_dir)


def test_down_after_kill_9_of_up(lab_dir):
    proc = subprocess.Popen([*BMM, "lab", "up", "--dir", lab_dir, "--servers", "3", "--boards", "0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    lab_id = None
    while time.monotonic() < deadline:          # kill it as soon as it has built something
        try:
            lab = json.loads(Path(lab_dir, "lab.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            lab = {}
        lab_id = lab.get("id")
        if any(n.get("loop") for n in lab.get("nodes", [])) or lab.get("daemon_pid"):
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert lab_id
    r = bmm("lab", "down", "--dir", lab_dir)
    assert r.returncode == 0, r.stderr + r.stdout
    assert_nothing_left(lab_id, lab_dir)


def test_two_labs_do_not_touch_each_other(lab, lab_dir):
    other = LabHandle.up(lab_dir, servers=1, boards=0)
    assert other.id != lab.id
    assert other.status_json["net"] != lab.status_json["net"]
    assert other.node("server1")["bmc"]["port"] != lab.node("server1")["bmc"]["port"]
    assert other.ssh(other.servers[0], "hostname").stdout.strip() == "server1"
    other.down()
    assert_nothing_left(other.id, lab_dir)
    lab.refresh()
    assert leftovers(lab.id, lab.dir).get("netns")            # the first lab is untouched
    assert lab.ssh_ok(lab.servers[0])
    assert "Chassis Power is on" in lab.ipmitool(lab.servers[0], "chassis", "power", "status").stdout
