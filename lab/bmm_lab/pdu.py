"""A simulated switched rack PDU that speaks the APC command-line dialect.

The lab's boards get their power from this PDU, exactly as TILEmpower boards hung off an APC
outlet that `pdu_mgr` (an expect script) switched. The dialect is documented in
docs/pdu-dialect.md; in short:

- telnet (a plain TCP socket, the client does local echo): `User Name : `, `Password  : `, a
  banner, then the `apc>` prompt. Three bad logins and the PDU hangs up.
- ssh (paramiko server): password authentication is the login (three failures and the
  connection is closed), then the same banner and `apc>` prompt in a pty shell with echo.
- commands: `olOn|olOff|olReboot|olStatus <outlet|all|list|range|name>`, `olName`, `help`/`?`,
  `exit`/`quit`/`bye`/`logout`. Every command answers an `Exxx:` response code first.

One PduServer is one PDU. It runs as threads: inside the lab daemon (`PduServer(config,
machines={outlet: machine})`, `start()`, `stop()`) or standalone
(`python -m bmm_lab.pdu --config FILE`). An outlet bound to a machine reads the machine's
power state and switches it with `power_on()` / `power_off()`; an unbound outlet keeps its
own state (optionally persisted in a JSON state file).

The password comes from a file, never argv, and is never logged.
"""

from __future__ import annotations

import argparse
import hmac
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import paramiko

from bmm.errors import BmmError, ConfigError, FatalError
from bmm_lab import addresses
from bmm_lab.state import netboot_dir

log = logging.getLogger("bmm_lab.pdu")
logging.getLogger("paramiko").setLevel(logging.CRITICAL)

PROMPT = "apc>"
USER_PROMPT = "User Name : "
PASSWORD_PROMPT = "Password  : "
MAX_LOGIN_TRIES = 3
CRLF = "\r\n"

E000 = "E000: Success"
E101 = "E101: Command not found"
E102 = "E102: Parameter Error"
E100 = "E100: Command failed"


class Machine(Protocol):
    """What the PDU needs from the thing behind an outlet (the lab's Machine interface)."""

    name: str

    def powered(self) -> bool: ...

    def power_on(self) -> None: ...

    def power_off(self) -> None: ...


@dataclass
class PduConfig:
    """One PDU. Ports may be 0 (pick a free one; read PduServer.telnet_port/ssh_port)."""

    password_file: Path
    name: str = "pdu"
    listen: str = "127.0.0.1"
    telnet_port: int | None = 2323
    ssh_port: int | None = 2224
    user: str = "apc"
    host_key: Path | None = None          # ssh host key; generated (ed25519) when missing
    outlets: int = 8
    names: dict[int, str] = field(default_factory=dict)   # outlet number -> outlet name
    command_delay_s: float = 0.0          # relay latency before each switch takes effect
    reboot_delay_s: float = 1.0           # olReboot: off, this long, on (APC olRbootTime)
    state_file: Path | None = None        # unbound outlets' state survives restarts here
    log_file: Path | None = None
    idle_timeout_s: float = 300.0         # a silent session is closed after this long

    def validate(self) -> None:
        if self.telnet_port is None and self.ssh_port is None:
            raise ConfigError(f"pdu {self.name}: neither telnet_port nor ssh_port is set")
        if not 1 <= self.outlets <= 64:
            raise ConfigError(f"pdu {self.name}: outlets must be 1..64, not {self.outlets}")
        for n in self.names:
            if not 1 <= n <= self.outlets:
                raise ConfigError(f"pdu {self.name}: outlet name given for outlet {n}, "
                                  f"which does not exist (1..{self.outlets})")
        if self.ssh_port is not None and self.host_key is None:
            raise ConfigError(f"pdu {self.name}: ssh_port needs host_key (a path; created if missing)")
        read_password(self.password_file, self.name)

    @classmethod
    def from_toml(cls, path: Path | str) -> "PduConfig":
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"pdu config {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"pdu config {path}: {exc}") from None
        known = {"name", "listen", "telnet_port", "ssh_port", "user", "password_file", "host_key",
                 "outlets", "names", "command_delay_s", "reboot_delay_s", "state_file",
                 "log_file", "idle_timeout_s"}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"pdu config {path}: unknown key(s) {', '.join(sorted(unknown))}")
        if "password_file" not in data:
            raise ConfigError(f"pdu config {path}: password_file is required")

        def rel(value):
            p = Path(value)
            return p if p.is_absolute() else path.parent / p

        for key in ("password_file", "host_key", "state_file", "log_file"):
            if key in data:
                data[key] = rel(data[key])
        if "names" in data:
            try:
                data["names"] = {int(k): str(v) for k, v in data["names"].items()}
            except ValueError:
                raise ConfigError(f"pdu config {path}: [names] keys must be outlet numbers") from None
        cfg = cls(**data)
        cfg.validate()
        return cfg


def read_password(path: Path, pdu: str = "pdu") -> str:
    """The first line of a password file (the file only ever holds the secret)."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"pdu {pdu}: cannot read password file {path} ({exc.strerror})") from None
    lines = text.splitlines()
    if not lines or not lines[0]:
        raise ConfigError(f"pdu {pdu}: password file {path} is empty")
    return lines[0]


def ensure_host_key(path: Path) -> paramiko.PKey:
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bmm-lab-pdu",
                               "-f", str(path)], capture_output=True, text=True, timeout=30,
                              stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise FatalError(f"cannot create the PDU host key {path}: {proc.stderr.strip()}")
    try:
        return paramiko.Ed25519Key.from_private_key_file(str(path))
    except paramiko.SSHException:
        try:
            return paramiko.RSAKey.from_private_key_file(str(path))
        except paramiko.SSHException as exc:
            raise ConfigError(f"PDU host key {path} is unreadable: {exc}") from None


# ---------------------------------------------------------------------------------------------
# Outlets and the command interpreter (transport independent)


class Outlets:
    """The PDU's outlets: bound ones follow their machine, unbound ones keep local state."""

    def __init__(self, config: PduConfig, machines: Mapping[int, Machine] | None = None):
        self.config = config
        self.machines: dict[int, Machine] = dict(machines or {})
        for n in self.machines:
            if not 1 <= n <= config.outlets:
                raise ConfigError(f"pdu {config.name}: machine bound to outlet {n}, "
                                  f"which does not exist (1..{config.outlets})")
        self.lock = threading.RLock()       # a PDU executes one switch command at a time
        self._state: dict[int, bool] = {n: False for n in range(1, config.outlets + 1)}
        self._load_state()

    def name(self, n: int) -> str:
        if n in self.config.names:
            return self.config.names[n]
        machine = self.machines.get(n)
        return machine.name if machine is not None else f"Outlet {n}"

    def is_on(self, n: int) -> bool:
        machine = self.machines.get(n)
        if machine is not None:
            return bool(machine.powered())
        return self._state[n]

    def switch(self, n: int, on: bool) -> None:
        machine = self.machines.get(n)
        if machine is not None:
            if on:
                machine.power_on()
            else:
                machine.power_off()
        else:
            self._state[n] = on
            self._save_state()

    def _load_state(self) -> None:
        path = self.config.state_file
        if path is None or not Path(path).exists():
            return
        try:
            data = json.loads(Path(path).read_text())
            for k, v in data.get("outlets", {}).items():
                if int(k) in self._state:
                    self._state[int(k)] = bool(v)
        except (ValueError, OSError, AttributeError) as exc:
            raise ConfigError(f"pdu {self.config.name}: state file {path} is unreadable ({exc})") from None

    def _save_state(self) -> None:
        path = self.config.state_file
        if path is None:
            return
        tmp = Path(f"{path}.tmp")
        tmp.write_text(json.dumps({"outlets": {str(k): v for k, v in self._state.items()}}))
        os.replace(tmp, path)

    def parse(self, arg: str) -> list[int] | None:
        """`all`, `3`, `5-7`, `3,5-7,10` or an outlet name -> outlet numbers; None if invalid."""
        arg = arg.strip()
        if not arg:
            return None
        if arg.lower() == "all":
            return list(range(1, self.config.outlets + 1))
        for n in range(1, self.config.outlets + 1):
            if self.name(n).lower() == arg.lower():
                return [n]
        result: list[int] = []
        for part in arg.split(","):
            part = part.strip()
            try:
                if "-" in part:
                    lo_s, hi_s = part.split("-", 1)
                    lo, hi = int(lo_s), int(hi_s)
                    if lo > hi:
                        return None
                    numbers = range(lo, hi + 1)
                else:
                    numbers = [int(part)]
            except ValueError:
                return None
            for n in numbers:
                if not 1 <= n <= self.config.outlets:
                    return None
                if n not in result:
                    result.append(n)
        return result or None


HELP = [
    "Device Commands:",
    "---------------------------------------------------------------------------",
    "?         help      exit      quit      bye       logout    olStatus  olOn",
    "olOff     olReboot  olName",
]


class CliSession:
    """The `apc>` command loop for one logged-in user. Returns when the user leaves."""

    def __init__(self, pdu: "PduServer", write: Callable[[str], None], peer: str, user: str):
        self.pdu = pdu
        self.write = write
        self.peer = peer
        self.user = user

    def banner(self) -> None:
        c = self.pdu.config
        up = int(time.monotonic() - self.pdu.started_at)
        lines = [
            "",
            "Schneider Electric                      Network Management Card AOS      v6.9.6",
            "(c) Copyright 2020 All Rights Reserved  RPDU 2g APP                      v6.9.6",
            "-------------------------------------------------------------------------------",
            f"Name      : {c.name:<40}Date : {time.strftime('%m/%d/%Y')}",
            f"Contact   : {'bmm lab':<40}Time : {time.strftime('%H:%M:%S')}",
            f"Location  : {'bmm lab rack':<40}User : Administrator",
            f"Up Time   : {up // 86400} Days {up % 86400 // 3600} Hours {up % 3600 // 60} Minutes"
            f"{'':<13}Stat : P+ N4+ N6+ A+",
            "",
            "Type ? for command listing",
            "Use tcpip command for IP address(-i), subnet(-s), and gateway(-g)",
            "",
        ]
        self.write(CRLF.join(lines) + CRLF)

    def prompt(self) -> None:
        self.write(PROMPT)

    def handle(self, line: str) -> bool:
        """Run one command line; False when the session should end."""
        words = line.split()
        if not words:
            return True
        cmd, args = words[0].lower(), words[1:]
        if cmd in ("exit", "quit", "bye", "logout"):
            self.write(CRLF + "Bye." + CRLF)
            self.pdu.log(f"{self.peer}: {self.user} logged out")
            return False
        if cmd in ("?", "help"):
            self.out(E000, *HELP)
            return True
        handler = {
            "olstatus": self._status, "olon": self._on, "oloff": self._off,
            "olreboot": self._reboot, "olname": self._name,
        }.get(cmd)
        if handler is None:
            self.out(E101)
            return True
        if len(args) != 1 and cmd != "olname":
            self.out(E102)
            return True
        try:
            handler(args)
        except Exception as exc:  # the machine failed underneath: the unit answers E100
            self.pdu.log(f"{self.peer}: {line.strip()}: failed: {type(exc).__name__}: {exc}")
            self.out(E100)
        return True

    def out(self, *lines: str) -> None:
        self.write(CRLF.join(lines) + CRLF)

    def _outlets(self, args) -> list[int] | None:
        outlets = self.pdu.outlets.parse(args[0]) if args else None
        if outlets is None:
            self.out(E102)
        return outlets

    def _status(self, args) -> None:
        outlets = self._outlets(args)
        if outlets is None:
            return
        o = self.pdu.outlets
        lines = [f"{n:2d}: {o.name(n)}: {'On' if o.is_on(n) else 'Off'}" for n in outlets]
        self.out(E000, *lines)

    def _name(self, args) -> None:
        if len(args) != 1:
            self.out(E102)
            return
        outlets = self._outlets(args)
        if outlets is None:
            return
        self.out(E000, *[f"{n:2d}: {self.pdu.outlets.name(n)}" for n in outlets])

    def _switch(self, args, on: bool, verb: str) -> None:
        outlets = self._outlets(args)
        if outlets is None:
            return
        with self.pdu.outlets.lock:
            self.pdu.relay_delay()
            for n in outlets:
                self.pdu.log(f"{self.peer}: {self.user}: {verb} outlet {n} ({self.pdu.outlets.name(n)})")
                self.pdu.outlets.switch(n, on)
        self.out(E000)

    def _on(self, args) -> None:
        self._switch(args, True, "olOn")

    def _off(self, args) -> None:
        self._switch(args, False, "olOff")

    def _reboot(self, args) -> None:
        outlets = self._outlets(args)
        if outlets is None:
            return
        o = self.pdu.outlets
        with o.lock:
            self.pdu.relay_delay()
            for n in outlets:
                self.pdu.log(f"{self.peer}: {self.user}: olReboot outlet {n} ({o.name(n)})")
                o.switch(n, False)
            deadline = time.monotonic() + self.pdu.config.reboot_delay_s
            while time.monotonic() < deadline and not self.pdu.stopping.is_set():
                time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
            for n in outlets:
                o.switch(n, True)
        self.out(E000)


# ---------------------------------------------------------------------------------------------
# Transports


class _LineReader:
    """Bytes in, lines out, for both transports.

    A line ends on CR, LF, CR LF or CR NUL (telnet clients send CR LF or CR NUL, scripts and
    ssh ptys send a bare CR, as real APC units accept). Telnet IAC sequences are dropped. With
    `echo` (an ssh pty) typed characters are echoed, backspace edits, ^C drops the line and ^D
    on an empty line leaves."""

    def __init__(self, recv: Callable[[], bytes], echo: Callable[[bytes], None] | None):
        self.recv = recv
        self.echo = echo
        self.buf = bytearray()
        self.pending = bytearray()
        self.iac_state = 0          # 0 normal, 1 after IAC, 2 option byte, 3 in SB, 4 IAC in SB
        self.last_cr = False

    def readline(self, secret: bool = False) -> str | None:
        while True:
            while self.pending:
                b = self.pending.pop(0)
                line = self._feed(b, secret)
                if line is not None:
                    return line
            data = self.recv()
            if not data:
                return None
            self.pending += data

    def _feed(self, b: int, secret: bool) -> str | None:
        if self.iac_state == 1:
            if b == 255:
                self.iac_state = 0
                self.buf.append(b)
            elif b in (251, 252, 253, 254):
                self.iac_state = 2
            elif b == 250:
                self.iac_state = 3
            else:
                self.iac_state = 0
            return None
        if self.iac_state == 2:
            self.iac_state = 0
            return None
        if self.iac_state == 3:
            if b == 255:
                self.iac_state = 4
            return None
        if self.iac_state == 4:
            self.iac_state = 0 if b == 240 else 3
            return None
        if b == 255:
            self.iac_state = 1
            return None
        after_cr, self.last_cr = self.last_cr, b == 13
        if b in (10, 0) and after_cr:
            return None                 # the second half of CR LF / CR NUL
        if b in (13, 10):
            if self.echo:
                self.echo(b"\r\n")
            return self._take()
        if self.echo is not None:
            if b in (8, 127):
                if self.buf:
                    self.buf.pop()
                    if not secret:
                        self.echo(b"\b \b")
                return None
            if b == 3:                  # ^C: drop the line
                self.buf.clear()
                self.echo(b"^C\r\n")
                return ""
            if b == 4 and not self.buf:  # ^D on an empty line: leave
                return "exit"
        if b < 32:
            return None
        self.buf.append(b)
        if self.echo and not secret:
            self.echo(bytes([b]))
        return None

    def _take(self) -> str:
        line = self.buf.decode("utf-8", errors="replace")
        self.buf.clear()
        return line


class PduServer:
    """A PDU: telnet and/or ssh listeners on config.listen, run as daemon threads."""

    def __init__(self, config: PduConfig, machines: Mapping[int, Machine] | None = None):
        config.validate()
        self.config = config
        self.outlets = Outlets(config, machines)
        self.stopping = threading.Event()
        self.started_at = time.monotonic()
        self._listeners: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        self._log_lock = threading.Lock()
        self._host_key: paramiko.PKey | None = None
        self.telnet_port: int | None = None
        self.ssh_port: int | None = None

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> "PduServer":
        c = self.config
        try:
            if c.ssh_port is not None:
                self._host_key = ensure_host_key(c.host_key)
            if c.telnet_port is not None:
                sock = self._listen(c.telnet_port)
                self.telnet_port = sock.getsockname()[1]
                self._spawn(self._accept_loop, sock, self._serve_telnet, "telnet")
            if c.ssh_port is not None:
                sock = self._listen(c.ssh_port)
                self.ssh_port = sock.getsockname()[1]
                self._spawn(self._accept_loop, sock, self._serve_ssh, "ssh")
        except BaseException:
            self.stop()
            raise
        self.log(f"pdu {c.name} up: {c.outlets} outlets, telnet {c.listen}:{self.telnet_port}, "
                 f"ssh {c.listen}:{self.ssh_port}")
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.stopping.set()
        for sock in self._listeners:
            try:
                sock.close()
            except OSError:
                pass
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                conn.close()
            except OSError:
                pass
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self._listeners.clear()
        self.log(f"pdu {self.config.name} stopped")

    def __enter__(self) -> "PduServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- helpers ----------------------------------------------------------------------------

    def log(self, message: str) -> None:
        log.info("%s", message)
        path = self.config.log_file
        if path is None:
            return
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n"
        with self._log_lock:
            with open(path, "a") as fh:
                fh.write(line)

    def relay_delay(self) -> None:
        delay = self.config.command_delay_s
        if delay > 0:
            self.stopping.wait(delay)

    def _listen(self, port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.config.listen, port))
        except OSError as exc:
            sock.close()
            raise FatalError(f"pdu {self.config.name}: cannot listen on "
                             f"{self.config.listen}:{port} ({exc.strerror})") from None
        sock.listen(16)
        sock.settimeout(0.5)
        self._listeners.append(sock)
        return sock

    def _spawn(self, target, *args) -> None:
        t = threading.Thread(target=target, args=args, daemon=True,
                             name=f"pdu-{self.config.name}-{target.__name__}")
        self._threads = [x for x in self._threads if x.is_alive()]
        self._threads.append(t)
        t.start()

    def _accept_loop(self, sock: socket.socket, serve, kind: str) -> None:
        while not self.stopping.is_set():
            try:
                conn, addr = sock.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            conn.settimeout(None)
            with self._conns_lock:
                self._conns.add(conn)
            self._spawn(self._serve_guarded, serve, conn, f"{kind} {addr[0]}:{addr[1]}")

    def _serve_guarded(self, serve, conn: socket.socket, peer: str) -> None:
        try:
            serve(conn, peer)
        except Exception as exc:  # a broken session must never take the PDU down
            if not self.stopping.is_set():
                self.log(f"{peer}: session ended: {type(exc).__name__}: {exc}")
        finally:
            with self._conns_lock:
                self._conns.discard(conn)
            try:
                conn.close()
            except OSError:
                pass

    def check_login(self, user: str, password: str) -> bool:
        expected = read_password(self.config.password_file, self.config.name)
        user_ok = hmac.compare_digest(user.encode(), self.config.user.encode())
        pass_ok = hmac.compare_digest(password.encode(), expected.encode())
        return user_ok and pass_ok

    def _converse(self, cli: "CliSession", reader: "_LineReader", peer: str) -> None:
        """Banner, then prompt / read / handle until the user leaves, hangs up or we stop."""
        cli.banner()
        while not self.stopping.is_set():
            cli.prompt()
            line = reader.readline()
            if line is None:
                self.log(f"{peer}: disconnected")
                return
            if not cli.handle(line):
                return

    # -- telnet -----------------------------------------------------------------------------

    def _serve_telnet(self, conn: socket.socket, peer: str) -> None:
        conn.settimeout(self.config.idle_timeout_s)
        self.log(f"{peer}: connected")

        def recv() -> bytes:
            try:
                return conn.recv(4096)
            except (socket.timeout, OSError):
                return b""

        def write(text: str) -> None:
            conn.sendall(text.encode())

        reader = _LineReader(recv, None)
        write(CRLF)
        for attempt in range(1, MAX_LOGIN_TRIES + 1):
            write(USER_PROMPT)
            user = reader.readline()
            if user is None:
                return
            write(PASSWORD_PROMPT)
            password = reader.readline(secret=True)
            if password is None:
                return
            if self.check_login(user.strip(), password):
                break
            self.log(f"{peer}: login refused for user {user.strip()!r} (attempt {attempt})")
            self.stopping.wait(0.3)         # real units pause after a bad login
            if attempt == MAX_LOGIN_TRIES:
                write(CRLF + "Login failed: user name or password incorrect." + CRLF)
                write("Too many failed login attempts; closing connection." + CRLF)
                return
            write(CRLF + "Login failed: user name or password incorrect." + CRLF + CRLF)
        else:  # pragma: no cover
            return
        user = user.strip()
        self.log(f"{peer}: {user} logged in")
        self._converse(CliSession(self, write, peer, user), reader, peer)

    # -- ssh --------------------------------------------------------------------------------

    def _serve_ssh(self, conn: socket.socket, peer: str) -> None:
        transport = paramiko.Transport(conn)
        transport.add_server_key(self._host_key)
        iface = _SshInterface(self, peer)
        try:
            transport.start_server(server=iface)
            deadline = time.monotonic() + 60
            chan = None
            while chan is None and time.monotonic() < deadline and not self.stopping.is_set():
                if not transport.is_active():
                    return
                if iface.failures >= MAX_LOGIN_TRIES:
                    # let the client read its last "denied" before the PDU hangs up
                    end = time.monotonic() + 2.0
                    while transport.is_active() and time.monotonic() < end:
                        time.sleep(0.1)
                    self.log(f"{peer}: too many failed logins; closing")
                    return
                chan = transport.accept(0.5)
            if chan is None:
                return
            if not iface.shell_event.wait(10):
                chan.close()
                return
            chan.settimeout(self.config.idle_timeout_s)

            def recv() -> bytes:
                try:
                    return chan.recv(4096)
                except (socket.timeout, OSError, EOFError):
                    return b""

            def write(text: str) -> None:
                chan.sendall(text.encode())

            echo = (lambda b: chan.sendall(b)) if iface.pty else None
            reader = _LineReader(recv, echo)
            self._converse(CliSession(self, write, peer, iface.user or "?"), reader, peer)
            try:
                chan.send_exit_status(0)
            except (OSError, EOFError, paramiko.SSHException):
                pass
            chan.close()
        except (paramiko.SSHException, EOFError, OSError) as exc:
            if not self.stopping.is_set():
                self.log(f"{peer}: ssh session ended: {exc or type(exc).__name__}")
        finally:
            transport.close()


class _SshInterface(paramiko.ServerInterface):
    def __init__(self, pdu: PduServer, peer: str):
        self.pdu = pdu
        self.peer = peer
        self.failures = 0
        self.user: str | None = None
        self.pty = False
        self.shell_event = threading.Event()

    def get_allowed_auths(self, username):
        return "password"

    def check_auth_password(self, username, password):
        if self.failures >= MAX_LOGIN_TRIES:
            return paramiko.AUTH_FAILED
        if self.pdu.check_login(username, password):
            self.user = username
            self.pdu.log(f"{self.peer}: {username} logged in")
            return paramiko.AUTH_SUCCESSFUL
        self.failures += 1
        self.pdu.log(f"{self.peer}: login refused for user {username!r} (attempt {self.failures})")
        time.sleep(0.3)
        return paramiko.AUTH_FAILED

    def check_auth_none(self, username):
        return paramiko.AUTH_FAILED

    def check_auth_publickey(self, username, key):
        return paramiko.AUTH_FAILED

    def check_channel_request(self, kind, chanid):
        if kind == "session":
            return paramiko.OPEN_SUCCEEDED
        return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_pty_request(self, channel, term, width, height, pixelwidth, pixelheight, modes):
        self.pty = True
        return True

    def check_channel_shell_request(self, channel):
        self.shell_event.set()
        return True

    def check_channel_exec_request(self, channel, command):
        return False            # like the real unit: an interactive CLI only

    def check_channel_window_change_request(self, channel, width, height, pixelwidth, pixelheight):
        return True


# ---------------------------------------------------------------------------------------------
# The lab's PDU (docs/lab-internals.md, "How the board half plugs in")

LAB_USER = "apc"
LAB_COMMAND_DELAY_S = 0.2
LAB_REBOOT_DELAY_S = 1.0


def lab_password_file(lab_dir: Path | str, pdu: str = "pdu1") -> Path:
    return Path(lab_dir) / "secrets" / f"{pdu}.pdu"


def ensure_lab_secret(lab_dir: Path | str, pdu: str = "pdu1") -> Path:
    """DIR/secrets/<pdu>.pdu: a random password, mode 0600 (created once)."""
    import secrets as _secrets
    path = lab_password_file(lab_dir, pdu)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(_secrets.token_urlsafe(12) + "\n")
    os.chmod(path, 0o600)
    return path


def lab_config(lab_dir: Path | str, lab: dict, board_port: Callable[[int], int],
               pdu: str = "pdu1") -> PduConfig:
    lab_dir = Path(lab_dir)
    boards = [n for n in lab.get("nodes", []) if n.get("kind") == "netboot"]
    outlets = max([8] + [int(n["outlet"]) for n in boards if n.get("outlet")])
    return PduConfig(
        name=pdu, listen=addresses.pdu_addr(lab),
        telnet_port=board_port(addresses.PORT_PDU_TELNET), ssh_port=board_port(addresses.PORT_PDU_SSH),
        user=LAB_USER, password_file=ensure_lab_secret(lab_dir, pdu),
        host_key=netboot_dir(lab_dir) / f"{pdu}_host_key",
        outlets=outlets, command_delay_s=LAB_COMMAND_DELAY_S, reboot_delay_s=LAB_REBOOT_DELAY_S,
        log_file=netboot_dir(lab_dir) / f"{pdu}.log",
    )


def start(fw) -> "PduServer | None":
    """Daemon: the lab's PDU, one outlet per board (node["outlet"]), as threads."""
    boards = [n for n in fw.lab.get("nodes", []) if n.get("kind") == "netboot" and n.get("outlet")]
    if not boards:
        return None
    addresses.ensure_addr(addresses.pdu_addr(fw.lab))
    config = lab_config(fw.dir, fw.lab, fw.board_port)
    config.log_file.parent.mkdir(parents=True, exist_ok=True)
    machines = {int(n["outlet"]): fw.machine_for_outlet(int(n["outlet"])) for n in boards
                if n["name"] in fw.machines}
    server = PduServer(config, machines).start()
    fw.log(f"pdu {config.name}: telnet {config.listen}:{server.telnet_port}, ssh {config.listen}:{server.ssh_port}, "
           f"outlets {', '.join(f'{o}={m.name}' for o, m in sorted(machines.items()))}")
    return server


# ---------------------------------------------------------------------------------------------
# Standalone


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bmm_lab.pdu",
                                     description="Run one simulated APC PDU until SIGTERM/SIGINT.")
    parser.add_argument("--config", required=True, help="TOML file (see docs/pdu-dialect.md)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    try:
        config = PduConfig.from_toml(args.config)
        server = PduServer(config).start()
    except BmmError as exc:
        print(f"pdu: {exc}", file=sys.stderr)
        return 1
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    print(f"READY telnet={server.telnet_port or ''} ssh={server.ssh_port or ''}", flush=True)
    try:
        while not done.wait(1.0):
            pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
