"""`bmm lab`: a simulated rack on this machine, built from real peers.

What is real: network namespaces and veths, OpenSSH servers as the nodes' operating systems,
`ipmi_sim` BMCs driven by `ipmitool -I lanplus`, LVM metadata on loop devices, GRUB environment
blocks written by `grub-editenv`/`grub-reboot`, the PDU and TFTP peers of the board half.
What is emulated: the firmware (one daemon decides what "power on" boots, following GRUB's
rules), LV activation when the kernel has no device-mapper (loop devices at the LV's offset),
and the guest's one-context package (CONTEXT iso -> ssh key + hostname).

See docs/lab.md (users) and docs/lab-internals.md (contract for the board half and tests).
"""

import contextlib
import os
import time
from pathlib import Path

import bmm
from bmm.errors import BmmError
from bmm.locks import flock_until

DEFAULT_DIR = "/var/tmp/bmm-lab"
# Where the lab's child processes (the firmware daemon, node inits, shims) import bmm_lab and
# bmm from: the directories these packages were loaded from (a checkout or site-packages).
IMPORT_PATHS = list(dict.fromkeys(str(Path(f).resolve().parents[1]) for f in (__file__, bmm.__file__)))
IMPORT_PATH = os.pathsep.join(IMPORT_PATHS)
# Host-wide: serialises what every lab on this machine shares (network allocation, rpcbind).
HOST_LOCK = Path("/run/lock/bmm-lab.lock")


class LabError(BmmError):
    """A lab operation failed; the message names the node (when there is one) and the cause."""


@contextlib.contextmanager
def file_lock(path: Path, *, wait: float, what: str):
    """Hold an exclusive flock on path, waiting at most `wait` seconds, else LabError."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not flock_until(fd, time.monotonic() + wait):
            raise LabError(f"{what} is busy (another bmm lab command holds {path}); waited {wait:g} s")
        yield
    finally:
        os.close(fd)
