"""Netboot boards (the Tilera shape): a board boots whatever its proxy serves it over TFTP, and
bmm switches what that is. The kind is a netboot method (NfsRootBoot or Tftp2StageBoot) + PDU
power + the proxy transport (its parts); this module says what OpenNebula's actions mean in
terms of them.

Everything done on the proxy (TFTP files, NFS roots and exports, staged root filesystems,
tile-monitor) goes through its executor (bmm.transport.proxy), so a remote proxy and the
front-end are the same code. bmm reaches the booted board itself over ssh only to see whether
it answers, and to ask its OS to power off or reboot.

Disk life cycle (TM), in OpenNebula's order (protocol §8.4):
- clone/ln (prolog): the image's root filesystem (bmm.storage.rootfs) goes to the proxy:
  - nfsroot: unpacked by GNU tar into `fs_<board>` (a fresh directory renamed into place);
  - tftp2stage: stored as a gzip'd tar in the proxy's stage_dir, for stage 1 to unpack.
  The kernel is the image's own for the board's architecture (copied to
  vmlinux_<board>_vm<id>) or else the node's configured one; neither is a clone failure
  that touches nothing.
- context (inside every DEPLOY): the CONTEXT as files in the root (bmm.rootcontext):
  unpacked into fs_<board> (nfsroot), or staged for stage 1 to unpack onto the disk.
- delete (epilog): the outlet off, the export and fs_<board> removed (nfsroot); /dev/sda1
  zeroed through stage 1 (tftp2stage, when anything of the VM reached it); the board's TFTP
  files and staged files removed; the node available again.

What bmm made for a VM is recorded as it is made (bmm.footprint), so a clean-up removes only
that, and a resume (deploy after poweroff) of a two-stage board whose disk already holds this
VM's root boots it straight away (stage 1 only runs again to write a changed context).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Any

from bmm.boot import tilemonitor
from bmm.boot.netboot import NfsRootBoot, Tftp2StageBoot, exists, write_file
from bmm.errors import BmmError, NotSupported, Refused, TimeoutExpired
from bmm.power import PowerState, power_for
from bmm.rootcontext import EXTRACT as OVERLAY_EXTRACT
from bmm.rootcontext import overlay
from bmm.state import (ACTIVE, AVAILABLE, CLEANING, DELETING, DEPLOYING, ERROR, OFF, PROVISIONED, REBOOTING,
                       STOPPING)
from bmm.storage.rootfs import TAR_EXTRACT, gzip_source, root_stream
from bmm.transport.proxy import ProxyTransport
from bmm.transport.ssh import SshTransport
from vmm_drivers.base import InstanceState, Kind, Step, TmCall, VmmCall, describe

log = logging.getLogger("bmm.netboot")

TIMEOUT = 120.0
COPY_TIMEOUT = 6 * 3600.0
PROBE_TIMEOUT = 3.0
DOWN_WAIT_S = 120.0          # a soft poweroff or reboot: the board stops answering within this
BOARD_TMP = "/tmp"           # stage 1's scratch space (its tmpfs root)
BOARD_MNT = "/mnt"           # where stage 1 mounts the disk (the blueprint's /mnt)
PROGRESS_STEP = 10           # percent between progress lines


@dataclass
class BoardParts:
    """What a netboot board is made of. Tests give a kind fakes of each."""

    power: Any
    boot: NfsRootBoot | Tftp2StageBoot
    proxy: ProxyTransport
    board: SshTransport | None      # the booted board's sshd (None: the node has no address)

    @classmethod
    def of(cls, node) -> "BoardParts":
        boot_cls = {"nfsroot": NfsRootBoot, "tftp2stage": Tftp2StageBoot}[node.boot.method]
        board = SshTransport(node.ssh.target(node.name)) if node.ssh.address else None
        return cls(power=power_for(node), boot=boot_cls(node.name, node.boot.settings),
                   proxy=ProxyTransport(node.name, node.proxy), board=board)


class Progress:
    """Progress lines every PROGRESS_STEP percent (and at the end), not per chunk."""

    def __init__(self, reporter, what: str, total: int):
        self.reporter, self.what, self.total = reporter, what, max(1, total)
        self.done = 0
        self.shown = -PROGRESS_STEP

    def add(self, n: int) -> None:
        self.done += n
        pct = min(100, 100 * self.done // self.total)
        if pct >= self.shown + PROGRESS_STEP:
            self.shown = pct - pct % PROGRESS_STEP
            self.reporter.progress(self.what, min(self.done, self.total), self.total)

    def counted(self, source):
        def read():
            chunk = source()
            if chunk:
                self.add(len(chunk))
            return chunk
        return read


class NetbootKind(Kind):
    kind = "netboot"
    PARTS = BoardParts

    @property
    def nfsroot(self) -> bool:
        return isinstance(self.boot, NfsRootBoot)

    @property
    def ip(self) -> str | None:
        return self.node.ip or self.node.ssh.address

    # ---------------------------------------------------------------- the board
    def _answers(self) -> bool:
        board = self.parts.board
        return board is not None and board.reachable(PROBE_TIMEOUT)

    def _monitor(self, ex, *actions: list[str], timeout: float = TIMEOUT, check: bool = True):
        argv = self.boot.monitor(self.ip).argv(*actions)
        return ex.run(argv, timeout=timeout, check=check)

    def _wait_up(self, ex, deadline: float, what: str) -> None:
        """The board is up: tile-monitor reaches it (when setup commands are to run there, which
        then run), and its sshd answers bmm. Polls until the deadline, never a fixed sleep."""
        setup = self.boot.setup_commands(self.ip, self.node.macs[0] if self.node.macs else None)
        if setup:
            while not self._monitor(ex, tilemonitor.run("true"), timeout=PROBE_TIMEOUT + 20, check=False).ok:
                self._check_deadline(deadline, what, "tile-monitor cannot reach it")
                time.sleep(1.0)
            self._monitor(ex, *(tilemonitor.run(*words) for words in setup))
        if self.parts.board is None:
            return
        while not self._answers():
            self._check_deadline(deadline, what, "its ssh does not answer")
            time.sleep(1.0)

    def _check_deadline(self, deadline: float, what: str, why: str) -> None:
        if time.monotonic() > deadline:
            raise TimeoutExpired(f"{what} did not come up within {self.config.boot_wait_s:g} s ({why}; "
                                 "see the board's console)", node=self.name)

    def _wait_down(self, what: str) -> bool:
        deadline = time.monotonic() + DOWN_WAIT_S
        while self._answers():
            if time.monotonic() > deadline:
                return False
            time.sleep(1.0)
        return True

    def _boot(self, ex, kernel: str, what: str) -> None:
        """Point the board at kernel, cycle its outlet, wait until it is up."""
        self.boot.point_at(ex, kernel)
        self.reporter.info(f"{self.name}: booting {what} ({kernel.rsplit('/', 1)[-1]}): outlet off, then on")
        self.power.off()
        self.power.on()
        self._wait_up(ex, time.monotonic() + self.config.boot_wait_s, what)

    def _os_command(self, words: list[str]) -> None:
        """Ask the board's OS (over ssh) to power off or reboot; the link may drop as it does."""
        board = self.parts.board
        if board is None:
            raise BmmError("has no ssh address in the inventory; its OS cannot be asked to stop", node=self.name)
        try:
            with board.session(connect_timeout=10.0) as session:
                session.run(words, timeout=30, check=False)
        except BmmError as exc:
            if self._answers():
                raise BmmError(f"its OS did not take {words[0]} ({exc.reason})", node=self.name) from None

    # ---------------------------------------------------------------- bookkeeping
    def _root(self, vm_id: int) -> dict:
        meta = self.footprint.load(vm_id)
        if not meta.get("root") and not meta.get("staged"):
            raise Refused(f"has no root filesystem of VM {vm_id} (no image was cloned for it here)", node=self.name)
        return meta

    def _kernel(self, meta: dict) -> str:
        """The kernel the instance boots: its image's own, else the node's configured one."""
        if meta.get("kernel"):
            return meta["kernel"]
        return self.boot.kernel if self.nfsroot else self.boot.stage2

    def used_disk_mb(self, record) -> int:
        if record.vm_id is None:
            return 0
        return int(self.footprint.load(record.vm_id).get("bytes", 0)) // 2**20

    # ---------------------------------------------------------------- VMM
    def deploy(self, call: VmmCall, step: Step) -> str:
        vm = call.vm_id
        meta = self._root(vm)
        if self.nfsroot and not self.node.ip:
            raise Refused("has no ip in the inventory: its NFS export is restricted to the board's address",
                          node=self.name)
        step.go(DEPLOYING, reason=f"deploy VM {vm}")
        with self.parts.proxy.executor() as ex:
            if self.nfsroot:
                self.boot.exports().add(ex, self.boot.board, self.boot.root_dir, self.node.ip)
                self.footprint.update(vm, exported=True)
            else:
                self._stage1_if_needed(ex, vm, meta)
            self._boot(ex, self._kernel(meta), f"VM {vm}")
        step.go(ACTIVE, reason=f"VM {vm} running")
        return self.deploy_id(vm)

    def _stage1_if_needed(self, ex, vm: int, meta: dict) -> None:
        """Two-stage boot, stage 1: boot the tmpfs kernel, then (only what is not there yet)
        upload the root filesystem and unpack it onto the disk, and write the context."""
        unpacked = meta.get("unpacked") == meta.get("staged_digest")
        context_done = meta.get("context_applied") == meta.get("context_digest")
        if unpacked and context_done:
            self.reporter.info(f"{self.boot.device} of {self.name} holds VM {vm}'s root already; no upload")
            return
        boot = self.boot
        self._boot(ex, boot.stage1, "stage 1 (tmpfs root)")
        dev, mnt = boot.device, BOARD_MNT
        actions: list[list[str]] = []
        if not unpacked:
            self.footprint.update(vm, sda1="dirty", unpacked=None)
            staged = f"{BOARD_TMP}/bmm-rootfs.tar.gz"
            size = int(meta.get("staged_bytes", 0))
            self.reporter.info(f"uploading VM {vm}'s root filesystem ({size // 2**20} MiB compressed) to "
                               f"{self.name} and unpacking it onto {dev}")
            actions += [tilemonitor.upload(meta["staged"], staged), tilemonitor.run(*boot.mkfs, dev),
                        tilemonitor.run("mkdir", "-p", mnt), tilemonitor.run("mount", dev, mnt),
                        tilemonitor.run("tar", "-x", "-z", "-f", staged, "-C", mnt),
                        tilemonitor.run("rm", "-f", staged)]
        else:
            actions += [tilemonitor.run("mkdir", "-p", mnt), tilemonitor.run("mount", dev, mnt)]
        if meta.get("context"):
            staged_ctx = f"{BOARD_TMP}/bmm-context.tar"
            actions += [tilemonitor.upload(meta["context"], staged_ctx),
                        tilemonitor.run("tar", "-x", "-f", staged_ctx, "-C", mnt),
                        tilemonitor.run("rm", "-f", staged_ctx)]
        actions += [tilemonitor.run("sync"), tilemonitor.run("umount", mnt)]
        self._monitor(ex, *actions, timeout=COPY_TIMEOUT)
        self.footprint.update(vm, unpacked=meta.get("staged_digest"), context_applied=meta.get("context_digest"))

    def shutdown(self, call: VmmCall, step: Step) -> None:
        vm = call.vm_id
        step.go(STOPPING, reason=f"shutdown VM {vm}")
        if self._power_status() != PowerState.OFF:
            self._os_command(["poweroff"])
            if not self._wait_down("poweroff"):
                raise BmmError(f"VM {vm} still answers {DOWN_WAIT_S:g} s after poweroff; the outlet stays on "
                               "(poweroff --hard cuts it)", node=self.name)
            self.power.off()
        step.go(OFF, reason=f"VM {vm} powered off")

    def cancel(self, call: VmmCall, step: Step) -> None:
        vm = call.vm_id
        step.go(STOPPING, reason=f"cancel VM {vm}")
        self.power.off()
        step.go(OFF, reason=f"VM {vm} powered off (outlet off)")

    def reboot(self, call: VmmCall, step: Step) -> None:
        vm = call.vm_id
        self._root(vm)
        step.go(REBOOTING, reason=f"reboot VM {vm}")
        self._os_command(["reboot"])
        if not self._wait_down("reboot"):
            raise BmmError(f"VM {vm} did not go down within {DOWN_WAIT_S:g} s of reboot", node=self.name)
        self._wait_up_only(f"VM {vm}")
        step.go(ACTIVE, reason=f"VM {vm} running again")

    def reset(self, call: VmmCall, step: Step) -> None:
        vm = call.vm_id
        self._root(vm)
        step.go(REBOOTING, reason=f"reset VM {vm}")
        self.power.reset()
        self._wait_up_only(f"VM {vm}")
        step.go(ACTIVE, reason=f"VM {vm} running again")

    def _wait_up_only(self, what: str) -> None:
        with self.parts.proxy.executor() as ex:
            self._wait_up(ex, time.monotonic() + self.config.boot_wait_s, what)

    # ---------------------------------------------------------------- what runs there
    def _power_status(self) -> str:
        try:
            return self.power.status()
        except BmmError as exc:
            log.info("node %s: outlet state unknown: %s", self.name, exc.reason)
            return PowerState.UNKNOWN

    def instance_state(self, record, *, act: bool = False) -> InstanceState | None:
        """The outlet, then whether the board answers. RUNNING only while the outlet is on and
        the board's sshd answers; outlet off is POWEROFF (with act, an instance powered off
        outside OpenNebula moves the record active -> off, so a resume works)."""
        if record.vm_id is None or record.state not in (ACTIVE, OFF, ERROR):
            return None
        if record.state == OFF:
            return InstanceState.POWEROFF
        power = self._power_status()
        if power == PowerState.OFF:
            if act and record.state == ACTIVE:
                self.store.transition_if(self.name, state=ACTIVE, vm_id=record.vm_id, to=OFF, action="monitor",
                                         reason=f"VM {record.vm_id} powered off outside OpenNebula (outlet off)")
            return InstanceState.POWEROFF
        if record.state == ACTIVE and power == PowerState.ON and self._answers():
            return InstanceState.RUNNING
        return None

    def after_failure(self, step: Step, exc: BaseException):
        reason = f"{step.name} of VM {step.vm_id} failed: {describe(exc)}"
        if step.action in ("tm_clone", "tm_ln"):
            left = {k for k in ("root", "staged", "kernel") if self.footprint.load(step.vm_id).get(k)}
            if not left and step.start.state == AVAILABLE:
                return (CLEANING, AVAILABLE), reason + "; nothing of it is left on the proxy"
            return (ERROR,), reason
        if step.action in ("shutdown", "reboot") and step.start.state == ACTIVE and self._answers():
            return (ACTIVE,), reason + "; the instance still runs"
        if step.action == "deploy":
            try:
                self.power.off()
                reason += "; the outlet is off"
            except BmmError as off_exc:
                reason += f"; the outlet could not be turned off either ({off_exc.reason})"
        return (ERROR,), reason

    # ---------------------------------------------------------------- TM
    def tm_clone(self, call: TmCall, step: Step) -> None:
        vm = call.vm_id
        if call.disk_id != 0:
            raise NotSupported("a second disk on a netboot board", "a board boots one root filesystem "
                               "(disk 0) from its proxy")
        with root_stream(call.src_path, call.format, node=self.name) as stream:
            facts = stream.facts(self.node.arch)
            with self.parts.proxy.executor() as ex:
                self._check_kernels(ex, facts.kernel is not None)
                step.go(DEPLOYING, reason=f"clone the root filesystem of VM {vm}")
                self.footprint.save(vm, {"method": self.boot.method, "one_context": facts.one_context})
                try:
                    if facts.kernel is not None:
                        write_file(ex, self.boot.vm_kernel(vm), facts.kernel)
                        self.footprint.update(vm, kernel=self.boot.vm_kernel(vm))
                        self.reporter.info(f"the image has a kernel for {self.node.arch}; {self.name} boots it")
                    progress = Progress(self.reporter, "root filesystem", stream.total)
                    if self.nfsroot:
                        self._unpack_root(ex, vm, progress.counted(stream.source))
                    else:
                        self._stage_root(ex, vm, progress.counted(stream.source))
                    self.footprint.update(vm, bytes=progress.done)
                except BaseException:
                    self._undo_clone(ex, vm)
                    raise
        step.go(PROVISIONED, reason=f"root filesystem of VM {vm} is on the proxy")

    def _check_kernels(self, ex, image_has_one: bool) -> None:
        """Every kernel the boot will need is there (touches nothing)."""
        needed = [] if image_has_one else [self._kernel({})]
        if not self.nfsroot:
            needed.insert(0, self.boot.stage1)
        for kernel in needed:
            if not exists(ex, kernel):
                which = "stage 1 kernel" if kernel == getattr(self.boot, "stage1", None) else "kernel"
                hint = "" if which.startswith("stage") else f" and the image has none for {self.node.arch} in /boot"
                raise BmmError(f"no {which} to boot: {kernel} is missing on the proxy{hint}", node=self.name)

    def _unpack_root(self, ex, vm: int, source) -> None:
        root = self.boot.root_dir
        partial = f"{root}.vm{vm}.partial"
        self.reporter.info(f"unpacking the image into {root} on {self.parts.proxy.describe()}")
        ex.run(["rm", "-rf", "--one-file-system", "--", partial], timeout=TIMEOUT)
        ex.run(["mkdir", "-p", "-m", "0755", "--", self.boot.nfs_root], timeout=TIMEOUT)
        ex.run(["mkdir", "-m", "0755", "--", partial], timeout=TIMEOUT)
        ex.run_stream_in([*TAR_EXTRACT, partial], source, timeout=COPY_TIMEOUT)
        # recorded first: a replacement cut short leaves part of this VM's tree there, and the
        # VM's delete must then remove it (the clone's failure leaves the node in error)
        self.footprint.update(vm, root=root)
        if exists(ex, root):
            self._replace_contents(ex, root, partial)
        else:
            ex.run(["mv", "-T", "--", partial, root], timeout=TIMEOUT)

    def _replace_contents(self, ex, root: str, partial: str) -> None:
        """Make `root` hold what `partial` holds, keeping `root` itself (the same inode).

        root is an NFS export point. nfs-ganesha resolves an export's path once, and a reload
        that leaves the export's block unchanged keeps serving that inode: a root replaced by a
        rename would leave the board's export serving the deleted directory (empty, then
        NFS3ERR_STALE once ganesha's cache lets it go). Seen under the real oned: a board's
        first VM booted, its resume failed with a stale root."""
        self.reporter.info(f"replacing the contents of the earlier {root}")
        entries = ["-mindepth", "1", "-maxdepth", "1", "-exec"]
        ex.run(["find", root, *entries, "rm", "-rf", "--one-file-system", "--", "{}", "+"], timeout=COPY_TIMEOUT)
        ex.run(["find", partial, *entries, "mv", "-t", root, "--", "{}", "+"], timeout=TIMEOUT)
        ex.run(["chmod", f"--reference={partial}", "--", root], timeout=TIMEOUT)
        ex.run(["chown", f"--reference={partial}", "--", root], timeout=TIMEOUT)
        ex.run(["rmdir", "--", partial], timeout=TIMEOUT)

    def _stage_root(self, ex, vm: int, source) -> None:
        staged = self.boot.staged_root(vm)
        partial = f"{staged}.partial"
        self.reporter.info(f"staging the image as {staged} on {self.parts.proxy.describe()}")
        ex.run(["mkdir", "-p", "-m", "0700", "--", self.boot.stage_dir], timeout=TIMEOUT)
        digest = hashlib.sha256()
        compressed = [0]
        packed = gzip_source(source)

        def counted():
            chunk = packed()
            if chunk:
                digest.update(chunk)
                compressed[0] += len(chunk)
            return chunk

        ex.run_stream_in(["dd", f"of={partial}", "bs=1M", "status=none", "conv=fsync"], counted, timeout=COPY_TIMEOUT)
        ex.run(["chmod", "0600", "--", partial], timeout=TIMEOUT)
        ex.run(["mv", "-T", "--", partial, staged], timeout=TIMEOUT)
        self.footprint.update(vm, staged=staged, staged_digest=digest.hexdigest(), staged_bytes=compressed[0])

    def _undo_clone(self, ex, vm: int) -> None:
        """After a failed clone: remove what this clone made (best effort; the record says what)."""
        boot = self.boot
        paths = [boot.vm_kernel(vm)]
        paths += [f"{boot.root_dir}.vm{vm}.partial"] if self.nfsroot else [f"{boot.staged_root(vm)}.partial",
                                                                           boot.staged_root(vm)]
        try:
            ex.run(["rm", "-rf", "--one-file-system", "--", *paths], timeout=COPY_TIMEOUT, check=False)
            self.footprint.update(vm, kernel=None, staged=None)
        except BaseException as exc:  # noqa: BLE001 - the clone's own error is what gets reported
            log.warning("node %s: removing what the failed clone of VM %s made failed: %s", self.name, vm, exc)

    def tm_context(self, call: TmCall, step: Step) -> None:
        vm = call.vm_id
        meta = self._root(vm)
        if step.record.state == ACTIVE:
            if self._power_status() != PowerState.OFF:
                raise Refused(f"VM {vm} is running; its context can only change while it is powered off",
                              node=self.name)
            step.go(OFF, reason=f"VM {vm} powered off outside OpenNebula (seen at resume)")
        files = overlay(call.context, call.context_files, macs=self.node.macs,
                        one_context=bool(meta.get("one_context")), node=self.name)
        where = "/context (one-context reads it there)" if meta.get("one_context") else \
            ", ".join("/" + p for p in files.paths()) or "nothing (the CONTEXT asks for nothing bmm writes)"
        step.go(DEPLOYING, reason=f"context of VM {vm}")
        data = files.tar()
        with self.parts.proxy.executor() as ex:
            if self.nfsroot:
                root = meta["root"]
                if meta.get("one_context"):
                    ex.run(["rm", "-rf", "--one-file-system", "--", f"{root}/context"], timeout=TIMEOUT)
                ex.run([*OVERLAY_EXTRACT, root], input=data, timeout=TIMEOUT)
            else:
                staged = self.boot.staged_context(vm)
                write_file(ex, staged, data, mode="0600")
                self.footprint.update(vm, context=staged, context_digest=hashlib.sha256(data).hexdigest())
        self.reporter.info(f"context of VM {vm}: {where}")
        step.go(PROVISIONED if step.start.state in (PROVISIONED, ERROR) else OFF, reason=f"context of VM {vm} written")

    def tm_delete(self, call: TmCall, step: Step) -> None:
        vm = call.vm_id
        if call.disk_id is not None:
            self.reporter.info(f"disk {call.disk_id} of VM {vm}: a board's root goes with the VM's directory")
            return
        meta = self.footprint.load(vm)
        step.go(DELETING, reason=f"delete VM {vm}")
        self.power.off()
        with self.parts.proxy.executor() as ex:
            if meta.get("exported"):
                self.boot.exports().remove(ex, self.boot.board)
            if meta.get("root"):
                self.reporter.info(f"removing {meta['root']}")
                ex.run(["rm", "-rf", "--one-file-system", "--", meta["root"]], timeout=COPY_TIMEOUT)
            if meta.get("sda1") == "dirty":
                self._wipe_disk(ex, vm)
            staged = [p for p in (meta.get("staged"), meta.get("context")) if p]
            if staged:
                ex.run(["rm", "-f", "--", *staged], timeout=TIMEOUT)
            self.boot.forget(ex, vm)
        self.footprint.forget(vm)
        step.go(CLEANING, AVAILABLE, reason=f"VM {vm} deleted; its root is gone from the proxy"
                + (" and the board's disk is zeroed" if meta.get("sda1") == "dirty" else ""))

    def _wipe_disk(self, ex, vm: int) -> None:
        """Zero the board's disk through stage 1, then cut the power."""
        dev = self.boot.device
        self._boot(ex, self.boot.stage1, f"stage 1 to wipe {dev}")
        size = self._monitor(ex, tilemonitor.run("blockdev", "--getsize64", dev)).stdout.split()
        if not size or not size[-1].isdigit():
            raise BmmError(f"stage 1 could not tell the size of {dev}", node=self.name)
        total = int(size[-1])
        self.reporter.info(f"zeroing {dev} of {self.name} ({total // 2**20} MiB)")
        block = 2**20 if total % 2**20 == 0 else 512
        self._monitor(ex, tilemonitor.run("dd", "if=/dev/zero", f"of={dev}", f"bs={block}", f"count={total // block}"),
                      tilemonitor.run("sync"), timeout=COPY_TIMEOUT)
        self.power.off()
        self.footprint.update(vm, sda1="zeroed")

    def tm_mv(self, call: TmCall) -> None:
        raise NotSupported("undeploy and cold migration (mv)", "a board's root lives on its proxy; "
                           "use poweroff or terminate")
