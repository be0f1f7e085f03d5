"""The node state machine, persisted in one SQLite database on the front-end.

States (NodeState): available, deploying, provisioned, active, rebooting, stopping, off,
deleting, cleaning, error, maintenance. Only the transitions in TRANSITIONS are allowed;
anything else raises Refused naming the node, the state it is in and the state asked for. A
node the database has never seen is `available`.

- `provisioned`: the instance's disks are on the node (its prolog succeeded) and it has not
  booted yet. A stable state: the prolog's processes are gone by design, so nothing may
  mistake the node for an interrupted one between the TM prolog and the VMM deploy.
- `rebooting`: reboot/reset of a running instance. Its own state, so a power dip during the
  restart is never reported as the instance powering off.

The transient states (deploying, rebooting, stopping, deleting, cleaning) belong to the
process that entered them (pid and kernel start time are recorded). As Ironic does for its
STUCK_STATES_TREATED_AS_FAIL, a transient state whose owner process is gone is moved to `error`
with the reason "interrupted while <state>":
- by `recover()`, which the monitor daemon runs on start-up and `bmm nodes recover` runs by hand;
- on the spot, when an action asks a node with a dead owner to go anywhere else.
A process may re-enter the transient state a dead process left (deploying -> deploying): that
lets a multi-disk prolog span processes without being mistaken for a crash.

Every transition is written to node_history (bounded per node, like Ironic's node_history).
The database is in WAL mode, so reads never wait for a writer, and reads never take node locks.
Writes are short transactions (BEGIN IMMEDIATE, busy_timeout), made under the node's lock.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from bmm.config import Config, load_config, resolve_path
from bmm.errors import BmmError, LockedError, Refused
from bmm.locks import Holder, NodeLocks, pid_alive, process_start, utcnow


class NodeState(StrEnum):
    AVAILABLE = "available"
    DEPLOYING = "deploying"
    PROVISIONED = "provisioned"
    ACTIVE = "active"
    REBOOTING = "rebooting"
    STOPPING = "stopping"
    OFF = "off"
    DELETING = "deleting"
    CLEANING = "cleaning"
    ERROR = "error"
    MAINTENANCE = "maintenance"


AVAILABLE = NodeState.AVAILABLE
DEPLOYING = NodeState.DEPLOYING
PROVISIONED = NodeState.PROVISIONED
ACTIVE = NodeState.ACTIVE
REBOOTING = NodeState.REBOOTING
STOPPING = NodeState.STOPPING
OFF = NodeState.OFF
DELETING = NodeState.DELETING
CLEANING = NodeState.CLEANING
ERROR = NodeState.ERROR
MAINTENANCE = NodeState.MAINTENANCE

STATES = tuple(NodeState)
TRANSIENT = frozenset({DEPLOYING, REBOOTING, STOPPING, DELETING, CLEANING})
STABLE = frozenset(STATES) - TRANSIENT

# from -> the states it may go to. Re-entering a transient state is allowed only when its
# owner is this process or a dead one (see transition()).
TRANSITIONS: dict[str, frozenset[str]] = {
    AVAILABLE: frozenset({DEPLOYING, CLEANING, MAINTENANCE, ERROR}),
    DEPLOYING: frozenset({PROVISIONED, ACTIVE, OFF, CLEANING, ERROR}),   # off: context written for a resume
    PROVISIONED: frozenset({DEPLOYING, STOPPING, DELETING, MAINTENANCE, ERROR}),
    ACTIVE: frozenset({REBOOTING, STOPPING, OFF, DELETING, MAINTENANCE, ERROR}),   # off: seen powered off
    REBOOTING: frozenset({ACTIVE, ERROR}),
    STOPPING: frozenset({OFF, ACTIVE, ERROR}),           # -> active: stop failed, node still up
    OFF: frozenset({DEPLOYING, STOPPING, DELETING, MAINTENANCE, ERROR}),   # deploying: resume
    DELETING: frozenset({CLEANING, ERROR}),
    CLEANING: frozenset({AVAILABLE, ERROR}),
    ERROR: frozenset({DEPLOYING, STOPPING, DELETING, CLEANING, MAINTENANCE}),
    MAINTENANCE: frozenset({AVAILABLE, PROVISIONED, ACTIVE, OFF, ERROR}),
}

# States in which the node holds an instance (vm_id kept); reaching `available` clears it.
HOLDS_INSTANCE = frozenset({DEPLOYING, PROVISIONED, ACTIVE, REBOOTING, STOPPING, OFF, DELETING})

HISTORY_LIMIT = 300
_KEEP = object()

_SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
    name               TEXT PRIMARY KEY,
    state              TEXT NOT NULL,
    vm_id              INTEGER,
    last_error         TEXT,
    updated_at         TEXT NOT NULL,
    owner_pid          INTEGER,
    owner_start        TEXT,
    owner_action       TEXT,
    owner_since        TEXT,
    maintenance_reason TEXT,
    previous_state     TEXT
);
CREATE TABLE IF NOT EXISTS node_history (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    node       TEXT NOT NULL,
    from_state TEXT NOT NULL,
    to_state   TEXT NOT NULL,
    vm_id      INTEGER,
    reason     TEXT,
    pid        INTEGER,
    at         TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS node_history_node ON node_history (node, id);
"""


@dataclass(frozen=True)
class NodeRecord:
    name: str
    state: NodeState = AVAILABLE
    vm_id: int | None = None
    last_error: str | None = None
    updated_at: str | None = None
    owner_pid: int | None = None
    owner_action: str | None = None
    owner_since: str | None = None
    maintenance_reason: str | None = None
    previous_state: str | None = None
    owner_start: str | None = None
    known: bool = False          # the database has a row for this node

    @property
    def transient(self) -> bool:
        return self.state in TRANSIENT

    @property
    def version(self) -> tuple:
        """What a transition changes: two reads with one version saw one state of the node.
        updated_at is to the second, so a round trip back to the same state and VM within
        one second goes unseen."""
        return (self.state, self.vm_id, self.updated_at)

    @property
    def interrupted(self) -> bool:
        """In a transient state whose owner process is gone (recover() will fail it)."""
        return self.transient and not pid_alive(self.owner_pid, self.owner_start)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("owner_start")
        data["interrupted"] = self.interrupted
        return data


@dataclass(frozen=True)
class HistoryEntry:
    node: str
    from_state: str
    to_state: str
    vm_id: int | None
    reason: str | None
    pid: int | None
    at: str


class ChangeWatch:
    """Whether anything was committed to the state database since the last call, for a reader
    that keeps a copy of the records (the monitor daemon): SQLite's data_version on one
    long-lived read-only connection, a few microseconds and no file read. Its stat-based
    alternatives fail here: every reader that closes the last connection deletes the WAL,
    so the files change on every read. Keeping this connection open also leaves the WAL in
    place between the other readers. One thread only (sqlite3's default)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None
        self._version: int | None = None

    def changed(self) -> bool:
        """True on the first call with a database, and after any commit by another connection;
        False while there is no database (nothing to read)."""
        try:
            if self._conn is None:
                if not self.path.exists():
                    return False
                self._conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True,
                                             isolation_level=None)
                self._version = None
            version = self._conn.execute("PRAGMA data_version").fetchone()[0]
        except sqlite3.Error:
            self.close()
            return True
        changed, self._version = version != self._version, version
        return changed

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn, self._version = None, None


def state_db_path(explicit: str | os.PathLike | None = None, *, config: Config | None = None) -> Path:
    """--state-db > $BMM_STATE_DB > bmm config `state_db` (default /var/lib/one/bmm/state.db)."""
    return resolve_path(explicit, "BMM_STATE_DB", "state_db", config)


def open_store(explicit: str | os.PathLike | None = None, *, config: Config | None = None) -> "StateStore":
    """The StateStore bmm's configuration points at (lock wait from `lock_wait_s`)."""
    if config is None:
        config = load_config()
    return StateStore(state_db_path(explicit, config=config), lock_wait_s=config.lock_wait_s)


class StateStore:
    """Node states, their history and their locks. Safe to use from many processes."""

    def __init__(self, path: str | os.PathLike, *, lock_wait_s: float = 30.0,
                 busy_timeout_s: float = 10.0, history_limit: int = HISTORY_LIMIT,
                 lock_dir: str | os.PathLike | None = None):
        self.path = Path(path)
        self.busy_timeout_s = busy_timeout_s
        self.history_limit = history_limit
        self.locks = NodeLocks(lock_dir or self.path.parent / "locks", wait_s=lock_wait_s)
        self.last_written: NodeRecord | None = None      # the record this store last wrote
        self._schema_ready = False

    def watch(self) -> "ChangeWatch":
        """A ChangeWatch on this database, for one thread."""
        return ChangeWatch(self.path)

    # ------------------------------------------------------------------ connections

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
        return conn

    @contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection | None]:
        """A connection for reading, or None when there is no database yet (all available)."""
        if not self.path.exists():
            yield None
            return
        conn = self._open()
        try:
            if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'nodes'").fetchone() is None:
                yield None
            else:
                yield conn
        except sqlite3.Error as exc:
            raise BmmError(f"state database {self.path}: {exc}") from None
        finally:
            conn.close()

    @contextmanager
    def _writer(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE: writers queue, readers carry on)."""
        try:
            if not self._schema_ready:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                conn = self._open()
                try:
                    conn.execute("PRAGMA journal_mode = WAL")
                    conn.executescript(_SCHEMA)
                finally:
                    conn.close()
                self._schema_ready = True
            conn = self._open()
        except sqlite3.Error as exc:
            raise BmmError(f"state database {self.path}: {exc}") from None
        except OSError as exc:
            raise BmmError(f"state database {self.path}: {exc.strerror}") from None
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise BmmError(f"state database {self.path}: {exc}") from None
        finally:
            conn.close()

    @staticmethod
    def _record(name: str, row: sqlite3.Row | None) -> NodeRecord:
        if row is None:
            return NodeRecord(name=name)
        return NodeRecord(name=name, state=NodeState(row["state"]), vm_id=row["vm_id"],
                          last_error=row["last_error"], updated_at=row["updated_at"],
                          owner_pid=row["owner_pid"], owner_action=row["owner_action"],
                          owner_since=row["owner_since"],
                          maintenance_reason=row["maintenance_reason"],
                          previous_state=row["previous_state"], owner_start=row["owner_start"],
                          known=True)

    # ------------------------------------------------------------------ reads (never lock)

    def get(self, name: str) -> NodeRecord:
        with self._reader() as conn:
            if conn is None:
                return NodeRecord(name=name)
            row = conn.execute("SELECT * FROM nodes WHERE name = ?", (name,)).fetchone()
            return self._record(name, row)

    def all(self) -> list[NodeRecord]:
        """Every node the database knows (nodes never seen are available and not listed)."""
        with self._reader() as conn:
            if conn is None:
                return []
            rows = conn.execute("SELECT * FROM nodes ORDER BY name").fetchall()
            return [self._record(row["name"], row) for row in rows]

    def history(self, name: str, limit: int = 20) -> list[HistoryEntry]:
        """The node's latest transitions, oldest first."""
        with self._reader() as conn:
            if conn is None:
                return []
            rows = conn.execute(
                "SELECT * FROM node_history WHERE node = ? ORDER BY id DESC LIMIT ?",
                (name, limit)).fetchall()
        return [HistoryEntry(node=r["node"], from_state=r["from_state"], to_state=r["to_state"],
                             vm_id=r["vm_id"], reason=r["reason"], pid=r["pid"], at=r["at"])
                for r in reversed(rows)]

    def holder(self, name: str) -> Holder | None:
        """Who holds the node's lock now (None: nobody). Never blocks."""
        return self.locks.holder(name)

    # ------------------------------------------------------------------ locks

    @contextmanager
    def lock(self, name: str, action: str, *, vm_id: int | None = None,
             wait: float | None = None) -> Iterator[NodeRecord]:
        """Hold the node for one action; yields its current record.

        Waits at most `wait` seconds (default: the store's lock_wait_s), then raises
        LockedError "node X is locked by <action> (vm N, pid P) since T"."""
        with self.locks.lock(name, action, vm_id=vm_id, wait=wait):
            yield self.get(name)

    @contextmanager
    def _locked(self, name: str, action: str) -> Iterator[None]:
        if self.locks.held_here(name):
            yield
        else:
            with self.locks.lock(name, action):
                yield

    # ------------------------------------------------------------------ writes

    def transition(self, name: str, to: str, *, vm_id: Any = _KEEP, error: str | None = None,
                   reason: str | None = None, action: str | None = None) -> NodeRecord:
        """Move the node to `to`, or raise Refused if that transition is not allowed.

        vm_id: the instance the node now holds (kept when not given; cleared on `available`).
        error: the cause, recorded as last_error (for `to="error"`).
        Takes the node's lock for the write unless this thread holds it already."""
        if to not in STATES:
            raise BmmError(f"unknown state {to!r} (states: {', '.join(STATES)})", node=name)
        with self._locked(name, action or f"set {to}"):
            with self._writer() as conn:
                row = conn.execute("SELECT * FROM nodes WHERE name = ?", (name,)).fetchone()
                current = self._record(name, row)
                if current.transient and current.state != to and current.interrupted:
                    current = self._fail_interrupted(conn, current)
                self._check(current, to, vm_id)
                return self._write(conn, current, to, vm_id=vm_id, error=error,
                                   reason=reason or error, action=action)

    def _check(self, current: NodeRecord, to: str, vm_id: Any) -> None:
        name, frm = current.name, current.state
        if frm == to and to in TRANSIENT:
            own = current.owner_pid == os.getpid()
            if not own and not current.interrupted:
                raise Refused(f"is already {frm} by {current.owner_action or 'another action'} "
                               f"(pid {current.owner_pid}) since {current.owner_since}", node=name)
        elif to not in TRANSITIONS[frm]:
            allowed = ", ".join(sorted(TRANSITIONS[frm]))
            hint = f" (reason: {current.last_error})" if frm == ERROR and current.last_error else ""
            raise Refused(f"cannot go from {frm} to {to}{hint}; from {frm} it can go to: {allowed}",
                           node=name)
        if (to == DEPLOYING and vm_id is not _KEEP and vm_id is not None
                and current.vm_id is not None and current.vm_id != vm_id):
            raise Refused(f"holds vm {current.vm_id} ({frm}); refusing vm {vm_id} "
                           "(one instance per machine)", node=name)

    def _write(self, conn: sqlite3.Connection, current: NodeRecord, to: str, *, vm_id: Any = _KEEP,
               error: str | None = None, reason: str | None = None, action: str | None = None,
               maintenance_reason: Any = _KEEP, previous_state: Any = _KEEP) -> NodeRecord:
        now = utcnow()
        new_vm = current.vm_id if vm_id is _KEEP else vm_id
        if to == AVAILABLE:
            new_vm = None
        last_error = current.last_error
        if to == ERROR:
            last_error = error or reason or "unknown error"
        elif to in (AVAILABLE, PROVISIONED, ACTIVE, OFF):
            last_error = None
        if to in TRANSIENT:
            if current.state == to and current.owner_pid == os.getpid():
                owner = (current.owner_pid, current.owner_start, current.owner_action, current.owner_since)
            else:
                owner = (os.getpid(), process_start(os.getpid()), action or to, now)
        else:
            owner = (None, None, None, None)
        maint = current.maintenance_reason if maintenance_reason is _KEEP else maintenance_reason
        prev = current.previous_state if previous_state is _KEEP else previous_state
        if to != MAINTENANCE:
            maint, prev = None, None
        conn.execute(
            "INSERT INTO nodes (name, state, vm_id, last_error, updated_at, owner_pid, owner_start,"
            " owner_action, owner_since, maintenance_reason, previous_state)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT(name) DO UPDATE SET state = excluded.state, vm_id = excluded.vm_id,"
            " last_error = excluded.last_error, updated_at = excluded.updated_at,"
            " owner_pid = excluded.owner_pid, owner_start = excluded.owner_start,"
            " owner_action = excluded.owner_action, owner_since = excluded.owner_since,"
            " maintenance_reason = excluded.maintenance_reason,"
            " previous_state = excluded.previous_state",
            (current.name, to, new_vm, last_error, now, *owner, maint, prev))
        conn.execute("INSERT INTO node_history (node, from_state, to_state, vm_id, reason, pid, at)"
                     " VALUES (?, ?, ?, ?, ?, ?, ?)",
                     (current.name, current.state, to, new_vm, reason, os.getpid(), now))
        conn.execute("DELETE FROM node_history WHERE node = ? AND id <= ("
                     " SELECT id FROM node_history WHERE node = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                     (current.name, current.name, self.history_limit))
        row = conn.execute("SELECT * FROM nodes WHERE name = ?", (current.name,)).fetchone()
        self.last_written = self._record(current.name, row)
        return self.last_written

    def _fail_interrupted(self, conn: sqlite3.Connection, current: NodeRecord) -> NodeRecord:
        message = f"interrupted while {current.state}"
        if current.owner_action and current.owner_action != current.state:
            message += f" ({current.owner_action}, pid {current.owner_pid})"
        elif current.owner_pid:
            message += f" (pid {current.owner_pid})"
        return self._write(conn, current, ERROR, error=message, reason=message)

    def transition_if(self, name: str, *, state: str, vm_id: int | None, to: str, reason: str,
                      action: str) -> NodeRecord | None:
        """For observers (the monitor): move the node to `to` only while it is still `state`
        holding vm_id and no action holds it. Never waits for the lock; None when the record
        changed or an action is in flight (that action owns the node's state)."""
        try:
            with self.locks.lock(name, action, vm_id=vm_id, wait=0):
                current = self.get(name)
                if current.state != state or current.vm_id != vm_id:
                    return None
                return self.transition(name, to, vm_id=vm_id, reason=reason, action=action)
        except LockedError:
            return None

    def fail_interrupted(self, name: str) -> NodeRecord:
        """If the node is in a transient state whose owner process is gone, move it to
        `error` ("interrupted while <state>") now; return the node's record either way.
        For an action that holds the node's lock and finds such a leftover."""
        with self._locked(name, "recover"):
            with self._writer() as conn:
                row = conn.execute("SELECT * FROM nodes WHERE name = ?", (name,)).fetchone()
                current = self._record(name, row)
                if current.transient and current.interrupted:
                    return self._fail_interrupted(conn, current)
                return current

    def recover(self, names: list[str] | None = None) -> list[tuple[str, str]]:
        """Move transient states whose owner process is gone to `error` ("interrupted while
        <state>"). Returns (node, old state) for each node moved. A node whose lock is held
        by a live process is left alone: its action is still running."""
        moved = []
        candidates = [r for r in self.all() if r.transient and (names is None or r.name in names)]
        for rec in candidates:
            if not rec.interrupted:
                continue
            try:
                with self.locks.lock(rec.name, "recover", wait=0):
                    with self._writer() as conn:
                        row = conn.execute("SELECT * FROM nodes WHERE name = ?", (rec.name,)).fetchone()
                        current = self._record(rec.name, row)
                        if current.transient and current.interrupted:
                            self._fail_interrupted(conn, current)
                            moved.append((rec.name, current.state))
            except LockedError:
                continue  # a live process holds it: its action is still running
        return moved

    def set_maintenance(self, name: str, on: bool, reason: str | None = None, *,
                        to: str | None = None, wait: float | None = None) -> NodeRecord:
        """Put a node in maintenance (from a stable state) or take it out.

        Out of maintenance the node returns to the state it had (or `to`: available, active,
        off or error). Going to `available` drops the instance it held: only do that once the
        node is clean."""
        with self.locks.lock(name, "maintenance", wait=wait):
            with self._writer() as conn:
                row = conn.execute("SELECT * FROM nodes WHERE name = ?", (name,)).fetchone()
                current = self._record(name, row)
                if on:
                    if current.state == MAINTENANCE:
                        return self._write(conn, current, MAINTENANCE,
                                           reason=reason or current.maintenance_reason,
                                           maintenance_reason=reason or current.maintenance_reason)
                    if current.transient:
                        raise BmmError(f"is {current.state} ({current.owner_action}, pid "
                                       f"{current.owner_pid}); wait for it, or run `bmm nodes recover` "
                                       "if that process is gone", node=name)
                    self._check(current, MAINTENANCE, _KEEP)
                    return self._write(conn, current, MAINTENANCE, reason=reason or "maintenance on",
                                       maintenance_reason=reason, previous_state=current.state)
                if current.state != MAINTENANCE:
                    return current
                target = to or current.previous_state or AVAILABLE
                self._check(current, target, _KEEP)
                return self._write(conn, current, target, reason=reason or "maintenance off",
                                   error=current.last_error)

    # ------------------------------------------------------------------ inspection (bmm.inspect)

    def save_inspection(self, name: str, facts: dict, mismatches: list[str]) -> "InspectionRecord":
        """Record a good inspection of the node (its facts and what disagreed), now."""
        now = utcnow()
        with self._writer() as conn:
            conn.execute(_INSPECTION_SCHEMA)
            conn.execute(
                "INSERT INTO inspections (name, inspected_at, facts, mismatches, attempted_at, last_error)"
                " VALUES (?, ?, ?, ?, ?, NULL) ON CONFLICT(name) DO UPDATE SET"
                " inspected_at = excluded.inspected_at, facts = excluded.facts,"
                " mismatches = excluded.mismatches, attempted_at = excluded.attempted_at, last_error = NULL",
                (name, now, json.dumps(facts, sort_keys=True), json.dumps(list(mismatches)), now))
            row = conn.execute("SELECT * FROM inspections WHERE name = ?", (name,)).fetchone()
        return _inspection_record(row)

    def inspection_failed(self, name: str, error: str) -> "InspectionRecord":
        """Record a failed attempt; the last good facts, if any, are kept."""
        with self._writer() as conn:
            conn.execute(_INSPECTION_SCHEMA)
            conn.execute(
                "INSERT INTO inspections (name, attempted_at, last_error) VALUES (?, ?, ?)"
                " ON CONFLICT(name) DO UPDATE SET attempted_at = excluded.attempted_at,"
                " last_error = excluded.last_error", (name, utcnow(), error))
            row = conn.execute("SELECT * FROM inspections WHERE name = ?", (name,)).fetchone()
        return _inspection_record(row)

    def inspection(self, name: str) -> "InspectionRecord | None":
        """The node's inspection record (None: never inspected). Never waits for a lock."""
        with self._reader() as conn:
            if conn is None or conn.execute(
                    "SELECT 1 FROM sqlite_master WHERE name = 'inspections'").fetchone() is None:
                return None
            row = conn.execute("SELECT * FROM inspections WHERE name = ?", (name,)).fetchone()
        return _inspection_record(row) if row is not None else None


# ====================================================================== inspection records
# What `bmm nodes inspect` read from each machine: one row per node holding the last good
# inspection (facts as JSON, its time, the mismatches found against the inventory then) and
# the last attempt's outcome, so a failed attempt never erases good facts. The table is its
# own: StateStore's inspection methods create it on their first write.

_INSPECTION_SCHEMA = """
CREATE TABLE IF NOT EXISTS inspections (
    name          TEXT PRIMARY KEY,
    inspected_at  TEXT,
    facts         TEXT,
    mismatches    TEXT,
    attempted_at  TEXT NOT NULL,
    last_error    TEXT
)
"""


@dataclass(frozen=True)
class InspectionRecord:
    name: str
    inspected_at: str | None          # the last good inspection (None: none succeeded yet)
    facts: dict | None                # bmm.inspect.facts.Facts.to_dict()
    mismatches: tuple[str, ...]       # against the inventory as it was then
    attempted_at: str
    last_error: str | None            # the last attempt failed (the facts, if any, are older)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["mismatches"] = list(self.mismatches)
        return data


def _inspection_record(row: sqlite3.Row) -> InspectionRecord:
    return InspectionRecord(name=row["name"], inspected_at=row["inspected_at"],
                            facts=json.loads(row["facts"]) if row["facts"] else None,
                            mismatches=tuple(json.loads(row["mismatches"] or "[]")),
                            attempted_at=row["attempted_at"], last_error=row["last_error"])
