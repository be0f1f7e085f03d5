"""The power interface every driver implements, and the policy they all share.

A driver supplies three primitives, each one command to its BMC/PDU/OS that raises
FatalError or TransientError:

    _status_once(timeout) -> "on" | "off" | "unknown"
    _action_once(action, timeout)          action: on | off | soft_off | reset
    endpoint (property)                    what it talks to, e.g. "admin@10.0.1.11:623"

Power adds the rest:
- idempotency: on() when already on sends nothing (status is read first);
- verification: after a change, status is polled with backoff until it shows the target
  or the deadline (`timeout_s`, `soft_off_timeout_s` for soft_off) passes;
- pacing: commands to one endpoint are serialised and at least `min_interval_s` apart,
  across processes (a flock'ed timestamp file per endpoint, see Pacer);
- retries: transient failures are retried with backoff (MAAS's waiting policy), at most
  `retries` times and never past the deadline; fatal failures are raised at once;
- errors name the node, the driver and the endpoint, and never carry a secret.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from bmm import settings
from bmm.errors import BmmError, ConfigError, FatalError, TimeoutExpired, TransientError
from bmm.locks import flock_until
from bmm.runner import redact
from bmm.settings import Setting

log = logging.getLogger("bmm.power")

T = TypeVar("T")

# Seconds to wait before retry n (1-based) of a command after a transient failure
# (MAAS DEFAULT_WAITING_POLICY); the last value repeats.
RETRY_BACKOFF = (1.0, 2.0, 2.0, 4.0, 6.0, 8.0, 12.0)
# Seconds between two status polls while verifying a change; the last value repeats.
POLL_BACKOFF = (0.5, 1.0, 1.0, 2.0, 2.0, 3.0, 5.0)

DEFAULTS = {
    "timeout_s": 60.0,
    "soft_off_timeout_s": 300.0,
    "min_interval_s": 1.0,
    "retries": 3,
    "command_timeout_s": 15.0,
}

COMMON_TIMING_KEYS = tuple(DEFAULTS)

# The keys every driver's table takes; drivers add theirs (Power.SETTINGS).
COMMON_SETTINGS: dict[str, Setting] = {
    "driver": Setting(settings.string, "ipmi | pdu | ssh | manual", required=True),
    "timeout_s": Setting(settings.positive_number, "deadline for a state change to be seen (default 60)"),
    "soft_off_timeout_s": Setting(settings.positive_number, "the same for soft_off, an OS shutdown (default 300)"),
    "min_interval_s": Setting(settings.non_negative_number, "between two commands to the same BMC/PDU (default 1)"),
    "retries": Setting(settings.non_negative_int, "transient failures of one command (default 3)"),
    "command_timeout_s": Setting(settings.positive_number, "deadline of one command (default 15)"),
}

ACTIONS = ("on", "off", "soft_off", "reset", "cycle")
TARGET = {"on": "on", "off": "off", "soft_off": "off", "reset": "on"}


def backoff(policy: tuple[float, ...], n: int) -> float:
    """The n-th (1-based) delay of a policy, repeating its last value."""
    return policy[min(max(n, 1), len(policy)) - 1]


# ----------------------------------------------------------------------------------------------
# Secrets


def read_password_file(path: str, *, node: str | None, what: str) -> str:
    """Read a secret from a file that only its owner may read (mode 0600 or 0400).

    A file readable or writable by group or others is refused (FatalError), like ssh refuses
    such a private key: a leaked BMC password is root on the machine. Trailing newlines are
    stripped, nothing else."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise FatalError(f"{what}: password_file {path} does not exist", node=node) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise FatalError(f"{what}: password_file {path} is a symlink; point to the file itself",
                             node=node) from None
        raise FatalError(f"{what}: cannot read password_file {path} ({exc.strerror})", node=node) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FatalError(f"{what}: password_file {path} is not a regular file", node=node)
        if st.st_mode & 0o077:
            raise FatalError(
                f"{what}: password_file {path} is accessible by group/others "
                f"(mode {stat.S_IMODE(st.st_mode):04o}); run chmod 600 {path}", node=node)
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read(4096)
    finally:
        os.close(fd)
    return data.decode("utf-8", errors="strict").rstrip("\r\n")


# ----------------------------------------------------------------------------------------------
# Pacing across processes


def pace_dir() -> Path:
    """Where per-endpoint timestamp files live. BMM_PACE_DIR, else /var/lib/one/bmm/pace when
    that is writable (the front-end, as oneadmin), else a private dir under the temp dir."""
    env = os.environ.get("BMM_PACE_DIR")
    if env:
        path = Path(env)
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        return path
    system = Path("/var/lib/one/bmm")
    if system.is_dir() and os.access(system, os.W_OK):
        path = system / "pace"
        path.mkdir(exist_ok=True, mode=0o700)
        return path
    path = Path(tempfile.gettempdir()) / f"bmm-pace-{os.getuid()}"
    path.mkdir(exist_ok=True, mode=0o700)
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise FatalError(f"{path} is not a directory owned by uid {os.getuid()}; set BMM_PACE_DIR")
    return path


class Pacer:
    """Serialises commands to one endpoint and keeps them `min_interval` seconds apart, across
    threads and processes (every OpenNebula action is its own process).

    One file per endpoint holds the CLOCK_MONOTONIC time the last command ended; an exclusive
    flock on it is held for the whole command, so one BMC/PDU sees one bmm session at a time
    (PDUs often allow a single CLI session)."""

    def __init__(self, key: str, min_interval: float, *, directory: Path | None = None):
        self.key = key
        self.min_interval = max(0.0, float(min_interval))
        self._directory = directory
        import hashlib  # here: loading OpenSSL costs what never talks to a BMC some 5 ms

        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        self._name = re.sub(r"[^A-Za-z0-9_.-]", "_", key)[:60] + "-" + digest

    @property
    def path(self) -> Path:
        return (self._directory or pace_dir()) / self._name

    def _open(self, node: str | None) -> int:
        path = self.path
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except PermissionError:
            # e.g. root's `bmm power` created it and oneadmin's driver runs now: pace within
            # this user's own directory instead of failing a power action over a timestamp.
            fallback = Path(tempfile.gettempdir()) / f"bmm-pace-{os.getuid()}"
            fallback.mkdir(exist_ok=True, mode=0o700)
            log.warning("node %s: cannot open %s (permission denied); pacing through %s instead "
                        "(make the pace directory writable by every bmm user, or set BMM_PACE_DIR)",
                        node, path, fallback)
            return os.open(fallback / self._name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)

    @contextmanager
    def slot(self, deadline: float, *, node: str | None = None, what: str = ""):
        """Hold the endpoint until the block ends. Waits for other holders and for the
        interval, but never past `deadline` (monotonic): then TimeoutExpired."""
        fd = self._open(node)
        try:
            if not flock_until(fd, deadline, interval=0.05):
                raise TimeoutExpired(f"{what}: another command to it did not finish "
                                     f"before the deadline", node=node)
            raw = os.pread(fd, 64, 0).decode(errors="replace").strip()
            try:
                last = float(raw)
            except ValueError:
                last = None
            if last is not None:
                now = time.monotonic()
                # Clamp: a stamp from before a reboot (or a clock oddity) never waits longer
                # than one interval.
                wait = min(self.min_interval, max(0.0, last + self.min_interval - now))
                if wait > 0:
                    if now + wait > deadline:
                        raise TimeoutExpired(f"{what}: the minimum command interval "
                                             f"({self.min_interval:g} s) would pass the deadline", node=node)
                    time.sleep(wait)
            try:
                yield
            finally:
                stamp = f"{time.monotonic():.6f}\n".encode()
                os.ftruncate(fd, 0)
                os.pwrite(fd, stamp, 0)
        finally:
            os.close(fd)  # releases the flock


# ----------------------------------------------------------------------------------------------
# The interface


class Power:
    """Base class of the power drivers. Public API: status, on, off, soft_off, reset, cycle,
    do(action). State-changing calls return the state they verified ("on"/"off").

    A driver declares its inventory table in SETTINGS (the common keys plus its own); validate()
    checks a table against it without contacting anything."""

    driver = "base"
    SETTINGS: dict[str, Setting] = COMMON_SETTINGS

    @classmethod
    def validate(cls, table: Mapping[str, Any]) -> list[tuple[str, str]]:
        return settings.check_table(table, cls.SETTINGS)

    def __init__(self, node: str, settings: Mapping[str, Any]):
        self.node = node
        self.settings = dict(settings)
        self.timeout_s = float(self.settings.get("timeout_s", DEFAULTS["timeout_s"]))
        self.soft_off_timeout_s = float(self.settings.get("soft_off_timeout_s",
                                                          max(DEFAULTS["soft_off_timeout_s"], self.timeout_s)))
        self.min_interval_s = float(self.settings.get("min_interval_s", DEFAULTS["min_interval_s"]))
        self.retries = int(self.settings.get("retries", DEFAULTS["retries"]))
        self.command_timeout_s = float(self.settings.get("command_timeout_s", DEFAULTS["command_timeout_s"]))
        self._pacer: Pacer | None = None
        self._password: str | None = None      # read from password_file on first use

    # -- what a driver provides ----------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """The BMC/PDU/host this driver talks to (no secret), e.g. "admin@10.0.1.11:623"."""
        raise NotImplementedError

    @property
    def pace_key(self) -> str:
        """Commands sharing this key are paced together (one BMC, one PDU)."""
        return f"{self.driver}:{self.endpoint}"

    def _secrets(self) -> Iterable[str]:
        return (self._password,) if self._password else ()

    def _status_once(self, timeout: float) -> str:
        raise NotImplementedError

    def _action_once(self, action: str, timeout: float) -> None:
        raise NotImplementedError

    # -- helpers for drivers --------------------------------------------------------------------

    @property
    def what(self) -> str:
        return f"{self.driver} {self.endpoint}"

    @property
    def password(self) -> str:
        """The secret from the node's password_file, read once, on first use."""
        if self._password is None:
            self._password = read_password_file(self.password_file, node=self.node, what=self.what)
        return self._password

    def clean(self, text: str) -> str:
        """Redact this driver's secrets. Applied where text from a peer or a tool enters
        (ipmitool output, the PDU's answers, exception texts), so messages built from that
        text are clean; bmm's own wording is never redacted (a password "pass" must not turn
        "password" into "******word")."""
        return redact(text, list(self._secrets()))

    def fatal(self, cause: str) -> FatalError:
        """A FatalError naming node, driver and endpoint. `cause` must be clean already."""
        return FatalError(f"{self.what}: {cause}", node=self.node)

    def transient(self, cause: str) -> TransientError:
        """A TransientError naming node, driver and endpoint. `cause` must be clean already."""
        return TransientError(f"{self.what}: {cause}", node=self.node)

    @property
    def pacer(self) -> Pacer:
        if self._pacer is None:
            self._pacer = Pacer(self.pace_key, self.min_interval_s)
        return self._pacer

    # -- the public interface -------------------------------------------------------------------

    def status(self) -> str:
        """"on", "off" or "unknown" (the driver cannot know). Raises when the peer cannot
        be asked (FatalError at once, TransientError after retries)."""
        deadline = time.monotonic() + self.timeout_s
        return self._retrying("status", self._status_once, deadline)

    def on(self) -> str:
        return self._change("on")

    def off(self) -> str:
        return self._change("off")

    def soft_off(self) -> str:
        return self._change("soft_off")

    def reset(self) -> str:
        """Hard reset. A node that is off is powered on (the end state is the same: on)."""
        deadline = time.monotonic() + self.timeout_s
        current = self._retrying("status", self._status_once, deadline)
        if current == "off":
            self._log("reset: node is off, powering on")
            return self._change("on", deadline=deadline, known=current)
        self._log("reset")
        self._retrying("reset", lambda t: self._action_once("reset", t), deadline)
        return self._verify("on", deadline, "reset")

    def cycle(self) -> str:
        """Off, then on; each verified, each with its own deadline."""
        self.off()
        return self.on()

    def do(self, action: str) -> str:
        """Run a named action: status | on | off | soft_off | reset | cycle."""
        if action == "status":
            return self.status()
        if action not in ACTIONS:
            raise ConfigError(f"unknown power action {action!r} (known: status, {', '.join(ACTIONS)})",
                              node=self.node)
        return getattr(self, action)()

    # -- the policy -----------------------------------------------------------------------------

    def _change(self, action: str, *, deadline: float | None = None, known: str | None = None) -> str:
        target = TARGET[action]
        timeout = self.soft_off_timeout_s if action == "soft_off" else self.timeout_s
        if deadline is None:
            deadline = time.monotonic() + timeout
        current = known or self._retrying("status", self._status_once, deadline)
        if current == target:
            self._log(f"{action}: already {target}, nothing to do")
            return current
        self._log(f"{action}: {current} -> {target}")
        self._retrying(action, lambda t: self._action_once(action, t), deadline)
        return self._verify(target, deadline, action)

    def _verify(self, target: str, deadline: float, action: str) -> str:
        """Poll status until it shows target, or raise TimeoutExpired at the deadline.
        Transient status failures are tolerated (a BMC can be busy right after a command)."""
        started = time.monotonic()
        polls = 0
        last_seen = "unknown"
        last_error: BmmError | None = None
        while True:
            polls += 1
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            time.sleep(min(backoff(POLL_BACKOFF, polls), remaining))
            try:
                with self.pacer.slot(deadline, node=self.node, what=self.what):
                    last_seen = self._status_once(self._command_timeout(deadline))
                last_error = None
            except FatalError:
                raise
            except TransientError as exc:
                last_error = exc
                continue
            if last_seen == target:
                self._log(f"{action}: verified {target} after {time.monotonic() - started:.1f} s")
                return target
            if last_seen == "unknown":
                raise self.fatal(f"{action} was sent but the power state cannot be read to verify it")
        seen = f"last error: {last_error.reason}" if last_error else f"last seen: {last_seen}"
        raise TimeoutExpired(
            f"{self.what}: {action} sent, but power did not become {target} before the deadline "
            f"({seen})", node=self.node)

    def _command_timeout(self, deadline: float) -> float:
        return max(0.1, min(self.command_timeout_s, deadline - time.monotonic()))

    def _retrying(self, what: str, fn: Callable[[float], T], deadline: float) -> T:
        """Run one command through the pacer; retry transient failures with backoff, at most
        `retries` times and never past the deadline."""
        failures = 0
        while True:
            try:
                with self.pacer.slot(deadline, node=self.node, what=self.what):
                    return fn(self._command_timeout(deadline))
            except FatalError:
                raise
            except TransientError as exc:
                failures += 1
                reason = exc.reason
                if failures > self.retries:
                    raise TransientError(f"{reason} (gave up after {failures} attempts)",
                                         node=self.node) from None
                delay = backoff(RETRY_BACKOFF, failures)
                if time.monotonic() + delay >= deadline:
                    raise TimeoutExpired(f"{reason} (deadline reached after {failures} "
                                         f"attempt{'s' if failures > 1 else ''})", node=self.node) from None
                self._log(f"{what}: transient failure, retry {failures}/{self.retries} in {delay:g} s: "
                          f"{reason}", level=logging.WARNING)
                time.sleep(delay)

    def _log(self, message: str, level: int = logging.INFO) -> None:
        log.log(level, "node %s: %s: %s", self.node, self.what, message)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} node={self.node} {self.endpoint}>"
