"""The node inventory: one TOML file, one table per node, keyed by OpenNebula host name.

`load_inventory()` returns read-only dataclasses or raises ConfigError; `validate_inventory()`
collects every problem (file, node, field, message) so `bmm nodes validate` can name them all.
Unknown keys are problems, never silently ignored: a typo must not turn into a default.

The file format is documented in docs/inventory.md. Each section is checked by the part that
reads it, against the settings it declares: `[power]` by its power driver, `[boot]` by its boot
method, `[storage]` by LvmDisk, `[ssh]` by SshTransport; a kind's needs (which boot methods,
whether [storage] and ssh are required) come from its KindSpec (bmm.kinds).
"""

from __future__ import annotations

import ipaddress
import os
import re
import time
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from bmm import settings
from bmm.config import Config, load_config, resolve_path
from bmm.errors import ConfigError, NotInInventory
from bmm.kinds import BUILTIN as BUILTIN_KINDS
from bmm.kinds import KindSpec
from bmm.settings import Setting

NODE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
SECRET_MESSAGE = settings.SECRET_MESSAGE


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
    proxy: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

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
            "proxy": thaw(self.proxy),
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

NODE_SETTINGS: dict[str, Setting] = {
    "kind": Setting(settings.string, "localdisk | netboot | a bmm.toml [kinds] kind", required=True),
    "arch": Setting(settings.string, "x86_64, aarch64, tilepro64, ...", required=True),
    "model": Setting(settings.string, "the machine model (VM templates match it)"),
    "cpus": Setting(settings.positive_int, "cores (or threads) the instance gets", required=True),
    "memory_mb": Setting(settings.positive_int, "memory the instance gets", required=True),
    "disk_gb": Setting(settings.positive_int, "the instance disk space (required for localdisk)"),
    "ip": Setting(settings.ip, "the node's address (default for ssh.address)"),
    "macs": Setting(lambda v: None, "the NICs' MAC addresses, in NIC order"),
    "ssh": Setting(settings.table, "how bmm reaches the node's own OS"),
    "power": Setting(settings.table, "the power driver and its settings", required=True),
    "boot": Setting(settings.table, "the boot method and its settings"),
    "storage": Setting(settings.table, "where instance disks are carved from (localdisk)"),
    "hardware": Setting(settings.table, "facts the node reports to OpenNebula"),
    "proxy": Setting(settings.table, "netboot: the host that serves the board's boot files (default: the front-end)"),
}


class _Problems:
    """Problems of one node, as (field, message) with the file and node added."""

    def __init__(self, file: str, node: str):
        self.file, self.node = file, node
        self.items: list[Problem] = []

    def add(self, field: str | None, message: str) -> None:
        self.items.append(Problem(self.file, self.node, field, message))

    def extend(self, found: list[tuple[str, str]], prefix: str = "") -> None:
        known = {p.field for p in self.items}
        for field, message in found:
            where = (prefix + field) if field else prefix.rstrip(".")
            if where not in known:
                self.add(where, message)

    def fields(self) -> set[str | None]:
        return {p.field for p in self.items}


def _secrets(p: _Problems, table: Any, prefix: str) -> None:
    """A secret-looking key anywhere is a problem of its own: secrets go in password_file."""
    if isinstance(table, Mapping):
        for key, value in table.items():
            if settings.is_secret_key(key):
                p.add(prefix + key, SECRET_MESSAGE)
            else:
                _secrets(p, value, f"{prefix}{key}.")
    elif isinstance(table, list):
        for i, value in enumerate(table):
            _secrets(p, value, f"{prefix[:-1]}[{i}].")


def _node_values(p: _Problems, raw: Mapping, kind_names: tuple[str, ...]) -> dict[str, Any]:
    """The node's own keys, checked (a bad value is left out and reported)."""
    found = settings.check_table(raw, NODE_SETTINGS)
    good = {k: v for k, v in raw.items() if k in NODE_SETTINGS and not any(f == k for f, _ in found)}
    for field, message in found:
        if message == "is required":
            message = "missing (required)" if field != "macs" else message
        p.add(field, message)
    kind = raw.get("kind")
    if isinstance(kind, str) and kind.strip() and kind not in kind_names:
        p.add("kind", f"{kind!r} is not one of: {', '.join(kind_names)} (other kinds are added in bmm.toml [kinds])")
        good.pop("kind", None)
    return good


def _macs(p: _Problems, raw: Mapping) -> list[str]:
    macs: list[str] = []
    raw_macs = raw.get("macs")
    if raw_macs is None:
        p.add("macs", "missing (required: the NICs' MAC addresses, in NIC order)")
    elif not isinstance(raw_macs, list) or not raw_macs:
        p.add("macs", "must be a non-empty array of MAC addresses")
    else:
        for i, mac in enumerate(raw_macs):
            error = settings.mac(mac)
            if error:
                p.add(f"macs[{i}]", error)
            elif mac.lower() in macs:
                p.add(f"macs[{i}]", f"{mac} is listed twice")
            else:
                macs.append(mac.lower())
    return macs


def _ssh(p: _Problems, table: Mapping, ip: str | None, spec: KindSpec | None) -> SshSettings:
    from bmm.transport.ssh import SshTransport

    found = SshTransport.validate(table)
    p.extend(found, "ssh.")
    bad = {field for field, _ in found}
    v = {k: table[k] for k in SshTransport.SETTINGS if k in table and k not in bad}
    address = v.get("address") or ip
    if spec is not None and spec.ssh == "required" and not address and "address" not in table:
        p.add("ssh.address", f"missing: a {spec.name} node needs ssh.address or ip (bmm drives its OS over ssh)")
    return SshSettings(address=address, port=v.get("port", 22), user=v.get("user", "root"), key=v.get("key"),
                       known_hosts=v.get("known_hosts"), host_key_policy=v.get("host_key_policy", "accept-new"),
                       connect_timeout_s=float(v.get("connect_timeout_s", 10.0)))


def _power(p: _Problems, table: Mapping) -> PowerSettings | None:
    from bmm.power import validate_settings

    if "driver" not in table:
        p.add("power.driver", "missing (required)")
    p.extend(validate_settings(thaw(table)), "power.")
    driver = table.get("driver")
    return PowerSettings(driver=driver, settings=_freeze(dict(table))) if isinstance(driver, str) else None


def _boot(p: _Problems, table: Mapping, spec: KindSpec | None) -> BootSettings | None:
    from bmm.boot import BOOT_METHODS, boot_class

    allowed = (spec.boot if spec is not None and spec.boot else tuple(BOOT_METHODS))
    method = table.get("method")
    if method is None:
        p.add("boot.method", f"missing (required: {' | '.join(allowed)})")
        return None
    if method not in BOOT_METHODS:
        p.add("boot.method", f"{method!r} is not one of: {', '.join(BOOT_METHODS)}")
        return None
    if spec is not None and spec.boot and method not in spec.boot:
        p.add("boot.method", f"{method!r} does not fit kind {spec.name!r} ({spec.name} boots by {' | '.join(spec.boot)})")
    p.extend(boot_class(method).validate(table), "boot.")
    return BootSettings(method=method, settings=_freeze(dict(table)))


def _storage(p: _Problems, table: Mapping | None, spec: KindSpec | None) -> StorageSettings:
    from bmm.storage.lvm import LvmDisk

    if table is not None and spec is not None and spec.storage == "forbidden":
        p.add("storage", f"{spec.name} nodes have no [storage] table (their root is served by the proxy)")
        table = None
    vg = None
    if table is not None:
        found = LvmDisk.validate(table)
        p.extend(found, "storage.")
        vg = table.get("vg") if "vg" not in {f for f, _ in found} else None
    if spec is not None and spec.storage == "required" and "vg" not in (table or {}):
        p.add("storage.vg", f"missing: a {spec.name} node needs the LVM volume group for instance disks")
    return StorageSettings(vg=vg, settings=_freeze(dict(table or {})))


def _proxy(p: _Problems, table: Mapping | None, spec: KindSpec | None) -> Mapping:
    if table is None:
        return {}
    from bmm.transport.proxy import ProxyTransport

    if spec is not None and spec.name in BUILTIN_KINDS and spec.name != "netboot":
        p.add("proxy", f"only netboot boards have a proxy; a {spec.name} node is reached directly")
        return {}
    p.extend(ProxyTransport.validate(table), "proxy.")
    return table


def _check_node(file: str, name: str, raw: Any, kind_specs: Mapping[str, KindSpec]) -> tuple[Node | None, list[Problem]]:
    """One node's table, each part's table checked by that part's own declaration."""
    p = _Problems(file, name)
    if not NODE_NAME_RE.match(name):
        p.add(None, "node name must be an OpenNebula host name (letters, digits, . _ -)")
    if not isinstance(raw, Mapping):
        p.add(None, f"must be a table ([nodes.{name}]), not {settings.type_name(raw)}")
        return None, p.items
    _secrets(p, raw, "")
    v = _node_values(p, raw, tuple(kind_specs))
    spec = kind_specs.get(v.get("kind"))
    builtin = spec is not None and spec.name in BUILTIN_KINDS
    if spec is not None and spec.disk and "disk_gb" not in raw:
        p.add("disk_gb", "missing (required)")
    macs = _macs(p, raw)
    table = lambda key: raw[key] if isinstance(raw.get(key), Mapping) else None  # noqa: E731
    ssh = _ssh(p, table("ssh") or {}, v.get("ip"), spec)
    power = _power(p, table("power")) if table("power") is not None else None
    boot = None
    if table("boot") is not None:
        boot = _boot(p, table("boot"), spec)
    elif builtin:
        p.add("boot", "missing (required: a [boot] table)")
    storage = _storage(p, table("storage"), spec)
    proxy = _proxy(p, table("proxy"), spec)
    if p.items or power is None or spec is None or None in (v.get("arch"), v.get("cpus"), v.get("memory_mb")):
        return None, p.items
    return Node(name=name, kind=spec.name, arch=v["arch"], model=v.get("model"), cpus=v["cpus"],
                memory_mb=v["memory_mb"], disk_gb=v.get("disk_gb"), macs=tuple(macs), ip=v.get("ip"), ssh=ssh,
                power=power, boot=boot, storage=storage, hardware=_freeze(dict(table("hardware") or {})),
                proxy=_freeze(dict(proxy))), []


def check_inventory_data(data: Mapping, file: str,
                         extra_kinds: tuple[str, ...] = ()) -> tuple[dict[str, Node], list[Problem]]:
    """Check parsed TOML: every problem, and the nodes that passed.

    extra_kinds: kinds added in bmm.toml `[kinds]`. Their nodes need no [boot] or [storage]
    (their driver decides); when present, those tables are checked as usual."""
    problems: list[Problem] = []
    for key in data:
        if key != "nodes":
            import difflib  # only for a misspelt table: not on every driver run's import path

            hint = difflib.get_close_matches(key, ["nodes"], n=1)
            problems.append(Problem(file, None, key, "unknown top-level key"
                                    + (" (did you mean 'nodes'?)" if hint else " (only [nodes.<name>] tables)")))
    nodes_raw = data.get("nodes", {})
    if not isinstance(nodes_raw, Mapping):
        problems.append(Problem(file, None, "nodes", "must be a table of [nodes.<name>] tables"))
        return {}, problems

    kind_specs = dict(BUILTIN_KINDS)
    kind_specs.update({name: KindSpec(name, "") for name in extra_kinds if name not in BUILTIN_KINDS})
    nodes: dict[str, Node] = {}
    for name, raw in nodes_raw.items():
        node, node_problems = _check_node(file, name, raw, kind_specs)
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
            if isinstance(mac, str) and settings.MAC_RE.match(mac):
                other = seen_mac.setdefault(mac.lower(), name)
                if other != name:
                    problems.append(Problem(file, name, f"macs[{i}]", f"{mac} is also the MAC of node {other}"))
        ip = raw.get("ip")
        if isinstance(ip, str) and settings.ip(ip) is None:
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


_parsed: dict[tuple, Inventory] = {}
_seen: dict[str, tuple[float, tuple | None]] = {}     # path -> (when stat'ed, its identity)


def _identity(path: str, recheck_s: float) -> tuple | None:
    """The file's (device, inode, size, mtime), stat'ed again once recheck_s has passed since
    the last stat (0: every time); None when it cannot be stat'ed."""
    now = time.monotonic()
    seen = _seen.get(path)
    if seen is not None and now - seen[0] < recheck_s:
        return seen[1]
    try:
        st = os.stat(path)
        ident = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    except OSError:
        ident = None
    _seen[path] = (now, ident)
    return ident


def load_node(name: str, path: str | os.PathLike | None = None, *,
              extra_kinds: tuple[str, ...] | None = None, recheck_s: float = 0.0) -> Node:
    """One node (ConfigError when it is missing, has problems, or the file is unreadable).
    Problems of other nodes do not matter here.

    The parsed file is kept while its identity (inode, size, mtime) stays the same: the
    monitor daemon asks for every node every few seconds, and a thousand-node inventory is
    not re-read and re-checked for each (nodes are immutable, so sharing them is safe).
    recheck_s: how long a stat of the file is trusted (the daemon: a second, so an edit is
    seen within one; a thousand stats per cycle were a tenth of its CPU)."""
    path = Path(path) if path else inventory_path()
    kinds = _extra_kinds(extra_kinds)
    ident = _identity(str(path), recheck_s)
    if ident is None:
        return load_inventory(path, strict=False, extra_kinds=kinds).get(name)
    key = (str(path), *ident, kinds)
    inventory = _parsed.get(key)
    if inventory is None:
        inventory = load_inventory(path, strict=False, extra_kinds=kinds)
        _parsed.clear()
        _parsed[key] = inventory
    return inventory.get(name)


def node_for_host(config: Config, host: str, *, recheck_s: float = 0.0) -> Node:
    """The node behind an OpenNebula host name, as the drivers look it up: only that node's
    own problems (or the file's) stop it, and the error names the host and the inventory.
    recheck_s: see load_node."""
    path = Path(config.inventory)
    try:
        return load_node(host, path, extra_kinds=tuple(config.kinds), recheck_s=recheck_s)
    except NotInInventory:
        raise NotInInventory(f"host {host} is not in the bmm inventory ({path})") from None
    except ConfigError:
        # asked only now: the monitor daemon looks up every host every few seconds, and one
        # stat (load_node's) per lookup is enough on the way that works
        if not path.exists():
            raise ConfigError(f"host {host}: the bmm inventory {path} does not exist") from None
        raise
