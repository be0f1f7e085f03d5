"""A host's monitoring, built from the inventory, the node state and the machine's answers.

A bmm host is one machine. It reports its whole capacity (TOTALCPU = 100 per CPU, TOTALMEMORY
in KiB), its disk as datastore space, and its hardware facts (architecture, model, FPGA and
accelerators) so templates can require them. Its instance (at most one) is RUNNING or POWEROFF
from the power state and whether the machine answers.

Capacity and the inventory's [hardware] facts come from the inventory; when the machine was
inspected (bmm.inspect), its real facts are added (PCI = [...] devices, BMM_FPGA, BMM_GPU,
BMM_CPU_*, BMM_INSPECTION and BMM_INSPECTION_MISMATCH), never replacing the inventory's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bmm import __version__
from bmm.state import ACTIVE, NodeRecord

HYPERVISOR = "bmm"


@dataclass(frozen=True)
class VmReport:
    vm_id: int
    deploy_id: str
    state: str                      # RUNNING | POWEROFF | SUSPENDED | FAILURE
    monitor: dict[str, Any]


def _fact_key(key: str) -> str:
    return "BMM_" + "".join(ch if ch.isalnum() else "_" for ch in key).upper()


OPEN_STORE = object()       # HostReport(state_store=OPEN_STORE): open the config's on first use


class HostReport:
    """Generic report for any kind; kinds override what they know better."""

    def __init__(self, node, config, state_store=None, *, kind=None, record: NodeRecord | None = None):
        """record: the node's record as the caller just read it (the monitor daemon keeps them
        all, fresh); without it, every record() reads the state database. state_store may be
        OPEN_STORE: a report given its record opens no database unless asked for more."""
        self.node = node
        self.config = config
        self._state_store = state_store
        self._kind = kind
        self._record = record
        self._vms: list[VmReport] | None = None
        self.vms_basis: tuple | None = None

    def system_host(self) -> list[tuple[str, Any]]:
        n = self.node
        disk_mb = int(getattr(n, "disk_gb", 0) or 0) * 1024
        used_mb = self.used_disk_mb()
        pairs: list[tuple[str, Any]] = [
            ("HYPERVISOR", HYPERVISOR),
            ("BAREMETAL", "YES"),
            ("BMM_KIND", n.kind),
            ("BMM_VERSION", __version__),
            ("ARCH", n.arch or "unknown"),
            ("MODELNAME", n.model or "unknown"),
            ("HOSTNAME", n.name),
            ("TOTALCPU", int(n.cpus or 0) * 100),
            ("CPUSPEED", int(getattr(n, "cpu_mhz", 0) or 0)),
            ("TOTALMEMORY", int(n.memory_mb or 0) * 1024),
            ("DS_LOCATION_TOTAL_MB", disk_mb),
            ("DS_LOCATION_USED_MB", used_mb),
            ("DS_LOCATION_FREE_MB", max(disk_mb - used_mb, 0)),
        ]
        hardware = dict(getattr(n, "hardware", {}) or {})
        for key, value in sorted(hardware.items()):
            if isinstance(value, (list, tuple)):
                value = ",".join(str(v) for v in value)
            elif isinstance(value, dict):
                continue
            pairs.append((_fact_key(key), value))
        inspected = self.inspected()
        present = {key for key, _ in pairs}
        for key, value in inspected:
            if key == "CPUSPEED":          # the machine's MHz where the inventory gives none (0)
                pairs = [(k, value) if k == "CPUSPEED" and not v else (k, v) for k, v in pairs]
            elif key not in present:
                pairs.append((key, value))
        counts = dict(inspected)
        if hardware.get("fpga") or hardware.get("accelerators") or any(
                counts.get(k) for k in ("BMM_FPGA_COUNT", "BMM_GPU_COUNT", "BMM_ACCELERATOR_COUNT")):
            pairs.append(("BMM_ACCELERATED", "YES"))
        return pairs

    def inspected(self) -> list[tuple[str, Any]]:
        """What `bmm nodes inspect` read from the machine, as host attributes (nothing when
        it was never inspected). The inventory keeps the last word: capacity is never taken
        from here, and an inspected attribute the inventory already sets is dropped."""
        record = self.state_store.inspection(self.node.name) if self.state_store is not None else None
        if record is None or not record.facts:
            return []
        from bmm.inspect.attributes import host_attributes
        from bmm.inspect.facts import Facts

        return host_attributes(self.node, Facts.from_dict(record.facts), record.inspected_at)

    def used_disk_mb(self) -> int:
        record = self.record()
        return self.kind.used_disk_mb(record) if record is not None else 0

    @property
    def kind(self):
        """The node's machine kind, which owns what its instance is doing."""
        if self._kind is None:
            from bmm.kinds import kind_class
            from bmm.opennebula.reply import Reporter

            self._kind = kind_class(self.node.kind, self.config, node_name=self.node.name)(
                self.node, self.config, Reporter(live=False))
        return self._kind

    @property
    def state_store(self):
        """The state database, or None when it cannot be opened (all nodes read available)."""
        if self._state_store is OPEN_STORE:
            from bmm.errors import BmmError
            from bmm.state import open_store
            try:
                self._state_store = open_store(config=self.config)
            except (BmmError, OSError):
                self._state_store = None
        return self._state_store

    def record(self):
        if self._record is not None:
            return self._record
        if self.state_store is None:
            return None
        return self.state_store.get(self.node.name)

    def monitor_host(self) -> list[tuple[str, Any]]:
        """A bare-metal host is either wholly given to an instance or idle: busy while bmm's
        record says its instance is active (no BMC or OS is asked for this)."""
        total_cpu = int(self.node.cpus or 0) * 100
        total_mem = int(self.node.memory_mb or 0) * 1024
        record = self.record()
        busy = record is not None and record.vm_id is not None and record.state == ACTIVE
        return [
            ("HYPERVISOR", HYPERVISOR),
            ("USEDCPU", total_cpu if busy else 0),
            ("FREECPU", 0 if busy else total_cpu),
            ("USEDMEMORY", total_mem if busy else 0),
            ("FREEMEMORY", 0 if busy else total_mem),
            ("NETRX", 0),
            ("NETTX", 0),
        ]

    def vms(self) -> list[VmReport]:
        """The node's instance, as its kind observes it (the same answer poll gives), with
        the kind's record following what it saw (act=True); observed once per report.
        Nothing while an action is in flight or the state cannot be told: the action owns the
        VM's state, and a RUNNING sent during BOOT would make oned think the deploy finished.

        Cached by hand: Python 3.11's functools.cached_property holds one lock for every
        instance, so one report hung on its BMC would block every other host's report."""
        if self._vms is None:
            self._vms = self._observe()
        return self._vms

    def _observe(self) -> list[VmReport]:
        """Also sets vms_basis: the version of the node record the answer holds under: the
        record it was observed from, or the one the kind wrote when it made the record follow
        what it saw (act). Whoever sends the answer compares it with the record then: any
        other change since (an action began, or even ended, while the BMC was asked) means
        the answer is from before it. No second read of the record here: the monitor daemon
        holds a fresh copy of every record anyway."""
        record = self.record()
        written = self.kind.last_written
        out = []
        for vm_id, state in self.kind.reported_instances(record, act=True):
            memory = int(self.node.memory_mb or 0) * 1024 if state == "RUNNING" else 0
            out.append(VmReport(vm_id, self.kind.deploy_id(vm_id), str(state), {"CPU": 0, "MEMORY": memory}))
        own = self.kind.last_written
        self.vms_basis = own.version if own is not written and own is not None else self._version(record)
        return out

    def _version(self, record) -> tuple:
        return (record if record is not None else NodeRecord(name=self.node.name)).version
