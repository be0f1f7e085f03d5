"""The node inventory: one TOML file, one table per node, keyed by OpenNebula host name.

`load_inventory()` returns read-only dataclasses or raises ConfigError; `validate_inventory()`
collects every problem (file, node, field, message) so `bmm nodes validate` can name them all.
Unknown keys are problems, never silently ignored: a typo must not turn into a default.

The file format is documented in docs/inventory.md. The per-section key tables below
(SSH_KEYS, BOOT_KEYS, STORAGE_KEYS) are the single place to extend it.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from bmm.config import Config, load_config, resolve_path
from bmm.errors import ConfigError, NotInInventory

KINDS = ("localdisk", "netboot")
BOOT_METHODS = {"localdisk": ("grub",), "netboot": ("nfsroot", "tftp2stage")}
# Used only while bmm.power (which owns power validation) cannot be imported.
FALLBACK_POWER_DRIVERS = ("ipmi", "pdu", "ssh", "manual")
HOST_KEY_POLICIES = ("accept-new", "strict", "ignore")

NODE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MAC_RE = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$")
LVM_NAME_RE = re.compile(r"^[A-Za-z0-9+_.][A-Za-z0-9+_.-]{0,126}$")
HOSTNAME_RE = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                         r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
SECRET_MESSAGE = "secrets only by password_file (a file readable by oneadmin only, mode 0600)"


# --------------------------------------------------------------------------- the model

def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """A frozen value back into plain dicts and lists (for JSON or TOML output)."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [thaw(v) for v in value]
    return value


@dataclass(frozen=True)
class SshSettings:
    """How bmm reaches the node's own OS (home OS of a localdisk node, or a booted board)."""

    address: str | None = None
    port: int = 22
    user: str = "root"
    key: str | None = None
    known_hosts: str | None = None
    host_key_policy: str = "accept-new"
    connect_timeout_s: float = 10.0

    def target(self, node_name: str):
        """The transport target for this node (bmm.transport.ssh.SshTarget)."""
        from bmm.transport.ssh import SshTarget

        if not self.address:
            raise ConfigError("has no ssh address (set ip or ssh.address in the inventory)",
                              node=node_name)
        return SshTarget(host=self.address, port=self.port, user=self.user, key_file=self.key,
                         known_hosts=self.known_hosts, host_key_policy=self.host_key_policy,
                         connect_timeout=self.connect_timeout_s, node=node_name)


@dataclass(frozen=True)
class PowerSettings:
    """`driver` plus the whole [power] table (driver included), read-only, for bmm.power."""

    driver: str
    settings: Mapping[str, Any]


@dataclass(frozen=True)
class BootSettings:
    """`method` plus the whole [boot] table (method included), read-only, for bmm.boot."""

    method: str
    settings: Mapping[str, Any]

    def get(self, key: str, default: Any = None) -> Any:
        return self.settings.get(key, default)


@dataclass(frozen=True)
class StorageSettings:
    """The [storage] table: `vg` (required for localdisk) and the rest, read-only."""

    vg: str | None = None
    settings: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def get(self, key: str, default: Any = None) -> Any:
        return self.settings.get(key, default)


@dataclass(frozen=True)
class Node:
    name: str
    kind: str
    arch: str
    model: str | None
    cpus: int
    memory_mb: int
    disk_gb: int | None
    macs: tuple[str, ...]
    ip: str | None
    ssh: SshSettings
    power: PowerSettings
    boot: BootSettings | None      # None only for a bmm.toml [kinds] kind without [boot]
    storage: StorageSettings
    hardware: Mapping[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-able). Never holds a secret: the inventory only names files."""
        return {
            "name": self.name, "kind": self.kind, "arch": self.arch, "model": self.model,
            "cpus": self.cpus, "memory_mb": self.memory_mb, "disk_gb": self.disk_gb,
            "macs": list(self.macs), "ip": self.ip,
            "ssh": {"address": self.ssh.address, "port": self.ssh.port, "user": self.ssh.user,
                    "key": self.ssh.key, "known_hosts": self.ssh.known_hosts,
                    "host_key_policy": self.ssh.host_key_policy,
                    "connect_timeout_s": self.ssh.connect_timeout_s},
            "power": thaw(self.power.settings),
            "boot": thaw(self.boot.settings) if self.boot else {},
            "storage": thaw(self.storage.settings),
            "hardware": thaw(self.hardware),
        }


@dataclass(frozen=True)
class Inventory:
    path: Path
    nodes: Mapping[str, Node]
    problems: tuple["Problem", ...] = ()

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes.values())

    def __len__(self) -> int:
        return len(self.nodes)

    def __contains__(self, name: object) -> bool:
        return name in self.nodes

    def names(self) -> list[str]:
        return list(self.nodes)

    def get(self, name: str) -> Node:
        try:
            return self.nodes[name]
        except KeyError:
            pass
        mine = [p for p in self.problems if p.node == name]
        if mine:
            more = f" (and {len(mine) - 1} more; run `bmm nodes validate`)" if len(mine) > 1 else ""
            raise ConfigError(f"inventory {mine[0]}{more}")
        raise NotInInventory(f"node {name} is not in the inventory {self.path}")


@dataclass(frozen=True)
class Problem:
    file: str
    node: str | None
    field: str | None
    message: str

    def __str__(self) -> str:
        return ": ".join(p for p in (self.file, self.node, self.field, self.message) if p)


# --------------------------------------------------------------------------- path resolution

def inventory_path(explicit: str | os.PathLike | None = None, *, config: Config | None = None) -> Path:
    """--inventory > $BMM_INVENTORY > bmm config `inventory` (default /etc/one/bmm/nodes.toml)."""
    return resolve_path(explicit, "BMM_INVENTORY", "inventory", config)


# --------------------------------------------------------------------------- checking

class _Checker:
    """Typed getters that record a Problem instead of raising."""

    def __init__(self, file: str, node: str | None):
        self.file = file
        self.node = node
        self.problems: list[Problem] = []

    def add(self, field: str | None, message: str) -> None:
        self.problems.append(Problem(self.file, self.node, field, message))

    def unknown_keys(self, table: Mapping, known: Iterator[str] | list[str], prefix: str = "") -> None:
        known = list(known)
        for key in table:
            if key in known:
                continue
            if _is_secret_key(key):
                continue  # reported by secrets()
            hint = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            if hint:
                self.add(prefix + key, f"unknown key (did you mean {hint[0]!r}?)")
            else:
                self.add(prefix + key, f"unknown key (known here: {', '.join(sorted(known))})")

    def secrets(self, table: Any, prefix: str) -> None:
        if isinstance(table, Mapping):
            for key, value in table.items():
                if _is_secret_key(key):
                    self.add(prefix + key, SECRET_MESSAGE)
                else:
                    self.secrets(value, f"{prefix}{key}.")
        elif isinstance(table, list):
            for i, value in enumerate(table):
                self.secrets(value, f"{prefix[:-1]}[{i}].")

    def value(self, table: Mapping, key: str, prefix: str, check: Callable[[Any], str | None],
              *, required: bool = False, default: Any = None) -> Any:
        if key not in table:
            if required:
                self.add(prefix + key, "missing (required)")
            return default
        value = table[key]
        error = check(value)
        if error:
            self.add(prefix + key, error)
            return default
        return value

    def table(self, table: Mapping, key: str, prefix: str, *, required: bool = False) -> Mapping | None:
        if key not in table:
            if required:
                self.add(prefix + key, f"missing (required: a [{key}] table)")
            return None
        value = table[key]
        if not isinstance(value, Mapping):
            self.add(prefix + key, f"must be a table, not {_type_name(value)}")
            return None
        return value


def _is_secret_key(key: str) -> bool:
    k = key.lower()
    return k in ("password", "passwd", "secret") or k.endswith("_password") or k.endswith("_secret")


def _type_name(value: Any) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "a boolean",
            list: "an array", dict: "a table"}.get(type(value), type(value).__name__)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_string(value: Any) -> str | None:
    if not isinstance(value, str):
        return f"must be a string, not {_type_name(value)}"
    if not value.strip():
        return "must not be empty"
    return None


def check_positive_int(value: Any) -> str | None:
    if not _is_int(value):
        return f"must be a positive integer, not {_type_name(value)}"
    if value <= 0:
        return f"must be a positive integer, not {value}"
    return None


def check_port(value: Any) -> str | None:
    if not _is_int(value) or not 1 <= value <= 65535:
        return f"must be a TCP port (1-65535), not {value!r}"
    return None


def check_positive_number(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        return f"must be a positive number, not {value!r}"
    return None


def check_abs_path(value: Any) -> str | None:
    error = check_string(value)
    if error:
        return error
    if not value.startswith("/"):
        return f"must be an absolute path, not {value!r}"
    return None


def check_ip(value: Any) -> str | None:
    if not isinstance(value, str):
        return f"must be an IP address string, not {_type_name(value)}"
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return f"{value!r} is not an IP address"
    return None


def check_host(value: Any) -> str | None:
    """An IP address or a DNS name."""
    if not isinstance(value, str):
        return f"must be a host name or IP address, not {_type_name(value)}"
    try:
        ipaddress.ip_address(value)
        return None
    except ValueError:
        pass
    if not HOSTNAME_RE.match(value) or value.replace(".", "").isdigit():
        return f"{value!r} is neither an IP address nor a host name"
    return None


def check_mac(value: Any) -> str | None:
    if not isinstance(value, str) or not MAC_RE.match(value):
        return f"{value!r} is not a MAC address (six hex pairs separated by ':')"
    return None


def check_choice(*choices: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if value not in choices:
            return f"{value!r} is not one of: {', '.join(choices)}"
        return None
    return check


def check_lvm_name(value: Any) -> str | None:
    error = check_string(value)
    if error:
        return error
    if not LVM_NAME_RE.match(value) or value in (".", ".."):
        return f"{value!r} is not a valid LVM name (letters, digits, + _ . -)"
    return None


def check_board(value: Any) -> str | None:
    if _is_int(value) and value >= 0:
        return None
    if isinstance(value, str) and re.match(r"^[A-Za-z0-9_-]+$", value):
        return None
    return f"must be a board id (a non-negative integer or letters/digits), not {value!r}"


SSH_KEYS: dict[str, Callable[[Any], str | None]] = {
    "address": check_host,
    "port": check_port,
    "user": check_string,
    "key": check_abs_path,
    "known_hosts": check_abs_path,
    "host_key_policy": check_choice(*HOST_KEY_POLICIES),
    "connect_timeout_s": check_positive_number,
}

# Keys each boot method accepts besides `method`. The boot package reads them.
BOOT_KEYS: dict[str, dict[str, Callable[[Any], str | None]]] = {
    "grub": {
        "boot_dir": check_abs_path,       # the node's boot directory (holds grub/grubenv)
        "home_entry": check_string,       # id or title of the home OS menu entry
    },
    "nfsroot": {
        "tftp_root": check_abs_path,      # where the kernels live on the proxy
        "nfs_root": check_abs_path,       # parent of fs_<board>
        "nfs_server": check_host,         # address the board mounts its root from
        "tile_monitor": check_abs_path,   # path of tile-monitor on the proxy
        "board": check_board,             # board id in file names (fs_<board>); default: name
    },
    "tftp2stage": {
        "tftp_root": check_abs_path,
        "tile_monitor": check_abs_path,
        "board": check_board,             # vmlinux_<board>_1, vmlinux_<board>_2
        "rootfs_device": check_abs_path,  # where stage 1 unpacks the root fs (/dev/sda1)
    },
}

STORAGE_KEYS: dict[str, Callable[[Any], str | None]] = {
    "vg": check_lvm_name,                 # the volume group instance disks are carved from
    "lv_prefix": check_lvm_name,          # logical volume name prefix
}

NODE_KEYS = ("kind", "arch", "model", "cpus", "memory_mb", "disk_gb", "macs", "ip",
             "ssh", "power", "boot", "storage", "hardware")


def _power_validator() -> Callable[[dict], list[tuple[str, str]]] | None:
    """bmm.power.validate_settings when the power package provides it."""
    try:
        from bmm.power import validate_settings  # type: ignore[attr-defined]
    except ModuleNotFoundError as exc:
        if exc.name not in ("bmm.power",):
            raise
        return None
    except ImportError:
        return None
    return validate_settings


def _check_power(c: _Checker, power: Mapping) -> PowerSettings | None:
    prefix = "power."
    validator = _power_validator()
    driver = power.get("driver")
    if validator is None:
        driver = c.value(power, "driver", prefix, check_choice(*FALLBACK_POWER_DRIVERS), required=True)
    else:
        if "driver" not in power:
            c.add(prefix + "driver", "missing (required)")
        already = {p.field for p in c.problems}
        try:
            found = validator(thaw(power))
        except Exception as exc:  # a validator bug must not hide the rest of the report
            found = [("driver", f"power settings could not be checked ({type(exc).__name__}: {exc})")]
        for where, message in found or []:
            where = str(where or "")
            if not where.startswith("power"):
                where = prefix + where if where else "power"
            if where in already:
                continue  # already reported (a secret key, a missing driver)
            c.add(where, str(message))
    if not isinstance(driver, str):
        return None
    return PowerSettings(driver=driver, settings=_freeze(dict(power)))


def _check_node(file: str, name: str, raw: Any,
                extra_kinds: tuple[str, ...] = ()) -> tuple[Node | None, list[Problem]]:
    c = _Checker(file, name)
    if not NODE_NAME_RE.match(name):
        c.add(None, "node name must be an OpenNebula host name (letters, digits, . _ -)")
    if not isinstance(raw, Mapping):
        c.add(None, f"must be a table ([nodes.{name}]), not {_type_name(raw)}")
        return None, c.problems

    c.unknown_keys(raw, NODE_KEYS)
    c.secrets(raw, "")

    kinds = (*KINDS, *[k for k in extra_kinds if k not in KINDS])
    kind = c.value(raw, "kind", "", check_choice(*kinds), required=True)
    if "kind" in raw and kind is None and isinstance(raw["kind"], str):
        c.problems[-1] = Problem(file, name, "kind", f"{raw['kind']!r} is not one of: {', '.join(kinds)} "
                                                     "(other kinds are added in bmm.toml [kinds])")
    builtin = kind in KINDS
    arch = c.value(raw, "arch", "", check_string, required=True)
    model = c.value(raw, "model", "", check_string)
    cpus = c.value(raw, "cpus", "", check_positive_int, required=True)
    memory_mb = c.value(raw, "memory_mb", "", check_positive_int, required=True)
    disk_gb = c.value(raw, "disk_gb", "", check_positive_int, required=(kind == "localdisk"))
    ip = c.value(raw, "ip", "", check_ip)

    macs: list[str] = []
    raw_macs = raw.get("macs")
    if raw_macs is None:
        c.add("macs", "missing (required: the NICs' MAC addresses, in NIC order)")
    elif not isinstance(raw_macs, list) or not raw_macs:
        c.add("macs", "must be a non-empty array of MAC addresses")
    else:
        for i, mac in enumerate(raw_macs):
            error = check_mac(mac)
            if error:
                c.add(f"macs[{i}]", error)
            elif mac.lower() in macs:
                c.add(f"macs[{i}]", f"{mac} is listed twice")
            else:
                macs.append(mac.lower())

    # ssh
    ssh_raw = c.table(raw, "ssh", "") or {}
    c.unknown_keys(ssh_raw, SSH_KEYS, "ssh.")
    ssh_values = {key: c.value(ssh_raw, key, "ssh.", check) for key, check in SSH_KEYS.items()}
    address = ssh_values["address"] or ip
    if kind == "localdisk" and not address and "address" not in ssh_raw:
        c.add("ssh.address", "missing: a localdisk node needs ssh.address or ip (bmm drives its home OS over ssh)")
    ssh = SshSettings(
        address=address,
        port=ssh_values["port"] or 22,
        user=ssh_values["user"] or "root",
        key=ssh_values["key"],
        known_hosts=ssh_values["known_hosts"],
        host_key_policy=ssh_values["host_key_policy"] or "accept-new",
        connect_timeout_s=float(ssh_values["connect_timeout_s"] or 10.0),
    )

    # power
    power = None
    power_raw = c.table(raw, "power", "", required=True)
    if power_raw is not None:
        power = _check_power(c, power_raw)

    # boot
    boot = None
    boot_raw = c.table(raw, "boot", "", required=builtin)
    if boot_raw is not None:
        allowed_methods = BOOT_METHODS.get(kind, tuple(BOOT_KEYS)) if kind else tuple(BOOT_KEYS)
        method = boot_raw.get("method")
        if method is None:
            c.add("boot.method", f"missing (required: {' | '.join(allowed_methods)})")
        elif method not in BOOT_KEYS:
            c.add("boot.method", f"{method!r} is not one of: {', '.join(BOOT_KEYS)}")
            method = None
        elif kind and method not in allowed_methods:
            c.add("boot.method", f"{method!r} does not fit kind {kind!r} "
                                 f"({kind} boots by {' | '.join(allowed_methods)})")
        if method in BOOT_KEYS:
            keys = BOOT_KEYS[method]
            c.unknown_keys(boot_raw, ["method", *keys], "boot.")
            for key, check in keys.items():
                c.value(boot_raw, key, "boot.", check)
            boot = BootSettings(method=method, settings=_freeze(dict(boot_raw)))

    # storage
    storage_raw = c.table(raw, "storage", "")
    if storage_raw is not None and kind == "netboot":
        c.add("storage", "netboot nodes have no [storage] table (their root is served by the proxy)")
        storage_raw = None
    vg = None
    if storage_raw is not None:
        c.unknown_keys(storage_raw, STORAGE_KEYS, "storage.")
        for key, check in STORAGE_KEYS.items():
            value = c.value(storage_raw, key, "storage.", check)
            if key == "vg":
                vg = value
    if kind == "localdisk" and "vg" not in (storage_raw or {}):
        c.add("storage.vg", "missing: a localdisk node needs the LVM volume group for instance disks")
    storage = StorageSettings(vg=vg, settings=_freeze(dict(storage_raw or {})))

    hardware_raw = c.table(raw, "hardware", "") or {}

    if c.problems or None in (kind, arch, cpus, memory_mb, power) or (builtin and boot is None):
        return None, c.problems
    return Node(name=name, kind=kind, arch=arch, model=model, cpus=cpus, memory_mb=memory_mb,
                disk_gb=disk_gb, macs=tuple(macs), ip=ip, ssh=ssh, power=power, boot=boot,
                storage=storage, hardware=_freeze(dict(hardware_raw))), []


def check_inventory_data(data: Mapping, file: str,
                         extra_kinds: tuple[str, ...] = ()) -> tuple[dict[str, Node], list[Problem]]:
    """Check parsed TOML: every problem, and the nodes that passed.

    extra_kinds: kinds added in bmm.toml `[kinds]`. Their nodes need no [boot] or [storage]
    (their driver decides); when present, those tables are checked as usual."""
    problems: list[Problem] = []
    for key in data:
        if key != "nodes":
            hint = difflib.get_close_matches(key, ["nodes"], n=1)
            problems.append(Problem(file, None, key, "unknown top-level key"
                                    + (" (did you mean 'nodes'?)" if hint else " (only [nodes.<name>] tables)")))
    nodes_raw = data.get("nodes", {})
    if not isinstance(nodes_raw, Mapping):
        problems.append(Problem(file, None, "nodes", "must be a table of [nodes.<name>] tables"))
        return {}, problems

    nodes: dict[str, Node] = {}
    for name, raw in nodes_raw.items():
        node, node_problems = _check_node(file, name, raw, tuple(extra_kinds))
        problems.extend(node_problems)
        if node is not None:
            nodes[name] = node

    # Across nodes: a MAC or IP belongs to one machine.
    seen_mac: dict[str, str] = {}
    seen_ip: dict[str, str] = {}
    for name, raw in nodes_raw.items():
        if not isinstance(raw, Mapping):
            continue
        raw_macs = raw.get("macs") if isinstance(raw.get("macs"), list) else []
        for i, mac in enumerate(raw_macs):
            if isinstance(mac, str) and MAC_RE.match(mac):
                other = seen_mac.setdefault(mac.lower(), name)
                if other != name:
                    problems.append(Problem(file, name, f"macs[{i}]", f"{mac} is also the MAC of node {other}"))
        ip = raw.get("ip")
        if isinstance(ip, str) and check_ip(ip) is None:
            other = seen_ip.setdefault(str(ipaddress.ip_address(ip)), name)
            if other != name:
                problems.append(Problem(file, name, "ip", f"{ip} is also the IP of node {other}"))
    for p in problems:
        if p.node in nodes:
            del nodes[p.node]
    return nodes, problems


def _read(path: Path) -> tuple[Mapping | None, list[Problem]]:
    file = str(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None, [Problem(file, None, None, "file does not exist")]
    except OSError as exc:
        return None, [Problem(file, None, None, f"cannot read: {exc.strerror}")]
    try:
        return tomllib.loads(text), []
    except tomllib.TOMLDecodeError as exc:
        return None, [Problem(file, None, None, f"not valid TOML: {exc}")]


def _extra_kinds(extra_kinds: tuple[str, ...] | None) -> tuple[str, ...]:
    if extra_kinds is not None:
        return tuple(extra_kinds)
    return tuple(load_config().kinds)


def validate_inventory(path: str | os.PathLike, *, extra_kinds: tuple[str, ...] | None = None) -> list[Problem]:
    """Every problem in the inventory at path (empty: the file is good).

    extra_kinds: node kinds beyond localdisk/netboot (default: bmm.toml `[kinds]`)."""
    path = Path(path)
    data, problems = _read(path)
    if data is None:
        return problems
    return check_inventory_data(data, str(path), _extra_kinds(extra_kinds))[1]


def load_inventory(path: str | os.PathLike | None = None, *, strict: bool = True,
                   extra_kinds: tuple[str, ...] | None = None) -> Inventory:
    """The inventory at path (default: inventory_path()).

    strict (the default): any problem raises ConfigError naming the first one.
    strict=False: only an unreadable file raises; nodes with problems are left out and listed
    in `Inventory.problems`, and `Inventory.get()` of such a node raises its first problem.
    Drivers use `load_node()`, so one broken node never stops work on the others.
    extra_kinds: node kinds beyond localdisk/netboot (default: bmm.toml `[kinds]`).
    """
    path = Path(path) if path else inventory_path()
    data, problems = _read(path)
    if data is None:
        raise ConfigError(f"inventory {problems[0]}")
    nodes, problems = check_inventory_data(data, str(path), _extra_kinds(extra_kinds))
    if problems and strict:
        raise ConfigError(f"inventory {problems[0]}{_more(problems)}")
    return Inventory(path=path, nodes=MappingProxyType(nodes), problems=tuple(problems))


def _more(problems: list[Problem]) -> str:
    if len(problems) <= 1:
        return ""
    return f" (and {len(problems) - 1} more; run `bmm nodes validate`)"


def load_node(name: str, path: str | os.PathLike | None = None, *,
              extra_kinds: tuple[str, ...] | None = None) -> Node:
    """One node (ConfigError when it is missing, has problems, or the file is unreadable).
    Problems of other nodes do not matter here."""
    return load_inventory(path, strict=False, extra_kinds=extra_kinds).get(name)


def node_for_host(config: Config, host: str) -> Node:
    """The node behind an OpenNebula host name, as the drivers look it up: only that node's
    own problems (or the file's) stop it, and the error names the host and the inventory."""
    path = Path(config.inventory)
    if not path.exists():
        raise ConfigError(f"host {host}: the bmm inventory {path} does not exist")
    try:
        return load_node(host, path, extra_kinds=tuple(config.kinds))
    except NotInInventory:
        raise NotInInventory(f"host {host} is not in the bmm inventory ({path})") from None
