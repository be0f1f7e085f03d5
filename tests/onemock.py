"""The exec-driver emulation (bmm_lab.oneemu) with the test-only fake kind installed.

Tests import OpenNebula, drv_action and vm_xml from here: the same front-end, plus
`[kinds] fake = tests.fakekind:FakeKind` in bmm.toml and this checkout on the remotes'
PYTHONPATH so that kind can be imported.
"""

from __future__ import annotations

from pathlib import Path

from bmm_lab.oneemu import LOG_LINE, DriverFailure, Execution, Step, Vm, context_text, drv_action, vm_xml
from bmm_lab.oneemu import OpenNebula as _Emulation

REPO = Path(__file__).resolve().parent.parent
FAKE_KIND = 'fake = "tests.fakekind:FakeKind"'

__all__ = ["LOG_LINE", "DriverFailure", "Execution", "OpenNebula", "Step", "Vm", "context_text", "drv_action",
           "vm_xml", "REPO"]


class OpenNebula(_Emulation):
    def __init__(self, root: Path, inventory: Path, *, kinds: str = "", **kw):
        super().__init__(root, inventory, kinds=f"{FAKE_KIND}\n{kinds}", pythonpath=str(REPO), **kw)
