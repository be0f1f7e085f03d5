"""A receiver that takes monitor messages as onemonitord does (protocol §2.5): UDP datagrams
and TCP connections read until close, on one port, each decoded with Message::parse_from's
rules (monitor.decode_wire). Shared by the protocol tests and the monitor benchmark."""

from __future__ import annotations

import socket
import threading
import time

from bmm.opennebula import monitor


class Monitord:
    """UDP + TCP listener on one port, like onemonitord's NETWORK. Every arrival is kept with
    its time (time.monotonic()) so gaps between messages can be measured."""

    def __init__(self, port: int = 0, host: str = "127.0.0.1"):
        for _ in range(20):         # a free UDP port may be taken for TCP: try another
            self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            self.udp.bind((host, port))
            self.port = self.udp.getsockname()[1]
            self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                self.tcp.bind((host, self.port))
                break
            except OSError:
                self.udp.close()
                self.tcp.close()
                if port:
                    raise
        else:
            raise OSError("no port free for both UDP and TCP")
        self.tcp.listen(1024)
        self.raw: list[tuple[float, str, bytes]] = []
        self.empty = 0           # connections closed before a byte came: monitord drops those
        self.stop = False
        self.threads = [threading.Thread(target=t, daemon=True) for t in (self._udp_loop, self._tcp_loop)]
        for thread in self.threads:
            thread.start()

    def _udp_loop(self):
        self.udp.settimeout(0.2)
        while not self.stop:
            try:
                data, _ = self.udp.recvfrom(65536)
                self.raw.append((time.monotonic(), "udp", data))
            except socket.timeout:
                continue

    def _tcp_loop(self):
        self.tcp.settimeout(0.2)
        while not self.stop:
            try:
                conn, _ = self.tcp.accept()
            except socket.timeout:
                continue
            with conn:
                conn.settimeout(5)
                chunks = []
                try:
                    while chunk := conn.recv(65536):
                        chunks.append(chunk)
                except socket.timeout:
                    continue            # a sender that never closes: monitord drops it too
                if chunks:
                    self.raw.append((time.monotonic(), "tcp", b"".join(chunks)))
                else:
                    self.empty += 1

    def messages(self) -> list[tuple[str, monitor.WireMessage]]:
        return [(proto, monitor.decode_wire(data)) for _, proto, data in list(self.raw)]

    def timed(self, since: float = float("-inf")) -> list[tuple[float, str, monitor.WireMessage]]:
        """(arrival, protocol, message) for what arrived at or after `since`."""
        return [(t, proto, monitor.decode_wire(data)) for t, proto, data in list(self.raw) if t >= since]

    def close(self):
        self.stop = True
        for thread in self.threads:
            thread.join(timeout=2)
        self.udp.close()
        self.tcp.close()


class Blackhole:
    """A monitord address that answers nothing: a TCP port whose backlog is never accepted
    (once it is full, connects hang until they time out), and no UDP reader at all."""

    def __init__(self, host: str = "127.0.0.1"):
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.bind((host, 0))
        self.tcp.listen(0)
        self.port = self.tcp.getsockname()[1]

    def close(self):
        self.tcp.close()
