"""Stream an image from the front-end into a block device on a node, without staging a copy.

The stream ("bmm stream, version 1") is a sequence of 44-byte ASCII record headers
`"<op> <a:20d> <b:20d>\\n"` (numbers right-aligned in 20 columns, so both a shell `read` and a
fixed-size read parse them), data following only D records:

    S 1 <size>                   start, protocol version 1; size > 0: the receiver may zero
                                 [0, size) up front instead of zeroing each Z range
    D <offset> <length>          followed by exactly <length> bytes to write at <offset>
    Z <offset> <length>          make [offset, offset+length) read as zeros
    E <data bytes> <zero bytes>  end; the totals let the receiver prove nothing was lost

The receiver answers `OK <data bytes> <zero bytes> <python|dd>` and exits 0 only after an
fsync of the device. It is one `sh -c <constant script> bmm-recv <auto|python|dd> <device>
<python code>` process on the node: the code is constant and the device path a positional
argument, never spliced into a script; with `auto` it execs the python3 receiver when the
node has python3 (no extra round trip to ask), else decodes the stream itself:
- python3: reads into one 4 MiB buffer and pwrite(2)s it; Z records become BLKZEROOUT
  (falling back to writing zeros). splice(2) into the device was measured slower.
- POSIX sh + coreutils `dd` + util-linux `blkdiscard` only: one `dd` per D record, reading
  exactly <length> bytes (`iflag=fullblock,count_bytes`) from the same stdin. A process per
  record is its cost, so it zeroes [0, size) once up front (`blkdiscard --zeroout`) and
  skips the Z records (per-range `dd if=/dev/zero` if blkdiscard fails), and the sender does
  not split data around zero runs shorter than 1 MiB.

Zero policy: the copy never relies on the target already being zero. Every zero run of the
image that is skipped, and the tail between the image's end and the end of the device (the
LV is rounded up to extents), gets a Z record, which the receiver turns into BLKZEROOUT
(`blkdiscard --zeroout`), falling back to writing zeros. So no byte of a previous tenant can
survive in a skipped range, even if the extents were never wiped (crash, manual lvremove,
a disk that came with old data). Where zeroing is free (SSD/NVMe with WRITE_ZEROES/unmap,
thin targets, loop files) this costs nothing; on a plain HDD it costs what writing the zeros
would. `target_zeroed=True` skips the Z records for a target the caller has *just* zeroed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from bmm.errors import BmmError, CorruptCopy, FatalError, TransientError
from bmm.storage.image import CHUNK, ZERO_BLOCK, Block, ImageInfo, image_blocks, inspect_image, open_image
from bmm.storage.lvm import blockdev_size, executor_node

VERSION = 1
HEADER = 44
MiB = 1 << 20
MERGE_LIMIT = 32 * MiB       # largest D record (a dd receiver spawns one dd per record)

Progress = Callable[[int, int], None]


def record(op: str, a: int, b: int) -> bytes:
    rec = b"%s %20d %20d\n" % (op.encode(), a, b)
    assert len(rec) == HEADER
    return rec


# Pieces of receiver code both stream versions use (version 2: bmm.storage.delivery).
PY_FAIL = r'''
def fail(kind, msg, code):
    sys.stderr.write("bmm-recv: %s: %s\n" % (kind, msg))
    sys.stderr.flush()
    os._exit(code)
'''

PY_ZERO = r'''
ZERO = bytes(4 << 20)

def zero(off, n):
    try:
        fcntl.ioctl(fd, 0x127f, struct.pack("QQ", off, n))   # BLKZEROOUT
        return
    except OSError:
        pass
    end = off + n
    while off < end:
        off += os.pwrite(fd, ZERO[:min(len(ZERO), end - off)], off)
'''

PY_RECEIVER = r'''
import errno, fcntl, os, stat, struct, sys
''' + PY_FAIL + r'''
dev = sys.argv[1]
try:
    if not stat.S_ISBLK(os.stat(dev).st_mode):
        fail("fatal", "%s is not a block device" % dev, 2)
    fd = os.open(dev, os.O_WRONLY)
except OSError as e:
    fail("fatal", "cannot open %s: %s" % (dev, e.strerror), 2)
try:
    fcntl.fcntl(0, 1031, 1 << 20)          # F_SETPIPE_SZ: fewer wake-ups
except OSError:
    pass
buf = bytearray(4 << 20)
view = memoryview(buf)

def readexact(n):
    got = 0
    while got < n:
        k = os.readv(0, [view[got:n]])
        if k == 0:
            fail("interrupted", "stream ended early", 3)
        got += k
    return view[:n]

def header():
    f = bytes(readexact(44)).split()
    if len(f) != 3 or not f[1].isdigit() or not f[2].isdigit():
        fail("fatal", "bad record header", 2)
    return f[0], int(f[1]), int(f[2])
''' + PY_ZERO + r'''
op, a, b = header()
if op != b"S" or a != 1:
    fail("fatal", "not a bmm stream version 1", 2)
data = zeroed = 0
try:
    while True:
        op, a, b = header()
        if op == b"D":
            pos, left = a, b
            while left:
                chunk = readexact(min(left, len(buf)))
                k = 0
                while k < len(chunk):
                    k += os.pwrite(fd, chunk[k:], pos + k)
                pos += k
                left -= k
            data += b
        elif op == b"Z":
            zero(a, b)
            zeroed += b
        elif op == b"E":
            if a != data or b != zeroed:
                fail("interrupted", "stream totals differ (got %d+%d)" % (data, zeroed), 3)
            os.fsync(fd)
            os.close(fd)
            sys.stdout.write("OK %d %d python\n" % (data, zeroed))
            sys.stdout.flush()
            os._exit(0)
        else:
            fail("fatal", "bad record type", 2)
except OSError as e:
    fail("fatal", "writing %s failed: %s" % (dev, e.strerror), 4)
'''

SH_RECEIVER = r'''
mode=$1
dev=$2
fail() { echo "bmm-recv: $1: $2" >&2; exit "$3"; }
if [ "$mode" != dd ] && command -v python3 >/dev/null 2>&1; then
  exec python3 -I -S -c "$3" "$dev"
fi
[ "$mode" = python ] && fail fatal "python3 is not installed" 2
[ -b "$dev" ] || fail fatal "$dev is not a block device" 2
IFS=' ' read -r op a b || fail interrupted "stream ended early" 3
[ "$op" = S ] && [ "$a" = 1 ] || fail fatal "not a bmm stream version 1" 2
# One process per record is this receiver's cost, so zero the whole target once up front
# (BLKZEROOUT) and skip the Z records; without blkdiscard, zero each Z range with dd.
allzero=0
[ "$b" -gt 0 ] && blkdiscard --zeroout --length "$b" "$dev" 2>/dev/null && allzero=1
d=0
z=0
while IFS=' ' read -r op a b; do
  case $a$b in *[!0-9]*|'') fail fatal "bad record header" 2 ;; esac
  case $op in
  D) dd of="$dev" bs=4M iflag=fullblock,count_bytes oflag=seek_bytes seek="$a" count="$b" \
        conv=notrunc status=none || fail fatal "writing $dev failed" 4
     d=$((d + b)) ;;
  Z) if [ $allzero = 0 ]; then
       dd if=/dev/zero of="$dev" bs=4M iflag=count_bytes oflag=seek_bytes seek="$a" count="$b" \
          conv=notrunc status=none || fail fatal "zeroing $dev failed" 4
     fi
     z=$((z + b)) ;;
  E) [ "$a" = "$d" ] && [ "$b" = "$z" ] || fail interrupted "stream totals differ (got $d+$z)" 3
     sync "$dev" 2>/dev/null || sync
     echo "OK $d $z dd"
     exit 0 ;;
  *) fail fatal "bad record type" 2 ;;
  esac
done
fail interrupted "stream ended early" 3
'''


RECEIVERS = ("auto", "python", "dd")


def receiver_argv(kind: str, device: str) -> list[str]:
    """One `sh` process on the node: with kind auto it execs the python3 receiver when the
    node has python3, else decodes the stream itself with dd (no extra round trip to ask)."""
    if kind not in RECEIVERS:
        raise BmmError(f"unknown receiver {kind!r} ({', '.join(RECEIVERS)})")
    return ["sh", "-c", SH_RECEIVER, "bmm-recv", kind, device, PY_RECEIVER]


def encode(blocks: Iterator[Block], length: int, device_size: int, *, target_zeroed: bool = False,
           min_zero: int = 256 * 1024, merge_limit: int = MERGE_LIMIT,
           stats: dict | None = None, version: int = VERSION) -> Iterator[bytes | memoryview]:
    """The stream for blocks covering [0, length) of a device of device_size bytes.
    stats (if given) is updated with 'pos' (bytes of the device dealt with), 'data', 'zero'.
    version 2 (bmm.storage.delivery) has the same records, then a MAC trailer of its own."""
    st = stats if stats is not None else {}
    st.update(pos=0, data=0, zero=0)
    zeros = memoryview(bytes(CHUNK))
    # S carries the size of the target area when Z records will zero parts of it, so a
    # receiver may zero it all at once up front instead (0: the target is known to be zero)
    yield record("S", version, 0 if target_zeroed else device_size)
    pend: list = []
    pend_off = pend_len = 0

    def flush():
        nonlocal pend, pend_len
        if pend_len:
            yield record("D", pend_off, pend_len)
            yield from pend
            st["data"] += pend_len
            st["pos"] = pend_off + pend_len
        pend, pend_len = [], 0

    def zero_run(off: int, n: int):
        if not target_zeroed:
            yield record("Z", off, n)
            st["zero"] += n
        st["pos"] = off + n

    for b in blocks:
        if b.data is None and b.length < min_zero:
            pieces = [zeros[i:i + min(CHUNK, b.length - i)] for i in range(0, b.length, CHUNK)]
        elif b.data is None:
            yield from flush()
            yield from zero_run(b.offset, b.length)
            continue
        else:
            pieces = [b.data]
        if pend_len and (pend_off + pend_len != b.offset or pend_len + b.length > merge_limit):
            yield from flush()
        if not pend_len:
            pend_off = b.offset
        pend.extend(pieces)
        pend_len += b.length
    yield from flush()
    if st["pos"] != length:
        raise BmmError(f"internal: image blocks ended at {st['pos']}, expected {length}")
    if device_size > length:
        yield from zero_run(length, device_size - length)
    yield record("E", st["data"], st["zero"])


@dataclass(frozen=True)
class CopyResult:
    receiver: str
    data_bytes: int     # bytes sent
    zero_bytes: int     # bytes zeroed on the node without being sent
    seconds: float
    digest: str = ""    # version 2 (bmm.storage.delivery): the stream's SHA-256, as the node computed it
    hashed: bool = True  # version 2: False when the front-end knew the digest and did not hash
    node_cpu: float = 0.0  # version 2: CPU seconds of the receiver on the node

    @property
    def bytes_per_second(self) -> float:
        return (self.data_bytes + self.zero_bytes) / self.seconds if self.seconds else 0.0


def copy_image_to_lv(ex, image_path: str, fmt: str, device: str, size: int, *,
                     progress: Progress | None = None, timeout: float = 3600,
                     offset: int = 0, length: int | None = None,
                     receiver: str = "auto", target_zeroed: bool = False,
                     chunk: int = CHUNK, zero_block: int = ZERO_BLOCK,
                     info: ImageInfo | None = None) -> CopyResult:
    """Write the image's bytes [offset, offset+length) to [0, length) of `device` on the node,
    and zero [length, size). size is how much of the device bmm owns (the LV size); the device
    must be at least that big. For a whole-disk image pass the root partition's range
    (image.probe_layout) so the LV holds a bare filesystem.

    progress(done, size) is called at least every 1% of size. Raises TransientError if the
    copy is interrupted (link lost, receiver killed, stream cut); the caller removes the LV.
    """
    node = executor_node(ex)
    info = info or inspect_image(image_path, fmt)
    if length is None:
        length = info.virtual_size - offset
    if offset < 0 or length <= 0 or offset + length > info.virtual_size:
        raise BmmError(f"copy range {offset}+{length} is outside image {image_path} ({info.virtual_size} bytes)")
    if length > size:
        raise BmmError(f"image {image_path} needs {length} bytes but the target has only {size}", node=node)
    dev_size = blockdev_size(ex, device)
    if dev_size < size:
        raise BmmError(f"{device} has {dev_size} bytes, expected at least {size}", node=node)
    argv = receiver_argv(receiver, device)
    # a dd receiver spawns a process per record: don't split data for zero runs under 1 MiB
    min_zero = 256 * 1024 if receiver == "python" else MiB
    stats: dict = {}
    step = max(1, size // 100)
    last = {"reported": -step}
    source_error: list[BaseException] = []
    started = time.monotonic()

    with open_image(image_path, fmt, size=info.virtual_size) as img:
        stream = encode(image_blocks(img, offset, length, chunk=chunk, zero_block=zero_block), length, size,
                        target_zeroed=target_zeroed, min_zero=min_zero, stats=stats)

        def source():
            try:
                piece = next(stream, None)
            except BaseException as exc:       # a read error on the front-end: not the node's fault
                source_error.append(exc)
                raise
            if progress and stats.get("pos", 0) - last["reported"] >= step and piece is not None:
                last["reported"] = stats["pos"]
                progress(min(stats["pos"], size), size)
            return piece

        try:
            res = ex.run_stream_in(argv, source, timeout=timeout)
        except BaseException as exc:
            stream.close()
            if source_error:
                raise
            raise _classify(exc, image_path, device, node) from None
    got = res.stdout.split()
    if got[:1] != ["OK"] or got[1:3] != [str(stats["data"]), str(stats["zero"])] or len(got) != 4:
        raise TransientError(f"copy of {image_path} to {device} was not confirmed "
                             f"(receiver said {res.stdout.strip()!r})", node=node)
    if progress:
        progress(size, size)
    return CopyResult(got[3], stats["data"], stats["zero"], time.monotonic() - started)


def _classify(exc: BaseException, image_path: str, device: str, node: str | None) -> BaseException:
    what = f"copy of {image_path} to {device}"
    if isinstance(exc, TransientError):
        return TransientError(f"{what} interrupted: {exc.reason}", node=node)
    if isinstance(exc, FatalError):
        return exc
    if isinstance(exc, BmmError):
        text = exc.reason
        for kind, error in (("fatal", BmmError), ("corrupt", CorruptCopy)):   # corrupt: the MAC differs
            if f"bmm-recv: {kind}:" in text:
                return error(f"{what} failed: {text.split(f'bmm-recv: {kind}:', 1)[1].strip()}", node=node)
        cause = text.split("bmm-recv: interrupted:", 1)[1].strip() if "bmm-recv: interrupted:" in text else text
        return TransientError(f"{what} interrupted: {cause}", node=node)
    if isinstance(exc, OSError):     # e.g. BrokenPipeError: the receiver went away mid-stream
        return TransientError(f"{what} interrupted: the receiver stopped ({exc.strerror or exc})", node=node)
    return exc
