"""Settings declared on the parts that use them, and the one vocabulary that checks them.

Each machine part (a power driver, a boot method, a disk, a transport) declares the keys of its
inventory table as `SETTINGS = {key: Setting(check, doc, required=...)}`, the way MAAS power
drivers declare theirs. The inventory checks every table against its part's declaration with
`check_table`, once, and never touches a machine doing so (Ironic's validate() rule): a
problem is `(field, message)`, and an unknown key gets a "did you mean".

A checker takes a value and returns None when it is good, else what is wrong with it.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

Checker = Callable[[Any], str | None]
Problems = list[tuple[str, str]]

MAC_RE = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$")
LVM_NAME_RE = re.compile(r"^[A-Za-z0-9+_.][A-Za-z0-9+_.-]{0,126}$")
HOSTNAME_RE = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                         r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


@dataclass(frozen=True)
class Setting:
    check: Checker
    doc: str = ""
    required: bool = False


def type_name(value: Any) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "a boolean",
            list: "an array", dict: "a table"}.get(type(value), type(value).__name__)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# ------------------------------------------------------------------------------ checkers

def string(value: Any) -> str | None:
    if not isinstance(value, str):
        return f"must be a string, not {type_name(value)}"
    if not value.strip():
        return "must not be empty"
    return None


def positive_int(value: Any) -> str | None:
    if not is_int(value):
        return f"must be a positive integer, not {type_name(value)}"
    if value <= 0:
        return f"must be a positive integer, not {value}"
    return None


def non_negative_int(value: Any) -> str | None:
    if not is_int(value) or value < 0:
        return f"must be an integer of 0 or more, not {value!r}"
    return None


def port(value: Any) -> str | None:
    if not is_int(value) or not 1 <= value <= 65535:
        return f"must be a TCP/UDP port (1-65535), not {value!r}"
    return None


def positive_number(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        return f"must be a positive number, not {value!r}"
    return None


def non_negative_number(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        return f"must be a number of 0 or more, not {value!r}"
    return None


def abs_path(value: Any) -> str | None:
    error = string(value)
    if error:
        return error
    if not value.startswith("/"):
        return f"must be an absolute path, not {value!r}"
    return None


def ip(value: Any) -> str | None:
    if not isinstance(value, str):
        return f"must be an IP address string, not {type_name(value)}"
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return f"{value!r} is not an IP address"
    return None


def host(value: Any) -> str | None:
    """An IP address or a DNS name (never something that could be read as an option)."""
    if not isinstance(value, str):
        return f"must be a host name or IP address, not {type_name(value)}"
    try:
        ipaddress.ip_address(value)
        return None
    except ValueError:
        pass
    if not HOSTNAME_RE.match(value) or value.replace(".", "").isdigit():
        return f"{value!r} is not a host name or IP address"
    return None


def mac(value: Any) -> str | None:
    if not isinstance(value, str) or not MAC_RE.match(value):
        return f"{value!r} is not a MAC address (six hex pairs separated by ':')"
    return None


def lvm_name(value: Any) -> str | None:
    error = string(value)
    if error:
        return error
    if not LVM_NAME_RE.match(value) or value in (".", ".."):
        return f"{value!r} is not a valid LVM name (letters, digits, + _ . -)"
    return None


def board(value: Any) -> str | None:
    if is_int(value) and value >= 0:
        return None
    if isinstance(value, str) and re.match(r"^[A-Za-z0-9_-]+$", value):
        return None
    return f"must be a board id (a non-negative integer or letters/digits), not {value!r}"


def string_list(value: Any) -> str | None:
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, str) and v for v in value):
        return "must be a non-empty list of strings"
    return None


def boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else f"must be true or false, not {type_name(value)}"


def command_list(value: Any) -> str | None:
    """An array of commands, each an array of words: [["ifconfig", "eth0", "up"], ...]."""
    if not isinstance(value, (list, tuple)) or any(string_list(c) for c in value):
        return 'must be an array of commands, each an array of words ([["cmd", "arg"], ...])'
    return None


def choice(*choices: str) -> Checker:
    def check(value: Any) -> str | None:
        if value not in choices:
            return f"must be one of {', '.join(choices)}, not {value!r}"
        return None
    return check


def table(value: Any) -> str | None:
    return None if isinstance(value, Mapping) else f"must be a table, not {type_name(value)}"


# ------------------------------------------------------------------------------ tables

def is_secret_key(key: str) -> bool:
    k = key.lower()
    return k in ("password", "passwd", "secret") or k.endswith("_password") or k.endswith("_secret")


def unknown_key(key: str, known) -> str:
    import difflib  # only for a misspelt key: not on every driver run's import path

    hint = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    if hint:
        return f"unknown key (did you mean {hint[0]!r}?)"
    return f"unknown key (known here: {', '.join(sorted(known))})"


SECRET_MESSAGE = "secrets only by password_file (a file readable by oneadmin only, mode 0600)"


def check_table(values: Mapping[str, Any], schema: Mapping[str, Setting], prefix: str = "", *,
                skip: tuple[str, ...] = ()) -> Problems:
    """Every problem of one table against its schema: unknown keys (a secret-looking one is
    told where secrets go), bad values, missing required keys."""
    problems: Problems = []
    for key, value in values.items():
        if key in skip:
            continue
        setting = schema.get(key)
        if setting is None:
            problems.append((prefix + key, f"unknown key: {SECRET_MESSAGE}" if is_secret_key(key)
                             else unknown_key(key, [*schema, *skip])))
            continue
        error = setting.check(value)
        if error:
            problems.append((prefix + key, error))
    for key, setting in schema.items():
        if setting.required and key not in values:
            problems.append((prefix + key, "is required"))
    return problems
