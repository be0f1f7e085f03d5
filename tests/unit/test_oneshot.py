"""The one-shot HTTP server (bmm.transport.oneshot): one GET, one peer, one token, then closed."""

import http.client
import socket
import threading
import time

import pytest

from bmm.errors import BmmError, TimeoutExpired, TransientError
from bmm.transport.oneshot import OneShotServer

TOKEN = "tok-" + "x" * 40


def get(address, path="/img", token=TOKEN, timeout=5):
    conn = http.client.HTTPConnection(*address, timeout=timeout)
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    conn.request("GET", path, headers=headers)
    resp = conn.getresponse()
    return resp.status, resp.read()


def serving(server, **kw):
    """Run server.serve in a thread; returns a dict that gets 'error' if it raised."""
    out = {}

    def run():
        try:
            server.serve(**kw)
        except BaseException as exc:     # the test looks at it
            out["error"] = exc
    t = threading.Thread(target=run, daemon=True)
    t.start()
    out["thread"] = t
    return out


def body_of(*pieces):
    def body(write, set_timeout):
        set_timeout(5)
        for p in pieces:
            write(p)
    return body


def test_serves_the_body_once_to_the_right_request_then_closes():
    with OneShotServer(("127.0.0.1", 0), "/img", TOKEN, body_of(b"hello ", b"node"), peer="127.0.0.1") as s:
        addr = s.address
        run = serving(s, deadline=time.monotonic() + 10)
        assert get(addr, token=None)[0] == 403
        assert get(addr, token=TOKEN[:-1] + "y")[0] == 403
        assert get(addr, path="/other")[0] == 404
        assert get(addr) == (200, b"hello node")
        run["thread"].join(5)
        assert "error" not in run and s.served and s.refused == 3
    with pytest.raises(OSError):                 # closed: nobody gets a second copy
        socket.create_connection(addr, timeout=2)


def test_other_peers_are_dropped_before_a_byte_is_read():
    with OneShotServer(("127.0.0.1", 0), "/img", TOKEN, body_of(b"x"), peer="127.0.0.2") as s:
        run = serving(s, deadline=time.monotonic() + 3)
        with pytest.raises((http.client.HTTPException, OSError)):
            get(s.address)
        run["thread"].join(5)
    assert isinstance(run["error"], TimeoutExpired) and not s.served


def test_a_node_that_never_comes_times_out_without_the_token_in_the_error():
    with OneShotServer(("127.0.0.1", 0), "/img", TOKEN, body_of(b"x"), peer=None, node="n1") as s:
        t0 = time.monotonic()
        with pytest.raises(TimeoutExpired, match="did not fetch its image") as err:
            s.serve(deadline=time.monotonic() + 0.5)
    assert time.monotonic() - t0 < 3 and TOKEN not in str(err.value) and err.value.node == "n1"


def test_keep_going_false_stops_waiting():
    with OneShotServer(("127.0.0.1", 0), "/img", TOKEN, body_of(b"x"), peer=None) as s:
        t0 = time.monotonic()
        s.serve(deadline=time.monotonic() + 30, keep_going=lambda: False)
    assert time.monotonic() - t0 < 1 and not s.served


def test_a_refused_client_that_hangs_up_changes_nothing():
    with OneShotServer(("127.0.0.1", 0), "/img", TOKEN, body_of(b"ok"), peer=None, request_timeout=0.5) as s:
        run = serving(s, deadline=time.monotonic() + 10)
        silent = socket.create_connection(s.address)         # says nothing: dropped after 0.5 s
        rude = socket.create_connection(s.address)
        rude.sendall(b"GET /img HTTP/1.0\r\n")               # half a request, then gone
        rude.close()
        assert get(s.address, timeout=10) == (200, b"ok")
        run["thread"].join(5)
        silent.close()
    assert "error" not in run


def test_a_download_that_breaks_off_is_transient_and_body_errors_pass_through():
    def endless(write, set_timeout):
        set_timeout(2)
        while True:
            write(b"\0" * 65536)
    with OneShotServer(("127.0.0.1", 0), "/img", TOKEN, endless, peer=None) as s:
        run = serving(s, deadline=time.monotonic() + 10)
        conn = socket.create_connection(s.address)
        conn.sendall(f"GET /img HTTP/1.0\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode())
        conn.recv(1000)
        conn.close()
        run["thread"].join(10)
    assert isinstance(run["error"], TransientError) and "broke off" in str(run["error"])

    def failing(write, set_timeout):
        raise BmmError("image unreadable")
    with OneShotServer(("127.0.0.1", 0), "/img", TOKEN, failing, peer=None) as s:
        run = serving(s, deadline=time.monotonic() + 10)
        assert get(s.address) == (200, b"")      # headers went out; the stream's end record never comes
        run["thread"].join(5)
    assert type(run["error"]) is BmmError and str(run["error"]) == "image unreadable"


def test_a_port_in_use_is_a_clear_error():
    with socket.create_server(("127.0.0.1", 0)) as busy:
        with pytest.raises(BmmError, match="cannot listen on 127.0.0.1"):
            OneShotServer(busy.getsockname(), "/img", TOKEN, body_of(b"x"), peer=None)
