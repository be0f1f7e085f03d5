"""bmm.inspect.parse on outputs captured from real tools and kernels (Debian 12 util-linux
2.38 and iproute2 6.1 on an x86 VM, a 2-socket Xeon, an aarch64 server, a TILEPro64 board
layout, busybox sysfs reads)."""

import pytest

from bmm.inspect import parse
from bmm.inspect.pciids import parse as parse_ids

LSCPU_VM = """{
   "lscpu": [
      {"field": "Architecture:", "data": "x86_64"},
      {"field": "CPU op-mode(s):", "data": "32-bit, 64-bit"},
      {"field": "CPU(s):", "data": "2"},
      {"field": "On-line CPU(s) list:", "data": "0,1"},
      {"field": "Vendor ID:", "data": "AuthenticAMD"},
      {"field": "Model name:", "data": "AMD EPYC"},
      {"field": "Thread(s) per core:", "data": "1"},
      {"field": "Core(s) per socket:", "data": "2"},
      {"field": "Socket(s):", "data": "1"},
      {"field": "BogoMIPS:", "data": "4890.84"},
      {"field": "Hypervisor vendor:", "data": "KVM"},
      {"field": "NUMA node(s):", "data": "1"}
   ]
}"""

# util-linux >= 2.38 nests the per-model fields under "Vendor ID" / "Model name"
LSCPU_XEON = """{
   "lscpu": [
      {"field": "Architecture:", "data": "x86_64", "children": [
         {"field": "CPU op-mode(s):", "data": "32-bit, 64-bit"},
         {"field": "Byte Order:", "data": "Little Endian"}]},
      {"field": "CPU(s):", "data": "80", "children": [
         {"field": "On-line CPU(s) list:", "data": "0-79"}]},
      {"field": "Vendor ID:", "data": "GenuineIntel", "children": [
         {"field": "Model name:", "data": "Intel(R) Xeon(R) Gold 6230N CPU @ 2.30GHz", "children": [
            {"field": "CPU family:", "data": "6"},
            {"field": "Thread(s) per core:", "data": "2"},
            {"field": "Core(s) per socket:", "data": "20"},
            {"field": "Socket(s):", "data": "2"},
            {"field": "CPU max MHz:", "data": "3500.0000"},
            {"field": "CPU min MHz:", "data": "1000.0000"}]}]}
   ]
}"""

CPUINFO_XEON = "".join(
    f"processor\t: {i}\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Gold 6230N CPU @ 2.30GHz\n"
    f"cpu MHz\t\t: 2300.000\nphysical id\t: {i // 4}\nsiblings\t: 4\ncore id\t\t: {(i % 4) // 2}\n"
    f"cpu cores\t: 2\nflags\t\t: fpu vme de pse\n\n" for i in range(8))

CPUINFO_ARM = "".join(
    f"processor\t: {i}\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32\n"
    "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x3\nCPU part\t: 0xd0c\n"
    "CPU revision\t: 1\n\n" for i in range(4))

CPUINFO_TILE = ("cpu count\t: 64\ncpu list\t: 0-63\nmodel name\t: TILEPro64\nflags\t\t:\n"
                "cpu MHz\t\t: 866.000000\nbogomips\t: 1731.58\n\n"
                + "\n\n".join(f"processor\t: {n}" for n in range(64)) + "\n")

MEMINFO = """MemTotal:       24683520 kB
MemFree:        18230436 kB
MemAvailable:   21390140 kB
Buffers:          245884 kB
"""

LSBLK = """{
   "blockdevices": [
      {"name": "loop18", "type": "loop", "size": 4294967296, "model": null, "serial": null, "rota": true, "tran": null},
      {"name": "zram0", "type": "disk", "size": 0, "model": null, "serial": null, "rota": false, "tran": null},
      {"name": "vda", "type": "disk", "size": 274877906944, "model": null, "serial": null, "rota": true, "tran": null},
      {"name": "nvme0n1", "type": "disk", "size": 960197124096, "model": "SAMSUNG MZQL2960HCJR-00A07 ",
       "serial": "S64FNE0R8", "rota": false, "tran": "nvme"},
      {"name": "sr0", "type": "rom", "size": 1073741312, "model": "QEMU DVD-ROM", "serial": null, "rota": true, "tran": "sata"}
   ]
}"""

IP_LINK = """[{"ifindex":1,"ifname":"lo","flags":["LOOPBACK","UP","LOWER_UP"],"mtu":65536,"operstate":"UNKNOWN",
"link_type":"loopback","address":"00:00:00:00:00:00","broadcast":"00:00:00:00:00:00"},
{"ifindex":2,"ifname":"ifb0","flags":["BROADCAST","NOARP"],"operstate":"DOWN","link_type":"ether",
"address":"ce:8c:1c:ee:79:bb","linkinfo":{"info_kind":"ifb"}},
{"ifindex":4,"ifname":"eth0","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"operstate":"UP",
"link_type":"ether","address":"52:54:00:12:34:56","parentbus":"virtio","parentdev":"virtio2"},
{"ifindex":5,"ifname":"eno2","flags":["BROADCAST","MULTICAST","SLAVE","UP","LOWER_UP"],"operstate":"UP",
"link_type":"ether","address":"52:54:00:12:34:56","permaddr":"3c:ec:ef:00:aa:02","parentbus":"pci",
"parentdev":"0000:18:00.1","linkinfo":{"info_slave_kind":"bond"}},
{"ifindex":6,"ifname":"bl04c182h1","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"operstate":"UP",
"link_type":"ether","address":"06:04:c1:82:00:01","linkinfo":{"info_kind":"veth"}},
{"ifindex":7,"ifname":"ib0","flags":["UP"],"operstate":"UP","link_type":"infiniband",
"address":"00:00:10:87:fe:80:00:00:00:00:00:00:98:03:9b:03:00:9a:4a:2c"}]"""

SYS_NET = """/sys/class/net/eth0/address:02:0b:30:5d:00:65
/sys/class/net/eth0/operstate:up
/sys/class/net/eth0/carrier:1
/sys/class/net/eth0/type:1
/sys/class/net/eno1/address:3c:ec:ef:00:aa:01
/sys/class/net/eno1/operstate:down
/sys/class/net/eno1/type:1
/sys/class/net/eno1/device/uevent:DRIVER=igb
/sys/class/net/eno1/device/uevent:PCI_CLASS=20000
/sys/class/net/lo/address:00:00:00:00:00:00
/sys/class/net/lo/operstate:unknown
/sys/class/net/lo/type:772
"""

SYS_BLOCK = """/sys/block/sda/size:524288
/sys/block/sda/queue/rotational:1
/sys/block/sda/device/model:bmm lab sda1.img
/sys/block/loop0/size:8388608
/sys/block/mmcblk0/size:30535680
/sys/block/mmcblk0/queue/rotational:0
"""

LSPCI = """00:00.0 "Host bridge [0600]" "Intel Corporation [8086]" "Sky Lake-E DMI3 Registers [2020]" -r07 "Super Micro Computer Inc [15d9]" "Device [0000]"
00:17.0 "SATA controller [0106]" "Intel Corporation [8086]" "C620 Series Chipset Family SATA Controller [AHCI mode] [a182]" -r09 -p01 "Super Micro Computer Inc [15d9]" "Device [095d]"
03:00.0 "VGA compatible controller [0300]" "ASPEED Technology, Inc. [1a03]" "ASPEED Graphics Family [2000]" -r41 "Super Micro Computer Inc [15d9]" "Device [1b95]"
3b:00.0 "3D controller [0302]" "NVIDIA Corporation [10de]" "GV100GL [Tesla V100 PCIe 16GB] [1db4]" -ra1 "NVIDIA Corporation [10de]" "Device [1214]"
3b:00.1 "Audio device [0403]" "NVIDIA Corporation [10de]" "GP104 High Definition Audio Controller [10f0]" -ra1 "" ""
0001:5e:00.0 "Processing accelerators [1200]" "Xilinx Corporation [10ee]" "Alveo U250 [5005]" "Xilinx Corporation [10ee]" "Device [000e]"
"""

SYS_PCI = """/sys/bus/pci/devices/0000:3b:00.0/vendor:0x10de
/sys/bus/pci/devices/0000:3b:00.0/device:0x1db4
/sys/bus/pci/devices/0000:3b:00.0/class:0x030200
/sys/bus/pci/devices/0000:3b:00.0/subsystem_vendor:0x10de
/sys/bus/pci/devices/0000:3b:00.0/subsystem_device:0x1214
/sys/bus/pci/devices/0000:3b:00.0/revision:0xa1
/sys/bus/pci/devices/0000:3b:00.0/numa_node:1
/sys/bus/pci/devices/0000:00:17.0/vendor:0x8086
/sys/bus/pci/devices/0000:00:17.0/device:0xa182
/sys/bus/pci/devices/0000:00:17.0/class:0x010601
/sys/bus/pci/devices/0000:00:17.0/numa_node:-1
/sys/bus/pci/devices/0000:00:05.0/vendor:0x1af4
"""

IPMI_MC_INFO = """Device ID                 : 32
Device Revision           : 1
Firmware Revision         : 1.73
IPMI Version              : 2.0
Manufacturer ID           : 10876
Manufacturer Name         : Supermicro
Product ID                : 2327 (0x0917)
Product Name              : Unknown (0x917)
Device Available          : yes
Provides Device SDRs      : no
Additional Device Support :
    Sensor Device
    SDR Repository Device
Aux Firmware Rev Info     :
    0x00
"""

PCI_IDS = """# pci.ids excerpt
10de  NVIDIA Corporation
\t1db4  GV100GL [Tesla V100 PCIe 16GB]
\t\t10de 1214  Tesla V100 PCIe 16GB
10ee  Xilinx Corporation
\t5005  Alveo U250
C 03  Display controller
\t00  VGA compatible controller
\t\t00  VGA controller
\t02  3D controller
C 12  Processing accelerators
\t00  Processing accelerators
"""


def test_lscpu_of_a_vm_and_of_a_two_socket_xeon_with_nested_fields():
    vm = parse.lscpu_json(LSCPU_VM)
    assert (vm.model, vm.arch, vm.sockets, vm.cores, vm.threads, vm.mhz) == ("AMD EPYC", "x86_64", 1, 2, 2, None)
    xeon = parse.lscpu_json(LSCPU_XEON)
    assert (xeon.model, xeon.sockets, xeon.cores, xeon.threads, xeon.mhz) == (
        "Intel(R) Xeon(R) Gold 6230N CPU @ 2.30GHz", 2, 40, 80, 3500.0)
    with pytest.raises(ValueError):
        parse.lscpu_json("lscpu: invalid option -- 'J'")


def test_cpuinfo_x86_counts_sockets_cores_and_threads():
    cpu = parse.cpuinfo(CPUINFO_XEON)
    assert (cpu.sockets, cpu.cores, cpu.threads, cpu.mhz) == (2, 4, 8, 2300.0)
    assert cpu.model.startswith("Intel(R) Xeon(R) Gold")


def test_cpuinfo_arm_has_no_model_and_tile_has_one_header():
    arm = parse.cpuinfo(CPUINFO_ARM)
    assert (arm.model, arm.threads, arm.cores, arm.sockets) == (None, 4, 4, 1)
    tile = parse.cpuinfo(CPUINFO_TILE)
    assert (tile.model, tile.threads, tile.cores, tile.mhz) == ("TILEPro64", 64, 64, 866.0)
    assert parse.cpuinfo("cpu count\t: 36\nmodel name\t: TILE-Gx36\n").threads == 36


def test_lscpu_gaps_are_filled_from_cpuinfo():
    merged = parse.merge_cpu(parse.lscpu_json(LSCPU_VM), parse.cpuinfo("processor : 0\ncpu MHz : 2445.4\n"))
    assert merged.mhz == 2445.4 and merged.threads == 2
    assert parse.merge_cpu(None, parse.cpuinfo(CPUINFO_TILE)).model == "TILEPro64"


def test_meminfo():
    assert parse.meminfo(MEMINFO) == 24683520
    with pytest.raises(ValueError):
        parse.meminfo("")


def test_lsblk_keeps_whole_disks_only():
    disks = parse.lsblk_json(LSBLK)
    assert [(d.name, d.size_bytes, d.rotational) for d in disks] == [
        ("vda", 274877906944, True), ("nvme0n1", 960197124096, False)]
    assert disks[1].model == "SAMSUNG MZQL2960HCJR-00A07" and disks[1].transport == "nvme"


def test_sysfs_block_sizes_are_sectors():
    disks = parse.sysfs_block(parse.grep_values(SYS_BLOCK, "/sys/block"))
    assert [(d.name, d.size_bytes, d.rotational, d.model) for d in disks] == [
        ("mmcblk0", 30535680 * 512, False, None), ("sda", 256 * 2**20, True, "bmm lab sda1.img")]


def test_ip_link_ethernet_only_physical_by_parent_bus_or_no_link_kind():
    nics = {n.name: n for n in parse.ip_link_json(IP_LINK)}
    assert set(nics) == {"ifb0", "eth0", "eno2", "bl04c182h1"}      # no lo, no infiniband
    assert nics["eth0"].physical and nics["eth0"].state == "up" and nics["eth0"].carrier
    assert nics["eno2"].physical and nics["eno2"].perm_mac == "3c:ec:ef:00:aa:02"   # a bond port
    assert not nics["bl04c182h1"].physical and not nics["ifb0"].physical
    assert nics["ifb0"].carrier is False
    with pytest.raises(ValueError):
        parse.ip_link_json("BusyBox v1.35.0 multi-call binary.")


def test_sysfs_net_type_1_is_ethernet_and_a_device_means_hardware():
    nics = {n.name: n for n in parse.sysfs_net(parse.grep_values(SYS_NET, "/sys/class/net"))}
    assert set(nics) == {"eth0", "eno1"}
    assert (nics["eth0"].mac, nics["eth0"].carrier, nics["eth0"].physical) == ("02:0b:30:5d:00:65", True, False)
    assert (nics["eno1"].physical, nics["eno1"].driver, nics["eno1"].carrier) == (True, "igb", None)


def test_lspci_machine_readable_with_prog_if_domains_and_missing_subsystem():
    devs = {d.address: d for d in parse.lspci_mm(LSPCI)}
    assert list(devs) == ["0000:00:00.0", "0000:00:17.0", "0000:03:00.0", "0000:3b:00.0", "0000:3b:00.1",
                          "0001:5e:00.0"]
    gpu = devs["0000:3b:00.0"]
    assert (gpu.vendor, gpu.device, gpu.class_code, gpu.revision) == ("10de", "1db4", "0302", "a1")
    assert gpu.device_name == "GV100GL [Tesla V100 PCIe 16GB]" and gpu.vendor_name == "NVIDIA Corporation"
    assert (gpu.subsystem_vendor, gpu.subsystem_device) == ("10de", "1214")
    assert devs["0000:00:17.0"].prog_if == "01"
    assert devs["0000:3b:00.1"].subsystem_vendor == ""
    assert devs["0000:00:00.0"].subsystem_device == "0000"
    with pytest.raises(ValueError):
        parse.lspci_mm("Usage: lspci [-mk]\n")


def test_sysfs_pci_and_merging_with_lspci():
    raw = {d.address: d for d in parse.sysfs_pci(parse.grep_values(SYS_PCI, "/sys/bus/pci/devices"))}
    assert set(raw) == {"0000:3b:00.0", "0000:00:17.0"}           # 00:05.0 has no class: left out
    assert (raw["0000:3b:00.0"].class_code, raw["0000:3b:00.0"].numa_node) == ("0302", 1)
    assert raw["0000:00:17.0"].numa_node is None and raw["0000:00:17.0"].prog_if == "01"
    merged = {d.address: d for d in parse.merge_pci(parse.lspci_mm(LSPCI), list(raw.values()))}
    assert merged["0000:3b:00.0"].numa_node == 1 and merged["0000:3b:00.0"].device_name.startswith("GV100GL")
    assert len(merged) == 6


def test_grep_values_keeps_colons_in_entries_and_values():
    values = parse.grep_values("/sys/bus/pci/devices/0000:3b:00.0/vendor:0x10de\n"
                               "/sys/class/net/eth0/address:aa:bb:cc:dd:ee:ff\n", "/sys/bus/pci/devices")
    assert values == {"0000:3b:00.0": {"vendor": "0x10de"}}
    assert parse.names("0000:00:00.0\n../etc\nfoo bar\n", parse.ADDRESS_RE) == ["0000:00:00.0"]


def test_ipmitool_mc_info():
    info = parse.ipmitool_mc_info(IPMI_MC_INFO)
    assert info == {"device_id": "32", "firmware_revision": "1.73", "ipmi_version": "2.0",
                    "manufacturer_id": "10876", "manufacturer_name": "Supermicro", "product_id": "2327 (0x0917)"}
    with pytest.raises(ValueError):
        parse.ipmitool_mc_info("Could not open device at /dev/ipmi0 or /dev/ipmi/0 or /dev/ipmidev/0")


def test_pci_ids_names_vendors_devices_and_classes():
    ids = parse_ids(PCI_IDS)
    assert ids.vendor("10DE") == "NVIDIA Corporation"
    assert ids.device("10de", "1db4") == "GV100GL [Tesla V100 PCIe 16GB]"
    assert ids.class_name("0302") == "3D controller" and ids.class_name("1280") == "Processing accelerators"
    assert ids.device("10de", "1214") == ""                    # a subsystem line is not a device
