"""A compressed upload is not a disk: qemu-img calls any file raw, so inspect_image looks at
the bytes itself and refuses gzip/xz/bzip2/zstd before anything is copied."""

import gzip
import lzma
import shutil

import pytest

from bmm.errors import BmmError
from bmm.storage.image import compression, inspect_image

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img (qemu-utils)")


def disk(tmp_path):
    path = tmp_path / "disk.raw"
    path.write_bytes(b"\0" * 1024 + b"\x53\xef" + b"\1" * ((1 << 20) - 2))     # sector-aligned
    return path


@pytest.mark.parametrize("packer,name", [(gzip.compress, "gzip"), (lzma.compress, "xz")])
def test_a_compressed_raw_upload_is_refused_naming_its_compressor(tmp_path, packer, name):
    packed = tmp_path / "disk.raw.packed"
    packed.write_bytes(packer(disk(tmp_path).read_bytes()))
    assert compression(str(packed)) == name
    with pytest.raises(BmmError, match=f"is {name}-compressed, not a disk"):
        inspect_image(str(packed))
    with pytest.raises(BmmError, match="compressed"):
        inspect_image(str(packed), "raw")


def test_a_plain_raw_disk_is_not_taken_for_a_compressed_one(tmp_path):
    path = disk(tmp_path)
    assert compression(str(path)) is None
    assert inspect_image(str(path), "raw").virtual_size == path.stat().st_size
