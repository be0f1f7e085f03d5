"""What bmm has put on a machine for a VM, kept on the front-end (`<state dir>/vms/<node>/<vm>.json`).

A kind records here what it made (LVs and their sizes, a board's NFS root or staged root
filesystem, the kernel it chose) as it makes it. Knowing this without asking the machine is
what lets a clean-up touch only what bmm made, and lets the clean-up for a VM that never got
the machine skip the machine altogether. Writes are atomic (a new file, then a rename).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


class Footprint:
    def __init__(self, state_db: str | os.PathLike, node: str):
        self.dir = Path(state_db).parent / "vms" / node

    def path(self, vm_id: int) -> Path:
        return self.dir / f"{int(vm_id)}.json"

    def load(self, vm_id: int) -> dict:
        """The VM's record ({} when bmm has put nothing there, or the file is unreadable)."""
        try:
            data = json.loads(self.path(vm_id).read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def save(self, vm_id: int, data: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".tmp-")
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(data, fh)
            os.replace(tmp, self.path(vm_id))
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def update(self, vm_id: int, **changes) -> dict:
        """Merge changes into the record (a value of None removes its key); the new record."""
        data = self.load(vm_id)
        for key, value in changes.items():
            if value is None:
                data.pop(key, None)
            else:
                data[key] = value
        self.save(vm_id, data)
        return data

    def forget(self, vm_id: int) -> None:
        self.path(vm_id).unlink(missing_ok=True)
