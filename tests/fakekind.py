"""A test-only machine kind: a 'machine' is a JSON file (its power and the disks on it), so the
protocol tests can prove the full life cycle through the real remote scripts without hardware.
The node's state and ownership live in bmm's state database, exactly as for a real kind.
Configured in the test bmm.toml as `[kinds] fake = "tests.fakekind:FakeKind"`."""

from __future__ import annotations

import json
from pathlib import Path

from bmm.errors import BmmError
from bmm.state import ACTIVE, AVAILABLE, CLEANING, DELETING, DEPLOYING, OFF, PROVISIONED, REBOOTING, STOPPING
from vmm_drivers.base import InstanceState, Kind


def machine_file(config, node_name: str) -> Path:
    return Path(config.state_db).parent / f"fake-{node_name}.json"


def read_machine(config, node_name: str) -> dict:
    path = machine_file(config, node_name)
    if not path.exists():
        return {"power": "off", "disks": [], "calls": []}
    return json.loads(path.read_text())


def write_machine(config, node_name: str, data: dict) -> None:
    machine_file(config, node_name).write_text(json.dumps(data))


class FakeKind(Kind):
    kind = "fake"

    def _update(self, call, **changes):
        data = read_machine(self.config, self.node.name)
        data["calls"].append(call.action)
        data.update(changes)
        write_machine(self.config, self.node.name, data)
        return data

    def tm_clone(self, call, step):
        step.go(DEPLOYING, reason="clone")
        disks = read_machine(self.config, self.name)["disks"]
        self._update(call, disks=sorted(set(disks) | {f"vm{call.vm_id}-disk{call.disk_id}"}))
        step.go(PROVISIONED, reason="cloned")

    def deploy(self, call, step):
        step.go(DEPLOYING, reason="deploy")
        self.reporter.info(f"booting VM {call.vm_id}")
        self._update(call, power="on")
        step.go(ACTIVE, reason="running")
        return self.deploy_id(call.vm_id)

    def shutdown(self, call, step):
        step.go(STOPPING, reason="shutdown")
        self._update(call, power="off")
        step.go(OFF, reason="off")

    def cancel(self, call, step):
        step.go(STOPPING, reason="cancel")
        self._update(call, power="off")
        step.go(OFF, reason="off")

    def reboot(self, call, step):
        step.go(REBOOTING, reason="reboot")
        self._update(call, power="on")
        step.go(ACTIVE, reason="running")

    def reset(self, call, step):
        self.reporter.info(f"resetting VM {call.vm_id}")
        if read_machine(self.config, self.node.name)["power"] != "on":
            raise BmmError("is powered off; nothing to reset", node=self.node.name)
        step.go(REBOOTING, reason="reset")
        self._update(call, power="on")
        step.go(ACTIVE, reason="running")

    def poll(self, call):
        data = read_machine(self.config, self.node.name)
        return "STATE=a" if data["power"] == "on" else "STATE=d"

    def tm_delete(self, call, step):
        if call.disk_id is not None:
            return
        step.go(DELETING, reason="delete")
        disks = [d for d in read_machine(self.config, self.name)["disks"] if not d.startswith(f"vm{call.vm_id}-")]
        self._update(call, power="off", disks=disks)
        step.go(CLEANING, AVAILABLE, reason="deleted")

    def instance_state(self, record, *, act=False):
        if record.vm_id is None or record.state not in (ACTIVE, OFF):
            return None
        on = read_machine(self.config, self.node.name)["power"] == "on"
        return InstanceState.RUNNING if on else InstanceState.POWEROFF
