"""`bmm lab demo`: bmm's main job on the lab, an OpenNebula instance on bare metal through bmm's
installed remotes, shown in timed steps.

Per machine (a server; a netboot board too with --board or a lab with boards): register the host,
create a VM (with the image copy's progress, read from bmm's log as the remote writes it),
RUNNING, ssh into the tenant with the key from CONTEXT, poweroff and resume (a file written
before the poweroff is still there), terminate, and the disk shown wiped (a server: the bytes
of its LV on the node's disk read as zeros; a board: its NFS root is gone).

With an OpenNebula (`--one URL` or $ONE_XMLRPC): through pyone (bmm.opennebula.client and
register); oned itself calls the remotes, which must read the lab's inventory. Without one,
bmm_lab.oneemu calls the remotes exactly as oned's exec drivers do, in oned's order, and the
demo says that it is that emulation.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shlex
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from bmm_lab import LabError, boardpaths, boardroot, images, rack
from bmm_lab.oneemu import DriverFailure, OpenNebula, Vm
from bmm_lab.testing import LabHandle
from bmm.runner import run as run_argv

SETTINGS = "ssh_wait_s = 90\nboot_wait_s = 90\npower_timeout_s = 30"
PROGRESS = re.compile(r"INFO: (\d+) (.*?: (\d+)% \(.*\))$")
WAIT_S = 300


class Demo:
    def __init__(self, say):
        self.say = say
        self.t0 = time.monotonic()
        self.n = 0
        self.t_step = self.t0

    def step(self, title: str) -> None:
        self.n += 1
        self.t_step = time.monotonic()
        self.say("")
        self.say(f"== step {self.n}: {title}")

    def line(self, msg: str) -> None:
        self.say(f"   [{time.monotonic() - self.t0:6.1f}s] {msg}")

    def cmd(self, argv: list[str], out: str = "") -> None:
        self.line("$ " + shlex.join(argv))
        for text in out.strip().splitlines()[:6]:
            self.say(f"             {text}")


@dataclass
class Machine:
    """One lab machine the demo runs an instance on, and how to tell what became of it."""
    name: str
    kind: str                   # localdisk | netboot
    image: Path
    hostname: str               # the tenant's, from CONTEXT


class ProgressTail:
    """Follow bmm's log while a remote runs and show the image copy's progress lines of one VM,
    at most one per 10 %. The remotes hold their INFO lines for OpenNebula until they end; their
    log file has them as they happen."""

    def __init__(self, demo: Demo, log: Path, vm_id: int):
        self.demo, self.log, self.vm_id = demo, log, vm_id
        self.offset = log.stat().st_size if log.exists() else 0
        self.stop = threading.Event()
        self.shown = -10

    def poll(self) -> None:
        try:
            with self.log.open("rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except OSError:
            return
        end = data.rfind(b"\n") + 1
        self.offset += end
        for raw in data[:end].decode(errors="replace").splitlines():
            m = PROGRESS.search(raw)
            if m and int(m.group(1)) == self.vm_id and (int(m.group(3)) >= self.shown + 10 or m.group(3) == "100"):
                if int(m.group(3)) > self.shown:
                    self.shown = int(m.group(3))
                    self.demo.line(f"   copy {m.group(2)}")

    @contextlib.contextmanager
    def following(self):
        def loop():
            while not self.stop.wait(0.3):
                self.poll()
        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        try:
            yield
        finally:
            self.stop.set()
            thread.join(5)
            self.poll()


# ------------------------------------------------------------------------------ entry point
def run(lab_dir=None, *, servers: int = 1, boards: int = 0, board: bool = False, keep: bool = False,
        one_url: str | None = None, one_auth: str | None = None, say=print) -> None:
    raw_say = say

    def say(msg: str) -> None:
        try:
            raw_say(msg)
        except Exception:  # noqa: BLE001 - output trouble must never skip the teardown
            pass

    demo = Demo(say)
    one_url = one_url or os.environ.get("ONE_XMLRPC") or None
    boards = max(boards, 1) if board else boards
    if servers < 1 and boards < 1:
        raise LabError("the demo needs a server or a board (--servers 1 or --board)")
    say("bmm lab demo: an OpenNebula instance on bare metal, through bmm's installed remotes, on a")
    say("simulated rack of real peers (ipmi_sim + ipmitool, OpenSSH, LVM, grub-editenv, a telnet PDU,")
    say("TFTP, NFS). The firmware and the guest's one-context are emulated (bmm lab --help).")
    if one_url:
        say(f"OpenNebula: oned at {one_url}, driven through pyone; oned calls bmm's remotes.")
    else:
        say("OpenNebula: none given (--one URL or ONE_XMLRPC), so this is the EMULATION of oned's exec")
        say("drivers (bmm_lab.oneemu): it calls bmm's installed remotes as oned would, in oned's order.")
    made = lab_dir is None
    if made:
        lab_dir = tempfile.mkdtemp(prefix="bmmlab-demo-", dir="/var/tmp")
    lab_dir = Path(lab_dir).resolve()
    if one_url:
        _check_oned_reads(lab_dir)
    demo.step(f"bring the lab up in {lab_dir} ({servers} server(s), {boards} board(s))")
    h = LabHandle.up(lab_dir, servers=servers, boards=boards, say=lambda m: say("   " + m))
    demo.line(f"inventory {h.inventory}")
    try:
        work = h.dir / "demo"
        work.mkdir(exist_ok=True)
        key = work / "tenant_key"
        run_argv(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "tenant@bmm-demo", "-f", str(key)], timeout=30)
        machines = _machines(demo, h, work)
        if one_url:
            _with_oned(demo, h, machines, key, one_url, one_auth)
        else:
            _with_emulation(demo, h, machines, key)
        demo.step("done")
        demo.line(f"the main job ran on {', '.join(m.name for m in machines)} in {time.monotonic() - demo.t0:.0f} s")
    except BaseException:
        if not keep:
            _show_consoles(demo, h)
        raise
    finally:
        if keep:
            say(f"\nthe lab stays up: bmm lab status --dir {h.dir}; bmm lab down --dir {h.dir} --purge")
        else:
            demo.step("tear down")
            rep = rack.down(h.dir, say=lambda m: say("   " + m), purge=True)
            demo.line(f"removed {rep['netns']} netns, {rep['loops']} loop devices; nothing of lab {rep['id']} remains")


def _machines(demo: Demo, h: LabHandle, work: Path) -> list[Machine]:
    """The first server and the first board, each with a tenant image that has no ssh key of its
    own: the way in is the key CONTEXT carries."""
    out = []
    if h.servers:
        img = images.build_image(work / "tenant.img", os_id="tenantos", name="Tenant OS", version="1",
                                 layout="fs", size="48M")
        demo.line(f"a tenant OS image for servers: {img} (busybox, ext4, 48 MiB)")
        out.append(Machine(h.servers[0], "localdisk", Path(img), "bm-tenant"))
    if h.boards:
        root = work / "board-root"
        boardroot.populate_root(root, hostname="unset", label="Tenant Board OS", marker="tenant board")
        (root / "root/.ssh/authorized_keys").unlink(missing_ok=True)
        (root / "etc/hostname").unlink(missing_ok=True)
        (root / "etc/os-release").write_text('ID=tenantboard\nPRETTY_NAME="Tenant Board OS"\n')
        img = work / "board-root.tar.gz"
        run_argv(["tar", "--create", "--gzip", "--file", str(img), "--numeric-owner", "-C", str(root), "."],
                 timeout=120)
        demo.line(f"a tenant root for boards: {img} (busybox, tar.gz)")
        out.append(Machine(h.boards[0], "netboot", img, "bm-board-tenant"))
    return out


# ------------------------------------------------------------------------------ the tenant's view
def tenant_ssh(h: LabHandle, name: str, key: Path, command: str, timeout: float = 30) -> str:
    """ssh as the tenant: the key from CONTEXT, whatever host key the tenant OS has."""
    n = h.node(name)
    argv = ["ssh", "-i", str(key), "-p", str(n["ssh"]["port"]), "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
            "-o", "ConnectTimeout=10", "-o", "UserKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=no",
            "-o", "LogLevel=ERROR", f"root@{n['ssh']['host']}", "--", command]
    return run_argv(argv, timeout=timeout, node=name).stdout


def _wait_tenant(h: LabHandle, name: str, key: Path, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return tenant_ssh(h, name, key, "hostname").strip()
        except Exception:  # noqa: BLE001 - not answering yet
            if time.monotonic() > deadline:
                raise LabError(f"the tenant does not answer ssh with the CONTEXT key after {timeout:g} s", node=name)
            time.sleep(0.5)


def _tenant_checks(demo: Demo, h: LabHandle, m: Machine, key: Path, marker: str) -> None:
    host = _wait_tenant(h, m.name, key)
    pretty = tenant_ssh(h, m.name, key, ". /etc/os-release; echo $PRETTY_NAME").strip()
    n = h.node(m.name)
    demo.line(f"$ ssh -i {key.name} root@{n['ssh']['host']} hostname   -> {host}   ({pretty})")
    if host != m.hostname:
        raise LabError(f"the tenant calls itself {host!r}, CONTEXT said {m.hostname!r}", node=m.name)
    tenant_ssh(h, m.name, key, f"echo {marker} > /root/demo-marker && sync")
    demo.line(f"the tenant wrote /root/demo-marker ({marker}) onto its disk")


def _kept(demo: Demo, h: LabHandle, m: Machine, key: Path, marker: str) -> None:
    host = _wait_tenant(h, m.name, key)
    found = tenant_ssh(h, m.name, key, "cat /root/demo-marker").strip()
    if found != marker:
        raise LabError("the tenant's file did not survive poweroff and resume", node=m.name)
    demo.line(f"back in the tenant ({host}): /root/demo-marker still reads {found}: the disk was kept")


# ------------------------------------------------------------------------------ the disk's fate
def _lv_extents(h: LabHandle, name: str, prefix: str) -> list[tuple[str, int, int]]:
    """(lv, byte offset, length) on the server's disk file of every LV named prefix*."""
    n = h.lab_node(name)
    env = {**os.environ, **h.lvm_env(name)}

    def lvm(*args):
        return subprocess.run(["lvm", *args], capture_output=True, text=True, env=env, timeout=60, check=True).stdout

    pe_start = int(lvm("pvs", "--noheadings", "--units", "b", "--nosuffix", "-o", "pe_start", n["loop"]).split()[0])
    extent = int(lvm("vgs", "--noheadings", "--units", "b", "--nosuffix", "-o", "vg_extent_size", n["vg"]).split()[0])
    out = []
    for line in lvm("lvs", "--noheadings", "-o", "lv_name,seg_pe_ranges", n["vg"]).splitlines():
        words = line.split()
        if len(words) < 2 or not words[0].startswith(prefix):
            continue
        for rng in words[1:]:
            first, _, last = rng.rpartition(":")[2].partition("-")
            out.append((words[0], pe_start + int(first) * extent, (int(last) - int(first) + 1) * extent))
    return out


def _zeros(path: str, extents: list[tuple[str, int, int]]) -> tuple[int, bool]:
    """(bytes read, all zero) over the extents of the file."""
    total, clean = 0, True
    with open(path, "rb") as fh:
        for _, offset, length in extents:
            fh.seek(offset)
            left = length
            while left:
                chunk = fh.read(min(left, 4 << 20))
                if not chunk:
                    break
                total += len(chunk)
                left -= len(chunk)
                clean = clean and chunk.count(0) == len(chunk)
    return total, clean


def _before_terminate(h: LabHandle, m: Machine, vm_id: int):
    return _lv_extents(h, m.name, f"vm{vm_id}-") if m.kind == "localdisk" else None


def _show_wiped(demo: Demo, h: LabHandle, m: Machine, vm_id: int, extents) -> None:
    if m.kind == "localdisk":
        left = [lv for lv, _, _ in _lv_extents(h, m.name, f"vm{vm_id}-")]
        if left:
            raise LabError(f"VM {vm_id}'s LVs are still there: {', '.join(left)}", node=m.name)
        read, clean = _zeros(h.lab_node(m.name)["disk"], extents)
        if not clean:
            raise LabError(f"VM {vm_id}'s old extents on the disk are not all zero", node=m.name)
        lvs = ", ".join(sorted({lv for lv, _, _ in extents}))
        demo.line(f"no LV of VM {vm_id} is left in {h.node(m.name)['vg']} (it had {lvs}); the "
                  f"{read // 2**20} MiB of {m.name}'s disk they held now read as zeros")
    else:
        root = boardpaths.nfs_root(h.dir) / f"fs_{m.name}"
        if root.exists():
            raise LabError(f"the NFS root {root} is still there", node=m.name)
        demo.line(f"{m.name}'s NFS root {root} is gone: the tenant's files with it")


def _record(config: Path, name: str):
    from bmm.config import load_config
    from bmm.state import open_store
    return open_store(config=load_config(config)).get(name)


# ------------------------------------------------------------------------------ without oned
def _with_emulation(demo: Demo, h: LabHandle, machines: list[Machine], key: Path) -> None:
    one = OpenNebula(h.dir / "one", h.inventory, settings=SETTINGS)
    demo.step("the front-end: bmm's remotes installed as `install.sh --remotes` does")
    demo.line(f"remotes DIR/one/remotes/{{vmm/bmm,tm/bmm,im/bmm.d}} (DIR = {h.dir}); their bmm.toml reads "
              "the lab's inventory DIR/nodes.toml")
    monitor_port = _closed_port()
    try:
        for vm_id, m in enumerate(machines):
            _emulated_job(demo, h, one, m, vm_id, key, monitor_port)
    finally:
        for host_id, m in enumerate(machines):
            one.stop_monitor(host_id, m.name, monitor_port)
        if not one.wait_monitor_gone():
            demo.line("bmm's monitor daemon has not left yet; the lab's tear-down ends it")


def _closed_port() -> int:
    """A UDP port nobody listens on: without oned there is no monitord to take the pushes."""
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _call_watch(demo: Demo, lab_dir: Path, tail: "ProgressTail"):
    """What the demo shows of each driver call while it runs: the argv (the lab's directory
    spelt DIR), the image copy's progress during TM clone, and how the call ended."""
    @contextlib.contextmanager
    def watch(call, proc):
        words = [Path(a).name if i == 0 else a.replace(str(lab_dir), "DIR") for i, a in enumerate(proc.args)]
        demo.line(f"{call:12} {shlex.join(words)}")
        t0 = time.monotonic()
        with tail.following() if call == "TM clone" else contextlib.nullcontext():
            yield
        verdict = "ok" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})"
        demo.line(f"{'':12} {verdict} in {time.monotonic() - t0:.1f} s")
    return watch


def _emulated_job(demo: Demo, h: LabHandle, one: OpenNebula, m: Machine, vm_id: int, key: Path, port: int) -> None:
    what = "server (local disk: IPMI, LVM, GRUB)" if m.kind == "localdisk" else "netboot board (PDU, TFTP, NFS root)"
    demo.step(f"register {m.name}, a {what}: `onehost create {m.name} --im bmm --vm bmm`")
    ex = one.start_monitor(vm_id, m.name, port)
    if ex.returncode != 0:
        raise LabError(f"START_MONITOR failed: {ex.stdout.strip() or ex.stderr.strip()}", node=m.name)
    facts = _system_host(ex.stdout)
    demo.line(f"IM START_MONITOR (monitord-client_control.sh bmm {vm_id} {m.name}) answers SYSTEM_HOST:")
    demo.line("   " + ", ".join(f"{k}={facts[k]}" for k in ("HYPERVISOR", "ARCH", "MODELNAME", "TOTALCPU",
                                                            "TOTALMEMORY") if k in facts))
    demo.line(f"host {m.name} is MONITORED; bmm's monitor daemon now reports its instances")

    vm = Vm(one, vm_id, m.name, m.image, name=f"bm-demo-{vm_id}",
            context={"NETWORK": "YES", "SET_HOSTNAME": m.hostname,
                     "SSH_PUBLIC_KEY": key.with_suffix(".pub").read_text().strip()},
            watch=_call_watch(demo, h.dir, ProgressTail(demo, one.log_path, vm_id)))
    marker = f"demo-{secrets.token_hex(4)}"
    try:
        demo.step(f"`onevm create`: VM {vm_id} from {m.image.name}, scheduled to {m.name} "
                  "(PROLOG: TM clone; BOOT: TM context + VMM deploy)")
        vm.create()
        demo.line(f"VM {vm_id} is {vm.state} (deploy id {vm.deploy_id}); bmm's node record: "
                  f"{_record(one.config, m.name).state}")

        demo.step("ssh into the tenant with the key CONTEXT carried (SSH_PUBLIC_KEY, SET_HOSTNAME)")
        _tenant_checks(demo, h, m, key, marker)

        demo.step("`onevm poweroff` (VMM shutdown), then `onevm resume` (TM context + VMM deploy again)")
        vm.poweroff()
        demo.line(f"VM {vm_id} is {vm.state}; {m.name}'s power: {'on' if h.daemon_status(m.name)['power'] else 'off'}")
        vm.resume()
        demo.line(f"VM {vm_id} is {vm.state}")
        _kept(demo, h, m, key, marker)

        extents = _before_terminate(h, m, vm_id)
        demo.step("`onevm terminate` (VMM shutdown, then EPILOG: TM delete of the disk and of the VM's directory)")
        vm.terminate()
        demo.line(f"VM {vm_id} is {vm.state}; bmm's node record: {_record(one.config, m.name).state}")

        demo.step(f"the disk of VM {vm_id} was wiped")
        _show_wiped(demo, h, m, vm_id, extents)
    except DriverFailure as exc:
        demo.line(f"OpenNebula would show VM {vm_id} {exc.state}, ERROR: {exc.error}")
        for line in exc.step.execution.stderr.strip().splitlines()[-5:]:
            demo.say(f"             {line}")
        raise


def _show_consoles(demo: Demo, h: LabHandle, lines: int = 8) -> None:
    """The end of each board's console, before the teardown removes it: where a board says why
    it did not boot (the errors ask the operator to read it)."""
    for name in h.boards:
        tail = h.console(name).splitlines()[-lines:]
        if not tail:
            continue
        demo.line(f"console of {name}, its last {len(tail)} line(s):")
        for text in tail:
            demo.say(f"             {text}")


def _system_host(document: str) -> dict[str, str]:
    import base64

    from lxml import etree

    from bmm.opennebula import template
    doc = etree.fromstring(" ".join(document.split()).encode())
    return {k: v for k, v in template.parse(base64.b64decode(doc.findtext("SYSTEM_HOST")).decode())
            if isinstance(v, str)}


# ------------------------------------------------------------------------------ with oned
def _check_oned_reads(lab_dir: Path) -> None:
    """oned runs bmm's remotes, which read <remotes>/etc/bmm/bmm.toml: its inventory must be the
    lab's, or oned's bmm would not know the lab's machines."""
    from bmm.config import load_config
    config = load_config()
    want = lab_dir / "nodes.toml"
    if Path(config.inventory).resolve() != want:
        where = config.source or "the front-end's <remotes>/etc/bmm/bmm.toml"
        raise LabError(f"oned's bmm reads the inventory {config.inventory} (from {where}), not the lab's. "
                       f"Set `inventory = \"{want}\"` there, then run `bmm lab demo --dir {lab_dir} --one ...` again")


def _with_oned(demo: Demo, h: LabHandle, machines: list[Machine], key: Path, url: str, auth: str | None) -> None:
    import pyone

    from bmm.config import load_config
    from bmm.inventory import load_inventory
    from bmm.opennebula import register
    from bmm.opennebula.client import connect

    one = connect(url, auth=auth)
    config = load_config()
    demo.step(f"`bmm one register`: what the lab's inventory needs in oned at {url}")
    changes = register.plan(one, load_inventory(h.inventory))
    register.apply(changes, say=demo.line)
    if any(c.action == "conflict" for c in changes):
        raise LabError("oned holds objects that conflict with bmm's (see above); resolve them first")
    made_hosts = [c.name for c in changes if c.kind == "host" and c.action == "create"]
    hosts = {host.NAME: host.ID for host in one.hostpool.info().HOST}
    ds = {d.NAME: d.ID for d in one.datastorepool.info().DATASTORE}
    templates = {t.NAME: t.ID for t in one.templatepool.info(-2, -1, -1).VMTEMPLATE}
    inventory = {n.name: n for n in load_inventory(h.inventory)}
    images_made = []
    try:
        for m in machines:
            _wait(demo, lambda m=m: pyone.HOST_STATES(one.host.info(hosts[m.name]).STATE).name, {"MONITORED"},
                  f"host {m.name}", fail={"ERROR"})
            # a board's root filesystem tarball must stay compressed (register.ROOTFS_DS)
            store = register.ROOTFS_DS if inventory[m.name].kind == "netboot" else register.IMAGE_DS
            # oned refuses an image ("Not enough space in datastore") for a datastore whose
            # free space it has not measured yet: a datastore just made by register
            _wait(demo, lambda store=store: _datastore_state(one, ds[store]), {"MONITORED"}, f"datastore {store}")
            try:
                image_id = one.image.allocate(f'NAME = "bmm-demo-{h.id}-{m.name}"\nPATH = "{m.image}"\nTYPE = "OS"\n',
                                              ds[store])
            except pyone.OneActionException as exc:
                raise LabError(f"oned refused the demo's image in datastore {store}: {exc}") from None
            images_made.append(image_id)
            _wait(demo, lambda: pyone.IMAGE_STATES(one.image.info(image_id).STATE).name, {"READY"},
                  f"image {image_id}", fail={"ERROR"})
            node = inventory[m.name]
            tid = templates.get(register.template_name(node.model or node.arch))
            if tid is None:
                templates = {t.NAME: t.ID for t in one.templatepool.info(-2, -1, -1).VMTEMPLATE}
                tid = templates[register.template_name(node.model or node.arch)]
            _oned_job(demo, h, one, config, m, key, tid, image_id, hosts[m.name])
    finally:
        for image_id in images_made:
            with contextlib.suppress(pyone.OneException):
                one.image.delete(image_id)
        for name in made_hosts:
            with contextlib.suppress(pyone.OneException, KeyError):
                one.host.delete(hosts[name])
                demo.line(f"host {name} deleted from oned (the lab goes away)")


def _vm_state(one, vm_id: int) -> str:
    import pyone
    vm = one.vm.info(vm_id)
    if vm.STATE == pyone.VM_STATE.ACTIVE:
        return pyone.LCM_STATE(vm.LCM_STATE).name
    return pyone.VM_STATE(vm.STATE).name


def _datastore_state(one, ds_id: int) -> str:
    d = one.datastore.info(ds_id)
    return "MONITORED" if int(d.TOTAL_MB) > 0 else "not monitored yet (its size is unknown)"


def _wait(demo: Demo, state, want: set[str], what: str, *, fail: set[str] = frozenset(), tail=None,
          timeout: float = WAIT_S) -> str:
    """Show every state `what` goes through until one in want; a failure state or the deadline
    raises with what was seen."""
    deadline = time.monotonic() + timeout
    seen = []
    with tail.following() if tail else contextlib.nullcontext():
        while True:
            now = state()
            if not seen or seen[-1] != now:
                seen.append(now)
                demo.line(f"{what}: {now}")
            if now in want:
                return now
            if now in fail or now.endswith("_FAILURE") or time.monotonic() > deadline:
                raise LabError(f"{what} is {now} (seen {' -> '.join(seen)}), waiting for {'/'.join(sorted(want))}")
            time.sleep(0.5)


def _oned_job(demo: Demo, h: LabHandle, one, config, m: Machine, key: Path, tid: int, image_id: int,
              host_id: int) -> None:
    from bmm.opennebula import template
    pub = key.with_suffix(".pub").read_text().strip()
    extra = (f'DISK = [ IMAGE_ID = "{image_id}" ]\n'
             + template.vector("CONTEXT", {"NETWORK": "YES", "SET_HOSTNAME": m.hostname, "SSH_PUBLIC_KEY": pub}) + "\n")
    demo.step(f"`onetemplate instantiate {tid}` on hold, `onevm deploy` to {m.name}")
    vm_id = one.template.instantiate(tid, f"bm-demo-{m.name}", True, extra, False)
    one.vm.deploy(vm_id, host_id, False, -1)
    tail = ProgressTail(demo, config.log_path, vm_id)
    state = lambda: _vm_state(one, vm_id)            # noqa: E731
    marker = f"demo-{secrets.token_hex(4)}"
    try:
        _wait(demo, state, {"RUNNING"}, f"VM {vm_id}", tail=tail)
        demo.step("ssh into the tenant with the key CONTEXT carried (SSH_PUBLIC_KEY, SET_HOSTNAME)")
        _tenant_checks(demo, h, m, key, marker)
        demo.step("`onevm poweroff`, then `onevm resume`")
        one.vm.action("poweroff", vm_id)
        _wait(demo, state, {"POWEROFF"}, f"VM {vm_id}")
        one.vm.action("resume", vm_id)
        _wait(demo, state, {"RUNNING"}, f"VM {vm_id}")
        _kept(demo, h, m, key, marker)
        extents = _before_terminate(h, m, vm_id)
        demo.step("`onevm terminate`")
        one.vm.action("terminate", vm_id)
        _wait(demo, state, {"DONE"}, f"VM {vm_id}")
        _wait(demo, lambda: _node_state(config, m.name), {"available"}, f"bmm's record of {m.name}", fail={"error"})
        demo.step(f"the disk of VM {vm_id} was wiped")
        _show_wiped(demo, h, m, vm_id, extents)
    except BaseException:
        import pyone
        with contextlib.suppress(pyone.OneException):
            if _vm_state(one, vm_id) != "DONE":
                one.vm.action("terminate-hard", vm_id)
        raise


def _node_state(config, name: str) -> str:
    from bmm.state import open_store
    return open_store(config=config).get(name).state
