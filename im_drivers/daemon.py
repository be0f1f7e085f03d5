"""The bmm monitor daemon: one per front-end, pushing every registered host's messages to
monitord at its PROBES_PERIOD (protocol §2.5). Exits when no host is registered."""

from __future__ import annotations

import fcntl
import os
import logging
import signal
import sys
import time

from bmm.config import load_config
from bmm.errors import BmmError
from bmm.opennebula import monitor
from im_drivers import hosts
from im_drivers.control import build_report
from im_drivers.messages import payloads

log = logging.getLogger("bmm.monitor")
IDLE_EXIT_S = 60


def run(config, *, tick: float = 1.0, max_seconds: float | None = None) -> None:
    due: dict[tuple[int, str], float] = {}
    idle_since = None
    started = time.monotonic()
    stop = {"flag": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__("flag", True))
    while not stop["flag"]:
        now = time.monotonic()
        if max_seconds is not None and now - started > max_seconds:
            return
        registered = hosts.registered(config.state_db)
        if not registered:
            idle_since = idle_since or now
            if now - idle_since > IDLE_EXIT_S:
                return
        else:
            idle_since = None
        for host in registered:
            kinds = tuple(k for k, period in host.periods.items()
                          if now >= due.get((host.host_id, k), 0.0))
            if not kinds:
                continue
            for k in kinds:
                due[(host.host_id, k)] = now + host.periods[k]
            try:
                push(config, host, kinds)
            except Exception:  # noqa: BLE001 - one host's trouble never ends the daemon
                log.exception("host %s: monitoring round failed", host.name)
        time.sleep(tick)


def push(config, host: hosts.MonitoredHost, kinds: tuple[str, ...]) -> None:
    ts = int(time.time())
    try:
        report = build_report(config, host.name)
        messages = [monitor.WireMessage(k, True, host.host_id, ts, p) for k, p in payloads(report, kinds).items()]
    except BmmError as exc:
        messages = [monitor.WireMessage(k, False, host.host_id, ts, str(exc)) for k in kinds
                    if k in ("SYSTEM_HOST", "MONITOR_HOST", "BEACON_HOST")]
        log.warning("host %s: %s", host.name, exc)
    try:
        monitor.send(messages, host.address, host.port)
    except (BmmError, OSError, ValueError) as exc:
        log.warning("host %s: sending to monitord failed: %s", host.name, exc)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    config = load_config()
    lock_path = hosts.monitor_dir(config.state_db) / "daemon.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            sys.exit(0)  # another daemon runs
        pid_path = hosts.monitor_dir(config.state_db) / "daemon.pid"
        pid_path.write_text(f"{os.getpid()}\n")
        log.info("bmm monitor daemon started")
        try:
            from bmm.state import open_store

            for node, old in open_store(config=config).recover():
                log.warning("node %s was left %s by a process that is gone: now in error", node, old)
        except (BmmError, OSError) as exc:
            log.warning("state recovery failed: %s", exc)
        try:
            run(config)
        finally:
            pid_path.unlink(missing_ok=True)
        log.info("bmm monitor daemon stopping: no host left")


if __name__ == "__main__":
    main()
