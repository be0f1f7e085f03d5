"""The shared power policy: idempotency, verification, retries, fatal vs transient, pacing."""

import os
import subprocess
import sys
import time

import pytest

from bmm.errors import FatalError, TimeoutExpired, TransientError
from bmm.power import base
from bmm.power.base import Pacer, Power, read_password_file


@pytest.fixture(autouse=True)
def fast(monkeypatch, tmp_path):
    monkeypatch.setenv("BMM_PACE_DIR", str(tmp_path / "pace"))
    monkeypatch.setattr(base, "RETRY_BACKOFF", (0.01, 0.02))
    monkeypatch.setattr(base, "POLL_BACKOFF", (0.01, 0.02))


class FakePower(Power):
    """A scripted peer: `state` is the truth; `lag` polls pass before a change shows;
    `fail` is a list of exceptions raised by the next commands."""

    driver = "fake"

    def __init__(self, settings=None, state="off", lag=0):
        super().__init__("node01", {"min_interval_s": 0, "timeout_s": 2, **(settings or {})})
        self.state = state
        self.pending = None
        self.lag = lag
        self.commands = []
        self.fail = []

    @property
    def endpoint(self):
        return "fake-bmc:623"

    def _next_failure(self):
        if self.fail:
            raise self.fail.pop(0)

    def _status_once(self, timeout):
        self._next_failure()
        self.commands.append("status")
        if self.pending is not None:
            if self.pending[1] <= 0:
                self.state, self.pending = self.pending[0], None
            else:
                self.pending = (self.pending[0], self.pending[1] - 1)
        return self.state

    def _action_once(self, action, timeout):
        self._next_failure()
        self.commands.append(action)
        if action == "never":
            return
        target = {"on": "on", "off": "off", "soft_off": "off", "reset": "on"}[action]
        self.pending = (target, self.lag)


def actions(p):
    return [c for c in p.commands if c != "status"]


def test_on_when_on_sends_nothing():
    p = FakePower(state="on")
    assert p.on() == "on"
    assert actions(p) == []
    p = FakePower(state="off")
    assert p.off() == "off" and p.soft_off() == "off"
    assert actions(p) == []


def test_change_is_verified_by_polling():
    p = FakePower(state="off", lag=3)
    assert p.on() == "on"
    assert actions(p) == ["on"]
    assert p.commands.count("status") >= 4      # 1 before, then polls until the lag passes


def test_change_never_seen_times_out_at_deadline():
    class Stuck(FakePower):
        def _action_once(self, action, timeout):
            self.commands.append(action)

    p = Stuck({"timeout_s": 0.5}, state="off")
    t0 = time.monotonic()
    with pytest.raises(TimeoutExpired) as exc:
        p.on()
    assert time.monotonic() - t0 < 0.5 + 0.3
    assert "node node01" in str(exc.value) and "fake fake-bmc:623" in str(exc.value)
    assert "did not become on" in str(exc.value) and "last seen: off" in str(exc.value)


def test_cycle_is_off_then_on_each_verified():
    p = FakePower(state="on", lag=1)
    assert p.cycle() == "on"
    assert actions(p) == ["off", "on"]
    p = FakePower(state="off")
    assert p.cycle() == "on"
    assert actions(p) == ["on"]              # off was already done


def test_reset_of_an_off_node_powers_it_on():
    p = FakePower(state="off")
    assert p.reset() == "on"
    assert actions(p) == ["on"]
    p = FakePower(state="on")
    assert p.reset() == "on"
    assert actions(p) == ["reset"]


def test_transient_failures_are_retried():
    p = FakePower(state="off")
    p.fail = [TransientError("busy"), TransientError("busy")]
    assert p.on() == "on"
    assert actions(p) == ["on"]


def test_retries_are_bounded():
    p = FakePower({"retries": 2}, state="off")
    p.fail = [TransientError("fake fake-bmc:623: busy")] * 5
    with pytest.raises(TransientError) as exc:
        p.status()
    assert "gave up after 3 attempts" in str(exc.value)
    assert len(p.fail) == 2


def test_retries_stop_at_the_deadline(monkeypatch):
    monkeypatch.setattr(base, "RETRY_BACKOFF", (0.3,))
    p = FakePower({"retries": 100, "timeout_s": 1.0}, state="off")
    p.fail = [TransientError("no answer")] * 100
    t0 = time.monotonic()
    with pytest.raises(TimeoutExpired) as exc:
        p.status()
    assert time.monotonic() - t0 <= 1.0 + 0.2
    assert "deadline reached" in str(exc.value)


def test_fatal_errors_are_not_retried():
    p = FakePower(state="off")
    p.fail = [FatalError("authentication failed"), TransientError("x")]
    t0 = time.monotonic()
    with pytest.raises(FatalError):
        p.on()
    assert time.monotonic() - t0 < 0.1
    assert len(p.fail) == 1 and p.commands == []


def test_transient_status_failures_while_verifying_are_tolerated():
    p = FakePower(state="off", lag=1)

    orig = p._status_once
    calls = {"n": 0}

    def flaky(timeout):
        calls["n"] += 1
        if calls["n"] in (2, 3):
            raise TransientError("busy right after the command")
        return orig(timeout)

    p._status_once = flaky
    assert p.on() == "on"


def test_do_rejects_unknown_actions():
    with pytest.raises(Exception, match="unknown power action"):
        FakePower().do("explode")


# -- pacing ------------------------------------------------------------------------------------

def test_pacer_keeps_the_interval_in_one_process(tmp_path):
    pacer = Pacer("bmc:10.0.0.1:623", 0.2, directory=tmp_path)
    stamps = []
    for _ in range(3):
        with pacer.slot(time.monotonic() + 5):
            stamps.append(time.monotonic())
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    assert all(g >= 0.19 for g in gaps), gaps


def test_pacer_interval_would_pass_deadline(tmp_path):
    pacer = Pacer("k", 5.0, directory=tmp_path)
    with pacer.slot(time.monotonic() + 1):
        pass
    with pytest.raises(TimeoutExpired, match="minimum command interval"):
        with pacer.slot(time.monotonic() + 0.2):
            pass


PACE_CHILD = r"""
import sys, time
from pathlib import Path
from bmm.power.base import Pacer
p = Pacer("pdu:10.0.100.1:23", float(sys.argv[2]), directory=Path(sys.argv[1]))
for _ in range(3):
    with p.slot(time.monotonic() + 30):
        start = time.monotonic()
        time.sleep(0.05)
        print(f"{start:.6f} {time.monotonic():.6f}", flush=True)
"""


def test_pacer_serialises_and_spaces_commands_across_processes(tmp_path):
    """Two processes (two OpenNebula actions) share one PDU: never overlapping, and each
    command starts at least min_interval after the previous one ended."""
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    procs = [subprocess.Popen([sys.executable, "-c", PACE_CHILD, str(tmp_path), "0.15"],
                              stdout=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    try:
        outs = [p.communicate(timeout=30)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    spans = sorted(tuple(map(float, line.split())) for out in outs for line in out.split("\n") if line)
    assert len(spans) == 6
    for (s1, e1), (s2, e2) in zip(spans, spans[1:]):
        assert s2 >= e1 + 0.14, spans   # 0.15 s minus float formatting slack


def test_pacing_applies_between_a_drivers_commands(tmp_path, monkeypatch):
    p = FakePower({"min_interval_s": 0.1}, state="off")
    t0 = time.monotonic()
    p.status()
    p.status()
    p.status()
    assert time.monotonic() - t0 >= 0.2


# -- secrets -----------------------------------------------------------------------------------

def test_password_file_must_be_private(tmp_path):
    f = tmp_path / "bmc"
    f.write_text("s3cret\n")
    f.chmod(0o644)
    with pytest.raises(FatalError, match="chmod 600") as exc:
        read_password_file(str(f), node="node01", what="ipmi x")
    assert "s3cret" not in str(exc.value)
    f.chmod(0o600)
    assert read_password_file(str(f), node="node01", what="ipmi x") == "s3cret"


def test_password_file_missing_or_symlink(tmp_path):
    with pytest.raises(FatalError, match="does not exist"):
        read_password_file(str(tmp_path / "nope"), node="n", what="w")
    real = tmp_path / "real"
    real.write_text("x")
    real.chmod(0o600)
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(FatalError, match="symlink"):
        read_password_file(str(link), node="n", what="w")
