"""Helpers shared by the tests."""

import os
import shutil
import subprocess

import pytest
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def missing_lab_requirements(*tools: str) -> list[str]:
    """What this machine lacks to run lab tests (empty when everything is there)."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root")
    if not os.path.exists("/dev/loop-control"):
        missing.append("loop devices (/dev/loop-control)")
    if shutil.which("ip") is None:
        missing.append("iproute2 (ip)")
    else:
        probe = subprocess.run(["ip", "netns", "list"], capture_output=True)
        if probe.returncode != 0:
            missing.append("network namespaces")
    for tool in tools:
        if shutil.which(tool) is None:
            missing.append(tool)
    return missing


def require_lab(*tools: str) -> None:
    missing = missing_lab_requirements(*tools)
    if missing:
        pytest.skip("lab test needs " + ", ".join(missing))


def stop_monitor_daemon(state_dir, timeout: float = 10.0) -> None:
    """Stop the bmm monitor daemon an IM start spawned for this state dir: wait for its pid
    file while it starts, SIGTERM it, wait for it to exit, SIGKILL it if it does not."""
    import fcntl
    import signal
    import time

    monitor = Path(state_dir) / "monitor"
    pid_file, lock_file = monitor / "daemon.pid", monitor / "daemon.lock"
    deadline = time.monotonic() + timeout

    def running() -> bool:
        try:
            with open(lock_file) as fh:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return True
                return False
        except FileNotFoundError:
            return False

    if not lock_file.exists():
        return      # no IM start ever ran here: ensure_daemon makes the lock file before it spawns
    pid = None
    while time.monotonic() < deadline:
        try:
            pid = int(pid_file.read_text())
            break
        except (FileNotFoundError, ValueError):
            if not running() and time.monotonic() > deadline - timeout + 3:
                return                 # none started (or already gone)
            time.sleep(0.1)
    if pid is None:
        return
    try:
        os.kill(pid, signal.SIGTERM)
        while time.monotonic() < deadline + timeout:
            os.kill(pid, 0)
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def all_zero(path: Path) -> bool:
    """Every byte of the file is zero (a wiped disk or partition)."""
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            if chunk.count(0) != len(chunk):
                return False
    return True


def in_order(out: str, steps: list[str]) -> list[str]:
    """The steps not found in out in that order (empty when all are)."""
    pos, missing = 0, []
    for step in steps:
        found = out.find(step, pos)
        if found < 0:
            missing.append(step)
        else:
            pos = found + len(step)
    return missing
