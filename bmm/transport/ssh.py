"""SSH to a node's operating system with paramiko.

Commands are argv lists; every word is quoted with shlex before it crosses the wire, so a
value from a template can never become shell syntax on the node.

paramiko is imported where a connection is made, never at import time (_paramiko): it costs
some 75 ms, and the inventory and most driver runs only need this module's settings and types
(benchmarks/cold_start.py).
"""

from __future__ import annotations

import dataclasses
import logging
import shlex
import socket
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

from bmm import settings
from bmm.errors import AuthError, BmmError, FatalError, TimeoutExpired, TransientError
from bmm.runner import Result, last_line, redact
from bmm.settings import Setting

if TYPE_CHECKING:
    import paramiko

logging.getLogger("paramiko").setLevel(logging.CRITICAL)

HOST_KEY_POLICIES = ("accept-new", "strict", "ignore")


def _paramiko():
    """paramiko, imported on first use. bmm reads no ssh_config, so paramiko's optional invoke
    (only for ssh_config's `Match exec`; it brings asyncio and unittest.mock, some 75 ms) is kept
    out: a None in sys.modules makes that import fail, which paramiko expects and tolerates."""
    if "paramiko" not in sys.modules:
        sys.modules.setdefault("invoke", None)
    import paramiko

    return paramiko


def _cause(exc: BaseException) -> str:
    """What went wrong on the link, in words. paramiko and the socket layer often raise with no
    message at all (EOFError(), SSHException('')), which would leave an error ending in a colon."""
    text = str(exc).strip()
    if text:
        return text
    if isinstance(exc, EOFError):
        return "the connection closed"
    return f"the session ended ({type(exc).__name__})"


@dataclass(frozen=True)
class SshTarget:
    host: str
    port: int = 22
    user: str = "root"
    key_file: str | None = None
    known_hosts: str | None = None
    host_key_policy: str = "accept-new"
    connect_timeout: float = 10.0
    node: str | None = None

    def describe(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"


def quote_argv(argv: Iterable[str]) -> str:
    return shlex.join(str(a) for a in argv)


class SshSession:
    """One authenticated connection. Use as a context manager."""

    def __init__(self, target: SshTarget):
        self.target = target
        self._client: paramiko.SSHClient | None = None

    def __enter__(self) -> "SshSession":
        self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def connect(self) -> None:
        paramiko = _paramiko()

        t = self.target
        client = paramiko.SSHClient()
        if t.known_hosts:
            try:
                client.load_host_keys(t.known_hosts)
            except FileNotFoundError:
                pass
        if t.host_key_policy == "strict":
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
        else:
            client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        try:
            client.connect(
                t.host,
                port=t.port,
                username=t.user,
                key_filename=t.key_file,
                look_for_keys=t.key_file is None,
                allow_agent=False,
                timeout=t.connect_timeout,
                banner_timeout=t.connect_timeout,
                auth_timeout=t.connect_timeout,
            )
        except paramiko.AuthenticationException as exc:
            client.close()
            raise AuthError(f"ssh {t.describe()}: authentication failed ({exc})", node=t.node) from None
        except paramiko.BadHostKeyException:
            client.close()
            raise AuthError(f"ssh {t.describe()}: host key changed", node=t.node) from None
        except socket.gaierror as exc:
            client.close()
            raise FatalError(f"ssh {t.describe()}: unknown host ({exc.strerror})", node=t.node) from None
        except (OSError, paramiko.SSHException, EOFError) as exc:
            client.close()
            raise TransientError(f"ssh {t.describe()}: {_cause(exc)}", node=t.node) from None
        if t.known_hosts and t.host_key_policy == "accept-new":
            try:
                client.save_host_keys(t.known_hosts)
            except OSError:
                pass
        self._client = client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def host_key(self) -> str | None:
        """The host key the connected server presented ("<type> <base64>")."""
        transport = self.client.get_transport()
        if transport is None:
            return None
        key = transport.get_remote_server_key()
        return f"{key.get_name()} {key.get_base64()}"

    @property
    def client(self) -> paramiko.SSHClient:
        if self._client is None:
            raise BmmError("ssh session is not connected", node=self.target.node)
        return self._client

    def run(
        self,
        argv: list[str] | tuple[str, ...],
        *,
        timeout: float,
        input: bytes | str | None = None,
        check: bool = True,
        secrets: Iterable[str] = (),
    ) -> Result:
        """Run argv on the node; every word is quoted. Raise on non-zero exit when check."""
        command = quote_argv(argv)
        return self._run_command(command, tuple(str(a) for a in argv), timeout, input, check, tuple(secrets))

    def run_stream_in(
        self,
        argv: list[str] | tuple[str, ...],
        source: Callable[[], bytes | None],
        *,
        timeout: float,
    ) -> Result:
        """Run argv and feed its stdin from source() until it returns None."""
        paramiko = _paramiko()

        chan = self._open(quote_argv(argv), timeout)
        try:
            while True:
                chunk = source()
                if chunk is None:
                    break
                chan.sendall(chunk)
            chan.shutdown_write()
            return self._finish(chan, tuple(str(a) for a in argv), timeout, True, ())
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise TransientError(f"ssh {self.target.describe()}: link lost: {_cause(exc)}", node=self.target.node) from None
        finally:
            chan.close()

    def _open(self, command: str, timeout: float) -> paramiko.Channel:
        paramiko = _paramiko()

        try:
            transport = self.client.get_transport()
            if transport is None or not transport.is_active():
                raise TransientError(f"ssh {self.target.describe()}: connection closed", node=self.target.node)
            chan = transport.open_session(timeout=timeout)
            chan.settimeout(timeout)
            chan.exec_command(command)
            return chan
        except paramiko.ChannelException as exc:
            raise TransientError(f"ssh {self.target.describe()}: the node refused a session: {_cause(exc)}",
                                 node=self.target.node) from None
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise TransientError(f"ssh {self.target.describe()}: link lost: {_cause(exc)}", node=self.target.node) from None

    def _run_command(self, command, argv, timeout, input, check, secrets) -> Result:
        paramiko = _paramiko()

        chan = self._open(command, timeout)
        try:
            if input is not None:
                chan.sendall(input.encode() if isinstance(input, str) else input)
            chan.shutdown_write()
            return self._finish(chan, argv, timeout, check, secrets)
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise TransientError(f"ssh {self.target.describe()}: link lost: {_cause(exc)}", node=self.target.node) from None
        finally:
            chan.close()

    def _finish(self, chan, argv, timeout, check, secrets) -> Result:
        deadline = time.monotonic() + timeout
        out, err = bytearray(), bytearray()
        while True:
            if chan.recv_ready():
                out += chan.recv(65536)
                continue
            if chan.recv_stderr_ready():
                err += chan.recv_stderr(65536)
                continue
            if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                break
            if time.monotonic() > deadline:
                raise TimeoutExpired(
                    f"ssh {self.target.describe()}: {argv[0]} did not finish within {timeout:g} s",
                    node=self.target.node,
                )
            time.sleep(0.01)
        code = chan.recv_exit_status()
        if code == -1:
            raise TransientError(f"ssh {self.target.describe()}: link lost: {argv[0]} ended without an exit status",
                                 node=self.target.node)
        result = Result(
            argv, code,
            redact(out.decode(errors="replace"), secrets),
            redact(err.decode(errors="replace"), secrets),
        )
        if check and code != 0:
            cause = last_line(result.stderr) or last_line(result.stdout) or "no output"
            raise BmmError(f"{argv[0]} failed on {self.target.host} (exit {code}): {cause}", node=self.target.node)
        return result

    def put_file(self, local: BinaryIO | str, remote: str) -> None:
        sftp = self.client.open_sftp()
        try:
            if isinstance(local, str):
                sftp.put(local, remote)
            else:
                sftp.putfo(local, remote)
        finally:
            sftp.close()


def wait_for_ssh(target: SshTarget, *, deadline: float, interval: float = 1.0) -> SshSession:
    """Connect, retrying transient failures until the absolute monotonic deadline."""
    last: Exception | None = None
    while True:
        session = SshSession(target)
        try:
            session.connect()
            return session
        except TransientError as exc:
            last = exc
        if time.monotonic() + interval > deadline:
            raise TimeoutExpired(
                f"ssh {target.describe()} did not answer before the deadline ({last.reason if last else 'no answer'})",
                node=target.node,
            )
        time.sleep(interval)


def host_key(target: SshTarget, timeout: float = 5.0) -> str | None:
    """The host key the SSH server at target presents ("<type> <base64>"), from the key
    exchange alone (no login), or None when no SSH server answers in time. Which OS runs on a
    machine shows in its host key: the home OS's is known, a tenant image brings its own."""
    paramiko = _paramiko()

    try:
        sock = socket.create_connection((target.host, target.port), timeout=timeout)
    except OSError:
        return None
    transport = paramiko.Transport(sock)
    try:
        transport.banner_timeout = timeout
        transport.start_client(timeout=timeout)
        key = transport.get_remote_server_key()
        return f"{key.get_name()} {key.get_base64()}"
    except (OSError, paramiko.SSHException, EOFError):
        return None
    finally:
        transport.close()
        sock.close()


def reachable(target: SshTarget, timeout: float = 3.0) -> bool:
    """Does an SSH server answer at the target? A TCP connect plus banner, no login."""
    try:
        with socket.create_connection((target.host, target.port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            return sock.recv(4).startswith(b"SSH-")
    except OSError:
        return False


# ----------------------------------------------------------------------------------------------
# the part

class SshTransport:
    """The way to a node's own OS: ssh with bmm's key (the `[ssh]` table)."""

    SETTINGS = {
        "address": Setting(settings.host, "the OS's address (default: the node's ip)"),
        "port": Setting(settings.port, "default 22"),
        "user": Setting(settings.string, "default root"),
        "key": Setting(settings.abs_path, "bmm's private key (default: the user's keys)"),
        "known_hosts": Setting(settings.abs_path, "host keys file"),
        "host_key_policy": Setting(settings.choice(*HOST_KEY_POLICIES), "accept-new (default) | strict | ignore"),
        "connect_timeout_s": Setting(settings.positive_number, "default 10"),
    }

    def __init__(self, target: SshTarget):
        self.target = target

    @classmethod
    def validate(cls, table) -> list[tuple[str, str]]:
        return settings.check_table(table, cls.SETTINGS)

    def session(self, *, connect_timeout: float | None = None) -> SshSession:
        """A connected session (AuthError: the OS refuses bmm's key; TransientError: no answer)."""
        target = self.target if connect_timeout is None else dataclasses.replace(self.target,
                                                                                  connect_timeout=connect_timeout)
        session = SshSession(target)
        session.connect()
        return session

    def host_key(self, timeout: float) -> str | None:
        return host_key(dataclasses.replace(self.target, connect_timeout=timeout), timeout)

    def reachable(self, timeout: float = 3.0) -> bool:
        return reachable(self.target, timeout)
