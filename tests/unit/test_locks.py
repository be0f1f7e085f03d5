"""Per-node locks across real processes: race, kill -9, bounded wait, reads that never block."""

import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from bmm.errors import LockedError
from bmm.locks import Holder, NodeLocks, pid_alive, process_start
from bmm.state import StateStore, open_store
from tests.support import REPO

CHILD = os.path.join(REPO, "tests", "data", "state_child.py")
LOCKED_RE = re.compile(r"^node (?P<node>\S+) is locked by (?P<action>\S+) \(vm (?P<vm>\d+), pid (?P<pid>\d+)\) "
                       r"since (?P<since>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)$")


def child(db, *args, **kw):
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.Popen([sys.executable, CHILD, str(db), *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, **kw)


def read_line(proc, timeout=15.0) -> str:
    """The child's next stdout line, within a deadline."""
    box = []
    t = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)
    t.start()
    t.join(timeout)
    if not box:
        proc.kill()
        raise AssertionError(f"child said nothing in {timeout}s: {proc.stderr.read()}")
    return box[0].strip()


@pytest.fixture
def db(tmp_path):
    return tmp_path / "state.db"


def test_two_processes_race_for_one_node_exactly_one_wins(db, tmp_path):
    go = tmp_path / "go"
    a = child(db, "race", "n1", "deploy", 41, go, 0.5)
    b = child(db, "race", "n1", "deploy", 42, go, 0.5)
    time.sleep(0.3)  # both interpreters up and polling for the go file
    go.write_text("go")
    try:
        out = sorted([read_line(a), read_line(b)])
    finally:
        for p in (a, b):
            p.kill()
            p.wait(10)
    won = [o for o in out if o.startswith("WON ")]
    lost = [o for o in out if o.startswith("LOST ")]
    assert len(won) == 1 and len(lost) == 1, out
    winner_pid = int(won[0].split()[1])
    m = LOCKED_RE.match(lost[0][len("LOST "):])
    assert m, lost[0]
    assert m["node"] == "n1" and m["action"] == "deploy"
    assert int(m["pid"]) == winner_pid
    winner_vm = 41 if winner_pid == a.pid else 42
    assert int(m["vm"]) == winner_vm


def test_kill_9_of_the_holder_frees_the_node_at_once(db):
    holder = child(db, "hold", "n1", "deploy", 7, 60)
    assert read_line(holder).startswith("LOCKED")
    store = StateStore(db)
    with pytest.raises(LockedError):
        with store.lock("n1", "delete", wait=0):
            pass
    holder.send_signal(signal.SIGKILL)
    holder.wait(10)
    start = time.monotonic()
    with store.lock("n1", "delete", vm_id=7, wait=5) as rec:
        assert time.monotonic() - start < 1.0
        assert rec.state == "available"
        h = store.holder("n1")
        assert h.pid == os.getpid() and h.action == "delete"


def test_a_killed_holders_record_is_not_reported(db):
    holder = child(db, "hold", "n1", "deploy", 7, 60)
    assert read_line(holder).startswith("LOCKED")
    store = StateStore(db)
    assert store.holder("n1").pid == holder.pid
    holder.kill()
    holder.wait(10)
    assert store.holder("n1") is None  # its record is still in the file, but it is dead


def test_second_action_waits_a_bounded_time_then_names_the_holder(db):
    holder = child(db, "hold", "n1", "deploy", 42, 30)
    assert read_line(holder).startswith("LOCKED")
    try:
        store = StateStore(db, lock_wait_s=0.6)
        start = time.monotonic()
        with pytest.raises(LockedError) as info:
            with store.lock("n1", "shutdown"):
                pass
        elapsed = time.monotonic() - start
        assert 0.5 <= elapsed < 3.0
        m = LOCKED_RE.match(str(info.value))
        assert m and int(m["pid"]) == holder.pid and m["vm"] == "42" and m["action"] == "deploy"
        assert info.value.node == "n1"
    finally:
        holder.kill()
        holder.wait(10)


def test_the_wait_comes_from_bmm_config(db, tmp_path, monkeypatch):
    cfg = tmp_path / "bmm.toml"
    cfg.write_text(f'state_db = "{db}"\nlock_wait_s = 0.25\n')
    monkeypatch.setenv("BMM_CONFIG", str(cfg))
    monkeypatch.delenv("BMM_STATE_DB", raising=False)
    store = open_store()
    assert store.path == db and store.locks.wait_s == 0.25


def test_status_reads_never_block_on_a_lock(db):
    store = StateStore(db)
    store.transition("n1", "deploying", vm_id=5)
    store.transition("n1", "active")
    holder = child(db, "hold", "n1", "shutdown", 5, 30)
    assert read_line(holder).startswith("LOCKED")
    try:
        start = time.monotonic()
        rec = store.get("n1")
        everything = store.all()
        history = store.history("n1")
        who = store.holder("n1")
        assert time.monotonic() - start < 0.5
        assert rec.state == "active" and rec.vm_id == 5
        assert [r.name for r in everything] == ["n1"] and len(history) == 2
        assert who.action == "shutdown" and who.pid == holder.pid and who.vm_id == 5
    finally:
        holder.kill()
        holder.wait(10)


def test_lock_is_reentrant_in_a_thread_and_exclusive_across_threads(tmp_path):
    locks = NodeLocks(tmp_path / "locks", wait_s=0.2)
    outcome = []

    def other_thread():
        try:
            with locks.lock("n1", "other"):
                outcome.append("won")
        except LockedError as exc:
            outcome.append(str(exc))

    with locks.lock("n1", "deploy", vm_id=3) as h:
        with locks.lock("n1", "power") as inner:
            assert inner == h
            assert locks.held_here("n1")
        assert locks.held_here("n1")
        t = threading.Thread(target=other_thread)
        t.start()
        t.join(5)
    assert not locks.held_here("n1")
    assert len(outcome) == 1 and outcome[0].startswith("node n1 is locked by deploy (vm 3, pid")
    assert locks.holder("n1") is None
    with locks.lock("n1", "again", wait=0):
        pass


def test_locks_of_different_nodes_are_independent(tmp_path):
    locks = NodeLocks(tmp_path / "locks", wait_s=0)
    with locks.lock("n1", "deploy"):
        with locks.lock("n2", "deploy"):
            assert locks.holder("n1").node == "n1" and locks.holder("n2").node == "n2"


def test_odd_node_names_get_safe_lock_files(tmp_path):
    locks = NodeLocks(tmp_path / "locks")
    assert locks.path("../etc/x").parent == tmp_path / "locks"
    with pytest.raises(Exception):
        locks.path("..")


def test_pid_reuse_is_detected(tmp_path):
    me = os.getpid()
    assert pid_alive(me, process_start(me))
    assert not pid_alive(me, "1")  # same pid, another start time: not the same process
    h = Holder(node="n", action="a", pid=me, since="t", start="1")
    assert not h.alive()
    assert not pid_alive(None) and not pid_alive(0)
