"""PCI functions: what a node's PCI bus holds, which of them are accelerators, and how
OpenNebula writes them in a host's `PCI = [ ... ]` attributes.

A device is an FPGA, a GPU or another accelerator by its vendor and class together, never by
one of them alone: an ASPEED BMC's VGA function is class 0300 and no GPU; an NVIDIA GPU's
HDMI audio function is vendor 10de and no GPU; Intel (8086) makes NICs and chipsets, and
only a few of its device ids are FPGA cards. The table (docs/inspection.md has it with its
sources) is CLASSIFY below; the first rule that matches decides.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace

FPGA, GPU, ACCELERATOR = "fpga", "gpu", "accelerator"

ADDRESS_RE = re.compile(r"^([0-9a-f]{4}):([0-9a-f]{2}):([0-9a-f]{2})\.([0-7])$")

# Vendors whose PCI functions are FPGAs (except their bridges and NICs).
FPGA_VENDORS = {
    "10ee": "Xilinx",            # Xilinx, now AMD: Alveo, Versal, Virtex cards
    "1172": "Altera",            # Altera, later Intel PSG: Stratix/Arria cards
}
# Intel's FPGA cards, by device id (Linux drivers/fpga/dfl-pci.c; DPDK ifpga_rawdev.c).
INTEL_FPGA_DEVICES = {
    "09c4", "09c5",              # PAC with Arria 10 GX (PF, VF)
    "0b2b", "0b2c",              # PAC D5005 (Stratix 10)
    "0b30", "0b31",              # PAC N3000
    "bcbd", "bcbf", "bcc0", "bcc1",   # integrated FPGA (Xeon + FPGA) 5.x / 6.x
    "bcce", "bccf",              # OFS / DFL cards (Agilex: N6000, N6001, C6100)
}
SILICOM_FPGA_DEVICES = {"1000", "1001"}   # vendor 1c2c: FPGA SmartNIC N5010 / N5011
GPU_VENDORS = {"10de": "NVIDIA", "1002": "AMD", "8086": "Intel"}
GPU_CLASSES = {"0300", "0302", "0380"}    # VGA, 3D controller, other display controller
ACCELERATOR_CLASSES = {"1200", "0b40"}    # processing accelerator, co-processor


@dataclass(frozen=True)
class PciDevice:
    address: str                 # 0000:3b:00.0 (domain:bus:slot.function)
    vendor: str                  # 4 lower-case hex digits
    device: str
    class_code: str              # class + subclass, 4 hex digits: 0302
    prog_if: str = "00"
    subsystem_vendor: str = ""
    subsystem_device: str = ""
    revision: str = ""
    numa_node: int | None = None
    vendor_name: str = ""
    device_name: str = ""
    class_name: str = ""

    @property
    def kind(self) -> str | None:
        return classify(self)

    @property
    def ids(self) -> str:
        return f"{self.vendor}:{self.device}"

    def label(self) -> str:
        """"Xilinx Alveo U250": the vendor's short name and the device's name."""
        short = (FPGA_VENDORS.get(self.vendor) or GPU_VENDORS.get(self.vendor)
                 or self.vendor_name.split(" ")[0] or self.vendor)
        name = self.device_name or f"device {self.device}"
        return f"{short} {name}"

    def to_dict(self) -> dict:
        return asdict(self)

    def named(self, ids) -> "PciDevice":
        """This device with empty names filled from a bmm.inspect.pciids.PciIds."""
        return replace(self, vendor_name=self.vendor_name or ids.vendor(self.vendor),
                       device_name=self.device_name or ids.device(self.vendor, self.device),
                       class_name=self.class_name or ids.class_name(self.class_code))


def classify(dev: PciDevice) -> str | None:
    """fpga, gpu, accelerator or None, by vendor and class together (first rule wins)."""
    base = dev.class_code[:2]
    if base in ("02", "06"):                      # NICs and bridges, whoever made them
        return None
    if dev.vendor in FPGA_VENDORS:
        return FPGA
    if dev.vendor == "8086" and dev.device in INTEL_FPGA_DEVICES:
        return FPGA
    if dev.vendor == "1c2c" and dev.device in SILICOM_FPGA_DEVICES:
        return FPGA
    if dev.class_code in GPU_CLASSES:
        return GPU if dev.vendor in GPU_VENDORS else None
    if dev.class_code in ACCELERATOR_CLASSES:
        return ACCELERATOR
    return None


def split_address(address: str) -> tuple[str, str, str, str]:
    """(domain, bus, slot, function) of 0000:3b:00.0; a 3b:00.0 gets domain 0000."""
    full = address.lower() if address.count(":") == 2 else f"0000:{address.lower()}"
    m = ADDRESS_RE.match(full)
    if not m:
        raise ValueError(f"not a PCI address: {address!r}")
    return m.group(1), m.group(2), m.group(3), m.group(4)


def normal_address(address: str) -> str:
    domain, bus, slot, function = split_address(address)
    return f"{domain}:{bus}:{slot}.{function}"


def one_attributes(dev: PciDevice) -> dict[str, str]:
    """The device as OpenNebula's kvm probe (im_mad/remotes/node-probes.d/pci.rb) writes it:
    oned keys HOST_SHARE/PCI_DEVICES by ADDRESS and matches VM requests on VENDOR, DEVICE
    and CLASS (hex) or SHORT_ADDRESS (src/host/HostSharePCI.cc)."""
    domain, bus, slot, function = split_address(dev.address)
    # pci.rb names an NVIDIA GPU (not a vGPU) "<vendor name> <device name>"
    name = f"{dev.vendor_name} {dev.device_name}".strip() if dev.vendor == "10de" else dev.device_name
    return {
        "TYPE": f"{dev.vendor}:{dev.device}:{dev.class_code}",
        "VENDOR": dev.vendor,
        "VENDOR_NAME": dev.vendor_name,
        "DEVICE": dev.device,
        "DEVICE_NAME": name,
        "CLASS": dev.class_code,
        "CLASS_NAME": dev.class_name,
        "ADDRESS": f"{domain}:{bus}:{slot}:{function}",
        "SHORT_ADDRESS": f"{bus}:{slot}.{function}",
        "DOMAIN": domain,
        "BUS": bus,
        "SLOT": slot,
        "FUNCTION": function,
        "NUMA_NODE": "-" if dev.numa_node is None or dev.numa_node < 0 else str(dev.numa_node),
    }
