"""Local-disk servers (the Convey shape): the instance's image lives in an LVM logical volume on
the node's own disk, and GRUB2 boots it. The kind is GrubBoot + LvmDisk + SshTransport + any
power driver (its parts); this module says what OpenNebula's actions mean in terms of them.

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

What only the TM prolog and context need (image inspection and delivery, root adaptation,
the CONTEXT ISO) is imported in tm_clone and tm_context: `poll` and the IM load this module
on every call (benchmarks/cold_start.py).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bmm.boot.grub import GrubBoot, TenantEntry, tenant_entry_id
from bmm.errors import AuthError, BmmError, InputError, Refused, TimeoutExpired, TransientError
from bmm.power import PowerState, power_for
from bmm.state import (ACTIVE, AVAILABLE, CLEANING, DELETING, DEPLOYING, ERROR, OFF, PROVISIONED, REBOOTING,
                       STOPPING)
from bmm.storage.lvm import LvmDisk
from bmm.transport.ssh import SshSession, SshTransport
from vmm_drivers.base import InstanceState, Kind, Step, TmCall, VmmCall, describe, not_supported
from vmm_drivers.rearm import start_rearm

log = logging.getLogger("bmm.localdisk")

PROBE_TIMEOUT = 10.0
COPY_TIMEOUT = 6 * 3600.0
GRACE_AFTER_RESET_S = 20.0
SILENT_RESET_S = 45.0       # powered on, no ssh for this long: hung, reset once
PROLOG_ACTIONS = frozenset({"tm_clone", "tm_ln", "tm_mkswap", "tm_mkimage"})


def disk_lv(vm_id: int, disk_id: int) -> str:
    return f"vm{vm_id}-disk{disk_id}"


def context_lv(vm_id: int) -> str:
    return f"vm{vm_id}-context"


@dataclass
class Parts:
    """What a local-disk server is made of. Tests give a kind fakes of each."""

    power: Any
    boot: GrubBoot
    disk: LvmDisk
    transport: SshTransport

    @classmethod
    def of(cls, node) -> "Parts":
        """The parts the node's (already validated) inventory table describes."""
        return cls(power=power_for(node), boot=GrubBoot(node.name, node.boot.settings),
                   disk=LvmDisk(node.name, node.storage.settings),
                   transport=SshTransport(node.ssh.target(node.name)))


class LocalDiskKind(Kind):
    kind = "localdisk"
    PARTS = Parts

    @property
    def disk(self) -> LvmDisk:
        return self.parts.disk

    @property
    def vg(self) -> str:
        return self.disk.vg

    # ---------------------------------------------------------------- bookkeeping
    # What bmm put on the node for a VM (bmm.footprint): the LVs it created (name -> bytes;
    # what the host reports as USED disk, and what a clean-up may touch) and, once the boot
    # disk is cloned, how to boot it (kernel, initrd, root LV).
    def _meta(self, vm_id: int) -> dict:
        data = self.footprint.load(vm_id)
        data.setdefault("lvs", {})
        return data

    def _note_lv(self, vm_id: int, lv: str, size: int | None, **extra) -> None:
        """Record (size given) or forget (None) an LV of the VM; extra keys go in as they are."""
        meta = self._meta(vm_id)
        if size is None:
            meta["lvs"].pop(lv, None)
        else:
            meta["lvs"][lv] = size
        meta.update(extra)
        self.footprint.save(vm_id, meta)

    def _boot_meta(self, vm_id: int) -> dict:
        boot = self._meta(vm_id).get("boot")
        if not boot:
            raise Refused(f"has no boot disk of VM {vm_id} (no image was cloned to disk 0 here)",
                          node=self.name)
        return boot

    def used_disk_mb(self, record) -> int:
        if record.vm_id is None:
            return 0
        return sum(self._meta(record.vm_id)["lvs"].values()) // 2**20

    # ---------------------------------------------------------------- the node's OS
    def _probe(self) -> tuple[str, SshSession | None]:
        """'home' (with a session), 'other' (something that is not the home OS answers, e.g.
        the instance), or 'down'."""
        transport = self.parts.transport
        try:
            session = transport.session(connect_timeout=PROBE_TIMEOUT)
        except AuthError:
            return "other", None        # an OS that refuses bmm's key is not the home OS
        except TransientError:
            return ("other" if transport.reachable(PROBE_TIMEOUT) else "down"), None
        try:
            home = self.disk.present(session) and self.boot.present(session)
        except BmmError:
            session.close()
            return "down", None
        if home:
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
                self._remember_home_key(session)
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
                raise BmmError(f"booted its home OS instead of VM {vm_id} (GRUB entry {tenant_entry_id(vm_id)} "
                               "did not boot; see the node's console)", node=self.name)
            time.sleep(1.0)
        raise TimeoutExpired(f"VM {vm_id} did not come up within {wait_s:g} s", node=self.name)

    def _arm_and_boot(self, session: SshSession, vm_id: int, meta: dict) -> None:
        """meta: the VM's boot record (_boot_meta)."""
        lv = meta["lv"]
        if not self.disk.exists(session, lv):
            raise BmmError(f"VM {vm_id}'s disk {self.vg}/{lv} is missing", node=self.name)
        entry = TenantEntry(tenant_entry_id(vm_id), f"bmm vm {vm_id}", self.disk.mapper_name(lv), meta["kernel"],
                            meta["initrd"], meta.get("cmdline", "ro"), meta.get("fstype", "ext4"))
        self.boot.arm(session, vm_id, entry)
        session.run(["sync"], timeout=120)
        session.close()
        self.reporter.info(f"rebooting {self.name} into VM {vm_id} (next_entry {entry.entry_id})")
        self.power.reset()

    def _boot_instance(self, vm_id: int, meta: dict) -> None:
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
    def deploy(self, call: VmmCall, step: Step) -> str:
        vm = call.vm_id
        meta = self._boot_meta(vm)          # the VM's boot disk must be here before anything moves
        step.go(DEPLOYING, reason=f"deploy VM {vm}")
        self._boot_instance(vm, meta)
        step.go(ACTIVE, reason=f"VM {vm} running")
        return self.deploy_id(vm)

    def shutdown(self, call: VmmCall, step: Step) -> None:
        vm = call.vm_id
        step.go(STOPPING, reason=f"shutdown VM {vm}")
        try:
            self.power.soft_off()
        except BmmError as exc:
            raise BmmError(f"VM {vm} did not power off ({exc.reason})", node=self.name) from None
        step.go(OFF, reason=f"VM {vm} powered off")

    def cancel(self, call: VmmCall, step: Step) -> None:
        vm = call.vm_id
        step.go(STOPPING, reason=f"cancel VM {vm}")
        self.power.off()
        step.go(OFF, reason=f"VM {vm} powered off (hard)")

    def _restart(self, call: VmmCall, step: Step, *, hard: bool) -> None:
        vm = call.vm_id
        meta = self._boot_meta(vm)
        step.go(REBOOTING, reason=f"{'reset' if hard else 'reboot'} VM {vm}")
        if hard:
            self.power.reset()          # next_entry was consumed: lands in the home OS
        else:
            self.power.soft_off()
            self.power.on()
        self._boot_instance(vm, meta)
        step.go(ACTIVE, reason=f"VM {vm} running again")

    def reboot(self, call: VmmCall, step: Step) -> None:
        self._restart(call, step, hard=False)

    def reset(self, call: VmmCall, step: Step) -> None:
        self._restart(call, step, hard=True)

    # ---------------------------------------------------------------- what runs there
    def _home_key_path(self) -> Path:
        return Path(self.config.state_db).parent / "hostkeys" / f"{self.name}.pub"

    def _remember_home_key(self, session: SshSession) -> None:
        key = session.host_key()
        path = self._home_key_path()
        if key and (not path.exists() or path.read_text().strip() != key):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(key + "\n")

    def which_os(self) -> str | None:
        """Which OS answers on the node: "home", "tenant", or None (no ssh server answers).

        The host key (a key exchange, no login) tells most cases at once: a tenant image has
        keys of its own. When the key is the home OS's (or none is known yet), only a login
        with bmm's key that finds the node's VG and grubenv proves it is the home OS."""
        key = self.parts.transport.host_key(PROBE_TIMEOUT)
        if key is None:
            return None
        try:
            known = self._home_key_path().read_text().strip()
        except OSError:
            known = None
        if known and key != known:
            return "tenant"
        kind, session = self._probe()
        if session is not None:
            session.close()
        return {"home": "home", "other": "tenant"}.get(kind)

    def _power_status(self) -> str:
        try:
            return self.power.status()
        except BmmError as exc:
            log.info("node %s: power status unknown: %s", self.name, exc.reason)
            return PowerState.UNKNOWN

    def instance_state(self, record, *, act: bool = False) -> InstanceState | None:
        """Power from the BMC, then which OS answers. The instance is RUNNING only while its
        own OS answers; a machine in its home OS is never reported RUNNING. With act:
        - the BMC says off while bmm thinks the instance runs (powered off outside
          OpenNebula): the record follows (active -> off), so a resume works;
        - the home OS answers where the instance should run (the tenant rebooted itself, or
          GRUB's one-shot entry was used up): one re-arm is started (`rearm`), which reboots
          it into the instance, or, failing, leaves the node in error, reported POWEROFF."""
        if record.vm_id is None or record.state not in (ACTIVE, OFF, ERROR):
            return None
        if record.state == OFF:
            return InstanceState.POWEROFF
        power = self._power_status()
        if power == PowerState.OFF:
            if act and record.state == ACTIVE:
                self.store.transition_if(self.name, state=ACTIVE, vm_id=record.vm_id, to=OFF, action="monitor",
                                         reason=f"VM {record.vm_id} powered off outside OpenNebula (seen by monitoring)")
            return InstanceState.POWEROFF
        running_os = self.which_os()
        if record.state == ERROR:
            return InstanceState.POWEROFF if running_os == "home" else None
        if running_os == "tenant":
            return InstanceState.RUNNING
        if running_os == "home" and act:
            start_rearm(self.config, self.name, record.vm_id)
        return None

    def rearm(self, call: VmmCall, step: Step) -> None:
        vm = call.vm_id
        meta = self._boot_meta(vm)
        if self.which_os() != "home":
            return                  # not (or no longer) in its home OS: nothing to do
        self.reporter.info(f"VM {vm} fell back to {self.name}'s home OS; re-arming next_entry and rebooting it")
        log.warning("node %s: VM %s found in the home OS; re-arming and rebooting it once", self.name, vm)
        step.go(REBOOTING, reason=f"VM {vm} found in the home OS: re-armed and rebooted")
        self._boot_instance(vm, meta)
        step.go(ACTIVE, reason=f"VM {vm} running again after the re-arm")

    def after_failure(self, step: Step, exc: BaseException):
        reason = f"{step.name} of VM {step.vm_id} failed: {describe(exc)}"
        if step.action in PROLOG_ACTIONS:
            # The disk this step was making goes (wiped: its extents may hold part of the image),
            # over a fresh session since the old link may be what failed. Then the node is
            # usable again (available) when nothing of the VM is left, else error.
            lv = disk_lv(step.vm_id, step.call.disk_id)
            with self.home_os(wait_s=120) as session:
                if self.disk.exists(session, lv):
                    self.reporter.info(f"removing the partial {self.vg}/{lv}")
                    self._wipe(session, [lv])
                left = self.disk.names(session, f"vm{step.vm_id}-")
            if not left and step.start.state == AVAILABLE:
                return (CLEANING, AVAILABLE), reason + "; nothing of it is left on the node"
        elif step.action == "shutdown" and step.start.state == ACTIVE and self.power.status() == "on":
            return (ACTIVE,), reason + "; the instance still runs"
        return (ERROR,), reason

    # ---------------------------------------------------------------- TM
    def tm_clone(self, call: TmCall, step: Step) -> None:
        from bmm.storage.adapt import adapt_root
        from bmm.storage.chain import inspect_source
        from bmm.storage.delivery import deliver_image
        from bmm.storage.digests import DigestCache
        from bmm.storage.image import probe_layout

        vm, disk = call.vm_id, call.disk_id
        if disk is None:
            raise InputError("the clone destination is not a disk.<n> path")
        lv = disk_lv(vm, disk)
        # a qcow2 may have a backing chain, but only inside its own datastore's directory
        src = inspect_source(call.src_path, within=os.path.dirname(call.src_path))
        info = src.info
        layout = probe_layout(src.spec or call.src_path, info.format, info)
        step.go(DEPLOYING, reason=f"clone disk {disk} of VM {vm}")
        session = self.home_os()
        with session:
            if self.disk.exists(session, lv):
                self.reporter.info(f"removing a stale {self.vg}/{lv} left by an earlier attempt")
                self.disk.wipe_and_remove(session, lv)
            boot_disk = disk == 0
            size = layout.root_size if boot_disk else info.virtual_size
            offset = layout.root_offset if boot_disk else 0
            created = self.disk.create(session, lv, size, tags=("bmm", f"bmm_vm_{vm}"))
            self._note_lv(vm, lv, created.size)
            self.reporter.info(f"copying image {call.src_path.rsplit('/', 1)[-1]} ({size // 2**20} MiB) "
                               f"to {self.vg}/{lv} over {self.disk.image_transport}")
            with self.disk.open(session, lv) as dev:
                deliver_image(session, call.src_path, info.format, dev, created.size, offset=offset,
                              length=size, info=info, source=src.spec, transport=self.disk.image_transport,
                              digests=DigestCache(str(Path(self.config.state_db).parent / "digests")),
                              timeout=COPY_TIMEOUT,
                              progress=lambda d, t: self.reporter.progress(f"disk {disk}", d, t))
                if boot_disk:
                    adapted = adapt_root(session, dev, vg=self.vg, lv=lv)
        if boot_disk:
            for change in adapted.changes:
                self.reporter.info(f"fstab: {change}")
            for warning in adapted.warnings:
                self.reporter.info(f"warning: {warning}")
            self._note_lv(vm, lv, created.size, boot={"lv": lv, "kernel": adapted.kernel,
                                                      "initrd": adapted.initrd, "fstype": adapted.fstype,
                                                      "cmdline": "ro"})
        step.go(PROVISIONED, reason=f"disk {disk} of VM {vm} is on the node")

    def tm_context(self, call: TmCall, step: Step) -> None:
        import tempfile

        from bmm.context import build_context_iso, write_context_lv

        vm = call.vm_id
        if step.record.state == ACTIVE:
            if self._power_status() != PowerState.OFF:
                raise Refused(f"VM {vm} is running; its context can only change while it is powered off",
                              node=self.name)
            # powered off outside OpenNebula, and oned already saw it (monitoring alone moves
            # the VM to POWEROFF): the record follows before the resume goes on
            step.go(OFF, reason=f"VM {vm} powered off outside OpenNebula (seen at resume)")
        with tempfile.TemporaryDirectory(prefix="bmm-context-") as tmp:
            iso = os.path.join(tmp, "context.iso")
            build_context_iso(call.context, call.context_files, iso, macs=self.node.macs, node=self.name)
            step.go(DEPLOYING, reason=f"context of VM {vm}")
            with self.home_os() as session:
                written = write_context_lv(session, self.vg, context_lv(vm), iso)
            self._note_lv(vm, written.name, written.size)
        step.go(PROVISIONED if step.start.state in (PROVISIONED, ERROR) else OFF,
                reason=f"context of VM {vm} written")

    def tm_mkswap(self, call: TmCall, step: Step) -> None:
        self._volatile(call, step, swap=True)

    def tm_mkimage(self, call: TmCall, step: Step) -> None:
        self._volatile(call, step, swap=False)

    def _volatile(self, call: TmCall, step: Step, *, swap: bool) -> None:
        vm, disk = call.vm_id, call.disk_id
        if disk is None:
            raise InputError("the volatile disk destination is not a disk.<n> path")
        lv = disk_lv(vm, disk)
        step.go(DEPLOYING, reason=f"volatile disk {disk} of VM {vm}")
        with self.home_os() as session:
            created = self.disk.create(session, lv, call.size_mb * 2**20, tags=("bmm", f"bmm_vm_{vm}"))
            self._note_lv(vm, lv, created.size)
            if swap:
                with self.disk.open(session, lv) as dev:
                    session.run(["mkswap", "-L", f"swap-vm{vm}", dev], timeout=120)
        step.go(PROVISIONED, reason=f"volatile disk {disk} of VM {vm} is on the node")

    def tm_delete(self, call: TmCall, step: Step) -> None:
        vm = call.vm_id
        if call.disk_id is not None:
            # One disk of the epilog (the VM directory's delete that follows ends the VM), or
            # the roll-back of a refused disk attach. Only a disk bmm made is wiped here, and
            # never under a running instance.
            lv = disk_lv(vm, call.disk_id)
            if lv not in self._meta(vm)["lvs"]:
                self.reporter.info(f"VM {vm} has no disk {call.disk_id} on {self.name}; nothing to delete")
                return
            if step.record.state == ACTIVE:
                self.reporter.info(f"VM {vm} runs on {self.name}; its disk {call.disk_id} goes when it terminates")
                return
            with self.home_os() as session:
                self._wipe(session, [lv])
            self._note_lv(vm, lv, None)
            return
        step.go(DELETING, reason=f"delete VM {vm}")
        with self.home_os() as session:
            self._wipe(session, self.disk.names(session, f"vm{vm}-"))
            self.boot.disarm(session, vm)
        self.footprint.forget(vm)
        step.go(CLEANING, AVAILABLE, reason=f"VM {vm} wiped and deleted")

    def _wipe(self, session: SshSession, names: list[str]) -> None:
        for name in names:
            if self.disk.exists(session, name):
                self.reporter.info(f"wiping {self.vg}/{name}")
                self.disk.wipe_and_remove(session, name)

    def tm_mv(self, call: TmCall) -> None:
        raise not_supported("undeploy and cold migration (mv)")
