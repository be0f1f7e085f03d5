"""Local-disk faults and tenant isolation, on the lab's real peers through the OpenNebula
emulation: a dropped link mid-copy, an unbootable image, an instance that never comes up,
two deploys racing for one node, and a tenant's data never reaching the next tenant."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import threading
import time

import pytest

from bmm.config import load_config
from bmm_lab.images import build_image, build_root
from bmm.runner import LocalExecutor
from bmm.state import open_store
from bmm.storage.lvm import lv_segments, open_lv
from tests.onemock import OpenNebula, vm_xml

SETTINGS = "ssh_wait_s = 60\nboot_wait_s = 25\npower_timeout_s = 30"


@pytest.fixture(scope="module")
def world(module_lab, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults")
    one = OpenNebula(tmp / "one", module_lab.inventory, settings=SETTINGS)
    store = open_store(config=load_config(one.remotes / "etc" / "bmm" / "bmm.toml"))
    return module_lab, one, store, tmp


def lv_names(lab, node, vg):
    out = lab.ssh(node, ["lvs", "--noheadings", "-o", "lv_name", vg], timeout=60).stdout
    return sorted(line.strip() for line in out.splitlines() if line.strip())


def one_line(ex):
    lines = [l for l in ex.stderr.splitlines() if l.strip() and not l.startswith(("INFO:", "ERROR:"))]
    assert len(lines) == 1 and "Traceback" not in ex.stderr, ex.stderr
    return lines[0]


def fs_image(path, root, size_mb=48):
    subprocess.run(["truncate", "-s", f"{size_mb}M", str(path)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(root), str(path)], check=True)
    return path


def test_ssh_link_dropped_mid_copy_leaves_no_lv_and_the_node_available(world, tmp_path):
    lab, one, store, _ = world
    node = lab.servers[0]
    vg = lab.node(node)["vg"]
    root = tmp_path / "root"
    root.mkdir()
    build_root(root, os_id="big", name="Big")
    (root / "payload").write_bytes(os.urandom(160 * 2**20))      # incompressible, takes a while
    image = fs_image(tmp_path / "big.img", root, size_mb=200)
    netns = lab.node(node)["netns"]

    def drop_links():
        """Kill the node's per-connection sshd processes once the copy is running."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if "vm7-disk0" in lv_names(lab, node, vg):
                time.sleep(0.3)             # the stream is flowing by now
                pids = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True).stdout.split()
                killed = 0
                for pid in pids:
                    try:
                        cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ")
                    except OSError:
                        continue
                    if b"notty" in cmd or b"@" in cmd and cmd.startswith(b"sshd:"):
                        os.kill(int(pid), signal.SIGKILL)
                        killed += 1
                if killed:
                    return
            time.sleep(0.2)

    dropper = threading.Thread(target=drop_links)
    dropper.start()
    ex = one.tm("clone", [f"fe:{one.register_image(image)}", f"{node}:{one.disk(7, 0)}", "7", "101"])
    dropper.join()
    assert ex.returncode != 0
    message = one_line(ex)
    assert message.startswith(f"node {node}: ") and any(
        why in message for why in ("interrupted", "link lost", "connection closed")), message
    assert not [n for n in lv_names(lab, node, vg) if n.startswith("vm7-")]
    assert store.get(node).state == "available" and store.get(node).vm_id is None


def test_an_unbootable_image_fails_in_clone_with_its_reason(world, tmp_path):
    lab, one, store, _ = world
    node = lab.servers[1]
    vg = lab.node(node)["vg"]
    root = tmp_path / "nokernel"
    for d in ("etc", "bin", "sbin"):
        (root / d).mkdir(parents=True)
    (root / "etc" / "fstab").write_text("/dev/sda1 / ext4 defaults 0 1\n")
    image = fs_image(tmp_path / "nokernel.img", root, size_mb=16)
    ex = one.tm("clone", [f"fe:{one.register_image(image)}", f"{node}:{one.disk(8, 0)}", "8", "101"])
    assert ex.returncode != 0
    assert "kernel" in one_line(ex), ex.stderr
    assert not [n for n in lv_names(lab, node, vg) if n.startswith("vm8-")]
    assert store.get(node).state == "available"


def test_an_instance_that_never_comes_up_fails_deploy_and_the_node_is_home_in_error(world, tmp_path):
    lab, one, store, tmp = world
    node = lab.servers[1]
    vg = lab.node(node)["vg"]
    root = tmp_path / "noinit"
    root.mkdir()
    build_root(root, os_id="noinit", name="No init")
    (root / "sbin" / "init").unlink()           # GRUB loads it, but it cannot start
    image = fs_image(tmp_path / "noinit.img", root)
    sysdir = one.sysdir(9)
    assert one.tm("clone", [f"fe:{one.register_image(image)}", f"{node}:{sysdir}/disk.0", "9", "101"]).returncode == 0
    started = time.monotonic()
    ex = one.deploy(vm_xml(9, node), node, 9, tmp_path / "deployment.0")
    elapsed = time.monotonic() - started
    assert ex.returncode != 0
    assert "VM 9 did not come up within 25 s" in one_line(ex)
    assert elapsed < 25 + 120                     # bounded: boot deadline + the way home
    rec = store.get(node)
    assert rec.state == "error" and "deploy of VM 9 failed" in rec.last_error
    assert lab.ssh_ok(node)                       # back in the home OS, reachable with bmm's key
    env = lab.ssh(node, ["grub-editenv", "/boot/grub/grubenv", "list"]).stdout
    assert "saved_entry=home" in env
    # terminate cleans it up and the node is usable again
    for args in ([f"{node}:{sysdir}/disk.0", "9", "101"], [f"{node}:{sysdir}", "9", "100"]):
        ex = one.tm("delete", args)
        assert ex.returncode == 0, ex.stderr
    assert store.get(node).state == "available"
    assert not [n for n in lv_names(lab, node, vg) if n.startswith("vm9-")]


def test_two_deploys_on_one_node_one_wins(world, tmp_path):
    lab, one, store, _ = world
    node = lab.servers[1]
    image = build_image(tmp_path / "race.img", os_id="race", size="32M")
    source = one.register_image(image)
    results = {}

    def prolog(vm):
        results[vm] = one.tm("clone", [f"fe:{source}", f"{node}:{one.disk(vm, 0)}", str(vm), "101"])

    threads = [threading.Thread(target=prolog, args=(vm,)) for vm in (21, 22)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [vm for vm, ex in results.items() if ex.returncode == 0]
    assert len(winners) == 1, {vm: ex.stderr for vm, ex in results.items()}
    loser = 22 if winners == [21] else 21
    message = one_line(results[loser])
    assert f"holds VM {winners[0]}; refusing VM {loser}" in message or "is locked by clone" in message
    assert store.get(node).vm_id == winners[0]
    sysdir = one.sysdir(winners[0])
    for args in ([f"{node}:{sysdir}/disk.0", str(winners[0]), "101"], [f"{node}:{sysdir}", str(winners[0]), "100"]):
        assert one.tm("delete", args).returncode == 0


def test_a_tenants_data_never_reaches_the_next_tenant(world, tmp_path):
    lab, one, store, _ = world
    node = lab.servers[0]
    vg = lab.node(node)["vg"]
    canary = secrets.token_hex(32).encode()
    image = build_image(tmp_path / "canary.img", os_id="canary", size="32M")
    sysdir = one.sysdir(31)
    assert one.tm("clone", [f"fe:{one.register_image(image)}", f"{node}:{sysdir}/disk.0", "31", "101"]).returncode == 0
    ex_env = LocalExecutor(extra_env=lab.lvm_env(node))
    lv, segments = lv_segments(ex_env, vg, "vm31-disk0")
    # 1. the canary goes into the tenant's disk, in the free space of its filesystem and at the end
    with open_lv(ex_env, vg, "vm31-disk0") as dev:
        with open(dev, "r+b") as fh:
            fh.seek(lv.size - 4096)
            fh.write(canary)
            fh.seek(lv.size // 2)
            fh.write(canary)
        assert canary in open(dev, "rb").read()
    # 2. terminate
    for args in ([f"{node}:{sysdir}/disk.0", "31", "101"], [f"{node}:{sysdir}", "31", "100"]):
        assert one.tm("delete", args).returncode == 0
    # 3. a new LV over the same extents
    lab.ssh(node, ["lvcreate", "-y", "-Zn", "-L", f"{lv.size}b", "-n", "next_tenant", vg], timeout=60)
    try:
        new, new_segments = lv_segments(ex_env, vg, "next_tenant")
        assert [(s.pv, s.first_pe, s.last_pe) for s in new_segments] == [(s.pv, s.first_pe, s.last_pe) for s in segments]
        # 4. the canary is gone
        with open_lv(ex_env, vg, "next_tenant") as dev:
            data = open(dev, "rb").read()
        assert canary not in data
        assert data.count(0) == len(data)
    finally:
        lab.ssh(node, ["lvremove", "-y", f"{vg}/next_tenant"], timeout=60)
