"""Node power: one interface over BMCs (ipmi), PDU outlets (pdu), the OS (ssh) and people (manual).

    power_for(node) -> Power            # a driver object for an inventory node
    validate_settings(settings) -> [(field, message)]   # checks one [nodes.X.power] table

Every driver offers status() -> "on" | "off" | "unknown", on(), off(), soft_off(), reset(),
cycle(). See docs/power.md.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from bmm.errors import ConfigError

# driver name -> "module:Class"; imported lazily so `bmm nodes validate` needs no pexpect etc.
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

# ---------------------------------------------------------------------------------------------
# The schema of [nodes.X.power]. Each key: (type check, description). Kept as data so that
# docs/power.md, validate_settings() and the drivers agree.

_INT, _NUM, _STR, _BOOL, _LIST = "int", "number", "string", "bool", "list of strings"

COMMON_KEYS: dict[str, str] = {
    "driver": _STR,
    "timeout_s": _NUM,          # deadline for a state change to be seen (default 60)
    "soft_off_timeout_s": _NUM, # the same for soft_off, an OS shutdown (default 300)
    "min_interval_s": _NUM,     # between two commands to the same BMC/PDU (default 1.0)
    "retries": _INT,            # transient failures of one command (default 3)
    "command_timeout_s": _NUM,  # deadline of one command (default 15)
}

IPMI_KEYS: dict[str, str] = {
    "host": _STR,
    "port": _INT,               # default 623
    "user": _STR,
    "password_file": _STR,      # mode 0600, refused if group/world accessible
    "password_via": _STR,       # "file" (ipmitool -f, default) | "env" (ipmitool -E)
    "interface": _STR,          # lanplus (default) | lan
    "cipher_suite": _INT,       # default 3
    "privilege": _STR,          # ADMINISTRATOR (default) | OPERATOR | USER
}

PDU_KEYS: dict[str, str] = {
    "host": _STR,
    "port": _INT,               # default 23 (telnet) / 22 (ssh)
    "protocol": _STR,           # telnet (default) | ssh
    "user": _STR,
    "password_file": _STR,
    "outlet": _INT,
    "dialect": _STR,            # default "apc"; see bmm/power/dialects.py
    "dialects_file": _STR,      # extra dialects: a TOML file, one [name] table each
    "reboot_delay_s": _NUM,     # off->on delay when the dialect has no reboot command
    "known_hosts": _STR,        # ssh protocol: host keys file
    "host_key_policy": _STR,    # ssh protocol: accept-new (default) | strict | ignore
}

SSH_KEYS: dict[str, str] = {
    "bmc": "table",             # optional IPMI BMC for status/on: the ipmi keys
    "off_command": _LIST,       # default ["poweroff"]
    "reboot_command": _LIST,    # default ["reboot"]
}

MANUAL_KEYS: dict[str, str] = {
    "instructions": _STR,       # extra text shown to the operator
}

DRIVER_KEYS = {"ipmi": IPMI_KEYS, "pdu": PDU_KEYS, "ssh": SSH_KEYS, "manual": MANUAL_KEYS}
REQUIRED = {
    "ipmi": ("host", "user", "password_file"),
    "pdu": ("host", "user", "password_file", "outlet"),
    "ssh": (),
    "manual": (),
}
CHOICES = {
    "interface": ("lanplus", "lan"),
    "password_via": ("file", "env"),
    "privilege": ("ADMINISTRATOR", "OPERATOR", "USER"),
    "protocol": ("telnet", "ssh"),
    "host_key_policy": ("accept-new", "strict", "ignore"),
}


def _type_ok(kind: str, value: Any) -> bool:
    if kind == _INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == _NUM:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == _STR:
        return isinstance(value, str)
    if kind == _BOOL:
        return isinstance(value, bool)
    if kind == _LIST:
        return isinstance(value, (list, tuple)) and bool(value) and all(isinstance(v, str) and v for v in value)
    if kind == "table":
        return isinstance(value, Mapping)
    return False


def _check_table(settings: Mapping[str, Any], keys: dict[str, str], required, prefix: str,
                 errors: list[tuple[str, str]]) -> None:
    for key, value in settings.items():
        field = prefix + key
        if key not in keys:
            errors.append((field, f"unknown key (known: {', '.join(sorted(keys))})"))
            continue
        kind = keys[key]
        if not _type_ok(kind, value):
            errors.append((field, f"must be a {kind}, not {type(value).__name__}"))
            continue
        if key in CHOICES and value not in CHOICES[key]:
            errors.append((field, f"must be one of {', '.join(CHOICES[key])}, not {value!r}"))
        elif key in ("port",) and not 0 < value < 65536:
            errors.append((field, "must be a TCP/UDP port (1-65535)"))
        elif key == "outlet" and value < 1:
            errors.append((field, "must be an outlet number (1 or more)"))
        elif key == "cipher_suite" and not 0 <= value <= 17:
            errors.append((field, "must be an IPMI cipher suite id (0-17)"))
        elif key in ("timeout_s", "soft_off_timeout_s", "command_timeout_s") and value <= 0:
            errors.append((field, "must be greater than 0"))
        elif key in ("min_interval_s", "retries", "reboot_delay_s") and value < 0:
            errors.append((field, "must not be negative"))
        elif kind == _STR and key in ("host", "user", "password_file") and not value.strip():
            errors.append((field, "must not be empty"))
    for key in required:
        if key not in settings:
            errors.append((prefix + key, "is required"))


def validate_settings(settings: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Check one `[nodes.X.power]` table. Returns [(field, message)], empty when valid.

    Fields are relative to the power table ("host", "bmc.password_file"). Only the shape is
    checked here; files (password_file exists, mode 0600) are checked when a driver uses them,
    so an inventory can be validated on a machine without the secrets.
    """
    errors: list[tuple[str, str]] = []
    if not isinstance(settings, Mapping):
        return [("", "must be a table")]
    driver = settings.get("driver")
    if driver is None:
        return [("driver", f"is required (one of {', '.join(DRIVERS)})")]
    if driver not in DRIVERS:
        hint = " (redfish is not built yet)" if driver == "redfish" else ""
        return [("driver", f"unknown power driver {driver!r}{hint}; known: {', '.join(DRIVERS)}")]
    keys = {**COMMON_KEYS, **DRIVER_KEYS[driver]}
    _check_table(settings, keys, REQUIRED[driver], "", errors)
    if driver == "pdu" and "dialect" in settings and "dialects_file" not in settings \
            and isinstance(settings["dialect"], str):
        from bmm.power.pdu import builtin_dialect_names
        names = builtin_dialect_names()
        if settings["dialect"] not in names:
            errors.append(("dialect", f"unknown PDU dialect {settings['dialect']!r}; "
                                      f"known: {', '.join(names)} (or set dialects_file)"))
    if driver == "ssh" and isinstance(settings.get("bmc"), Mapping):
        bmc = settings["bmc"]
        _check_table(bmc, {k: v for k, v in {**COMMON_KEYS, **IPMI_KEYS}.items() if k != "driver"},
                     REQUIRED["ipmi"], "bmc.", errors)
    return errors


def power_for(node: Any):
    """The power driver for an inventory node (anything with .name and .power.driver/.settings,
    or .power as a plain dict). Raises ConfigError for an invalid table."""
    name = getattr(node, "name", None) or str(node)
    power = getattr(node, "power", None)
    if power is None:
        raise ConfigError("has no [power] table in the inventory", node=name)
    if isinstance(power, Mapping):
        settings = _plain(power)
    else:
        settings = _plain(getattr(power, "settings", None) or {})
        settings.setdefault("driver", getattr(power, "driver", None))
    ssh_target = None
    ssh = getattr(node, "ssh", None)
    if settings.get("driver") == "ssh" and ssh is not None and hasattr(ssh, "target"):
        ssh_target = ssh.target(name)   # ConfigError when the node has no ssh address
    return driver_for(name, settings, ssh_target=ssh_target)


def _plain(value: Any) -> Any:
    """Read-only inventory values (mapping proxies, tuples) as plain dicts and lists."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def driver_for(node_name: str, settings: Mapping[str, Any], *, ssh_target=None):
    """The power driver for a node name and its `[nodes.X.power]` table."""
    errors = validate_settings(settings)
    if errors:
        field, message = errors[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ConfigError(f"power.{field} {message}{more}", node=node_name)
    module_name, cls_name = DRIVERS[settings["driver"]].split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    if settings["driver"] == "ssh":
        return cls(node_name, settings, ssh_target=ssh_target)
    return cls(node_name, settings)
