"""Turn a host's report into monitord payloads."""

from __future__ import annotations

import time

from bmm.opennebula import monitor, template
from im_drivers.report import HostReport


def beacon() -> str:
    """BEACON_HOST's payload: the time, as the stock `date +%s` probe says it. It needs no
    report: a beacon says the driver is alive, not what the machine is doing."""
    return str(int(time.time()))


def payloads(report: HostReport, types: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    vms = report.vms() if ("STATE_VM" in types or "MONITOR_VM" in types) else []
    for kind in types:
        if kind == "SYSTEM_HOST":
            out[kind] = template.render(report.system_host())
        elif kind == "MONITOR_HOST":
            out[kind] = template.render(report.monitor_host())
        elif kind == "BEACON_HOST":
            out[kind] = beacon()
        elif kind == "STATE_VM":
            lines = [monitor.vm_state_block(v.vm_id, v.deploy_id, v.state) for v in vms]
            out[kind] = "\n".join(lines) + ("\n" if lines else "")
        elif kind == "MONITOR_VM":
            lines = [monitor.vm_monitor_block(v.vm_id, v.deploy_id, v.monitor) for v in vms]
            out[kind] = "\n".join(lines) + ("\n" if lines else "")
    return out
