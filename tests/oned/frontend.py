"""A genuine OpenNebula front-end for one test session: a private copy of the cached install in
its own ONE_LOCATION, on free ports, with bmm installed the way README.md tells an operator.

    fe = Frontend.create(build_dir)      # /var/tmp/bmm-oned-XXXX/one, ports chosen
    fe.install_bmm(repo, inventory)     # install.sh --remotes / --apply-config, bmm.toml edited
    fe.start()                          # one start, then wait for XML-RPC
    fe.bmm("one", "register")           # the bmm command as the operator runs it there
    fe.stop(); fe.purge()               # one stop, then every leftover process of the session

`stop` ends whatever the session started, found by its directory (tests/oned/processes.py);
`reap_orphans`, run by `create`, does the same for sessions whose pytest was killed.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import xmlrpc.client
from dataclasses import dataclass
from pathlib import Path

from bmm.locks import pid_alive, process_start
from tests.oned.processes import kill_processes

PARENT = Path("/var/tmp")
PREFIX = "bmm-oned-"
OWNER = "owner.json"        # the pytest process that made the session, to tell orphans apart
KEPT = "kept"
PORT_RANGE = (20000, 32000)          # below the kernel's ephemeral range (32768-60999)
START_TIMEOUT_S = 90
STOP_TIMEOUT_S = 40

# A self-contained install has no share/gems, and Gem.use_paths() on it would hide Debian's
# gems (protocol README "Hook manager under a self-contained install").
LOAD_PATHS_RB = """\
# Replaced for bmm's test tier: the system's gems, plus this install's Ruby libraries.
$LOAD_PATH << File.join(ENV['ONE_LOCATION'], 'lib', 'ruby')
"""


@dataclass(frozen=True)
class Ports:
    oned: int
    grpc: int
    monitord: int
    hm_publisher: int
    hm_replier: int


def _free(port: int) -> bool:
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                return False
    return True


def free_ports() -> Ports:
    """Distinct ports free for TCP and UDP, picked at random so that concurrent sessions (or
    a developer's own oned on the defaults) are unlikely to pick the same ones."""
    candidates = random.sample(range(*PORT_RANGE), 200)
    chosen = [p for p in candidates if _free(p)][:5]
    if len(chosen) < 5:
        raise RuntimeError(f"no 5 free ports in {PORT_RANGE}")
    return Ports(*chosen)


def _sub(text: str, pattern: str, replacement: str, what: str) -> str:
    new, count = re.subn(pattern, replacement, text, flags=re.M)
    if count != 1:
        raise RuntimeError(f"{what}: expected one match of {pattern!r}, found {count}")
    return new


class Frontend:
    def __init__(self, directory: Path, ports: Ports):
        self.dir = directory
        self.location = directory / "one"
        self.ports = ports
        self.auth_file = directory / "one_auth"
        self.bmm_config: Path | None = None       # <remotes>/etc/bmm/bmm.toml, once installed

    # ---------------------------------------------------------------- set-up
    @classmethod
    def create(cls, install: Path, parent: Path = PARENT) -> "Frontend":
        reap_orphans(parent)
        directory = Path(tempfile.mkdtemp(prefix=PREFIX, dir=parent))
        pid = os.getpid()
        (directory / OWNER).write_text(json.dumps({"pid": pid, "start": process_start(pid)}))
        fe = cls(directory, free_ports())
        try:
            shutil.copytree(install, fe.location, symlinks=True)
            fe._configure()
        except BaseException:
            fe.purge()
            raise
        return fe

    @property
    def etc(self) -> Path:
        return self.location / "etc"

    @property
    def var(self) -> Path:
        return self.location / "var"

    @property
    def remotes(self) -> Path:
        return self.var / "remotes"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports.oned}/RPC2"

    @property
    def session(self) -> str:
        return self.auth_file.read_text().strip()

    @property
    def env(self) -> dict[str, str]:
        """What `one start` and the CLI need: ONE_LOCATION, ONE_AUTH, the install's bin on
        PATH (one calls onehem-server by name), and RUBYLIB for the hook manager."""
        return {
            "PATH": f"{self.location / 'bin'}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(self.dir),
            "LANG": "C.UTF-8",
            "ONE_LOCATION": str(self.location),
            "ONE_AUTH": str(self.auth_file),
            "ONE_XMLRPC": self.endpoint,
            "RUBYLIB": str(self.location / "lib" / "ruby"),
        }

    def _configure(self) -> None:
        p = self.ports
        oned = self.etc / "oned.conf"
        text = oned.read_text()
        text = _sub(text, r"^PORT\s*=.*$", f"PORT = {p.oned}", "oned.conf")
        text = _sub(text, r"^LISTEN_ADDRESS\s*=.*$", 'LISTEN_ADDRESS = "127.0.0.1"', "oned.conf")
        text = _sub(text, r"^GRPC_PORT\s*=.*$", f"GRPC_PORT = {p.grpc}", "oned.conf")
        text = _sub(text, r"^GRPC_LISTEN_ADDRESS\s*=.*$", 'GRPC_LISTEN_ADDRESS = "127.0.0.1"', "oned.conf")
        text = _sub(text, r'"-p \d+ -l \d+ -b 127\.0\.0\.1"', f'"-p {p.hm_publisher} -l {p.hm_replier} -b 127.0.0.1"',
                    "oned.conf HM_MAD")
        # a short scheduling window and retry keep the tier fast; placement rules are unchanged
        text = _sub(text, r"^SCHED_MAX_WND_TIME\s*=.*$", "SCHED_MAX_WND_TIME = 3", "oned.conf")
        text = _sub(text, r"^SCHED_RETRY_TIME\s*=.*$", "SCHED_RETRY_TIME = 5", "oned.conf")
        oned.write_text(text)

        monitord = self.etc / "monitord.conf"
        text = monitord.read_text()
        text = _sub(text, r'^(\s*)ADDRESS(\s*)=\s*"::",', r'\1ADDRESS\2= "127.0.0.1",', "monitord.conf")
        text = _sub(text, r'^(\s*)MONITOR_ADDRESS\s*=\s*"auto",', r'\1MONITOR_ADDRESS = "127.0.0.1",', "monitord.conf")
        text = _sub(text, r"^(\s*)PORT(\s*)=\s*4124,", rf"\1PORT\g<2>= {p.monitord},", "monitord.conf")
        # host capacity (DS_LOCATION_*) comes with SYSTEM_HOST: every 20 s instead of 600 s
        text = _sub(text, r"^(\s*)SYSTEM_HOST(\s*)=\s*\d+,", r"\1SYSTEM_HOST\g<2>= 20,", "monitord.conf")
        monitord.write_text(text)

        hem = self.etc / "onehem-server.conf"
        text = hem.read_text()
        text = _sub(text, r"^:subscriber_endpoint:.*$", f":subscriber_endpoint: 'tcp://localhost:{p.hm_publisher}'", "onehem")
        text = _sub(text, r"^:replier_endpoint:.*$", f":replier_endpoint: 'tcp://localhost:{p.hm_replier}'", "onehem")
        hem.write_text(text)

        (self.location / "lib" / "ruby" / "load_opennebula_paths.rb").write_text(LOAD_PATHS_RB)
        fd = os.open(self.auth_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(f"oneadmin:{secrets.token_hex(16)}\n")

    def install_bmm(self, repo: Path, inventory: Path, settings: dict[str, object]) -> Path:
        """bmm's remotes and oned/monitord blocks through install.sh, as README.md says, then
        the operator's edits of <remotes>/etc/bmm/bmm.toml. Returns that file.

        `--dev` repeats how bmm itself was installed (.ci/run, README): without it install.sh
        would replace the editable /opt/bmm install with a copy."""
        argv = [str(repo / "install.sh"), "--dev", "--remotes", str(self.remotes),
                "--apply-config", "--oned", str(self.etc / "oned.conf"), "--monitord", str(self.etc / "monitord.conf")]
        proc = subprocess.run(argv, cwd=repo, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        self.bmm_config = self.remotes / "etc" / "bmm" / "bmm.toml"
        set_toml_keys(self.bmm_config, {"inventory": str(inventory), "state_db": str(self.dir / "bmm" / "state.db"),
                                        "monitor_port": self.ports.monitord, **settings})
        return self.bmm_config

    # ---------------------------------------------------------------- run
    def bmm(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """The installed `bmm` command, run as an operator on this front-end: with ONE_LOCATION,
        ONE_AUTH and ONE_XMLRPC set and no BMM_CONFIG, so it finds the remotes' bmm.toml."""
        argv = [shutil.which("bmm") or str(Path(sys.executable).with_name("bmm")), *args]
        return subprocess.run(argv, env=self.env, cwd=self.dir, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=timeout)

    def one(self, action: str, timeout: float) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.location / "bin" / "one"), action], env=self.env, cwd=self.dir,
                              capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=timeout)

    def start(self) -> None:
        proc = self.one("start", START_TIMEOUT_S)
        if proc.returncode != 0:
            raise RuntimeError(f"one start failed ({proc.returncode}): {proc.stdout}{proc.stderr}\n"
                               f"oned.log:\n{self.tail('oned.log')}")
        self.wait_api(time.monotonic() + START_TIMEOUT_S)

    def wait_api(self, deadline: float) -> None:
        server = xmlrpc.client.ServerProxy(self.endpoint)
        last = ""
        while time.monotonic() < deadline:
            try:
                if server.one.system.version(self.session)[0]:
                    return
            except (OSError, xmlrpc.client.Error) as exc:
                last = str(exc)
            time.sleep(0.2)
        raise RuntimeError(f"oned did not answer XML-RPC on {self.endpoint} in time ({last})\n"
                           f"oned.log:\n{self.tail('oned.log')}")

    def stop(self) -> list[int]:
        """one stop, then end every process left by the session. Returns what had to be killed."""
        with contextlib.suppress(subprocess.TimeoutExpired, OSError):
            self.one("stop", STOP_TIMEOUT_S)
        return kill_processes(self.dir, extra=self.monitor_daemon_pid())

    def monitor_daemon_pid(self) -> list[int]:
        """bmm's front-end monitor daemon writes its pid next to the state database."""
        try:
            pid = int((self.dir / "bmm" / "monitor" / "daemon.pid").read_text().split()[0])
            if b"im_drivers.daemon" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return [pid]
        except (OSError, ValueError, IndexError):
            pass
        return []

    def purge(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def keep(self) -> None:
        """Leave the directory for a person to read; reap_orphans will not remove it."""
        (self.dir / KEPT).touch()

    # ---------------------------------------------------------------- diagnostics
    def tail(self, name: str, lines: int = 40) -> str:
        return _tail(self.var / name, lines)

    def log_size(self, name: str) -> int:
        try:
            return (self.var / name).stat().st_size
        except OSError:
            return 0

    def log_since(self, name: str, offset: int) -> str:
        try:
            with (self.var / name).open("rb") as fh:
                fh.seek(offset)
                return fh.read().decode(errors="replace")
        except OSError:
            return ""

    def tail_bmm_log(self, lines: int = 40) -> str:
        """bmm's own log, next to its state database."""
        return _tail(self.dir / "bmm" / "bmm.log", lines)


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"({path}: {exc.strerror})"


def reap_orphans(parent: Path = PARENT) -> list[Path]:
    """End what sessions of killed runs left (their owner process is gone): their processes,
    and their directories unless kept. Live sessions of other runs are never touched."""
    reaped = []
    for directory in sorted(parent.glob(PREFIX + "*")):
        try:
            owner = json.loads((directory / OWNER).read_text())
        except (OSError, ValueError):
            continue                      # not a session this module made, or still being made
        if pid_alive(owner.get("pid"), owner.get("start")):
            continue
        try:
            kill_processes(directory)
        except RuntimeError:
            continue                      # unkillable leftovers: leave the directory as evidence
        if not (directory / KEPT).exists():
            shutil.rmtree(directory, ignore_errors=True)
        reaped.append(directory)
    return reaped


def set_toml_keys(path: Path, values: dict[str, object]) -> None:
    """Set top-level keys of a TOML file the way an operator edits it: replace the key's line,
    or add it before the first table; comments stay."""
    lines = path.read_text().splitlines()
    first_table = next((i for i, line in enumerate(lines) if line.lstrip().startswith("[")), len(lines))
    for key, value in values.items():
        rendered = f'{key} = {_toml_value(value)}'
        for i, line in enumerate(lines[:first_table]):
            if re.match(rf"^\s*#?\s*{re.escape(key)}\s*=", line):
                lines[i] = rendered
                break
        else:
            lines.insert(first_table, rendered)
            first_table += 1
    path.write_text("\n".join(lines) + "\n")


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
