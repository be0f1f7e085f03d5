"""Machine kinds, registered once: what each needs of a node's inventory table, and the class
(with its VMM, TM and IM faces) that says what OpenNebula's actions mean for it.

Built-in kinds are below. A site adds one in bmm.toml with a single entry:
`[kinds] mykind = "package.module:Class"`; its nodes need no [boot] or [storage] table (its
class decides what it reads). Classes are imported only when an action needs one, through the
one loader (bmm.plugins): bmm itself never imports a driver package.
"""

from __future__ import annotations

from dataclasses import dataclass

from bmm.errors import ConfigError


@dataclass(frozen=True)
class KindSpec:
    name: str
    cls: str                                # "package.module:Class"
    boot: tuple[str, ...] | None = None     # boot methods it takes; None: any (optional)
    storage: str = "optional"               # required | forbidden | optional
    ssh: str = "optional"                   # required | optional
    disk: bool = False                      # disk_gb required


BUILTIN = {
    "localdisk": KindSpec("localdisk", "vmm_drivers.localdisk:LocalDiskKind", boot=("grub",),
                          storage="required", ssh="required", disk=True),
    "netboot": KindSpec("netboot", "vmm_drivers.netboot:NetbootKind", boot=("nfsroot", "tftp2stage"),
                        storage="forbidden"),
}


def specs(extra: dict | None = None) -> dict[str, KindSpec]:
    """Built-in kinds plus bmm.toml [kinds] (name -> "module:Class")."""
    out = dict(BUILTIN)
    for name, value in (extra or {}).items():
        if not isinstance(value, str):
            raise ConfigError(f'bmm.toml [kinds] {name} must be "package.module:Class" (one class with the '
                              "kind's VMM, TM and IM faces)")
        out[name] = KindSpec(name, value)
    return out


def kind_class(name: str, config, *, node_name: str = "") -> type:
    """The class of kind `name` (ConfigError naming the node when it is unknown or broken)."""
    from bmm.plugins import load

    known = specs(config.kinds)
    where = f"node {node_name} has " if node_name else ""
    if name not in known:
        raise ConfigError(f"{where}kind {name!r}, which bmm does not know (known: {', '.join(sorted(known))})")
    cls = load(known[name].cls, what=f"{where}kind {name!r}")
    if not all(hasattr(cls, face) for face in ("perform", "instance_state")):
        raise ConfigError(f"kind {name!r}: {known[name].cls} is not a machine kind")
    return cls
