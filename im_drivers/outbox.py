"""Delivery of monitor messages to monitord, off the scheduler thread.

Why it is built this way:
- One Link (a thread and its queue) per destination (monitord address, port). Sending can
  block: a TCP connect to an unroutable address, a DNS name that does not resolve. A blocked
  Link holds up only the hosts registered to that destination; the scheduler only ever
  appends to a queue, so it never waits on the network.
- A Link sends serially. STATE_VM is one TCP connection per message, as the stock client and
  monitord's TCP reader expect; on the front-end that is ~0.1 ms each, so a thousand hosts
  fit in a fraction of a period, and monitord is never hit by a connection storm.
- Newest wins: the queue holds at most one message per (host, type). A message for a key
  already queued takes the old one's place, so a Link that cannot send holds a bounded set
  (hosts x types, hard cap MAX_PENDING) however long monitord is away, and what it finally
  delivers is the latest state, never a backlog of stale ones. BEACON_HOST goes first: it is
  what keeps a host out of ERROR.
- Failure to reach monitord backs off per Link (BACKOFF_MIN_S doubling to BACKOFF_MAX_S, with
  jitter so Links do not retry in step); each retry sends the oldest message (beacons first),
  and sending goes on at full speed until the next failure. Only a TCP delivery proves monitord
  is back and resets the backoff: UDP cannot tell a monitord that is away (a datagram to a
  closed port is silently lost, as with the stock client), and STATE_VM, over TCP, goes every
  few seconds.
- Timeouts are short (connect CONNECT_TIMEOUT_S, write SEND_TIMEOUT_S): a monitord that takes
  longer than that to accept a connection is as good as away, and a waiting Link delays only
  its own destination.
"""

from __future__ import annotations

import logging
import random
import socket
import threading
import time
from collections import OrderedDict

from bmm.opennebula import monitor

log = logging.getLogger("bmm.monitor")

BACKOFF_MIN_S = 0.25
BACKOFF_MAX_S = 10.0
CONNECT_TIMEOUT_S = 1.5           # past the first SYN retransmit (1 s), no more
SEND_TIMEOUT_S = 2.0
RESOLVE_TTL_S = 300.0
MAX_PENDING = 20_000
MAX_LINKS = 64


class Link:
    """The messages for one monitord address and the thread that sends them."""

    def __init__(self, address: str, port: int):
        self.address, self.port = address, port
        self._cond = threading.Condition()
        self._beacons: OrderedDict = OrderedDict()
        self._others: OrderedDict = OrderedDict()
        self._retry_at = 0.0
        self._backoff = 0.0
        self._closed = False
        self._resolved: tuple[int, tuple, float] | None = None
        self._udp: socket.socket | None = None
        self.sent = self.failed = self.dropped = self.high_water = 0
        threading.Thread(target=self._run, name=f"link {address}:{port}", daemon=True).start()

    def __str__(self) -> str:
        return f"monitord at {self.address}:{self.port}"

    def put(self, msg: monitor.WireMessage) -> None:
        key = (msg.host_id, msg.type)
        queue = self._beacons if msg.type == "BEACON_HOST" else self._others
        with self._cond:
            if key not in queue and len(self._beacons) + len(self._others) >= MAX_PENDING:
                (self._others or self._beacons).popitem(last=False)
                self.dropped += 1
            queue[key] = msg
            self.high_water = max(self.high_water, len(self._beacons) + len(self._others))
            self._cond.notify()

    def close(self) -> None:
        """Stop; a send under way finishes or times out on the Link's own (daemon) thread."""
        with self._cond:
            self._closed = True
            self._beacons.clear()
            self._others.clear()
            self._cond.notify()

    def stats(self) -> dict:
        with self._cond:
            return {"pending": len(self._beacons) + len(self._others), "high_water": self.high_water,
                    "backoff_s": round(self._backoff, 2), "sent": self.sent, "failed": self.failed,
                    "dropped": self.dropped}

    def _next(self) -> tuple[OrderedDict, tuple, monitor.WireMessage] | None:
        """The next message to send, once there is one and no backoff is running; None once closed."""
        with self._cond:
            while not self._closed:
                if self._beacons or self._others:
                    wait = self._retry_at - time.monotonic()
                    if wait <= 0:
                        queue = self._beacons or self._others
                        key, msg = queue.popitem(last=False)
                        return queue, key, msg
                    self._cond.wait(wait)
                else:
                    self._cond.wait()
            return None

    def _run(self) -> None:
        while (item := self._next()) is not None:
            queue, key, msg = item
            try:
                self._send(msg)
            except ValueError as exc:
                log.warning("%s: dropping %s of host %d: %s", self, msg.type, msg.host_id, exc)
                continue
            except OSError as exc:
                self._failed(queue, key, msg, exc)
                continue
            except Exception:   # noqa: BLE001 - a bug here must not silence a destination
                log.exception("%s: sending %s of host %d failed", self, msg.type, msg.host_id)
                continue
            self._delivered(msg)

    def _send(self, msg: monitor.WireMessage) -> None:
        now = time.monotonic()
        if self._resolved is None or now - self._resolved[2] > RESOLVE_TTL_S:
            family, sockaddr = monitor.resolve(self.address, self.port)
            self._resolved = (family, sockaddr, now)
            self._close_udp()
        family, sockaddr, _ = self._resolved
        if self._udp is None and msg.type not in monitor.TCP_TYPES:
            self._udp = socket.socket(family, socket.SOCK_DGRAM)
            self._udp.settimeout(SEND_TIMEOUT_S)
        monitor.send_message(msg, family, sockaddr, udp=self._udp,
                             connect_timeout=CONNECT_TIMEOUT_S, send_timeout=SEND_TIMEOUT_S)

    def _failed(self, queue: OrderedDict, key: tuple, msg: monitor.WireMessage, exc: OSError) -> None:
        """Put the message back in front (unless a newer one took its key) and back off."""
        self._resolved = None
        self._close_udp()
        with self._cond:
            if key not in queue and not self._closed:
                queue[key] = msg
                queue.move_to_end(key, last=False)
            first = self._backoff == 0
            self._backoff = min(max(self._backoff * 2, BACKOFF_MIN_S), BACKOFF_MAX_S)
            self._retry_at = time.monotonic() + self._backoff * random.uniform(0.8, 1.2)
            self.failed += 1
        if first:
            log.warning("%s is unreachable (%s): retrying with backoff up to %.0f s, keeping the "
                        "newest message of each host and type", self, exc.strerror or exc, BACKOFF_MAX_S)

    def _delivered(self, msg: monitor.WireMessage) -> None:
        proof = msg.type in monitor.TCP_TYPES
        with self._cond:
            recovered = proof and self._backoff > 0
            if proof:
                self._backoff = 0.0
            self.sent += 1
        if recovered:
            log.info("%s is reachable again", self)

    def _close_udp(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None


class Outbox:
    """The Links, one per destination. Used from the scheduler thread only."""

    def __init__(self):
        self._links: dict[tuple[str, int], Link] = {}
        self.refused = 0

    def put(self, destination: tuple[str, int], msg: monitor.WireMessage) -> None:
        link = self._links.get(destination)
        if link is None:
            if len(self._links) >= MAX_LINKS:
                self.refused += 1
                if self.refused == 1:
                    log.warning("more than %d monitord destinations: messages to further ones are dropped",
                                MAX_LINKS)
                return
            link = self._links[destination] = Link(*destination)
        link.put(msg)

    def retain(self, destinations: set[tuple[str, int]]) -> None:
        """Close the Links no registered host sends to any more."""
        for destination in set(self._links) - destinations:
            self._links.pop(destination).close()

    def stats(self) -> dict[str, dict]:
        return {f"{a}:{p}": link.stats() for (a, p), link in self._links.items()}

    def close(self) -> None:
        for link in self._links.values():
            link.close()
        self._links.clear()
