"""Deliver an OS image into a node's block device at the speed of the disk ("bmm stream,
version 2"), its integrity checked on the node.

Design (the measurements that chose it are in docs/storage.md, `benchmarks/image_copy.py`):
- **Control stays on the paramiko session** `ex`: it starts the receiver, one constant
  `python3 -I -S -c <code> <device>` process on the node, and gets its answer. The first
  record on the receiver's stdin, `C <n> 0` + JSON, says where the stream comes from, the
  size the device must have, and carries the copy's one-time secrets (never in argv, a log
  or an error).
- **The bulk data takes one of three transports**, all carrying the same stream:
  - `http` (the default): the node pulls the stream from a one-shot HTTP server on the
    front-end (`bmm.transport.oneshot`), the way Ironic's direct deploy streams an image: one
    GET, from the node's address, with a bearer token, for this one copy, then the server
    closes. The front-end does no encryption per node. The bytes cross the provisioning
    network in clear; their integrity rests on the MAC below;
  - `ssh`: the stream follows the control record on the receiver's stdin through the OpenSSH
    client (`bmm.transport.openssh`: AES-GCM on AES-NI, pinned to the host key paramiko
    verified): encrypted, for networks that must not see image bytes;
  - `session`: the same through `ex.run_stream_in` itself (paramiko; a pipe for a
    LocalExecutor); the slowest, needs nothing beyond the control session.
- **The stream** is version 1's (bmm.storage.stream: D/Z records, zero runs never sent, a Z
  for every skipped range and for the tail) with `S 2 <size>`, one chunk per D record, and a
  trailer after E: `H 64 0` + hex HMAC-SHA256(key, SHA-256 of every byte from S to E), under
  a fresh 256-bit key that only the control record carries. Whoever can alter the data on the
  wire (and read the bearer token there) cannot forge the trailer, and would need a second
  SHA-256 preimage to keep the digest; headers are covered, so a dropped Z record (old bytes
  left in place) fails like altered data. The digest is unkeyed, so the front-end can
  remember it (bmm.storage.digests) and skip hashing the next copy of the same stream; the
  node always hashes. The receiver writes as data arrives (aligned records O_DIRECT, the
  rest buffered) and refuses a record outside the target at once; after E it compares: on
  a mismatch it exits 5 ("bmm-recv: corrupt: checksum mismatch") *before* its fsync and
  without an OK, and the copy raises BmmError. Only `OK <data> <zero> <sha256> python`, after
  an fsync, with the totals and digest the sender expects, is a success.
- Failures: a stream that ends early, a killed receiver or ssh client, a lost link or a
  stalled peer (every wait has a deadline) raise TransientError; the caller removes the LV.
  The receiver checks the device itself (a block device of at least `size` bytes) as it opens
  it, in the same round trip.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import queue
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from bmm.errors import BmmError, CorruptCopy, TimeoutExpired, TransientError
from bmm.storage.digests import DigestCache, source_files
from bmm.storage.image import CHUNK, ZERO_BLOCK, ImageInfo, image_blocks, inspect_image, open_image
from bmm.storage.lvm import blockdev_size, executor_node
from bmm.storage.stream import PY_FAIL, PY_ZERO, CopyResult, Progress, _classify, encode, record

VERSION = 2
TRANSPORTS = ("http", "ssh", "session")
# a receiver zeroing a Z range reads nothing meanwhile: a sender waits that long at this rate
# (lvm.wipe_device's floor for a disk without WRITE_ZEROES) on top of its io_timeout
MIN_ZERO_RATE = 20e6
IO_TIMEOUT = 120.0

PY_RECEIVER = r'''
import errno, fcntl, hashlib, hmac, json, mmap, os, resource, select, stat, struct, sys, threading, time
''' + PY_FAIL + r'''
def control_read(n, timeout):
    # exactly n bytes of fd 0: with the stdin source the stream follows on the same fd
    out = bytearray()
    end = time.monotonic() + timeout
    while len(out) < n:
        left = end - time.monotonic()
        if left <= 0 or not select.select([0], [], [], left)[0]:
            fail("interrupted", "no word from the front-end within %d s" % timeout, 3)
        b = os.read(0, n - len(out))
        if not b:
            fail("interrupted", "control channel closed", 3)
        out += b
    return bytes(out)

f = control_read(44, 120).split()
if len(f) != 3 or f[0] != b"C" or not f[1].isdigit() or int(f[1]) > 65536:
    fail("fatal", "bad control record", 2)
try:
    ctl = json.loads(control_read(int(f[1]), 120))
    key = bytes.fromhex(ctl.pop("key"))
except (ValueError, KeyError):
    fail("fatal", "bad control record", 2)
io_timeout = float(ctl["io_timeout"])
dev = sys.argv[1]
try:
    if not stat.S_ISBLK(os.stat(dev).st_mode):
        fail("fatal", "%s is not a block device" % dev, 2)
    fd = os.open(dev, os.O_WRONLY)
    have = struct.unpack("Q", fcntl.ioctl(fd, 0x80081272, b"\0" * 8))[0]     # BLKGETSIZE64
except OSError as e:
    fail("fatal", "cannot open %s: %s" % (dev, e.strerror), 2)
# Aligned writes bypass the page cache (O_DIRECT, from page-aligned buffers): less CPU, no
# writeback competing with the stream; the rest, and a device that refuses it, buffered.
try:
    dfd = [os.open(dev, os.O_WRONLY | os.O_DIRECT)]
except OSError:
    dfd = [-1]
if have < ctl["size"]:
    fail("fatal", "%s has %d bytes, expected at least %d" % (dev, have, ctl["size"]), 2)

if ctl["source"] == "http":
    import http.client
    where = "%s:%d" % (ctl["host"], ctl["port"])
    try:
        conn = http.client.HTTPConnection(ctl["host"], ctl["port"], timeout=float(ctl["connect_timeout"]))
        conn.connect()
        conn.sock.settimeout(io_timeout)
        conn.request("GET", ctl["path"], headers={"Authorization": "Bearer " + ctl.pop("token")})
        resp = conn.getresponse()
    except OSError as e:
        fail("interrupted", "cannot fetch the image from the front-end at %s: %s" % (where, e.strerror or e), 3)
    except http.client.HTTPException as e:       # its text may quote what was sent: the name only
        fail("interrupted", "cannot fetch the image from the front-end at %s: %s" % (where, type(e).__name__), 3)
    if resp.status != 200:
        fail("fatal", "the front-end at %s refused the download (HTTP %d)" % (where, resp.status), 2)
    source = resp.readinto
else:
    try:
        fcntl.fcntl(0, 1031, 1 << 20)          # F_SETPIPE_SZ: fewer wake-ups
    except OSError:
        pass
    source = lambda view: os.readv(0, [view])

# SHA-256 runs in a thread (hashlib drops the GIL) while this one reads and writes: buffers
# rotate, and one is refilled only once its bytes were hashed.
NBUF = 3
views = [memoryview(mmap.mmap(-1, 4 << 20)) for _ in range(NBUF)]
sha = hashlib.sha256()
free = [threading.Event() for _ in range(NBUF)]
for e in free:
    e.set()
todo = []
todo_ready = threading.Condition()

def macer():
    while True:
        with todo_ready:
            while not todo:
                todo_ready.wait()
            item = todo.pop(0)
        if item is None:
            return
        i, n = item
        sha.update(views[i][:n])
        free[i].set()

threading.Thread(target=macer, daemon=True).start()
turn = [0]

def take():
    i = turn[0]
    turn[0] = (i + 1) % NBUF
    free[i].wait()
    free[i].clear()
    return i

def give(item):
    with todo_ready:
        todo.append(item)
        todo_ready.notify()

def readexact(view):
    got, n = 0, len(view)
    while got < n:
        try:
            k = source(view[got:])
        except OSError as e:
            fail("interrupted", "stream broke: %s" % (e.strerror or e), 3)
        if not k:
            fail("interrupted", "stream ended early", 3)
        got += k

def parse(raw):
    f = bytes(raw).split()
    if len(f) != 3 or not f[1].isdigit() or not f[2].isdigit():
        fail("fatal", "bad record header", 2)
    return f[0], int(f[1]), int(f[2])

def header():
    i = take()
    readexact(views[i][:44])
    give((i, 44))
    return parse(views[i][:44])
''' + PY_ZERO + r'''
def put(view, pos):
    k, n = 0, len(view)
    while k < n:
        w = dfd[0] if dfd[0] >= 0 and not (pos + k) % 4096 and not (n - k) % 4096 and not k % 4096 else fd
        try:
            k += os.pwrite(w, view[k:], pos + k)
        except OSError as e:
            if w != dfd[0] or e.errno != errno.EINVAL:
                raise
            os.close(dfd[0])
            dfd[0] = -1

op, a, b = header()
if op != b"S" or a != 2:
    fail("fatal", "not a bmm stream version 2", 2)
data = zeroed = 0
try:
    while True:
        op, a, b = header()
        if op in (b"D", b"Z") and a + b > ctl["size"]:
            fail("fatal", "record outside the target (%d+%d of %d bytes)" % (a, b, ctl["size"]), 2)
        if op == b"D":
            pos, left = a, b
            while left:
                i = take()
                n = min(left, len(views[i]))
                readexact(views[i][:n])
                give((i, n))
                put(views[i][:n], pos)
                pos += n
                left -= n
            data += b
        elif op == b"Z":
            zero(a, b)
            zeroed += b
        elif op == b"E":
            if a != data or b != zeroed:
                fail("interrupted", "stream totals differ (got %d+%d)" % (data, zeroed), 3)
            break
        else:
            fail("fatal", "bad record type", 2)
    trailer = memoryview(bytearray(44 + 64))     # not covered by the digest it authenticates
    readexact(trailer[:44])
    op, a, b = parse(trailer[:44])
    if op != b"H" or a != 64:
        fail("interrupted", "stream ended without its checksum", 3)
    readexact(trailer[44:])
    want = bytes(trailer[44:])
    for e in free:                   # every byte was hashed
        e.wait()
    give(None)
    got = sha.hexdigest()
    if not hmac.compare_digest(want, hmac.new(key, sha.digest(), "sha256").hexdigest().encode()):
        fail("corrupt", "checksum mismatch: the stream was altered on its way", 5)
    os.fsync(fd)
    os.close(fd)
    if dfd[0] >= 0:
        os.close(dfd[0])
except OSError as e:
    fail("fatal", "writing %s failed: %s" % (dev, e.strerror), 4)
ru = resource.getrusage(resource.RUSAGE_SELF)      # all threads: for benchmarks/image_copy.py
sys.stdout.write("OK %d %d %s python\ncpu %.3f\n" % (data, zeroed, got, ru.ru_utime + ru.ru_stime))
sys.stdout.flush()
os._exit(0)
'''

SH_WRAPPER = r'''
command -v python3 >/dev/null 2>&1 || { echo "bmm-recv: fatal: python3 is not installed on the node" >&2; exit 2; }
exec python3 -I -S -c "$1" "$2"
'''


def receiver_argv(device: str) -> list[str]:
    """The node's receiver: constant code, the device a positional argument."""
    return ["sh", "-c", SH_WRAPPER, "bmm-recv", PY_RECEIVER, device]


def control_record(obj: dict) -> bytes:
    """`C <n> 0` + JSON. Padded past 8 KiB so a buffered pipe (LocalExecutor's stdin) passes
    it on at once instead of holding it while the stream comes another way."""
    text = json.dumps(obj, separators=(",", ":")).encode().ljust(8200)
    return record("C", len(text), 0) + text


class SignedStream:
    """The stream's pieces, then its trailer: `H 64 0` + hex HMAC-SHA256(key, SHA-256(S..E)).

    The digest is unkeyed, so it is the same for every copy of the same stream and can be
    remembered (bmm.storage.digests): with `known` the front-end does not hash at all. Else
    SHA-256 runs in a thread (hashlib drops the GIL), a piece behind, overlapping reading the
    image and sending: it costs the front-end as much CPU as all the rest (docs/storage.md)."""

    def __init__(self, pieces: Iterator[bytes | memoryview], key: bytes, known: str | None = None):
        self.pieces = pieces
        self.key = key
        self.sha = None if known else hashlib.sha256()
        self.digest: str | None = known
        self.todo: queue.Queue = queue.Queue(maxsize=2)
        self.worker = threading.Thread(target=self._hash, daemon=True)
        self.gen = self._run()

    def _hash(self) -> None:
        while (piece := self.todo.get()) is not None:
            self.sha.update(piece)

    def __iter__(self):
        return self.gen

    def _run(self):
        if self.sha is not None:
            self.worker.start()
        try:
            while True:
                try:
                    piece = next(self.pieces, None)
                except Exception as exc:       # reading the image failed: the front-end's fault
                    raise SourceError(exc) from None
                if piece is None:
                    break
                if self.sha is not None:
                    self.todo.put(piece)
                yield piece
        finally:
            if self.sha is not None:
                self.todo.put(None)
        if self.sha is not None:
            self.worker.join()
            self.digest = self.sha.hexdigest()
        yield record("H", 64, 0) + hmac.new(self.key, bytes.fromhex(self.digest), "sha256").hexdigest().encode()

    def close(self) -> None:
        self.gen.close()
        self.pieces.close()


class SourceError(Exception):
    """Reading the image failed on the front-end: not the node's fault, not transient."""

    def __init__(self, error: BaseException):
        super().__init__(str(error))
        self.error = error


@dataclass
class Job:
    """One copy, as a transport sees it: the receiver to start on the node and its input."""
    ex: object                   # the control session (SshSession, LocalExecutor)
    argv: list[str]
    control: dict                # the control record's fields; a transport adds its source
    stream: SignedStream
    timeout: float
    report: object               # report(): after each piece sent (progress)
    stats: dict                  # encode's: "zero" = bytes zeroed by Z records so far


def stdin_stream(bulk, job: Job):
    """The control record, then the stream, on the receiver's stdin through bulk, an executor
    with run_stream_in (the control session itself, or an OpenSshExecutor)."""
    pieces = iter(job.stream)
    first = [control_record({**job.control, "source": "stdin"})]

    def source():
        if first:
            return first.pop()
        piece = next(pieces, None)
        if piece is not None:
            job.report()
        return piece

    return bulk.run_stream_in(job.argv, source, timeout=job.timeout)


class SessionTransport:
    """The stream through the control session's own stdin channel (ex.run_stream_in).

    The device is checked first in a round trip of its own, as in version 1: a receiver that
    refuses it exits while the stream is still being sent, and SshSession.run_stream_in then
    reports a lost link instead of the receiver's reason."""
    name = "session"
    check_device_first = True

    def run(self, job: Job):
        return stdin_stream(job.ex, job)


class SshTransport:
    """The stream through the OpenSSH client (bmm.transport.openssh) beside the paramiko
    session, which stays for control. ciphers: OpenSSH's -c list (default: AES-GCM first)."""
    name = "ssh"

    def __init__(self, ciphers: str | None = None):
        self.ciphers = ciphers

    def executor(self, job: Job):
        from bmm.transport.openssh import OpenSshExecutor
        return OpenSshExecutor.beside(job.ex, ciphers=self.ciphers)

    def run(self, job: Job):
        with self.executor(job) as bulk:
            return stdin_stream(bulk, job)


class HttpTransport:
    """The node pulls the stream from a one-shot HTTP server on the front-end.

    listen: (address, port) to bind; default the front-end's address on the control session's
    connection (the node reached us there, so it can reach us back) and an ephemeral port.
    peer: the only client address served; default the control session's peer (None: any).
    """
    name = "http"
    DEFAULT = object()

    def __init__(self, *, listen: tuple[str, int] | None = None, peer=DEFAULT,
                 accept_timeout: float = 30.0, io_timeout: float = IO_TIMEOUT):
        self.listen = listen
        self.peer = peer
        self.accept_timeout = accept_timeout
        self.io_timeout = io_timeout

    def advertised(self, server) -> tuple[str, int]:
        """Where the node is told to connect (override for NAT or a proxy)."""
        return server.address

    def run(self, job: Job):
        from bmm.transport.oneshot import OneShotServer, session_addresses
        local, remote = session_addresses(job.ex)
        peer = remote if self.peer is HttpTransport.DEFAULT else self.peer
        token = secrets.token_urlsafe(32)
        path = "/bmm/" + secrets.token_hex(8)

        def body(write, set_timeout):
            for piece in job.stream:
                set_timeout(self.io_timeout + job.stats.get("zero", 0) / MIN_ZERO_RATE)
                write(piece)
                job.report()

        with OneShotServer(self.listen or (local, 0), path, token, body, peer=peer,
                           io_timeout=self.io_timeout, node=executor_node(job.ex)) as server:
            host, port = self.advertised(server)
            ctl = control_record({**job.control, "source": "http", "host": host, "port": port, "path": path,
                                  "token": token, "connect_timeout": self.accept_timeout})
            first = [ctl]
            # stdin ends after the control record, so the session sees the receiver's exit at once
            control = _Background(lambda: job.ex.run_stream_in(job.argv, lambda: first.pop() if first else None,
                                                               timeout=job.timeout))
            try:
                server.serve(deadline=time.monotonic() + self.accept_timeout, keep_going=control.running)
            except BaseException:
                control.join(self.io_timeout + 30)
                if control.error is not None:        # the receiver's own account comes first
                    raise control.error from None
                raise
            return control.result(self.io_timeout + 30)


class _Background:
    """Run fn in a thread and keep its result or exception."""

    def __init__(self, fn):
        self.error: BaseException | None = None
        self.value = None
        self.thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self.thread.start()

    def _run(self, fn):
        try:
            self.value = fn()
        except BaseException as exc:        # handed to the caller's thread by result()
            self.error = exc

    def running(self) -> bool:
        return self.thread.is_alive()

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)

    def result(self, timeout: float):
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise TimeoutExpired(f"the receiver did not answer within {timeout:g} s after the stream")
        if self.error is not None:
            raise self.error
        return self.value


def transport_for(name):
    """A transport object for a name (objects pass through)."""
    if not isinstance(name, str):
        return name
    if name == "http":
        return HttpTransport()
    if name == "ssh":
        return SshTransport()
    if name == "session":
        return SessionTransport()
    raise BmmError(f"unknown image transport {name!r} ({', '.join(TRANSPORTS)})")


def deliver_image(ex, image_path: str, fmt: str, device: str, size: int, *,
                  transport="http", progress: Progress | None = None, timeout: float = 3600,
                  offset: int = 0, length: int | None = None, info: ImageInfo | None = None,
                  target_zeroed: bool = False, chunk: int = CHUNK, zero_block: int = ZERO_BLOCK,
                  source: str | None = None, digests: DigestCache | None = None) -> CopyResult:
    """stream.copy_image_to_lv's contract (bytes [offset, offset+length) of the image to
    [0, length) of `device`, [length, size) zeroed, progress(done, size) at least every 1% and
    (size, size) only once the receiver confirmed, TransientError on an interruption), through
    `transport` ("http", "ssh", "session" or a transport object), MAC-checked on the node.

    source: what qemu opens instead of image_path, e.g. the pinned backing chain of
    bmm.storage.chain.inspect_source (image_path then only names the image in messages).
    digests: where the stream's SHA-256 is remembered, so the next copy of it skips hashing."""
    node = executor_node(ex)
    info = info or inspect_image(image_path, fmt)
    if length is None:
        length = info.virtual_size - offset
    if offset < 0 or length <= 0 or offset + length > info.virtual_size:
        raise BmmError(f"copy range {offset}+{length} is outside image {image_path} ({info.virtual_size} bytes)")
    if length > size:
        raise BmmError(f"image {image_path} needs {length} bytes but the target has only {size}", node=node)
    carrier = transport_for(transport)
    if getattr(carrier, "check_device_first", False):
        have = blockdev_size(ex, device)
        if have < size:
            raise BmmError(f"{device} has {have} bytes, expected at least {size}", node=node)
    key = secrets.token_bytes(32)
    # "blocks": how image_blocks cuts the image; digests remembered before it cut by content
    # alone (not by the file system's map) are of other streams, and must not match
    params = {"version": VERSION, "fmt": fmt, "offset": offset, "length": length, "size": size,
              "target_zeroed": target_zeroed, "chunk": chunk, "zero_block": zero_block, "blocks": "content"}
    entry = digests.key(source_files(image_path, source), params) if digests else None
    known = digests.get(entry) if digests else None
    stats: dict = {}
    step = max(1, size // 100)
    last = {"reported": -step}
    started = time.monotonic()

    def report():
        # (size, size) means "the receiver confirmed": in-stream reports stay below it
        pos = stats.get("pos", 0)
        if progress and pos - last["reported"] >= step and pos < size:
            last["reported"] = pos
            progress(pos, size)

    with open_image(source or image_path, fmt, size=info.virtual_size) as img:
        blocks = image_blocks(img, offset, length, chunk=chunk, zero_block=zero_block)
        # one chunk per D record: the python receiver needs no merging (version 1's dd one
        # did), and each record's bytes leave as soon as they are read
        stream = SignedStream(encode(blocks, length, size, target_zeroed=target_zeroed, stats=stats,
                                     merge_limit=chunk, version=VERSION), key, known)
        control = {"size": size, "key": key.hex(), "io_timeout": IO_TIMEOUT}
        job = Job(ex, receiver_argv(device), control, stream, timeout, report, stats)
        try:
            res = carrier.run(job)
        except SourceError as exc:
            raise exc.error from None
        except BaseException as exc:
            error = _classify(exc, image_path, device, node)
            if known and isinstance(error, CorruptCopy):
                digests.drop(entry)           # stale: the next try hashes again
            raise error from None
        finally:
            stream.close()
    lines = res.stdout.splitlines()
    got = lines[0].split() if lines else []
    if got != ["OK", str(stats["data"]), str(stats["zero"]), stream.digest or "-", "python"]:
        raise TransientError(f"copy of {image_path} to {device} was not confirmed "
                             f"(receiver said {res.stdout.strip()[:200]!r})", node=node)
    if digests and not known:
        digests.put(entry, stream.digest)     # the receiver computed the same digest
    if progress:
        progress(size, size)
    node_cpu = next((float(line.split()[1]) for line in lines[1:] if line.startswith("cpu ")), 0.0)
    return CopyResult(f"python/{carrier.name}", stats["data"], stats["zero"], time.monotonic() - started,
                      digest=stream.digest, hashed=not known, node_cpu=node_cpu)
