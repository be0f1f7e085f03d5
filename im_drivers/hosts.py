"""The set of hosts the monitor daemon reports for, shared by the control script and the daemon.

One JSON file per OpenNebula host id under `<state dir>/monitor/hosts/`, written atomically.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bmm.errors import InputError

log = logging.getLogger("bmm.monitor")
_HOSTNAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*", re.ASCII)

DEFAULT_PERIODS = {
    "BEACON_HOST": 30, "SYSTEM_HOST": 600, "MONITOR_HOST": 120, "STATE_VM": 5, "MONITOR_VM": 30,
}


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
        if not isinstance(self.name, str) or not self.name:
            raise InputError("host name is empty")
        check_address(self.address)
        check_port(self.port)
        if not isinstance(self.periods, dict) or set(self.periods) - set(DEFAULT_PERIODS) or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in self.periods.values()):
            raise InputError("probe periods are not positive integers of known message types")
        return self


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


def registered(state_db: Path) -> list[MonitoredHost]:
    out = []
    d = hosts_dir(state_db)
    if not d.is_dir():
        return out
    for path in sorted(d.glob("*.json")):
        try:
            data = json.loads(path.read_text())
            out.append(MonitoredHost(**data).validate())
        except (OSError, ValueError, TypeError, InputError) as exc:
            log.warning("ignoring monitor registration %s: %s", path.name, exc)
            continue
    return out
