"""The contract every machine kind implements, and what every action receives."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bmm.config import Config
from bmm.errors import NotSupported
from bmm.opennebula.reply import Reporter
from bmm.opennebula.vm import DriverAction

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
    """A TM action: `host:path` locations split, ids parsed."""

    action: str
    argv: list[str]
    vm_id: int
    ds_id: int | None
    host: str
    path: str
    src_host: str = ""
    src_path: str = ""
    size_mb: int | None = None
    format: str = ""
    context_files: list[str] = field(default_factory=list)

    @property
    def disk_id(self) -> int | None:
        """`disk.N` at the end of the path, else None (the VM directory itself)."""
        base = self.path.rstrip("/").rsplit("/", 1)[-1]
        if base.startswith("disk.") and base[5:].isdigit():
            return int(base[5:])
        return None


class MachineDriver:
    """A machine kind. Every action is refused until a kind says what it means."""

    kind = "abstract"

    def __init__(self, node: Any, config: Config, reporter: Reporter):
        self.node = node
        self.config = config
        self.reporter = reporter

    # -- VMM ---------------------------------------------------------------------------
    def deploy(self, call: VmmCall) -> str:
        raise not_supported("deploy")

    def shutdown(self, call: VmmCall) -> None:
        raise not_supported("shutdown")

    def cancel(self, call: VmmCall) -> None:
        raise not_supported("cancel")

    def reboot(self, call: VmmCall) -> None:
        raise not_supported("reboot")

    def reset(self, call: VmmCall) -> None:
        raise not_supported("reset")

    def poll(self, call: VmmCall) -> str:
        raise not_supported("poll")

    def prereconfigure(self, call: VmmCall) -> None:
        """Context changes reach the node through TM `context`; nothing to do here."""

    def reconfigure(self, call: VmmCall) -> None:
        self.reporter.info(f"context of VM {call.vm_id} updated; the instance reads it at its next boot")

    # -- TM ----------------------------------------------------------------------------
    def tm_clone(self, call: TmCall) -> None:
        raise not_supported("clone")

    def tm_ln(self, call: TmCall) -> None:
        return self.tm_clone(call)

    def tm_mkswap(self, call: TmCall) -> None:
        raise not_supported("volatile swap disks")

    def tm_mkimage(self, call: TmCall) -> None:
        raise not_supported("volatile disks")

    def tm_context(self, call: TmCall) -> None:
        raise not_supported("contextualization")

    def tm_mv(self, call: TmCall) -> None:
        raise not_supported("undeploy and cold migration (mv)")

    def tm_delete(self, call: TmCall) -> None:
        raise not_supported("delete")

    def tm_failmigrate(self, call: TmCall) -> None:
        """Nothing was moved, so there is nothing to roll back."""
