"""A host's monitoring, built from the inventory, the node state and the machine's answers.

A bmm host is one machine. It reports its whole capacity (TOTALCPU = 100 per CPU, TOTALMEMORY
in KiB), its disk as datastore space, and its hardware facts (architecture, model, FPGA and
accelerators) so templates can require them. Its instance (at most one) is RUNNING or POWEROFF
from the power state and whether the machine answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bmm import __version__
from bmm.state import ACTIVE, OFF

HYPERVISOR = "bmm"


@dataclass(frozen=True)
class VmReport:
    vm_id: int
    deploy_id: str
    state: str                      # RUNNING | POWEROFF | SUSPENDED | FAILURE
    monitor: dict[str, Any]


def _fact_key(key: str) -> str:
    return "BMM_" + "".join(ch if ch.isalnum() else "_" for ch in key).upper()


class HostReport:
    """Generic report for any kind; kinds override what they know better."""

    def __init__(self, node, config, state_store=None):
        self.node = node
        self.config = config
        self.state_store = state_store

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
        if hardware.get("fpga") or hardware.get("accelerators"):
            pairs.append(("BMM_ACCELERATED", "YES"))
        return pairs

    def used_disk_mb(self) -> int:
        return 0

    def record(self):
        if self.state_store is None:
            return None
        return self.state_store.get(self.node.name)

    def monitor_host(self) -> list[tuple[str, Any]]:
        """A bare-metal host is either wholly given to an instance or idle."""
        total_cpu = int(self.node.cpus or 0) * 100
        total_mem = int(self.node.memory_mb or 0) * 1024
        busy = bool(self.vms())
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
        """The node's instance, if it holds one in a stable state.

        - active: RUNNING when powered and answering, POWEROFF when the BMC says off;
        - off: POWEROFF whatever the power: the instance is not running, and a machine that is
          on is in its home OS (powered on from its BMC, or resuming: context before deploy).
          Reporting RUNNING there would make oned resume a VM whose OS is not running.
        Transient states (deploying, rebooting, stopping, deleting) are not reported: the
        action in flight owns the VM's state, and a RUNNING sent during BOOT would make oned
        think the deploy finished."""
        record = self.record()
        if record is None or record.vm_id is None or record.state not in (ACTIVE, OFF):
            return []
        if record.state == OFF:
            state = "POWEROFF"
        else:
            power = self.power_status()
            if power == "off":
                state = "POWEROFF"
            elif power == "on" or self.answers():
                state = "RUNNING"
            else:
                return []
        memory = int(self.node.memory_mb or 0) * 1024 if state == "RUNNING" else 0
        return [VmReport(record.vm_id, f"bmm-{self.node.name}-{record.vm_id}", state,
                         {"CPU": 0, "MEMORY": memory})]

    def power_status(self) -> str:
        try:
            from bmm.power import power_for

            return power_for(self.node).status()
        except Exception:   # a report never fails because a BMC is away: the state is unknown
            return "unknown"

    def answers(self) -> bool:
        from bmm.transport.ssh import reachable

        try:
            return reachable(self.node.ssh.target(self.node.name), 3.0)
        except Exception:
            return False
