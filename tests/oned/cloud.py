"""The operator's side of the tier: bmm's OpenNebula objects made through pyone, and waits on VM
and host states that, on timeout, say what OpenNebula and bmm were doing.

Objects follow README.md's set-up: `bmm one register` makes the cluster, bmm's system and
image datastores, one host per machine and one `bmm-<model>` template per model; the tier adds
what README leaves to the operator, a network with a front-end-only VN_MAD (dummy), and
instantiates those templates with a disk, a network and a CONTEXT (Template.extra).
"""

from __future__ import annotations

import contextlib
import re
import time
from dataclasses import dataclass
from pathlib import Path

import pyone

from bmm.opennebula.register import IMAGE_DS, SYSTEM_DS
from tests.oned.frontend import Frontend

POLL_S = 0.5
DEPLOY_TIMEOUT_S = 240
ACTION_TIMEOUT_S = 180
NOT_SUPPORTED = "not supported on bare metal"
# `onevm reboot` / `reboot --hard` are the exec driver's steps reboot / reset. oned 7.4 binds
# no handler to REBOOT replies (RESET's is bound to the reboot handler), so the driver's own
# step line in the VM log is the one trace of how a reboot ended.
RESTART_STEP = {"reboot": "reboot", "reboot-hard": "reset"}
STEP_ENDED = r"(Successfully|Failed to) execute virtualization driver operation: {step}\."
STEP_SUCCEEDED = "Successfully execute virtualization driver operation: {step}."
# README.md: a bmm template asks for the whole machine (as written inside a template)
SCHED_REQUIREMENTS = r'"BAREMETAL = \"YES\" & RUNNING_VMS = 0"'


def state_name(vm) -> str:
    """The LCM state while ACTIVE (RUNNING, PROLOG_FAILURE, ...), else the VM state (PENDING,
    POWEROFF, DONE, ...)."""
    if vm.STATE == pyone.VM_STATE.ACTIVE:
        return pyone.LCM_STATE(vm.LCM_STATE).name
    return pyone.VM_STATE(vm.STATE).name


def _user_attr(vm, key: str) -> str:
    value = (vm.USER_TEMPLATE or {}).get(key, "")
    return value if isinstance(value, str) else str(value)


def _vm_log(vm_id: int) -> str:
    """The VM log, relative to the var directory of a self-contained 7.4 install."""
    return f"vms/{vm_id}/vm.log"


def _flat(tmpl) -> dict:
    return {k: v if isinstance(v, str) else repr(v) for k, v in dict(tmpl or {}).items()}


class WaitTimeout(AssertionError):
    pass


@dataclass
class Ids:
    cluster: int
    system_ds: int
    image_ds: int
    network: int


@dataclass(frozen=True)
class Template:
    """A VM template and what each instantiate adds to it (README: "instantiate a bmm-<model>
    template with a disk and a network")."""
    id: int
    extra: str = ""


class Cloud:
    def __init__(self, fe: Frontend, bmm_config: Path):
        self.fe = fe
        self.bmm_config = bmm_config
        self.one = pyone.OneServer(fe.endpoint, session=fe.session)
        self.ids: Ids | None = None
        self.hosts: dict[str, int] = {}

    def clone(self) -> "Cloud":
        """The same cloud over its own XML-RPC connection, for another thread."""
        other = Cloud(self.fe, self.bmm_config)
        other.ids, other.hosts = self.ids, self.hosts
        return other

    # ---------------------------------------------------------------- infrastructure
    def adopt(self, *, cluster: str = "bare-metal", network_base: str = "10.250.0.10") -> Ids:
        """Once `bmm one register` has run: the ids of what it made, found by name as an operator
        would, and the network it leaves to the operator (in its cluster)."""
        clusters = {c.NAME: c.ID for c in self.one.clusterpool.info().CLUSTER}
        datastores = {d.NAME: d.ID for d in self.one.datastorepool.info().DATASTORE}
        self.hosts = {h.NAME: h.ID for h in self.one.hostpool.info().HOST}
        network = self.one.vn.allocate(
            f'NAME = "bm-net"\nVN_MAD = "dummy"\nBRIDGE = "br0"\nAR = [ TYPE = "IP4", IP = "{network_base}", SIZE = "64" ]\n',
            clusters[cluster])
        self.ids = Ids(clusters[cluster], datastores[SYSTEM_DS], datastores[IMAGE_DS], network)
        return self.ids

    def objects(self) -> dict[str, dict]:
        """What `bmm one register` makes or would change, kind -> {name: what defines it}:
        clusters, datastores and templates with their templates, hosts with their drivers and
        cluster (a host's template changes with every monitoring message)."""
        return {
            "cluster": {c.NAME: (c.ID,) for c in self.one.clusterpool.info().CLUSTER},
            "datastore": {d.NAME: (d.ID, d.CLUSTERS.ID, _flat(d.TEMPLATE)) for d in self.one.datastorepool.info().DATASTORE},
            "host": {h.NAME: (h.ID, h.IM_MAD, h.VM_MAD, h.CLUSTER_ID) for h in self.one.hostpool.info().HOST},
            "template": {t.NAME: (t.ID, _flat(t.TEMPLATE)) for t in self.one.templatepool.info(-2, -1, -1).VMTEMPLATE},
        }

    def template_named(self, name: str) -> int:
        found = [t.ID for t in self.one.templatepool.info(-2, -1, -1).VMTEMPLATE if t.NAME == name]
        assert len(found) == 1, f"templates named {name}: {found}"
        return found[0]

    def wait_hosts_monitored(self, names, timeout: float = 60) -> None:
        def check():
            states = {n: pyone.HOST_STATES(self.one.host.info(self.hosts[n]).STATE).name for n in names}
            return all(s == "MONITORED" for s in states.values()), states
        self.wait_for(check, timeout, "hosts MONITORED", lambda: self.fe.tail("monitor.log"))

    def host(self, name: str):
        return self.one.host.info(self.hosts[name])

    def set_host_enabled(self, name: str, enabled: bool) -> None:
        self.one.host.status(self.hosts[name], 0 if enabled else 1)

    # ---------------------------------------------------------------- images and templates
    def register_image(self, path: Path, name: str, *, image_type: str = "OS", timeout: float = 120,
                       datastore: str = IMAGE_DS) -> int:
        """`oneimage create --path <file under SAFE_DIRS /var/tmp> -d <datastore>`, then READY."""
        ds = {d.NAME: d.ID for d in self.one.datastorepool.info().DATASTORE}[datastore]
        iid = self.one.image.allocate(f'NAME = "{name}"\nPATH = "{path}"\nTYPE = "{image_type}"\n', ds)

        def check():
            image = self.one.image.info(iid)
            state = pyone.IMAGE_STATES(image.STATE).name
            if state == "ERROR":
                raise AssertionError(f"image {name} is in ERROR: {(image.TEMPLATE or {}).get('ERROR', '')}\n"
                                     f"oned.log:\n{self.fe.tail('oned.log')}")
            return state == "READY", state
        self.wait_for(check, timeout, f"image {name} READY", lambda: self.fe.tail("oned.log"))
        return iid

    def vm_template(self, image_id: int, ssh_public_key: str, *, memory_mb: int, vcpu: int) -> str:
        """A template that asks for the whole machine (README "A VM template asks for the whole
        machine")."""
        return (f'CPU = "1"\nVCPU = "{vcpu}"\nMEMORY = "{memory_mb}"\n'
                f'DISK = [ IMAGE_ID = "{image_id}" ]\n'
                f'NIC = [ NETWORK_ID = "{self.ids.network}" ]\n'
                f'SCHED_REQUIREMENTS = {SCHED_REQUIREMENTS}\n'
                f'CONTEXT = [ NETWORK = "YES", SSH_PUBLIC_KEY = "{ssh_public_key}", SET_HOSTNAME = "$NAME" ]\n')

    def extra(self, image_id: int, ssh_public_key: str, *, nic: bool = True) -> str:
        """What an instantiate of a `bmm-<model>` template adds: the image, the network, and a
        CONTEXT with the user's key and the VM's name as hostname."""
        return (f'DISK = [ IMAGE_ID = "{image_id}" ]\n'
                + (f'NIC = [ NETWORK_ID = "{self.ids.network}" ]\n' if nic else "")
                + f'CONTEXT = [ NETWORK = "YES", SSH_PUBLIC_KEY = "{ssh_public_key}", SET_HOSTNAME = "$NAME" ]\n')

    def create_template(self, name: str, body: str) -> Template:
        return Template(self.one.template.allocate(f'NAME = "{name}"\n{body}'))

    def instantiate(self, template: Template, name: str, *, hold: bool = False) -> int:
        return self.one.template.instantiate(template.id, name, hold, template.extra, False)

    # ---------------------------------------------------------------- VMs
    def vm(self, vm_id: int):
        return self.one.vm.info(vm_id)

    def state(self, vm_id: int) -> str:
        return state_name(self.vm(vm_id))

    def host_of(self, vm_id: int) -> str:
        history = self.vm(vm_id).HISTORY_RECORDS.HISTORY
        return history[-1].HOSTNAME

    def action(self, name: str, vm_id: int) -> None:
        """`onevm <name>`: poweroff, poweroff-hard, resume, reboot, reboot-hard, terminate, ..."""
        self.one.vm.action(name, vm_id)

    def act(self, name: str, vm_id: int, want, *, timeout: float = ACTION_TIMEOUT_S) -> str:
        """`onevm <name>`, then wait for want, failing on any error the action logs."""
        offset = self.log_size(vm_id)
        self.action(name, vm_id)
        return self.wait_vm(vm_id, want, timeout=timeout, since=offset)

    def deploy(self, vm_id: int, host: str) -> None:
        """`onevm deploy <vm> <host>` (no capacity enforcement, as the CLI's default)."""
        self.one.vm.deploy(vm_id, self.hosts[host], False, -1)

    def wait_vm(self, vm_id: int, want, *, timeout: float = ACTION_TIMEOUT_S, since: int | None = None) -> str:
        """Wait until the VM's state_name is in want. Fail at once on a *_FAILURE state that is
        not wanted (other than the one it started in) or, given since (the VM log's size before
        the action), on an error line the action added to the VM log; at the deadline, with the
        VM's story."""
        want = {want} if isinstance(want, str) else set(want)
        initial = self.state(vm_id)             # an action on a *_FAILURE VM starts from there

        def check():
            name = self.state(vm_id)
            if name in want:
                return True, name
            error = self._error_line(vm_id, since)
            if (name.endswith("FAILURE") and name != initial) or error:
                raise WaitTimeout(f"VM {vm_id} is {name} while waiting for {'/'.join(sorted(want))}"
                                  f"{'; the VM log says: ' + error if error else ''}\n{self.explain(vm_id)}")
            return False, name
        return self.wait_for(check, timeout, f"VM {vm_id} {'/'.join(sorted(want))}", lambda: self.explain(vm_id))

    def _error_line(self, vm_id: int, since: int | None) -> str:
        errors = [] if since is None else self.errors_since(vm_id, since)
        return errors[0] if errors else ""

    def errors_since(self, vm_id: int, offset: int) -> list[str]:
        """The error lines an action wrote to the VM log, in full (USER_TEMPLATE/ERROR keeps
        only the first 100 characters of a failure, then "... see more details in VM log")."""
        return [line.split("]: ", 1)[1] for line in self.log_since(vm_id, offset).splitlines() if "][E]: " in line]

    def explain(self, vm_id: int) -> str:
        """State, LCM state, USER_TEMPLATE/ERROR, the VM log's tail and oned.log's tail."""
        try:
            vm = self.vm(vm_id)
            head = (f"VM {vm_id}: STATE={pyone.VM_STATE(vm.STATE).name} LCM_STATE={pyone.LCM_STATE(vm.LCM_STATE).name}"
                    f"\nERROR: {_user_attr(vm, 'ERROR') or '(none)'}")
        except pyone.OneException as exc:
            head = f"VM {vm_id}: cannot read it ({exc})"
        return (f"{head}\n--- VM log ({self.vm_log_path(vm_id)}) ---\n{self.vm_log(vm_id, 30)}"
                f"\n--- oned.log ---\n{self.fe.tail('oned.log', 20)}"
                f"\n--- bmm.log ---\n{self.fe.tail_bmm_log(15)}")

    def vm_log_path(self, vm_id: int) -> Path:
        return self.fe.var / _vm_log(vm_id)

    def vm_log(self, vm_id: int, lines: int) -> str:
        return self.fe.tail(_vm_log(vm_id), lines)

    def log_size(self, vm_id: int) -> int:
        """Where the VM log ends now, to read only what an action adds."""
        return self.fe.log_size(_vm_log(vm_id))

    def log_since(self, vm_id: int, offset: int) -> str:
        return self.fe.log_since(_vm_log(vm_id), offset)

    def wait_log(self, vm_id: int, offset: int, pattern: str, *, timeout: float = ACTION_TIMEOUT_S) -> str:
        """Wait until the VM log, past offset, has a line matching pattern; return that text."""
        regex = re.compile(pattern)

        def check():
            text = self.log_since(vm_id, offset)
            return bool(regex.search(text)), self.state(vm_id)
        self.wait_for(check, timeout, f"VM {vm_id} log line /{pattern}/", lambda: self.explain(vm_id))
        return self.log_since(vm_id, offset)

    def wait_cleanup(self, vm_id: int, oned_offset: int, *, timeout: float = ACTION_TIMEOUT_S) -> str:
        """recover --delete, or terminate, of a VM in a *_FAILURE state: oned marks it DONE at
        once and cleans up afterwards (TM delete after a failed prolog, VMM CLEANUP after a
        failed boot). Wait for that reply in oned.log (past oned_offset) and return it."""
        regex = re.compile(rf"Message received: (TRANSFER|CLEANUP) (SUCCESS|FAILURE) {vm_id} .*")

        def check():
            found = regex.search(self.fe.log_since("oned.log", oned_offset))
            return found is not None, found.group(0) if found else "no TRANSFER reply yet"
        return self.wait_for(check, timeout, f"the clean-up of VM {vm_id}", lambda: self.explain(vm_id))

    def discard(self, vm_ids) -> None:
        """Clean-up after a module: terminate --hard (recover --delete where that is refused)
        every VM not DONE, without waiting; the session's teardown ends whatever still runs."""
        for vm_id in vm_ids:
            try:
                if self.state(vm_id) != "DONE":
                    self.action("terminate-hard", vm_id)
            except pyone.OneException:
                with contextlib.suppress(pyone.OneException):
                    self.one.vm.recover(vm_id, 3)       # recover --delete

    # ---------------------------------------------------------------- waiting
    @staticmethod
    def wait_for(check, timeout: float, what: str, story):
        """Poll check() -> (done, observed) until done; at the deadline fail with every distinct
        observation and story()."""
        deadline = time.monotonic() + timeout
        seen = []
        while True:
            done, observed = check()
            if not seen or seen[-1] != observed:
                seen.append(observed)
            if done:
                return observed
            if time.monotonic() > deadline:
                raise WaitTimeout(f"timed out after {timeout:g} s waiting for {what}; seen: "
                                  f"{' -> '.join(map(str, seen))}\n{story()}")
            time.sleep(POLL_S)
