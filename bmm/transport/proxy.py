"""The proxy of netboot boards: the host that serves their kernels over TFTP and their roots
over NFS, and drives them with tile-monitor (the Tilera blueprint's "proxy compute node").

A board names its proxy in the inventory (`[nodes.X.proxy]`): absent, the proxy is the
front-end itself; else a host reached over ssh with bmm's key. Everything bmm does on the
proxy goes through `ProxyTransport.executor()`, an object with the executor interface
(`run`, `run_stream_in`) whether it runs commands here or there, so a remote proxy and the
front-end are the same code. The proxy's files belong to root (an NFS root keeps its owners);
when bmm does not run as root there, every command is run through `sudo -n`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from bmm import settings
from bmm.runner import LocalExecutor
from bmm.settings import Setting
from bmm.transport.ssh import HOST_KEY_POLICIES, SshSession, SshTarget

SUDO = ("sudo", "-n", "--")


class Sudo:
    """An executor whose commands run through `sudo -n` (never asks for a password)."""

    def __init__(self, ex):
        self.ex = ex
        self.node = getattr(ex, "node", None)

    def run(self, argv, **kw):
        return self.ex.run([*SUDO, *argv], **kw)

    def run_stream_in(self, argv, source, **kw):
        return self.ex.run_stream_in([*SUDO, *argv], source, **kw)


class ProxyTransport:
    SETTINGS = {
        "host": Setting(settings.host, "the proxy's address (absent: the proxy is the front-end)"),
        "port": Setting(settings.port, "ssh port (default 22)"),
        "user": Setting(settings.string, "ssh user (default root)"),
        "key": Setting(settings.abs_path, "bmm's private key for the proxy"),
        "known_hosts": Setting(settings.abs_path, "host keys file"),
        "host_key_policy": Setting(settings.choice(*HOST_KEY_POLICIES), "accept-new (default) | strict | ignore"),
        "sudo": Setting(settings.boolean, "run the proxy's commands through sudo -n (default: when the user is not root)"),
    }

    def __init__(self, node: str, table: Mapping[str, Any] | None):
        self.node = node
        self.table = dict(table or {})

    @classmethod
    def validate(cls, table: Mapping[str, Any]) -> list[tuple[str, str]]:
        return settings.check_table(table, cls.SETTINGS)

    @property
    def local(self) -> bool:
        return "host" not in self.table

    def describe(self) -> str:
        t = self.table
        return "the front-end" if self.local else f"{t.get('user', 'root')}@{t['host']}:{t.get('port', 22)}"

    @contextmanager
    def executor(self) -> Iterator[Any]:
        t = self.table
        if self.local:
            ex: Any = LocalExecutor(node=self.node)
            sudo = t.get("sudo", os.geteuid() != 0)
            yield Sudo(ex) if sudo else ex
            return
        target = SshTarget(host=t["host"], port=t.get("port", 22), user=t.get("user", "root"), key_file=t.get("key"),
                           known_hosts=t.get("known_hosts"), host_key_policy=t.get("host_key_policy", "accept-new"),
                           node=self.node)
        with SshSession(target) as session:
            yield Sudo(session) if t.get("sudo", target.user != "root") else session
