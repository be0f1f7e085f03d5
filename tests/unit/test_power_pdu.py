"""The pdu driver: dialects are data, the login/command state machine, classification.

The peer here is a scripted CLI (a small Python program on a pty) so a *new vendor* can be
shown to need only a dialect entry. The lab tests drive the real PDU simulator."""

import sys
import textwrap
import time

import pexpect
import pytest

from bmm.errors import ConfigError, FatalError, TransientError
from bmm.power import base, validate_settings
from bmm.power.pdu import PduPower, builtin_dialect_names, load_dialect

SECRET = "Pdu-S3cret"

# A PDU from a vendor bmm has no code for: different prompts, commands and answers.
ACME_CLI = r'''
import json, os, sys
state_file, password = sys.argv[1], sys.argv[2]
state = json.load(open(state_file)) if os.path.exists(state_file) else {}
out = sys.stdout
out.write("ACME PowerStrip 9000\r\nlogin: "); out.flush()
user = sys.stdin.readline().strip()
out.write("passwd: "); out.flush()
if sys.stdin.readline().strip() != password or user != "admin":
    out.write("\r\nAuthentication failure\r\n"); out.flush(); sys.exit(1)
while True:
    out.write("acme# "); out.flush()
    line = sys.stdin.readline()
    if not line:
        break
    w = line.split()
    if not w:
        continue
    if w[0] == "logout":
        break
    if w[:2] == ["show", "port"] and len(w) == 3:
        out.write(f"port {w[2]} is {state.get(w[2], 'OFF')}\r\nOK\r\n")
    elif w[:1] == ["port"] and len(w) == 3 and w[2] in ("ON", "OFF"):
        if w[1] == "99":
            out.write("ERR no such port\r\n"); continue
        state[w[1]] = w[2]; json.dump(state, open(state_file, "w"))
        out.write("OK\r\n")
    else:
        out.write("ERR syntax\r\n")
    out.flush()
'''

ACME_DIALECT = textwrap.dedent(r'''
    [acme]
    user_prompt     = 'login:'
    password_prompt = 'passwd:'
    prompt          = 'acme# '
    login_failed    = 'Authentication failure'
    command_ok      = 'OK'
    command_error   = 'ERR [^\r\n]*'
    on              = "port {outlet} ON"
    off             = "port {outlet} OFF"
    status          = "show port {outlet}"
    logout          = "logout"
    status_pattern  = 'port {outlet} is (?P<state>ON|OFF)'
    state_on        = '^ON$'
    state_off       = '^OFF$'
    line_ending     = "\n"
    reboot_delay_s  = 0.1
''')


@pytest.fixture(autouse=True)
def fast(monkeypatch, tmp_path):
    monkeypatch.setenv("BMM_PACE_DIR", str(tmp_path / "pace"))
    monkeypatch.setattr(base, "RETRY_BACKOFF", (0.01,))
    monkeypatch.setattr(base, "POLL_BACKOFF", (0.05,))


@pytest.fixture
def acme(tmp_path):
    (tmp_path / "acme.py").write_text(ACME_CLI)
    (tmp_path / "dialects.toml").write_text(ACME_DIALECT)
    pw = tmp_path / "pdu.pw"
    pw.write_text(SECRET + "\n")
    pw.chmod(0o600)
    state = tmp_path / "state.json"
    spawned = []

    def make(password=SECRET, **settings):
        def spawn(cmd, args, **kw):
            spawned.append([cmd, *args])
            return pexpect.spawn(sys.executable, [str(tmp_path / "acme.py"), str(state), password], **kw)

        s = {"driver": "pdu", "host": "10.0.100.1", "user": "admin", "password_file": str(pw),
             "outlet": 3, "dialect": "acme", "dialects_file": str(tmp_path / "dialects.toml"),
             "min_interval_s": 0, "timeout_s": 5, "command_timeout_s": 3, **settings}
        assert validate_settings(s) == []
        return PduPower("board1", s, spawn=spawn)

    make.state = state
    make.spawned = spawned
    return make


def test_apc_is_builtin_and_the_default():
    assert "apc" in builtin_dialect_names()
    d = load_dialect()
    assert d.name == "apc"
    assert d.command("on", 5) == "olOn 5"
    assert d.command("reboot", 5) == "olReboot 5"


def test_apc_status_parsing_of_the_lab_pdu_format():
    d = load_dialect("apc")
    answer = "olStatus 3\r\nE000: Success\r\n 3: board1: On\r\n"
    assert d.parse_status(answer, 3) == "on"
    assert d.parse_status("E000: Success\r\n 3: Outlet 3: Off\r\n", 3) == "off"
    assert d.parse_status("E000: Success\r\n13: x: On\r\n", 3) is None
    assert d.parse_status("E000: Success\r\n 3: name: with: colons: Off\r\n", 3) == "off"


def test_a_new_vendor_is_a_dialect_entry(acme):
    p = acme()
    assert p.status() == "off"
    assert p.on() == "on"
    assert p.on() == "on"           # idempotent: no second switch
    assert p.off() == "off"
    assert p.reset() == "on"        # no reboot command: off, delay, on
    assert acme.state.read_text() == '{"3": "ON"}'
    assert acme.spawned[0][0] == "telnet"
    assert all(SECRET not in " ".join(a) for a in acme.spawned)


def test_login_refused_is_fatal_and_fast(acme):
    p = acme(password="something-else")
    t0 = time.monotonic()
    with pytest.raises(FatalError) as exc:
        p.status()
    assert time.monotonic() - t0 < 2
    assert "login refused" in str(exc.value)
    assert len(acme.spawned) == 1, "a refused login must not be retried"
    assert SECRET not in str(exc.value)


def test_rejected_command_is_fatal(acme):
    with pytest.raises(FatalError, match="rejected `port 99 ON`: ERR no such port"):
        acme(outlet=99).on()


def test_pdu_cannot_soft_off(acme):
    p = acme()
    assert p.soft_off() == "off"     # already off: nothing to do
    p.on()
    with pytest.raises(FatalError, match="cannot ask the OS"):
        p.soft_off()


def fake_client(text, code=1):
    def spawn(cmd, args, **kw):
        return pexpect.spawn(sys.executable, ["-c", f"import sys; sys.stdout.write({text!r}); sys.exit({code})"], **kw)
    return spawn


@pytest.fixture
def apc_settings(tmp_path):
    pw = tmp_path / "pdu.pw"
    pw.write_text(SECRET)
    pw.chmod(0o600)
    return {"driver": "pdu", "host": "pdu1", "user": "apc", "password_file": str(pw), "outlet": 1,
            "min_interval_s": 0, "timeout_s": 3, "command_timeout_s": 1, "retries": 1}


@pytest.mark.parametrize("text,error", [
    ("telnet: Unable to connect to remote host: Connection refused\r\n", TransientError),
    ("ssh: connect to host pdu1 port 22: Connection timed out\r\n", TransientError),
    ("ssh: Could not resolve hostname pdu1: Name or service not known\r\n", FatalError),
    ("Server lookup failure:  pdu1:23, Name or service not known\r\n", FatalError),
    ("apc@pdu1: Permission denied (password).\r\n", FatalError),
    ("Host key verification failed.\r\n", FatalError),
    ("", TransientError),
])
def test_client_failures_are_classified(apc_settings, text, error):
    p = PduPower("board1", apc_settings, spawn=fake_client(text))
    with pytest.raises(error) as exc:
        p.status()
    assert isinstance(exc.value, FatalError) == (error is FatalError)


def test_silent_pdu_times_out_within_the_deadline(apc_settings):
    def spawn(cmd, args, **kw):
        return pexpect.spawn(sys.executable, ["-c", "import time; time.sleep(30)"], **kw)

    p = PduPower("board1", apc_settings, spawn=spawn)
    t0 = time.monotonic()
    with pytest.raises(TransientError, match="no answer"):
        p.status()
    assert time.monotonic() - t0 <= apc_settings["timeout_s"] + 0.5


def test_ssh_argv_carries_no_password_and_a_host_key_policy(apc_settings, tmp_path):
    p = PduPower("board1", {**apc_settings, "protocol": "ssh", "port": 2224,
                            "known_hosts": str(tmp_path / "kh")}, spawn=fake_client(""))
    argv = p.client_argv(5)
    assert argv[0] == "ssh" and argv[-2:] == ["--", "pdu1"]
    assert "StrictHostKeyChecking=accept-new" in argv
    assert f"UserKnownHostsFile={tmp_path / 'kh'}" in argv
    assert SECRET not in " ".join(argv)
    assert p.port == 2224


def test_bad_dialects_are_config_errors(tmp_path):
    f = tmp_path / "d.toml"
    f.write_text('[x]\nprompt = ">"\n')
    with pytest.raises(ConfigError, match="missing"):
        load_dialect("x", str(f))
    f.write_text(ACME_DIALECT.replace("(?P<state>ON|OFF)", "(ON|OFF)"))
    with pytest.raises(ConfigError, match="state"):
        load_dialect("acme", str(f))
    with pytest.raises(ConfigError, match="unknown PDU dialect"):
        load_dialect("nosuch")
