"""The ssh power driver against a lab server: `poweroff`/`reboot` through the server's real
OS (its sshd, the lab's shims), status from its real BMC (ipmi_sim) when one is configured.
Reachability is checked as its own signal."""

from __future__ import annotations

import time

import pytest

from bmm.errors import FatalError
from bmm.inventory import load_node, thaw
from bmm.power import driver_for


@pytest.fixture(autouse=True)
def pace_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("BMM_PACE_DIR", str(tmp_path / "pace"))


@pytest.fixture
def server(lab):
    name = lab.servers[-1]
    lab.wait_ssh(name, up=True, timeout=60)
    yield name
    lab.power(name, "on")
    lab.wait_ssh(name, up=True, timeout=60)


def ssh_power(lab, name, with_bmc: bool):
    node = load_node(name, lab.inventory)
    s = {"driver": "ssh", "timeout_s": 60, "soft_off_timeout_s": 60}
    if with_bmc:
        bmc = thaw(node.power.settings)
        bmc.pop("driver")
        s["bmc"] = {**bmc, "min_interval_s": 0.1}
    return driver_for(name, s, ssh_target=node.ssh.target(name))


def peer_power(lab, name) -> str:
    out = lab.ipmitool(name, "chassis", "power", "status").stdout
    return "on" if "is on" in out else "off"


def test_soft_off_and_reboot_through_the_os_with_a_bmc(lab, server):
    p = ssh_power(lab, server, with_bmc=True)
    assert p.status() == "on" and p.reachable()

    assert p.soft_off() == "off"                  # `poweroff` in the OS, verified by the BMC
    assert peer_power(lab, server) == "off"
    assert not p.reachable()
    assert lab.daemon_status(server)["detail"] == "powered off by the OS"   # not a hard off

    assert p.soft_off() == "off"                  # idempotent
    assert p.on() == "on"                         # on needs the BMC
    lab.wait_ssh(server, up=True, timeout=60)

    t0 = time.monotonic()
    reboots = lab.console(server).count("reboot: Restarting system")
    assert p.reset() == "on"                      # `reboot` in the OS: down, then up again
    assert p.reachable()
    assert lab.console(server).count("reboot: Restarting system") == reboots + 1
    assert time.monotonic() - t0 < 60
    assert peer_power(lab, server) == "on"


def test_without_a_bmc_power_is_unknown_and_reachability_is_separate(lab, server):
    p = ssh_power(lab, server, with_bmc=False)
    assert p.status() == "unknown"
    assert p.reachable()
    reboots = lab.console(server).count("reboot: Restarting system")
    assert p.reset() == "on"                      # reboot: ssh went away and came back
    assert p.reachable()
    assert lab.console(server).count("reboot: Restarting system") == reboots + 1

    assert p.soft_off() == "unknown"              # verified by loss of reachability only
    assert not p.reachable()
    # ssh goes away before the power does: that is why the driver says "unknown", not "off"
    assert lab.wait_state(server, "off", timeout=30)["power"] is False
    assert p.status() == "unknown"
    with pytest.raises(FatalError, match="cannot power on through ssh"):
        p.on()
