"""What a lab machine and its tenant say when asked directly, not through OpenNebula: the
tenant over ssh with the CONTEXT key, the node's logical volumes read from its disk, bmm's
record of the node, and the lab firmware's view of what the machine runs."""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from pathlib import Path

from bmm.config import load_config
from bmm.errors import BmmError
from bmm.state import open_store
from bmm.transport.ssh import SshSession, SshTarget

TOKEN_FILE = "/root/bmm-data"


def machine_on(machines: dict, host: str) -> "Machine":
    """The Machine that is OpenNebula host `host`."""
    return next(m for m in machines.values() if m.name == host)


class Machine:
    def __init__(self, lab, name: str, tenant_key: Path, bmm_config: Path):
        self.lab = lab
        self.name = name
        self.tenant_key = tenant_key
        self.bmm_config = bmm_config

    def __repr__(self) -> str:
        return f"Machine({self.name})"

    # ---------------------------------------------------------------- the tenant
    def tenant(self, argv: list[str], timeout: float = 30) -> str:
        """Run argv in the tenant as root with the key OpenNebula put into CONTEXT."""
        n = self.lab.node(self.name)
        target = SshTarget(n["ip"], n["ssh"]["port"], "root", str(self.tenant_key), host_key_policy="ignore",
                           connect_timeout=10, node=self.name)
        with SshSession(target) as session:
            return session.run(argv, timeout=timeout).stdout

    def tenant_answers(self) -> bool:
        try:
            self.tenant(["true"], timeout=10)
            return True
        except BmmError:
            return False

    def wait_tenant(self, timeout: float = 30) -> None:
        """The tenant answers ssh with the CONTEXT key (a RUNNING VM must, within seconds)."""
        deadline = time.monotonic() + timeout
        while not self.tenant_answers():
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: the tenant does not answer ssh with the CONTEXT key after "
                                     f"{timeout:g} s; the machine runs: {self.running()}")
            time.sleep(0.5)

    def write_token(self) -> str:
        """A random token written to the tenant's disk (and synced), to find it again later."""
        token = secrets.token_hex(8)
        self.tenant(["sh", "-c", f"echo {token} > {TOKEN_FILE} && sync"])
        return token

    def read_token(self) -> str:
        return self.tenant(["cat", TOKEN_FILE]).strip()

    def assert_tenant_booted(self, token: str | None = None) -> None:
        """The tenant OS answers with the CONTEXT key, and still holds token if given."""
        self.wait_tenant()
        release = self.os_release()
        assert release.get("ID") == "tenantos", f"{self.name} runs {release}, not the tenant image"
        if token is not None:
            assert self.read_token() == token, f"{self.name}: the tenant's disk lost what was written to it"

    def os_release(self) -> dict[str, str]:
        text = self.tenant(["cat", "/etc/os-release"])
        return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)

    def boot_id(self) -> str:
        """What tells one boot of the tenant from the next. The lab boots an OS as a new pid
        namespace on this host's kernel, so /proc/sys/kernel/random/boot_id and uptime stay
        the host's; the start time of the tenant's pid 1 changes with every boot."""
        stat = self.tenant(["cat", "/proc/1/stat"])
        return stat.rsplit(")", 1)[1].split()[19]

    # ---------------------------------------------------------------- the machine
    def running(self) -> str:
        """The lab firmware's account: power, state and what booted."""
        st = self.lab.daemon_status(self.name)
        return f"power {'on' if st['power'] else 'off'}, {st['state']}: {st['detail']}"

    def powered(self) -> bool:
        return bool(self.lab.daemon_status(self.name)["power"])

    def in_home_os(self) -> bool:
        st = self.lab.daemon_status(self.name)
        return bool(st["power"]) and st["detail"].startswith("home OS")

    def lvs(self) -> list[str]:
        """The logical volumes on the node's disk, read from this host (works powered off)."""
        vg = self.lab.node(self.name)["vg"]
        proc = subprocess.run(["lvm", "lvs", "--noheadings", "-o", "lv_name", vg], capture_output=True, text=True,
                              env={**os.environ, **self.lab.lvm_env(self.name)}, timeout=30, check=True)
        return sorted(line.strip() for line in proc.stdout.splitlines() if line.strip())

    def vm_lvs(self, vm_id: int) -> list[str]:
        return [lv for lv in self.lvs() if lv.startswith(f"vm{vm_id}-")]

    def record(self):
        """bmm's record of the node (state, vm_id, last error)."""
        return open_store(config=load_config(self.bmm_config)).get(self.name)

    def describe(self) -> str:
        record = self.record()
        disk = f"; LVs {self.lvs()}" if self.lab.node(self.name).get("vg") else ""     # a board has none
        return (f"{self.name}: bmm state {record.state} (vm {record.vm_id}, last error {record.last_error!r}); "
                f"machine {self.running()}{disk}")
