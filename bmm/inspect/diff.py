"""Where a machine's inspected facts and its inventory entry disagree.

Each Mismatch is one short line ("macs: inventory 52:54:00:00:01:01 not seen") naming the
field and both sides; values from the inventory are cut short and never include secrets (the
inventory holds none: passwords live in password_file). What is compared:

- macs: every inventory MAC must be on one of the machine's NICs (or be a NIC's burnt-in MAC);
  a physical NIC whose MAC the inventory lacks is flagged too (bridges, veths, bonds are not);
- memory: the OS sees less than the DIMMs hold (firmware, kernel, crashkernel), so only
  more than MEMORY_BELOW under, or MEMORY_ABOVE over, the inventory's memory_mb counts;
- cpus: the inventory's `cpus` must be the machine's core count or its thread count;
- fpga, gpu: `[hardware] fpga` / `gpu` against the FPGAs/GPUs on the PCI bus: one present
  without the other, or a vendor the other side does not name. An FPGA off the PCI bus
  (`[hardware] fpga_bus = "fsb"`: Convey HC-1/HC-2/HC-2ex sit in a Xeon socket) is not
  expected on PCI.

A section the probe could not read is not compared (its note says why).
"""

from __future__ import annotations

from dataclasses import dataclass

from bmm.inspect.facts import Facts
from bmm.inspect.pci import FPGA, GPU

MEMORY_BELOW = 0.10
MEMORY_ABOVE = 0.02
VALUE_CHARS = 40
SUMMARY_CHARS = 240

# Words an inventory uses for a vendor -> the PCI vendor ids that vendor's devices carry.
VENDOR_WORDS = {
    "xilinx": {"10ee"}, "alveo": {"10ee"}, "versal": {"10ee"}, "virtex": {"10ee"},
    "altera": {"1172", "8086"}, "stratix": {"1172", "8086"}, "arria": {"1172", "8086"},
    "agilex": {"8086"}, "intel": {"8086", "1172"},
    "nvidia": {"10de"}, "tesla": {"10de"}, "geforce": {"10de"},
    "radeon": {"1002"}, "instinct": {"1002"}, "amd": {"1002", "10ee"},
}


@dataclass(frozen=True)
class Mismatch:
    field: str                   # macs | memory | cpus | fpga | gpu
    text: str

    def __str__(self) -> str:
        return self.text


def _short(value) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= VALUE_CHARS else text[:VALUE_CHARS - 1] + "…"


def _inventory_text(value) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value) if value else ""


def mismatches(node, facts: Facts) -> list[Mismatch]:
    """Every disagreement between the node's inventory entry and what inspection read."""
    out: list[Mismatch] = []
    if "nics" in facts.sources:
        out += _macs(node, facts)
    if facts.memory_mb is not None and node.memory_mb:
        seen, inv = facts.memory_mb, node.memory_mb
        if seen < inv * (1 - MEMORY_BELOW) or seen > inv * (1 + MEMORY_ABOVE):
            out.append(Mismatch("memory", f"memory: inventory {inv} MB, seen {seen} MB"))
    cpu = facts.cpu
    counts = {c for c in (cpu.cores, cpu.threads) if c}
    if counts and node.cpus not in counts:
        out.append(Mismatch("cpus", f"cpus: inventory {node.cpus}, seen {cpu.cores or '?'} cores"
                                    f" / {cpu.threads or '?'} threads"))
    if "pci" in facts.sources:
        hardware = dict(node.hardware or {})
        on_pci = str(hardware.get("fpga_bus", "pci")).lower() == "pci"
        out += _accelerator(FPGA, _inventory_text(hardware.get("fpga")), facts, expect_on_pci=on_pci)
        out += _accelerator(GPU, _inventory_text(hardware.get("gpu") or hardware.get("gpus")), facts)
    return out


def _macs(node, facts: Facts) -> list[Mismatch]:
    seen = facts.macs()
    out = [Mismatch("macs", f"macs: inventory {mac} not seen") for mac in node.macs if mac not in seen]
    known = set(node.macs)
    for nic in facts.nics:
        if nic.physical and nic.mac not in known and (nic.perm_mac or "") not in known:
            out.append(Mismatch("macs", f"macs: seen {nic.mac} ({nic.name}) not in inventory"))
    return out


def _accelerator(kind: str, inventory: str, facts: Facts, *, expect_on_pci: bool = True) -> list[Mismatch]:
    found = facts.accelerators(kind)
    if inventory and not found:
        if not expect_on_pci:
            return []
        return [Mismatch(kind, f"{kind}: inventory '{_short(inventory)}' not seen on PCI")]
    if found and not inventory:
        return [Mismatch(kind, f"{kind}: seen {_short(found[0].label())} ({found[0].ids}), inventory has none")]
    words = [w for w in VENDOR_WORDS if w in inventory.lower()]
    if words:
        vendors = set().union(*(VENDOR_WORDS[w] for w in words))
        if not any(d.vendor in vendors for d in found):
            return [Mismatch(kind, f"{kind}: inventory '{_short(inventory)}', seen {_short(found[0].label())}"
                                   f" ({found[0].ids})")]
    return []


def summary(found: list[Mismatch], limit: int = SUMMARY_CHARS) -> str:
    """One line for a host attribute or a table cell: the mismatches, cut at `limit`."""
    text = "; ".join(m.text for m in found)
    if len(text) <= limit:
        return text
    kept, used = [], 0
    for m in found:
        if used + len(m.text) + 2 > limit - 12:
            break
        kept.append(m.text)
        used += len(m.text) + 2
    return "; ".join(kept) + f" (+{len(found) - len(kept)} more)"
