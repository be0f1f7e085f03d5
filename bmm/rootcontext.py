"""A VM's CONTEXT as files in a root filesystem that a board boots (an NFS root, or the root
stage 1 unpacks onto the board's disk): a board has no CD-ROM to carry a CONTEXT ISO.

With one-context in the image: the stock package's `one-contextd` (get_new_context(), in
src/usr/sbin/one-contextd of OpenNebula/addon-context-linux, read at commit ed607dc) looks
first for a block device labelled CONTEXT, and next for a non-empty `/context` directory,
whose files it copies and whose `context.sh` it reads. So `context/context.sh` and the
CONTEXT/FILES go there (directory 0700, files 0600: context.sh holds secrets).

Without one-context (a Tilera MDE rootfs): bmm does what the CONTEXT asks itself:
SSH_PUBLIC_KEY -> /root/.ssh/authorized_keys, SET_HOSTNAME -> /etc/hostname, and each NIC's
ETH<n>_IP (with _MASK, _GATEWAY) -> /etc/network/interfaces (ifupdown's format, which
busybox ifup reads too). ETH<n>_MAC are the node's MACs (bmm.context.rewrite_macs).

The files come as a tar with a directory member before every file. GNU tar, extracting with
--no-overwrite-dir, replaces a symlinked directory by a real one instead of following it, so
a tenant image whose /root/.ssh points at the proxy's own /root/.ssh gets a directory, and
the proxy's files are never touched (tests/unit/test_rootcontext.py proves it on GNU tar).
"""

from __future__ import annotations

import hashlib
import io
import ipaddress
import re
import tarfile
from collections.abc import Iterable, Mapping, Sequence

from bmm.context import context_payload, format_context_sh
from bmm.errors import InputError

EXTRACT = ["tar", "--extract", "--file=-", "--no-overwrite-dir", "--preserve-permissions", "--same-owner",
           "--numeric-owner", "--directory"]
HOSTNAME_RE = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*$")
_NIC_IP = re.compile(r"^ETH(\d+)_IP$")


class Overlay:
    """The files, as the tar to unpack at the root, and a digest of what they say."""

    def __init__(self) -> None:
        self.members: list[tuple[str, int, bytes | None]] = []    # (path, mode, data; None: directory)

    def dir(self, path: str, mode: int = 0o755) -> None:
        if all(p != path for p, _, _ in self.members):
            self.members.append((path, mode, None))

    def file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        parts = path.split("/")
        for i in range(1, len(parts)):
            self.dir("/".join(parts[:i]), 0o700 if parts[:i] in (["root"], ["root", ".ssh"], ["context"]) else 0o755)
        self.members.append((path, mode, data))

    def tar(self) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for path, mode, data in self.members:
                info = tarfile.TarInfo(path)
                info.mode, info.uid, info.gid, info.mtime = mode, 0, 0, 0
                if data is None:
                    info.type = tarfile.DIRTYPE
                    tar.addfile(info)
                else:
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        return buf.getvalue()

    def digest(self) -> str:
        return hashlib.sha256(self.tar()).hexdigest()

    def paths(self) -> list[str]:
        return [p for p, _, d in self.members if d is not None]


def _interfaces(variables: Mapping[str, str], node: str | None) -> str | None:
    nics = sorted(int(m.group(1)) for k in variables if (m := _NIC_IP.match(k)))
    if not nics:
        return None
    lines = ["# written by bmm from the VM's CONTEXT", "auto lo", "iface lo inet loopback", ""]
    for n in nics:
        ip = variables.get(f"ETH{n}_IP", "")
        if not ip:
            continue
        mask = variables.get(f"ETH{n}_MASK") or "255.255.255.0"
        gateway = variables.get(f"ETH{n}_GATEWAY", "")
        try:
            ipaddress.ip_address(ip)
            ipaddress.ip_address(mask)
            if gateway:
                ipaddress.ip_address(gateway)
        except ValueError:
            raise InputError(f"ETH{n}_IP, _MASK or _GATEWAY of the CONTEXT is not an address", node=node) from None
        lines += [f"auto eth{n}", f"iface eth{n} inet static", f"    address {ip}", f"    netmask {mask}"]
        if gateway:
            lines.append(f"    gateway {gateway}")
        lines.append("")
    return "\n".join(lines)


def overlay(variables: Mapping[str, str], files: Iterable[tuple[str, str]], *, macs: Sequence[str],
            one_context: bool, node: str | None = None) -> Overlay:
    """The CONTEXT of a VM as files for its board's root (see the module docstring)."""
    variables, payload = context_payload(variables, files, macs=macs, node=node)
    out = Overlay()
    if one_context:
        out.file("context/context.sh", format_context_sh(variables).encode("utf-8", "surrogateescape"), 0o600)
        for name, data in payload:
            out.file(f"context/{name}", data, 0o600)
        return out
    key = variables.get("SSH_PUBLIC_KEY", "").replace("\r", "")
    if key.strip():
        if "\0" in key:
            raise InputError("SSH_PUBLIC_KEY of the CONTEXT holds a NUL byte", node=node)
        out.file("root/.ssh/authorized_keys", (key.strip("\n") + "\n").encode(), 0o600)
    hostname = variables.get("SET_HOSTNAME", "").strip()
    if hostname:
        if not HOSTNAME_RE.match(hostname):
            raise InputError("SET_HOSTNAME of the CONTEXT is not a host name", node=node)
        out.file("etc/hostname", f"{hostname}\n".encode())
    interfaces = _interfaces(variables, node)
    if interfaces:
        out.file("etc/network/interfaces", interfaces.encode())
    return out
