"""A test-only machine kind: a 'machine' is a JSON file, so the protocol tests can prove the
full deploy/shutdown/cancel round trip through the real remote scripts without hardware.
Configured in the test bmm.toml as `[kinds] fake = {vmm = "tests.fakekind:FakeDriver", im = "tests.fakekind:FakeReport"}`."""

from __future__ import annotations

import json
from pathlib import Path

from bmm.errors import BmmError
from im_drivers.report import HostReport, VmReport
from vmm_drivers.base import MachineDriver


def machine_file(config, node_name: str) -> Path:
    return Path(config.state_db).parent / f"fake-{node_name}.json"


def read_machine(config, node_name: str) -> dict:
    path = machine_file(config, node_name)
    if not path.exists():
        return {"power": "off", "vm_id": None, "calls": []}
    return json.loads(path.read_text())


def write_machine(config, node_name: str, data: dict) -> None:
    machine_file(config, node_name).write_text(json.dumps(data))


class FakeDriver(MachineDriver):
    kind = "fake"

    def _update(self, call, **changes):
        data = read_machine(self.config, self.node.name)
        data["calls"].append(call.action)
        data.update(changes)
        write_machine(self.config, self.node.name, data)
        return data

    def deploy(self, call):
        data = read_machine(self.config, self.node.name)
        if data["vm_id"] not in (None, call.vm_id):
            raise BmmError(f"holds VM {data['vm_id']}; refusing VM {call.vm_id}", node=self.node.name)
        self.reporter.info(f"booting VM {call.vm_id}")
        self._update(call, power="on", vm_id=call.vm_id)
        return f"bmm-{self.node.name}-{call.vm_id}"

    def shutdown(self, call):
        self._update(call, power="off")

    def cancel(self, call):
        self._update(call, power="off")

    def reboot(self, call):
        self._update(call, power="on")

    def reset(self, call):
        self.reporter.info(f"resetting VM {call.vm_id}")
        if read_machine(self.config, self.node.name)["power"] != "on":
            raise BmmError("is powered off; nothing to reset", node=self.node.name)
        self._update(call, power="on")

    def poll(self, call):
        data = read_machine(self.config, self.node.name)
        return "STATE=a" if data["power"] == "on" else "STATE=d"

    def tm_delete(self, call):
        if call.disk_id is None:
            self._update(call, vm_id=None, power="off")


class FakeReport(HostReport):
    def vms(self):
        data = read_machine(self.config, self.node.name)
        if data["vm_id"] is None:
            return []
        state = "RUNNING" if data["power"] == "on" else "POWEROFF"
        return [VmReport(data["vm_id"], f"bmm-{self.node.name}-{data['vm_id']}", state,
                         {"CPU": 0, "MEMORY": self.node.memory_mb * 1024})]
