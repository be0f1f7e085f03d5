"""image_blocks cuts an image by its bytes alone: the same bytes give the same blocks (so the
same stream, and a remembered digest that still holds) whatever the file system's map says.

Seen in CI: ext4 reports an unwritten extent (mkfs.ext4 leaves them in its images) as a hole
while its pages are out of the page cache and as data once something read them. Blocks cut on
the map then differed between two copies of one unchanged image, and the second copy, sent
with the first one's remembered digest, failed with "checksum mismatch"."""

import os

import pytest

from bmm.storage.image import MiB, image_blocks, open_image

CHUNK, ZERO_BLOCK = 4 * MiB, 64 * 1024


class MappedBytes:
    """An image of `data` whose map is whatever the test says (offset, length, may_hold_data)."""

    def __init__(self, data: bytes, mapped):
        self.data, self.size, self.mapped = data, len(data), mapped

    def read(self, offset, length):
        return self.data[offset:offset + length]

    def ranges(self, start, end):
        for off, n, may in self.mapped:
            lo, hi = max(off, start), min(off + n, end)
            if lo < hi:
                yield lo, hi - lo, may


def cut(img, start=0, length=None):
    return [(b.offset, b.length, None if b.data is None else bytes(b.data))
            for b in image_blocks(img, start, length, chunk=CHUNK, zero_block=ZERO_BLOCK)]


def sample() -> bytes:
    """Data, zeros a file system could hold either way, unaligned edges, a short last chunk."""
    data = bytearray(9 * MiB + 1000)
    data[:MiB] = os.urandom(MiB)
    data[5 * MiB + 7:5 * MiB + 10007] = os.urandom(10000)
    data[-300:] = os.urandom(300)
    return bytes(data)


@pytest.mark.parametrize("window", [(0, None), (MiB + 5, 6 * MiB), (4 * MiB, 5 * MiB + 1000)])
def test_the_same_bytes_give_the_same_blocks_whatever_the_map_says(window):
    data = sample()
    n = len(data)
    everything = MappedBytes(data, [(0, n, True)])
    maps = {
        "tight holes": [(0, MiB, True), (MiB, 4 * MiB + 7, False), (5 * MiB + 7, 10000, True),
                        (5 * MiB + 10007, n - 300 - 5 * MiB - 10007, False), (n - 300, 300, True)],
        "an unwritten extent read as data": [(0, MiB + 4096 + 2 * MiB, True), (3 * MiB + 4096, 2 * MiB, False),
                                             (5 * MiB + 4096, n - 5 * MiB - 4096, True)],
        "4 KiB extents": [(o, 4096, True) if o < MiB or 5 * MiB <= o < 5 * MiB + 12288 or o >= n - 4096
                          else (o, min(4096, n - o), False) for o in range(0, n, 4096)],
    }
    want = cut(everything, *window)
    assert b"".join(d if d is not None else bytes(ln) for _, ln, d in want) == data[window[0]:][:window[1] or n]
    for name, mapped in maps.items():
        assert cut(MappedBytes(data, mapped), *window) == want, name


def test_chunks_the_map_calls_empty_are_not_read():
    data = bytearray(sample())
    data[4 * MiB:8 * MiB] = bytes(4 * MiB)          # chunk 1 holds nothing, and the map says so
    data = bytes(data)
    reads = []

    class Counting(MappedBytes):
        def read(self, offset, length):
            reads.append((offset, length))
            return super().read(offset, length)

    n = len(data)
    blocks = cut(Counting(data, [(0, MiB, True), (MiB, n - 300 - MiB, False), (n - 300, 300, True)]))
    assert reads == [(0, CHUNK), (8 * MiB, n - 8 * MiB)]
    assert blocks == cut(MappedBytes(data, [(0, n, True)]))


def test_an_ext4_unwritten_extent_in_and_out_of_the_page_cache_gives_the_same_blocks(tmp_path):
    """The real file system: an fallocated (unwritten) extent, unaligned, between data, its
    pages dropped from the cache and then read in (ext4's map changes between the two)."""
    path = tmp_path / "image.raw"
    data = sample()
    with open(path, "wb") as f:
        f.truncate(len(data))
        f.write(data[:MiB])
        f.seek(5 * MiB)
        f.write(data[5 * MiB:5 * MiB + 12288])
        f.seek(len(data) - 300)
        f.write(data[-300:])
        try:
            os.posix_fallocate(f.fileno(), MiB + 4096, 2 * MiB)
        except OSError as exc:
            pytest.fail(f"fallocate on {tmp_path}: {exc}")
        f.flush()
        os.fsync(f.fileno())

    def blocks_now():
        with open_image(str(path), "raw", size=len(data)) as img:
            return cut(img)

    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        cold = blocks_now()
        assert os.pread(fd, len(data), 0) == data
        warm = blocks_now()
    finally:
        os.close(fd)
    assert cold == warm == cut(MappedBytes(data, [(0, len(data), True)]))
