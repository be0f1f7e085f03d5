"""Image delivery (bmm.storage.delivery) to the lab's real nodes, for every transport.

Each node is an sshd in its own network namespace with LVM on a loop device; the front-end is
this process. For http, ssh (OpenSSH) and session (paramiko):
- the LV holds exactly the image, byte for byte (full, sparse, compressed qcow2, qcow2 on a
  backing chain), the rest zeros, and nothing of the previous tenant's bytes;
- killing the transport mid-copy (the TCP stream, the ssh client, the channel) raises a
  TransientError and never reports success;
- a stream altered on its way (a man in the middle, a flipped byte after the sender hashed it)
  is refused by the receiver: BmmError "checksum mismatch", not retried as transient;
- the http token appears in no process's argv or environment on the machine, nor in an error.
"""

from __future__ import annotations

import hashlib
import os
import socket
import struct
import subprocess
import threading
import time

import pytest

from bmm.errors import BmmError, CorruptCopy, TransientError
from bmm.storage import chain, delivery
from bmm.storage.digests import DigestCache, source_files
from bmm.storage.image import inspect_image
from bmm.storage.stream import record
from bmm.transport.oneshot import session_addresses
from tests.lab.lvm_support import MiB
from tests.lab.node_support import node_lv, node_lv_bytes, node_session
from tests.lab.test_storage_stream import CutStream
from tests.support import require_lab

TOOLS = ("qemu-img", "qemu-nbd", "qemu-io", "ssh", "sshd", "lvm")
TRANSPORTS = ("http", "ssh", "session")
MARKER = b"PREVIOUS-TENANT!"


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A datastore directory with the images, and each one's expected guest bytes."""
    require_lab(*TOOLS)
    ds = tmp_path_factory.mktemp("datastore")
    ref = tmp_path_factory.mktemp("expected")
    full = ds / "full.raw"
    full.write_bytes(os.urandom(24 * MiB))
    sparse = ds / "sparse.raw"
    with open(sparse, "wb") as f:
        f.truncate(40 * MiB)
        f.seek(MiB)
        f.write(os.urandom(3 * MiB))
        f.seek(10 * MiB)
        f.write(bytes(2 * MiB))                       # written zeros
        f.seek(20 * MiB + 5000)
        f.write(os.urandom(100_000))                  # unaligned data
        f.seek(40 * MiB - 300)
        f.write(b"end" * 100)
    qcow2 = ds / "sparse.qcow2"
    subprocess.run(["qemu-img", "convert", "-c", "-O", "qcow2", sparse, qcow2], check=True)
    # a chain: base (raw) <- mid (qcow2) <- top (qcow2), relative backing names, explicit formats
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "full.raw", "-F", "raw", ds / "mid.qcow2"],
                   check=True)
    subprocess.run(["qemu-io", "-c", "write -P 0xab 1M 3M", "-c", "write -P 0x5a 20M 64k", ds / "mid.qcow2"],
                   check=True, capture_output=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2", ds / "top.qcow2"],
                   check=True)
    subprocess.run(["qemu-io", "-c", "write -z 2M 1M", "-c", "write -P 0xcd 8M 4k", ds / "top.qcow2"],
                   check=True, capture_output=True)
    marker = ref / "previous-tenant"
    marker.write_bytes(MARKER * (64 * MiB // len(MARKER)))
    flat = ref / "top.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", ds / "top.qcow2", flat], check=True)
    out = {"full": (str(full), "raw", full.read_bytes()),
           "sparse": (str(sparse), "raw", sparse.read_bytes()),
           "qcow2": (str(qcow2), "qcow2", sparse.read_bytes()),
           "chain": (str(ds / "top.qcow2"), "qcow2", flat.read_bytes())}
    return ds, out, str(marker)


@pytest.fixture(scope="module")
def node(module_lab):
    name = module_lab.servers[0]
    session = node_session(module_lab, name)
    yield module_lab, name, session
    session.close()


@pytest.fixture(scope="module")
def target(node):
    """One LV for the module's copies (LVM commands cost seconds on the lab's loaded machine)."""
    lab, name, session = node
    with node_lv(lab, name, session, 44 * MiB) as (lv, dev):
        yield lv, dev


def poison(session, images, dev, size):
    """The previous tenant's bytes over the whole LV (the lab's nodes see the host's files)."""
    session.run(["dd", f"if={images[2]}", f"of={dev}", "bs=4M", "iflag=count_bytes", f"count={size}",
                 "conv=fsync", "status=none"], timeout=120)


def deliver(session, ds, path, fmt, dev, size, **kw):
    src = chain.inspect_source(path, fmt, within=str(ds))
    return delivery.deliver_image(session, path, src.info.format, dev, size, info=src.info, source=src.spec, **kw)


@pytest.mark.parametrize("kind", ["full", "sparse", "qcow2", "chain"])
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_lv_holds_exactly_the_image(node, target, images, transport, kind):
    lab, name, session = node
    lv, dev = target
    ds, imgs = images[:2]
    path, fmt, want = imgs[kind]
    seen = []
    poison(session, images, dev, lv.size)
    res = deliver(session, ds, path, fmt, dev, lv.size, transport=transport,
                  progress=lambda d, t: seen.append((d, t)))
    got = node_lv_bytes(lab, name, lv.name)
    assert res.receiver == f"python/{transport}"
    assert res.data_bytes + res.zero_bytes == lv.size
    if kind in ("sparse", "qcow2"):
        assert res.data_bytes < 8 * MiB                       # the zero runs were not sent
    assert hashlib.sha256(got[:len(want)]).digest() == hashlib.sha256(want).digest()
    assert got[:len(want)] == want
    assert got[len(want):].count(0) == lv.size - len(want)
    assert MARKER not in got
    assert seen[-1] == (lv.size, lv.size)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen) and all(t == lv.size for _, t in seen)


# ---------------------------------------------------------------------------------------------
# men in the middle and broken transports

class Proxy:
    """A man in the middle of the node's download: forwards to the real server and, after
    `cut` bytes of its reply, resets both connections, or flips the byte at `flip` of the reply
    (`spoil`: of the request, i.e. of its token)."""

    def __init__(self, host: str, *, cut: int | None = None, flip: int | None = None, spoil: bool = False):
        self.listener = socket.create_server((host, 0))
        self.listener.settimeout(30)
        self.address = self.listener.getsockname()[:2]
        self.target = None
        self.cut, self.flip, self.spoil = cut, flip, spoil
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            client, _ = self.listener.accept()
        except OSError:
            return
        upstream = socket.create_connection(self.target, timeout=30)
        pump = threading.Thread(target=self._pump_up, args=(client, upstream, self.spoil), daemon=True)
        pump.start()
        seen = 0
        try:
            while data := upstream.recv(1 << 16):
                if self.flip is not None and seen <= self.flip < seen + len(data):
                    data = bytearray(data)
                    data[self.flip - seen] ^= 0x01
                if self.cut is not None and seen + len(data) >= self.cut:
                    client.sendall(data[:self.cut - seen])
                    # RST both ways, as a dead link or a killed peer would: wake the pump thread
                    # first (a socket closed under a blocked recv() sends nothing)
                    client.shutdown(socket.SHUT_RD)
                    pump.join(10)
                    for s in (client, upstream):
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                client.sendall(data)
                seen += len(data)
            client.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            client.close()
            upstream.close()

    @staticmethod
    def _pump_up(client, upstream, spoil):
        try:
            while data := client.recv(1 << 16):
                if spoil and b"Bearer " in data:
                    at = data.index(b"Bearer ") + 10
                    data = data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1:]
                upstream.sendall(data)
        except OSError:
            pass

    def close(self):
        self.listener.close()
        self.thread.join(10)


class ProxiedHttp(delivery.HttpTransport):
    """The node is told to fetch from the proxy, which connects from the front-end itself."""

    def __init__(self, proxy: Proxy):
        super().__init__(peer=None)
        self.proxy = proxy

    def advertised(self, server):
        self.proxy.target = server.address
        return self.proxy.address


class Tamper:
    """An executor whose stream to the receiver has one byte flipped at `at`, after the sender
    hashed it (a bug, bad memory, or anyone who can write into the pipe or channel)."""

    def __init__(self, bulk, at: int):
        self.bulk, self.at = bulk, at

    def __getattr__(self, name):
        return getattr(self.bulk, name)

    def __enter__(self):
        self.bulk.__enter__()
        return self

    def __exit__(self, *exc):
        return self.bulk.__exit__(*exc)

    def run_stream_in(self, argv, source, *, timeout):
        pos = [0]

        def flipped():
            piece = source()
            if piece is not None:
                if pos[0] <= self.at < pos[0] + len(piece):
                    piece = bytearray(piece)
                    piece[self.at - pos[0]] ^= 0x01
                pos[0] += len(piece)
            return piece
        return self.bulk.run_stream_in(argv, flipped, timeout=timeout)


class WrappedSsh(delivery.SshTransport):
    """The OpenSSH transport with its executor wrapped (Tamper and kin)."""

    def __init__(self, wrap):
        super().__init__()
        self.wrap = wrap

    def executor(self, job):
        return self.wrap(super().executor(job))


class KilledSsh(delivery.SshTransport):
    """Keeps its OpenSSH executor, so a progress callback can kill the ssh client."""

    def executor(self, job):
        self.bulk = super().executor(job)
        return self.bulk


def receiver_pids(dev: str) -> list[int]:
    """Host pids of the receivers writing `dev` (the nodes' pid namespaces are visible here):
    exactly our receiver's argv, python3 -I -S -c <bmm receiver> <dev>."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = open(f"/proc/{entry}/cmdline", "rb").read().split(b"\0")[:-1]
        except OSError:
            continue
        if len(argv) == 6 and argv[1:4] == [b"-I", b"-S", b"-c"] and argv[5] == dev.encode() \
                and argv[4] == delivery.PY_RECEIVER.encode():
            pids.append(int(entry))
    return pids


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_killing_the_transport_mid_copy_is_transient_and_never_success(node, target, images, transport):
    lab, name, session = node
    lv, dev = target
    ds, imgs = images[:2]
    path, fmt, want = imgs["full"]
    seen = []
    ex, proxy = session, None
    if transport == "http":
        proxy = Proxy(session_addresses(session)[0], cut=len(want) // 3)
        carrier = ProxiedHttp(proxy)
    elif transport == "ssh":
        carrier = KilledSsh()
    else:
        carrier, ex = "session", CutStream(session, keep=4)

    def progress(done, total):
        seen.append(done)
        if transport == "ssh" and done > len(want) // 3 and carrier.bulk.process is not None:
            carrier.bulk.process.kill()
    try:
        with pytest.raises(TransientError, match="interrupted") as err:
            delivery.deliver_image(ex, path, fmt, dev, lv.size, transport=carrier, progress=progress, timeout=120)
    finally:
        if proxy:
            proxy.close()
    assert lv.size not in seen
    assert f"copy of {path} to {dev} interrupted" in str(err.value)


def test_a_receiver_killed_on_the_node_is_transient(node, target, images):
    lab, name, session = node
    lv, dev = target
    path, fmt, want = images[1]["full"]
    seen, killed = [], []

    def progress(done, total):
        seen.append(done)
        if done > len(want) // 3 and not killed:
            killed.extend(receiver_pids(dev))
            for pid in killed:
                os.kill(pid, 9)
    with pytest.raises(TransientError, match="interrupted"):
        delivery.deliver_image(session, path, fmt, dev, lv.size, transport="http", progress=progress, timeout=120)
    assert len(killed) == 1 and lv.size not in seen


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_stream_altered_on_its_way_is_refused(node, target, images, transport):
    lab, name, session = node
    lv, dev = target
    path, fmt, want = images[1]["full"]
    seen = []
    ex, proxy = session, None
    if transport == "http":
        proxy = Proxy(session_addresses(session)[0], flip=MiB)
        carrier = ProxiedHttp(proxy)
    elif transport == "ssh":
        carrier = WrappedSsh(lambda bulk: Tamper(bulk, at=MiB))
    else:
        carrier, ex = "session", Tamper(session, at=MiB)
    try:
        with pytest.raises(BmmError, match="checksum mismatch") as err:
            delivery.deliver_image(ex, path, fmt, dev, lv.size, transport=carrier,
                                   progress=lambda d, t: seen.append(d), timeout=120)
    finally:
        if proxy:
            proxy.close()
    assert isinstance(err.value, CorruptCopy) and not isinstance(err.value, TransientError)
    assert lv.size not in seen


def test_a_forged_or_missing_trailer_is_refused(node, target, images):
    """Whoever rewrites the stream must also forge its MAC: a SHA-256 of the altered stream is
    not enough, and a stream that stops at E is not complete."""
    lab, name, session = node
    lv, dev = target
    path, fmt, want = images[1]["full"]

    class Rewrite(Tamper):
        def __init__(self, bulk, drop):
            super().__init__(bulk, at=-1)
            self.drop = drop

        def run_stream_in(self, argv, source, *, timeout):
            def rewritten():
                piece = source()
                if piece is not None and bytes(piece[:2]) == b"H ":
                    return None if self.drop else bytes(piece[:44]) + hashlib.sha256(b"forged").hexdigest().encode()
                return piece
            return self.bulk.run_stream_in(argv, rewritten, timeout=timeout)
    with pytest.raises(BmmError, match="checksum mismatch") as forged:
        delivery.deliver_image(Rewrite(session, drop=False), path, fmt, dev, lv.size, transport="session")
    with pytest.raises(TransientError, match="stream ended early"):
        delivery.deliver_image(Rewrite(session, drop=True), path, fmt, dev, lv.size, transport="session")
    assert not isinstance(forged.value, TransientError)


def test_a_record_outside_the_target_is_refused_before_it_is_written(node, target, images):
    """The MAC is checked at the end; a record aimed past the LV is refused when it arrives.
    (Through OpenSSH: over the session transport SshSession reports a receiver that exits
    mid-stream as a lost link, without its reason.)"""
    lab, name, session = node
    lv, dev = target
    path, fmt, want = images[1]["full"]

    class Misaimed(Tamper):
        def run_stream_in(self, argv, source, *, timeout):
            def moved():
                piece = source()
                if piece is not None and bytes(piece[:2]) == b"D " and len(piece) == 44:
                    return record("D", lv.size, int(bytes(piece).split()[2]))
                return piece
            return self.bulk.run_stream_in(argv, moved, timeout=timeout)
    with pytest.raises(BmmError, match="record outside the target") as err:
        delivery.deliver_image(session, path, fmt, dev, lv.size, transport=WrappedSsh(lambda b: Misaimed(b, at=-1)))
    assert not isinstance(err.value, TransientError)


def test_the_copy_secrets_are_in_no_argv_environment_or_error(node, target, images, monkeypatch):
    """The bearer token and the MAC key travel only in the control record, over ssh."""
    lab, name, session = node
    lv, dev = target
    path, fmt, want = images[1]["full"]
    made = []

    def token(n):
        made.append(f"bmmtesttoken{len(made)}-" + os.urandom(8).hex())
        return made[-1]

    def key(n):
        made.append(os.urandom(n).hex())
        return bytes.fromhex(made[-1])
    monkeypatch.setattr(delivery.secrets, "token_urlsafe", token)
    monkeypatch.setattr(delivery.secrets, "token_bytes", key)
    found = []

    def scan(done, total):
        if len(want) // 3 < done and not found:
            found.append("scanned")
            for entry in os.listdir("/proc"):
                for what in ("cmdline", "environ"):
                    try:
                        text = open(f"/proc/{entry}/{what}", "rb").read()
                    except OSError:
                        continue
                    found.extend(f"{entry}/{what}" for secret in made if secret.encode() in text)
    delivery.deliver_image(session, path, fmt, dev, lv.size, transport="http", progress=scan)
    # a download refused for a wrong token, and a cut one: no secret in either error
    errors = []
    for spoil, cut, kind in ((True, None, BmmError), (False, 100_000, TransientError)):
        proxy = Proxy(session_addresses(session)[0], spoil=spoil, cut=cut)
        try:
            with pytest.raises(kind) as err:
                delivery.deliver_image(session, path, fmt, dev, lv.size, transport=ProxiedHttp(proxy))
        finally:
            proxy.close()
        errors.append(err.value)
    assert found == ["scanned"] and len(made) >= 6          # token and key of 3 copies (+ URL paths)
    assert "refused the download (HTTP 403)" in str(errors[0]) and not isinstance(errors[0], TransientError)
    assert "interrupted" in str(errors[1])
    for err in errors:
        assert not any(secret in str(err) for secret in made)


def test_a_node_that_cannot_reach_the_front_end_fails_fast(node, target, images):
    lab, name, session = node
    lv, dev = target
    path, fmt, want = images[1]["full"]
    closed = socket.create_server((session_addresses(session)[0], 0))
    port = closed.getsockname()[1]
    closed.close()

    class Nowhere(delivery.HttpTransport):
        def advertised(self, server):
            return server.address[0], port
    t0 = time.monotonic()
    with pytest.raises(TransientError, match="cannot fetch the image from the front-end"):
        delivery.deliver_image(session, path, fmt, dev, lv.size, transport=Nowhere())
    assert time.monotonic() - t0 < 10


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_bad_targets_are_refused_before_any_byte_moves(node, target, images, transport):
    lab, name, session = node
    lv, dev = target
    path, fmt, want = images[1]["full"]
    t0 = time.monotonic()
    # the receiver checks the device as it opens it; the session transport asks first (see there)
    for device, size, why in (("/dev/nonexistent-bmm", lv.size, "cannot open /dev/nonexistent-bmm|"
                               "/dev/nonexistent-bmm is not a usable block device"),
                              ("/dev/null", lv.size, "/dev/null is not a (usable )?block device"),
                              (dev, lv.size + MiB, f"{dev} has {lv.size} bytes, expected at least {lv.size + MiB}")):
        with pytest.raises(BmmError, match=why) as err:
            delivery.deliver_image(session, path, fmt, device, size, transport=transport)
        assert not isinstance(err.value, TransientError)
    assert time.monotonic() - t0 < 20          # refused at once, no deadline waited out
    with pytest.raises(BmmError, match="needs 25165824 bytes but the target has only"):
        delivery.deliver_image(session, path, fmt, dev, 8 * MiB, transport=transport)
    with pytest.raises(BmmError, match="unknown image transport"):
        delivery.deliver_image(session, path, fmt, dev, lv.size, transport="carrier-pigeon")


# ---------------------------------------------------------------------------------------------
# backing chains: only inside the datastore

def _rebase(path, backing, fmt):
    """Point a qcow2's header at `backing` (unchecked); fmt None: no backing format at all, as
    images from older qemu have (today's qemu-img refuses to write that, so the header's
    backing-format extension is renamed to a type qemu ignores)."""
    subprocess.run(["qemu-img", "rebase", "-q", "-u", "-f", "qcow2", "-b", backing, "-F", fmt or "raw", path],
                   check=True, capture_output=True)
    if fmt is None:
        with open(path, "r+b") as f:
            head = f.read(4096)
            at = head.index(struct.pack(">I", 0xE2792ACA))           # QCOW2_EXT_MAGIC_BACKING_FORMAT
            f.seek(at)
            f.write(struct.pack(">I", 0x0B111111))


def test_backing_chains_outside_the_datastore_are_refused(images, tmp_path):
    ds, imgs = images[:2]
    elsewhere = tmp_path / "another-vms-disk.raw"
    elsewhere.write_bytes(b"SECRET" * 1000)
    os.symlink(elsewhere, tmp_path / "link.raw")
    cases = {
        "outside": (str(elsewhere), "raw", "is not a file inside"),
        "symlink": ("link.raw", "raw", "is not a file inside"),
        "protocol": ("nbd://127.0.0.1:10809/x", "raw", "is not a file inside"),
        "json": ('json:{"driver":"file","filename":"%s"}' % elsewhere, "raw", "is not a file inside"),
        "noformat": ("base.raw", None, "has no declared format"),
        "vmdk": ("base.raw", "vmdk", "is 'vmdk'"),
        "loop": ("top.qcow2", "qcow2", "loops"),
    }
    store = tmp_path / "ds"
    store.mkdir()
    (store / "base.raw").write_bytes(bytes(MiB))
    for case, (backing, fmt, why) in cases.items():
        top = store / "top.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", top, "1M"], check=True)
        if case == "symlink":
            os.symlink(tmp_path / "link.raw", store / "link.raw")
        _rebase(top, backing, fmt)
        with pytest.raises(BmmError, match=why):
            chain.inspect_source(str(top), "qcow2", within=str(store))
        if case == "symlink":
            os.unlink(store / "link.raw")
    # image.py alone refuses every backing file; inside the datastore the chain is accepted
    with pytest.raises(BmmError, match="has a backing file"):
        inspect_image(imgs["chain"][0], "qcow2")
    src = chain.inspect_source(imgs["chain"][0], "qcow2", within=str(ds))
    assert [os.path.basename(layer.path) for layer in src.layers] == ["top.qcow2", "mid.qcow2", "full.raw"]
    assert [layer.format for layer in src.layers] == ["qcow2", "qcow2", "raw"]
    assert src.spec.startswith("json:") and '"backing":null' not in src.spec     # raw bottom: no backing key
    plain = chain.inspect_source(imgs["sparse"][0], "raw", within=str(ds))
    assert plain.spec is None and plain.info == inspect_image(imgs["sparse"][0], "raw")


# ---------------------------------------------------------------------------------------------
# remembered digests (bmm.storage.digests)

def test_a_remembered_digest_skips_hashing_and_never_outlives_its_image(node, target, images, tmp_path):
    lab, name, session = node
    lv, dev = target
    ds, imgs = images[:2]
    image = tmp_path / "image.raw"
    image.write_bytes(imgs["full"][2])
    cache = DigestCache(str(tmp_path / "digests"))

    def copy(**kw):
        res = delivery.deliver_image(session, str(image), "raw", dev, lv.size, digests=cache, **kw)
        assert node_lv_bytes(lab, name, lv.name)[:image.stat().st_size] == image.read_bytes()
        return res
    first, second = copy(), copy(transport="ssh")
    assert first.hashed and not second.hashed and first.digest == second.digest
    # rewritten in place, same size: a new key (its ctime moved), hashed again
    with open(image, "r+b") as f:
        f.seek(5 * MiB)
        f.write(b"changed")
    third = copy()
    assert third.hashed and third.digest != first.digest
    # a stale entry (what no write can make, short of a broken clock or filesystem): refused,
    # dropped, and the next try hashes again
    entries = {open(os.path.join(cache.dir, e)).read().strip(): e for e in os.listdir(cache.dir)}
    assert set(entries) == {first.digest, third.digest}      # the old image's entry never matches again
    with open(os.path.join(cache.dir, entries[third.digest]), "w") as f:
        f.write(first.digest + "\n")
    with pytest.raises(BmmError, match="checksum mismatch") as err:
        copy()
    assert isinstance(err.value, CorruptCopy) and os.listdir(cache.dir) == [entries[first.digest]]
    assert copy().hashed and len(os.listdir(cache.dir)) == 2


def test_digest_keys_name_every_layer_of_a_chain(images):
    ds, imgs = images[:2]
    src = chain.inspect_source(imgs["chain"][0], "qcow2", within=str(ds))
    assert source_files(imgs["chain"][0], src.spec) == [layer.path for layer in src.layers]
    assert source_files(imgs["full"][0], None) == [imgs["full"][0]]
    cache = DigestCache("/nonexistent")
    params = {"size": 1}
    key = cache.key(source_files(imgs["chain"][0], src.spec), params)
    assert key and key == cache.key([layer.path for layer in src.layers], params)
    assert key != cache.key([layer.path for layer in src.layers[:-1]], params)
    assert key != cache.key([layer.path for layer in src.layers], {"size": 2})
    assert cache.key(["/nonexistent/file"], params) is None and cache.get(None) is None
