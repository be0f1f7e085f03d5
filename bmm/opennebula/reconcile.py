"""`bmm one reconcile`: bmm's node records against oned's hosts and VMs.

What can drift, and what --fix does about it:
- a node holds a VM that OpenNebula no longer has on that host (DONE, deleted, or elsewhere):
  the machine is leaked. Fix: bmm's own clean-up for that VM (its disks wiped, the node
  available), exactly what a TM delete from oned would have done.
- OpenNebula has a VM on a bmm host whose node does not hold it: the VM lost its machine.
  No automatic fix (its disks may be gone); the advice says what to run.
- an inventory node with no OpenNebula host, or a bmm host with no inventory node: reported,
  `bmm one register` makes the missing hosts.
Nothing is changed without --fix; a fix takes the node's lock like any action.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pyone

from bmm.state import AVAILABLE

LIVE_VM_STATES = {pyone.VM_STATE.PENDING, pyone.VM_STATE.HOLD, pyone.VM_STATE.ACTIVE, pyone.VM_STATE.STOPPED,
                  pyone.VM_STATE.SUSPENDED, pyone.VM_STATE.POWEROFF, pyone.VM_STATE.UNDEPLOYED,
                  pyone.VM_STATE.CLONING, pyone.VM_STATE.CLONING_FAILURE}


@dataclass
class Finding:
    node: str | None
    vm_id: int | None
    problem: str
    advice: str = ""
    fix: Callable[[], None] | None = field(default=None, repr=False)

    def __str__(self) -> str:
        where = f"node {self.node}" if self.node else "OpenNebula"
        text = f"{where}: {self.problem}"
        return text + (f" ({self.advice})" if self.advice else "")


def _host_of(vm) -> str | None:
    records = getattr(getattr(vm, "HISTORY_RECORDS", None), "HISTORY", None) or []
    return records[-1].HOSTNAME if records else None


def findings(one, inventory, store, *, cleanup: Callable[[object, int], None]) -> list[Finding]:
    """Every drift between bmm and oned. cleanup(node, vm_id) frees a leaked node."""
    out: list[Finding] = []
    hosts = {h.NAME: h for h in one.hostpool.info().HOST or []}
    vms = [vm for vm in (one.vmpool.infoextended(-2, -1, -1, -1).VM or [])
           if pyone.VM_STATE(vm.STATE) in LIVE_VM_STATES]
    live = {vm.ID: vm for vm in vms}
    names = {node.name for node in inventory}
    for node in inventory:
        if node.name not in hosts:
            out.append(Finding(node.name, None, "has no OpenNebula host", "run `bmm one register`"))
        rec = store.get(node.name)
        if rec.vm_id is None:
            continue
        vm = live.get(rec.vm_id)
        if vm is None or _host_of(vm) != node.name:
            where = "does not exist any more" if vm is None else f"runs on host {_host_of(vm)}"
            out.append(Finding(node.name, rec.vm_id,
                               f"holds VM {rec.vm_id} ({rec.state}), which in OpenNebula {where}",
                               "--fix wipes its disks and frees the node",
                               fix=lambda node=node, vm_id=rec.vm_id: cleanup(node, vm_id)))
    for name, host in sorted(hosts.items()):
        if host.VM_MAD == "bmm" and name not in names:
            out.append(Finding(name, None, "is a bmm host in OpenNebula but not in the inventory",
                               "add it to the inventory or `onehost delete` it"))
    for vm in vms:
        host = _host_of(vm)
        if host in names and store.get(host).vm_id != vm.ID and host in hosts and hosts[host].VM_MAD == "bmm":
            rec = store.get(host)
            holds = f"holds VM {rec.vm_id}" if rec.vm_id is not None else f"is {rec.state}"
            if rec.state == AVAILABLE and pyone.VM_STATE(vm.STATE) == pyone.VM_STATE.PENDING:
                continue
            out.append(Finding(host, vm.ID, f"OpenNebula has VM {vm.ID} ({pyone.VM_STATE(vm.STATE).name}) "
                               f"on it, but the node {holds}",
                               f"`onevm recover --delete {vm.ID}` if its machine is lost"))
    return out
