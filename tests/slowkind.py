"""A test-only machine kind whose BMC answers when a test says: at once, late, never, or with
an exception. It fakes the machine at the power boundary only; the daemon that probes it, the
payloads and the wire format are the real ones.

Configured as `[kinds] slow = "tests.slowkind:SlowKind"`. A node's behaviour is the
JSON file `<state dir>/slow-<node>.json`, read at every probe so a test can change it while the
daemon runs (absent: no instance, answers at once):
    vm      the instance it holds (reported RUNNING or POWEROFF), or null
    power   "on" | "off"
    delay   seconds the BMC takes to answer; null: it never answers (HANG_S, then gives up)
    raise   true: the report raises (a bug in a kind)
    count   true: every probe appends a line to `<state dir>/slow-<node>.calls`
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from tests.fakekind import FakeKind
from vmm_drivers.base import InstanceState

HANG_S = 3600.0
_never = threading.Event()
_read: dict[str, tuple[tuple, dict]] = {}     # path -> (file identity, behaviour)


def behaviour_file(state_dir: Path, node: str) -> Path:
    return Path(state_dir) / f"slow-{node}.json"


def calls_file(state_dir: Path, node: str) -> Path:
    return Path(state_dir) / f"slow-{node}.calls"


def set_behaviour(state_dir: Path, node: str, **behaviour) -> None:
    """Atomically, so a probe never reads half a file."""
    path = behaviour_file(state_dir, node)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(behaviour))
    os.replace(tmp, path)


def calls(state_dir: Path, node: str) -> int:
    try:
        return len(calls_file(state_dir, node).read_text().splitlines())
    except FileNotFoundError:
        return 0


def behaviour(state_dir: Path, node: str) -> dict:
    """The node's behaviour, re-read only when its file changed: a thousand simulated machines
    should cost the benchmark's daemon a stat each, not a file read each (and no pathlib: the
    fake's own cost is counted in the daemon's CPU, where a real BMC costs waiting, not CPU)."""
    path = f"{state_dir}/slow-{node}.json"
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return {}
    identity = (st.st_ino, st.st_size, st.st_mtime_ns)
    cached = _read.get(path)
    if cached is None or cached[0] != identity:
        with open(path) as fh:
            cached = _read[path] = (identity, json.load(fh))
    return cached[1]


class SlowKind(FakeKind):
    """Its instance and power come from the behaviour file, not from the state database: a
    thousand simulated machines need no records."""

    def reported_instances(self, record, *, act=False):
        state_dir = os.path.dirname(self.config.state_db)
        b = behaviour(state_dir, self.node.name)
        if b.get("count"):
            with open(calls_file(state_dir, self.node.name), "a") as fh:
                fh.write(f"{time.time()}\n")
        if b.get("raise"):
            raise RuntimeError("the simulated BMC library crashed")
        if "delay" in b and b["delay"] is None:
            _never.wait(HANG_S)
        elif b.get("delay"):
            time.sleep(b["delay"])
        if b.get("vm") is None:
            return []
        return [(b["vm"], InstanceState.RUNNING if b.get("power", "on") == "on" else InstanceState.POWEROFF)]
