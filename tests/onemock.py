"""An emulation of OpenNebula's exec drivers, for protocol tests.

It calls the installed remote scripts exactly as one_vmm_exec.rb / one_tm.rb /
run_monitord_client do (protocol §1.5–1.7, §2.3, §8.1–8.3): argv, base64 stdin for local
actions (strict, one line, no newline), a bare environment, and it builds the reply oned
would see, with the FAILURE text by the 7.x and 6.10 rules.
"""

from __future__ import annotations

import base64
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

from bmm.remotes import install_remotes

REPO = Path(__file__).resolve().parent.parent
LOG_LINE = re.compile(r"^(ERROR|INFO|WARN|DEBUG):\s+(\d+)?\s*(.*)$")


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


class OpenNebula:
    """OpenNebula's front-end layout with bmm installed, and the calls oned's drivers make.

    root plays /var/lib/one: root/remotes (bmm installed), root/datastores (DATASTORE_LOCATION),
    root/vms/<vm id>/ (context.sh, token.txt)."""

    def __init__(self, root: Path, inventory: Path, *, state_dir: Path | None = None, version: str | None = "7.0.0",
                 settings: str = "", kinds: str = ""):
        self.root = root
        self.remotes = root / "remotes"
        self.datastores = root / "datastores"
        self.datastores.mkdir(parents=True, exist_ok=True)
        self.state_dir = state_dir or root / "state"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        install_remotes(self.remotes, python=sys.executable, source=REPO / "remotes")
        if version:
            (self.remotes / "VERSION").write_text(version + "\n")
        (self.remotes / "etc" / "bmm" / "bmm.toml").write_text(textwrap.dedent(f"""\
            inventory = "{inventory}"
            state_db = "{self.state_dir / 'state.db'}"
            lock_wait_s = 5
            {settings}
            [kinds]
            fake = "tests.fakekind:FakeKind"
            {kinds}
            """))

    # -------------------------------------------------------------- OpenNebula's layout
    def sysdir(self, vm_id: int, ds_id: int = 100) -> str:
        """The VM's system dir, spelt as oned spells it (DATASTORE_LOCATION + '/')."""
        return f"{self.root}//datastores/{ds_id}/{vm_id}"

    def disk(self, vm_id: int, disk_id: int, ds_id: int = 100) -> str:
        return f"{self.sysdir(vm_id, ds_id)}/disk.{disk_id}"

    def register_image(self, path: Path, ds_id: int = 101) -> str:
        """What `oneimage create` does for the fs datastore: the image moves into the
        datastore under a hashed name; returns its SOURCE."""
        import hashlib
        import os
        ds = self.datastores / str(ds_id)
        ds.mkdir(parents=True, exist_ok=True)
        target = ds / hashlib.md5(str(path).encode()).hexdigest()
        if not target.exists():
            try:
                os.link(path, target)
            except OSError:
                import shutil
                shutil.copyfile(path, target)
        return f"{self.root}//datastores/{ds_id}/{target.name}"

    def prolog(self, vm_id: int, host: str, image: Path | None = None, *, disk_id: int = 0,
               ds_id: int = 101) -> Execution:
        """PROLOG of a VM with one image disk: TM clone <fe:SOURCE> <host:disk.N>."""
        if image is None:
            image = self.root / "images" / f"image-{vm_id}.img"
            image.parent.mkdir(parents=True, exist_ok=True)
            image.write_bytes(b"\0" * 4096)
        source = self.register_image(image, ds_id)
        return self.tm("clone", [f"fe:{source}", f"{host}:{self.disk(vm_id, disk_id)}", str(vm_id), str(ds_id)])

    def context_sh(self, vm_id: int, text: str) -> Path:
        """What oned writes before every DEPLOY: <var>/vms/<vm id>/context.sh."""
        path = self.root / "vms" / str(vm_id) / "context.sh"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    @property
    def env(self) -> dict[str, str]:
        """oned's drivers run with almost nothing in the environment. PYTHONPATH only lets the
        test-only kind (tests/fakekind.py) be imported; bmm itself is found by the shebang."""
        return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C", "PYTHONPATH": str(REPO)}

    def _run(self, script: Path, args: list[str], stdin: bytes | None, env=None, timeout=120) -> Execution:
        argv = [str(script), *args]
        proc = subprocess.run(argv, input=stdin if stdin is not None else b"", capture_output=True,
                              env=env or self.env, cwd=self.root, timeout=timeout)
        return Execution(argv, proc.returncode, proc.stdout.decode(errors="replace"),
                         proc.stderr.decode(errors="replace"))

    def start(self, kind: str, action: str, args: list[str], stdin: bytes = b"") -> subprocess.Popen:
        """Start a remote without waiting (to signal it mid-action); kind is vmm or tm.
        For vmm, stdin is the XML and is base64-encoded as oned does."""
        import tempfile
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

    def im(self, args: list[str], config_xml: str, env=None) -> Execution:
        """run_monitord_client: `echo ${STDIN} | ./script bmm <hid> <host> 2>&1`."""
        script = self.remotes / "im" / "bmm.d" / "monitord-client_control.sh"
        stdin = base64.b64encode(config_xml.encode()) + b"\n"
        ex = self._run(script, args, stdin, env=env)
        return ex


def drv_action(vm_xml: str, host: str, deploy_id: str = "", tm_command: str = "") -> str:
    return (f"<VMM_DRIVER_ACTION_DATA><HOST>{host}</HOST><MIGR_HOST/>"
            f"<DEPLOY_ID>{deploy_id}</DEPLOY_ID>"
            f"<LOCAL_DEPLOYMENT_FILE>/var/lib/one/vms/1/deployment.0</LOCAL_DEPLOYMENT_FILE>"
            f"<TM_COMMAND>{tm_command}</TM_COMMAND>{vm_xml}<DATASTORE/></VMM_DRIVER_ACTION_DATA>")


def vm_xml(vm_id: int, host: str, *, name: str = "bm-test", context: dict | None = None,
           disks: str = "", nics: str = "") -> str:
    ctx = "".join(f"<{k}><![CDATA[{v}]]></{k}>" for k, v in (context or {}).items())
    return (f"<VM><ID>{vm_id}</ID><NAME>{name}</NAME><STATE>3</STATE><LCM_STATE>2</LCM_STATE><DEPLOY_ID/>"
            f"<TEMPLATE><CPU><![CDATA[1]]></CPU><VCPU><![CDATA[8]]></VCPU><MEMORY><![CDATA[1024]]></MEMORY>"
            f"{disks}{nics}<CONTEXT>{ctx}</CONTEXT><OS><ARCH><![CDATA[x86_64]]></ARCH></OS></TEMPLATE>"
            f"<USER_TEMPLATE/><HISTORY_RECORDS><HISTORY><SEQ>0</SEQ><HOSTNAME>{host}</HOSTNAME><HID>3</HID>"
            f"<DS_ID>100</DS_ID><VM_MAD><![CDATA[bmm]]></VM_MAD><TM_MAD><![CDATA[bmm]]></TM_MAD></HISTORY>"
            f"</HISTORY_RECORDS></VM>")
