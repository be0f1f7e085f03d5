"""Inspect nodes: one at a time under its lock, many at once within an overall deadline.

A node is inspected only in its home OS: its record must be `available` or `maintenance`
and hold no instance (a tenant's OS is not the machine's to read, and bmm's key should not
open it anyway). The node's lock is taken without waiting, so inspection never delays an
action and no action reboots the node under it. The result goes to the state DB: the facts
and the mismatches with the inventory, or the failed attempt (older facts are kept).

`inspect_nodes` runs WORKERS daemon threads over the nodes, as `bmm nodes list` asks for
power: a node that does not answer costs its own deadline, never the others', and whatever
has not finished by the overall deadline is reported as such.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass, field

from bmm.errors import BmmError, Refused, TimeoutExpired, TransientError
from bmm.inspect.diff import Mismatch, mismatches
from bmm.inspect.facts import Facts
from bmm.inspect.probe import Probe
from bmm.state import AVAILABLE, MAINTENANCE
from bmm.transport.ssh import SshSession

WORKERS = 8
GRACE_S = 2.0                    # for a node's last write after its deadline
INSPECTABLE = (AVAILABLE, MAINTENANCE)


@dataclass(frozen=True)
class Outcome:
    name: str
    facts: Facts | None = None
    mismatches: tuple[Mismatch, ...] = ()
    inspected_at: str | None = None
    error: str | None = None         # one line naming the node
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


def _check_state(node, store) -> None:
    rec = store.get(node.name)
    if rec.state not in INSPECTABLE or rec.vm_id is not None:
        held = f" (holds VM {rec.vm_id})" if rec.vm_id is not None else ""
        raise Refused(f"is {rec.state}{held}; inspection reads the home OS, so only an available "
                      "node or one in maintenance is inspected", node=node.name)


def _connect(node, deadline: float) -> SshSession:
    """A session to the node's OS, its connect timeout cut to what is left of the deadline."""
    left = deadline - time.monotonic()
    target = node.ssh.target(node.name)
    session = SshSession(dataclasses.replace(target, connect_timeout=max(0.5, min(target.connect_timeout, left))))
    try:
        session.connect()
    except TransientError as exc:
        if time.monotonic() < deadline - 0.5:
            raise
        raise TimeoutExpired(f"no answer within the deadline ({exc.reason})", node=node.name) from None
    return session


def inspect_node(node, store, deadline: float, *, connect=_connect) -> Outcome:
    """Inspect one node before `deadline` (time.monotonic()) and record the result."""
    t0 = time.monotonic()
    try:
        _check_state(node, store)
        with store.lock(node.name, "inspect", wait=0):
            try:
                session = connect(node, deadline)
                try:
                    facts = Probe(session, deadline=deadline, node=node.name).collect()
                finally:
                    session.close()
            except BmmError as exc:
                store.inspection_failed(node.name, exc.reason)
                raise
            found = mismatches(node, facts)
            record = store.save_inspection(node.name, facts.to_dict(), [m.text for m in found])
    except BmmError as exc:          # Refused, LockedError, ssh and probe failures
        return Outcome(node.name, error=str(exc) if exc.node else f"node {node.name}: {exc}",
                       seconds=time.monotonic() - t0)
    return Outcome(node.name, facts=facts, mismatches=tuple(found), inspected_at=record.inspected_at,
                   seconds=time.monotonic() - t0)


@dataclass
class _Queue:
    pending: list
    results: dict = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


def inspect_nodes(nodes, store, *, timeout: float, workers: int = WORKERS,
                  inspect=inspect_node) -> list[Outcome]:
    """Every node's Outcome, in the order given, within `timeout` seconds overall."""
    deadline = time.monotonic() + max(0.0, timeout)
    queue = _Queue(pending=list(nodes))

    def worker() -> None:
        while True:
            with queue.lock:
                if not queue.pending:
                    return
                node = queue.pending.pop(0)
            try:
                outcome = inspect(node, store, deadline)
            except Exception as exc:  # noqa: BLE001 - one node's bug must not hide the others
                outcome = Outcome(node.name, error=f"node {node.name}: {type(exc).__name__}: {exc}")
            with queue.lock:
                queue.results[node.name] = outcome

    threads = [threading.Thread(target=worker, daemon=True, name="bmm-inspect")
               for _ in range(min(workers, len(nodes)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, deadline + GRACE_S - time.monotonic()))
    with queue.lock:
        return [queue.results.get(n.name) or Outcome(
            n.name, error=f"node {n.name}: no answer within the deadline ({timeout:g} s)", seconds=timeout)
            for n in nodes]
