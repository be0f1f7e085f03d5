"""A handle on a running lab for tests, benchmarks and the demo (no pytest imports here).

    h = LabHandle.up(servers=2, boards=0)        # or LabHandle(existing_dir)
    h.ipmitool("server1", "chassis", "power", "off")
    h.wait_ssh("server1", up=False)
    h.ssh("server1", ["cat", "/etc/os-release"]).stdout
    h.down(purge=True)
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

from bmm_lab import LabError, bmc, firmware, rack
from bmm_lab.lvm import lvm_env
from bmm.runner import Result, run


class LabHandle:
    def __init__(self, lab_dir: str | Path):
        self.dir = Path(lab_dir)
        self.refresh()

    # ---------------------------------------------------------------- life cycle
    @classmethod
    def up(cls, lab_dir: str | Path | None = None, *, servers: int = 2, boards: int | None = 0,
           say=None, **kw) -> "LabHandle":
        made = lab_dir is None
        if made:
            lab_dir = tempfile.mkdtemp(prefix="bmmlab-", dir="/var/tmp")
        try:
            rack.up(lab_dir, servers=servers, boards=boards, say=say or (lambda m: None), **kw)
        except BaseException:
            # up tore down what it built; drop the temp dir too unless asked to keep logs
            if made and os.environ.get("BMM_LAB_KEEP_DIR") != "1":
                import shutil
                try:
                    clean = json.loads((Path(lab_dir) / "lab.json").read_text()).get("state") == "down"
                except (OSError, ValueError):
                    clean = not any(Path(lab_dir).iterdir())
                if clean:
                    shutil.rmtree(lab_dir, ignore_errors=True)
            raise
        return cls(lab_dir)

    def down(self, *, purge: bool = False) -> dict:
        return rack.down(self.dir, purge=purge)

    def refresh(self) -> dict:
        self.status_json = rack.status(self.dir)
        self.id = self.status_json["id"]
        self.nodes = {n["name"]: n for n in self.status_json["nodes"]}
        return self.status_json

    # ---------------------------------------------------------------- facts
    @property
    def status(self) -> list[dict]:
        return self.status_json["nodes"]

    @property
    def servers(self) -> list[str]:
        return [n["name"] for n in self.status if n["kind"] == "localdisk"]

    @property
    def boards(self) -> list[str]:
        return [n["name"] for n in self.status if n["kind"] == "netboot"]

    @property
    def inventory(self) -> Path:
        return self.dir / "nodes.toml"

    @property
    def key(self) -> Path:
        return self.dir / "ssh" / "lab_key"

    @property
    def known_hosts(self) -> Path:
        return self.dir / "ssh" / "known_hosts"

    def node(self, name: str) -> dict:
        if name not in self.nodes:
            raise LabError(f"no node {name!r} in lab {self.id}")
        return self.nodes[name]

    def lab_node(self, name: str) -> dict:
        """The node's lab.json entry (internal paths: loop, lvm_dir, ...)."""
        lab = json.loads((self.dir / "lab.json").read_text())
        for n in lab["nodes"]:
            if n["name"] == name:
                return n
        raise LabError(f"no node {name!r} in lab {self.id}")

    def lvm_env(self, name: str | None = None) -> dict[str, str]:
        """Environment for `lvm` on the host: the lab's filter (all servers) or one server's."""
        if name is None:
            return lvm_env(self.dir / "lvm")
        return lvm_env(self.node(name)["lvm_system_dir"])

    def console(self, name: str) -> str:
        path = self.node(name).get("console")
        return Path(path).read_text(errors="replace") if path and Path(path).exists() else ""

    # ---------------------------------------------------------------- peers
    def ipmitool(self, name: str, *args: str, check: bool = True, timeout: float = 20) -> Result:
        """Real ipmitool -I lanplus -C 3 against the server's BMC (password from its file)."""
        n = self.lab_node(name)
        return run(bmc.ipmitool_argv(n, *args), timeout=timeout, check=check, node=name)

    def power(self, name: str, action: str) -> dict:
        """Power through the lab daemon (what the BMC and PDU do underneath)."""
        return firmware.call(self.dir, {"op": "power", "node": name, "action": action})

    def daemon_status(self, name: str | None = None) -> dict:
        nodes = firmware.call(self.dir, {"op": "status"})["nodes"]
        return nodes[name] if name else nodes

    def ssh_argv(self, name: str, *, connect_timeout: int = 5, tenant: bool = False) -> list[str]:
        """OpenSSH argv for the node. The home OS's host key is pinned (the lab's known_hosts);
        with tenant=True any host key is taken, because every installed OS has keys of its own."""
        n = self.node(name)
        keys = (["-o", "UserKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=no"] if tenant else
                ["-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes"])
        return ["ssh", "-i", str(self.key), "-p", str(n["ssh"]["port"]),
                "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", f"ConnectTimeout={connect_timeout}",
                *keys, "-o", "LogLevel=ERROR", f"{n['ssh']['user']}@{n['ssh']['host']}"]

    def ssh(self, name: str, command: list[str] | str, *, timeout: float = 30, check: bool = True,
            input: str | bytes | None = None, tenant: bool = False) -> Result:
        """Run a command on the node with the real OpenSSH client and the lab key. A list is
        quoted word by word; a string is passed as the remote shell command."""
        import shlex
        remote = command if isinstance(command, str) else shlex.join(command)
        return run(self.ssh_argv(name, tenant=tenant) + ["--", remote], timeout=timeout, check=check,
                   input=input, node=name)

    def ssh_ok(self, name: str, timeout: float = 8, *, tenant: bool = False) -> bool:
        try:
            return self.ssh(name, ["true"], timeout=timeout, check=False, tenant=tenant).ok
        except LabError:
            return False
        except Exception:  # noqa: BLE001 - TimeoutExpired etc.: not reachable
            return False

    def wait_ssh(self, name: str, *, up: bool = True, timeout: float = 30, tenant: bool = False) -> float:
        """Wait until ssh to the node works (up) or is refused (down). Returns seconds waited."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        while True:
            if self.ssh_ok(name, tenant=tenant) == up:
                return time.monotonic() - t0
            if time.monotonic() > deadline:
                raise LabError(f"ssh still {'not ' if up else ''}answering after {timeout:g} s; "
                               f"daemon says {self.daemon_status(name)}", node=name)
            time.sleep(0.1)

    def wait_state(self, name: str, state: str | tuple, *, timeout: float = 30) -> dict:
        want = (state,) if isinstance(state, str) else tuple(state)
        deadline = time.monotonic() + timeout
        while True:
            st = self.daemon_status(name)
            if st["state"] in want:
                return st
            if time.monotonic() > deadline:
                raise LabError(f"state {st['state']} ({st['detail']}), wanted {'/'.join(want)} after {timeout:g} s",
                               node=name)
            time.sleep(0.05)


def leftovers(lab_id: str, lab_dir: str | Path) -> dict[str, list[str]]:
    """What of a lab still exists on the host (empty lists when `down` did its job)."""
    from bmm_lab import lvm, names, netns
    d = Path(lab_dir)
    out: dict[str, list[str]] = {}
    out["netns"] = netns.list_ns(names.ns_prefix(lab_id))
    out["links"] = netns.list_links(names.link_prefix(lab_id))
    out["loops"] = lvm.lab_loops(d)
    out["processes"] = [str(p) for p in rack.lab_processes(d.resolve(), lab_id)]
    out["dev_links"] = [str(p) for p in Path("/dev").glob(names.link_prefix(lab_id) + "*")] + \
        [str(p) for p in Path("/dev/mapper").glob(names.link_prefix(lab_id) + "*")]
    if (d / "lvm").is_dir():
        res = subprocess.run(["lvm", "vgs", "--noheadings", "-o", "vg_name"], capture_output=True, text=True,
                             env={**os.environ, **lvm_env(d / "lvm")}, timeout=30)
        # the filter names loop numbers, which another user may reuse after down: only ours count
        out["vgs"] = [v.strip() for v in res.stdout.split() if v.strip().startswith(names.link_prefix(lab_id))]
    return {k: v for k, v in out.items() if v}
