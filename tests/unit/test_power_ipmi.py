"""The ipmi driver at its command boundary: argv, the password's path, classification."""

import os
import stat

import pytest

from bmm.errors import ConfigError, FatalError, TimeoutExpired, TransientError
from bmm.power import base, driver_for
from bmm.power.ipmi import IpmiPower, classify_ipmitool, parse_status
from bmm.runner import Result

SECRET = "Hunter2xyz"


@pytest.fixture(autouse=True)
def fast(monkeypatch, tmp_path):
    monkeypatch.setenv("BMM_PACE_DIR", str(tmp_path / "pace"))
    monkeypatch.setattr(base, "RETRY_BACKOFF", (0.01,))
    monkeypatch.setattr(base, "POLL_BACKOFF", (0.01,))


@pytest.fixture
def pwfile(tmp_path):
    f = tmp_path / "node01.bmc"
    f.write_text(SECRET + "\n")
    f.chmod(0o600)
    return str(f)


class FakeIpmitool:
    """Records each call (argv, env, what the password path is and holds at call time)."""

    def __init__(self, state="off", answers=None):
        self.state = state
        self.calls = []
        self.answers = list(answers or [])

    def __call__(self, argv, *, timeout, check, secrets, node, extra_env, pass_fds=()):
        argv = list(argv)
        seen = {"argv": argv, "env": dict(extra_env), "timeout": timeout, "pass_fds": tuple(pass_fds)}
        if "-f" in argv:
            path = argv[argv.index("-f") + 1]
            seen["file"] = path
            fd = int(path.removeprefix("/dev/fd/"))
            seen["fifo"] = path == f"/dev/fd/{fd}" and stat.S_ISFIFO(os.fstat(fd).st_mode)
            seen["content"] = os.read(fd, 4096).decode()
        self.calls.append(seen)
        if self.answers:
            answer = self.answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return Result(tuple(argv), answer[0], answer[1], answer[2])
        verb = argv[-1]
        if verb == "status":
            return Result(tuple(argv), 0, f"Chassis Power is {self.state}\n", "")
        self.state = {"on": "on", "off": "off", "soft": "off", "reset": self.state}[verb]
        return Result(tuple(argv), 0, "Chassis Power Control: ok\n", "")


def make(pwfile, runner, **settings):
    s = {"driver": "ipmi", "host": "10.0.1.11", "user": "admin", "password_file": pwfile,
         "min_interval_s": 0, "timeout_s": 2, **settings}
    return IpmiPower("node01", s, runner=runner)


def test_argv_lanplus_cipher_suite_and_password_file(pwfile):
    fake = FakeIpmitool()
    p = make(pwfile, fake, cipher_suite=17, port=6230)
    assert p.status() == "off"
    call = fake.calls[0]
    argv = call["argv"]
    assert argv[:2] == ["ipmitool", "-v"]
    assert argv[argv.index("-I") + 1] == "lanplus"
    assert argv[argv.index("-C") + 1] == "17"
    assert argv[argv.index("-H") + 1] == "10.0.1.11"
    assert argv[argv.index("-p") + 1] == "6230"
    assert argv[argv.index("-U") + 1] == "admin"
    assert argv[-3:] == ["chassis", "power", "status"]
    assert all(SECRET not in a for a in argv)
    assert "-P" not in argv and "-E" not in argv
    # the password comes through an inherited pipe: no file on any disk or tmpfs holds it
    assert call["fifo"] and call["content"] == SECRET
    assert call["pass_fds"] == (int(call["file"].removeprefix("/dev/fd/")),)
    with pytest.raises(OSError):
        os.fstat(call["pass_fds"][0])          # closed once ipmitool has run


def test_password_via_env(pwfile):
    fake = FakeIpmitool()
    make(pwfile, fake, password_via="env").status()
    call = fake.calls[0]
    assert "-E" in call["argv"] and "-f" not in call["argv"]
    assert call["env"] == {"IPMI_PASSWORD": SECRET}
    assert all(SECRET not in a for a in call["argv"])


def test_empty_password_is_written_as_nul(tmp_path):
    f = tmp_path / "empty"
    f.write_text("")
    f.chmod(0o600)
    fake = FakeIpmitool()
    make(str(f), fake).status()
    assert fake.calls[0]["content"] == "\0"


def test_interface_lan_has_no_cipher_suite(pwfile):
    fake = FakeIpmitool()
    make(pwfile, fake, interface="lan").status()
    assert "-C" not in fake.calls[0]["argv"]


def test_password_pipe_closed_even_when_ipmitool_fails(pwfile):
    fake = FakeIpmitool(answers=[TimeoutExpired("ipmitool did not finish")] * 10)
    with pytest.raises(TransientError):
        make(pwfile, fake, retries=1).status()
    assert len(fake.calls) == 2 and all(c["fifo"] for c in fake.calls)
    for call in fake.calls:
        with pytest.raises(OSError):
            os.fstat(call["pass_fds"][0])


def test_commands_for_each_action(pwfile):
    fake = FakeIpmitool(state="off")
    p = make(pwfile, fake)
    p.on()
    p.reset()
    p.soft_off()
    p.on()
    p.off()
    verbs = [c["argv"][-1] for c in fake.calls if c["argv"][-1] != "status"]
    assert verbs == ["on", "reset", "soft", "on", "off"]


WRONG_PASSWORD = "Loading IANA PEN Registry...\n> RAKP 2 HMAC is invalid\nError: Unable to establish IPMI v2 / RMCP+ session\n"
UNKNOWN_USER = "RAKP 2 message indicates an error : unauthorized name\nError: Unable to establish IPMI v2 / RMCP+ session\n"
NO_ANSWER = "Get Auth Capabilities error\nError issuing Get Channel Authentication Capabilities request\nError: Unable to establish IPMI v2 / RMCP+ session\n"
BUSY = "RAKP 2 message indicates an error : insufficient resources for session\nError: Unable to establish IPMI v2 / RMCP+ session\n"
BAD_CIPHER = "Error in open session response message : invalid authentication algorithm\n\nError: Unable to establish IPMI v2 / RMCP+ session\n"
DNS = "Address lookup for nosuch.invalid failed\nCould not open socket!\nError: Unable to establish IPMI v2 / RMCP+ session\n"
LAN15_AUTH = "Activate Session command failed\nError: Unable to establish LAN session\nError: Unable to establish IPMI v1.5 / RMCP session\n"
LAN15_NO_ANSWER = "Get Auth Capabilities command failed\nError: Unable to establish LAN session\nError: Unable to establish IPMI v1.5 / RMCP session\n"


@pytest.mark.parametrize("output,kind,words", [
    (WRONG_PASSWORD, "fatal", "wrong password"),
    (UNKNOWN_USER, "fatal", "user name"),
    (NO_ANSWER, "transient", "no answer"),
    (BUSY, "transient", "busy"),
    (BAD_CIPHER, "fatal", "cipher suite 3"),
    (DNS, "fatal", "unknown host"),
    (LAN15_AUTH, "fatal", "authentication failed"),
    (LAN15_NO_ANSWER, "transient", "no answer"),
    ("Unable to get Chassis Power Status\n", "transient", "did not carry out"),
    ("Error: something new\n", "transient", "something new"),
])
def test_classification(output, kind, words):
    got_kind, cause = classify_ipmitool(output, fields={"cipher_suite": 3, "host": "h", "privilege": "X"})
    assert got_kind == kind
    assert words in cause


def test_wrong_password_is_fatal_at_once(pwfile):
    fake = FakeIpmitool(answers=[(1, "", WRONG_PASSWORD)] * 5)
    with pytest.raises(FatalError) as exc:
        make(pwfile, fake).on()
    assert len(fake.calls) == 1
    msg = str(exc.value)
    assert "node01" in msg and "ipmi admin@10.0.1.11:623" in msg and "wrong password" in msg
    assert SECRET not in msg


def test_busy_bmc_is_retried_then_succeeds(pwfile):
    fake = FakeIpmitool(answers=[(1, "", BUSY), (1, "", NO_ANSWER)])
    assert make(pwfile, fake).status() == "off"
    assert len(fake.calls) == 3


def test_missing_ipmitool_is_fatal(pwfile):
    fake = FakeIpmitool(answers=[FatalError("ipmitool is not installed")])
    with pytest.raises(FatalError, match="ipmitool is not installed"):
        make(pwfile, fake).status()
    assert len(fake.calls) == 1


def test_real_runner_missing_binary_is_fatal(pwfile, monkeypatch):
    import bmm.power.ipmi as ipmi
    monkeypatch.setattr(ipmi, "IPMITOOL", "/nonexistent/ipmitool")
    p = IpmiPower("node01", {"host": "h", "user": "u", "password_file": pwfile, "min_interval_s": 0})
    with pytest.raises(FatalError, match="not installed"):
        p.status()


def test_group_readable_password_file_is_refused(pwfile):
    os.chmod(pwfile, 0o640)
    fake = FakeIpmitool()
    with pytest.raises(FatalError, match="chmod 600"):
        make(pwfile, fake).status()
    assert fake.calls == []


def test_status_parse():
    assert parse_status("Chassis Power is on\n") == "on"
    assert parse_status("Chassis Power is off") == "off"
    assert parse_status("garbage") is None


def test_secret_in_ipmitool_output_never_reaches_the_error(pwfile):
    # the runner redacts what it is told is secret; the driver tells it
    seen = {}

    def runner(argv, **kw):
        seen.update(kw)
        return Result(tuple(argv), 1, "", "Error: weird " + "******")

    with pytest.raises(TransientError) as exc:
        make(pwfile, runner, retries=0).status()
    assert seen["secrets"] == [SECRET]
    assert SECRET not in str(exc.value)


def test_driver_for_rejects_bad_settings(pwfile):
    with pytest.raises(ConfigError, match="power.host is required"):
        driver_for("node01", {"driver": "ipmi", "user": "a", "password_file": pwfile})
