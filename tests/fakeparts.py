"""Fakes of a machine's parts (power, transport, disk, boot) around one simulated machine, so a
kind's decisions can be tested without a lab. Every call is recorded in `machine.calls`.

The machine follows GRUB's rule: a power-on or reset boots the armed instance once (next_entry),
else the home OS. The home OS accepts bmm's key; an instance refuses it (its own keys), and its
host key differs from the home OS's."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

from bmm.errors import AuthError, BmmError, TransientError
from bmm.runner import Result

HOME_KEY = "ssh-ed25519 HOMEOS"
TENANT_KEY = "ssh-ed25519 TENANT"


@dataclass
class Machine:
    power: str = "on"              # on | off
    os: str = "home"               # home | tenant | down (what answers while powered)
    armed: int | None = None       # the VM next_entry boots
    bmc_broken: bool = False       # every power call raises
    calls: list[str] = field(default_factory=list)

    def boot(self) -> None:
        self.power = "on"
        self.os = "tenant" if self.armed is not None else "home"
        self.armed = None


class FakePower:
    def __init__(self, machine: Machine):
        self.m = machine

    def _call(self, what: str) -> None:
        self.m.calls.append(f"power {what}")
        if self.m.bmc_broken:
            raise TransientError("ipmi fake: no answer from the BMC", node="n1")

    def status(self) -> str:
        self._call("status")
        return self.m.power

    def on(self) -> str:
        self._call("on")
        if self.m.power == "off":
            self.m.boot()
        return "on"

    def off(self) -> str:
        self._call("off")
        self.m.power, self.m.os = "off", "down"
        return "off"

    soft_off = off

    def reset(self) -> str:
        self._call("reset")
        self.m.boot()
        return "on"


class FakeSession:
    def __init__(self, machine: Machine):
        self.m = machine

    def run(self, argv, *, timeout, input=None, check=True, secrets=()):
        self.m.calls.append("run " + " ".join(argv))
        return Result(tuple(argv), 0, "", "")

    def close(self) -> None:
        pass

    def host_key(self) -> str:
        return HOME_KEY

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class FakeTransport:
    def __init__(self, machine: Machine):
        self.m = machine

    def _up(self) -> bool:
        return self.m.power == "on" and self.m.os != "down"

    def session(self, *, connect_timeout=None) -> FakeSession:
        self.m.calls.append("ssh")
        if not self._up():
            raise TransientError("ssh fake: no answer", node="n1")
        if self.m.os == "tenant":
            raise AuthError("ssh fake: authentication failed", node="n1")
        return FakeSession(self.m)

    def host_key(self, timeout) -> str | None:
        if not self._up():
            return None
        return HOME_KEY if self.m.os == "home" else TENANT_KEY

    def reachable(self, timeout=3.0) -> bool:
        return self._up()


class FakeDisk:
    vg = "vg0"

    def __init__(self, machine: Machine):
        self.m = machine
        self.lvs: dict[str, int] = {}

    def present(self, ex) -> bool:
        return True

    def exists(self, ex, name) -> bool:
        return name in self.lvs

    def names(self, ex, prefix) -> list[str]:
        return sorted(n for n in self.lvs if n.startswith(prefix))

    def create(self, ex, name, size, *, tags=()):
        if name in self.lvs:
            raise BmmError(f"LV {name} already exists")
        self.m.calls.append(f"lvcreate {name}")
        self.lvs[name] = size

    @contextmanager
    def open(self, ex, name):
        yield f"/dev/fake/{name}"

    def wipe_and_remove(self, ex, name) -> None:
        self.m.calls.append(f"wipe {name}")
        del self.lvs[name]

    def mapper_name(self, name) -> str:
        return f"vg0-{name.replace('-', '--')}"


class FakeBoot:
    def __init__(self, machine: Machine):
        self.m = machine

    def present(self, ex) -> bool:
        return True

    def arm(self, ex, vm_id, entry) -> None:
        self.m.calls.append(f"arm {vm_id}")
        self.m.armed = vm_id

    def disarm(self, ex, vm_id) -> None:
        self.m.calls.append(f"disarm {vm_id}")
        if self.m.armed == vm_id:
            self.m.armed = None
