"""Bulk data to a node through the OpenSSH client, beside bmm's paramiko control session.

paramiko's packet layer is Python and tops out at ~100-250 MB/s on this kind of machine;
OpenSSH's is C with AES-GCM on AES-NI (docs/storage.md has the figures). So the paramiko
session keeps every control command, and one command with a large stdin (an image stream)
runs through `ssh` instead: `OpenSshExecutor.run_stream_in` has SshSession's contract.

Trust is the paramiko session's, never more: `beside(session)` writes the host key paramiko
verified into a private known_hosts under the alias `bmm-node` and runs ssh with
`StrictHostKeyChecking=yes` against it, so ssh talks only to that server. `-F /dev/null`
ignores the user's and the system's ssh_config; every option is in argv, the remote command
is quoted word by word (quote_argv), no agent, no forwarding, no tty, no ControlMaster.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable

from bmm.errors import BmmError, FatalError, TimeoutExpired, TransientError
from bmm.runner import Result, last_line
from bmm.transport.ssh import SshTarget, quote_argv

# AES-GCM first: with AES-NI it costs the least CPU per byte here (docs/storage.md)
CIPHERS = "aes128-gcm@openssh.com,chacha20-poly1305@openssh.com,aes256-gcm@openssh.com,aes128-ctr"
ALIAS = "bmm-node"
F_SETPIPE_SZ = 1031


def host_key_algorithms(key_type: str) -> str:
    """The HostKeyAlgorithms that make ssh ask for exactly the key type paramiko saw."""
    return "rsa-sha2-512,rsa-sha2-256" if key_type == "ssh-rsa" else key_type


class OpenSshExecutor:
    """Runs one command at a time on the node through the OpenSSH client. A context manager
    (it owns a private known_hosts)."""

    def __init__(self, target: SshTarget, host_key: tuple[str, str], *, ciphers: str | None = None):
        self.target = target
        self.node = target.node
        self.key_type, self.key_b64 = host_key
        self.ciphers = ciphers or CIPHERS
        self.dir: str | None = None
        self.process: subprocess.Popen | None = None      # the running ssh client, if any

    @classmethod
    def beside(cls, session, *, ciphers: str | None = None) -> "OpenSshExecutor":
        """An executor to the node of a connected SshSession, pinned to its host key."""
        transport = session.client.get_transport()
        if transport is None or not transport.is_active():
            raise TransientError(f"ssh {session.target.describe()}: connection closed", node=session.target.node)
        key = transport.get_remote_server_key()
        return cls(session.target, (key.get_name(), key.get_base64()), ciphers=ciphers)

    def __enter__(self) -> "OpenSshExecutor":
        self.dir = tempfile.mkdtemp(prefix="bmm-openssh-")
        with open(os.path.join(self.dir, "known_hosts"), "w") as f:
            f.write(f"{ALIAS} {self.key_type} {self.key_b64}\n")
        return self

    def __exit__(self, *exc) -> None:
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def argv(self, remote: list[str] | tuple[str, ...]) -> list[str]:
        if self.dir is None:
            raise BmmError("OpenSshExecutor used outside its with block")
        t = self.target
        opts = {
            "BatchMode": "yes", "HostKeyAlias": ALIAS, "StrictHostKeyChecking": "yes",
            "UserKnownHostsFile": os.path.join(self.dir, "known_hosts"), "GlobalKnownHostsFile": "/dev/null",
            "HostKeyAlgorithms": host_key_algorithms(self.key_type), "UpdateHostKeys": "no",
            "Ciphers": self.ciphers, "Compression": "no", "ConnectTimeout": str(int(max(1, t.connect_timeout))),
            "ServerAliveInterval": "15", "ServerAliveCountMax": "4", "ControlMaster": "no", "ControlPath": "none",
            "ForwardAgent": "no", "ForwardX11": "no", "ClearAllForwardings": "yes", "RequestTTY": "no",
            "PermitLocalCommand": "no", "LogLevel": "ERROR",
        }
        if t.key_file:
            opts["IdentitiesOnly"] = "yes"
        argv = ["ssh", "-F", "/dev/null", "-T", "-p", str(t.port), "-l", t.user]
        if t.key_file:
            argv += ["-i", t.key_file]
        for k, v in opts.items():
            argv += ["-o", f"{k}={v}"]
        return argv + ["--", t.host, quote_argv(remote)]

    def run_stream_in(self, argv: list[str] | tuple[str, ...], source: Callable[[], bytes | memoryview | None], *,
                      timeout: float) -> Result:
        """Run argv on the node and feed its stdin from source() until it returns None."""
        t = self.target
        out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()    # no pipe to deadlock on
        try:
            proc = subprocess.Popen(self.argv(argv), stdin=subprocess.PIPE, stdout=out, stderr=err, bufsize=0)
        except FileNotFoundError:
            out.close()
            err.close()
            raise FatalError("the OpenSSH client (ssh) is not installed", node=self.node) from None
        self.process = proc
        deadline = time.monotonic() + timeout
        expired = threading.Event()

        def expire():
            expired.set()
            proc.kill()
        watchdog = threading.Timer(timeout, expire)
        watchdog.daemon = True
        watchdog.start()
        try:
            try:
                fcntl.fcntl(proc.stdin.fileno(), F_SETPIPE_SZ, 1 << 20)
            except OSError:
                pass
            fd = proc.stdin.fileno()
            try:
                while True:
                    chunk = source()
                    if chunk is None:
                        break
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view):]
            except BrokenPipeError:
                pass        # ssh or the receiver ended early: the exit status and stderr say why
            proc.stdin.close()
            try:
                code = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                expire()
                code = proc.wait()
        finally:
            watchdog.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            self.process = None
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
            out.close()
            err.close()
        result = Result(tuple(str(a) for a in argv), code, stdout, stderr)
        cause = last_line(stderr) or "no output"
        if expired.is_set():
            raise TimeoutExpired(f"ssh {t.describe()}: {argv[0]} did not finish within {timeout:g} s", node=self.node)
        if code < 0:
            raise TransientError(f"ssh {t.describe()}: link lost: the ssh client was killed (signal {-code})",
                                 node=self.node)
        if code == 255 and "bmm-recv:" not in stderr:
            raise TransientError(f"ssh {t.describe()}: link lost: {cause}", node=self.node)
        if code != 0:
            raise BmmError(f"{argv[0]} failed on {t.host} (exit {code}): {cause}", node=self.node)
        return result

