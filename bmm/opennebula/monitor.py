"""Monitor messages for onemonitord (protocol §2.4–2.6).

Wire message: `<TYPE> <SUCCESS|FAILURE> <host_id> <epoch> <base64(zlib(payload))>`, one per UDP
datagram, or one per TCP connection (STATE_VM, as the stock client does). START_MONITOR is
answered with a `<MONITOR_MESSAGES>` document whose elements are base64 payloads.
"""

from __future__ import annotations

import base64
import errno
import socket
import struct
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

from bmm.opennebula import template

MESSAGE_TYPES = ("MONITOR_VM", "MONITOR_HOST", "SYSTEM_HOST", "BEACON_HOST", "STATE_VM", "EXEC_VM")
TCP_TYPES = frozenset({"STATE_VM"})
VM_STATES = ("RUNNING", "POWEROFF", "SUSPENDED", "FAILURE")
UDP_MAX = 65000


def b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode("ascii")


def vm_monitor_block(vm_id: int, deploy_id: str, monitor: Mapping[str, object]) -> str:
    """`VM=[ID="..",DEPLOY_ID="..",MONITOR="<base64 of KEY=VALUE lines>"]` (MONITOR_VM)."""
    inner = template.render(monitor.items())
    return template.vector("VM", {"ID": vm_id, "DEPLOY_ID": deploy_id, "MONITOR": b64(inner)})


def vm_state_block(vm_id: int, deploy_id: str, state: str) -> str:
    if state not in VM_STATES:
        raise ValueError(f"VM state {state!r} is not one of {VM_STATES}")
    return template.vector("VM", {"ID": vm_id, "DEPLOY_ID": deploy_id, "STATE": state})


def monitor_messages(payloads: Mapping[str, str], timestamp: int | None = None) -> str:
    """The START_MONITOR answer. One line, no spaces, so it survives run_monitord_client's
    unquoted `echo ${result}`."""
    parts = ["<MONITOR_MESSAGES>"]
    for kind in MESSAGE_TYPES:
        if kind in payloads:
            parts.append(f"<{kind}>{b64(payloads[kind])}</{kind}>")
    parts.append(f"<TIMESTAMP>{int(time.time() if timestamp is None else timestamp)}</TIMESTAMP>")
    parts.append("</MONITOR_MESSAGES>")
    return "".join(parts)


@dataclass(frozen=True)
class WireMessage:
    type: str
    success: bool
    host_id: int
    timestamp: int
    payload: str

    def encode(self) -> bytes:
        if self.type not in MESSAGE_TYPES:
            raise ValueError(f"unknown monitor message type {self.type!r}")
        body = base64.b64encode(zlib.compress(self.payload.encode())).decode("ascii")
        status = "SUCCESS" if self.success else "FAILURE"
        return f"{self.type} {status} {self.host_id} {self.timestamp} {body}".encode("ascii")


def decode_wire(data: bytes) -> WireMessage:
    """Decode as monitord's Message::parse_from does (whitespace-split header, then the rest)."""
    text = data.decode("ascii")
    kind, status, host_id, ts, body = text.split(None, 4)
    if status not in ("SUCCESS", "FAILURE"):
        raise ValueError(f"bad status {status!r}")
    payload = zlib.decompress(base64.b64decode(body.strip(), validate=True)).decode()
    return WireMessage(kind, status == "SUCCESS", int(host_id), int(ts), payload)


def _timeval(seconds: float) -> bytes:
    return struct.pack("ll", int(seconds), int(seconds % 1 * 1e6))


def resolve(address: str, port: int) -> tuple[int, tuple]:
    """(family, socket address) of monitord at address:port: the first the resolver gives."""
    family, _, _, _, sockaddr = socket.getaddrinfo(address, port, type=socket.SOCK_DGRAM)[0]
    return family, sockaddr


def send_message(msg: WireMessage, family: int, sockaddr: tuple, *, udp: socket.socket | None = None,
                 connect_timeout: float = 1.0, send_timeout: float = 2.0) -> None:
    """Send one message to a resolved monitord address: STATE_VM over a TCP connection of its
    own (monitord reads it until the close), the others as one UDP datagram, on `udp` when the
    caller keeps a socket of that family for the destination.

    Both waits are bounded: the connect by connect_timeout (short: a monitord that is not
    there should cost little), the write by send_timeout. They are the kernel's (SO_SNDTIMEO
    bounds a blocking connect and send, socket(7)), not Python's settimeout, which polls and
    costs four more system calls per connection (9 instead of 5): a thousand hosts send a
    thousand connections per period.
    Raises OSError when monitord cannot be reached, ValueError when the message can never be
    sent (too large for a datagram)."""
    data = msg.encode()
    if msg.type in TCP_TYPES:
        with socket.socket(family, socket.SOCK_STREAM) as conn:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(connect_timeout))
            try:
                conn.connect(sockaddr)
            except BlockingIOError:     # EINPROGRESS: SO_SNDTIMEO ran out
                raise TimeoutError(errno.ETIMEDOUT, "connect timed out") from None
            if send_timeout != connect_timeout:
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(send_timeout))
            try:
                conn.sendall(data)
            except BlockingIOError:
                raise TimeoutError(errno.ETIMEDOUT, "send timed out") from None
        return
    if len(data) > UDP_MAX:
        raise ValueError(f"{msg.type} message is {len(data)} bytes, too large for one datagram")
    if udp is not None:
        udp.sendto(data, sockaddr)
        return
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(send_timeout)
        sock.sendto(data, sockaddr)
