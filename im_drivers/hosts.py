"""The set of hosts the monitor daemon reports for, shared by the control script and the daemon.

One JSON file per OpenNebula host id under `<state dir>/monitor/hosts/`, written atomically.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

DEFAULT_PERIODS = {
    "BEACON_HOST": 30, "SYSTEM_HOST": 600, "MONITOR_HOST": 120, "STATE_VM": 5, "MONITOR_VM": 30,
}


@dataclass(frozen=True)
class MonitoredHost:
    host_id: int
    name: str
    address: str
    port: int
    periods: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_PERIODS))


def monitor_dir(state_db: Path) -> Path:
    return Path(state_db).parent / "monitor"


def hosts_dir(state_db: Path) -> Path:
    return monitor_dir(state_db) / "hosts"


def register(state_db: Path, host: MonitoredHost) -> None:
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
            out.append(MonitoredHost(**data))
        except (OSError, ValueError, TypeError):
            continue
    return out
