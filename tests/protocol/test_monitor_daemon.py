"""The monitor daemon under trouble, seen from monitord's side: a hung BMC, an unreachable
monitord address, a node with an action in flight, a late probe, monitord going away and
coming back, garbage registrations and a crashing kind. The real daemon runs as its own
process (`python -m im_drivers.daemon`, as the IM control script starts it); machines are
the test-only kind tests/slowkind.py; every message is decoded as onemonitord does."""

import json
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from bmm.state import StateStore
from im_drivers import hosts
from tests import slowkind
from tests.monitord import Blackhole, Monitord
from tests.onemock import OpenNebula

SLOW_KIND = 'slow = "tests.slowkind:SlowKind"'
FAST = {"BEACON_HOST": 1, "STATE_VM": 1, "MONITOR_VM": 2, "MONITOR_HOST": 2, "SYSTEM_HOST": 2}
TOLERANCE_S = 0.5           # over a period, for the gap between two messages of one type
WINDOW_S = 20.0


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def node_toml(index: int, name: str) -> str:
    return textwrap.dedent(f"""\
        [nodes.{name}]
        kind = "slow"
        arch = "x86_64"
        model = "Slow Machine"
        cpus = 4
        memory_mb = 2048
        disk_gb = 10
        macs = ["52:54:00:10:00:{index:02x}"]
        ip = "192.0.2.{index + 20}"
        [nodes.{name}.ssh]
        address = "192.0.2.{index + 20}"
        [nodes.{name}.power]
        driver = "manual"
        """)


class DaemonLab:
    """An installed bmm with slow-kind nodes, a monitord, and the daemon as a process."""

    def __init__(self, tmp_path, nodes: list[str]):
        inventory = tmp_path / "nodes.toml"
        inventory.write_text("".join(node_toml(i, n) for i, n in enumerate(nodes)))
        self.one = OpenNebula(tmp_path / "one", inventory, kinds=SLOW_KIND)
        self.state_dir = self.one.state_dir
        self.config = self.one.remotes / "etc" / "bmm" / "bmm.toml"
        self.monitord = Monitord()
        self.out = tmp_path / "daemon.out"
        self.proc: subprocess.Popen | None = None
        self.ids: dict[str, int] = {}

    @property
    def env(self) -> dict:
        return dict(self.one.env, BMM_CONFIG=str(self.config))

    def register(self, host_id: int, name: str, *, port: int | None = None, address: str = "127.0.0.1",
                 periods: dict = FAST) -> None:
        hosts.register(self.state_dir / "state.db",
                       hosts.MonitoredHost(host_id, name, address, port or self.monitord.port, dict(periods)))
        self.ids[name] = host_id

    def behave(self, name: str, **behaviour) -> None:
        slowkind.set_behaviour(self.state_dir, name, **behaviour)

    def start(self) -> None:
        with open(self.out, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "im_drivers.daemon"], env=self.env,
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        pid_file = self.state_dir / "monitor" / "daemon.pid"
        wait_for(lambda: pid_file.exists() and pid_file.read_text().strip() == str(self.proc.pid),
                 10, "the daemon's pid file")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int:
        """SIGTERM, as the control script sends it; the return code."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=10)

    def close(self) -> None:
        if self.alive():
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.monitord.close()

    def status(self) -> dict:
        try:
            return json.loads((self.state_dir / "monitor" / "status.json").read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def log(self) -> str:
        return (self.state_dir / "bmm.log").read_text()

    def rss_kb(self) -> int:
        for line in open(f"/proc/{self.proc.pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def received(self, name: str, kind: str, since: float = float("-inf")):
        """(arrival, message) of one host and type."""
        return [(t, m) for t, _, m in self.monitord.timed(since) if m.host_id == self.ids[name] and m.type == kind]

    def watch(self, seconds: float) -> tuple[float, float]:
        """Let the daemon run for `seconds`, checking it stays alive; the window (start, end)."""
        start = time.monotonic()
        end = start + seconds
        while time.monotonic() < end:
            assert self.alive(), f"the daemon died: {self.out.read_text()[-2000:]}"
            time.sleep(min(0.5, max(0.0, end - time.monotonic())))
        return start, end

    def max_gap(self, name: str, kind: str, window: tuple[float, float]) -> float:
        start, end = window
        times = [t for t, _ in self.received(name, kind, start) if t <= end]
        edges = [start, *times, end]
        return max(b - a for a, b in zip(edges, edges[1:]))

    def late(self, names, window: tuple[float, float], kinds=("BEACON_HOST", "STATE_VM")) -> list:
        """(host, type, gap) for each gap in the window longer than its period + TOLERANCE_S."""
        gaps = [(name, kind, self.max_gap(name, kind, window)) for name in names for kind in kinds]
        return [(name, kind, round(gap, 2)) for name, kind, gap in gaps if gap > FAST[kind] + TOLERANCE_S]


@pytest.fixture
def make_lab(tmp_path):
    labs = []

    def make(nodes):
        lab = DaemonLab(tmp_path, nodes)
        labs.append(lab)
        return lab

    yield make
    for lab in labs:
        lab.close()


def healthy(lab: DaemonLab, names, *, periods=FAST) -> None:
    for i, name in enumerate(names):
        lab.behave(name, vm=100 + i, power="on")
        lab.register(10 + i, name, periods=periods)


def first_state(lab: DaemonLab, names, timeout: float = 15) -> None:
    for name in names:
        wait_for(lambda: lab.received(name, "STATE_VM"), timeout, f"a STATE_VM from {name}")


def test_a_hung_bmc_delays_no_other_host_and_its_host_is_still_beaconed(make_lab):
    ok = ["ok1", "ok2", "ok3"]
    lab = make_lab([*ok, "hung"])
    healthy(lab, ok)
    lab.behave("hung", vm=7, delay=None)
    lab.register(20, "hung")
    lab.start()
    first_state(lab, ok)
    window = lab.watch(WINDOW_S)
    assert lab.late(ok, window) == []
    assert lab.late(["hung"], window, kinds=["BEACON_HOST"]) == []
    assert all(m.success for _, m in lab.received("hung", "BEACON_HOST"))
    assert lab.received("hung", "STATE_VM") == []       # it never answered: nothing is known
    status = lab.status()
    assert status["pool"]["written_off"] == 1            # one probe, never a second for that host
    assert status["counts"]["still_running"] >= WINDOW_S / 2
    began = time.monotonic()
    assert lab.stop() == 0                               # SIGTERM is not held up by the hung probe
    assert time.monotonic() - began < 5
    assert not (lab.state_dir / "monitor" / "daemon.pid").exists()


def test_an_unreachable_monitord_address_delays_no_other_host(make_lab):
    ok = ["ok1", "ok2", "ok3"]
    lab = make_lab([*ok, "lost", "far"])
    healthy(lab, ok)
    blackhole = Blackhole()
    try:
        lab.behave("lost", vm=8)
        lab.register(21, "lost", port=blackhole.port)    # accepts nothing: connects time out
        lab.behave("far", vm=9)
        lab.register(22, "far", address="10.255.255.1")  # unroutable
        lab.start()
        first_state(lab, ok)
        window = lab.watch(WINDOW_S)
        assert lab.late(ok, window) == []
        links = lab.status()["links"]
        lost = links[f"127.0.0.1:{blackhole.port}"]
        assert lost["failed"] >= 1 and lost["high_water"] <= len(FAST)
        assert links[f"127.0.0.1:{lab.monitord.port}"]["failed"] == 0
    finally:
        blackhole.close()


def test_a_node_with_an_action_in_flight_is_beaconed_but_not_probed(make_lab):
    lab = make_lab(["ok1", "busy"])
    healthy(lab, ["ok1"])
    lab.behave("busy", vm=7, count=True)
    lab.register(30, "busy")
    lab.start()
    first_state(lab, ["ok1", "busy"])
    store = StateStore(lab.state_dir / "state.db")

    def not_probed_while(hold: float) -> None:
        before = slowkind.calls(lab.state_dir, "busy")
        window = lab.watch(hold)
        assert slowkind.calls(lab.state_dir, "busy") <= before + 1     # at most one already under way
        assert lab.late(["busy"], window, kinds=["BEACON_HOST"]) == []
        assert [m for t, m in lab.received("busy", "STATE_VM", window[0] + 0.5)] == []
        assert lab.late(["ok1"], window) == []

    def probed_again() -> None:
        since, count = time.monotonic(), slowkind.calls(lab.state_dir, "busy")
        wait_for(lambda: slowkind.calls(lab.state_dir, "busy") > count and lab.received("busy", "STATE_VM", since),
                 5, "busy to be probed again")

    with store.lock("busy", "deploy", vm_id=7):          # an action holds the node
        not_probed_while(4)
    probed_again()
    store.transition("busy", "deploying", vm_id=7)       # a transient state, lock released
    not_probed_while(4)
    store.transition("busy", "active")
    probed_again()


def test_a_probe_under_way_when_an_action_runs_is_not_reported(make_lab):
    """The BMC said RUNNING, then a shutdown took the node, powered it off and ended, all
    before the probe answered: that RUNNING is from before the action and must not reach
    monitord (oned would take the powered-off VM for running again)."""
    periods = {"BEACON_HOST": 1, "STATE_VM": 10, "MONITOR_VM": 10, "MONITOR_HOST": 600, "SYSTEM_HOST": 600}
    lab = make_lab(["node1"])
    store = StateStore(lab.state_dir / "state.db")
    store.transition("node1", "deploying", vm_id=7)
    store.transition("node1", "active")
    lab.behave("node1", vm=7, power="on", count=True)
    lab.register(50, "node1", periods=periods)
    lab.start()
    first_state(lab, ["node1"])
    lab.behave("node1", vm=7, power="on", delay=2.0, count=True)     # deadline 3 s: never late
    running = 'VM=[ID="7",DEPLOY_ID="bmm-node1-7",STATE="RUNNING"]\n'
    calls = slowkind.calls(lab.state_dir, "node1")
    wait_for(lambda: slowkind.calls(lab.state_dir, "node1") > calls, 15, "the next probe to begin", interval=0.01)
    began = time.monotonic()
    with store.lock("node1", "shutdown", vm_id=7):      # the probe is waiting on the BMC
        store.transition("node1", "stopping")
        lab.behave("node1", vm=7, power="off", count=True)
        store.transition("node1", "off")
    assert time.monotonic() - began < 1.5, "the action outlasted the probe: the test proved nothing"
    wait_for(lambda: lab.status().get("counts", {}).get("stale_dropped"), 10, "the stale result to be dropped")
    wait_for(lambda: lab.received("node1", "STATE_VM", began), 15, "the next probe's STATE_VM")
    assert [m.payload for t, m in lab.received("node1", "STATE_VM", began)] == [running.replace("RUNNING", "POWEROFF")]


def test_a_late_probe_is_reported_at_the_deadline_and_its_result_a_period_later(make_lab):
    periods = {"BEACON_HOST": 1, "STATE_VM": 2, "MONITOR_VM": 2, "MONITOR_HOST": 600, "SYSTEM_HOST": 600}
    lab = make_lab(["slow1"])
    lab.behave("slow1", vm=42, power="on", count=True)
    lab.register(40, "slow1", periods=periods)
    lab.start()
    first_state(lab, ["slow1"])
    # The deadline is 0.3 x 2 s: the BMC now answers in 1.2 s, and says POWEROFF.
    lab.behave("slow1", vm=42, power="off", delay=1.2, count=True)
    changed, calls = time.monotonic(), slowkind.calls(lab.state_dir, "slow1")
    window = lab.watch(10)
    states = [m.payload for t, m in lab.received("slow1", "STATE_VM", changed)]
    assert len(states) >= 4
    running = 'VM=[ID="42",DEPLOY_ID="bmm-slow1-42",STATE="RUNNING"]\n'
    poweroff = 'VM=[ID="42",DEPLOY_ID="bmm-slow1-42",STATE="POWEROFF"]\n'
    # at each deadline what is known is sent: first the state from before, then (once a late
    # probe has answered) what it found; a slow BMC is reported a period late, never never
    assert set(states) == {running, poweroff}
    first_off = states.index(poweroff)
    assert first_off <= 2 and states[first_off:] == [poweroff] * (len(states) - first_off)
    # from fresh (sent when the probe answers) to last known (sent at the deadline): one gap of
    # period + deadline, then every period
    assert lab.max_gap("slow1", "STATE_VM", window) <= periods["STATE_VM"] + 0.6 + TOLERANCE_S
    assert slowkind.calls(lab.state_dir, "slow1") >= calls + 3       # the probes ran, and came late
    wait_for(lambda: lab.status().get("counts", {}).get("late_dropped", 0) >= 3, 5, "late results dropped")
    lab.behave("slow1", vm=42, power="off")
    answered = time.monotonic()
    wait_for(lambda: any("POWEROFF" in m.payload for _, m in lab.received("slow1", "STATE_VM", answered)),
             6, "the POWEROFF of a probe on time")


def test_memory_stays_bounded_while_monitord_is_away_and_delivery_resumes(make_lab):
    names = ["ok1", "ok2", "ok3"]
    lab = make_lab(names)
    healthy(lab, names, periods={k: 1 for k in FAST})
    lab.start()
    first_state(lab, names)
    port = lab.monitord.port
    lab.monitord.close()
    rss_before = lab.rss_kb()
    lab.watch(10)
    link = wait_for(lambda: lab.status()["links"][f"127.0.0.1:{port}"]["failed"] >= 3 and
                    lab.status()["links"][f"127.0.0.1:{port}"], 5, "failed sends to the absent monitord")
    assert link["high_water"] <= len(names) * len(FAST)        # newest wins: one per host and type
    assert link["dropped"] == 0
    assert lab.rss_kb() - rss_before < 4096
    lab.monitord = Monitord(port=port)
    back = time.monotonic()
    for name in names:
        for kind in ("BEACON_HOST", "STATE_VM", "SYSTEM_HOST"):
            wait_for(lambda: lab.received(name, kind, back), 15, f"{kind} from {name} after monitord came back")
    wait_for(lambda: lab.status()["links"][f"127.0.0.1:{port}"]["backoff_s"] == 0, 5, "the backoff to end")


def test_garbage_registrations_and_crashing_probes_never_stop_the_daemon(make_lab):
    lab = make_lab(["ok1", "ok2", "crash"])
    healthy(lab, ["ok1", "ok2"])
    lab.behave("crash", vm=5, count=True, **{"raise": True})
    lab.register(50, "crash")
    lab.register(51, "ghost")                            # not in the inventory
    lab.register(52, "lookup", address="monitord.invalid")
    d = lab.state_dir / "monitor" / "hosts"
    good = json.loads((d / "10.json").read_text())
    garbage = {
        "bad.json": "{not json",
        "list.json": "[1, 2]",
        "60.json": json.dumps(dict(good, host_id="sixty")),
        "61.json": json.dumps(dict(good, host_id=61, port=99999)),
        "62.json": json.dumps(dict(good, host_id=62, address="not an address!")),
        "63.json": json.dumps(dict(good, host_id=63, name="../../etc")),
        "64.json": json.dumps(dict(good, host_id=64, periods={"STATE_VM": 0})),
        "65.json": json.dumps(dict(good, host_id=65, extra=1)),
        "66.json": " " * 100_000,
        "67.json": json.dumps(dict(good, name="ok2")),   # host id 10 a second time
    }
    for name, text in garbage.items():
        (d / name).write_text(text)
    lab.start()
    first_state(lab, ["ok1", "ok2"])
    (d / "68.json").write_text("\0garbage written while it runs")
    window = lab.watch(8)
    assert lab.late(["ok1", "ok2"], window) == []
    assert {m.host_id for _, _, m in lab.monitord.timed()} == {10, 11, 50, 51}
    assert lab.late(["crash"], window, kinds=["BEACON_HOST"]) == []
    assert lab.received("crash", "STATE_VM") == []
    assert slowkind.calls(lab.state_dir, "crash") >= 5
    ghost = [m for _, _, m in lab.monitord.timed() if m.host_id == 51]
    failed = next(i for i, m in enumerate(ghost) if m.type == "SYSTEM_HOST")
    assert all(not m.success and "not in the bmm inventory" in m.payload for m in ghost[failed:])
    assert {m.type for m in ghost[failed:]} == {"BEACON_HOST", "SYSTEM_HOST", "MONITOR_HOST"}
    text = lab.log()
    for name in [*garbage, "68.json"]:
        if name != "67.json":
            assert text.count(f"ignoring monitor registration {name!r}") == 1, name
    assert text.count("host id 10 is registered twice") == 1
    assert text.count("probe traceback") == 1            # once per episode, not once per period
    assert "RuntimeError: the simulated BMC library crashed" in text
    second = subprocess.run([sys.executable, "-m", "im_drivers.daemon"], env=lab.env, timeout=30,
                            capture_output=True)
    assert second.returncode == 0 and lab.alive()        # one daemon per front-end
    assert lab.stop() == 0
