"""The driver class for a node's kind."""

from __future__ import annotations

import importlib

from bmm.config import Config
from bmm.errors import ConfigError
from vmm_drivers.base import MachineDriver

BUILTIN_KINDS = {
    "localdisk": "vmm_drivers.localdisk:LocalDiskDriver",
    "netboot": "vmm_drivers.netboot:NetbootDriver",
}


def known_kinds(config: Config) -> dict[str, str]:
    """Built-in kinds plus bmm.toml `[kinds]`: `kind = "module:Class"` or
    `kind = { vmm = "module:Class", im = "module:Class" }`."""
    extra = {k: (v.get("vmm", "") if isinstance(v, dict) else v) for k, v in config.kinds.items()}
    return {**BUILTIN_KINDS, **extra}


def driver_class(kind: str, config: Config, *, node_name: str = "") -> type[MachineDriver]:
    kinds = known_kinds(config)
    where = f"node {node_name} has " if node_name else ""
    if kind not in kinds:
        raise ConfigError(f"{where}kind {kind!r}, which bmm does not know (known: {', '.join(sorted(kinds))})")
    module_name, _, class_name = kinds[kind].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise ConfigError(f"{where}kind {kind!r}, whose driver ({kinds[kind]}) is not built yet or not installed") from None
        raise
    cls = getattr(module, class_name or "Driver", None)
    if not (isinstance(cls, type) and issubclass(cls, MachineDriver)):
        raise ConfigError(f"kind {kind!r}: {kinds[kind]} is not a MachineDriver")
    return cls

