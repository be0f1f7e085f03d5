"""The host attributes an inspection adds to SYSTEM_HOST, so templates can match real facts.

Plain attributes (the scheduler's SCHED_REQUIREMENTS can only name top-level attributes:
the expression lexer takes [A-Za-z][0-9A-Za-z_]*, so nothing inside PCI = [ ... ]), plus
one `PCI = [ ... ]` per FPGA/GPU/accelerator in OpenNebula's own format, which oned moves
into HOST_SHARE/PCI_DEVICES for VM `PCI = [ VENDOR = ... ]` requests.

Nothing here is capacity: TOTALCPU, TOTALMEMORY and the disk stay the inventory's, so an
inspection can never change what a tenant is given; BMM_INSPECTION says whether the machine
agrees with its inventory entry. Attributes the inventory sets itself ([hardware] keys)
keep the inventory's value (the report drops the inspected duplicate).
"""

from __future__ import annotations

from typing import Any

from bmm.inspect.diff import mismatches, summary
from bmm.inspect.facts import Facts
from bmm.inspect.pci import ACCELERATOR, FPGA, GPU, one_attributes


VALUE_CHARS = 256               # names a machine prints are capped: SYSTEM_HOST is one datagram
UNCAPPED = ("BMM_PCI_IDS",)     # hex ids only, one per device: its length is the bus's


def _cap(value: Any) -> Any:
    return value[:VALUE_CHARS] if isinstance(value, str) else value


def host_attributes(node, facts: Facts, inspected_at: str) -> list[tuple[str, Any]]:
    """(name, value) pairs; a list of mappings under "PCI" becomes repeated vectors."""
    out = []
    for key, value in _pairs(node, facts, inspected_at):
        if key == "PCI":
            value = [{k: _cap(v) for k, v in vector.items()} for vector in value]
        elif key not in UNCAPPED:
            value = _cap(value)
        out.append((key, value))
    return out


def _pairs(node, facts: Facts, inspected_at: str) -> list[tuple[str, Any]]:
    found = mismatches(node, facts)
    pairs: list[tuple[str, Any]] = [
        ("BMM_INSPECTED_AT", inspected_at),
        ("BMM_INSPECTION", "MISMATCH" if found else "OK"),
        # always sent: oned merges SYSTEM_HOST into the host template and keeps what a
        # report leaves out, and an empty value cannot be matched ("" parses as no value)
        ("BMM_INSPECTION_MISMATCH", summary(found) if found else "none"),
    ]
    cpu = facts.cpu
    for key, value in (("BMM_CPU_MODEL", cpu.model), ("BMM_CPU_SOCKETS", cpu.sockets),
                       ("BMM_CPU_CORES", cpu.cores), ("BMM_CPU_THREADS", cpu.threads),
                       ("BMM_MEMORY_SEEN_MB", facts.memory_mb)):
        if value is not None:
            pairs.append((key, value))
    if cpu.mhz:
        pairs.append(("CPUSPEED", int(round(cpu.mhz))))
    for kind, key in ((FPGA, "BMM_FPGA"), (GPU, "BMM_GPU"), (ACCELERATOR, "BMM_ACCELERATORS")):
        devices = facts.accelerators(kind)
        if devices:
            pairs.append((key, ", ".join(sorted({d.label() for d in devices}))))
        pairs.append((f"{key.removesuffix('S')}_COUNT", len(devices)))
    if facts.pci:
        pairs.append(("BMM_PCI_IDS", ",".join(sorted({d.ids for d in facts.pci}))))
    accelerators = [d for d in facts.pci if d.kind]
    if accelerators:
        pairs.append(("PCI", [one_attributes(d) for d in accelerators]))
    return pairs
