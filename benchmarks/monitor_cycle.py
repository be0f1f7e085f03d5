#!/usr/bin/env python3
"""Monitor daemon benchmark P3 (not a test): STATE_VM cycles over 1000 simulated machines, 5%
of them with a hung BMC and 1% with a slow one. Targets: <= 2 s wall and <= 0.5 core·s per
cycle, and no healthy host misses a beacon.

    python3 benchmarks/monitor_cycle.py [--machines 1000] [--cycles 6] [--period 5]

The machines are tests/slowkind.py nodes: fakes at the BMC only (a hung one never answers, a
slow one answers after --slow-s). The daemon is the real one, as its own process (pid file,
flock, SIGTERM), with the real scheduling and wire format; a real UDP+TCP receiver
(tests/monitord.py) decodes every message as onemonitord does.

All hosts register before the daemon starts, so their periods are in phase: each cycle is a
burst of 1000 probes, the worst case. A cycle's wall time runs from its first BEACON_HOST (sent
the moment the cycle is due) to its last STATE_VM (a hung host's, at the probe deadline).
Every figure printed comes from this run:
- A: what one probe (daemon.run_probe: build_report, then the STATE_VM payload) costs with
  this inventory, measured in this process, one at a time: the floor of a cycle's probe CPU.
- B: the daemon's cycles, the daemon as installed (the inventory is parsed once per file
  version by bmm.inventory.load_node; the records come from the daemon's own copy).
"""

from __future__ import annotations

import os
import sys

# Keep this directory off sys.path so nothing here can shadow a stdlib module.
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
sys.path.insert(0, os.path.dirname(_here))

import argparse  # noqa: E402
import json  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import textwrap  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from pathlib import Path  # noqa: E402

from bmm.config import load_config  # noqa: E402
from bmm.opennebula import monitor  # noqa: E402
from bmm.state import StateStore  # noqa: E402
from im_drivers import hosts  # noqa: E402
from tests import slowkind  # noqa: E402
from tests.monitord import Monitord  # noqa: E402

REPO = Path(_here).parent
WALL_TARGET_S = 2.0
CPU_TARGET_S = 0.5
BEACON_SLACK_S = 1.0        # a beacon later than period + this is a missed beacon
TICKS = os.sysconf("SC_CLK_TCK")


def write_lab(root: Path, machines: int, port: int, periods: dict) -> Path:
    state = root / "state"
    state.mkdir(parents=True)
    nodes = []
    for i in range(machines):
        ip = f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}"
        nodes.append(textwrap.dedent(f"""\
            [nodes.sim{i:04d}]
            kind = "slow"
            arch = "x86_64"
            model = "Simulated"
            cpus = 8
            memory_mb = 4096
            disk_gb = 100
            macs = ["52:54:{i // 65536 % 256:02x}:{i // 256 % 256:02x}:{i % 256:02x}:01"]
            ip = "{ip}"
            [nodes.sim{i:04d}.ssh]
            address = "{ip}"
            [nodes.sim{i:04d}.power]
            driver = "manual"
            """))
        slowkind.set_behaviour(state, f"sim{i:04d}", vm=1000 + i, power="on")
        hosts.register(state / "state.db", hosts.MonitoredHost(i, f"sim{i:04d}", "127.0.0.1", port, dict(periods)))
    (root / "nodes.toml").write_text("".join(nodes))
    store = StateStore(state / "state.db")      # every machine holds an instance, as in production
    for i in range(machines):
        store.transition(f"sim{i:04d}", "deploying", vm_id=1000 + i)
        store.transition(f"sim{i:04d}", "active")
    config = root / "bmm.toml"
    config.write_text(textwrap.dedent(f"""\
        inventory = "{root / 'nodes.toml'}"
        state_db = "{state / 'state.db'}"
        [kinds]
        slow = "tests.slowkind:SlowKind"
        """))
    return config


def probe_cost(config_path: Path, calls: int = 200) -> tuple[float, float]:
    """(CPU s, peak MB) of one STATE_VM probe with this inventory, as the daemon runs it."""
    from im_drivers.daemon import run_probe

    config = load_config(config_path)
    records = {r.name: r for r in StateStore(config.state_db).all()}
    run_probe(config, "sim0000", ("STATE_VM",), records["sim0000"])
    names = [f"sim{i % len(records):04d}" for i in range(calls)]
    start = time.process_time()
    for name in names:
        run_probe(config, name, ("STATE_VM",), records[name])
    cpu = (time.process_time() - start) / calls
    tracemalloc.start()
    run_probe(config, "sim0001", ("STATE_VM",), records["sim0001"])
    peak = tracemalloc.get_traced_memory()[1] / 1e6
    tracemalloc.stop()
    return cpu, peak


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def vm_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def status(config_dir: Path) -> dict:
    try:
        return json.loads((config_dir / "state" / "monitor" / "status.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the daemon exited ({proc.returncode}) while waiting for {what}")
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")


def cycles_of(arrivals: list[float], period: float) -> list[list[float]]:
    """Arrival times grouped into bursts (a gap of more than half a period starts a new one)."""
    groups: list[list[float]] = []
    for t in sorted(arrivals):
        if not groups or t - groups[-1][-1] > period / 2:
            groups.append([])
        groups[-1].append(t)
    return groups


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--machines", type=int, default=1000)
    ap.add_argument("--hung", type=float, default=0.05, help="fraction of machines whose BMC hangs")
    ap.add_argument("--slow", type=float, default=0.01, help="fraction of machines whose BMC is slow")
    ap.add_argument("--slow-s", type=float, default=1.0, help="how long a slow BMC takes to answer")
    ap.add_argument("--period", type=int, default=5, help="STATE_VM and BEACON_HOST period (s)")
    ap.add_argument("--cycles", type=int, default=6, help="cycles measured")
    args = ap.parse_args()
    periods = {"BEACON_HOST": args.period, "STATE_VM": args.period, "MONITOR_VM": 30,
               "MONITOR_HOST": 120, "SYSTEM_HOST": 600}
    names = {i: f"sim{i:04d}" for i in range(args.machines)}
    n_hung, n_slow = int(args.machines * args.hung), int(args.machines * args.slow)
    hung = set(list(names.values())[::max(1, args.machines // max(n_hung, 1))][:n_hung])
    slow = set([n for n in list(names.values())[1::7] if n not in hung][:n_slow])
    monitord = Monitord()
    with tempfile.TemporaryDirectory(prefix="bmm-p3-") as tmp:
        root = Path(tmp)
        config = write_lab(root, args.machines, monitord.port, periods)
        state = root / "state"
        per_call_cpu, per_call_mb = probe_cost(config)
        print(f"A  one STATE_VM probe, {args.machines}-node inventory: {per_call_cpu * 1000:.3f} ms CPU and "
              f"{per_call_mb:.2f} MB peak; {args.machines} probes one at a time: "
              f"{per_call_cpu * args.machines:.3f} core·s (ratio to the {CPU_TARGET_S} core·s target: "
              f"{per_call_cpu * args.machines / CPU_TARGET_S:.2f})")
        sys.stdout.flush()
        entry = ["-m", "im_drivers.daemon"]
        env = dict(os.environ, BMM_CONFIG=str(config), PYTHONPATH=str(REPO))
        out = open(root / "daemon.out", "wb")
        started = time.monotonic()
        proc = subprocess.Popen([sys.executable, *entry], env=env, cwd=REPO, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=out)
        try:
            reported: set[int] = set()
            read = [0]

            def all_reported() -> bool:
                """Decode only what came since the last look: the receiver shares this GIL."""
                new = monitord.raw[read[0]:]
                read[0] += len(new)
                reported.update(monitor.decode_wire(data).host_id for _, proto, data in new if proto == "tcp")
                return len(reported) == args.machines

            wait_for(all_reported, 600, "a first STATE_VM from every machine", proc)
            warm_s, warm_cpu = time.monotonic() - started, cpu_s(proc.pid)
            print(f"B  warm-up: every machine reported within {warm_s:.1f} s, daemon CPU {warm_cpu:.2f} s "
                  f"(first cycle: SYSTEM_HOST, MONITOR_HOST, MONITOR_VM too)")
            for name in hung:
                slowkind.set_behaviour(state, name, vm=1000 + int(name[3:]), power="on", delay=None)
            for name in slow:
                slowkind.set_behaviour(state, name, vm=1000 + int(name[3:]), power="on", delay=args.slow_s)
            settle = time.monotonic()
            wait_for(lambda: status(root).get("counts", {}).get("late", 0) >= len(hung), 3 * args.period,
                     "the hung BMCs' probes to miss their deadline", proc)
            # measure from the start of the next cycle after settling
            time.sleep(max(0.0, settle + 2 * args.period - time.monotonic()))
            t0, cpu0, st0 = time.monotonic(), cpu_s(proc.pid), status(root)
            time.sleep(args.cycles * args.period)
            t1, cpu1, st1 = time.monotonic(), cpu_s(proc.pid), status(root)
            hwm = vm_kb(proc.pid, "VmHWM")
            stop_at = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=30)
            stop_s = time.monotonic() - stop_at
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            out.close()
        decoded, failed = 0, 0
        for _, _, data in list(monitord.raw):
            try:
                monitor.decode_wire(data)
                decoded += 1
            except ValueError:
                failed += 1
        window = [(t, m) for t, _, m in monitord.timed(t0) if t <= t1]
        beacons = [t for t, m in window if m.type == "BEACON_HOST"]
        states = [(t, m) for t, m in window if m.type == "STATE_VM"]
        rounds = []
        for burst in cycles_of([t for t, _ in states], args.period):
            first_beacon = min((b for b in beacons if burst[0] - args.period / 2 <= b <= burst[0]), default=burst[0])
            hosts_in = {m.host_id for t, m in states if burst[0] <= t <= burst[-1]}
            rounds.append((burst[-1] - first_beacon, len(burst), len(hosts_in)))
        complete = rounds[1:-1] or rounds     # the window cuts the first and the last
        missed_healthy = missed_hung = 0
        for host_id, name in names.items():
            times = [t0, *sorted(t for t, m in window if m.type == "BEACON_HOST" and m.host_id == host_id), t1]
            late = sum(1 for a, b in zip(times, times[1:]) if b - a > args.period + BEACON_SLACK_S)
            if name in hung:
                missed_hung += late
            else:
                missed_healthy += late
        cycles = (t1 - t0) / args.period
        probe_cpu = st1.get("pool", {}).get("probe_cpu_s", 0) - st0.get("pool", {}).get("probe_cpu_s", 0)
        walls = [r[0] for r in complete]
        per_cycle_cpu = (cpu1 - cpu0) / cycles
        print(f"B  {args.machines} machines ({len(hung)} hung, {len(slow)} slow at {args.slow_s:.1f} s), "
              f"period {args.period} s, {len(complete)} complete cycles of {len(rounds)} seen")
        print(f"   cycle wall: median {statistics.median(walls):.3f} s, max {max(walls):.3f} s "
              f"(target <= {WALL_TARGET_S} s; ratio {max(walls) / WALL_TARGET_S:.2f})")
        print(f"   STATE_VM per cycle: {statistics.median(r[1] for r in complete):.0f} messages from "
              f"{statistics.median(r[2] for r in complete):.0f} hosts "
              f"(a hung one with its last known state: at the deadline the first time, then when due)")
        print(f"   daemon CPU: {per_cycle_cpu:.3f} core·s per cycle (target <= {CPU_TARGET_S}; ratio "
              f"{per_cycle_cpu / CPU_TARGET_S:.2f}), of which in probes {probe_cpu / cycles:.3f}")
        print(f"   beacons missed: healthy hosts {missed_healthy}, hung hosts {missed_hung} "
              f"(a gap over period + {BEACON_SLACK_S:.0f} s)")
        print(f"   messages decoded: {decoded} ({failed} undecodable, {monitord.empty} empty connections), "
              f"{len(window)} in the window")
        link = next(iter(st1.get("links", {}).values()), {})
        counts = {k: st1.get("counts", {}).get(k, 0) - st0.get("counts", {}).get(k, 0)
                  for k in ("probes", "late", "late_dropped", "still_running", "known_sent")}
        print(f"   in the window: {counts['probes']} probes, {counts['late']} late (of which "
              f"{counts['late_dropped']} answered after it and were dropped), {counts['still_running']} "
              f"due while the last probe still ran, {counts['known_sent']} last-known payloads sent")
        print(f"   memory high-water: {hwm / 1024:.1f} MiB RSS; send queue high-water {link.get('high_water')} "
              f"messages (bound: {args.machines * len(periods)}, one per host and type); threads {st1.get('pool', {}).get('threads')}, probes written off "
              f"{st1.get('pool', {}).get('written_off')}")
        print(f"   SIGTERM with {len(hung)} probes hung: exit {code} in {stop_s:.2f} s")
    monitord.close()
    ok = max(walls) <= WALL_TARGET_S and per_cycle_cpu <= CPU_TARGET_S and missed_healthy == 0
    print("P3 " + ("met" if ok else "MISSED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
