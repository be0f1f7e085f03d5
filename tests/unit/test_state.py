"""The node state machine and its SQLite persistence."""

import itertools
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from bmm.errors import BmmError
from bmm.state import (STATES, TRANSIENT, TRANSITIONS, StateStore, state_db_path)
from tests.support import REPO
from tests.unit.test_locks import child, read_line


@pytest.fixture
def store(tmp_path):
    return StateStore(tmp_path / "state.db")


def force(store, name, state, vm_id=None):
    """Put a node straight into a state (test set-up only: bypasses the transition table)."""
    with store._writer() as conn:
        row = conn.execute("SELECT * FROM nodes WHERE name = ?", (name,)).fetchone()
        store._write(conn, store._record(name, row), state, vm_id=vm_id)


def test_a_node_never_seen_is_available_and_reading_creates_nothing(tmp_path):
    store = StateStore(tmp_path / "sub" / "state.db")
    rec = store.get("node01")
    assert rec.state == "available" and rec.vm_id is None and not rec.known
    assert store.all() == [] and store.history("node01") == []
    assert not (tmp_path / "sub").exists()


def test_database_is_wal(store):
    store.transition("n1", "deploying", vm_id=1)
    mode = sqlite3.connect(store.path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_full_life_cycle_with_poweroff_and_resume(store):
    steps = [("deploying", 42), ("active", None), ("stopping", None), ("off", None),
             ("deploying", None), ("active", None), ("stopping", None), ("off", None),
             ("deleting", None), ("cleaning", None), ("available", None)]
    for to, vm in steps:
        kw = {"vm_id": vm} if vm is not None else {}
        rec = store.transition("n1", to, reason=f"to {to}", **kw)
        assert rec.state == to
        if to != "available":
            assert rec.vm_id == 42  # the instance stays with the node until it is clean
        if to in TRANSIENT:
            assert rec.owner_pid == os.getpid() and rec.owner_since
        else:
            assert rec.owner_pid is None
    rec = store.get("n1")
    assert rec.state == "available" and rec.vm_id is None and rec.updated_at.endswith("Z")
    hist = store.history("n1", limit=100)
    assert [h.to_state for h in hist] == [s for s, _ in steps]
    assert hist[0].from_state == "available" and hist[0].vm_id == 42 and hist[0].reason == "to deploying"


@pytest.mark.parametrize("frm,to", list(itertools.product(STATES, STATES)))
def test_only_legal_transitions_are_allowed(store, frm, to):
    force(store, "n1", frm, vm_id=7)
    legal = to in TRANSITIONS[frm] or (frm == to and frm in TRANSIENT)  # re-entry by its owner
    if legal:
        assert store.transition("n1", to).state == to
    else:
        with pytest.raises(BmmError) as info:
            store.transition("n1", to)
        message = str(info.value)
        assert message.startswith("node n1: ")
        assert f"from {frm} to {to}" in message
        assert store.get("n1").state == frm


def test_unknown_state_is_refused(store):
    with pytest.raises(BmmError, match="unknown state 'running'"):
        store.transition("n1", "running")


def test_error_records_last_error_until_a_success(store):
    store.transition("n1", "deploying", vm_id=3)
    rec = store.transition("n1", "error", error="grub-editenv failed: no such file")
    assert rec.state == "error" and rec.last_error == "grub-editenv failed: no such file"
    with pytest.raises(BmmError, match="grub-editenv failed"):
        store.transition("n1", "active")  # the refusal says why the node is in error
    rec = store.transition("n1", "deploying", vm_id=3)
    assert rec.last_error == "grub-editenv failed: no such file"  # still visible while retrying
    assert store.transition("n1", "active").last_error is None


def test_one_instance_per_machine(store):
    store.transition("n1", "deploying", vm_id=41)
    store.transition("n1", "active")
    store.transition("n1", "stopping")
    store.transition("n1", "off")
    with pytest.raises(BmmError, match="holds vm 41.*refusing vm 42"):
        store.transition("n1", "deploying", vm_id=42)
    assert store.transition("n1", "deploying", vm_id=41).state == "deploying"


def test_history_is_bounded(tmp_path):
    store = StateStore(tmp_path / "s.db", history_limit=5)
    for i in range(6):
        store.set_maintenance("n1", i % 2 == 0, "x")  # on, off, on, ...
    store.transition("n2", "deploying", vm_id=1)
    hist = store.history("n1", limit=100)
    assert len(hist) == 5
    assert len(store.history("n2")) == 1


def test_recovery_fails_a_deploying_node_left_by_a_dead_process(store):
    proc = child(store.path, "enter", "n1", "deploying", 42, "exit")
    assert read_line(proc).startswith("ENTERED")
    proc.wait(10)
    rec = store.get("n1")
    assert rec.state == "deploying" and rec.owner_pid == proc.pid and rec.interrupted
    assert store.recover() == [("n1", "deploying")]
    rec = store.get("n1")
    assert rec.state == "error" and rec.vm_id == 42
    assert rec.last_error.startswith("interrupted while deploying")
    assert store.history("n1")[-1].reason.startswith("interrupted while deploying")
    assert store.recover() == []


def test_an_unreaped_dead_owner_counts_as_dead(store):
    """A zombie (exited, parent has not reaped it, e.g. under a container init) is not alive."""
    proc = child(store.path, "enter", "n1", "deploying", 3, "exit")
    assert read_line(proc).startswith("ENTERED")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # wait for the exit without reaping it
        with open(f"/proc/{proc.pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                break
        time.sleep(0.02)
    else:
        pytest.fail("child did not exit")
    try:
        assert store.recover() == [("n1", "deploying")]
    finally:
        proc.wait(10)


def test_recovery_after_kill_9_in_the_middle_of_an_action(store):
    store.transition("n1", "deploying", vm_id=9)
    store.transition("n1", "active")
    proc = child(store.path, "enter", "n1", "stopping", 9, "sleep")
    assert read_line(proc).startswith("ENTERED")
    assert store.recover() == []  # its owner is alive and holds the lock: still running
    assert store.get("n1").state == "stopping"
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert store.recover() == [("n1", "stopping")]
    assert store.get("n1").last_error.startswith("interrupted while stopping")


def test_recovery_leaves_a_live_owner_alone(store):
    store.transition("n1", "deploying", vm_id=1)  # owned by this (live) process
    assert store.recover() == []
    assert store.get("n1").state == "deploying" and not store.get("n1").interrupted


def test_the_next_action_fails_an_interrupted_state_on_the_spot(store):
    proc = child(store.path, "enter", "n1", "deploying", 5, "exit")
    assert read_line(proc).startswith("ENTERED")
    proc.wait(10)
    rec = store.transition("n1", "deleting", reason="onevm terminate")
    assert rec.state == "deleting"
    moves = [(h.from_state, h.to_state) for h in store.history("n1")]
    assert moves[-2:] == [("deploying", "error"), ("error", "deleting")]


def test_a_later_process_may_take_over_a_transient_state_of_a_finished_one(store):
    """TM prolog enters deploying and exits; the VMM deploy process continues it."""
    proc = child(store.path, "enter", "n1", "deploying", 5, "exit")
    assert read_line(proc).startswith("ENTERED")
    proc.wait(10)
    rec = store.transition("n1", "deploying", vm_id=5)
    assert rec.owner_pid == os.getpid() and not rec.interrupted
    assert store.transition("n1", "active").state == "active"


@pytest.mark.parametrize("after,error", [("sleep", "is locked by deploying"),
                                         ("linger", "is already deploying by deploying")])
def test_a_live_owner_cannot_be_taken_over(store, after, error):
    proc = child(store.path, "enter", "n1", "deploying", 5, after)
    assert read_line(proc).startswith("ENTERED")
    if after == "linger":
        assert read_line(proc) == "RELEASED"
    try:
        impatient = StateStore(store.path, lock_wait_s=0.2)
        with pytest.raises(BmmError, match=error):
            impatient.transition("n1", "deploying", vm_id=5)
        assert impatient.recover() == []
        assert store.get("n1").state == "deploying"
    finally:
        proc.kill()
        proc.wait(10)


def test_maintenance_on_and_off(store):
    store.transition("n1", "deploying", vm_id=8)
    with pytest.raises(BmmError, match="is deploying"):
        store.set_maintenance("n1", True, "fan")
    store.transition("n1", "active")
    rec = store.set_maintenance("n1", True, "fan noise")
    assert rec.state == "maintenance" and rec.maintenance_reason == "fan noise"
    assert rec.previous_state == "active" and rec.vm_id == 8
    with pytest.raises(BmmError, match="from maintenance to deploying"):
        store.transition("n1", "deploying", vm_id=8)
    rec = store.set_maintenance("n1", False)
    assert rec.state == "active" and rec.vm_id == 8 and rec.maintenance_reason is None
    assert store.set_maintenance("n1", False).state == "active"  # already out: no change


def test_maintenance_off_to_available_drops_the_instance(store):
    force(store, "n1", "error", vm_id=4)
    store.set_maintenance("n1", True, "rebuilt by hand")
    rec = store.set_maintenance("n1", False, "disk wiped by hand", to="available")
    assert rec.state == "available" and rec.vm_id is None and rec.last_error is None


def test_state_db_path_resolution(tmp_path, monkeypatch):
    cfg = tmp_path / "bmm.toml"
    cfg.write_text('state_db = "from-config.db"\n')
    monkeypatch.setenv("BMM_CONFIG", str(cfg))
    monkeypatch.delenv("BMM_STATE_DB", raising=False)
    assert state_db_path() == tmp_path / "from-config.db"
    monkeypatch.setenv("BMM_STATE_DB", "/x/env.db")
    assert str(state_db_path()) == "/x/env.db"
    assert str(state_db_path("/x/cli.db")) == "/x/cli.db"


def test_many_processes_writing_at_once_lose_nothing(tmp_path):
    """WAL + busy_timeout + per-node locks: parallel writers to different nodes all land."""
    db = tmp_path / "s.db"
    StateStore(db).transition("warm", "maintenance")
    code = ("import sys; from bmm.state import StateStore; s = StateStore(sys.argv[1]);\n"
            "for i in range(10):\n"
            "    s.transition(sys.argv[2], 'deploying', vm_id=i); s.transition(sys.argv[2], 'active');\n"
            "    s.transition(sys.argv[2], 'deleting'); s.transition(sys.argv[2], 'cleaning');\n"
            "    s.transition(sys.argv[2], 'available')\n")
    env = dict(os.environ, PYTHONPATH=REPO)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(db), f"n{i}"], env=env,
                              stderr=subprocess.PIPE, text=True) for i in range(4)]
    for p in procs:
        assert p.wait(60) == 0, p.stderr.read()
    store = StateStore(db)
    for i in range(4):
        assert len(store.history(f"n{i}", limit=1000)) == 50
        assert store.get(f"n{i}").state == "available"


def test_a_change_watch_tells_a_commit_from_a_read(tmp_path):
    """What the monitor daemon re-reads its copy of the records on: any commit, by any
    process; never a read (every reader's close deletes the WAL, so file stats cannot tell)."""
    db = tmp_path / "state.db"
    watch = StateStore(db).watch()
    assert watch.changed() is False                 # no database: nothing to read
    StateStore(db).transition("n1", "deploying", vm_id=1)
    assert watch.changed() is True                  # the first look at a database
    assert watch.changed() is False
    StateStore(db).get("n1")
    StateStore(db).all()
    assert watch.changed() is False                 # reads commit nothing
    StateStore(db).transition("n1", "active")
    assert watch.changed() is True
    assert watch.changed() is False
    watch.close()
    assert watch.changed() is True                  # reopened: it cannot know what it missed
