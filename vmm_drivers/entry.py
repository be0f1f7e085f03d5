"""What the remote scripts call: parse argv and stdin exactly as OpenNebula passes them
(protocol §1.6 for VMM, §8.3 for TM), find the node and its kind, and run the action.

Everything is checked before anything is touched: ids are ASCII decimals in SQLite's range,
sizes positive, TM paths inside OpenNebula's layout and of the VM argv names
(bmm.opennebula.layout), context.sh bounded and parsed here, once. A bad input fails with one
line that says what was expected and never quotes the input.

What only TM actions need (OpenNebula's layout, context.sh) is imported in tm_main and
parse_tm_argv, so `poll` does not pay for it (benchmarks/cold_start.py).
"""

from __future__ import annotations

import os
import re
import sys
from typing import TYPE_CHECKING

from bmm import logs
from bmm.config import Config, load_config
from bmm.errors import InputError
from bmm.inventory import node_for_host
from bmm.opennebula import driver_input
from bmm.opennebula.args import check_host_name, parse_id, parse_size_mb, split_location
from bmm.opennebula.reply import Reporter, opennebula_major, print_deploy_id, run_guarded
from bmm.opennebula.vm import parse_driver_action
from vmm_drivers.base import TM_ACTION_NAMES, TM_ACTIONS, VMM_ACTIONS, TmCall, VmmCall, not_supported
from bmm.kinds import kind_class

if TYPE_CHECKING:
    from bmm.opennebula.layout import Layout

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
_FORMAT = re.compile(r"[a-z0-9]{1,16}", re.ASCII)


def _remotes_dir(script: str) -> str:
    # <remotes>/vmm/bmm/<action> or <remotes>/tm/bmm/<action>
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(script))))


def _config(script: str, rep: Reporter) -> Config:
    config = load_config(remote_script=script)
    logs.configure(config.log_path)
    if config.opennebula_major is not None:
        rep.opennebula_major = config.opennebula_major
    return config


def _parse_vmm_argv(action: str, argv: list[str]) -> dict[str, str]:
    names = _VMM_ARGV[action]
    if len(argv) == len(names) - 1 and names[0] == "deploy_id":
        argv = [""] + argv  # no deploy id yet (e.g. cancel during an early cleanup)
    if len(argv) != len(names):
        raise InputError(f"{action} expects {len(names)} arguments ({' '.join(names)}), got {len(argv)}")
    args = dict(zip(names, argv))
    if names[1] == "host" and argv[1] != argv[3]:
        raise InputError(f"{action}: the two host arguments (2 and 4) differ")
    check_host_name(args["host"], "the host argument")
    return args


def vmm_main(action: str, script: str) -> None:
    """Entry point of remotes/vmm/bmm/<action>."""
    if action not in VMM_ACTIONS:
        raise SystemExit(f"internal error: unknown VMM action {action}")

    def body(rep: Reporter) -> None:
        if action in VMM_UNSUPPORTED:
            raise not_supported(action)
        args = _parse_vmm_argv(action, sys.argv[1:])
        vm_id = parse_id(args["vm_id"], "the VM id argument")
        rep.vm_id = vm_id
        host = args["host"]
        what = "deployment (stdin)" if action == "deploy" else "stdin"
        drv = parse_driver_action(driver_input.read_stream(sys.stdin.buffer, what=what))
        if drv.vm.vm_id != vm_id:
            raise InputError(f"argv names VM {vm_id} but the XML describes another VM")
        if drv.host and drv.host != host:
            raise InputError(f"argv names host {host} but the XML names another host")
        config = _config(script, rep)
        node = node_for_host(config, host)
        kind = kind_class(node.kind, config, node_name=host)(node, config, rep)
        call = VmmCall(action=action, argv=sys.argv[1:], vm_id=vm_id, host=host,
                       deploy_id=drv.deploy_id, drv_action=drv, extra=args)
        result = kind.perform(action, call)
        if action == "deploy":
            print_deploy_id(result)
        elif action == "poll":
            sys.stdout.write(str(result).strip() + "\n")

    run_guarded(body, opennebula_major=opennebula_major(_remotes_dir(script)))


def parse_tm_argv(action: str, argv: list[str], layout: Layout) -> TmCall:
    """TM argv per §8.3, every location checked against OpenNebula's layout for this VM.
    The last two words are always vm id and datastore id."""
    from bmm.context import check_context_files, read_context_sh

    def need(n: int, names: str) -> None:
        if len(argv) != n:
            raise InputError(f"tm {action} expects {n} arguments ({names}), got {len(argv)}")

    def ids(vm_pos: int) -> tuple[int, int]:
        return (parse_id(argv[vm_pos], "the VM id argument"),
                parse_id(argv[vm_pos + 1], "the datastore id argument"))

    def system(raw: str, what: str, vm_id: int, *, disk: bool) -> tuple[str, str, int | None]:
        host, path = split_location(raw, what)
        place = layout.system_path(path, vm_id, what)
        if disk and place.disk_id is None:
            raise InputError(f"{what} is not a disk.<n> path")
        return host, place.path, place.disk_id

    if action in ("clone", "ln"):
        need(4, "src dst vmid dsid")
        vm_id, ds_id = ids(2)
        src_host, src = split_location(argv[0], "the source argument")
        src = layout.image_path(src, ds_id, "the source argument")
        host, path, disk = system(argv[1], "the destination argument", vm_id, disk=True)
        return TmCall(action, argv, vm_id, ds_id, host, path, disk, src_host=src_host, src_path=src)
    if action == "mkswap":
        need(4, "size dst vmid dsid")
        vm_id, ds_id = ids(2)
        host, path, disk = system(argv[1], "the destination argument", vm_id, disk=True)
        return TmCall(action, argv, vm_id, ds_id, host, path, disk,
                      size_mb=parse_size_mb(argv[0], "the size argument"))
    if action == "mkimage":
        need(5, "size format dst vmid dsid")
        vm_id, ds_id = ids(3)
        if not _FORMAT.fullmatch(argv[1]):
            raise InputError("the format argument is not a disk format name (raw, qcow2, ...)")
        host, path, disk = system(argv[2], "the destination argument", vm_id, disk=True)
        return TmCall(action, argv, vm_id, ds_id, host, path, disk,
                      size_mb=parse_size_mb(argv[0], "the size argument"), format=argv[1])
    if action == "context":
        if len(argv) < 4:
            raise InputError(f"tm context expects context.sh [files...] dst vmid dsid, got {len(argv)} arguments")
        vm_id, ds_id = ids(len(argv) - 2)
        host, path, disk = system(argv[-3], "the destination argument", vm_id, disk=True)
        ctx = layout.context_sh(argv[0], vm_id)
        files = [layout.context_file(spec, vm_id, f"context file argument {i}")
                 for i, spec in enumerate(argv[1:-3], start=2)]
        check_context_files(files)
        return TmCall(action, argv, vm_id, ds_id, host, path, disk, src_path=ctx,
                      context=read_context_sh(ctx), context_files=files)
    if action == "delete":
        need(3, "host:path vmid dsid")
        vm_id, ds_id = ids(1)
        host, path, disk = system(argv[0], "the location argument", vm_id, disk=False)
        return TmCall(action, argv, vm_id, ds_id, host, path, disk)
    if action == "mv":
        need(4, "src dst vmid dsid")
        vm_id, ds_id = ids(2)
        src_host, src, _ = system(argv[0], "the source argument", vm_id, disk=False)
        host, path, disk = system(argv[1], "the destination argument", vm_id, disk=False)
        return TmCall(action, argv, vm_id, ds_id, host, path, disk, src_host=src_host, src_path=src)
    if action == "failmigrate":
        need(5, "src_host dst_host sysdir vmid dsid")
        vm_id, ds_id = ids(3)
        return TmCall(action, argv, vm_id, ds_id, check_host_name(argv[1], "the destination host argument"),
                      layout.system_path(argv[2], vm_id, "the system dir argument").path,
                      src_host=check_host_name(argv[0], "the source host argument"))
    raise InputError(f"tm {action} takes no arguments bmm understands")


def tm_main(action: str, script: str) -> None:
    """Entry point of remotes/tm/bmm/<action>. TM actions get no stdin (§8.1)."""
    if action not in TM_ACTIONS:
        raise SystemExit(f"internal error: unknown TM action {action}")
    remotes = _remotes_dir(script)

    def body(rep: Reporter) -> None:
        if action in TM_UNSUPPORTED:
            raise not_supported(action, TM_ACTION_NAMES)
        if action in ("monitor", "monitor_ds"):
            # The bmm system datastore is SHARED=NO: hosts report their own capacity through
            # the IM driver, so oned never asks. Answer empty rather than invent numbers.
            return
        from bmm.opennebula.layout import Layout

        config = _config(script, rep)
        layout = Layout.find(remotes_dir=remotes, var=config.opennebula_var,
                             datastores=config.datastore_location)
        call = parse_tm_argv(action, sys.argv[1:], layout)
        rep.vm_id = call.vm_id
        if action == "mv" and call.src_host != call.host:
            raise not_supported("undeploy and cold migration (mv)")
        node = node_for_host(config, call.host)
        kind = kind_class(node.kind, config, node_name=call.host)(node, config, rep)
        kind.perform("tm_" + action, call)

    run_guarded(body, opennebula_major=opennebula_major(remotes))
