"""A one-shot HTTP server on the front-end: one GET, from one node, with one token, for one copy.

A node pulls its image from it (bmm.storage.delivery, transport "http"), so the front-end
sends the bytes with no encryption per node. What keeps that to "a node only ever gets the
image of its own VM":
- the server exists for one copy: it is created with that copy's stream, listens on an
  ephemeral port and closes as soon as the stream was served, on every exit path;
- it serves exactly one request: a GET of one random path carrying
  `Authorization: Bearer <token>` (a fresh 256-bit token, compared in constant time, handed to
  the node over the authenticated ssh control channel, never in argv, a log or an error); any
  other request gets 403/404 and the server keeps waiting for the real one until its deadline;
- connections from any address but the node's (`peer`) are dropped before a byte is read.

The stdlib server (socketserver + http.server's request parsing) does the HTTP; a hand-written
one would save nothing. Requests are handled one at a time, in the caller's thread, so the
stream's progress callbacks run where the caller expects them; a client that connects and
says nothing is dropped after `request_timeout`.
"""

from __future__ import annotations

import hmac
import socket
import socketserver
import sys
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler

from bmm.errors import BmmError, TimeoutExpired, TransientError

# body(write, set_timeout): write pieces of the reply; set_timeout(seconds) for the next sends
Body = Callable[[Callable[[bytes | memoryview], None], Callable[[float], None]], None]


def session_addresses(ex) -> tuple[str, str | None]:
    """(front-end address, node address) of a control session's connection: the node reached
    us at the first, so it can connect back there. A local executor is 127.0.0.1 both ways."""
    client = getattr(ex, "client", None)
    transport = client.get_transport() if client is not None else None
    sock = getattr(transport, "sock", None)
    if sock is None:
        return "127.0.0.1", "127.0.0.1"
    return sock.getsockname()[0], sock.getpeername()[0]


class _Server(socketserver.TCPServer):
    allow_reuse_address = False
    request_queue_size = 4

    def __init__(self, listen, handler, owner):
        self.address_family = socket.AF_INET6 if ":" in listen[0] else socket.AF_INET
        self.owner = owner
        super().__init__(listen, handler)

    def verify_request(self, request, client_address) -> bool:
        peer = self.owner.peer
        return peer is None or client_address[0] == peer

    def handle_error(self, request, client_address) -> None:
        # never print a traceback (stderr is OpenNebula's); the owner re-raises an error of the
        # one served request; a refused client that broke its own connection changes nothing
        if self.owner.served:
            self.owner.error = sys.exc_info()[1]


class OneShotServer:
    """Serves body(write, set_timeout) to the first GET of `path` that carries `token`, then
    closes. io_timeout: each send's deadline until the body sets another.

    Use as a context manager; serve() returns once the body was sent, or when keep_going()
    turns false (the receiver gave up), or raises at the deadline."""

    def __init__(self, listen: tuple[str, int], path: str, token: str, body: Body, *,
                 peer: str | None, io_timeout: float = 120.0, request_timeout: float = 10.0,
                 node: str | None = None):
        self.path = path
        self.token = ("Bearer " + token).encode()
        self.body = body
        self.peer = peer
        self.io_timeout = io_timeout
        self.node = node
        self.served = False
        self.refused = 0
        self.error: BaseException | None = None
        owner = self

        class Handler(BaseHTTPRequestHandler):
            timeout = request_timeout            # reading the request line and headers

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                offered = (self.headers.get("Authorization") or "").encode()
                if owner.served or not hmac.compare_digest(offered, owner.token):
                    owner.refused += 1
                    self.send_error(403)
                    return
                if self.path != owner.path:
                    owner.refused += 1
                    self.send_error(404)
                    return
                owner.served = True              # one try: a second GET is refused
                self.connection.settimeout(owner.io_timeout)
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Cache-Control", "no-store")
                self.send_header("Connection", "close")
                self.end_headers()
                owner.body(self.wfile.write, self.connection.settimeout)
                self.wfile.flush()

        try:
            self.server = _Server(listen, Handler, self)
        except OSError as exc:
            raise BmmError(f"cannot listen on {listen[0]}:{listen[1]} for the node's download: "
                           f"{exc.strerror or exc}", node=node) from None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server.server_address[:2]
        return host, port

    def __enter__(self) -> "OneShotServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.server.server_close()

    def serve(self, *, deadline: float, keep_going: Callable[[], bool] = lambda: True) -> None:
        """Handle requests until the body was served (then close), keep_going() is false, or
        the deadline (monotonic) passes for a node that never came: TimeoutExpired."""
        self.server.timeout = 0.2
        while not self.served:
            if not keep_going():
                return
            if time.monotonic() > deadline:
                raise TimeoutExpired(f"the node did not fetch its image within the deadline "
                                     f"({self.refused} refused requests)", node=self.node)
            self.server.handle_request()
            if self.error is not None:
                self.close()
                error, self.error = self.error, None
                if isinstance(error, (OSError, TimeoutError)):
                    raise TransientError(f"the node's download broke off: {error.strerror or error}",
                                         node=self.node) from None
                raise error
        self.close()
