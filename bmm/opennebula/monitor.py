"""Monitor messages for onemonitord (protocol §2.4–2.6).

Wire message: `<TYPE> <SUCCESS|FAILURE> <host_id> <epoch> <base64(zlib(payload))>`, one per UDP
datagram, or one per TCP connection (STATE_VM, as the stock client does). START_MONITOR is
answered with a `<MONITOR_MESSAGES>` document whose elements are base64 payloads.
"""

from __future__ import annotations

import base64
import socket
import time
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from bmm.errors import TransientError
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


def send(messages: Iterable[WireMessage], address: str, port: int, *, timeout: float = 5.0) -> None:
    """Send messages to monitord: STATE_VM over TCP, the rest over UDP."""
    udp = None
    try:
        for msg in messages:
            data = msg.encode()
            if msg.type in TCP_TYPES:
                try:
                    with socket.create_connection((address, port), timeout=timeout) as conn:
                        conn.sendall(data)
                except OSError as exc:
                    raise TransientError(f"monitord at {address}:{port} refused {msg.type} over TCP: {exc}") from None
            else:
                if len(data) > UDP_MAX:
                    raise ValueError(f"{msg.type} message is {len(data)} bytes, too large for one datagram")
                if udp is None:
                    family = socket.AF_INET6 if ":" in address else socket.AF_INET
                    udp = socket.socket(family, socket.SOCK_DGRAM)
                udp.sendto(data, (address, port))
    finally:
        if udp is not None:
            udp.close()
