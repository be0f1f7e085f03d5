"""IPMI power against the lab's real peers: ipmi_sim BMCs whose chassis power really starts
and stops the server (its sshd), driven by the real ipmitool.

State is verified by the peers: an independent `ipmitool chassis power status`, the lab
daemon's view of the machine, and whether the server's OS answers ssh."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from bmm.errors import FatalError, TransientError
from bmm.inventory import load_node
from bmm.power import driver_for, power_for


# -- helpers shared by the power lab tests ----------------------------------------------------

class CmdlineWatch:
    """Samples /proc/*/cmdline of every process (a superset of the driver's descendants) in a
    background thread, while a power command runs. Records any argv containing the secret,
    and how many processes of the watched programs it saw (proof that it looked)."""

    def __init__(self, secret: str, programs: tuple[str, ...]):
        assert secret
        self.secret = secret.encode()
        self.programs = programs
        self.leaks: list[str] = []
        self.seen: dict[str, set[int]] = {p: set() for p in programs}
        self.password_paths: list[str] = []     # what `-f` names, seen from inside the process
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)

    def _run(self):
        me = str(os.getpid())
        while not self._stop.is_set():
            for pid in os.listdir("/proc"):
                if not pid.isdigit() or pid == me:
                    continue
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as fh:
                        raw = fh.read()
                except OSError:
                    continue
                if not raw:
                    continue
                argv = raw.rstrip(b"\0").split(b"\0")
                if self.secret in raw:
                    self.leaks.append(f"pid {pid}: {argv[0].decode(errors='replace')}")
                name = os.path.basename(argv[0].decode(errors="replace"))
                if name in self.seen:
                    self.seen[name].add(int(pid))
                    if b"-f" in argv:
                        try:
                            path = argv[argv.index(b"-f") + 1].decode()
                            target = path
                            if path.startswith("/dev/fd/"):
                                target = os.readlink(f"/proc/{pid}/fd/{path.removeprefix('/dev/fd/')}")
                            self.password_paths.append(target)
                        except (OSError, IndexError):
                            pass
            time.sleep(0.001)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def private_file(path: Path, text: str) -> str:
    path.write_text(text)
    path.chmod(0o600)
    return str(path)


# -- fixtures ---------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def pace_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("BMM_PACE_DIR", str(tmp_path / "pace"))


@pytest.fixture
def server(lab):
    """A lab server for power tests; left powered on with its OS answering, as found."""
    name = lab.servers[0]
    yield name
    lab.power(name, "on")
    lab.wait_ssh(name, up=True, timeout=60)


def peer_power(lab, name) -> str:
    """The BMC's own answer, through an independent ipmitool run."""
    out = lab.ipmitool(name, "chassis", "power", "status").stdout
    return "on" if "is on" in out else "off" if "is off" in out else out


def settings(lab, name) -> dict:
    from bmm.inventory import thaw
    return thaw(load_node(name, lab.inventory).power.settings)


# -- tests ------------------------------------------------------------------------------------

def test_full_power_cycle_verified_by_the_peer(lab, server):
    p = power_for(load_node(server, lab.inventory))
    p.min_interval_s = 0.2
    assert p.status() == "on" == peer_power(lab, server)

    assert p.off() == "off"
    assert peer_power(lab, server) == "off"
    assert lab.daemon_status(server)["power"] is False
    lab.wait_ssh(server, up=False, timeout=10)

    before = lab.daemon_status(server)
    assert p.off() == "off"                       # idempotent: nothing sent
    assert lab.daemon_status(server) == before

    assert p.on() == "on"
    assert peer_power(lab, server) == "on"
    lab.wait_ssh(server, up=True, timeout=60)     # the server really booted its OS

    assert p.cycle() == "on"
    assert peer_power(lab, server) == "on"
    assert p.reset() == "on"
    assert peer_power(lab, server) == "on"
    lab.wait_ssh(server, up=True, timeout=60)

    assert p.soft_off() == "off"                  # ACPI soft-off: the lab asks the OS
    assert peer_power(lab, server) == "off"
    assert p.reset() == "on"                      # reset of an off node powers it on
    assert peer_power(lab, server) == "on"


def test_wrong_password_fails_fast_as_fatal(lab, server, tmp_path, caplog):
    real = Path(settings(lab, server)["password_file"]).read_text().strip()
    s = {**settings(lab, server), "password_file": private_file(tmp_path / "wrong", "Wr0ngPassw0rd\n")}
    p = driver_for(server, s)
    caplog.set_level(logging.DEBUG)
    t0 = time.monotonic()
    with pytest.raises(FatalError) as exc:
        p.on()
    elapsed = time.monotonic() - t0
    assert elapsed < 3, f"a wrong password must fail at once, took {elapsed:.1f} s"
    msg = str(exc.value)
    assert server in msg and "ipmi" in msg and "wrong password" in msg
    for secret in ("Wr0ngPassw0rd", real):
        assert secret not in msg and secret not in caplog.text
    assert peer_power(lab, server) == "on"


def test_unreachable_bmc_fails_within_its_deadline(lab, tmp_path):
    s = {**settings(lab, lab.servers[0]), "port": free_udp_port(), "timeout_s": 5}
    p = driver_for("ghost", s)
    t0 = time.monotonic()
    with pytest.raises(TransientError) as exc:
        p.on()
    elapsed = time.monotonic() - t0
    assert elapsed <= 5 + 1.5, f"took {elapsed:.1f} s for a 5 s deadline"
    assert "node ghost" in str(exc.value) and "ipmi" in str(exc.value)


@pytest.mark.parametrize("via", ["file", "env"])
def test_password_never_on_a_command_line_nor_in_logs(lab, server, caplog, via):
    s = {**settings(lab, server), "password_via": via, "min_interval_s": 0.05}
    secret = Path(s["password_file"]).read_text().strip()
    p = driver_for(server, s)
    caplog.set_level(logging.DEBUG)
    with CmdlineWatch(secret, ("ipmitool",)) as watch:
        assert p.cycle() == "on"
    assert watch.leaks == []
    assert watch.seen["ipmitool"], "the sampler never saw ipmitool running: it proved nothing"
    if via == "file":
        # `-f /dev/fd/N`, and in ipmitool's own process fd N is a pipe: no file holds the secret
        assert watch.password_paths and all(t.startswith("pipe:[") for t in watch.password_paths), \
            watch.password_paths
    assert secret not in caplog.text
    assert not [f for f in os.listdir("/dev/shm") if f.startswith("bmm-ipmi-")], "temp password file left"


def test_cli_acts_on_many_nodes(lab):
    names = lab.servers + lab.boards
    r = CliRunner().invoke(__import__("bmm.cli", fromlist=["main"]).main,
                           ["power", "status", *names, "--json", "--inventory", str(lab.inventory)])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert [d["name"] for d in data] == names
    assert all(d["power"] == "on" and d["error"] is None for d in data), data
    assert {d["driver"] for d in data} <= {"ipmi", "pdu"}
