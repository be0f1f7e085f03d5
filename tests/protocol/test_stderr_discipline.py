"""stderr is OpenNebula's channel: a remote writes one unprefixed line, the cause, and only on
failure; the IM control script's merged stdout+stderr is always a valid document or one line.

The node's BMC is a real ipmitool talking to a UDP port nobody answers, so every power call
goes through bmm's bounded retries, whose warnings once leaked onto stderr unprefixed.
"""

from __future__ import annotations

import socket
import textwrap

import pytest
from lxml import etree

from bmm.config import load_config
from bmm.state import open_store
from tests.onemock import OpenNebula, drv_action, vm_xml
from tests.support import require_lab, stop_monitor_daemon

HOST = "deadbmc"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def one(tmp_path):
    require_lab("ipmitool")
    secret = tmp_path / "bmc.pw"
    secret.write_text("pw\n")
    secret.chmod(0o600)
    inventory = tmp_path / "nodes.toml"
    inventory.write_text(textwrap.dedent(f"""\
        [nodes.{HOST}]
        kind = "localdisk"
        arch = "x86_64"
        cpus = 4
        memory_mb = 2048
        disk_gb = 10
        macs = ["52:54:00:00:00:09"]
        ip = "127.0.0.1"
        [nodes.{HOST}.ssh]
        port = 1
        [nodes.{HOST}.power]
        driver = "ipmi"
        host = "127.0.0.1"
        port = {free_udp_port()}
        user = "admin"
        password_file = "{secret}"
        retries = 2
        timeout_s = 12
        min_interval_s = 0
        [nodes.{HOST}.boot]
        method = "grub"
        [nodes.{HOST}.storage]
        vg = "vg0"
        """))
    one = OpenNebula(tmp_path / "one", inventory)
    store = open_store(config=load_config(one.remotes / "etc" / "bmm" / "bmm.toml"))
    store.transition(HOST, "deploying", vm_id=5)
    store.transition(HOST, "active", vm_id=5)
    yield one
    stop_monitor_daemon(one.state_dir)


def test_a_failing_vmm_action_writes_exactly_its_cause(one):
    ex = one.simple("cancel", drv_action(vm_xml(5, HOST), HOST), f"bmm-{HOST}-5", HOST, 5)
    assert ex.returncode != 0
    lines = ex.stderr.splitlines()
    assert len(lines) == 1, lines                        # no retry warning, no log line
    assert lines[0].startswith(f"node {HOST}: ipmi ") and "gave up after 3 attempts" in lines[0]
    assert ex.failure_text_7 == ex.failure_text_610 == lines[0]
    log = (one.state_dir / "bmm.log").read_text()
    assert "transient failure, retry 1/2" in log         # the warnings went to bmm's log


def test_poll_says_unknown_when_neither_the_bmc_nor_the_os_answers(one):
    """Power unknown and no OS answering: poll and the IM both say nothing definite."""
    ex = one.simple("poll", drv_action(vm_xml(5, HOST), HOST), f"bmm-{HOST}-5", HOST, 5)
    assert ex.returncode == 0 and ex.stdout == "STATE=-\n" and ex.stderr == ""


def test_im_start_is_a_document_at_once_even_when_the_bmc_is_away(one):
    """START_MONITOR asks no BMC (the daemon reports the VMs): a BMC that does not answer
    (its retries take 12 s here) never holds the answer, which is a document only."""
    import time
    config = ("<MONITOR_CONFIGURATION><NETWORK><MONITOR_ADDRESS>127.0.0.1</MONITOR_ADDRESS><PORT>4124</PORT>"
              "</NETWORK></MONITOR_CONFIGURATION>")
    started = time.monotonic()
    ex = one.im(["bmm", "3", HOST], config)
    assert ex.returncode == 0, ex.stderr
    assert time.monotonic() - started < 6
    merged = ex.stdout + ex.stderr                      # run_monitord_client: 2>&1
    root = etree.fromstring(merged.strip().encode())
    assert root.tag == "MONITOR_MESSAGES" and root.find("SYSTEM_HOST") is not None


def test_shutdown_with_the_bmc_away_ends_in_a_stable_state(one):
    """The shutdown fails, and so does the status check of its own clean-up: the node goes
    to error with the reason, never stays `stopping`."""
    ex = one.simple("shutdown", drv_action(vm_xml(5, HOST), HOST), f"bmm-{HOST}-5", HOST, 5)
    assert ex.returncode != 0 and len(ex.stderr.splitlines()) == 1
    rec = open_store(config=load_config(one.remotes / "etc" / "bmm" / "bmm.toml")).get(HOST)
    assert rec.state == "error" and rec.vm_id == 5 and "shutdown of VM 5 failed" in rec.last_error
