"""What inspection learnt about one machine: CPU, memory, disks, NICs, PCI, firmware, BMC.

Plain frozen data, JSON round-trip (`to_dict`/`from_dict`) for the state database, and a
short `summary()` for people and `bmm nodes inspect --json`. Only facts read from the
machine are here; how they compare with the inventory is bmm.inspect.diff.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from bmm.inspect.pci import ACCELERATOR, FPGA, GPU, PciDevice


@dataclass(frozen=True)
class Cpu:
    model: str | None = None
    arch: str | None = None
    sockets: int | None = None
    cores: int | None = None          # physical cores, all sockets
    threads: int | None = None        # logical CPUs the OS runs on
    mhz: float | None = None


@dataclass(frozen=True)
class Disk:
    name: str
    size_bytes: int
    model: str | None = None
    serial: str | None = None
    rotational: bool | None = None
    transport: str | None = None


@dataclass(frozen=True)
class Nic:
    name: str
    mac: str
    state: str | None = None          # the kernel's operstate: up, down, unknown, ...
    carrier: bool | None = None       # link detected
    physical: bool | None = None      # backed by a device (not a bridge, veth, bond, ...)
    perm_mac: str | None = None       # the burnt-in MAC when the OS changed it (bond ports)
    driver: str | None = None


def size_text(size_bytes: int) -> str:
    """A disk size as vendors print it: 960 GB, 256 MB."""
    return f"{size_bytes / 10**9:.0f} GB" if size_bytes >= 10**9 else f"{size_bytes / 10**6:.0f} MB"


def _known(cls, data: dict):
    return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Facts:
    cpu: Cpu = field(default_factory=Cpu)
    memory_kib: int | None = None
    disks: tuple[Disk, ...] = ()
    nics: tuple[Nic, ...] = ()
    pci: tuple[PciDevice, ...] = ()
    firmware: dict[str, str] = field(default_factory=dict)    # /sys/class/dmi/id
    bmc: dict[str, str] = field(default_factory=dict)         # ipmitool mc info
    sources: dict[str, str] = field(default_factory=dict)     # section -> what it was read with
    notes: tuple[str, ...] = ()                               # what could not be read, and why

    def accelerators(self, kind: str) -> list[PciDevice]:
        return [d for d in self.pci if d.kind == kind]

    @property
    def memory_mb(self) -> int | None:
        return None if self.memory_kib is None else self.memory_kib // 1024

    def macs(self) -> set[str]:
        """Every MAC the machine's NICs carry or were born with."""
        return {m for n in self.nics for m in (n.mac, n.perm_mac) if m}

    def to_dict(self) -> dict:
        data = asdict(self)
        data["pci"] = [d.to_dict() for d in self.pci]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "Facts":
        """Facts from to_dict()'s JSON; keys a later bmm added are ignored, so a monitor
        reading an older or newer row never fails on it."""
        return cls(
            cpu=_known(Cpu, data.get("cpu") or {}),
            memory_kib=data.get("memory_kib"),
            disks=tuple(_known(Disk, d) for d in data.get("disks") or ()),
            nics=tuple(_known(Nic, n) for n in data.get("nics") or ()),
            pci=tuple(_known(PciDevice, d) for d in data.get("pci") or ()),
            firmware=dict(data.get("firmware") or {}),
            bmc=dict(data.get("bmc") or {}),
            sources=dict(data.get("sources") or {}),
            notes=tuple(data.get("notes") or ()),
        )

    def summary(self) -> dict:
        """The facts a person checks first, as plain JSON-able values."""
        c = self.cpu
        return {
            "cpu": {"model": c.model, "arch": c.arch, "sockets": c.sockets, "cores": c.cores,
                    "threads": c.threads, "mhz": c.mhz},
            "memory_mb": self.memory_mb,
            "disks": [f"{d.name} {size_text(d.size_bytes)}" for d in self.disks],
            "nics": [{"name": n.name, "mac": n.mac, "state": n.state, "physical": n.physical}
                     for n in self.nics],
            "fpga": [f"{d.label()} ({d.ids} at {d.address})" for d in self.accelerators(FPGA)],
            "gpu": [f"{d.label()} ({d.ids} at {d.address})" for d in self.accelerators(GPU)],
            "accelerators": [f"{d.label()} ({d.ids} at {d.address})" for d in self.accelerators(ACCELERATOR)],
            "pci_devices": len(self.pci),
            "firmware": dict(self.firmware),
            "bmc": dict(self.bmc),
            "sources": dict(self.sources),
            "notes": list(self.notes),
        }
