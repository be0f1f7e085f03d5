"""One exclusive lock per node, across processes.

The lock is `flock(LOCK_EX)` on `<lock dir>/<node>.lock`. The kernel drops it when the holder
exits for any reason, `kill -9` included, so a dead holder's lock is reclaimed by the next
action with no stale-lock guessing. After acquiring, the holder writes who it is (action, vm
id, pid, since) into the lock file; a waiter reads that to say "node X is locked by deploy
(vm 42, pid 1234) since 2026-11-21T10:00:00Z". Release empties the file.

Locks are re-entrant within one thread of one process, so an action that holds a node can
call code that locks the same node. Other threads and processes wait, bounded by `wait`.
Lock files are never deleted (deleting one while a process waits on it would split the lock).
Reading who holds a lock never takes it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

from bmm.errors import BmmError, LockedError


def utcnow() -> str:
    """Now as ISO 8601 UTC to the second: 2026-11-21T10:00:00Z."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def process_start(pid: int) -> str | None:
    """The kernel's start time of pid (clock ticks since boot), to tell a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
    except OSError:
        return None
    try:
        return stat[stat.rindex(")") + 2:].split()[19]
    except (ValueError, IndexError):
        return None


def pid_alive(pid: int | None, start: str | None = None) -> bool:
    """Whether pid still runs (and, when start is known, is the same process)."""
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    if _is_zombie(pid):
        return False  # exited, not yet reaped (e.g. orphaned under an init that does not reap)
    if start is not None:
        now = process_start(pid)
        if now is not None and now != start:
            return False  # the pid was reused by another process
    return True


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
        return stat[stat.rindex(")") + 2:].split()[0] in ("Z", "X")
    except (OSError, ValueError, IndexError):
        return False


@dataclass(frozen=True)
class Holder:
    """Who holds a node lock."""

    node: str
    action: str
    pid: int
    since: str
    vm_id: int | None = None
    start: str | None = None  # process_start(pid), to detect pid reuse

    def describe(self) -> str:
        who = f"pid {self.pid}" if self.vm_id is None else f"vm {self.vm_id}, pid {self.pid}"
        return f"{self.action} ({who}) since {self.since}"

    def alive(self) -> bool:
        return pid_alive(self.pid, self.start)


# Locks this process holds: key -> [owner pid, thread id, depth, fd, holder].
_held: dict[tuple[str, str], list] = {}
_held_guard = threading.Lock()


BUSY_ERRNOS = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)


def flock_until(fd: int, deadline: float, *, interval: float = 0.1, max_interval: float | None = None) -> bool:
    """Take an exclusive flock on fd, polling until the monotonic deadline. True once held,
    False if the deadline passed first; errors other than "held by someone else" are raised.
    The poll interval grows by half each round, up to max_interval (default: interval)."""
    max_interval = interval if max_interval is None else max_interval
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError as exc:
            if exc.errno not in BUSY_ERRNOS:
                raise
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(interval, remaining))
        interval = min(interval * 1.5, max_interval)


class NodeLocks:
    """Per-node exclusive locks as files in `directory`."""

    def __init__(self, directory: str | os.PathLike, *, wait_s: float = 30.0, poll_s: float = 0.05):
        self.directory = Path(directory)
        self.wait_s = wait_s
        self.poll_s = poll_s

    def path(self, name: str) -> Path:
        if not name or name in (".", ".."):
            raise BmmError(f"invalid node name {name!r}")
        return self.directory / (quote(name, safe="") + ".lock")

    def _key(self, name: str) -> tuple[str, str]:
        return (str(self.directory.resolve()), name)

    def held_here(self, name: str) -> bool:
        """This thread of this process holds the lock."""
        with _held_guard:
            entry = _held.get(self._key(name))
            return bool(entry) and entry[0] == os.getpid() and entry[1] == threading.get_ident()

    def holder(self, name: str) -> Holder | None:
        """Who holds the node now, from the record the holder wrote. Never blocks."""
        try:
            text = self.path(name).read_text()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError:
            return None
        if not text.strip():
            return None
        try:
            data = json.loads(text)
            holder = Holder(**data)
        except (ValueError, TypeError):
            return None
        return holder if holder.alive() else None

    @contextmanager
    def lock(self, name: str, action: str, *, vm_id: int | None = None,
             wait: float | None = None) -> Iterator[Holder]:
        """Hold the node exclusively. Waits at most `wait` seconds (default wait_s), then
        raises LockedError naming the holder."""
        key = self._key(name)
        with _held_guard:
            entry = _held.get(key)
            if entry and entry[0] == os.getpid() and entry[1] == threading.get_ident():
                entry[2] += 1
                reentered = entry
            else:
                reentered = None
        if reentered is not None:
            try:
                yield reentered[4]
            finally:
                with _held_guard:
                    reentered[2] -= 1
            return

        fd = self._acquire(name, action, vm_id, self.wait_s if wait is None else wait)
        holder = Holder(node=name, action=action, pid=os.getpid(), since=utcnow(), vm_id=vm_id,
                        start=process_start(os.getpid()))
        try:
            data = json.dumps(asdict(holder)).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
        except OSError:
            pass  # the record is informational; the flock is the lock
        with _held_guard:
            _held[key] = [os.getpid(), threading.get_ident(), 1, fd, holder]
        try:
            yield holder
        finally:
            with _held_guard:
                _held.pop(key, None)
            try:
                os.ftruncate(fd, 0)
            except OSError:
                pass
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _acquire(self, name: str, action: str, vm_id: int | None, wait: float) -> int:
        path = self.path(name)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o660)
        except OSError as exc:
            raise BmmError(f"cannot open lock file {path}: {exc.strerror}", node=name) from None
        try:
            acquired = flock_until(fd, time.monotonic() + max(0.0, wait), interval=self.poll_s, max_interval=0.5)
        except OSError as exc:
            os.close(fd)
            raise BmmError(f"cannot lock {path}: {exc.strerror}", node=name) from None
        except BaseException:
            os.close(fd)
            raise
        if acquired:
            return fd
        os.close(fd)
        holder = self.holder(name)
        if holder is not None:
            message = f"node {name} is locked by {holder.describe()}"
        else:
            message = f"node {name} is locked by another action (its holder has not recorded itself yet)"
        error = LockedError(message)
        error.node = name
        error.holder = holder
        error.waited_s = wait
        raise error
