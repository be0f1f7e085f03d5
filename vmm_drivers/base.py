"""The contract every machine kind implements, and what every action receives."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from bmm.config import Config
from bmm.errors import NotSupported, Refused
from bmm.footprint import Footprint
from bmm.opennebula.reply import Reporter
from bmm.state import (ACTIVE, AVAILABLE, ERROR, HOLDS_INSTANCE, MAINTENANCE, OFF, PROVISIONED, NodeRecord,
                       NodeState, StateStore, open_store)

if TYPE_CHECKING:   # the IM loads this module on every call and never parses a drv_action
    from bmm.opennebula.vm import DriverAction

log = logging.getLogger("bmm.driver")

VMM_ACTIONS = (
    "deploy", "shutdown", "cancel", "reboot", "reset", "poll",
    "save", "restore", "migrate", "attach_disk", "detach_disk", "attach_nic", "detach_nic",
    "prereconfigure", "reconfigure", "snapshot_create", "snapshot_revert", "snapshot_delete",
    "resize_disk", "resize", "exec", "exec_cancel",
)

TM_ACTIONS = (
    "clone", "ln", "mkswap", "mkimage", "context", "mv", "mvds", "delete", "cpds",
    "snap_create", "snap_create_live", "snap_delete", "snap_delete_live", "snap_revert",
    "snap_revert_live", "resize", "premigrate", "postmigrate", "failmigrate",
    "prebackup", "prebackup_live", "postbackup", "postbackup_live", "restore", "monitor",
    "monitor_ds",
)

# Human names for what OpenNebula calls these, used in "... is not supported on bare metal".
# VMM and TM share some action names with different meanings (resize, restore).
VMM_ACTION_NAMES = {
    "save": "suspend/stop (save)", "restore": "resume from suspend (restore)",
    "migrate": "live migration", "attach_disk": "disk attach", "detach_disk": "disk detach",
    "attach_nic": "NIC attach", "detach_nic": "NIC detach",
    "snapshot_create": "VM snapshot", "snapshot_revert": "VM snapshot revert",
    "snapshot_delete": "VM snapshot delete", "resize_disk": "disk resize", "resize": "resize",
    "exec": "guest command execution", "exec_cancel": "guest command execution",
}
TM_ACTION_NAMES = {
    "cpds": "disk save-as (cpds)", "snap_create": "disk snapshot", "snap_create_live": "disk snapshot",
    "snap_delete": "disk snapshot delete", "snap_delete_live": "disk snapshot delete",
    "snap_revert": "disk snapshot revert", "snap_revert_live": "disk snapshot revert",
    "resize": "disk resize", "premigrate": "live migration", "postmigrate": "live migration",
    "prebackup": "backup", "prebackup_live": "backup", "postbackup": "backup",
    "postbackup_live": "backup", "restore": "backup restore", "mvds": "saving a persistent disk (mvds)",
}


def not_supported(action: str, names: dict[str, str] = VMM_ACTION_NAMES) -> NotSupported:
    """`<what> is not supported on bare metal`; action is looked up in names, else used as is."""
    return NotSupported(names.get(action, action))


@dataclass
class VmmCall:
    """A VMM action as the remote received it."""

    action: str
    argv: list[str]
    vm_id: int
    host: str
    deploy_id: str = ""
    drv_action: DriverAction | None = None
    extra: dict[str, str] = field(default_factory=dict)


@dataclass
class TmCall:
    """A TM action: `host:path` locations split and checked against OpenNebula's layout,
    ids parsed, context.sh read and parsed (so the kind never reads driver input again)."""

    action: str
    argv: list[str]
    vm_id: int
    ds_id: int | None
    host: str
    path: str
    disk_id: int | None = None
    src_host: str = ""
    src_path: str = ""
    size_mb: int | None = None
    format: str = ""
    context: dict[str, str] = field(default_factory=dict)
    context_files: list[tuple[str, str]] = field(default_factory=list)   # (source, name)


# ----------------------------------------------------------------------------------------------
# Who may act on a node


@dataclass(frozen=True)
class Access:
    """What the node's record must say before an action may touch the machine.

    states: the node states in which the VM that owns the node may run the action.
    claims: the action may also take a free (available) node for its VM: only the prolog.
    cleanup: for a VM that does not own the node the action succeeds at once and touches
    nothing (OpenNebula cleans up refused and failed VMs on the host they were meant for).
    readonly: no lock, no state change (poll).
    """

    states: frozenset[NodeState]
    claims: bool = False
    cleanup: bool = False
    readonly: bool = False


_PROLOG = Access(frozenset({PROVISIONED, ERROR}), claims=True)
_HELD = frozenset({PROVISIONED, ACTIVE, OFF, ERROR})

ACCESS: dict[str, Access] = {
    "tm_clone": _PROLOG,
    "tm_ln": _PROLOG,
    "tm_mkswap": _PROLOG,
    "tm_mkimage": _PROLOG,
    "tm_context": Access(frozenset({PROVISIONED, ACTIVE, OFF, ERROR})),
    "deploy": Access(frozenset({PROVISIONED, OFF, ERROR})),
    "reboot": Access(frozenset({ACTIVE})),
    "reset": Access(frozenset({ACTIVE})),
    "shutdown": Access(frozenset({ACTIVE, OFF, ERROR}), cleanup=True),
    "cancel": Access(_HELD, cleanup=True),
    "tm_delete": Access(_HELD, cleanup=True),
    "poll": Access(frozenset(HOLDS_INSTANCE | {ERROR}), readonly=True),
    "rearm": Access(frozenset({ACTIVE})),
}

# oned's LCM_STATE while it runs SHUTDOWN/CANCEL for `onevm undeploy` (include/VirtualMachine.h)
SHUTDOWN_UNDEPLOY = 29


class InstanceState(StrEnum):
    """What OpenNebula's STATE_VM carries for an instance (protocol §2.6), and poll's letter."""

    RUNNING = "RUNNING"
    POWEROFF = "POWEROFF"
    FAILURE = "FAILURE"

    @property
    def poll_letter(self) -> str:
        return {"RUNNING": "a", "POWEROFF": "d", "FAILURE": "e"}[self.value]

_WHAT = {"tm_clone": "clone a disk of", "tm_ln": "link a disk of", "tm_mkswap": "create a swap disk for",
         "tm_mkimage": "create a volatile disk for", "tm_context": "write the context of",
         "tm_delete": "delete the disks of", "poll": "poll"}


def _what(action: str) -> str:
    return _WHAT.get(action, action)


def access_decision(action: str, record: NodeRecord, vm_id: int) -> str | None:
    """None when VM vm_id may run action on the node as its record stands; "noop" when the
    action must succeed without touching anything; else raise Refused with the reason."""
    access = ACCESS[action]
    node = record.name
    if access.claims and record.vm_id == vm_id and record.state in (ACTIVE, OFF):
        # a disk for an instance that exists already: OpenNebula's disk hot-plug, whose TM
        # step runs before its VMM attach_disk
        raise NotSupported("disk attach")
    if record.vm_id is not None and record.vm_id != vm_id:
        if access.cleanup:
            return "noop"
        raise Refused(f"holds VM {record.vm_id}; refusing VM {vm_id} (one instance per machine)", node=node)
    if record.vm_id is None:
        if access.cleanup:
            return "noop"
        if access.claims:
            if record.state == AVAILABLE:
                return None
            why = f" ({record.last_error})" if record.state == ERROR and record.last_error else ""
            raise Refused(f"is {record.state}{why}; not taking it for VM {vm_id}", node=node)
        raise Refused(f"does not hold VM {vm_id} (its prolog never ran on this node); "
                      f"cannot {_what(action)} it", node=node)
    if record.state == MAINTENANCE:
        raise Refused(f"is in maintenance ({record.maintenance_reason or 'no reason given'}); "
                      f"cannot {_what(action)} VM {vm_id}", node=node)
    if record.state not in access.states:
        raise Refused(f"is {record.state} with VM {vm_id}; cannot {_what(action)} it now "
                      f"(only when {' or '.join(sorted(access.states))})", node=node)
    return None


class Step:
    """One action on one node, under the node's lock: the record it started from, and the
    state changes it makes. If the action fails, `settle` moves the node to a stable state."""

    def __init__(self, kind: "Kind", action: str, call, record: NodeRecord):
        self.kind = kind
        self.action = action
        self.call = call
        self.start = record         # the record the action found
        self.record = record        # the record as the action has changed it
        self.changed = False

    @property
    def vm_id(self) -> int:
        return self.call.vm_id

    @property
    def name(self) -> str:
        """The action as a person calls it (clone, not tm_clone)."""
        return self.action.removeprefix("tm_")

    def go(self, *states: NodeState, reason: str) -> NodeRecord:
        """Move the node through states (each transition checked), holding this step's VM."""
        rec = self.record
        for state in states:
            rec = self.kind.store.transition(self.kind.name, state, vm_id=self.vm_id, reason=reason,
                                             action=self.name)
            self.changed = True
        self.record = rec
        return rec

    def settle(self, exc: BaseException) -> None:
        """After a failure: where the kind says the node now stands, else `error` with the
        reason. Never raises: a failure to record the outcome is logged and leaves `error`."""
        if not self.changed:
            return          # nothing was entered: the node is as it was
        try:
            states, reason = self.kind.after_failure(self, exc)
        except BaseException as hook_exc:   # noqa: BLE001 - the outcome must be recorded
            log.warning("node %s: after %s failed: %s", self.kind.name, self.action, hook_exc)
            states, reason = (ERROR,), f"{self.name} of VM {self.vm_id} failed: {describe(exc)}"
        for attempt in (states, (ERROR,)):
            try:
                for state in attempt:
                    self.kind.store.transition(self.kind.name, state, vm_id=self.vm_id,
                                               error=reason if state == ERROR else None,
                                               reason=reason, action=self.name)
                return
            except BaseException as write_exc:   # noqa: BLE001
                log.warning("node %s: recording %s failed: %s", self.kind.name, attempt, write_exc)


def describe(exc: BaseException) -> str:
    return getattr(exc, "reason", None) or str(exc) or type(exc).__name__


class Kind:
    """A machine kind. Every action is refused until a kind says what it means.

    Entry points call `perform(action, call)`. For every action in ACCESS it takes the node's
    lock, checks the record against ACCESS (so an action for VM X never touches a machine
    that X does not own, and a clean-up for a VM that never got the machine succeeds and
    touches nothing), runs the kind's method with a Step, and settles the node into a stable
    state if that method fails. A kind's method therefore starts with checks that touch
    nothing (its own preconditions), then calls `step.go(<transient state>)`, then acts.
    """

    kind = "abstract"
    supports_undeploy = False
    # What the machine is made of: a class whose PARTS.of(node) builds its interfaces (power,
    # boot and the kind's own) from the node's validated inventory table. None: no parts.
    PARTS: Any = None

    def __init__(self, node: Any, config: Config, reporter: Reporter, *, parts: Any = None):
        self.node = node
        self.name = node.name
        self.config = config
        self.reporter = reporter
        self._store: StateStore | None = None
        self._parts = parts             # tests give a kind fakes of each part

    @property
    def parts(self) -> Any:
        """The machine's interfaces, built on first use: what touches no part builds none."""
        if self._parts is None:
            if self.PARTS is None:
                raise not_supported(f"a machine of kind {self.kind}")
            self._parts = self.PARTS.of(self.node)
        return self._parts

    @property
    def power(self):
        return self.parts.power

    @property
    def boot(self):
        return self.parts.boot

    @property
    def footprint(self) -> Footprint:
        """What bmm put on the node for each VM (bmm.footprint)."""
        return Footprint(self.config.state_db, self.name)

    @property
    def store(self) -> StateStore:
        # not functools.cached_property: in Python 3.11 it takes one lock for all instances,
        # so the monitor's concurrent probes would queue behind each other
        if self._store is None:
            self._store = open_store(config=self.config)
        return self._store

    @property
    def last_written(self) -> NodeRecord | None:
        """The node record this kind's own store last wrote (None: it wrote nothing)."""
        return self._store.last_written if self._store is not None else None

    def perform(self, action: str, call):
        method = getattr(self, action)
        access = ACCESS.get(action)
        if action in ("shutdown", "cancel") and not self.supports_undeploy:
            vm = call.drv_action.vm if call.drv_action is not None else None
            if vm is not None and vm.lcm_state == SHUTDOWN_UNDEPLOY:
                # refused before the power-off: oned would power the instance off, then fail
                # its TM mv, and only `recover --delete` would get out
                raise NotSupported("undeploy", "the instance's disks live on the machine; "
                                   "use poweroff or terminate")
        if access is None:
            return method(call)
        if access.readonly:
            access_decision(action, self.store.get(self.name), call.vm_id)
            return method(call)
        with self.store.lock(self.name, action.removeprefix("tm_"), vm_id=call.vm_id,
                             wait=self.config.lock_wait_s) as rec:
            if rec.interrupted:
                rec = self.store.fail_interrupted(self.name)
            if access_decision(action, rec, call.vm_id) == "noop":
                owner = f"holds VM {rec.vm_id}" if rec.vm_id is not None else "holds no VM"
                self.reporter.info(f"{self.name} {owner}, not VM {call.vm_id}: nothing of VM "
                                   f"{call.vm_id} to {action.removeprefix('tm_')} here; the node is left untouched")
                return None
            step = Step(self, action, call, rec)
            try:
                return method(call, step)
            except BaseException as exc:
                step.settle(exc)
                raise

    def deploy_id(self, vm_id: int) -> str:
        """The id `deploy` prints, the IM reports and oned passes back to every action."""
        return f"bmm-{self.name}-{vm_id}"

    # -- what the instance is doing: one answer for poll and for the IM ------------------
    def instance_state(self, record: NodeRecord, *, act: bool = False) -> InstanceState | None:
        """The state of the instance the node's record holds, as OpenNebula should see it, or
        None to say nothing (no instance, an action in flight, or it cannot be told). Poll and
        the IM both call this. With act, the kind may also make its record follow what it
        observed (the monitor does; a poll by hand never changes anything)."""
        raise not_supported("monitoring of this machine kind")

    def reported_instances(self, record: NodeRecord | None, *, act: bool = False) -> list[tuple[int, InstanceState]]:
        """What the IM reports for this node: (vm id, state) of its instance, when there is
        something definite to say (see instance_state)."""
        if record is None or record.vm_id is None:
            return []
        state = self.instance_state(record, act=act)
        return [(record.vm_id, state)] if state is not None else []

    def used_disk_mb(self, record: NodeRecord) -> int:
        """Disk the node's instance occupies, for the host's USED disk."""
        return 0

    def after_failure(self, step: Step, exc: BaseException) -> tuple[tuple[NodeState, ...], str]:
        """Where the node stands after `step` failed with exc: (states to walk, reason).
        Kinds override this per action; the default is `error` with the cause."""
        return (ERROR,), f"{step.name} of VM {step.vm_id} failed: {describe(exc)}"

    # -- VMM ---------------------------------------------------------------------------
    def deploy(self, call: VmmCall, step: Step) -> str:
        raise not_supported("deploy")

    def shutdown(self, call: VmmCall, step: Step) -> None:
        raise not_supported("shutdown")

    def cancel(self, call: VmmCall, step: Step) -> None:
        raise not_supported("cancel")

    def reboot(self, call: VmmCall, step: Step) -> None:
        raise not_supported("reboot")

    def reset(self, call: VmmCall, step: Step) -> None:
        raise not_supported("reset")

    def poll(self, call: VmmCall) -> str:
        state = self.instance_state(self.store.get(self.name))
        return f"STATE={state.poll_letter if state else '-'}"

    def rearm(self, call: VmmCall, step: Step) -> None:
        """Boot the instance again after the machine fell back to its home OS."""
        raise not_supported("re-arming")

    def prereconfigure(self, call: VmmCall) -> None:
        """Context changes reach the node through TM `context`; nothing to do here."""

    def reconfigure(self, call: VmmCall) -> None:
        self.reporter.info(f"context of VM {call.vm_id} updated; the instance reads it at its next boot")

    # -- TM ----------------------------------------------------------------------------
    def tm_clone(self, call: TmCall, step: Step) -> None:
        raise not_supported("clone")

    def tm_ln(self, call: TmCall, step: Step) -> None:
        return self.tm_clone(call, step)

    def tm_mkswap(self, call: TmCall, step: Step) -> None:
        raise not_supported("volatile swap disks")

    def tm_mkimage(self, call: TmCall, step: Step) -> None:
        raise not_supported("volatile disks")

    def tm_context(self, call: TmCall, step: Step) -> None:
        raise not_supported("contextualization")

    def tm_mv(self, call: TmCall) -> None:
        raise not_supported("undeploy and cold migration (mv)")

    def tm_delete(self, call: TmCall, step: Step) -> None:
        raise not_supported("delete")

    def tm_failmigrate(self, call: TmCall) -> None:
        """Nothing was moved, so there is nothing to roll back."""
