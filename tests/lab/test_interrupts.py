"""A remote killed in the middle of an action, on the lab's real peers.

SIGTERM (what `timeout`, an operator or a supervisor sends): the action's own clean-up runs,
the remote exits with one line, and the node is left in a stable state. SIGKILL: nothing can
run, so the node keeps a transient state with a dead owner; `bmm nodes recover` (and the next
action) turn it into `error` with "interrupted while ...", and OpenNebula's clean-up then
frees the node. In every case no BMC password is left in any file.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from bmm.config import load_config
from bmm_lab.images import build_image, build_root
from bmm.state import open_store
from tests.onemock import OpenNebula, drv_action, vm_xml

SETTINGS = "ssh_wait_s = 60\nboot_wait_s = 60\npower_timeout_s = 20"


@pytest.fixture(scope="module")
def world(module_lab, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("interrupts")
    one = OpenNebula(tmp / "one", module_lab.inventory, settings=SETTINGS)
    config = one.remotes / "etc" / "bmm" / "bmm.toml"
    store = open_store(config=load_config(config))
    root = tmp / "bigroot"
    root.mkdir()
    build_root(root, os_id="big", name="Big")
    (root / "payload").write_bytes(os.urandom(160 * 2**20))     # incompressible: the copy takes a while
    big = tmp / "big.img"
    subprocess.run(["truncate", "-s", "200M", str(big)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(root), str(big)], check=True)
    small = build_image(tmp / "small.img", os_id="small", name="Small", size="32M")
    return module_lab, one, store, config, one.register_image(big), small, tmp


def lvs(lab, node):
    vg = lab.node(node)["vg"]
    out = lab.ssh(node, ["lvs", "--noheadings", "-o", "lv_name", vg], timeout=60).stdout
    return sorted(line.strip() for line in out.splitlines() if line.strip())


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def one_line(ex):
    lines = [line for line in ex.stderr.splitlines() if line.strip() and not line.startswith(("INFO:", "WARN:", "ERROR:"))]
    assert len(lines) == 1 and "Traceback" not in ex.stderr, ex.stderr
    return lines[0]


def recover(config):
    res = subprocess.run(["bmm", "nodes", "recover"], capture_output=True, text=True,
                         env={**os.environ, "BMM_CONFIG": str(config)}, timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout


def no_secret_left(lab, node, *roots):
    """No file under /dev/shm, /tmp or the given roots holds the node's BMC password."""
    secret = Path(lab.lab_node(node)["password_file"]).read_text().strip().encode()
    assert not list(Path("/dev/shm").glob("bmm-ipmi-*"))
    for root in (Path("/dev/shm"), Path("/tmp"), *roots):
        # os.walk, not rglob: other processes' temporary directories come and go meanwhile
        for dirpath, _, files in os.walk(root):
            for name in files:
                path = Path(dirpath) / name
                try:
                    if path.is_file() and not path.is_symlink() and path.stat().st_size < 64 * 2**20:
                        assert secret not in path.read_bytes(), f"{path} holds the BMC password"
                except OSError:
                    continue


def delete_vm(one, node, vm):
    for args in ([f"{node}:{one.disk(vm, 0)}", str(vm), "101"], [f"{node}:{one.sysdir(vm)}", str(vm), "100"]):
        ex = one.tm("delete", args)
        assert ex.returncode == 0, ex.stderr


def start_clone(one, node, vm, source):
    return one.start("tm", "clone", [f"fe:{source}", f"{node}:{one.disk(vm, 0)}", str(vm), "101"])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_clone_interrupted(world, sig):
    lab, one, store, config, big, _, tmp = world
    node = lab.servers[0]
    vm = 40 if sig == signal.SIGTERM else 41
    proc = start_clone(one, node, vm, big)
    wait_for(lambda: f"vm{vm}-disk0" in lvs(lab, node), 60, "the copy to start")
    time.sleep(0.5)
    proc.send_signal(sig)
    ex = one.finish(proc)
    if sig == signal.SIGTERM:
        assert "interrupted by SIGTERM" in one_line(ex)
        assert f"vm{vm}-disk0" not in lvs(lab, node)            # its clean-up removed the partial LV
        assert store.get(node).state == "available" and store.get(node).vm_id is None
    else:
        assert ex.returncode == -signal.SIGKILL
        assert store.get(node).state == "deploying" and store.get(node).interrupted
        assert f"{node}" in recover(config)
        rec = store.get(node)
        assert rec.state == "error" and "interrupted while deploying" in rec.last_error and rec.vm_id == vm
        delete_vm(one, node, vm)                                 # OpenNebula's clean-up of the failed prolog
        assert not [lv for lv in lvs(lab, node) if lv.startswith(f"vm{vm}-")]
        assert store.get(node).state == "available"
    no_secret_left(lab, node, one.root)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_deploy_interrupted(world, sig):
    lab, one, store, config, _, small, tmp = world
    node = lab.servers[1]
    vm = 42 if sig == signal.SIGTERM else 43
    assert one.prolog(vm, node, small).returncode == 0
    xml = vm_xml(vm, node)
    dfile = tmp / f"deployment-{vm}"
    dfile.write_text(xml)
    proc = one.start("vmm", "deploy", [str(dfile), node, str(vm), node], xml.encode())
    wait_for(lambda: store.get(node).state == "deploying", 30, "the deploy to start")
    time.sleep(1.0)
    proc.send_signal(sig)
    ex = one.finish(proc)
    if sig == signal.SIGTERM:
        assert "interrupted by SIGTERM" in one_line(ex)
        rec = store.get(node)
        assert rec.state == "error" and "interrupted by SIGTERM" in rec.last_error and not rec.interrupted
    else:
        assert ex.returncode == -signal.SIGKILL
        recover(config)
        assert store.get(node).state == "error"
    # OpenNebula's clean-up of a failed deploy: cancel, then the epilog
    ex = one.simple("cancel", drv_action(xml, node), f"bmm-{node}-{vm}", node, vm)
    assert ex.returncode == 0, ex.stderr
    delete_vm(one, node, vm)
    assert store.get(node).state == "available"
    assert not [lv for lv in lvs(lab, node) if lv.startswith(f"vm{vm}-")]
    no_secret_left(lab, node, one.root)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_delete_interrupted(world, sig):
    lab, one, store, config, big, _, tmp = world
    node = lab.servers[0]
    vm = 44 if sig == signal.SIGTERM else 45
    ex = one.tm("clone", [f"fe:{big}", f"{node}:{one.disk(vm, 0)}", str(vm), "101"])
    assert ex.returncode == 0, ex.stderr
    proc = one.start("tm", "delete", [f"{node}:{one.sysdir(vm)}", str(vm), "100"])
    wait_for(lambda: store.get(node).state == "deleting", 60, "the delete to start")
    time.sleep(0.3)
    proc.send_signal(sig)
    ex = one.finish(proc)
    if sig == signal.SIGTERM:
        assert "interrupted by SIGTERM" in one_line(ex)
    else:
        assert ex.returncode == -signal.SIGKILL
    rec = store.get(node)
    assert rec.vm_id == vm and (rec.state == "error" or rec.interrupted)
    ex = one.tm("delete", [f"{node}:{one.sysdir(vm)}", str(vm), "100"])      # oned's retry
    assert ex.returncode == 0, ex.stderr
    assert store.get(node).state == "available"
    assert not [lv for lv in lvs(lab, node) if lv.startswith(f"vm{vm}-")]
    no_secret_left(lab, node, one.root)


def bmc_pid(lab, node):
    lan_conf = str(Path(lab.lab_node(node)["dir"]) / "bmc" / "lan.conf")
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(b"ipmi_sim") and lan_conf.encode() in argv:
                return int(entry.name)
    raise AssertionError(f"no ipmi_sim for {node}")


def ipmitool_children(pid):
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    return [int(k) for k in kids if Path(f"/proc/{k}/cmdline").exists()
            and Path(f"/proc/{k}/cmdline").read_bytes().startswith(b"ipmitool")]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_power_call_interrupted_while_ipmitool_runs(world, sig):
    """The BMC hangs (SIGSTOP), so the remote sits in ipmitool with the password handed over;
    then the remote is killed."""
    lab, one, store, config, _, small, tmp = world
    node = lab.servers[1]
    vm = 46 if sig == signal.SIGTERM else 47
    xml = vm_xml(vm, node)
    assert one.prolog(vm, node, small).returncode == 0
    assert one.deploy(xml, node, vm, tmp / f"deployment-{vm}").returncode == 0
    bmc = bmc_pid(lab, node)
    os.kill(bmc, signal.SIGSTOP)
    try:
        proc = one.start("vmm", "shutdown", [f"bmm-{node}-{vm}", node, str(vm), node], drv_action(xml, node).encode())
        wait_for(lambda: ipmitool_children(proc.pid), 30, "ipmitool to run")
        proc.send_signal(sig)
    finally:
        os.kill(bmc, signal.SIGCONT)
    ex = one.finish(proc)
    if sig == signal.SIGTERM:
        assert "interrupted by SIGTERM" in one_line(ex)
        rec = store.get(node)
        assert rec.state == "active" and rec.vm_id == vm       # still on: the shutdown never happened
    else:
        assert ex.returncode == -signal.SIGKILL
        recover(config)
        assert store.get(node).state == "error"
    no_secret_left(lab, node, one.root)
    ex = one.simple("cancel", drv_action(xml, node), f"bmm-{node}-{vm}", node, vm)
    assert ex.returncode == 0, ex.stderr
    delete_vm(one, node, vm)
    assert store.get(node).state == "available"
