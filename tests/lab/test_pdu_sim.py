"""The lab PDU (lab/bmm_lab/pdu.py) against real clients: the `telnet` and `ssh` binaries driven by
pexpect, the PDU running standalone (`python -m bmm_lab.pdu --config FILE`)."""

import os
import subprocess
import sys
import time

import pexpect
import pytest

from tests.support import REPO, require_lab

PASSWORD = "s3cret-Pdu-pw"
USER = "apc"


@pytest.fixture
def pdu(tmp_path):
    require_lab("telnet", "ssh", "ssh-keygen")
    pw = tmp_path / "pdu.pass"
    fd = os.open(pw, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, (PASSWORD + "\n").encode())
    os.close(fd)
    log = tmp_path / "pdu.log"
    config = tmp_path / "pdu.toml"
    config.write_text(
        'name = "testpdu"\n'
        'listen = "127.0.0.1"\n'
        "telnet_port = 0\n"
        "ssh_port = 0\n"
        f'user = "{USER}"\n'
        'password_file = "pdu.pass"\n'
        'host_key = "hostkey"\n'
        "outlets = 8\n"
        "command_delay_s = 0.05\n"
        "reboot_delay_s = 0.3\n"
        'state_file = "state.json"\n'
        'log_file = "pdu.log"\n'
        "[names]\n"
        '5 = "tile5"\n'
    )
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.Popen([sys.executable, "-m", "bmm_lab.pdu", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        if not line.startswith("READY"):
            proc.kill()
            pytest.fail(f"PDU did not start: {line!r} {proc.stderr.read()}")
        ports = dict(kv.split("=") for kv in line.split()[1:])
        yield {"telnet": int(ports["telnet"]), "ssh": int(ports["ssh"]), "log": log,
               "state": tmp_path / "state.json", "pid": proc.pid}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def telnet(port):
    child = pexpect.spawn("telnet", ["127.0.0.1", str(port)], timeout=10, encoding="utf-8")
    return child


def login_telnet(port, user=USER, password=PASSWORD):
    child = telnet(port)
    child.expect("User Name : ")
    child.sendline(user)
    child.expect("Password  : ")
    child.sendline(password)
    return child


def ssh(port, user=USER):
    return pexpect.spawn(
        "ssh", ["-F", "/dev/null", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "PubkeyAuthentication=no", "-o", "PreferredAuthentications=password",
                "-o", "NumberOfPasswordPrompts=3", "-o", "LogLevel=ERROR", "-tt",
                "-p", str(port), f"{user}@127.0.0.1"],
        timeout=15, encoding="utf-8")


def command(child, line, expect=r"E\d{3}: [^\r\n]*"):
    """Send one command; return the text between the echo and the next prompt."""
    child.sendline(line)
    child.expect(expect)
    code = child.after
    child.expect("apc>")
    return code + child.before


def test_telnet_login_switch_and_status(pdu):
    child = login_telnet(pdu["telnet"])
    child.expect("Network Management Card AOS")
    child.expect("apc>")
    out = command(child, "olStatus all")
    assert out.startswith("E000: Success")
    assert " 1: Outlet 1: Off" in out and " 5: tile5: Off" in out and " 8: Outlet 8: Off" in out
    assert command(child, "olOn 3").startswith("E000: Success")
    assert " 3: Outlet 3: On" in command(child, "olStatus 3")
    assert command(child, "olOn 5-6,8").startswith("E000")
    out = command(child, "olStatus all")
    for n, state in ((3, "On"), (4, "Off"), (6, "On"), (8, "On")):
        assert f"{n:2d}: " in out and f"{n:2d}: Outlet {n}: {state}" in out
    assert " 5: tile5: On" in out
    assert command(child, "olOff tile5").startswith("E000")
    assert " 5: tile5: Off" in command(child, "olStatus 5")
    assert command(child, "olOff 3").startswith("E000")
    t0 = time.monotonic()
    assert command(child, "olReboot 3").startswith("E000")
    assert time.monotonic() - t0 >= 0.3           # off, reboot delay, on
    assert " 3: Outlet 3: On" in command(child, "olStatus 3")
    # errors: bad outlet, bad argument count, unknown command
    assert command(child, "olOn 9").startswith("E102: Parameter Error")
    assert command(child, "olStatus").startswith("E102")
    assert command(child, "olOff 0").startswith("E102")
    assert command(child, "olOff 3-1").startswith("E102")
    assert command(child, "frobnicate 3").startswith("E101: Command not found")
    child.sendline("exit")
    child.expect(pexpect.EOF)
    # the state survives in the state file (unbound outlets)
    assert '"3": true' in pdu["state"].read_text()


def test_telnet_bad_credentials_refused(pdu):
    child = login_telnet(pdu["telnet"], password="wrong")
    child.expect("Login failed")
    child.expect("User Name : ")           # re-prompted
    child.sendline("nobody")
    child.expect("Password  : ")
    child.sendline(PASSWORD)              # right password, wrong user
    child.expect("Login failed")
    child.expect("User Name : ")
    child.sendline(USER)
    child.expect("Password  : ")
    child.sendline("still-wrong")
    child.expect("Too many failed login attempts")
    child.expect(pexpect.EOF)              # disconnected after three bad tries
    assert "apc>" not in child.before
    # a good login after a bad one works
    child = login_telnet(pdu["telnet"], password="nope")
    child.expect("Login failed")
    child.expect("User Name : ")
    child.sendline(USER)
    child.expect("Password  : ")
    child.sendline(PASSWORD)
    child.expect("apc>")
    child.sendline("quit")
    child.expect(pexpect.EOF)


def test_ssh_login_switch_and_status(pdu):
    child = ssh(pdu["ssh"])
    child.expect("(?i)password:")
    child.sendline(PASSWORD)
    child.expect("Network Management Card AOS")
    child.expect("apc>")
    assert command(child, "olOff 2").startswith("E000")
    assert " 2: Outlet 2: Off" in command(child, "olStatus 2")
    assert command(child, "olOn 2").startswith("E000")
    assert " 2: Outlet 2: On" in command(child, "olStatus 2")
    assert command(child, "olReboot 2").startswith("E000")
    assert command(child, "olStatus 42").startswith("E102")
    child.sendline("exit")
    child.expect(pexpect.EOF)
    # the same outlets are seen over telnet
    tel = login_telnet(pdu["telnet"])
    tel.expect("apc>")
    assert " 2: Outlet 2: On" in command(tel, "olStatus 2")
    tel.sendline("exit")
    tel.expect(pexpect.EOF)


def test_ssh_bad_password_refused(pdu):
    child = ssh(pdu["ssh"])
    for _ in range(3):
        child.expect("(?i)password:")
        child.sendline("wrong-password")
    child.expect("Permission denied")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus != 0
    # a wrong user with the right password is refused as well
    child = ssh(pdu["ssh"], user="root")
    child.expect("(?i)password:")
    child.sendline(PASSWORD)
    child.expect("(?i)password:|Permission denied")
    child.close(force=True)


def test_password_never_on_argv_or_in_log(pdu):
    child = login_telnet(pdu["telnet"], password="bad-" + PASSWORD)
    child.expect("Login failed")
    child.close(force=True)
    child = login_telnet(pdu["telnet"])
    child.expect("apc>")
    command(child, "olOn 1")
    child.sendline("exit")
    child.expect(pexpect.EOF)
    with open(f"/proc/{pdu['pid']}/cmdline", "rb") as f:
        assert PASSWORD.encode() not in f.read()
    log = pdu["log"].read_text()
    assert "login refused" in log and "olOn outlet 1" in log
    assert PASSWORD not in log


def test_outlet_arguments(tmp_path):
    from bmm_lab.pdu import Outlets, PduConfig
    pw = tmp_path / "pw"
    pw.write_text("x\n")
    o = Outlets(PduConfig(password_file=pw, telnet_port=0, ssh_port=None, outlets=8, names={5: "tile5"}))
    assert o.parse("all") == list(range(1, 9))
    assert o.parse("3") == [3] and o.parse("5-7") == [5, 6, 7]
    assert o.parse("3,5-7,10") is None and o.parse("3,5-7,8") == [3, 5, 6, 7, 8]
    assert o.parse("TILE5") == [5] and o.parse("Outlet 2") == [2]
    for bad in ("0", "9", "7-5", "x", "", "1-", "-1"):
        assert o.parse(bad) is None, bad
