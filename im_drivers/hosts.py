"""The set of hosts the monitor daemon reports for, shared by the control script and the daemon.

One JSON file per OpenNebula host id under `<state dir>/monitor/hosts/`, written atomically.
A registration file is input: anything in it may be wrong, and a wrong one is skipped alone.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bmm.errors import InputError
from bmm.opennebula.args import check_host_name

log = logging.getLogger("bmm.monitor")
_HOSTNAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*", re.ASCII)

DEFAULT_PERIODS = {
    "BEACON_HOST": 30, "SYSTEM_HOST": 600, "MONITOR_HOST": 120, "STATE_VM": 5, "MONITOR_VM": 30,
}
MAX_PERIOD_S = 86400
MAX_FILE_BYTES = 64 * 1024      # a registration is a few hundred bytes; more is not one


def check_address(address: str, what: str = "monitord address") -> str:
    """An IP address or a DNS name: what monitord listens on."""
    if isinstance(address, str):
        try:
            ipaddress.ip_address(address)
            return address
        except ValueError:
            if _HOSTNAME.fullmatch(address) and not address.replace(".", "").isdigit():
                return address
    raise InputError(f"{what} is not an IP address or a host name")


def check_port(port: int, what: str = "monitord port") -> int:
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise InputError(f"{what} is not a TCP/UDP port (1-65535)")
    return port


@dataclass(frozen=True)
class MonitoredHost:
    host_id: int
    name: str
    address: str
    port: int
    periods: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_PERIODS))

    def validate(self) -> "MonitoredHost":
        """Raise InputError unless every field is usable (a registration file is input)."""
        if not isinstance(self.host_id, int) or isinstance(self.host_id, bool) or self.host_id < 0:
            raise InputError("host id is not a non-negative integer")
        check_host_name(self.name)
        check_address(self.address)
        check_port(self.port)
        if not isinstance(self.periods, dict) or set(self.periods) - set(DEFAULT_PERIODS) or not all(
                isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_PERIOD_S
                for v in self.periods.values()):
            raise InputError(f"probe periods are not integers of 1-{MAX_PERIOD_S} s for known message types")
        return self

    @property
    def destination(self) -> tuple[str, int]:
        return (self.address, self.port)


def monitor_dir(state_db: Path) -> Path:
    return Path(state_db).parent / "monitor"


def hosts_dir(state_db: Path) -> Path:
    return monitor_dir(state_db) / "hosts"


def register(state_db: Path, host: MonitoredHost) -> None:
    host.validate()
    d = hosts_dir(state_db)
    d.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-")
    with os.fdopen(fd, "w") as fh:
        json.dump(asdict(host), fh)
    os.replace(tmp, d / f"{host.host_id}.json")


def unregister(state_db: Path, host_id: int) -> None:
    try:
        (hosts_dir(state_db) / f"{host_id}.json").unlink()
    except FileNotFoundError:
        pass


def read_registration(path: Path) -> MonitoredHost:
    """One registration file, checked (InputError, OSError or ValueError when unusable)."""
    with open(path, "rb") as fh:
        data = fh.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise InputError(f"larger than {MAX_FILE_BYTES} bytes")
    value = json.loads(data)
    if not isinstance(value, dict):
        raise InputError("not a JSON object")
    try:
        return MonitoredHost(**value).validate()
    except TypeError:
        raise InputError("not a registration (unknown or missing fields)") from None


def registered(state_db: Path) -> list[MonitoredHost]:
    return list(Registry(state_db).scan().values())


class Registry:
    """The registrations, re-read only where they changed.

    The daemon looks every second; with a thousand hosts, reading and checking every file each
    time would cost more than monitoring them. So a file is re-read only when its identity
    (inode, size, mtime) changes, the directory is listed only when its mtime changes (every
    register() renames a file into it) or RESCAN_S has passed (a file edited in place), and an
    unusable file is logged once per version, not once per look."""

    RESCAN_S = 10.0

    def __init__(self, state_db: Path):
        self.directory = hosts_dir(state_db)
        self._files: dict[str, tuple[tuple, MonitoredHost | None]] = {}
        self._dir_mtime: int | None = None
        self._listed_at = float("-inf")
        self._hosts: dict[int, MonitoredHost] = {}
        self._twice: set[tuple[str, tuple]] = set()

    def scan(self) -> dict[int, MonitoredHost]:
        """host id -> registration, for every usable file."""
        try:
            mtime = self.directory.stat().st_mtime_ns
        except OSError:
            self._files.clear()
            self._hosts = {}
            return {}
        now = time.monotonic()
        if mtime == self._dir_mtime and now - self._listed_at < self.RESCAN_S:
            return self._hosts
        self._dir_mtime, self._listed_at = mtime, now
        seen: dict[str, tuple[tuple, MonitoredHost | None]] = {}
        try:
            entries = sorted(os.scandir(self.directory), key=lambda e: e.name)
        except OSError as exc:
            log.warning("cannot list monitor registrations in %s: %s", self.directory, exc.strerror)
            return self._hosts
        for entry in entries:
            if not entry.name.endswith(".json") or entry.name.startswith("."):
                continue
            try:
                st = entry.stat()
            except OSError:
                continue
            identity = (st.st_ino, st.st_size, st.st_mtime_ns)
            cached = self._files.get(entry.name)
            if cached is not None and cached[0] == identity:
                seen[entry.name] = cached
                continue
            try:
                host = read_registration(Path(entry.path))
            except (OSError, ValueError, InputError) as exc:
                log.warning("ignoring monitor registration %r: %s", entry.name, exc)
                host = None
            seen[entry.name] = (identity, host)
        self._files = seen
        hosts: dict[int, MonitoredHost] = {}
        for name, (identity, host) in seen.items():
            if host is None:
                continue
            if host.host_id in hosts:
                if (name, identity) not in self._twice:
                    log.warning("ignoring monitor registration %r: host id %d is registered twice", name, host.host_id)
                    self._twice.add((name, identity))
                continue
            hosts[host.host_id] = host
        self._twice &= {(name, identity) for name, (identity, _) in seen.items()}
        self._hosts = hosts
        return hosts
