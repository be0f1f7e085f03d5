"""PDU power against the lab's real PDU simulator (APC dialect), over telnet and over ssh,
driven by pexpect. The boards behind its outlets really start and stop.

State is verified by the peers: the PDU's own `olStatus` read over an independent raw TCP
session (no bmm code), and the lab daemon's view of the board."""

from __future__ import annotations

import logging
import re
import socket
import time
from pathlib import Path

import pytest

from bmm.errors import FatalError, TransientError
from bmm.inventory import load_node, thaw
from bmm.power import driver_for, power_for
from tests.lab.test_power_ipmi import CmdlineWatch, private_file


@pytest.fixture(autouse=True)
def pace_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("BMM_PACE_DIR", str(tmp_path / "pace"))


@pytest.fixture
def board(lab):
    if not lab.boards:
        pytest.skip("the lab has no boards (bmm_lab.netboot cannot make machines)")
    name = lab.boards[0]
    yield name
    lab.power(name, "on")


def pdu_info(lab, name) -> dict:
    return lab.node(name)["pdu"]


def raw_olstatus(lab, name) -> str:
    """Ask the PDU itself, over a plain socket: log in, `olStatus <outlet>`, parse."""
    info = pdu_info(lab, name)
    password = Path(info["password_file"]).read_text().splitlines()[0]
    with socket.create_connection((info["host"], info["port"]), timeout=10) as s:
        s.settimeout(10)
        buf = b""

        def until(token: bytes) -> bytes:
            nonlocal buf
            while token not in buf:
                chunk = s.recv(4096)
                if not chunk:
                    raise AssertionError(f"PDU closed the session waiting for {token!r}: {buf[-200:]!r}")
                buf += chunk
            head, _, buf = buf.partition(token)
            return head

        until(b"User Name :")
        s.sendall(info["user"].encode() + b"\r\n")
        until(b"Password  :")
        s.sendall(password.encode() + b"\r\n")
        until(b"apc>")
        s.sendall(f"olStatus {info['outlet']}\r\n".encode())
        answer = until(b"apc>").decode()
        s.sendall(b"exit\r\n")
    match = re.search(rf"^\s*{info['outlet']}:.*:\s*(On|Off)\s*$", answer, re.M)
    assert match, answer
    return match.group(1).lower()


def settings(lab, name, protocol: str) -> dict:
    s = thaw(load_node(name, lab.inventory).power.settings)
    if protocol == "ssh":
        s.update(protocol="ssh", port=pdu_info(lab, name)["ssh_port"], host_key_policy="ignore")
    s["min_interval_s"] = 0.1
    return s


def lab_power(lab, name) -> str:
    return "on" if lab.daemon_status(name)["power"] else "off"


@pytest.mark.parametrize("protocol", ["telnet", "ssh"])
def test_full_power_cycle_verified_by_the_pdu(lab, board, protocol):
    if protocol == "telnet":
        p = power_for(load_node(board, lab.inventory))      # the inventory as written by the lab
        p.min_interval_s = 0.1
    else:
        p = driver_for(board, settings(lab, board, "ssh"))
    assert p.status() == raw_olstatus(lab, board) == lab_power(lab, board) == "on"

    assert p.off() == "off"
    assert raw_olstatus(lab, board) == "off" and lab_power(lab, board) == "off"
    assert p.off() == "off"                                  # idempotent
    assert p.soft_off() == "off"                             # already off: nothing to do

    assert p.on() == "on"
    assert raw_olstatus(lab, board) == "on" and lab_power(lab, board) == "on"
    assert p.on() == "on"

    assert p.cycle() == "on"
    assert raw_olstatus(lab, board) == "on"
    assert p.reset() == "on"                                 # olReboot
    assert raw_olstatus(lab, board) == "on" and lab_power(lab, board) == "on"


@pytest.mark.parametrize("protocol", ["telnet", "ssh"])
def test_wrong_password_fails_fast_as_fatal(lab, board, tmp_path, caplog, protocol):
    real = Path(pdu_info(lab, board)["password_file"]).read_text().splitlines()[0]
    s = {**settings(lab, board, protocol), "password_file": private_file(tmp_path / "wrong", "N0tThePassword\n")}
    p = driver_for(board, s)
    caplog.set_level(logging.DEBUG)
    t0 = time.monotonic()
    with pytest.raises(FatalError) as exc:
        p.off()
    elapsed = time.monotonic() - t0
    assert elapsed < 3, f"a refused login must fail at once, took {elapsed:.1f} s"
    msg = str(exc.value)
    assert board in msg and "pdu" in msg and "login refused" in msg
    for secret in ("N0tThePassword", real):
        assert secret not in msg and secret not in caplog.text
    assert raw_olstatus(lab, board) == "on"


@pytest.mark.parametrize("protocol", ["telnet", "ssh"])
def test_unreachable_pdu_fails_within_its_deadline(lab, board, protocol):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    p = driver_for("ghost", {**settings(lab, board, protocol), "port": closed, "timeout_s": 4})
    t0 = time.monotonic()
    with pytest.raises(TransientError) as exc:
        p.on()
    elapsed = time.monotonic() - t0
    assert elapsed <= 4 + 1.5, f"took {elapsed:.1f} s for a 4 s deadline"
    assert "node ghost" in str(exc.value) and "connection refused" in str(exc.value)


@pytest.mark.parametrize("protocol", ["telnet", "ssh"])
def test_password_never_on_a_command_line_nor_in_logs(lab, board, caplog, protocol):
    s = settings(lab, board, protocol)
    secret = Path(s["password_file"]).read_text().splitlines()[0]
    p = driver_for(board, s)
    caplog.set_level(logging.DEBUG)
    with CmdlineWatch(secret, (protocol,)) as watch:
        assert p.cycle() == "on"
    assert watch.leaks == []
    assert watch.seen[protocol], f"the sampler never saw {protocol} running: it proved nothing"
    assert secret not in caplog.text
