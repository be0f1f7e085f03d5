"""The bmm monitor daemon: one per front-end (an flock), started by the IM control script,
pushing every registered host's messages to monitord at its PROBES_PERIOD (protocol §2.5).
It fails interrupted node actions at start (StateStore.recover), stops on SIGTERM, and leaves
once no host has been registered for IDLE_EXIT_S.

How, and why:
- One scheduler thread owns every host's state, so none of it needs a lock. It sleeps on a
  queue of probe results until the next due time or probe deadline (a heap): it wakes exactly
  when there is something to do, and a thousand hosts cost nothing in between.
- BEACON_HOST comes from the scheduler, never from a probe. It says the driver is alive; it
  must not wait on the host's BMC, so a hung BMC never makes monitord fail its host. It says
  FAILURE only while the last probe proved the host cannot be monitored at all (a BmmError:
  not in the inventory, no report for its kind), as it always did.
- Every other type comes from a probe: control.build_report, then messages.payloads (the
  report code's, which calls BMCs and ssh), run in the ProbePool with a deadline of
  DEADLINE_FRACTION of the host's shortest period (within MIN/MAX_DEADLINE_S), so a probe is
  settled, on time or late, before the host's next one is due. At its deadline a probe that
  has not answered is late: its host is reported with its last good payload of each type
  (none if it never had one), and its result is not sent when it comes but kept as the last
  good payload, so what is sent for a period is decided by the deadline at the latest, a slow
  BMC never reorders a host's messages, and a host that is always slow is reported a period
  late rather than never. A host has one probe at a time; a hung one is never doubled.
- Last-known payloads are sent with a new timestamp: monitord keeps only messages newer than
  the last of their type, and the point is to keep telling it what is known.
- A node with an action in flight (its lock is held, or its state is transient) is not
  probed: the action owns the machine and its instance's state. It is still beaconed. Its
  last-known VM payloads are forgotten, and a last-known VM payload is only replayed while the
  node's state record is still the one it was probed under: a state from before an action is
  never replayed after it (a stale RUNNING would make oned resume a VM that was powered off).
  The same holds for a fresh result: a probe's VM payloads carry the version of the record
  they hold under (HostReport.vms_basis: the record observed from, or the one its kind wrote
  to follow what it saw), and are not sent if, when the probe answers, an action holds the
  node or the record has moved on: the machine was observed before an action that began
  (or even ended) while the probe waited on the BMC.
- Node states come from one read of the state database (StateStore.all), not one per host:
  opening the database costs ~1 ms, a core·s per thousand hosts. The read is repeated when
  anything was committed since (StateStore.watch, SQLite's data_version, asked at most every
  CHANGE_CHECK_S), and at least every SNAPSHOT_TTL_S. So a probe's answer is judged against
  the records as they were 50 ms before at worst; the lock file, stat'ed every time, covers
  that: an action takes its node's lock before its first commit and holds it to its last.
  Probes get the node's record from this copy (run_probe) rather than reading it.
- Every probe builds its report afresh (build_report): a report may observe its machine once
  and keep the answer, so one kept from an earlier probe could repeat an old state.
- Sending belongs to the Outbox (im_drivers/outbox.py): the scheduler never waits on the
  network, and one unreachable monitord address delays only the hosts registered to it.
- Nothing a registration, a probe or the network does ends the daemon: it is logged to bmm's
  log, each trouble once per host until the host is monitored again rather than once per
  period, and the host is skipped or reported with what is known. `<state dir>/monitor/status.json` says what the daemon is doing.
"""

from __future__ import annotations

import fcntl
import heapq
import itertools
import json
import logging
import os
import queue
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from bmm import logs
from bmm.config import load_config
from bmm.errors import BmmError
from bmm.opennebula import monitor
from bmm.state import NodeRecord, open_store
from im_drivers import hosts
from im_drivers.control import build_report
from im_drivers.messages import beacon, payloads
from im_drivers.outbox import Outbox
from im_drivers.pool import CANCELLED, DONE, STALL_S, Job, ProbePool

log = logging.getLogger("bmm.monitor")

IDLE_EXIT_S = 60
DEADLINE_FRACTION = 0.3     # STATE_VM every 5 s: a BMC has 1.5 s, and the cycle is over in 2
MIN_DEADLINE_S = 0.2
MAX_DEADLINE_S = 15.0
POOL_SIZE = 64              # 1000 hosts at 5 s are 200 probes/s: 60 BMCs answering in 0.3 s
SPARE_WORKERS = 64          # replacements for probes written off at their deadline
SNAPSHOT_TTL_S = 1.0
CHANGE_CHECK_S = 0.05       # an action holds its node's lock (stat'ed fresh) before it commits
REGISTRY_EVERY_S = 1.0
INVENTORY_RECHECK_S = 1.0   # an edit of the inventory reaches the probes within a second
STATUS_EVERY_S = 2.0
GUARD_LOG_EVERY_S = 60.0
MAX_TROUBLES = 8            # distinct troubles logged per host and episode

BEACON = "BEACON_HOST"
PROBED = ("SYSTEM_HOST", "MONITOR_HOST", "STATE_VM", "MONITOR_VM")
VM_TYPES = frozenset({"STATE_VM", "MONITOR_VM"})
FAILURE_TYPES = frozenset({"SYSTEM_HOST", "MONITOR_HOST"})
_STOP = object()


@dataclass
class Outcome:
    """What a probe brought back; every exception comes back as data."""
    payloads: dict[str, str] | None = None
    failure: str | None = None              # a BmmError: the host cannot be monitored
    crash: BaseException | None = None      # anything else: a bug in a kind's report
    seen: tuple | None = None               # the record version the VM payloads hold under


def run_probe(config, name: str, kinds: tuple[str, ...], record: NodeRecord | None = None) -> Outcome:
    """The probe (the report code's): build_report, then payloads; with VM payloads, the
    version of the node record they hold under (HostReport.vms_basis). record is the
    scheduler's copy of the node's record when the probe was submitted: fresh (see
    _snapshot), and it spares each probe its own reads of the state database (~1 ms);
    None: the report reads it."""
    try:
        report = build_report(config, name, record=record, inventory_recheck_s=INVENTORY_RECHECK_S)
        out = payloads(report, kinds)
        return Outcome(payloads=out, seen=report.vms_basis if VM_TYPES.intersection(out) else None)
    except BmmError as exc:
        return Outcome(failure=str(exc))
    except Exception as exc:  # noqa: BLE001 - a kind's bug is reported, never raised here
        return Outcome(crash=exc)


class Probe(Job):
    def __init__(self, host_id: int, kinds: tuple[str, ...], fn):
        super().__init__(fn)
        self.host_id, self.kinds = host_id, kinds
        self.late = False


@dataclass(eq=False)
class Host:
    reg: hosts.MonitoredHost
    due: dict[str, float]
    gen: int = 0                            # which heap entry is current
    probe: Probe | None = None
    last: dict[str, str] = field(default_factory=dict)
    seen: tuple | None = None               # the node record `last` was probed under
    error: str | None = None                # why the host cannot be monitored
    lock_path: str = ""                     # its node lock file ("": none can exist)
    troubles: set[str] = field(default_factory=set)   # logged since it was last monitored

    @property
    def deadline_s(self) -> float:
        periods = [p for k, p in self.reg.periods.items() if k in PROBED] or [MAX_DEADLINE_S]
        return min(max(DEADLINE_FRACTION * min(periods), MIN_DEADLINE_S), MAX_DEADLINE_S)


class Scheduler:
    def __init__(self, config):
        self.config = config
        self.store = open_store(config=config)
        self.registry = hosts.Registry(config.state_db)
        self.results: queue.SimpleQueue = queue.SimpleQueue()
        self.pool = ProbePool(POOL_SIZE, SPARE_WORKERS, self.results.put)
        self.outbox = Outbox()
        self.hosts: dict[int, Host] = {}
        self.counts: Counter = Counter()
        self.status_path = hosts.monitor_dir(config.state_db) / "status.json"
        self._heap: list[tuple[float, int, int, Any]] = []
        self._seq = itertools.count()
        self._records: dict = {}
        self._records_at = float("-inf")
        self._db_changes = self.store.watch()
        self._changes_at = float("-inf")
        self._records_failed = False
        self._guard_logged: dict[str, float] = {}

    def stop(self) -> None:
        """Ask run() to return. Safe from a signal handler (SimpleQueue.put is reentrant)."""
        self.results.put(_STOP)

    def run(self) -> None:
        idle_since = None
        next_sync = next_status = 0.0
        try:
            while True:
                now = time.monotonic()
                if now >= next_sync:
                    self._guard(self._sync, now)
                    next_sync = now + REGISTRY_EVERY_S
                    idle_since = None if self.hosts else (idle_since or now)
                    if idle_since is not None and now - idle_since > IDLE_EXIT_S:
                        log.info("no host registered for %d s", IDLE_EXIT_S)
                        return
                if now >= next_status:
                    self._guard(self._write_status)
                    next_status = now + STATUS_EVERY_S
                self._run_due(now)
                wake = min(next_sync, next_status, self._heap[0][0] if self._heap else next_sync)
                if self.pool.queued:
                    self.pool.rebalance()
                    wake = min(wake, now + STALL_S)
                try:
                    item = self.results.get(timeout=max(0.0, wake - time.monotonic()))
                except queue.Empty:
                    continue
                if item is _STOP:
                    return
                self._guard(self._finished, item)
        finally:
            self.pool.close()
            self.outbox.close()
            self._db_changes.close()
            self.status_path.unlink(missing_ok=True)

    # ------------------------------------------------------------------ scheduling

    def _guard(self, fn, *args) -> None:
        """Run one step; a bug in it is logged (at most every GUARD_LOG_EVERY_S per step)."""
        try:
            fn(*args)
        except Exception:  # noqa: BLE001 - the daemon outlives its own bugs
            name = fn.__name__
            now = time.monotonic()
            if now - self._guard_logged.get(name, float("-inf")) > GUARD_LOG_EVERY_S:
                self._guard_logged[name] = now
                log.exception("monitor daemon: %s failed", name)

    def _schedule(self, host: Host) -> None:
        host.gen += 1
        if host.due:
            heapq.heappush(self._heap, (min(host.due.values()), next(self._seq), host.reg.host_id, host.gen))

    def _run_due(self, now: float) -> None:
        while self._heap and self._heap[0][0] <= now:
            _, _, host_id, ref = heapq.heappop(self._heap)
            host = self.hosts.get(host_id)
            if host is None:
                continue
            if isinstance(ref, Probe):
                self._guard(self._deadline, host, ref)
            elif ref == host.gen:
                self._guard(self._due, host, now)

    def _due(self, host: Host, now: float) -> None:
        kinds = [k for k, t in host.due.items() if t <= now]
        for k in kinds:
            period = host.reg.periods[k]
            host.due[k] = host.due[k] + period if host.due[k] + period > now else now + period
        self._schedule(host)
        if BEACON in kinds:
            self._send(host, BEACON, host.error is None, host.error or beacon())
        probed = tuple(k for k in PROBED if k in kinds)
        if not probed:
            return
        if host.probe is not None:
            self.counts["still_running"] += 1
            self._report_known(host, probed)
            return
        record = self._record(host.reg.name)
        if self._busy(host, record):
            self.counts["skipped_busy"] += 1
            for k in VM_TYPES:
                host.last.pop(k, None)
            self._trouble(host, "has an action in flight: not probed, still beaconed", logging.INFO)
        else:
            # without a copy of the records (the database unreadable), the probe reads its own
            # and fails as it should: a made-up "available" would report its VM gone
            self._submit(host, probed, now, None if self._records_failed else record)

    def _submit(self, host: Host, kinds: tuple[str, ...], now: float, record: NodeRecord | None) -> None:
        probe = Probe(host.reg.host_id, kinds, partial(run_probe, self.config, host.reg.name, kinds, record))
        host.probe = probe
        heapq.heappush(self._heap, (now + host.deadline_s, next(self._seq), host.reg.host_id, probe))
        self.pool.submit(probe)
        self.counts["probes"] += 1

    def _deadline(self, host: Host, probe: Probe) -> None:
        if host.probe is not probe:
            return
        state = self.pool.expire(probe)
        if state == DONE:
            return                      # answered in time; its result is queued
        probe.late = True
        if probe.state == CANCELLED:
            host.probe = None           # it never started: nothing will come back
        self.counts["late"] += 1
        self._report_known(host, probe.kinds)
        self._trouble(host, f"probe missed its {host.deadline_s:.1f} s deadline: reporting what is known")

    def _finished(self, probe: Probe) -> None:
        host = self.hosts.get(probe.host_id)
        if host is None or host.probe is not probe:
            return
        host.probe = None
        out: Outcome = probe.result or Outcome(crash=RuntimeError("the probe returned nothing"))
        if probe.late:
            # not sent: its period was settled at the deadline. It is what is known now, so
            # a host whose probes always take longer than the deadline (a PDU that takes its
            # time to log in) is still reported, one period late, rather than never
            self.counts["late_dropped"] += 1
            if out.payloads is not None:
                self._keep(host, out, self._current(host, out))
            return
        if out.payloads is not None:
            current = self._current(host, out)
            for kind, payload in current.items():
                self._send(host, kind, True, payload)
            self._keep(host, out, current)
            host.error = None
            if host.troubles:
                log.info("host %s (%d) is monitored again", host.reg.name, host.reg.host_id)
                host.troubles.clear()
        elif out.failure is not None:
            host.error, host.seen = out.failure, None
            host.last.clear()
            for kind in probe.kinds:
                if kind in FAILURE_TYPES:
                    self._send(host, kind, False, out.failure)
            self._trouble(host, f"cannot be monitored: {out.failure}")
        else:
            self.counts["crashed"] += 1
            self._report_known(host, probe.kinds)
            exc = out.crash
            if self._trouble(host, f"probe failed ({type(exc).__name__}): reporting what is known"):
                log.error("host %s (%d): probe traceback", host.reg.name, host.reg.host_id,
                          exc_info=(type(exc), exc, exc.__traceback__))

    def _current(self, host: Host, out: Outcome) -> dict[str, str]:
        """The probe's payloads that still hold: its VM payloads go if an action holds the
        node now or its record moved on since the probe observed it."""
        if not VM_TYPES.intersection(out.payloads) or not self._moved_on(host, out.seen):
            return out.payloads
        self.counts["stale_dropped"] += 1
        for kind in VM_TYPES:
            host.last.pop(kind, None)
        return {k: v for k, v in out.payloads.items() if k not in VM_TYPES}

    @staticmethod
    def _keep(host: Host, out: Outcome, current: dict[str, str]) -> None:
        """Remember what holds as the last known; VM payloads with the record they came under."""
        host.last.update(current)
        if VM_TYPES.intersection(current):
            host.seen = out.seen

    def _moved_on(self, host: Host, seen: tuple | None) -> bool:
        record = self._record(host.reg.name)
        return seen is None or self._busy(host, record) or record.version != seen

    def _report_known(self, host: Host, kinds: tuple[str, ...]) -> None:
        moved_on = self._moved_on(host, host.seen) if VM_TYPES.intersection(kinds) else False
        for kind in kinds:
            payload = host.last.get(kind)
            if payload is None:
                continue
            if kind in VM_TYPES and moved_on:
                del host.last[kind]     # the node changed since: what we knew is not known now
                continue
            self._send(host, kind, True, payload)
            self.counts["known_sent"] += 1

    def _trouble(self, host: Host, text: str, level: int = logging.WARNING) -> bool:
        """Log text unless it was logged since the host was last monitored. True if logged."""
        if text in host.troubles or len(host.troubles) >= MAX_TROUBLES:
            return False
        host.troubles.add(text)
        log.log(level, "host %s (%d) %s", host.reg.name, host.reg.host_id, text)
        return True

    def _send(self, host: Host, kind: str, success: bool, payload: str) -> None:
        msg = monitor.WireMessage(kind, success, host.reg.host_id, int(time.time()), payload)
        self.outbox.put(host.reg.destination, msg)

    # ------------------------------------------------------------------ node state

    def _changed(self, now: float) -> bool:
        """Whether anything was committed since the last look, asked at most every
        CHANGE_CHECK_S: each sqlite call gives up the GIL, and a burst of a thousand probes
        would pay a thread switch for every one."""
        if now - self._changes_at < CHANGE_CHECK_S:
            return False
        self._changes_at = now
        return self._db_changes.changed()

    def _snapshot(self) -> dict:
        now = time.monotonic()
        # asked before the read: a commit landing during it makes the next call read again
        if self._changed(now) or now - self._records_at > SNAPSHOT_TTL_S:
            self._records_at = now
            try:
                self._records = {r.name: r for r in self.store.all()}
                if self._records_failed:
                    log.info("state database readable again")
                self._records_failed = False
            except (BmmError, OSError) as exc:
                self._records = {}
                if not self._records_failed:
                    log.warning("cannot read node states (%s): relying on node locks alone", exc)
                self._records_failed = True
        return self._records

    def _record(self, name: str) -> NodeRecord:
        record = self._snapshot().get(name)
        return record if record is not None else NodeRecord(name=name)      # as StateStore.get

    def _busy(self, host: Host, record: NodeRecord) -> bool:
        if record.transient:
            return True
        # an empty or missing lock file is a free lock (NodeLocks empties it on release): a
        # stat spares the thousand free nodes of a cycle the read of holder()
        try:
            held = bool(host.lock_path) and os.stat(host.lock_path).st_size > 0
        except OSError:
            held = False
        return held and self.store.holder(host.reg.name) is not None

    def _lock_path(self, name: str) -> str:
        try:
            return str(self.store.locks.path(name))
        except BmmError:
            return ""

    # ------------------------------------------------------------------ housekeeping

    def _sync(self, now: float) -> None:
        """Pick up registrations: new hosts, changed ones, gone ones."""
        regs = self.registry.scan()
        for host_id in [h for h in self.hosts if h not in regs]:
            host = self.hosts.pop(host_id)
            log.info("host %s (%d) unregistered: no longer monitored", host.reg.name, host_id)
        for host_id, reg in regs.items():
            host = self.hosts.get(host_id)
            if host is None:
                host = self.hosts[host_id] = Host(reg, {k: now for k in reg.periods},
                                                  lock_path=self._lock_path(reg.name))
                log.info("monitoring host %s (%d) for monitord at %s:%d", reg.name, host_id, reg.address, reg.port)
            elif host.reg != reg:
                if host.reg.name != reg.name:
                    host.seen, host.error = None, None
                    host.lock_path = self._lock_path(reg.name)
                    host.last.clear()
                host.due = {k: min(host.due.get(k, now), now + p) for k, p in reg.periods.items()}
                host.reg = reg
            else:
                continue
            self._schedule(host)
        self.outbox.retain({reg.destination for reg in regs.values()})

    def _write_status(self) -> None:
        status = {
            "pid": os.getpid(), "time": int(time.time()), "hosts": len(self.hosts),
            "probing": sum(1 for h in self.hosts.values() if h.probe is not None),
            "pool": self.pool.stats(), "links": self.outbox.stats(), "counts": dict(self.counts),
        }
        fd, tmp = tempfile.mkstemp(dir=self.status_path.parent, prefix=".status-")
        with os.fdopen(fd, "w") as fh:
            json.dump(status, fh)
        os.replace(tmp, self.status_path)


def load_kinds(config) -> None:
    """Import every kind's class before the first probe: an import (a second or more for a
    kind with heavy dependencies) inside a probe would make it miss its deadline."""
    from bmm.kinds import kind_class, specs

    for name in specs(config.kinds):
        try:
            kind_class(name, config)
        except BmmError as exc:
            log.info("kind %s not loaded: %s", name, exc.reason)


def main() -> None:
    try:
        config = load_config()
    except BmmError as exc:
        print(f"bmm monitor daemon: {exc}", file=sys.stderr)
        sys.exit(1)
    logs.configure(config.log_path)
    mdir = hosts.monitor_dir(config.state_db)
    mdir.mkdir(parents=True, exist_ok=True)
    with open(mdir / "daemon.lock", "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            sys.exit(0)  # another daemon runs
        pid_path = mdir / "daemon.pid"
        pid_path.write_text(f"{os.getpid()}\n")
        scheduler = Scheduler(config)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: scheduler.stop())
        log.info("bmm monitor daemon started")
        try:
            for node, old in scheduler.store.recover():
                log.warning("node %s was left %s by a process that is gone: now in error", node, old)
        except (BmmError, OSError) as exc:
            log.warning("state recovery failed: %s", exc)
        load_kinds(config)
        try:
            scheduler.run()
        finally:
            pid_path.unlink(missing_ok=True)
        log.info("bmm monitor daemon stopped")


if __name__ == "__main__":
    main()
