"""`bmm lab demo`, README's first command, end to end on the emulation of oned's exec drivers:
the main job's steps in order, RUNNING, ssh into the tenant with the key CONTEXT carried,
poweroff and resume keeping the disk, terminate wiping it, and the lab gone afterwards.

The demo checks the wipe itself; with --keep the test asks the lab node directly too (no LV of
the VM left, the node's record available, the tenant's key no longer let in)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.lab.conftest import LAB_TOOLS
from tests.support import REPO, in_order, require_lab

STEPS = [
    "the EMULATION of oned's exec", "register server1", "IM START_MONITOR", "`onevm create`",
    "TM clone", "copy disk 0:", "TM context", "VMM deploy", "VM 0 is RUNNING",
    "ssh into the tenant", "-> bm-tenant", "`onevm poweroff`", "VMM shutdown", "VM 0 is POWEROFF",
    "TM context", "VMM deploy", "VM 0 is RUNNING", "the disk was kept", "`onevm terminate`", "VMM shutdown",
    "TM delete", "TM delete", "VM 0 is DONE; bmm's node record: available", "now read as zeros", "done",
]


def demo(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """`bmm lab demo ...` as a user runs it (this checkout's bmm first on the path)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("ONE_XMLRPC", None)
    return subprocess.run([sys.executable, "-c", "from bmm.cli import main; main()", "lab", "demo", *args],
                          capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO)


@pytest.fixture
def lab_dir():
    require_lab(*LAB_TOOLS)
    d = Path(tempfile.mkdtemp(prefix="bmmlab-demotest-", dir="/var/tmp"))
    yield d
    if (d / "lab.json").exists():
        from bmm_lab import rack
        rack.down(d, purge=True)
    elif d.exists():
        d.rmdir()


def test_the_demo_runs_the_main_job_and_leaves_nothing(lab_dir):
    from bmm_lab.testing import leftovers

    proc = demo("--dir", str(lab_dir))
    out = proc.stdout
    assert proc.returncode == 0, out[-4000:] + proc.stderr[-4000:]
    assert in_order(out, STEPS) == [], out
    context_key = re.search(r"\$ ssh -i tenant_key root@\S+ hostname +-> (\S+)", out)
    assert context_key and context_key.group(1) == "bm-tenant", out        # CONTEXT's SET_HOSTNAME
    lab_id = re.search(r"nothing of lab (\w+) remains", out).group(1)
    assert leftovers(lab_id, lab_dir) == {}
    assert not lab_dir.exists()
    took = float(re.search(r"the main job ran on server1 in (\d+) s", out).group(1))
    assert took < 300, out                          # about a minute; bounded even on a slow machine


def test_after_the_demo_the_node_holds_nothing_of_the_tenant(lab_dir):
    from bmm.config import load_config
    from bmm_lab.testing import LabHandle, leftovers
    from bmm_lab.demo import tenant_ssh
    from bmm.state import open_store

    proc = demo("--dir", str(lab_dir), "--keep")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    h = LabHandle(lab_dir)
    vg = h.node("server1")["vg"]
    lvs = h.ssh("server1", ["lvs", "--noheadings", "-o", "lv_name", vg], timeout=60).stdout.split()
    assert not [lv for lv in lvs if lv.startswith("vm0-")], lvs
    record = open_store(config=load_config(lab_dir / "one" / "remotes" / "etc" / "bmm" / "bmm.toml")).get("server1")
    assert (record.state, record.vm_id) == ("available", None)
    assert "bmm-vm0" not in h.ssh("server1", ["cat", "/boot/grub/custom.cfg"], check=False).stdout
    key = lab_dir / "demo" / "tenant_key"
    with pytest.raises(Exception):
        tenant_ssh(h, "server1", key, "true", timeout=20)          # the home OS never took the tenant's key
    monitor = lab_dir / "one" / "state" / "monitor" / "daemon.pid"
    if monitor.exists():
        pid = int(monitor.read_text().split()[0])
        assert not Path(f"/proc/{pid}").exists() or b"im_drivers.daemon" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    lab_id = h.id
    h.down(purge=True)
    assert leftovers(lab_id, lab_dir) == {}


def test_a_failed_demo_shows_each_boards_console_before_the_teardown_removes_it():
    """A board that does not come up says why on its console, and the error asks the operator
    to read it; the demo's teardown purges the lab, so the demo prints the console's end."""
    from types import SimpleNamespace

    from bmm_lab.demo import Demo, _show_consoles

    text = "".join(f"line {i}\n" for i in range(20)) + "TFTP error: timeout\n"
    lab = SimpleNamespace(boards=["board1", "board2"], console={"board1": text, "board2": ""}.get)
    out: list[str] = []
    _show_consoles(Demo(out.append), lab)
    assert "console of board1" in out[0] and out[-1].strip() == "TFTP error: timeout", out
    assert len(out) == 9 and out[1].strip() == "line 13", out
