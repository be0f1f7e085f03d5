"""The processes of one test session, found by its directory: their working directory, command
line or ONE_LOCATION lies under it. That covers oned, monitord, the Ruby drivers, bmm's remotes
and what they run (ipmitool, ssh), and bmm's monitor daemon."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from bmm.locks import pid_alive


def _ancestors() -> set[int]:
    """This process and its parents, which are never signalled."""
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pids


def _belongs(pid: int, root: bytes) -> bool:
    proc = Path(f"/proc/{pid}")
    with contextlib.suppress(OSError):
        cwd = os.readlink(proc / "cwd").encode()
        if cwd == root or cwd.startswith(root + b"/"):
            return True
    with contextlib.suppress(OSError):
        if root + b"/" in (proc / "cmdline").read_bytes():
            return True
    with contextlib.suppress(OSError):
        if b"ONE_LOCATION=" + root + b"/" in (proc / "environ").read_bytes():
            return True
    return False


def session_processes(root: Path) -> set[int]:
    keep = _ancestors()
    needle = str(root.resolve()).encode()
    return {int(e.name) for e in Path("/proc").iterdir()
            if e.name.isdigit() and int(e.name) not in keep and _belongs(int(e.name), needle)}


def kill_processes(root: Path, *, extra=(), grace_s: float = 3.0, deadline_s: float = 10.0) -> list[int]:
    """SIGTERM the session's processes (and extra), SIGKILL those left after grace_s, until none
    is left; raise past deadline_s. Returns every process that was signalled."""
    keep = _ancestors()
    found = session_processes(root) | {p for p in extra if p not in keep}
    sent: dict[int, int] = {}
    start = time.monotonic()
    while True:
        live = {p for p in found | session_processes(root) if pid_alive(p)}
        found |= live
        if not live:
            return sorted(found)
        elapsed = time.monotonic() - start
        if elapsed > deadline_s:
            raise RuntimeError(f"processes of {root} would not die: {sorted(live)}")
        sig = signal.SIGKILL if elapsed > grace_s else signal.SIGTERM
        for pid in live:
            if sent.get(pid) != sig:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
                sent[pid] = sig
        time.sleep(0.1)
