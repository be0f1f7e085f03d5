"""Fixtures for lab tests: a real lab rack on this machine (see docs/lab-internals.md).

- `lab` (session): one lab shared by every lab test of the session.
- `module_lab` (module): a fresh lab for a module whose tests break or re-boot nodes.
Both yield a bmm_lab.testing.LabHandle and ALWAYS tear the lab down (failure, Ctrl-C, or a
crash of the test process: an atexit hook runs `down` for labs still up).

Environment: BMM_LAB_SERVERS (default 2), BMM_LAB_BOARDS (default 2 when the board half
bmm_lab.netboot can make machines, else 0), BMM_LAB_MODULE_BOARDS (module_lab; default 0),
BMM_LAB_KEEP_DIR=1 keeps DIR (logs) after down.
"""

from __future__ import annotations

import atexit
import os

import pytest

from tests.support import require_lab

LAB_TOOLS = ("ipmi_sim", "ipmitool", "sshd", "ssh", "lvm", "grub-editenv", "unshare", "xorriso", "busybox")
_live: dict[str, object] = {}


def _down_all_at_exit() -> None:
    for handle in list(_live.values()):
        try:
            handle.down(purge=os.environ.get("BMM_LAB_KEEP_DIR") != "1")
        except Exception:  # noqa: BLE001 - best effort at interpreter exit
            pass


atexit.register(_down_all_at_exit)


def _counts() -> tuple[int, int]:
    from bmm_lab.rack import board_module
    servers = int(os.environ.get("BMM_LAB_SERVERS", "2"))
    default_boards = "2" if board_module() is not None else "0"
    boards = int(os.environ.get("BMM_LAB_BOARDS", default_boards))
    return servers, boards


def lab_session(servers: int | None = None, boards: int | None = None):
    """Generator for a lab fixture: up, yield the handle, always down."""
    require_lab(*LAB_TOOLS)
    from bmm_lab.testing import LabHandle
    s, b = _counts()
    handle = LabHandle.up(servers=s if servers is None else servers, boards=b if boards is None else boards)
    _live[str(handle.dir)] = handle
    try:
        yield handle
    finally:
        _live.pop(str(handle.dir), None)
        handle.down(purge=os.environ.get("BMM_LAB_KEEP_DIR") != "1")


@pytest.fixture(scope="session")
def lab():
    """The session's lab (BMM_LAB_SERVERS servers + BMM_LAB_BOARDS boards)."""
    yield from lab_session()


@pytest.fixture(scope="module")
def module_lab():
    """A fresh lab for one test module (for tests that break or re-image nodes). Servers only
    unless BMM_LAB_MODULE_BOARDS is set: two labs with boards cannot run at once today (each
    board half starts its own ganesha, and a second ganesha fails to bind)."""
    yield from lab_session(boards=int(os.environ.get("BMM_LAB_MODULE_BOARDS", "0")))
