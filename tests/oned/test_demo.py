"""`bmm lab demo --one URL`, the main job through a genuine oned: the demo registers its lab
with `bmm one register`, makes the image and the VM through pyone, and oned calls bmm's
installed remotes, for a server and a netboot board.

The demo brings up a lab of its own, so it gets a front-end of its own, set up as the demo
tells an operator: install.sh, then `inventory` in <remotes>/etc/bmm/bmm.toml naming the demo
lab's nodes.toml. It runs as an operator runs it (ONE_XMLRPC/ONE_AUTH, no BMM_CONFIG), with the
waits the demo gives its lab when it runs without oned (bmm_lab.demo.SETTINGS)."""

from __future__ import annotations

import re
import shutil
import tempfile
import tomllib
import time
from pathlib import Path

import pytest

from bmm_lab.demo import SETTINGS as DEMO_SETTINGS
from tests.oned.conftest import _live
from tests.oned.frontend import Frontend
from tests.support import REPO, in_order

DEMO_TIMEOUT_S = 1200


@pytest.fixture(scope="module")
def demo_frontend(one_install):
    """A fresh oned whose bmm reads the (not yet made) demo lab's inventory; always stopped,
    and the demo's lab taken down if the demo left it."""
    lab_dir = Path(tempfile.mkdtemp(prefix="bmmlab-onedemo-", dir="/var/tmp"))
    fe = Frontend.create(one_install)
    _live[str(fe.dir)] = fe
    try:
        fe.install_bmm(REPO, lab_dir / "nodes.toml", tomllib.loads(DEMO_SETTINGS))
        fe.start()
        yield fe, lab_dir
    finally:
        try:
            fe.stop()
        finally:
            _live.pop(str(fe.dir), None)
            fe.purge()
            if (lab_dir / "lab.json").exists():
                from bmm_lab import rack
                rack.down(lab_dir, purge=True)
            shutil.rmtree(lab_dir, ignore_errors=True)


def job_steps(name: str, wiped: str) -> list[str]:
    return [f"host {name}: MONITORED", ": READY", "`onetemplate instantiate", f"to {name}", ": RUNNING",
            "ssh into the tenant", "the tenant wrote /root/demo-marker", "`onevm poweroff`", ": POWEROFF",
            ": RUNNING", "the disk was kept", "`onevm terminate`", ": DONE", f"bmm's record of {name}: available",
            "was wiped", wiped]


def test_the_demo_runs_the_main_job_through_a_real_oned(demo_frontend):
    from bmm_lab.testing import leftovers
    from bmm.opennebula.client import connect

    fe, lab_dir = demo_frontend
    proc = fe.bmm("lab", "demo", "--dir", str(lab_dir), "--board", "--one", fe.endpoint, timeout=DEMO_TIMEOUT_S)
    out = proc.stdout
    assert proc.returncode == 0, out[-6000:] + proc.stderr[-3000:] + fe.tail_bmm_log(60)
    assert "driven through pyone" in out and "EMULATION" not in out, out[:2000]
    steps = ["`bmm one register`", *job_steps("server1", "now read as zeros"),
             *job_steps("board1", "NFS root"), "the main job ran on server1, board1", "nothing of lab"]
    assert in_order(out, steps) == [], out
    assert "host server1 deleted from oned" in out and "host board1 deleted from oned" in out, out
    hostnames = re.findall(r"\$ ssh -i tenant_key root@\S+ hostname +-> (\S+)", out)
    assert len(hostnames) == 2, out                 # CONTEXT's SET_HOSTNAME, on the server and the board

    one = connect(fe.endpoint, auth=str(fe.auth_file))
    vms = one.vmpool.info(-2, -1, -1, -2).VM
    assert len(vms) == 2 and {vm.STATE for vm in vms} == {6}, [(vm.ID, vm.STATE) for vm in vms]   # DONE
    assert one.hostpool.info().HOST == []           # the demo deleted the hosts it made
    deadline = time.monotonic() + 60                # oned deletes an image in the background
    while one.imagepool.info(-2, -1, -1).IMAGE and time.monotonic() < deadline:
        time.sleep(1)
    assert one.imagepool.info(-2, -1, -1).IMAGE == []     # nor the images
    lab_id = re.search(r"nothing of lab (\w+) remains", out).group(1)
    assert leftovers(lab_id, lab_dir) == {}
