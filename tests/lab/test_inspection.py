"""`bmm nodes inspect` against the lab's machines: the servers' home OS (server1 has an FPGA
and server2 a GPU on their emulated PCI bus, read by the lab's lspci and from the sysfs view)
and the boards' busybox OS (TILEPro64 cpuinfo, /sys only). A MAC changed in the inventory is
flagged by `bmm nodes show`, in the state DB and in SYSTEM_HOST; a node whose sshd never
answers fails alone within the deadline."""

from __future__ import annotations

import json
import socket
import sys
import time
from pathlib import Path

import pytest

from bmm.config import load_config
from bmm.inventory import load_node
from bmm.inspect.probe import Probe
from bmm.runner import Result, run
from bmm.state import StateStore
from bmm.transport.ssh import SshSession

pytestmark = pytest.mark.lab

NEW_MAC = "02:00:00:00:be:ef"
BMM = str(Path(sys.executable).with_name("bmm"))


@pytest.fixture
def world(lab, tmp_path, monkeypatch):
    """The lab's inventory copied (server1's MAC changed on demand) and a state DB of our own."""
    for name in lab.servers + lab.boards:
        lab.wait_ssh(name, up=True, timeout=60)
    inventory = tmp_path / "nodes.toml"
    inventory.write_text(lab.inventory.read_text())
    config = tmp_path / "bmm.toml"
    config.write_text(f'inventory = "{inventory}"\nstate_db = "{tmp_path / "state.db"}"\n')
    monkeypatch.setenv("BMM_CONFIG", str(config))
    return inventory, tmp_path / "state.db"


def bmm(*args, timeout=120) -> Result:
    return run([BMM, "nodes", *args], timeout=timeout, check=False)


def inspect_json(*args, timeout=120) -> tuple[Result, dict]:
    result = bmm("inspect", "--json", *args, timeout=timeout)
    return result, {o["name"]: o for o in json.loads(result.stdout)}


def test_inspection_finds_the_fpga_the_gpu_the_tile_cpus_and_the_macs(lab, world):
    inventory, state_db = world
    t0 = time.monotonic()
    result, out = inspect_json("--all")
    elapsed = time.monotonic() - t0
    assert result.returncode == 0, result.stderr
    assert all(o["ok"] and o["inspection"] == "OK" for o in out.values()), out
    server1, server2 = out[lab.servers[0]]["summary"], out[lab.servers[1]]["summary"]
    assert server1["fpga"] == ["Xilinx Alveo U250 (10ee:5005 at 0000:3b:00.0)"] and server1["gpu"] == []
    assert server2["gpu"] == ["NVIDIA GV100GL [Tesla V100 PCIe 16GB] (10de:1db4 at 0000:3b:00.0)"]
    assert server2["fpga"] == [] and server1["pci_devices"] == 5          # the ASPEED VGA is no GPU
    assert server1["sources"]["pci"] == "lspci -nn -mm + /sys/bus/pci/devices"
    for name in lab.boards:
        board = out[name]["summary"]
        assert board["cpu"]["model"] == "TILEPro64" and board["cpu"]["threads"] == 64
        assert board["cpu"]["mhz"] == 866.0 and board["memory_mb"] == 16218
        assert board["sources"]["nics"] == "/sys/class/net" and board["pci_devices"] == 0
    for name, o in out.items():
        node = load_node(name, inventory)
        assert [n["mac"] for n in o["summary"]["nics"]] == list(node.macs)
    store = StateStore(state_db)
    assert all(store.inspection(name).mismatches == () for name in out)
    print(f"inspected {len(out)} nodes in {elapsed:.1f} s")


def test_without_lspci_the_sysfs_view_names_the_same_fpga(lab):
    """The fallback path on a real node: lspci 'missing', /sys/bus/pci/devices read with grep."""
    node = load_node(lab.servers[0], lab.inventory)

    class NoLspci(SshSession):
        def run(self, argv, **kw):
            if argv[0] == "lspci":
                return Result(tuple(argv), 127, "", "sh: 1: lspci: not found")
            return super().run(argv, **kw)

    with NoLspci(node.ssh.target(node.name)) as session:
        session.connect()
        facts = Probe(session, deadline=time.monotonic() + 30, node=node.name).collect()
    fpga = facts.accelerators("fpga")
    assert [(d.address, d.ids, d.numa_node) for d in fpga] == [("0000:3b:00.0", "10ee:5005", 0)]
    assert facts.sources["pci"].startswith("/sys/bus/pci/devices")


def test_a_changed_mac_is_flagged_in_show_the_state_db_and_system_host(lab, world):
    from bmm.opennebula import template
    from im_drivers.control import build_report
    from im_drivers.messages import payloads

    inventory, state_db = world
    name = lab.servers[0]
    old_mac = load_node(name, inventory).macs[0]
    inventory.write_text(inventory.read_text().replace(f'"{old_mac}"', f'"{NEW_MAC}"'))
    result, out = inspect_json(name)
    assert result.returncode == 0, result.stderr
    want = f"macs: inventory {NEW_MAC} not seen"
    assert out[name]["inspection"] == "MISMATCH" and out[name]["mismatches"] == [want]

    shown = bmm("show", name, "--no-power", "--inventory", str(inventory))
    assert shown.returncode == 0 and f"mismatch:  {want}" in shown.stdout
    assert "inspection: " in shown.stdout and "(MISMATCH)" in shown.stdout

    assert StateStore(state_db).inspection(name).mismatches == (want,)

    system = template.parse(payloads(build_report(load_config(), name), ("SYSTEM_HOST",))["SYSTEM_HOST"])
    attrs = dict((k, v) for k, v in system if k != "PCI")
    assert attrs["BMM_INSPECTION"] == "MISMATCH" and attrs["BMM_INSPECTION_MISMATCH"] == want
    assert attrs["TOTALCPU"] == str(load_node(name, inventory).cpus * 100)     # capacity: the inventory's
    pci = [v for k, v in system if k == "PCI"]
    assert [(p["VENDOR"], p["DEVICE"], p["CLASS"], p["SHORT_ADDRESS"]) for p in pci] == [
        ("10ee", "5005", "1200", "3b:00.0")]


def test_a_node_that_does_not_answer_fails_alone_within_its_deadline(lab, world):
    """ghost's "sshd" accepts TCP and never says a word (a hung OS): it fails with one line
    naming it when the deadline comes, and every other node is inspected meanwhile."""
    inventory, _ = world
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        inventory.write_text(inventory.read_text() + f"""
[nodes.ghost]
kind = "netboot"
arch = "x86_64"
cpus = 2
memory_mb = 1024
macs = ["02:00:00:00:de:ad"]
[nodes.ghost.ssh]
address = "127.0.0.1"
port = {silent.getsockname()[1]}
key = "{lab.key}"
[nodes.ghost.power]
driver = "manual"
[nodes.ghost.boot]
method = "nfsroot"
""")
        deadline = 8.0
        t0 = time.monotonic()
        result, out = inspect_json("--all", "--timeout", str(deadline))
        elapsed = time.monotonic() - t0
    finally:
        silent.close()
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert errors == [f"bmm: {out['ghost']['error']}"] and errors[0].startswith("bmm: node ghost: ")
    assert not out["ghost"]["ok"] and out["ghost"]["seconds"] <= deadline + 1
    assert all(o["ok"] for name, o in out.items() if name != "ghost")
    assert elapsed < deadline + 15                    # the deadline, the grace, a loaded machine's start-up
    print(f"ghost failed after {out['ghost']['seconds']:.1f} s: {errors[0]}")
