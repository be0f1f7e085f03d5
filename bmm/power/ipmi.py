"""IPMI power through `ipmitool` (lanplus by default, with a configurable cipher suite).

The password never reaches argv and never a file: it is written into a pipe whose read end
ipmitool inherits and reads as `-f /dev/fd/<n>`, so nothing on any disk or tmpfs holds it and
nothing survives the process, whatever kills it. Or it is put in the child's environment as
IPMI_PASSWORD for `ipmitool -E` (`password_via = "env"`). ipmitool runs with `-v` because only then does it say *why* a session
failed (RAKP 2 HMAC invalid = wrong password), which decides fatal against transient.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from typing import Any

from bmm import settings
from bmm.errors import FatalError, TimeoutExpired
from bmm.power.base import Power
from bmm.settings import Setting
from bmm.runner import Result, last_line, run

IPMITOOL = "ipmitool"

COMMANDS = {
    "status": ("chassis", "power", "status"),
    "on": ("chassis", "power", "on"),
    "off": ("chassis", "power", "off"),
    "soft_off": ("chassis", "power", "soft"),
    "reset": ("chassis", "power", "reset"),
}

_STATUS = re.compile(r"Chassis Power is (on|off)", re.IGNORECASE)

# (pattern, kind, cause) checked in order against ipmitool's stdout+stderr (lower-cased).
# kind: "fatal" (retrying cannot help) or "transient" (a bounded retry may).
IPMITOOL_ERRORS: tuple[tuple[str, str, str], ...] = (
    (r"insufficient resources for session", "transient",
     "BMC busy (insufficient resources for session)"),
    (r"rakp 2 hmac is invalid", "fatal", "authentication failed: wrong password (RAKP 2 HMAC is invalid)"),
    (r"unauthorized name", "fatal", "authentication failed: the BMC does not know this user name"),
    (r"invalid integrity check value", "fatal", "authentication failed: wrong password (RAKP 4 integrity check)"),
    (r"rakp \d message indicates an error", "fatal", "authentication failed (RAKP error)"),
    (r"invalid (authentication|integrity|confidentiality) algorithm", "fatal",
     "the BMC refused cipher suite {cipher_suite}; set cipher_suite to one it supports (often 3 or 17)"),
    (r"activate session (command failed|error)", "fatal",
     "authentication failed: the BMC did not accept the IPMI 1.5 session (wrong user or password?)"),
    (r"invalid user name", "fatal", "authentication failed: invalid user name"),
    (r"address lookup for .* failed|name or service not known|unknown host", "fatal",
     "unknown host {host} (DNS lookup failed)"),
    (r"insufficient privilege|exceeds privilege|requested privilege level", "fatal",
     "the user's privilege level is too low for this command (privilege = {privilege})"),
    (r"unable to (open|read) password", "fatal", "ipmitool could not read the password it was given"),
    (r"node busy|busy", "transient", "BMC busy"),
    (r"get auth capabilities|get channel authentication capabilities|no response from remote controller",
     "transient", "no answer from the BMC"),
    (r"unable to establish", "transient", "could not open an IPMI session"),
    (r"unable to (get|set) chassis power", "transient", "the BMC did not carry out the chassis command"),
)


def classify_ipmitool(output: str, *, fields: Mapping[str, Any] | None = None) -> tuple[str, str]:
    """(kind, cause) for a failed ipmitool run, from its output. Unknown failures are
    transient (retried a bounded number of times) and quote ipmitool's last line."""
    text = output.lower()
    for pattern, kind, cause in IPMITOOL_ERRORS:
        if re.search(pattern, text):
            try:
                return kind, cause.format(**(fields or {}))
            except (KeyError, IndexError):
                return kind, cause
    return "transient", f"ipmitool failed: {last_line(output) or 'no output'}"


def parse_status(stdout: str) -> str | None:
    match = _STATUS.search(stdout)
    return match.group(1).lower() if match else None


PIPE_SECRET_MAX = 4096      # far below a pipe's buffer: the write never blocks


def secret_pipe(secret: str) -> int:
    """A pipe holding secret, write end closed; returns the read end (close it after use).
    An empty secret is sent as NUL: an empty password file makes ipmitool prompt (as Ironic
    does, bug 1237802)."""
    data = (secret or "\0").encode()
    if len(data) > PIPE_SECRET_MAX:
        raise FatalError(f"the password is longer than {PIPE_SECRET_MAX} bytes")
    read_fd, write_fd = os.pipe()
    try:
        os.write(write_fd, data)
    finally:
        os.close(write_fd)
    return read_fd


def _cipher_suite(value) -> str | None:
    if not settings.is_int(value) or not 0 <= value <= 17:
        return f"must be an IPMI cipher suite id (0-17), not {value!r}"
    return None


IPMI_SETTINGS: dict[str, Setting] = {
    "host": Setting(settings.host, "the BMC's address", required=True),
    "port": Setting(settings.port, "default 623"),
    "user": Setting(settings.string, "the BMC user", required=True),
    "password_file": Setting(settings.abs_path, "mode 0600, refused if group/world accessible", required=True),
    "password_via": Setting(settings.choice("file", "env"), "file (an inherited pipe, default) | env (ipmitool -E)"),
    "interface": Setting(settings.choice("lanplus", "lan"), "lanplus (default) | lan"),
    "cipher_suite": Setting(_cipher_suite, "default 3"),
    "privilege": Setting(settings.choice("ADMINISTRATOR", "OPERATOR", "USER"), "ADMINISTRATOR (default)"),
}


class IpmiPower(Power):
    driver = "ipmi"
    SETTINGS = {**Power.SETTINGS, **IPMI_SETTINGS}

    def __init__(self, node: str, settings: Mapping[str, Any], *, runner: Callable[..., Result] = run):
        super().__init__(node, settings)
        s = self.settings
        self.host: str = s["host"]
        self.port: int = int(s.get("port", 623))
        self.user: str = s.get("user", "")
        self.password_file: str = s["password_file"]
        self.password_via: str = s.get("password_via", "file")
        self.interface: str = s.get("interface", "lanplus")
        self.cipher_suite: int = int(s.get("cipher_suite", 3))
        self.privilege: str = s.get("privilege", "ADMINISTRATOR")
        self._runner = runner

    @property
    def endpoint(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"

    @property
    def pace_key(self) -> str:
        return f"bmc:{self.host}:{self.port}"

    def base_argv(self) -> list[str]:
        argv = [IPMITOOL, "-v", "-I", self.interface, "-H", self.host, "-p", str(self.port),
                "-U", self.user, "-L", self.privilege]
        if self.interface == "lanplus":
            argv += ["-C", str(self.cipher_suite)]
        # ipmitool's own retries: 1 s timeout, 1 retry (about 2 s when nobody answers); bmm
        # retries with backoff above it, within the deadline.
        argv += ["-N", "1", "-R", "1"]
        return argv

    def ipmitool(self, args: tuple[str, ...] | list[str], timeout: float) -> Result:
        """Run one ipmitool command; raise FatalError/TransientError on failure."""
        password = self.password
        argv = self.base_argv()
        extra_env: dict[str, str] = {}
        read_fd = None
        try:
            if self.password_via == "env" and password:
                argv += ["-E"]
                extra_env["IPMI_PASSWORD"] = password
            else:
                read_fd = secret_pipe(password)
                argv += ["-f", f"/dev/fd/{read_fd}"]
            argv += list(args)
            try:
                result = self._runner(argv, timeout=timeout, check=False, secrets=[password],
                                      node=self.node, extra_env=extra_env,
                                      pass_fds=(read_fd,) if read_fd is not None else ())
            except TimeoutExpired:
                raise self.transient(f"ipmitool {' '.join(args)}: no answer within {timeout:.1f} s") from None
            except FatalError:
                raise self.fatal("ipmitool is not installed (apt-get install ipmitool)") from None
        finally:
            if read_fd is not None:
                os.close(read_fd)
        if result.returncode != 0:
            kind, cause = classify_ipmitool(result.stderr + "\n" + result.stdout, fields={
                "host": self.host, "cipher_suite": self.cipher_suite, "privilege": self.privilege})
            error = self.fatal(cause) if kind == "fatal" else self.transient(cause)
            raise error
        return result

    def _status_once(self, timeout: float) -> str:
        result = self.ipmitool(COMMANDS["status"], timeout)
        state = parse_status(result.stdout)
        if state is None:
            raise self.transient(f"unexpected answer to chassis power status: "
                                 f"{last_line(result.stdout) or 'nothing'}")
        return state

    def _action_once(self, action: str, timeout: float) -> None:
        self.ipmitool(COMMANDS[action], timeout)
