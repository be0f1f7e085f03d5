"""What the remote scripts call: parse argv and stdin exactly as OpenNebula passes them
(protocol §1.6 for VMM, §8.3 for TM), find the node and its kind, and run the action."""

from __future__ import annotations

import os
import sys

from bmm.config import load_config
from bmm.inventory import node_for_host
from bmm.opennebula import driver_input
from bmm.opennebula.reply import Reporter, opennebula_major, print_deploy_id, run_guarded
from bmm.opennebula.vm import parse_driver_action
from bmm.opennebula.xmlsafe import InputError
from vmm_drivers.base import TM_ACTION_NAMES, TM_ACTIONS, VMM_ACTIONS, TmCall, VmmCall, not_supported
from vmm_drivers.registry import driver_class

# Actions a bare-metal machine cannot honour: refused before anything else is read.
VMM_UNSUPPORTED = frozenset({
    "save", "restore", "migrate", "attach_disk", "detach_disk", "attach_nic", "detach_nic",
    "snapshot_create", "snapshot_revert", "snapshot_delete", "resize_disk", "resize",
    "exec", "exec_cancel",
})
TM_UNSUPPORTED = frozenset({
    "cpds", "snap_create", "snap_create_live", "snap_delete", "snap_delete_live", "snap_revert",
    "snap_revert_live", "resize", "premigrate", "postmigrate", "prebackup", "prebackup_live",
    "postbackup", "postbackup_live", "restore", "mvds",
})

# argv after the script name, per §1.6: positions of deploy id, host and vm id.
_VMM_ARGV = {
    "deploy": ("dfile", "host", "vm_id", "host"),
    "shutdown": ("deploy_id", "host", "vm_id", "host"),
    "cancel": ("deploy_id", "host", "vm_id", "host"),
    "reboot": ("deploy_id", "host", "vm_id", "host"),
    "reset": ("deploy_id", "host", "vm_id", "host"),
    "poll": ("deploy_id", "host", "vm_id", "host"),
    "prereconfigure": ("deploy_id", "ctx_target", "vm_id", "host"),
    "reconfigure": ("deploy_id", "ctx_target", "iso_path", "vm_id", "host"),
}


def _remotes_dir(script: str) -> str:
    # <remotes>/vmm/bmm/<action> or <remotes>/tm/bmm/<action>
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(script))))


def _vm_id(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise InputError(f"VM id {raw!r} is not a number") from None
    if value < 0:
        raise InputError(f"VM id {raw!r} is negative")
    return value


def _parse_vmm_argv(action: str, argv: list[str]) -> dict[str, str]:
    names = _VMM_ARGV[action]
    if len(argv) == len(names) - 1 and names[0] == "deploy_id":
        argv = [""] + argv  # no deploy id yet (e.g. cancel during an early cleanup)
    if len(argv) != len(names):
        raise InputError(f"{action} expects {len(names)} arguments ({' '.join(names)}), got {len(argv)}")
    return dict(zip(names, argv))


def vmm_main(action: str, script: str) -> None:
    """Entry point of remotes/vmm/bmm/<action>."""
    if action not in VMM_ACTIONS:
        raise SystemExit(f"internal error: unknown VMM action {action}")
    reporter = Reporter(opennebula_major=opennebula_major(_remotes_dir(script)))

    def body(rep: Reporter) -> None:
        if action in VMM_UNSUPPORTED:
            raise not_supported(action)
        args = _parse_vmm_argv(action, sys.argv[1:])
        vm_id = _vm_id(args["vm_id"])
        rep.vm_id = vm_id
        host = args["host"]
        if action == "deploy":
            data = driver_input.read_stream(sys.stdin.buffer, what="deployment (stdin)")
        else:
            data = driver_input.read_stream(sys.stdin.buffer)
        drv = parse_driver_action(data)
        if drv.vm.vm_id != vm_id:
            raise InputError(f"argv names VM {vm_id} but the XML describes VM {drv.vm.vm_id}")
        config = load_config(remote_script=script)
        if config.opennebula_major is not None:
            rep.opennebula_major = config.opennebula_major
        node = node_for_host(config, host)
        driver = driver_class(node.kind, config, node_name=host)(node, config, rep)
        call = VmmCall(action=action, argv=sys.argv[1:], vm_id=vm_id, host=host,
                       deploy_id=args.get("deploy_id", "") or drv.deploy_id, drv_action=drv, extra=args)
        result = getattr(driver, action)(call)
        if action == "deploy":
            print_deploy_id(result)
        elif action == "poll":
            sys.stdout.write(str(result).strip() + "\n")

    run_guarded(body, reporter)


def _split_location(raw: str, what: str) -> tuple[str, str]:
    host, sep, path = raw.partition(":")
    if not sep or not host or not path:
        raise InputError(f"{what} {raw!r} is not host:path")
    return host, path


def _int_arg(raw: str, what: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise InputError(f"{what} {raw!r} is not a number") from None


def parse_tm_argv(action: str, argv: list[str]) -> TmCall:
    """TM argv per §8.3. The last two words are always vm id and datastore id."""
    def need(n: int, names: str) -> None:
        if len(argv) != n:
            raise InputError(f"tm {action} expects {n} arguments ({names}), got {len(argv)}")

    if action in ("clone", "ln", "mv"):
        need(4, "src dst vmid dsid")
        src_host, src_path = _split_location(argv[0], "source")
        host, path = _split_location(argv[1], "destination")
        return TmCall(action, argv, _vm_id(argv[2]), _int_arg(argv[3], "datastore id"), host, path,
                      src_host=src_host, src_path=src_path)
    if action == "mkswap":
        need(4, "size dst vmid dsid")
        host, path = _split_location(argv[1], "destination")
        return TmCall(action, argv, _vm_id(argv[2]), _int_arg(argv[3], "datastore id"), host, path,
                      size_mb=_int_arg(argv[0], "size"))
    if action == "mkimage":
        need(5, "size format dst vmid dsid")
        host, path = _split_location(argv[2], "destination")
        return TmCall(action, argv, _vm_id(argv[3]), _int_arg(argv[4], "datastore id"), host, path,
                      size_mb=_int_arg(argv[0], "size"), format=argv[1])
    if action == "context":
        if len(argv) < 4:
            raise InputError(f"tm context expects context.sh [files...] dst vmid dsid, got {len(argv)} arguments")
        host, path = _split_location(argv[-3], "destination")
        return TmCall(action, argv, _vm_id(argv[-2]), _int_arg(argv[-1], "datastore id"), host, path,
                      src_path=argv[0], context_files=list(argv[1:-3]))
    if action == "delete":
        need(3, "host:path vmid dsid")
        host, path = _split_location(argv[0], "location")
        return TmCall(action, argv, _vm_id(argv[1]), _int_arg(argv[2], "datastore id"), host, path)
    if action == "failmigrate":
        need(5, "src_host dst_host sysdir vmid dsid")
        return TmCall(action, argv, _vm_id(argv[3]), _int_arg(argv[4], "datastore id"), argv[1], argv[2],
                      src_host=argv[0])
    raise InputError(f"tm {action} takes no arguments bmm understands")


def tm_main(action: str, script: str) -> None:
    """Entry point of remotes/tm/bmm/<action>. TM actions get no stdin (§8.1)."""
    if action not in TM_ACTIONS:
        raise SystemExit(f"internal error: unknown TM action {action}")
    reporter = Reporter(opennebula_major=opennebula_major(_remotes_dir(script)))

    def body(rep: Reporter) -> None:
        if action in TM_UNSUPPORTED:
            raise not_supported(action, TM_ACTION_NAMES)
        if action in ("monitor", "monitor_ds"):
            # The bmm system datastore is SHARED=NO: hosts report their own capacity through
            # the IM driver, so oned never asks. Answer empty rather than invent numbers.
            return
        call = parse_tm_argv(action, sys.argv[1:])
        rep.vm_id = call.vm_id
        config = load_config(remote_script=script)
        if config.opennebula_major is not None:
            rep.opennebula_major = config.opennebula_major
        if action == "mv" and call.src_host != call.host:
            raise not_supported("undeploy and cold migration (mv)")
        node = node_for_host(config, call.host)
        driver = driver_class(node.kind, config, node_name=call.host)(node, config, rep)
        getattr(driver, "tm_" + action)(call)

    run_guarded(body, reporter)
