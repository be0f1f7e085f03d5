"""Names for PCI ids from the pci.ids database, as lspci names them.

The front-end names devices that a node listed only by number (a minimal OS without lspci,
read through /sys/bus/pci/devices). The database is the one pciutils reads
(`/usr/share/misc/pci.ids`, or hwdata's copy); without it names stay empty and the ids
still classify the device (bmm.inspect.pci decides by ids, never by names).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

PATHS = ("/usr/share/misc/pci.ids", "/usr/share/hwdata/pci.ids", "/usr/share/pci.ids")


@dataclass(frozen=True)
class PciIds:
    vendors: dict[str, str] = field(default_factory=dict)            # "10de" -> "NVIDIA Corporation"
    devices: dict[tuple[str, str], str] = field(default_factory=dict)  # ("10de", "1db4") -> name
    classes: dict[str, str] = field(default_factory=dict)            # "03" and "0302" -> name

    def vendor(self, vendor: str) -> str:
        return self.vendors.get(vendor.lower(), "")

    def device(self, vendor: str, device: str) -> str:
        return self.devices.get((vendor.lower(), device.lower()), "")

    def class_name(self, code: str) -> str:
        """The subclass name ("0302" -> "3D controller"), else the class's ("03")."""
        code = code.lower()
        return self.classes.get(code) or self.classes.get(code[:2], "")


def parse(text: str) -> PciIds:
    """pci.ids: vendor lines, tab-indented devices, `C xx` class sections with subclasses."""
    ids = PciIds()
    vendor = None
    klass = None
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith("C "):
            klass, vendor = line[2:4].lower(), None
            ids.classes[klass] = line[4:].strip()
        elif not line.startswith("\t"):
            klass = None
            vendor = line[:4].lower()
            ids.vendors[vendor] = line[4:].strip()
        elif line.startswith("\t\t"):
            continue                              # subsystems, prog-ifs: not named here
        elif vendor is not None:
            ids.devices[(vendor, line[1:5].lower())] = line[5:].strip()
        elif klass is not None:
            ids.classes[klass + line[1:3].lower()] = line[3:].strip()
    return ids


_cache: dict[str, PciIds] = {}
_lock = threading.Lock()


def default() -> PciIds:
    """This machine's database (read once), or an empty one."""
    with _lock:
        if "default" not in _cache:
            ids = PciIds()
            for path in PATHS:
                try:
                    ids = parse(Path(path).read_text(encoding="utf-8", errors="replace"))
                    break
                except OSError:
                    continue
            _cache["default"] = ids
        return _cache["default"]
