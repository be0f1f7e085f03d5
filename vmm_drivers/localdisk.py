"""Local-disk servers (the Convey shape): the instance's image lives in an LVM logical volume on
the node's own disk, and GRUB2 boots it.

Boot design: the node's management ("home") OS stays GRUB's saved_entry. The instance boots
through next_entry (one-shot, grub-reboot), so every way back to the home OS needs only power
control: a reset, a power cycle or the instance's own reboot all land in the home OS. Reboot
and reset of an instance therefore go through the home OS and re-arm next_entry.

Disk life cycle (TM), per OpenNebula's sequencing (protocol §8.4):
- clone/ln (prolog): home OS; LV `vm<id>-disk<n>` sized from the image; the image streamed in
  (zero runs not sent); the boot disk (disk.0) adapted (fstab root, swap, kernel check).
  A failed copy removes its LV and leaves the node available.
- context (inside every DEPLOY): the CONTEXT ISO, with ETH<n>_MAC rewritten to the node's MACs,
  written to LV `vm<id>-context`.
- delete (epilog): home OS; the VM's LVs zeroed, then removed; its GRUB entry removed; the
  node available again.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from functools import cached_property
from pathlib import Path

from bmm.boot import grub
from bmm.context import build_context_iso, write_context_lv
from bmm.errors import BmmError, FatalError, TimeoutExpired, TransientError
from bmm.power import power_for
from bmm.state import (ACTIVE, AVAILABLE, CLEANING, DELETING, DEPLOYING, ERROR, MAINTENANCE, OFF, STOPPING,
                       open_store)
from bmm.storage import lvm
from bmm.storage.adapt import adapt_root
from bmm.storage.image import inspect_image, probe_layout
from bmm.storage.stream import copy_image_to_lv
from bmm.transport.ssh import SshSession, SshTarget, reachable
from vmm_drivers.base import MachineDriver, TmCall, VmmCall, not_supported

PROBE_TIMEOUT = 10.0
COPY_TIMEOUT = 6 * 3600.0
GRACE_AFTER_RESET_S = 20.0
SILENT_RESET_S = 45.0       # powered on, no ssh for this long: hung, reset once


def disk_lv(vm_id: int, disk_id: int) -> str:
    return f"vm{vm_id}-disk{disk_id}"


def context_lv(vm_id: int) -> str:
    return f"vm{vm_id}-context"


def entry_id(vm_id: int) -> str:
    return f"bmm-vm{vm_id}"


def deploy_id(node: str, vm_id: int) -> str:
    return f"bmm-{node}-{vm_id}"


class LocalDiskDriver(MachineDriver):
    kind = "localdisk"

    def __init__(self, node, config, reporter):
        super().__init__(node, config, reporter)
        self.name = node.name
        self.vg = node.storage.vg
        self.boot_dir = node.boot.get("boot_dir", "/boot")
        self.home = node.boot.get("home_entry", "home")
        self.target: SshTarget = node.ssh.target(node.name)

    @cached_property
    def store(self):
        return open_store(config=self.config)

    @cached_property
    def power(self):
        return power_for(self.node)

    # ---------------------------------------------------------------- bookkeeping
    def _meta_path(self, vm_id: int) -> Path:
        return Path(self.config.state_db).parent / "vms" / f"{vm_id}.json"

    def _save_meta(self, vm_id: int, data: dict) -> None:
        path = self._meta_path(vm_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh)
        os.replace(tmp, path)

    def _load_meta(self, vm_id: int) -> dict:
        try:
            return json.loads(self._meta_path(vm_id).read_text())
        except FileNotFoundError:
            raise BmmError(f"VM {vm_id} has no disk on this node (its prolog never ran here)", node=self.name) from None

    def _refuse_other_vm(self, record, vm_id: int) -> None:
        if record.vm_id is not None and record.vm_id != vm_id:
            raise BmmError(f"holds VM {record.vm_id}; refusing VM {vm_id} (one instance per machine)", node=self.name)
        if record.state == MAINTENANCE:
            raise BmmError("is in maintenance; refusing to deploy", node=self.name)

    def _fail(self, exc: BaseException, action: str, vm_id: int | None) -> None:
        reason = getattr(exc, "reason", None) or str(exc)
        try:
            self.store.transition(self.name, ERROR, error=f"{action} of VM {vm_id} failed: {reason}",
                                  reason=f"{action} failed", action=action)
        except BmmError:
            pass

    # ---------------------------------------------------------------- the node's OS
    def _probe(self) -> tuple[str, SshSession | None]:
        """'home' (with a session), 'other' (something that is not the home OS answers, e.g.
        the instance), or 'down'."""
        target = dataclasses.replace(self.target, connect_timeout=PROBE_TIMEOUT)
        session = SshSession(target)
        try:
            session.connect()
        except FatalError as exc:
            if "authentication failed" in exc.reason or "host key changed" in exc.reason:
                return "other", None
            raise
        except TransientError:
            return ("other" if reachable(target, PROBE_TIMEOUT) else "down"), None
        try:
            vgs = session.run(["vgs", "--noheadings", "-o", "vg_name", self.vg], timeout=30, check=False)
            env = session.run(["test", "-f", grub.env_path(self.boot_dir)], timeout=10, check=False)
        except BmmError:
            session.close()
            return "down", None
        if vgs.returncode == 0 and env.returncode == 0:
            return "home", session
        session.close()
        return "other", None

    def home_os(self, *, wait_s: float | None = None) -> SshSession:
        """Bring the node to its home OS (power on, or reset out of an instance) and return a
        session to it, or raise TimeoutExpired at the deadline."""
        deadline = time.monotonic() + (wait_s or self.config.ssh_wait_s)
        status = self.power.status()
        if status == "off":
            self.reporter.info(f"powering {self.name} on into its home OS")
            self.power.on()
        reset_at = None
        silent_since = None
        last = "no answer"
        while True:
            kind, session = self._probe()
            if kind == "home":
                return session
            last = "ssh does not answer" if kind == "down" else "something other than the home OS answers"
            now = time.monotonic()
            silent_since = (silent_since or now) if kind == "down" else None
            hung = silent_since is not None and now - silent_since > SILENT_RESET_S and status != "off"
            if reset_at is None and (kind == "other" or hung):
                why = "is not in its home OS" if kind == "other" else f"has not answered for {SILENT_RESET_S:g} s"
                self.reporter.info(f"{self.name} {why}; resetting it (saved_entry is the home OS)")
                self.power.reset()
                reset_at = now
            if time.monotonic() > deadline:
                raise TimeoutExpired(f"did not come up in its home OS within "
                                     f"{wait_s or self.config.ssh_wait_s:g} s ({last})", node=self.name)
            time.sleep(1.0)

    def _wait_instance(self, vm_id: int, wait_s: float) -> None:
        """After the reset into the instance: it is up when the node answers ssh but is not the
        home OS. The home OS answering after the grace period means GRUB fell back to it."""
        start = time.monotonic()
        deadline = start + wait_s
        seen_down = False
        while time.monotonic() < deadline:
            kind, session = self._probe()
            if session is not None:
                session.close()
            if kind == "other":
                return
            if kind == "down":
                seen_down = True
            elif kind == "home" and (seen_down or time.monotonic() - start > GRACE_AFTER_RESET_S):
                raise BmmError(f"booted its home OS instead of VM {vm_id} (GRUB entry {entry_id(vm_id)} "
                               "did not boot; see the node's console)", node=self.name)
            time.sleep(1.0)
        raise TimeoutExpired(f"VM {vm_id} did not come up within {wait_s:g} s", node=self.name)

    def _arm_and_boot(self, session: SshSession, vm_id: int, meta: dict) -> None:
        lv = meta["lv"]
        if not lvm.lv_exists(session, self.vg, lv):
            raise BmmError(f"VM {vm_id}'s disk {self.vg}/{lv} is missing", node=self.name)
        grub.write_tenant_entry(session, self.boot_dir, entry_id(vm_id), f"bmm vm {vm_id}", self.vg, lv,
                                meta["kernel"], meta["initrd"], meta.get("cmdline", "ro"),
                                fstype=meta.get("fstype", "ext4"))
        grub.ensure_saved_entry(session, self.boot_dir, self.home)
        grub.set_next_entry(session, self.boot_dir, entry_id(vm_id))
        session.run(["sync"], timeout=120)
        session.close()
        self.reporter.info(f"rebooting {self.name} into VM {vm_id} (next_entry {entry_id(vm_id)})")
        self.power.reset()

    def _boot_instance(self, vm_id: int) -> None:
        meta = self._load_meta(vm_id)
        session = self.home_os()
        self._arm_and_boot(session, vm_id, meta)
        try:
            self._wait_instance(vm_id, self.config.boot_wait_s)
        except BmmError:
            self.reporter.error(f"VM {vm_id} did not come up; bringing {self.name} back to its home OS")
            try:
                self.power.reset()          # next_entry is spent: the reset lands in the home OS
                self.home_os().close()
            except BmmError as exc:
                self.reporter.error(f"{self.name} did not return to its home OS either: {exc.reason}")
            raise

    # ---------------------------------------------------------------- VMM
    def deploy(self, call: VmmCall) -> str:
        vm = call.vm_id
        with self.store.lock(self.name, "deploy", vm_id=vm, wait=self.config.lock_wait_s) as rec:
            self._refuse_other_vm(rec, vm)
            self.store.transition(self.name, DEPLOYING, vm_id=vm, reason=f"deploy VM {vm}", action="deploy")
            try:
                self._boot_instance(vm)
            except BaseException as exc:
                self._fail(exc, "deploy", vm)
                raise
            self.store.transition(self.name, ACTIVE, vm_id=vm, reason=f"VM {vm} running", action="deploy")
        return deploy_id(self.name, vm)

    def shutdown(self, call: VmmCall) -> None:
        vm = call.vm_id
        with self.store.lock(self.name, "shutdown", vm_id=vm, wait=self.config.lock_wait_s) as rec:
            self._refuse_other_vm(rec, vm)
            self.store.transition(self.name, STOPPING, reason=f"shutdown VM {vm}", action="shutdown")
            try:
                self.power.soft_off()
            except BmmError as exc:
                still_on = self.power.status() == "on"
                self.store.transition(self.name, ACTIVE if still_on else ERROR,
                                      error=None if still_on else exc.reason, reason="shutdown failed", action="shutdown")
                raise BmmError(f"VM {vm} did not power off ({exc.reason})", node=self.name) from None
            self.store.transition(self.name, OFF, reason=f"VM {vm} powered off", action="shutdown")

    def cancel(self, call: VmmCall) -> None:
        vm = call.vm_id
        with self.store.lock(self.name, "cancel", vm_id=vm, wait=self.config.lock_wait_s) as rec:
            if rec.vm_id not in (None, vm):
                raise BmmError(f"holds VM {rec.vm_id}, not VM {vm}; not powering it off", node=self.name)
            self.power.off()
            reason = f"VM {vm} powered off (hard)"
            if rec.state == ACTIVE:
                self.store.transition(self.name, STOPPING, reason=f"cancel VM {vm}", action="cancel")
                self.store.transition(self.name, OFF, reason=reason, action="cancel")
            elif rec.state == STOPPING:
                self.store.transition(self.name, OFF, reason=reason, action="cancel")
            elif rec.state == DEPLOYING:
                self.store.transition(self.name, ERROR, error=f"VM {vm} cancelled while deploying",
                                      reason=reason, action="cancel")

    def _restart(self, call: VmmCall, *, hard: bool) -> None:
        vm = call.vm_id
        action = "reset" if hard else "reboot"
        with self.store.lock(self.name, action, vm_id=vm, wait=self.config.lock_wait_s) as rec:
            self._refuse_other_vm(rec, vm)
            try:
                if hard:
                    self.power.reset()          # next_entry was consumed: lands in the home OS
                else:
                    self.power.soft_off()
                    self.power.on()
                self._boot_instance(vm)
            except BaseException as exc:
                self._fail(exc, action, vm)
                raise

    def reboot(self, call: VmmCall) -> None:
        self._restart(call, hard=False)

    def reset(self, call: VmmCall) -> None:
        self._restart(call, hard=True)

    def poll(self, call: VmmCall) -> str:
        status = self.power.status()
        if status == "off":
            return "STATE=d"
        if reachable(self.target, PROBE_TIMEOUT):
            return "STATE=a"
        return "STATE=e" if status == "on" else "STATE=-"

    # ---------------------------------------------------------------- TM
    def tm_clone(self, call: TmCall) -> None:
        vm, disk = call.vm_id, call.disk_id
        if disk is None:
            raise BmmError(f"clone destination {call.path} is not a disk.N path")
        lv = disk_lv(vm, disk)
        with self.store.lock(self.name, "clone", vm_id=vm, wait=self.config.lock_wait_s) as rec:
            self._refuse_other_vm(rec, vm)
            info = inspect_image(call.src_path)
            layout = probe_layout(call.src_path, info.format, info)
            self.store.transition(self.name, DEPLOYING, vm_id=vm, reason=f"clone disk {disk} of VM {vm}", action="clone")
            try:
                session = self.home_os()
                with session:
                    if lvm.lv_exists(session, self.vg, lv):
                        self.reporter.info(f"removing a stale {self.vg}/{lv} left by an earlier attempt")
                        lvm.wipe_lv(session, self.vg, lv)
                        lvm.remove_lv(session, self.vg, lv)
                    boot_disk = disk == 0
                    size = layout.root_size if boot_disk else info.virtual_size
                    offset = layout.root_offset if boot_disk else 0
                    created = lvm.create_lv(session, self.vg, lv, size, tags=("bmm", f"bmm_vm_{vm}"))
                    self.reporter.info(f"copying {call.src_path} ({size // 2**20} MiB) to {self.vg}/{lv}")
                    try:
                        with lvm.open_lv(session, self.vg, lv) as dev:
                            copy_image_to_lv(session, call.src_path, info.format, dev, created.size,
                                             offset=offset, length=size, info=info, timeout=COPY_TIMEOUT,
                                             progress=lambda d, t: self.reporter.progress(f"disk {disk}", d, t))
                            if boot_disk:
                                adapted = adapt_root(session, dev, vg=self.vg, lv=lv)
                    except BaseException:
                        self._remove_lv_after_failure(lv)
                        raise
                if boot_disk:
                    for change in adapted.changes:
                        self.reporter.info(f"fstab: {change}")
                    for warning in adapted.warnings:
                        self.reporter.info(f"warning: {warning}")
                    self._save_meta(vm, {"lv": lv, "kernel": adapted.kernel, "initrd": adapted.initrd,
                                         "fstype": adapted.fstype, "cmdline": "ro"})
            except BaseException as exc:
                self._after_failed_prolog(exc, vm)
                raise

    def _remove_lv_after_failure(self, lv: str) -> None:
        """A copy that failed midway: remove the partial LV, over a fresh session if the old
        link is gone."""
        try:
            with self.home_os(wait_s=120) as session:
                lvm.wipe_lv(session, self.vg, lv)
                lvm.remove_lv(session, self.vg, lv)
        except BmmError as exc:
            self.reporter.error(f"could not remove the partial {self.vg}/{lv}: {exc.reason}")
            raise

    def _after_failed_prolog(self, exc: BaseException, vm: int) -> None:
        """Node usable again (available) when nothing of the VM is left, else error."""
        reason = getattr(exc, "reason", None) or str(exc)
        try:
            with self.home_os(wait_s=120) as session:
                left = lvm.list_lvs(session, self.vg, prefix=f"vm{vm}-")
            if not left:
                self.store.transition(self.name, CLEANING, reason=f"prolog of VM {vm} failed: {reason}", action="clone")
                self.store.transition(self.name, AVAILABLE, reason="nothing of the failed VM left", action="clone")
                return
        except BmmError:
            pass
        self._fail(exc, "clone", vm)

    def tm_context(self, call: TmCall) -> None:
        vm = call.vm_id
        with self.store.lock(self.name, "context", vm_id=vm, wait=self.config.lock_wait_s) as rec:
            self._refuse_other_vm(rec, vm)
            if rec.state == ACTIVE:
                raise BmmError(f"VM {vm} is running; its context can only change while it is powered off",
                               node=self.name)
            with tempfile.TemporaryDirectory(prefix="bmm-context-") as tmp:
                iso = os.path.join(tmp, "context.iso")
                build_context_iso(call.src_path, call.context_files, iso, macs=self.node.macs, node=self.name)
                self.store.transition(self.name, DEPLOYING, vm_id=vm, reason=f"context of VM {vm}", action="context")
                try:
                    with self.home_os() as session:
                        write_context_lv(session, self.vg, context_lv(vm), iso)
                except BaseException as exc:
                    self._fail(exc, "context", vm)
                    raise

    def tm_mkswap(self, call: TmCall) -> None:
        self._volatile(call, swap=True)

    def tm_mkimage(self, call: TmCall) -> None:
        self._volatile(call, swap=False)

    def _volatile(self, call: TmCall, *, swap: bool) -> None:
        vm, disk = call.vm_id, call.disk_id
        if disk is None or not call.size_mb:
            raise BmmError(f"volatile disk destination {call.path} is not a disk.N path with a size")
        lv = disk_lv(vm, disk)
        with self.store.lock(self.name, "mkimage", vm_id=vm, wait=self.config.lock_wait_s) as rec:
            self._refuse_other_vm(rec, vm)
            self.store.transition(self.name, DEPLOYING, vm_id=vm, reason=f"volatile disk {disk} of VM {vm}", action="mkimage")
            try:
                with self.home_os() as session:
                    lvm.create_lv(session, self.vg, lv, call.size_mb * 2**20, tags=("bmm", f"bmm_vm_{vm}"))
                    if swap:
                        with lvm.open_lv(session, self.vg, lv) as dev:
                            session.run(["mkswap", "-L", f"swap-vm{vm}", dev], timeout=120)
            except BaseException as exc:
                self._after_failed_prolog(exc, vm)
                raise

    def tm_delete(self, call: TmCall) -> None:
        vm = call.vm_id
        with self.store.lock(self.name, "delete", vm_id=vm, wait=self.config.lock_wait_s) as rec:
            other = rec.vm_id is not None and rec.vm_id != vm
            if not other:
                self.store.transition(self.name, DELETING if rec.state != AVAILABLE else CLEANING, reason=f"delete VM {vm}", action="delete")
            try:
                with self.home_os() as session:
                    names = [disk_lv(vm, call.disk_id)] if call.disk_id is not None else \
                        [lv.name for lv in lvm.list_lvs(session, self.vg, prefix=f"vm{vm}-")]
                    for name in names:
                        if lvm.lv_exists(session, self.vg, name):
                            self.reporter.info(f"wiping {self.vg}/{name}")
                            lvm.wipe_lv(session, self.vg, name)
                            lvm.remove_lv(session, self.vg, name)
                    if call.disk_id is None:
                        grub.remove_tenant_entry(session, self.boot_dir, entry_id(vm))
                        grub.ensure_saved_entry(session, self.boot_dir, self.home)
            except BaseException as exc:
                if not other:
                    self._fail(exc, "delete", vm)
                raise
            if call.disk_id is None:
                self._meta_path(vm).unlink(missing_ok=True)
                if not other:
                    if self.store.get(self.name).state != CLEANING:
                        self.store.transition(self.name, CLEANING, reason=f"VM {vm} wiped", action="delete")
                    self.store.transition(self.name, AVAILABLE, reason=f"VM {vm} deleted", action="delete")

    def tm_mv(self, call: TmCall) -> None:
        raise not_supported("undeploy and cold migration (mv)")
