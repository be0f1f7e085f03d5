"""PDU outlet power: pexpect drives the PDU's command line over telnet or ssh.

The vendor's CLI is data, not code: a dialect (bmm/power/dialects.py, or a TOML file named
by a node's `dialects_file`) gives the prompts, the failure texts and the command templates. APC is the
default. The outlet is set per node.

The password is sent through the pty (never argv), pexpect's logfile is never set, and
every text that leaves this module (errors, logs) is redacted first. A telnet client's
local echo puts the password into what pexpect reads back; that is why nothing read is ever
shown unredacted.
"""

from __future__ import annotations

import os
import re
import shutil
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from bmm import settings
from bmm.errors import ConfigError
from bmm.power.base import Power
from bmm.settings import Setting


REQUIRED_DIALECT_KEYS = ("password_prompt", "prompt", "on", "off", "status", "status_pattern",
                         "state_on", "state_off")
OPTIONAL_DIALECT_KEYS = ("description", "user_prompt", "login_failed", "command_ok", "command_error",
                         "busy", "reboot", "logout", "line_ending", "reboot_delay_s")
_REGEX_KEYS = ("user_prompt", "password_prompt", "prompt", "login_failed", "command_ok",
               "command_error", "busy", "state_on", "state_off")

# What the telnet/ssh clients themselves say, before any dialect is involved.
# (pattern, kind, cause)
CLIENT_ERRORS: tuple[tuple[str, str, str], ...] = (
    (r"Permission denied", "fatal", "login refused: wrong user or password"),
    (r"Host key verification failed|REMOTE HOST IDENTIFICATION HAS CHANGED", "fatal",
     "the PDU's ssh host key does not match known_hosts"),
    (r"Could not resolve hostname|Name or service not known|Server lookup failure|"
     r"Temporary failure in name resolution|[Uu]nknown host", "fatal", "unknown host (DNS lookup failed)"),
    (r"Connection refused", "transient", "connection refused"),
    (r"Connection timed out|timed out|No route to host|Network is unreachable", "transient",
     "no answer (connection timed out)"),
    (r"Connection closed|Connection reset|closed by remote host|closed by foreign host", "transient",
     "the PDU closed the connection"),
)


@dataclass(frozen=True)
class Dialect:
    name: str
    password_prompt: str
    prompt: str
    on: str
    off: str
    status: str
    status_pattern: str
    state_on: str
    state_off: str
    description: str = ""
    user_prompt: str | None = None
    login_failed: str | None = None
    command_ok: str | None = None
    command_error: str | None = None
    busy: str | None = None
    reboot: str | None = None
    logout: str | None = "exit"
    line_ending: str = "\r"
    reboot_delay_s: float = 5.0

    def command(self, action: str, outlet: int) -> str:
        template = getattr(self, action)
        return template.replace("{outlet}", str(outlet))

    def parse_status(self, answer: str, outlet: int) -> str | None:
        """'on'/'off' from a status answer, or None when the answer says neither."""
        pattern = self.status_pattern.replace("{outlet}", re.escape(str(outlet)))
        match = re.search(pattern, answer)
        if not match:
            return None
        state = match.group("state").strip()
        if re.search(self.state_on, state):
            return "on"
        if re.search(self.state_off, state):
            return "off"
        return None


def _dialect(name: str, data: Mapping[str, Any], source: str) -> Dialect:
    if not isinstance(data, Mapping):
        raise ConfigError(f"PDU dialect {name!r} in {source} must be a table")
    unknown = set(data) - set(REQUIRED_DIALECT_KEYS) - set(OPTIONAL_DIALECT_KEYS)
    if unknown:
        raise ConfigError(f"PDU dialect {name!r} in {source}: unknown key(s) {', '.join(sorted(unknown))}")
    missing = [k for k in REQUIRED_DIALECT_KEYS if k not in data]
    if missing:
        raise ConfigError(f"PDU dialect {name!r} in {source}: missing {', '.join(missing)}")
    for key in _REGEX_KEYS + ("status_pattern",):
        value = data.get(key)
        if value is None:
            continue
        try:
            re.compile(value.replace("{outlet}", "1") if isinstance(value, str) else value)
        except (re.error, TypeError) as exc:
            raise ConfigError(f"PDU dialect {name!r} in {source}: {key} is not a valid regex ({exc})") from None
    if "(?P<state>" not in data["status_pattern"]:
        raise ConfigError(f"PDU dialect {name!r} in {source}: status_pattern needs a (?P<state>...) group")
    return Dialect(name=name, **dict(data))


def _load_file(path: Path) -> dict[str, Dialect]:
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"PDU dialects file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"PDU dialects file {path}: {exc}") from None
    return {name: _dialect(name, table, str(path)) for name, table in data.items()}


@lru_cache(maxsize=1)
def builtin_dialects() -> dict[str, Dialect]:
    from bmm.power.dialects import DIALECTS

    return {name: _dialect(name, table, "bmm/power/dialects.py") for name, table in DIALECTS.items()}


def builtin_dialect_names() -> list[str]:
    return sorted(builtin_dialects())


def load_dialect(name: str = "apc", dialects_file: str | None = None) -> Dialect:
    """A dialect by name: from dialects_file first (when given), then the built-in ones."""
    dialects = dict(builtin_dialects())
    if dialects_file:
        dialects.update(_load_file(Path(dialects_file)))
    if name not in dialects:
        raise ConfigError(f"unknown PDU dialect {name!r}; known: {', '.join(sorted(dialects))}")
    return dialects[name]


def classify_client_output(text: str) -> tuple[str, str] | None:
    for pattern, kind, cause in CLIENT_ERRORS:
        if re.search(pattern, text):
            return kind, cause
    return None


def _outlet(value) -> str | None:
    if not settings.is_int(value) or value < 1:
        return f"must be an outlet number (1 or more), not {value!r}"
    return None


class PduPower(Power):
    driver = "pdu"
    SETTINGS = {
        **Power.SETTINGS,
        "host": Setting(settings.host, "the PDU's address", required=True),
        "port": Setting(settings.port, "default 23 (telnet) / 22 (ssh)"),
        "protocol": Setting(settings.choice("telnet", "ssh"), "telnet (default) | ssh"),
        "user": Setting(settings.string, "the PDU user", required=True),
        "password_file": Setting(settings.abs_path, "mode 0600", required=True),
        "outlet": Setting(_outlet, "the node's outlet", required=True),
        "dialect": Setting(settings.string, 'default "apc"; see bmm/power/dialects.py'),
        "dialects_file": Setting(settings.abs_path, "extra dialects: a TOML file, one [name] table each"),
        "reboot_delay_s": Setting(settings.non_negative_number, "off->on delay when the dialect has no reboot command"),
        "known_hosts": Setting(settings.abs_path, "ssh protocol: host keys file"),
        "host_key_policy": Setting(settings.choice("accept-new", "strict", "ignore"),
                                   "ssh protocol: accept-new (default) | strict | ignore"),
    }

    @classmethod
    def validate(cls, table):
        problems = super().validate(table)
        name = table.get("dialect")
        if isinstance(name, str) and "dialects_file" not in table and name not in builtin_dialect_names():
            problems.append(("dialect", f"unknown PDU dialect {name!r}; known: "
                                        f"{', '.join(builtin_dialect_names())} (or set dialects_file)"))
        return problems

    def __init__(self, node: str, settings: Mapping[str, Any], *,
                 spawn: Callable[..., Any] | None = None):
        super().__init__(node, settings)
        s = self.settings
        self.host: str = s["host"]
        self.protocol: str = s.get("protocol", "telnet")
        self.port: int = int(s.get("port", 22 if self.protocol == "ssh" else 23))
        self.user: str = s["user"]
        self.password_file: str = s["password_file"]
        self.outlet: int = int(s["outlet"])
        self.dialect = load_dialect(s.get("dialect", "apc"), s.get("dialects_file"))
        self.reboot_delay_s = float(s.get("reboot_delay_s", self.dialect.reboot_delay_s))
        self.known_hosts: str | None = s.get("known_hosts")
        self.host_key_policy: str = s.get("host_key_policy", "accept-new")
        self._spawn = spawn

    @property
    def endpoint(self) -> str:
        return f"{self.user}@{self.host}:{self.port} ({self.protocol}) outlet {self.outlet}"

    @property
    def pace_key(self) -> str:
        return f"pdu:{self.host}:{self.port}"

    # -- the client ---------------------------------------------------------------------------

    def client_argv(self, timeout: float) -> list[str]:
        if self.protocol == "telnet":
            return ["telnet", "-8", "-E", self.host, str(self.port)]
        argv = ["ssh", "-F", "none", "-p", str(self.port), "-l", self.user,
                "-o", f"ConnectTimeout={max(1, int(timeout))}",
                "-o", "NumberOfPasswordPrompts=1",
                "-o", "PreferredAuthentications=password,keyboard-interactive",
                "-o", "PubkeyAuthentication=no", "-o", "GSSAPIAuthentication=no",
                "-o", "BatchMode=no", "-o", "LogLevel=ERROR", "-o", "RequestTTY=force"]
        if self.host_key_policy == "ignore":
            argv += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
        else:
            policy = "yes" if self.host_key_policy == "strict" else "accept-new"
            argv += ["-o", f"StrictHostKeyChecking={policy}"]
            if self.known_hosts:
                argv += ["-o", f"UserKnownHostsFile={self.known_hosts}"]
        return argv + ["--", self.host]

    def _start(self, timeout: float):
        import pexpect

        argv = self.client_argv(timeout)
        if shutil.which(argv[0]) is None:
            raise self.fatal(f"{argv[0]} is not installed (apt-get install "
                             f"{'telnet' if argv[0] == 'telnet' else 'openssh-client'})")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TERM": "dumb", "LANG": "C",
               "HOME": os.environ.get("HOME", "/")}
        spawn = self._spawn or pexpect.spawn
        # encoding: str in and out; logfile stays None so no transcript is ever written.
        return spawn(argv[0], argv[1:], timeout=timeout, encoding="utf-8", codec_errors="replace",
                     env=env, echo=False, dimensions=(24, 200))

    def session(self, commands: list[str], timeout: float) -> list[str]:
        """Log in, run each command, log out. Returns each command's answer (redacted).
        Raises FatalError (login refused, unknown host, rejected command) or TransientError."""
        import pexpect

        deadline = time.monotonic() + timeout
        password = self.password
        d = self.dialect
        child = self._start(timeout)

        def remaining() -> float:
            left = deadline - time.monotonic()
            if left <= 0:
                raise self.transient(f"no answer within {timeout:.1f} s")
            return left

        try:
            patterns: list[Any] = []
            names: list[str] = []

            def add(name: str, pattern: str | None):
                if pattern:
                    names.append(name)
                    patterns.append(re.compile(pattern))

            add("user", d.user_prompt)
            add("password", d.password_prompt)
            add("prompt", d.prompt)
            add("failed", d.login_failed)
            for i, (pattern, _kind, _cause) in enumerate(CLIENT_ERRORS):
                add(f"client{i}", pattern)
            names += ["eof", "timeout"]
            patterns += [pexpect.EOF, pexpect.TIMEOUT]

            user_sent = 0
            password_sent = 0
            while True:
                idx = child.expect(patterns, timeout=remaining())
                what = names[idx]
                seen = self.clean((child.before or "") + (child.after if isinstance(child.after, str) else ""))
                if what == "prompt":
                    break
                if what == "user":
                    if user_sent or password_sent:
                        raise self.fatal("login refused: wrong user or password")
                    child.send(self.user + d.line_ending)
                    user_sent += 1
                elif what == "password":
                    if password_sent:
                        raise self.fatal("login refused: wrong user or password")
                    child.send(password + d.line_ending)
                    password_sent += 1
                elif what == "failed":
                    raise self.fatal("login refused: wrong user or password")
                elif what.startswith("client"):
                    kind, cause = CLIENT_ERRORS[int(what[6:])][1:]
                    if kind == "transient" and password_sent and d.login_failed \
                            and re.search(d.login_failed, seen):
                        raise self.fatal("login refused: wrong user or password")
                    raise self.fatal(cause) if kind == "fatal" else self.transient(cause)
                elif what == "eof":
                    found = classify_client_output(seen)
                    if found:
                        kind, cause = found
                        raise self.fatal(cause) if kind == "fatal" else self.transient(cause)
                    if password_sent:
                        raise self.transient("the PDU closed the connection right after login")
                    raise self.transient(f"the connection closed before login "
                                         f"({_last_line(seen) or 'no output'})")
                else:
                    stage = "the command prompt" if password_sent else "a login prompt"
                    raise self.transient(f"no answer within {timeout:.1f} s (waiting for {stage})")

            answers = []
            for command in commands:
                child.send(command + d.line_ending)
                idx = child.expect([re.compile(d.prompt), pexpect.EOF, pexpect.TIMEOUT], timeout=remaining())
                answer = self.clean(child.before or "")
                if idx == 1:
                    raise self.transient(f"the PDU closed the connection after `{command}`")
                if idx == 2:
                    raise self.transient(f"no answer to `{command}` within {timeout:.1f} s")
                if d.busy and re.search(d.busy, answer):
                    raise self.transient(f"PDU busy: `{command}`: {_last_line(answer)}")
                if d.command_error:
                    match = re.search(d.command_error, answer)
                    if match:
                        raise self.fatal(f"the PDU rejected `{command}`: {match.group(0).strip()}")
                if d.command_ok and not re.search(d.command_ok, answer):
                    raise self.transient(f"unexpected answer to `{command}`: {_last_line(answer) or 'nothing'}")
                answers.append(answer)
            if d.logout:
                try:
                    child.send(d.logout + d.line_ending)
                    child.expect([pexpect.EOF, pexpect.TIMEOUT], timeout=min(1.0, max(0.1, deadline - time.monotonic())))
                except (OSError, pexpect.ExceptionPexpect):
                    pass
            return answers
        except pexpect.ExceptionPexpect as exc:
            raise self.transient(f"{type(exc).__name__}: {_last_line(self.clean(str(exc)))}") from None
        except OSError as exc:
            raise self.transient(f"the session broke ({self.clean(str(exc.strerror or exc))})") from None
        finally:
            try:
                child.close(force=True)
            except Exception:  # noqa: BLE001 - closing must never mask the real error
                pass

    # -- the primitives -----------------------------------------------------------------------

    def _status_once(self, timeout: float) -> str:
        command = self.dialect.command("status", self.outlet)
        (answer,) = self.session([command], timeout)
        state = self.dialect.parse_status(answer, self.outlet)
        if state is None:
            raise self.transient(f"cannot read outlet {self.outlet} from the answer to `{command}`: "
                                 f"{_last_line(answer) or 'nothing'}")
        return state

    def _action_once(self, action: str, timeout: float) -> None:
        if action == "reset":
            self.session([self.dialect.command("reboot", self.outlet)], timeout)
            return
        if action not in ("on", "off"):
            raise self.fatal(f"a PDU cannot do {action}")
        self.session([self.dialect.command(action, self.outlet)], timeout)

    # -- actions a PDU does differently -------------------------------------------------------

    def soft_off(self) -> str:
        """A PDU can only cut power. Already off: nothing to do; else a clear error."""
        deadline = time.monotonic() + self.timeout_s
        if self._retrying("status", self._status_once, deadline) == "off":
            return "off"
        raise self.fatal("a PDU outlet cannot ask the OS to shut down; use `off` (cuts power) "
                         "or the ssh power driver for a clean shutdown")

    def reset(self) -> str:
        if self.dialect.reboot:
            return super().reset()
        # No reboot command in this dialect: off (verified), the delay, on (verified).
        self.off()
        time.sleep(self.reboot_delay_s)
        return self.on()


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.replace("\r", "\n").splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""
