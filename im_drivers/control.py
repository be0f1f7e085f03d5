"""The IM control script: `[stop] <im_mad> <host id> <host name>`, stdin = base64 of the
MONITOR_CONFIGURATION XML (protocol §2.2, §2.3, §2.8).

start: check the node, register it with the front-end monitor daemon (starting the daemon if
none runs), and answer at once with a `<MONITOR_MESSAGES>` document so the host is MONITORED
without waiting for the first push. stop: unregister; the daemon exits when no host is left.

run_monitord_client merges stderr into stdout and parses the result as XML, so nothing but the
document may be printed on success.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys

from bmm import logs
from bmm.config import load_config
from bmm.errors import ConfigError, InputError
from bmm.guard import freeze_for_exit, guarded, raise_on_sigterm
from bmm.inventory import node_for_host
from bmm.opennebula import driver_input, monitor
from bmm.opennebula.args import check_host_name, parse_id
from bmm.opennebula.xmlsafe import parse_xml
from im_drivers import hosts
from im_drivers.messages import payloads
from im_drivers.report import OPEN_STORE, HostReport

# What START_MONITOR answers at once: nothing that asks a BMC or an OS (a hung BMC must not
# hold the control script until one_im_sh gives up); the daemon sends the VMs' states.
START_TYPES = ("SYSTEM_HOST", "MONITOR_HOST", "BEACON_HOST")
MAX_PERIOD_S = 86400


def parse_monitor_config(xml: bytes, fallback_address: str, fallback_port: int) -> tuple[str, int, dict[str, int]]:
    """(address, port, periods) from monitord's MONITOR_CONFIGURATION, each checked: an
    address is an IP or a host name, a port 1-65535, a period 1-86400 s."""
    root = parse_xml(xml, what="monitor configuration")
    if root.tag != "MONITOR_CONFIGURATION":
        raise InputError("the monitor configuration is not a <MONITOR_CONFIGURATION> document")
    if (root.findtext("NETWORK/PUBKEY") or "").strip():
        raise ConfigError("monitord.conf sets NETWORK/PUBKEY (encrypted messages), which bmm does not support yet")
    address = (root.findtext("NETWORK/MONITOR_ADDRESS") or "").strip()
    if not address or address == "auto":
        address = fallback_address
    hosts.check_address(address, "NETWORK/MONITOR_ADDRESS")
    port_text = (root.findtext("NETWORK/PORT") or "").strip()
    port = hosts.check_port(parse_id(port_text, "NETWORK/PORT"), "NETWORK/PORT") if port_text else fallback_port
    periods = dict(hosts.DEFAULT_PERIODS)
    for kind in periods:
        text = (root.findtext(f"PROBES_PERIOD/{kind}") or "").strip()
        if text:
            periods[kind] = min(max(1, parse_id(text, f"PROBES_PERIOD/{kind}")), MAX_PERIOD_S)
    return address, port, periods


def build_report(config, node_name: str, *, record=None, inventory_recheck_s: float = 0.0):
    """The host's report; record: the node's record, when the caller holds a fresh one;
    inventory_recheck_s: how stale a look at the inventory file may be (bmm.inventory.load_node)."""
    return HostReport(node_for_host(config, node_name, recheck_s=inventory_recheck_s), config, OPEN_STORE,
                      record=record)


def ensure_daemon(config) -> None:
    """Start the monitor daemon unless one holds its lock."""
    mdir = hosts.monitor_dir(config.state_db)
    mdir.mkdir(parents=True, exist_ok=True)
    lock_path = mdir / "daemon.lock"
    with open(lock_path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # a daemon holds it
        fcntl.flock(fh, fcntl.LOCK_UN)
    env = dict(os.environ)
    if config.source is not None:
        env["BMM_CONFIG"] = str(config.source)
    log = open(mdir / "daemon.log", "ab")
    subprocess.Popen(
        [sys.executable, "-m", "im_drivers.daemon"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
        start_new_session=True, close_fds=True,
    )
    log.close()


def stop_daemon(config) -> None:
    """SIGTERM the daemon (it would also leave on its own once idle)."""
    pid_path = hosts.monitor_dir(config.state_db) / "daemon.pid"
    try:
        pid = int(pid_path.read_text().strip())
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            if b"im_drivers.daemon" not in fh.read():
                return
        os.kill(pid, 15)
    except (OSError, ValueError):
        pass


def _run(script: str, args: list[str]) -> str | None:
    """The document to print for start, None for stop."""
    action = "start"
    if args and args[0] == "stop":
        action, args = "stop", args[1:]
    if len(args) != 3:
        raise InputError(f"expected `[stop] <im_mad> <host id> <host name>`, got {len(args)} arguments")
    _im_mad, hid_text, name = args
    hid = parse_id(hid_text, "the host id argument")
    check_host_name(name, "the host name argument")
    config = load_config(remote_script=script)
    logs.configure(config.log_path)
    if action == "stop":
        hosts.unregister(config.state_db, hid)
        if not hosts.registered(config.state_db):
            stop_daemon(config)
        return None
    xml = driver_input.read_stream(sys.stdin.buffer, what="monitor configuration (stdin)")
    address, port, periods = parse_monitor_config(xml, config.monitor_address, config.monitor_port)
    report = build_report(config, name)
    document = monitor.monitor_messages(payloads(report, START_TYPES))
    hosts.register(config.state_db, hosts.MonitoredHost(hid, name, address, port, periods))
    ensure_daemon(config)
    return document


def main(script: str) -> None:
    """run_monitord_client runs this with stderr merged into stdout (`2>&1`) and parses the
    result as XML: on success only the document is printed; on failure only one line, with a
    non-zero exit. Nothing else can reach fd 2 (bmm.logs.captured_stderr)."""
    logs.quiet()
    raise_on_sigterm()
    with logs.captured_stderr() as real_stderr:
        def fail(line: str) -> None:
            print(line, file=real_stderr, flush=True)
            sys.exit(1)

        document = guarded(lambda: _run(script, sys.argv[1:]), on_error=fail, stderr=real_stderr)
    if document is not None:
        sys.stdout.write(document + "\n")
    freeze_for_exit()
