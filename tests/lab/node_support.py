"""Lab nodes as image-delivery targets, for tests/lab/test_image_delivery.py and
benchmarks/image_copy.py: a paramiko session to a server's home OS, a throw-away LV there
(unique name, removed on every exit path), and its bytes read back from the host's side."""

from __future__ import annotations

import uuid
from contextlib import contextmanager
from types import SimpleNamespace

from bmm.storage import lvm
from bmm.transport.ssh import SshSession, SshTarget
from tests.lab.lvm_support import lv_bytes


def node_target(lab, name: str) -> SshTarget:
    """The server's home OS as bmm's inventory would name it (strict host key check)."""
    n = lab.node(name)
    return SshTarget(n["ssh"]["host"], n["ssh"]["port"], n["ssh"]["user"], key_file=str(lab.key),
                     known_hosts=str(lab.known_hosts), host_key_policy="strict", connect_timeout=10, node=name)


def node_session(lab, name: str) -> SshSession:
    session = SshSession(node_target(lab, name))
    session.connect()
    return session


@contextmanager
def node_lv(lab, name: str, session, size: int, prefix: str = "bmmt"):
    """A new LV of at least size bytes on the server's VG: yields (lv, device), removes it."""
    vg = lab.node(name)["vg"]
    lv = lvm.create_lv(session, vg, f"{prefix}{uuid.uuid4().hex[:8]}", size)
    try:
        with lvm.open_lv(session, vg, lv.name) as dev:
            yield lv, dev
    finally:
        lvm.remove_lv(session, vg, lv.name)


def node_lv_bytes(lab, name: str, lv: str) -> bytes:
    """An LV's bytes, straight from the server's PV on the host (not through the node)."""
    n = lab.lab_node(name)
    return lv_bytes(SimpleNamespace(vg=n["vg"], pv=n["loop"], lvm_env=lab.lvm_env(name)), lv)
