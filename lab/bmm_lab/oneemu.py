"""An emulation of OpenNebula's exec drivers, for the demo and for fast tests without an oned.

It calls the installed remote scripts exactly as one_vmm_exec.rb / one_tm.rb /
run_monitord_client do (protocol §1.5–1.7, §2.3, §8.1–8.3): argv, base64 stdin for local
actions (strict, one line, no newline), a bare environment, cwd the var directory, and it
builds the reply oned would see, with the FAILURE text by the 7.x and 6.10 rules.

`OpenNebula` is the front-end (its layout, one call per driver action); `Vm` is one instance
taken through oned's life cycle with the calls in oned's order (protocol §8.4, checked against
7.4's src/lcm, src/tm and src/vmm):
- create: PROLOG `TM clone` per image disk, then DEPLOY = `TM context` + `VMM deploy`;
- poweroff / poweroff --hard: `VMM shutdown` / `VMM cancel`, no TM call;
- resume: DEPLOY again (context regenerated; the deployment file says LCM_STATE 20, BOOT_POWEROFF,
  with the DEPLOY_ID);
- reboot / reboot --hard: `VMM reboot` / `VMM reset`;
- terminate [--hard]: from RUNNING `VMM shutdown` / `cancel` first, then EPILOG: `TM delete`
  per disk, then `TM delete` of the VM's system directory.

Where a genuine oned differs and this emulation does not follow, tests/oned/ is the judge.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from bmm.remotes import default_source, install_remotes

LOG_LINE = re.compile(r"^(ERROR|INFO|WARN|DEBUG):\s+(\d+)?\s*(.*)$")
MAX_ERROR_MSG_LENGTH = 100          # include/VirtualMachine.h: what USER_TEMPLATE/ERROR keeps
SYSTEM_DS, IMAGE_DS = 100, 101


@dataclass
class Execution:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def failure_text_7(self) -> str:
        """7.x: log-prefixed stderr lines are stripped, the rest concatenated (§1.7)."""
        return "".join(line for line in self.stderr.splitlines() if not LOG_LINE.match(line))

    @property
    def failure_text_610(self) -> str:
        """6.2–6.10: the whole stderr, newlines turned to spaces (§1.7)."""
        return self.stderr.replace("\n", " ").strip()

    @property
    def log_lines(self) -> list[tuple[str, str, str]]:
        out = []
        for line in self.stderr.splitlines():
            m = LOG_LINE.match(line)
            if m:
                out.append((m.group(1)[0], m.group(2) or "-1", m.group(3)))
        return out

    def reply(self, action: str, vm_id: int, major: int = 7) -> str:
        """The line oned reads."""
        if self.returncode == 0:
            if action != "DEPLOY":
                return f"{action} SUCCESS {vm_id} -"
            words = self.stdout.split()          # oned: `is >> deploy_id`
            if not words:
                return f"DEPLOY FAILURE {vm_id} Empty deploy ID"
            return f"DEPLOY SUCCESS {vm_id} {words[0]}"
        text = self.failure_text_7 if major >= 7 else self.failure_text_610
        return f"{action} FAILURE {vm_id} {text or '-'}"

    def user_error(self, what: str, major: int = 7) -> str:
        """USER_TEMPLATE/ERROR as oned sets it after this failure (without its time stamp):
        `<what>: <text>` cut to 100 characters (VirtualMachine::set_template_error_message)."""
        text = self.failure_text_7 if major >= 7 else self.failure_text_610
        if not text or text.startswith("-"):
            return ""
        message = f"{what}: {text}"
        cut = message[:MAX_ERROR_MSG_LENGTH]
        return cut + ("... see more details in VM log" if len(message) >= MAX_ERROR_MSG_LENGTH else "")


class OpenNebula:
    """OpenNebula's front-end layout with bmm installed, and the calls oned's drivers make.

    root plays /var/lib/one: root/remotes (bmm installed), root/datastores (DATASTORE_LOCATION),
    root/vms/<vm id>/ (context.sh, deployment files). frontend is oned.conf's HOSTNAME, which
    prefixes an image's SOURCE in TM clone (default: this machine's name, as oned resolves it).
    kinds adds lines to bmm.toml's [kinds]; pythonpath lets such a kind be imported by the
    remotes (bmm itself is found by their shebang)."""

    def __init__(self, root: Path, inventory: Path, *, state_dir: Path | None = None, version: str | None = "7.0.0",
                 settings: str = "", kinds: str = "", pythonpath: str | None = None,
                 frontend: str | None = None):
        self.root = Path(root)
        self.remotes = self.root / "remotes"
        self.datastores = self.root / "datastores"
        self.datastores.mkdir(parents=True, exist_ok=True)
        self.state_dir = Path(state_dir) if state_dir else self.root / "state"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.pythonpath = pythonpath
        self.frontend = frontend or socket.gethostname()
        install_remotes(self.remotes, python=sys.executable, source=default_source())
        if version:
            (self.remotes / "VERSION").write_text(version + "\n")
        self.config = self.remotes / "etc" / "bmm" / "bmm.toml"
        self.config.write_text(textwrap.dedent(f"""\
            inventory = "{inventory}"
            state_db = "{self.state_dir / 'state.db'}"
            lock_wait_s = 5
            {settings}
            [kinds]
            {kinds}
            """))

    # -------------------------------------------------------------- OpenNebula's layout
    def sysdir(self, vm_id: int, ds_id: int = SYSTEM_DS) -> str:
        """The VM's system dir, spelt as oned spells it (DATASTORE_LOCATION + '/')."""
        return f"{self.root}//datastores/{ds_id}/{vm_id}"

    def disk(self, vm_id: int, disk_id: int, ds_id: int = SYSTEM_DS) -> str:
        return f"{self.sysdir(vm_id, ds_id)}/disk.{disk_id}"

    def vm_dir(self, vm_id: int) -> Path:
        path = self.root / "vms" / str(vm_id)
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def log_path(self) -> Path:
        """bmm's log beside its state database (the remotes write every log line there)."""
        return self.state_dir / "bmm.log"

    def register_image(self, path: Path, ds_id: int = IMAGE_DS) -> str:
        """What `oneimage create` does for the fs datastore: the image moves into the
        datastore under a hashed name; returns its SOURCE."""
        ds = self.datastores / str(ds_id)
        ds.mkdir(parents=True, exist_ok=True)
        target = ds / hashlib.md5(str(path).encode()).hexdigest()
        if not target.exists():
            try:
                os.link(path, target)
            except OSError:
                shutil.copyfile(path, target)
        return f"{self.root}//datastores/{ds_id}/{target.name}"

    def prolog(self, vm_id: int, host: str, image: Path | None = None, *, disk_id: int = 0,
               ds_id: int = IMAGE_DS) -> Execution:
        """PROLOG of a VM with one image disk: TM clone <frontend:SOURCE> <host:disk.N>."""
        if image is None:
            image = self.root / "images" / f"image-{vm_id}.img"
            image.parent.mkdir(parents=True, exist_ok=True)
            image.write_bytes(b"\0" * 4096)
        source = self.register_image(image, ds_id)
        return self.tm("clone", [f"{self.frontend}:{source}", f"{host}:{self.disk(vm_id, disk_id)}",
                                 str(vm_id), str(ds_id)])

    def context_sh(self, vm_id: int, text: str) -> Path:
        """What oned writes before every DEPLOY: <var>/vms/<vm id>/context.sh."""
        path = self.vm_dir(vm_id) / "context.sh"
        path.write_text(text)
        return path

    @property
    def env(self) -> dict[str, str]:
        """oned's drivers run with almost nothing in the environment."""
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"}
        if self.pythonpath:
            env["PYTHONPATH"] = self.pythonpath
        return env

    def _run(self, script: Path, args: list[str], stdin: bytes | None, env=None, timeout=600) -> Execution:
        argv = [str(script), *args]
        proc = subprocess.run(argv, input=stdin if stdin is not None else b"", capture_output=True,
                              env=env or self.env, cwd=self.root, timeout=timeout)
        return Execution(argv, proc.returncode, proc.stdout.decode(errors="replace"),
                         proc.stderr.decode(errors="replace"))

    def start(self, kind: str, action: str, args: list[str], stdin: bytes = b"") -> subprocess.Popen:
        """Start a remote without waiting (to signal it mid-action); kind is vmm or tm.
        For vmm, stdin is the XML and is base64-encoded as oned does."""
        script = self.remotes / kind / "bmm" / action
        with tempfile.TemporaryFile() as data:
            data.write(base64.b64encode(stdin) if kind == "vmm" else b"")
            data.seek(0)
            return subprocess.Popen([str(script), *args], stdin=data, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, env=self.env, cwd=self.root)

    @staticmethod
    def finish(proc: subprocess.Popen, timeout: float = 300) -> Execution:
        out, err = proc.communicate(timeout=timeout)
        return Execution([str(a) for a in proc.args], proc.returncode, out.decode(errors="replace"),
                         err.decode(errors="replace"))

    def vmm(self, action: str, args: list[str], stdin_xml: bytes | str | None, *, raw_stdin: bytes | None = None, env=None) -> Execution:
        """Local VMM action: base64 stdin (Base64.strict_encode64)."""
        if raw_stdin is None:
            data = stdin_xml.encode() if isinstance(stdin_xml, str) else (stdin_xml or b"")
            raw_stdin = base64.b64encode(data)
        return self._run(self.remotes / "vmm" / "bmm" / action, args, raw_stdin, env=env)

    def deploy(self, vm_xml: str, host: str, vm_id: int, dfile: Path) -> Execution:
        dfile.write_text(vm_xml)
        return self.vmm("deploy", [str(dfile), host, str(vm_id), host], vm_xml)

    def simple(self, action: str, drv_action_xml: str, deploy_id: str, host: str, vm_id: int) -> Execution:
        """shutdown, cancel, reboot, reset, poll: `<D> <H> <ID> <H>`."""
        return self.vmm(action, [deploy_id, host, str(vm_id), host], drv_action_xml)

    def tm(self, action: str, args: list[str], env=None) -> Execution:
        """TM actions: argv only, stdin closed/empty (§8.1)."""
        return self._run(self.remotes / "tm" / "bmm" / action, args, b"", env=env)

    def monitor_config(self, host_id: int, port: int, period_s: int = 10) -> str:
        """The MONITOR_CONFIGURATION monitord sends with START_MONITOR / STOP_MONITOR."""
        periods = "".join(f"<{k}>{period_s}</{k}>" for k in
                          ("BEACON_HOST", "SYSTEM_HOST", "MONITOR_HOST", "STATE_VM", "MONITOR_VM"))
        return (f"<MONITOR_CONFIGURATION><NETWORK><ADDRESS>127.0.0.1</ADDRESS><MONITOR_ADDRESS>127.0.0.1"
                f"</MONITOR_ADDRESS><PORT>{port}</PORT><THREADS>8</THREADS><PUBKEY/><PRIKEY/></NETWORK>"
                f"<PROBES_PERIOD>{periods}<SYNC_STATE_VM>180</SYNC_STATE_VM></PROBES_PERIOD>"
                f"<HOST_ID>{host_id}</HOST_ID></MONITOR_CONFIGURATION>")

    def start_monitor(self, host_id: int, host: str, port: int) -> Execution:
        """`onehost create`: monitord's START_MONITOR; stdout is the MONITOR_MESSAGES document."""
        return self.im(["bmm", str(host_id), host], self.monitor_config(host_id, port))

    def stop_monitor(self, host_id: int, host: str, port: int) -> Execution:
        """`onehost delete`: STOP_MONITOR; bmm's monitor daemon leaves once no host is left."""
        return self.im(["stop", "bmm", str(host_id), host], self.monitor_config(host_id, port))

    def wait_monitor_gone(self, timeout: float = 30) -> bool:
        """Wait until bmm's monitor daemon has left (its lock is free); False at the deadline."""
        import fcntl
        lock = self.state_dir / "monitor" / "daemon.lock"
        deadline = time.monotonic() + timeout
        while lock.exists():
            with open(lock) as fh:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return True
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        return False
            time.sleep(0.2)
        return True

    def im(self, args: list[str], config_xml: str, env=None) -> Execution:
        """run_monitord_client: `echo ${STDIN} | ./script bmm <hid> <host> 2>&1`."""
        script = self.remotes / "im" / "bmm.d" / "monitord-client_control.sh"
        stdin = base64.b64encode(config_xml.encode()) + b"\n"
        return self._run(script, args, stdin, env=env)


def drv_action(vm_xml: str, host: str, deploy_id: str = "", tm_command: str = "") -> str:
    return (f"<VMM_DRIVER_ACTION_DATA><HOST>{host}</HOST><MIGR_HOST/>"
            f"<DEPLOY_ID>{deploy_id}</DEPLOY_ID>"
            f"<LOCAL_DEPLOYMENT_FILE>/var/lib/one/vms/1/deployment.0</LOCAL_DEPLOYMENT_FILE>"
            f"<TM_COMMAND>{tm_command}</TM_COMMAND>{vm_xml}<DATASTORE/></VMM_DRIVER_ACTION_DATA>")


def vm_xml(vm_id: int, host: str, *, name: str = "bm-test", context: dict | None = None,
           disks: str = "", nics: str = "", lcm_state: int = 2, deploy_id: str = "") -> str:
    """The VM as oned writes it: LCM_STATE 2 (BOOT) for a first deploy, 20 (BOOT_POWEROFF)
    with the DEPLOY_ID for a resume."""
    ctx = "".join(f"<{k}><![CDATA[{v}]]></{k}>" for k, v in (context or {}).items())
    did = f"<DEPLOY_ID>{deploy_id}</DEPLOY_ID>" if deploy_id else "<DEPLOY_ID/>"
    return (f"<VM><ID>{vm_id}</ID><NAME>{name}</NAME><STATE>3</STATE><LCM_STATE>{lcm_state}</LCM_STATE>{did}"
            f"<TEMPLATE><CPU><![CDATA[1]]></CPU><VCPU><![CDATA[8]]></VCPU><MEMORY><![CDATA[1024]]></MEMORY>"
            f"{disks}{nics}<CONTEXT>{ctx}</CONTEXT><OS><ARCH><![CDATA[x86_64]]></ARCH></OS></TEMPLATE>"
            f"<USER_TEMPLATE/><HISTORY_RECORDS><HISTORY><SEQ>0</SEQ><HOSTNAME>{host}</HOSTNAME><HID>3</HID>"
            f"<DS_ID>{SYSTEM_DS}</DS_ID><VM_MAD><![CDATA[bmm]]></VM_MAD><TM_MAD><![CDATA[bmm]]></TM_MAD></HISTORY>"
            f"</HISTORY_RECORDS></VM>")


def context_text(variables: dict[str, str]) -> str:
    """context.sh as oned writes it (VirtualMachineContext.cc): KEY='value', quotes escaped."""
    lines = ["# Context variables generated by OpenNebula"]
    quote = "'\\''"
    lines += [f"{key}='{str(value).replace(chr(39), quote)}'" for key, value in variables.items()]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ one instance
@dataclass
class Step:
    """One driver call oned made for an instance."""
    action: str                 # the user's operation: create, poweroff, resume, ...
    call: str                   # "TM clone", "VMM deploy", ...
    execution: Execution
    seconds: float

    @property
    def ok(self) -> bool:
        return self.execution.returncode == 0


class DriverFailure(Exception):
    """A driver call failed: oned would move the VM to `state` and show `error`."""

    def __init__(self, step: Step, state: str, error: str):
        super().__init__(f"{step.call} failed, the VM is {state}: {error or step.execution.stderr.strip()}")
        self.step, self.state, self.error = step, state, error


# What oned puts in USER_TEMPLATE/ERROR before the driver's text, per failed call.
_ERROR_PREFIX = {"TM": "Error executing image transfer script", "VMM deploy": "Error deploying virtual machine",
                 "VMM shutdown": "Error shutting down VM", "VMM cancel": "Error canceling VM",
                 "VMM reboot": "REBOOT", "VMM reset": "REBOOT"}     # RESET replies go to the reboot handler


class Vm:
    """One instance with one image disk, taken through oned's life cycle (module docstring).
    `state` follows oned's names (PENDING, RUNNING, POWEROFF, DONE, PROLOG_FAILURE, ...);
    each call is recorded in `steps`; watch(call, popen), a context manager, may follow a call
    while it runs (the demo shows the image copy's progress that way)."""

    def __init__(self, one: OpenNebula, vm_id: int, host: str, image: Path, *, context: dict[str, str],
                 name: str = "bm-demo", nics: str = "",
                 watch: Callable[[str, subprocess.Popen], AbstractContextManager] | None = None):
        self.one, self.id, self.host, self.name, self.nics = one, vm_id, host, name, nics
        self.source = one.register_image(Path(image))
        self.context = dict(context)
        self.watch = watch
        self.state = "PENDING"
        self.deploy_id = ""
        self.seq = 0
        self.steps: list[Step] = []

    # ------------------------------------------------------------------ what oned writes
    def _disks(self) -> str:
        return (f"<DISK><DISK_ID>0</DISK_ID><SOURCE><![CDATA[{self.source}]]></SOURCE>"
                f"<TM_MAD><![CDATA[bmm]]></TM_MAD><DATASTORE_ID>{IMAGE_DS}</DATASTORE_ID>"
                f"<TYPE><![CDATA[FILE]]></TYPE><CLONE><![CDATA[YES]]></CLONE><SAVE><![CDATA[NO]]></SAVE></DISK>")

    def xml(self, lcm_state: int = 3) -> str:
        ctx = {"DISK_ID": "1", "TARGET": "hda", **self.context}
        return vm_xml(self.id, self.host, name=self.name, context=ctx, disks=self._disks(), nics=self.nics,
                      lcm_state=lcm_state, deploy_id=self.deploy_id)

    def _action_data(self) -> str:
        return drv_action(self.xml(), self.host, self.deploy_id)

    # ------------------------------------------------------------------ calls
    def _call(self, action: str, call: str, kind: str, script: str, args: list[str], stdin: bytes = b"",
              failure_state: str = "") -> Step:
        t0 = time.monotonic()
        proc = self.one.start(kind, script, args, stdin)
        with self.watch(call, proc) if self.watch is not None else contextlib.nullcontext():
            execution = self.one.finish(proc, timeout=900)
        step = Step(action, call, execution, time.monotonic() - t0)
        self.steps.append(step)
        if not step.ok:
            prefix = _ERROR_PREFIX.get(call, _ERROR_PREFIX["TM"] if kind == "tm" else call)
            self.state = failure_state or self.state
            raise DriverFailure(step, self.state, step.execution.user_error(prefix))
        return step

    def _tm(self, action: str, script: str, args: list[str], failure_state: str) -> Step:
        return self._call(action, f"TM {script}", "tm", script, args, failure_state=failure_state)

    def _vmm(self, action: str, script: str, failure_state: str) -> Step:
        return self._call(action, f"VMM {script}", "vmm", script,
                          [self.deploy_id, self.host, str(self.id), self.host],
                          self._action_data().encode(), failure_state)

    def _deploy(self, action: str, lcm_state: int, failure_state: str) -> None:
        """DEPLOY: context.sh regenerated, TM context (TM_COMMAND), then VMM deploy of the file."""
        ctx = self.one.context_sh(self.id, context_text({"DISK_ID": "1", "TARGET": "hda", **self.context}))
        self._tm(action, "context", [str(ctx), f"{self.host}:{self.one.disk(self.id, 1)}", str(self.id),
                                     str(SYSTEM_DS)], failure_state)
        dfile = self.one.vm_dir(self.id) / f"deployment.{self.seq}"
        self.seq += 1
        text = self.xml(lcm_state)
        dfile.write_text(text)
        step = self._call(action, "VMM deploy", "vmm", "deploy", [str(dfile), self.host, str(self.id), self.host],
                          text.encode(), failure_state)
        words = step.execution.stdout.split()
        if not words:
            self.state = failure_state
            raise DriverFailure(step, self.state, "Error deploying virtual machine: Empty deploy ID")
        self.deploy_id = words[0]
        self.state = "RUNNING"

    # ------------------------------------------------------------------ the user's operations
    def create(self) -> None:
        """PENDING -> PROLOG (TM clone) -> BOOT (DEPLOY) -> RUNNING."""
        self.state = "PROLOG"
        self._tm("create", "clone", [f"{self.one.frontend}:{self.source}", f"{self.host}:{self.one.disk(self.id, 0)}",
                                     str(self.id), str(IMAGE_DS)], "PROLOG_FAILURE")
        self.state = "BOOT"
        self._deploy("create", 2, "BOOT_FAILURE")

    def poweroff(self, *, hard: bool = False) -> None:
        self._vmm("poweroff", "cancel" if hard else "shutdown", "RUNNING")
        self.state = "POWEROFF"

    def resume(self) -> None:
        """From POWEROFF: BOOT_POWEROFF, DEPLOY with the deploy id oned kept."""
        self.state = "BOOT_POWEROFF"
        self._deploy("resume", 20, "POWEROFF")

    def reboot(self, *, hard: bool = False) -> None:
        self._vmm("reboot", "reset" if hard else "reboot", "RUNNING")

    def terminate(self, *, hard: bool = False) -> None:
        """From RUNNING: SHUTDOWN (or CANCEL), then EPILOG; from POWEROFF: EPILOG only."""
        if self.state == "RUNNING":
            self.state = "SHUTDOWN"
            self._vmm("terminate", "cancel" if hard else "shutdown", "RUNNING")
        self.state = "EPILOG"
        self._tm("terminate", "delete", [f"{self.host}:{self.one.disk(self.id, 0)}", str(self.id), str(IMAGE_DS)],
                 "EPILOG_FAILURE")
        self._tm("terminate", "delete", [f"{self.host}:{self.one.sysdir(self.id)}", str(self.id), str(SYSTEM_DS)],
                 "EPILOG_FAILURE")
        self.state = "DONE"
