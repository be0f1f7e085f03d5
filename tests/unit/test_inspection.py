"""Inspection without a machine: PCI classification and OpenNebula's PCI format, the diff
against the inventory, the host attributes and SYSTEM_HOST, the probe's fallbacks on a fake
ssh session, the state table, and the runner's deadlines."""

import threading
import time
from dataclasses import replace

import pytest

from bmm.errors import TimeoutExpired, TransientError
from bmm.inspect import diff
from bmm.inspect.attributes import host_attributes
from bmm.inspect.facts import Cpu, Facts, Nic
from bmm.inspect.pci import PciDevice, classify, one_attributes
from bmm.inspect.probe import Probe
from bmm.inspect.run import Outcome, inspect_node, inspect_nodes
from bmm.inventory import load_inventory
from bmm.opennebula import template
from bmm.runner import Result
from bmm.state import StateStore
from im_drivers.report import HostReport
from tests.unit.test_inspection_parse import (CPUINFO_TILE, CPUINFO_XEON, IP_LINK, LSBLK, LSCPU_XEON, LSPCI,
                                              MEMINFO, SYS_BLOCK, SYS_NET, SYS_PCI)

INVENTORY = """\
[nodes.node01]
kind      = "localdisk"
arch      = "x86_64"
model     = "GPU server"
cpus      = 40
memory_mb = 24104
disk_gb   = 500
macs      = ["52:54:00:12:34:56"]
ip        = "10.0.0.11"
[nodes.node01.power]
driver = "manual"
[nodes.node01.boot]
method = "grub"
[nodes.node01.storage]
vg = "bmmvg"
[nodes.node01.hardware]
gpu = "NVIDIA Tesla V100"
"""

GPU = PciDevice("0000:3b:00.0", "10de", "1db4", "0302", revision="a1", numa_node=1,
                vendor_name="NVIDIA Corporation", device_name="GV100GL [Tesla V100 PCIe 16GB]",
                class_name="3D controller")
FPGA_DEV = PciDevice("0000:5e:00.0", "10ee", "5005", "1200", vendor_name="Xilinx Corporation",
                     device_name="Alveo U250", class_name="Processing accelerators")


@pytest.fixture
def node(tmp_path):
    path = tmp_path / "nodes.toml"
    path.write_text(INVENTORY)
    return load_inventory(path, extra_kinds=()).get("node01")


@pytest.fixture
def store(tmp_path):
    return StateStore(tmp_path / "state.db", lock_wait_s=1)


def facts(**kw) -> Facts:
    base = dict(cpu=Cpu(model="Intel(R) Xeon(R) Gold 6230N", sockets=2, cores=40, threads=80, mhz=2300.0),
                memory_kib=24104 * 1024 - 300, nics=(Nic("eth0", "52:54:00:12:34:56", "up", True, True),),
                pci=(GPU,), sources={"cpu": "lscpu", "memory": "/proc/meminfo", "nics": "ip", "pci": "lspci"})
    base.update(kw)
    return Facts(**base)


# --------------------------------------------------------------------------- PCI

@pytest.mark.parametrize("vendor,device,klass,kind", [
    ("10de", "1db4", "0302", "gpu"),            # NVIDIA 3D controller
    ("10de", "2204", "0300", "gpu"),            # NVIDIA VGA
    ("10de", "10f0", "0403", None),             # the GPU's HDMI audio function
    ("10de", "1af1", "0680", None),             # NVSwitch (a bridge class)
    ("1002", "740f", "0380", "gpu"),            # AMD Instinct MI210
    ("1a03", "2000", "0300", None),             # ASPEED BMC VGA: class 0300, no GPU
    ("102b", "0522", "0300", None),             # Matrox BMC VGA
    ("10ee", "5005", "1200", "fpga"),           # Xilinx Alveo U250
    ("10ee", "7038", "0580", "fpga"),           # Xilinx XDMA default (memory controller class)
    ("10ee", "9038", "0604", None),             # a Xilinx PCIe bridge
    ("1172", "e001", "ff00", "fpga"),           # Altera, unassigned class
    ("8086", "09c4", "1200", "fpga"),           # Intel PAC Arria 10
    ("8086", "0b30", "1200", "fpga"),           # Intel PAC N3000
    ("8086", "1521", "0200", None),             # Intel I350 NIC
    ("8086", "37c8", "0b40", "accelerator"),    # Intel QAT (co-processor)
    ("1da3", "1020", "1200", "accelerator"),    # Habana Gaudi
    ("1234", "5678", "ff00", None),             # unassigned class, unknown vendor
])
def test_classification_by_vendor_and_class_together(vendor, device, klass, kind):
    assert classify(PciDevice("0000:01:00.0", vendor, device, klass)) == kind


def test_opennebula_pci_format_as_the_kvm_probe_writes_it():
    attrs = one_attributes(GPU)
    assert attrs == {
        "TYPE": "10de:1db4:0302", "VENDOR": "10de", "VENDOR_NAME": "NVIDIA Corporation", "DEVICE": "1db4",
        "DEVICE_NAME": "NVIDIA Corporation GV100GL [Tesla V100 PCIe 16GB]", "CLASS": "0302",
        "CLASS_NAME": "3D controller", "ADDRESS": "0000:3b:00:0", "SHORT_ADDRESS": "3b:00.0",
        "DOMAIN": "0000", "BUS": "3b", "SLOT": "00", "FUNCTION": "0", "NUMA_NODE": "1"}
    assert one_attributes(FPGA_DEV)["DEVICE_NAME"] == "Alveo U250"
    assert one_attributes(FPGA_DEV)["NUMA_NODE"] == "-"


def test_facts_round_trip_through_json():
    f = facts(firmware={"bios_vendor": "AMI"}, notes=("bmc: none",))
    assert Facts.from_dict(f.to_dict()) == f


# --------------------------------------------------------------------------- diff

def texts(node, f):
    return [m.text for m in diff.mismatches(node, f)]


def test_a_machine_that_matches_its_inventory(node):
    assert texts(node, facts()) == []


def test_a_changed_mac_and_an_extra_physical_nic(node):
    f = facts(nics=(Nic("eth0", "52:54:00:aa:bb:cc", "up", True, True),
                    Nic("br0", "52:54:00:aa:bb:cd", "up", True, False)))
    assert texts(node, f) == ["macs: inventory 52:54:00:12:34:56 not seen",
                              "macs: seen 52:54:00:aa:bb:cc (eth0) not in inventory"]
    bonded = facts(nics=(Nic("eno1", "02:00:00:00:00:01", "up", True, True, perm_mac="52:54:00:12:34:56"),))
    assert texts(node, bonded) == []                       # the burnt-in MAC counts


def test_memory_tolerance_and_cpu_counts(node):
    assert texts(node, facts(memory_kib=int(24104 * 0.91) * 1024)) == []          # the OS sees less
    assert texts(node, facts(memory_kib=int(24104 * 0.85) * 1024)) == [
        f"memory: inventory 24104 MB, seen {int(24104 * 0.85)} MB"]
    assert texts(node, facts(memory_kib=int(24104 * 1.03) * 1024))[0].startswith("memory:")
    assert texts(node, facts(cpu=Cpu(cores=40, threads=40))) == []
    assert texts(node, facts(cpu=Cpu(cores=20, threads=80))) == ["cpus: inventory 40, seen 20 cores / 80 threads"]
    assert texts(replace(node, cpus=80), facts(cpu=Cpu(cores=40, threads=80))) == []
    assert texts(node, facts(cpu=Cpu(cores=8, threads=16))) == ["cpus: inventory 40, seen 8 cores / 16 threads"]


def test_fpga_and_gpu_against_the_inventory(node):
    assert texts(node, facts(pci=())) == ["gpu: inventory 'NVIDIA Tesla V100' not seen on PCI"]
    both = facts(pci=(GPU, FPGA_DEV))
    assert texts(node, both) == ["fpga: seen Xilinx Alveo U250 (10ee:5005), inventory has none"]
    amd = replace(GPU, vendor="1002", device="740f", class_code="0380", device_name="Instinct MI210")
    assert texts(node, facts(pci=(amd,))) == [
        "gpu: inventory 'NVIDIA Tesla V100', seen AMD Instinct MI210 (1002:740f)"]
    convey = replace(node, hardware={"fpga": "Xilinx Virtex-6 LX760 x4", "fpga_bus": "fsb", "gpu": "NVIDIA"})
    assert texts(convey, facts()) == []                    # an FSB coprocessor is not on PCI


def test_unread_sections_are_not_compared(node):
    assert texts(node, facts(nics=(), pci=(), sources={"cpu": "lscpu"}, memory_kib=None)) == []


def test_summary_is_cut_with_a_count():
    many = [diff.Mismatch("macs", f"macs: inventory 52:54:00:00:00:{i:02x} not seen") for i in range(20)]
    text = diff.summary(many)
    assert len(text) <= diff.SUMMARY_CHARS and text.endswith("more)")
    assert diff.summary(many[:2]) == "; ".join(m.text for m in many[:2])


# --------------------------------------------------------------------------- attributes, SYSTEM_HOST

def test_host_attributes_render_as_a_template(node):
    pairs = dict(host_attributes(node, facts(pci=(GPU, FPGA_DEV)), "2026-12-01T10:00:00Z"))
    assert pairs["BMM_INSPECTION"] == "MISMATCH" and pairs["BMM_INSPECTION_MISMATCH"].startswith("fpga: seen")
    assert pairs["BMM_GPU_COUNT"] == 1 and pairs["BMM_FPGA"] == "Xilinx Alveo U250"
    assert pairs["BMM_PCI_IDS"] == "10de:1db4,10ee:5005" and pairs["CPUSPEED"] == 2300
    assert [v["VENDOR"] for v in pairs["PCI"]] == ["10de", "10ee"]
    parsed = template.parse(template.render(host_attributes(node, facts(), "t")))
    assert ("BMM_INSPECTION_MISMATCH", "none") in parsed
    assert [a for k, a in parsed if k == "PCI"][0]["SHORT_ADDRESS"] == "3b:00.0"


class NoDisk:
    def used_disk_mb(self, record):
        return 0


def test_system_host_adds_inspected_facts_and_keeps_the_inventory_capacity(node, store):
    report = lambda: dict((k, v) for k, v in HostReport(node, None, store, kind=NoDisk()).system_host()  # noqa: E731
                          if k != "PCI")
    before = report()
    assert "BMM_INSPECTION" not in before and before["TOTALCPU"] == 4000
    small = facts(cpu=Cpu(model="Xeon", cores=8, threads=16, mhz=2300.0), memory_kib=8 * 2**20)
    store.save_inspection("node01", small.to_dict(), [])
    after = report()
    assert after["TOTALCPU"] == 4000 and after["TOTALMEMORY"] == 24104 * 1024      # inventory wins
    assert after["BMM_INSPECTION"] == "MISMATCH"
    assert after["BMM_INSPECTION_MISMATCH"] == ("memory: inventory 24104 MB, seen 8192 MB; "
                                                "cpus: inventory 40, seen 8 cores / 16 threads")
    assert after["BMM_GPU"] == "NVIDIA Tesla V100"          # the inventory's words, not the PCI name
    assert after["CPUSPEED"] == 2300 and after["BMM_ACCELERATED"] == "YES"
    pci = [v for k, v in HostReport(node, None, store, kind=NoDisk()).system_host() if k == "PCI"]
    assert pci == [[one_attributes(GPU)]]


def test_the_inspection_table(store):
    assert store.inspection("node01") is None
    assert store.inspection_failed("node01", "no answer").facts is None
    store.save_inspection("node01", {"cpu": {}}, ["macs: x"])
    failed = store.inspection_failed("node01", "ssh: timed out")
    assert failed.facts == {"cpu": {}} and failed.mismatches == ("macs: x",) and failed.last_error == "ssh: timed out"
    assert store.get("node01").state == "available"          # the node's record is untouched


# --------------------------------------------------------------------------- the probe

def matches(argv, key) -> bool:
    """argv starts with key's words, the last of them a prefix (a path under a directory)."""
    last = argv[len(key) - 1] if len(argv) >= len(key) else None
    return (last is not None and tuple(argv[:len(key) - 1]) == key[:-1]
            and (last == key[-1] or (key[-1].startswith("/") and last.startswith(key[-1]))))


class FakeSession:
    """Answers argv by its first words; "hang" raises the ssh timeout."""

    def __init__(self, answers):
        self.answers = answers
        self.calls = []

    def run(self, argv, *, timeout, check):
        self.calls.append((tuple(argv), timeout))
        for key, answer in self.answers.items():
            if matches(argv, key):
                if answer == "hang":
                    time.sleep(min(timeout, 0.05))
                    raise TimeoutExpired(f"{argv[0]} did not finish")
                code, out = answer if isinstance(answer, tuple) else (0, answer)
                return Result(tuple(argv), code, out, "")
        return Result(tuple(argv), 127, "", f"sh: {argv[0]}: not found")

    def close(self):
        pass


FULL = {("cat", "/proc/cpuinfo"): CPUINFO_XEON, ("cat", "/proc/meminfo"): MEMINFO, ("lscpu",): LSCPU_XEON,
        ("lsblk",): LSBLK, ("ip",): IP_LINK, ("lspci",): LSPCI,
        ("ls", "-1", "/sys/bus/pci/devices"): "0000:3b:00.0\n0000:00:17.0\n",
        ("grep", "-s", "-H", ".", "/sys/bus/pci"): SYS_PCI,
        ("grep", "-s", "-H", ".", "/sys/class/dmi"): "/sys/class/dmi/id/bios_vendor:American Megatrends\n"}

MINIMAL = {("cat", "/proc/cpuinfo"): CPUINFO_TILE, ("cat", "/proc/meminfo"): MEMINFO,
           ("ip",): (1, "BusyBox v1.35.0 multi-call binary.\n"),
           ("ls", "-1", "/sys/block"): "sda\nloop0\n", ("ls", "-1", "/sys/class/net"): "eth0\nlo\n",
           ("ls", "-1", "/sys/bus/pci/devices"): "",
           ("grep", "-s", "-H", ".", "/sys/block"): SYS_BLOCK, ("grep", "-s", "-H", ".", "/sys/class/net"): SYS_NET}


def probe(answers, seconds=10.0):
    session = FakeSession(answers)
    return session, Probe(session, deadline=time.monotonic() + seconds, node="n1")


def test_probe_with_the_standard_tools():
    session, p = probe(FULL)
    f = p.collect()
    assert f.cpu.threads == 80 and f.cpu.mhz == 3500.0 and f.memory_kib == 24683520
    assert [d.name for d in f.disks] == ["vda", "nvme0n1"] and len(f.nics) == 4
    assert {d.address for d in f.accelerators("gpu")} == {"0000:3b:00.0"}
    assert f.accelerators("gpu")[0].numa_node == 1
    assert f.sources["pci"] == "lspci -nn -mm + /sys/bus/pci/devices" and f.sources["disks"] == "lsblk -J -b"
    assert f.firmware == {"bios_vendor": "American Megatrends"} and f.bmc == {}
    assert all(isinstance(argv, tuple) and timeout <= 10 for argv, timeout in session.calls)
    assert ("ipmitool", "mc", "info") not in [c[0] for c in session.calls]    # no /dev/ipmi0


def test_probe_on_a_minimal_os_falls_back_to_proc_and_sys():
    _, p = probe(MINIMAL)
    f = p.collect()
    assert f.cpu.model == "TILEPro64" and f.cpu.threads == 64
    assert f.sources == {"cpu": "/proc/cpuinfo", "memory": "/proc/meminfo", "disks": "/sys/block",
                         "nics": "/sys/class/net", "pci": "/sys/bus/pci/devices (names: this front-end's pci.ids)"}
    assert [d.name for d in f.disks] == ["mmcblk0", "sda"] and f.pci == ()
    assert [n.name for n in f.nics] == ["eno1", "eth0"]


def test_a_hung_command_is_noted_and_a_passed_deadline_fails_the_node():
    _, p = probe({**FULL, ("lscpu",): "hang"})
    f = p.collect()
    assert f.cpu.threads == 8 and any("lscpu did not finish" in n for n in f.notes)
    _, late = probe(FULL, seconds=-1)
    with pytest.raises(TimeoutExpired):
        late.collect()


def test_the_bmc_is_asked_only_when_the_os_has_an_ipmi_device():
    session, p = probe({**FULL, ("ls", "/dev/ipmi0"): (2, "/dev/ipmi0\n"),
                        ("ipmitool", "mc", "info"): "Firmware Revision : 1.73\nIPMI Version : 2.0\n"})
    assert p.collect().bmc == {"firmware_revision": "1.73", "ipmi_version": "2.0"}
    assert [t for argv, t in session.calls if argv[0] == "ipmitool"] == [5.0]


# --------------------------------------------------------------------------- the runner

def test_inspect_node_records_facts_and_mismatches(node, store):
    outcome = inspect_node(node, store, time.monotonic() + 10, connect=lambda n, d: FakeSession(FULL))
    assert outcome.ok and [m.text for m in outcome.mismatches] == [
        "fpga: seen Xilinx Alveo U250 (10ee:5005), inventory has none"]
    record = store.inspection("node01")
    assert record.mismatches == ("fpga: seen Xilinx Alveo U250 (10ee:5005), inventory has none",)
    assert Facts.from_dict(record.facts) == outcome.facts and record.inspected_at == outcome.inspected_at


def test_inspect_node_refuses_a_node_with_an_instance_and_a_locked_one(node, store):
    store.transition("node01", "deploying", vm_id=7)
    assert inspect_node(node, store, time.monotonic() + 5).error.startswith("node node01: is deploying (holds VM 7)")
    store.transition("node01", "error", error="test")
    store.transition("node01", "cleaning")
    store.transition("node01", "available")
    holder = threading.Event()
    release = threading.Event()

    def hold():
        with store.lock("node01", "deploy", vm_id=8):
            holder.set()
            release.wait(5)

    t = threading.Thread(target=hold)
    t.start()
    holder.wait(5)
    try:
        assert "node node01 is locked by deploy" in inspect_node(node, store, time.monotonic() + 5).error
    finally:
        release.set()
        t.join()


def test_an_unreachable_node_fails_alone_and_is_recorded(node, store):
    def refuse(n, d):
        raise TransientError("ssh root@10.0.0.11:22: timed out", node=n.name)

    outcome = inspect_node(node, store, time.monotonic() + 5, connect=refuse)
    assert outcome.error == "node node01: ssh root@10.0.0.11:22: timed out"
    assert store.inspection("node01").last_error == "ssh root@10.0.0.11:22: timed out"


def test_inspect_nodes_keeps_the_overall_deadline(node):
    nodes = [replace(node, name=f"n{i}") for i in range(5)]

    def fake(n, store, deadline):
        if n.name == "n2":
            time.sleep(30)
        return Outcome(n.name, facts=facts())

    t0 = time.monotonic()
    outcomes = inspect_nodes(nodes, None, timeout=0.5, workers=3, inspect=fake)
    assert time.monotonic() - t0 < 0.5 + 2.5
    assert [o.name for o in outcomes] == [n.name for n in nodes]
    assert [o.ok for o in outcomes] == [True, True, False, True, True]
    assert outcomes[2].error == "node n2: no answer within the deadline (0.5 s)"
