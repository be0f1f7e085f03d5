"""OS images on the FRONT-END: what they are, where their root filesystem is, and their bytes.

- `inspect_image` asks `qemu-img info` (raw and qcow2 only; backing files, external data files
  and encryption are refused).
- `open_image` gives random access to the image's *guest-visible* bytes plus a map of which
  ranges can hold data:
  - raw: the file itself, with SEEK_DATA/SEEK_HOLE for the map;
  - qcow2: `qemu-img map --output=json` for the map, and the bytes from a private, read-only
    `qemu-nbd` on a unix socket, read by a tiny NBD client below. qemu decodes qcow2
    (compressed clusters, subclusters, zstd...), nothing is staged on disk, and the reader
    streams. (Staging a raw copy would need the image's full virtual size in free space on
    the front-end and a full extra write; `qemu-img convert/dd` cannot write to a pipe.)
- `iter_image_blocks` turns that into (offset, length, data) blocks where zero runs come as
  `data=None`, found by checking every 64 KiB block for all zeros; the map only spares reading
  what holds no data, so the blocks are a function of the bytes alone.
- `probe_layout` finds the root filesystem: a bare filesystem image, or a whole-disk image
  whose root partition's byte range is then the only thing bmm copies.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NamedTuple

from bmm.errors import BmmError, FatalError, TimeoutExpired
from bmm.runner import run

MiB = 1 << 20
CHUNK = 4 * MiB
ZERO_BLOCK = 64 * 1024
FORMATS = ("raw", "qcow2")
LINUX_FS = ("ext2", "ext3", "ext4", "xfs", "btrfs")

# GPT partition types (lower case) that say "this is a root filesystem" (discoverable partitions)
GPT_ROOT_TYPES = {
    "4f68bce3-e8cd-4c5d-9d1c-2d7b44e1b4b0",  # x86-64
    "44479540-f297-41b2-9af7-d131d5f0458a",  # x86
    "b921b045-1df0-41c3-af44-4c6f280d3fae",  # arm64
    "69dad710-2ce4-4e3c-b16c-21a1d49abed3",  # arm
    "72ec70a6-cf74-40e6-bd49-4bda08e8f224",  # riscv64
    "993d8d3d-f80e-4225-855a-9daf8ed7ea97",  # ia64
}
# GPT types that are certainly not the root filesystem even if they hold ext4/xfs
GPT_NOT_ROOT_TYPES = {
    "bc13c2ff-59e6-4262-a352-b275fd6f7172",  # /boot (XBOOTLDR)
    "933ac7e1-2eb4-4f13-b844-0e14e2aef915",  # /home
    "3b8f8425-20e0-4f3b-907f-1a25a76f98e8",  # /srv
    "4d21b016-b534-45c2-a9fb-5c16e091fd2d",  # /var
    "7ec6f557-3bc5-4aca-b293-16ef5df639d1",  # /var/tmp
    "c12a7328-f81f-11d2-ba4b-00a0c93ec93b",  # EFI system
}


@dataclass(frozen=True)
class ImageInfo:
    path: str
    format: str          # raw | qcow2
    virtual_size: int    # bytes the guest sees
    actual_size: int     # bytes the file occupies on the front-end


class Block(NamedTuple):
    """`length` bytes at `offset`; `data` is None for a run of zeros (never transferred)."""
    offset: int
    length: int
    data: bytes | bytearray | memoryview | None


COMPRESSED_MAGIC = ((b"\x1f\x8b", "gzip"), (b"\xfd7zXZ\x00", "xz"), (b"BZh", "bzip2"),
                    (b"\x28\xb5\x2f\xfd", "zstd"))


def compression(path: str) -> str | None:
    """The compressor whose magic a file starts with, else None."""
    with open(path, "rb") as fh:
        head = fh.read(6)
    return next((name for magic, name in COMPRESSED_MAGIC if head.startswith(magic)), None)


def inspect_image(path: str, fmt: str | None = None, *, timeout: float = 60) -> ImageInfo:
    """Format and sizes of an image. Pass the format OpenNebula declared (DRIVER/FORMAT) when
    known: then a raw image is never probed (a raw image whose content looks like qcow2 with a
    backing file must not make qemu open that backing file)."""
    if fmt is not None and fmt not in FORMATS:
        raise BmmError(f"image {path}: unsupported format {fmt!r} (bmm copies {' and '.join(FORMATS)} images)")
    if not os.path.isfile(path):
        raise BmmError(f"image {path} does not exist or is not a regular file")
    argv = ["qemu-img", "info", "--output=json"]
    if fmt:
        argv += ["-f", fmt]
    argv.append(path)
    try:
        res = run(argv, timeout=timeout)
    except FatalError:
        raise
    except BmmError as exc:
        raise BmmError(f"image {path}: qemu-img cannot read it: {exc.reason}") from None
    info = json.loads(res.stdout)
    found = info.get("format")
    if found not in FORMATS:
        raise BmmError(f"image {path}: unsupported format {found!r} (bmm copies raw and qcow2 images)")
    if found == "raw" and (packed := compression(path)):
        # qemu calls any file raw; copied as is, a compressed upload would be a garbage disk
        raise BmmError(f"image {path}: is {packed}-compressed, not a disk (register it in a datastore that "
                       "decompresses uploads, bm_images, not bm_rootfs)")
    if info.get("backing-filename") or info.get("full-backing-filename"):
        raise BmmError(f"image {path}: has a backing file ({info.get('backing-filename')}); "
                       "flatten it first (qemu-img convert)")
    specific = (info.get("format-specific") or {}).get("data") or {}
    if specific.get("data-file"):
        raise BmmError(f"image {path}: qcow2 with an external data file is not supported")
    if info.get("encrypted") or specific.get("encrypt"):
        raise BmmError(f"image {path}: encrypted images are not supported")
    virtual = int(info.get("virtual-size") or 0)
    if virtual <= 0:
        raise BmmError(f"image {path}: empty image (virtual size 0)")
    return ImageInfo(path, found, virtual, int(info.get("actual-size") or os.path.getsize(path)))


# ---------------------------------------------------------------------------------------------
# random access to an image's bytes

class _RawImage:
    def __init__(self, path: str, size: int):
        self.path = path
        self.size = size
        self.fd = os.open(path, os.O_RDONLY)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def read(self, offset: int, length: int) -> bytes:
        data = os.pread(self.fd, length, offset)
        if len(data) < length:
            # a raw image shorter than its virtual size (cannot happen for a file we measured,
            # but a file that shrank while we read must not yield garbage)
            raise BmmError(f"image {self.path}: short read at offset {offset}")
        return data

    def ranges(self, start: int, end: int) -> Iterator[tuple[int, int, bool]]:
        """(offset, length, may_hold_data) covering [start, end)."""
        pos = start
        while pos < end:
            try:
                data = os.lseek(self.fd, pos, os.SEEK_DATA)
            except OSError:      # ENXIO: only a hole remains
                data = end
            data = min(data, end)
            if data > pos:
                yield pos, data - pos, False
                pos = data
                if pos >= end:
                    break
            try:
                hole = os.lseek(self.fd, pos, os.SEEK_HOLE)
            except OSError:
                hole = end
            hole = min(max(hole, pos + 1), end)
            yield pos, hole - pos, True
            pos = hole


NBD_OPT_GO = 7
NBD_REP_ACK = 1
NBD_REP_INFO = 3
NBD_REQUEST_MAGIC = 0x25609513
NBD_SIMPLE_REPLY_MAGIC = 0x67446698
NBD_OPT_REPLY_MAGIC = 0x3E889045565A9
NBD_MAX_READ = 32 * MiB


class _NbdClient:
    """The smallest NBD client that reads: fixed newstyle handshake, NBD_OPT_GO, simple replies."""

    def __init__(self, sock_path: str, export: str, timeout: float):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.handle = 0
        self.size = -1
        try:
            self.sock.connect(sock_path)
            self._handshake(export)
        except BaseException:
            self.sock.close()
            raise

    def _recv(self, n: int) -> bytearray:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            k = self.sock.recv_into(view[got:], n - got)
            if k == 0:
                raise BmmError("qemu-nbd closed the connection")
            got += k
        return buf

    def _handshake(self, export: str) -> None:
        if bytes(self._recv(16)) != b"NBDMAGICIHAVEOPT":
            raise BmmError("qemu-nbd does not speak fixed-newstyle NBD")
        (flags,) = struct.unpack(">H", self._recv(2))
        if not flags & 1:
            raise BmmError("qemu-nbd does not support fixed-newstyle NBD")
        self.sock.sendall(struct.pack(">I", 1 | (flags & 2)))
        name = export.encode()
        data = struct.pack(">I", len(name)) + name + struct.pack(">H", 0)
        self.sock.sendall(b"IHAVEOPT" + struct.pack(">II", NBD_OPT_GO, len(data)) + data)
        while True:
            magic, _opt, rtype, rlen = struct.unpack(">QIII", self._recv(20))
            payload = bytes(self._recv(rlen)) if rlen else b""
            if magic != NBD_OPT_REPLY_MAGIC:
                raise BmmError("qemu-nbd sent a bad option reply")
            if rtype & 0x80000000:
                raise BmmError(f"qemu-nbd refused the export: {payload[4:].decode(errors='replace') or rtype}")
            if rtype == NBD_REP_INFO and len(payload) >= 12 and struct.unpack(">H", payload[:2])[0] == 0:
                self.size = struct.unpack(">Q", payload[2:10])[0]
            if rtype == NBD_REP_ACK:
                return

    def read(self, offset: int, length: int) -> bytearray:
        out = bytearray()
        while length > 0:
            n = min(length, NBD_MAX_READ)
            self.handle += 1
            self.sock.sendall(struct.pack(">IHHQQI", NBD_REQUEST_MAGIC, 0, 0, self.handle, offset, n))
            magic, err, handle = struct.unpack(">IIQ", self._recv(16))
            if magic != NBD_SIMPLE_REPLY_MAGIC or handle != self.handle:
                raise BmmError("qemu-nbd sent a bad reply")
            if err:
                raise BmmError(f"qemu-nbd read error {err} at offset {offset}")
            data = self._recv(n)
            if not out and n == length:
                return data
            out += data
            offset += n
            length -= n
        return out

    def close(self) -> None:
        try:
            self.sock.sendall(struct.pack(">IHHQQI", NBD_REQUEST_MAGIC, 0, 2, self.handle + 1, 0, 0))
        except OSError:
            pass
        self.sock.close()


class _Qcow2Image:
    def __init__(self, path: str, size: int, timeout: float):
        self.path = path
        self.size = size
        self.map = self._map(timeout)
        self.tmp = tempfile.mkdtemp(prefix="bmm-nbd-")
        sock = os.path.join(self.tmp, "nbd.sock")
        self.log = open(os.path.join(self.tmp, "qemu-nbd.log"), "w+b")
        self.client = None
        try:
            self.proc = subprocess.Popen(
                ["qemu-nbd", "--read-only", "--format=qcow2", "--export-name=bmm", "--shared=1",
                 f"--socket={sock}", path],
                stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log)
        except FileNotFoundError:
            self._cleanup()
            raise FatalError("qemu-nbd is not installed (package qemu-utils)") from None
        try:
            deadline = time.monotonic() + timeout
            while True:
                if self.proc.poll() is not None:
                    self.log.seek(0)
                    cause = self.log.read().decode(errors="replace").strip().splitlines()
                    raise BmmError(f"image {path}: qemu-nbd failed: {cause[-1] if cause else 'no output'}")
                if os.path.exists(sock):
                    try:
                        self.client = _NbdClient(sock, "bmm", timeout)
                        break
                    except (ConnectionRefusedError, FileNotFoundError):
                        pass
                if time.monotonic() > deadline:
                    raise TimeoutExpired(f"image {path}: qemu-nbd did not start within {timeout:g} s")
                time.sleep(0.02)
            if self.client.size not in (-1, size):
                raise BmmError(f"image {path}: qemu-nbd exports {self.client.size} bytes, expected {size}")
        except BaseException:
            self.close()
            raise

    def _map(self, timeout: float) -> list[tuple[int, int, bool]]:
        res = run(["qemu-img", "map", "--output=json", "-f", "qcow2", self.path], timeout=timeout)
        out = []
        for e in json.loads(res.stdout):
            data = bool(e.get("data")) and not e.get("zero")
            out.append((int(e["start"]), int(e["length"]), data))
        return out

    def read(self, offset: int, length: int):
        try:
            return self.client.read(offset, length)
        except OSError as exc:
            raise BmmError(f"image {self.path}: reading through qemu-nbd failed: {exc}") from None

    def ranges(self, start: int, end: int) -> Iterator[tuple[int, int, bool]]:
        pos = start
        for s, n, data in self.map:
            e = s + n
            if e <= pos:
                continue
            if s >= end:
                break
            s = max(s, pos)
            e = min(e, end)
            if s > pos:              # a gap in the map: be safe and read it
                yield pos, s - pos, True
            yield s, e - s, data
            pos = e
        if pos < end:
            yield pos, end - pos, True

    def _cleanup(self) -> None:
        self.log.close()
        for name in os.listdir(self.tmp):
            os.unlink(os.path.join(self.tmp, name))
        os.rmdir(self.tmp)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        proc = getattr(self, "proc", None)
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            self.proc = None
            self._cleanup()


@contextmanager
def open_image(path: str, fmt: str, *, size: int | None = None, timeout: float = 60):
    """Random access to an image's guest-visible bytes: `.read(offset, length)`,
    `.ranges(start, end)` -> (offset, length, may_hold_data), `.size`."""
    if size is None:
        size = inspect_image(path, fmt).virtual_size
    if fmt == "raw":
        img = _RawImage(path, size)
    elif fmt == "qcow2":
        img = _Qcow2Image(path, size, timeout)
    else:
        raise BmmError(f"image {path}: unsupported format {fmt!r}")
    try:
        yield img
    finally:
        img.close()


# ---------------------------------------------------------------------------------------------
# blocks with zero runs

def _split_zero(buf, base: int, zero_block: int, zero: bytes) -> Iterator[Block]:
    """Blocks of one buffer read at relative offset base: data runs (views of buf) and zero runs.
    Only whole zero_block-sized blocks on the zero_block grid (relative offsets) count as zero,
    so every zero run starts and ends on that grid (or at the end of the range)."""
    n = len(buf)
    if n == len(zero) and buf == zero:
        yield Block(base, n, None)
        return
    view = memoryview(buf)
    zb = zero[:zero_block]
    first = (-base) % zero_block
    cuts = ([0] if first else []) + list(range(first, n, zero_block)) + [n]
    run_start, run_zero = 0, None
    for i, j in zip(cuts, cuts[1:]):
        # cheap test first: a block that starts or ends with a non-zero byte is data
        is_zero = j - i == zero_block and not buf[i] and not buf[j - 1] and buf[i:j] == zb
        if run_zero is None:
            run_zero = is_zero
        elif is_zero != run_zero:
            yield Block(base + run_start, i - run_start, None if run_zero else view[run_start:i])
            run_start, run_zero = i, is_zero
    yield Block(base + run_start, n - run_start, None if run_zero else view[run_start:n])


def _merge_zero(blocks: Iterator[Block]) -> Iterator[Block]:
    pending: Block | None = None
    for b in blocks:
        if b.length == 0:
            continue
        if b.data is None:
            if pending is not None and pending.offset + pending.length == b.offset:
                pending = Block(pending.offset, pending.length + b.length, None)
            else:
                if pending is not None:
                    yield pending
                pending = b
            continue
        if pending is not None:
            yield pending
            pending = None
        yield b
    if pending is not None:
        yield pending


def image_blocks(img, start: int = 0, length: int | None = None, *, chunk: int = CHUNK,
                 zero_block: int = ZERO_BLOCK) -> Iterator[Block]:
    """Blocks of an open image over [start, start+length), offsets relative to start.
    Data blocks are at most `chunk` bytes; consecutive zero runs are merged.

    The blocks depend on the image's bytes alone, never on what the map says: every chunk (on
    a grid relative to start) that may hold data is read whole and split by its content, and
    the map only spares reading the chunks that hold none. A map is not stable for the same
    bytes: ext4 reports an unwritten extent as a hole while its pages are out of the page
    cache and as data once they are in, so blocks cut where the map says would give two
    streams of one unchanged image different records (and a remembered digest would refuse a
    good copy, bmm.storage.digests)."""
    end = img.size if length is None else start + length
    if start < 0 or end > img.size or start > end:
        raise BmmError(f"range {start}+{end - start} is outside the image ({img.size} bytes)")
    total = end - start
    zero = bytes(chunk)

    def data_chunks() -> Iterator[int]:
        """The chunks (relative index) the map says may hold data, in order, each once."""
        after = 0
        for off, n, may_hold_data in img.ranges(start, end):
            if may_hold_data and n > 0:
                first, last = max((off - start) // chunk, after), (off - start + n - 1) // chunk
                yield from range(first, last + 1)
                after = max(after, last + 1)

    def holes(a: int, b: int) -> Iterator[Block]:
        """[a, b) holds no data (a on the chunk grid): what reading it would give, unread."""
        whole = a + (b - a) // chunk * chunk
        if whole > a:
            yield Block(a, whole - a, None)
        if b > whole:                   # a short last chunk: split as a read one would be
            yield from _split_zero(zero[:b - whole], whole, zero_block, zero)

    def raw_blocks():
        pos = 0
        for k in data_chunks():
            cs = k * chunk
            ce = min(cs + chunk, total)
            yield from holes(pos, cs)
            yield from _split_zero(img.read(start + cs, ce - cs), cs, zero_block, zero)
            pos = ce
        yield from holes(pos, total)

    return _merge_zero(raw_blocks())


def iter_image_blocks(path: str, fmt: str, *, start: int = 0, length: int | None = None,
                      chunk: int = CHUNK, zero_block: int = ZERO_BLOCK) -> Iterator[Block]:
    """The image's bytes over [start, start+length) as Blocks (offsets relative to start);
    zero runs come as data=None. A generator: close it (or exhaust it) to release qemu-nbd."""
    with open_image(path, fmt) as img:
        yield from image_blocks(img, start, length, chunk=chunk, zero_block=zero_block)


# ---------------------------------------------------------------------------------------------
# layout: where is the root filesystem?

@dataclass(frozen=True)
class Partition:
    number: int
    start: int          # bytes
    size: int           # bytes
    type: str           # MBR type ("83") or GPT type GUID (lower case)
    fstype: str | None  # what blkid finds in it
    label: str | None = None


@dataclass(frozen=True)
class Layout:
    kind: str                        # "filesystem" (bare fs image) | "disk" (partition table)
    table: str | None                # dos | gpt
    fstype: str | None               # of the root filesystem
    partitions: tuple[Partition, ...]
    root: Partition | None           # the root partition of a disk image
    size: int                        # image virtual size

    @property
    def root_offset(self) -> int:
        """Where the root filesystem starts in the image (the range bmm copies)."""
        return self.root.start if self.root else 0

    @property
    def root_size(self) -> int:
        return self.root.size if self.root else self.size


def _blkid(path: str, offset: int = 0, size: int | None = None) -> dict[str, str]:
    argv = ["blkid", "--probe", "--output", "export"]
    if offset:
        argv += ["--offset", str(offset)]
    if size is not None:
        argv += ["--size", str(size)]
    argv.append(path)
    res = run(argv, timeout=60, check=False)
    if res.returncode not in (0, 2):
        cause = res.stderr.strip() or f"exit {res.returncode}"
        raise BmmError(f"blkid cannot probe {path}: {cause}")
    out = {}
    for line in res.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key] = value
    return out


def _partitions(path: str) -> tuple[str, list[dict], int]:
    res = run(["sfdisk", "--json", path], timeout=60, check=False)
    if not res.ok:
        cause = res.stderr.strip().splitlines()
        raise BmmError(f"cannot read the partition table of {path}: {cause[-1] if cause else 'sfdisk failed'}")
    table = json.loads(res.stdout)["partitiontable"]
    return table.get("label", "?"), table.get("partitions", []), int(table.get("sectorsize", 512))


def choose_root(parts: list[Partition], *, image: str = "image") -> Partition:
    """The root filesystem's partition: a Linux filesystem, a GPT root type first, else the largest."""
    candidates = [p for p in parts if p.fstype in LINUX_FS and p.type.lower() not in GPT_NOT_ROOT_TYPES]
    if not candidates:
        if any(p.fstype == "LVM2_member" or p.type.lower() in ("8e", "e6d6d379-f507-44c2-a23c-238f2a3df928")
               for p in parts):
            raise BmmError(f"{image}: its root filesystem is on LVM inside the image; bmm needs a plain "
                           "filesystem or partition image")
        found = ", ".join(f"{p.number}:{p.fstype or 'unknown'}" for p in parts) or "no partitions"
        raise BmmError(f"{image}: no root filesystem found ({found})")
    typed = [p for p in candidates if p.type.lower() in GPT_ROOT_TYPES]
    pool = typed or candidates
    return max(pool, key=lambda p: p.size)


def _layout_of(path: str, size: int, probe_path: str) -> Layout:
    top = _blkid(probe_path)
    if top.get("TYPE") and not top.get("PTTYPE"):
        fstype = top["TYPE"]
        if fstype not in LINUX_FS:
            raise BmmError(f"image {path}: holds a {fstype} filesystem, not a Linux root filesystem")
        return Layout("filesystem", None, fstype, (), None, size)
    if not top.get("PTTYPE"):
        raise BmmError(f"image {path}: no root filesystem found (neither a filesystem nor a partition table)")
    label, raw_parts, sector = _partitions(probe_path)
    parts = []
    for i, p in enumerate(raw_parts, 1):
        node = p.get("node", "")
        digits = "".join(ch for ch in node[-3:] if ch.isdigit())
        number = int(digits) if digits else i
        start, length = int(p["start"]) * sector, int(p["size"]) * sector
        if start + length > size:
            raise BmmError(f"image {path}: partition {number} ends beyond the end of the image")
        ptype = str(p.get("type", "")).lower()
        if ptype in ("5", "f", "85"):        # extended container: its logical partitions are listed too
            continue
        probe = _blkid(probe_path, start, length)
        parts.append(Partition(number, start, length, ptype, probe.get("TYPE"), probe.get("LABEL")))
    root = choose_root(parts, image=f"image {path}")
    return Layout("disk", label, root.fstype, tuple(parts), root, size)


def probe_layout(path: str, fmt: str, info: ImageInfo | None = None, *, timeout: float = 60) -> Layout:
    """Find the root filesystem of an image (on the front-end, without staging a copy)."""
    info = info or inspect_image(path, fmt)
    if fmt == "raw":
        return _layout_of(path, info.virtual_size, path)
    # qcow2: a sparse stand-in file with only the bytes the probes read (partition tables at
    # both ends, the first MiB of every partition): a few MiB, whatever the image size.
    with open_image(path, fmt, size=info.virtual_size, timeout=timeout) as img, \
            tempfile.TemporaryDirectory(prefix="bmm-probe-") as tmp:
        probe = os.path.join(tmp, "probe.raw")
        size = info.virtual_size
        with open(probe, "wb") as f:
            f.truncate(size)

            def copy(offset: int, length: int) -> None:
                length = max(0, min(length, size - offset))
                if length:
                    f.seek(offset)
                    f.write(img.read(offset, length))

            copy(0, 2 * MiB)
            copy(max(0, size - MiB), MiB)
            f.flush()
            top = _blkid(probe)
            if top.get("PTTYPE"):
                _label, raw_parts, sector = _partitions(probe)
                for p in raw_parts:
                    copy(int(p["start"]) * sector, MiB)
            f.flush()
        return _layout_of(path, size, probe)
