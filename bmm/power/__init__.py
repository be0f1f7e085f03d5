"""Node power: one interface over BMCs (ipmi), PDU outlets (pdu), the OS (ssh) and people (manual).

    power_for(node) -> Power            # a driver object for an inventory node
    validate_settings(settings) -> [(field, message)]   # checks one [nodes.X.power] table

Every driver offers status() -> "on" | "off" | "unknown", on(), off(), soft_off(), reset(),
cycle(). See docs/power.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from bmm.errors import ConfigError

# driver name -> "module:Class"; imported on first use (pexpect only when a PDU is driven).
DRIVERS = {
    "ipmi": "bmm.power.ipmi:IpmiPower",
    "pdu": "bmm.power.pdu:PduPower",
    "ssh": "bmm.power.ssh:SshPower",
    "manual": "bmm.power.manual:ManualPower",
}


class PowerState(StrEnum):
    """What a BMC/PDU says. Power is one signal; whether an OS answers is another."""

    ON = "on"
    OFF = "off"
    UNKNOWN = "unknown"


POWER_STATES = tuple(PowerState)


def driver_class(name: str):
    from bmm.plugins import load
    from bmm.power.base import Power

    return load(DRIVERS[name], Power, what=f"power driver {name}")


def validate_settings(settings: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Check one `[nodes.X.power]` table against what its driver declares (Power.SETTINGS and
    the driver's own validate()). Returns [(field, message)], empty when valid.

    Fields are relative to the power table ("host", "bmc.password_file"). Only the shape is
    checked; files (password_file exists, mode 0600) are checked when a driver uses them, so
    an inventory can be validated on a machine without the secrets. Nothing is contacted."""
    if not isinstance(settings, Mapping):
        return [("", "must be a table")]
    driver = settings.get("driver")
    if driver is None:
        return [("driver", f"missing (required: one of {', '.join(DRIVERS)})")]
    if driver not in DRIVERS:
        hint = " (redfish is not built yet)" if driver == "redfish" else ""
        return [("driver", f"unknown power driver {driver!r}{hint}; known: {', '.join(DRIVERS)}")]
    return driver_class(driver).validate(settings)


def power_for(node: Any):
    """The power driver for an inventory node, whose settings the inventory checked already
    (anything with .name and .power.settings, or .power as a plain dict, which is checked)."""
    name = getattr(node, "name", None) or str(node)
    power = getattr(node, "power", None)
    if power is None:
        raise ConfigError("has no [power] table in the inventory", node=name)
    checked = not isinstance(power, Mapping)
    settings = _plain(power if not checked else getattr(power, "settings", None) or {})
    if checked:
        settings.setdefault("driver", getattr(power, "driver", None))
    ssh_target = None
    ssh = getattr(node, "ssh", None)
    if settings.get("driver") == "ssh" and ssh is not None and hasattr(ssh, "target"):
        ssh_target = ssh.target(name)   # ConfigError when the node has no ssh address
    return driver_for(name, settings, ssh_target=ssh_target, checked=checked)


def _plain(value: Any) -> Any:
    """Read-only inventory values (mapping proxies, tuples) as plain dicts and lists."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def driver_for(node_name: str, settings: Mapping[str, Any], *, ssh_target=None, checked: bool = False):
    """The power driver for a node name and its `[nodes.X.power]` table (checked here unless
    the inventory checked it already)."""
    if not checked:
        errors = validate_settings(settings)
        if errors:
            field, message = errors[0]
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            raise ConfigError(f"power.{field} {message}{more}", node=node_name)
    cls = driver_class(settings["driver"])
    if settings["driver"] == "ssh":
        return cls(node_name, settings, ssh_target=ssh_target)
    return cls(node_name, settings)
