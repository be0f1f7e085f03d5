"""Soft power through the node's OS over ssh, with power status from a BMC when one is set.

- soft_off / off: run `off_command` (default `poweroff`) on the node. Verified by the BMC's
  status when `[nodes.X.power.bmc]` is set (then `off` is the BMC's hard off), else by the
  node's ssh becoming unreachable; the power state is then reported "unknown".
- reset: run `reboot_command` (default `reboot`); verified by the connection dropping and the
  node's ssh answering again (and the BMC showing on, when set).
- on / cycle: need the BMC (an OS that is off cannot be asked to start).
- status: the BMC's, else "unknown". Reachability is a separate signal: reachable().
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from bmm import settings
from bmm.errors import ConfigError, FatalError, TimeoutExpired, TransientError
from bmm.power.base import COMMON_SETTINGS, COMMON_TIMING_KEYS, Power
from bmm.power.ipmi import IPMI_SETTINGS, IpmiPower
from bmm.settings import Setting
from bmm.transport.ssh import SshSession, SshTarget, reachable

# the optional [power.bmc] table: an IPMI BMC for status and power on, with the common timings
BMC_SETTINGS = {**{k: v for k, v in COMMON_SETTINGS.items() if k != "driver"}, **IPMI_SETTINGS}


class SshPower(Power):
    driver = "ssh"
    SETTINGS = {
        **Power.SETTINGS,
        "bmc": Setting(settings.table, "an IPMI BMC for status and power on: the ipmi keys"),
        "off_command": Setting(settings.string_list, 'default ["poweroff"]'),
        "reboot_command": Setting(settings.string_list, 'default ["reboot"]'),
    }

    @classmethod
    def validate(cls, table):
        problems = super().validate(table)
        if isinstance(table.get("bmc"), Mapping):
            problems += settings.check_table(table["bmc"], BMC_SETTINGS, "bmc.")
        return problems

    def __init__(self, node: str, settings: Mapping[str, Any], *, ssh_target: SshTarget | None = None):
        super().__init__(node, settings)
        self.target = ssh_target
        self.off_command: list[str] = list(self.settings.get("off_command", ["poweroff"]))
        self.reboot_command: list[str] = list(self.settings.get("reboot_command", ["reboot"]))
        self.bmc = None
        if self.settings.get("bmc"):
            bmc_settings = {k: v for k, v in self.settings.items() if k in COMMON_TIMING_KEYS}
            bmc_settings.update(self.settings["bmc"])
            self.bmc = IpmiPower(node, bmc_settings)

    @property
    def endpoint(self) -> str:
        if self.target is None:
            return "(no ssh address)"
        return self.target.describe()

    def _target(self) -> SshTarget:
        if self.target is None:
            raise ConfigError("the ssh power driver needs the node's [ssh] table", node=self.node)
        return self.target

    def _secrets(self):
        return self.bmc._secrets() if self.bmc else ()

    # -- signals --------------------------------------------------------------------------------

    def reachable(self, timeout: float = 3.0) -> bool:
        """Does the node's sshd answer? (Not power: an OS can hang with power on.)"""
        return reachable(self._target(), timeout=timeout)

    def status(self) -> str:
        return self.bmc.status() if self.bmc else "unknown"

    # -- actions --------------------------------------------------------------------------------

    def on(self) -> str:
        if self.bmc:
            return self.bmc.on()
        if self.reachable():
            self._log("on: the node's OS answers, so it is on")
            return "on"
        raise self.fatal("cannot power on through ssh (an OS that is off cannot be asked); "
                         "configure [nodes.%s.power.bmc] or switch the node on by hand" % self.node)

    def off(self) -> str:
        if self.bmc:
            return self.bmc.off()
        return self.soft_off()

    def cycle(self) -> str:
        if not self.bmc:
            raise self.fatal("cannot power-cycle through ssh without a BMC; use reset (an OS reboot) "
                             "or configure [nodes.%s.power.bmc]" % self.node)
        self.bmc.off()
        return self.bmc.on()

    def soft_off(self) -> str:
        deadline = time.monotonic() + self.soft_off_timeout_s
        if self.bmc and self.bmc.status() == "off":
            self._log("soft_off: already off")
            return "off"
        target = self._target()
        if not self.bmc and not reachable(target, timeout=min(3.0, self.command_timeout_s)):
            self._log("soft_off: the node's ssh does not answer; nothing to ask (power unknown)")
            return "unknown"
        self._send(self.off_command, deadline)
        if self.bmc:
            return self.bmc._verify("off", deadline, "soft_off")
        self._wait_reachable(False, deadline, "soft_off")
        return "unknown"

    def reset(self) -> str:
        deadline = time.monotonic() + self.timeout_s
        if self.bmc and self.bmc.status() == "off":
            self._log("reset: node is off, powering on through the BMC")
            return self.bmc.on()
        dropped = self._send(self.reboot_command, deadline)
        if not dropped:
            self._wait_reachable(False, deadline, "reset")
        self._wait_reachable(True, deadline, "reset")
        if self.bmc:
            return self.bmc._verify("on", deadline, "reset")
        return "on"

    # -- helpers --------------------------------------------------------------------------------

    def _send(self, argv: list[str], deadline: float) -> bool:
        """Run argv on the node. Returns True when the connection dropped under it (the node is
        going down), False when the command returned. A refused command is fatal."""
        target = self._target()
        timeout = max(0.5, min(self.command_timeout_s, deadline - time.monotonic()))
        session = SshSession(target)
        session.connect()
        try:
            self._log(f"running {' '.join(argv)} on the node")
            try:
                result = session.run(argv, timeout=timeout, check=False)
            except TimeoutExpired:
                return False            # still running as the OS goes down: fine
            except TransientError:
                return True             # link lost: the OS is going down
            if result.returncode != 0 and result.returncode != -1:
                cause = (result.stderr or result.stdout).strip().splitlines()
                raise FatalError(f"{self.what}: `{' '.join(argv)}` failed (exit {result.returncode}): "
                                 f"{cause[-1] if cause else 'no output'}", node=self.node)
            # Wait (briefly) for the node to drop this connection.
            transport = session.client.get_transport()
            until = min(deadline, time.monotonic() + 5.0)
            while time.monotonic() < until:
                if transport is None or not transport.is_active():
                    return True
                time.sleep(0.1)
            return False
        finally:
            session.close()

    def _wait_reachable(self, want: bool, deadline: float, action: str) -> None:
        interval = 0.2
        while True:
            if self.reachable(timeout=min(2.0, max(0.2, deadline - time.monotonic()))) == want:
                return
            if time.monotonic() + interval > deadline:
                state = "answering again" if want else "going down"
                raise TimeoutExpired(f"{self.what}: {action} sent, but the node's ssh was not seen "
                                     f"{state} before the deadline", node=self.node)
            time.sleep(interval)
            interval = min(2.0, interval * 1.5)
