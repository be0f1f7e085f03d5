"""Image inspection, zero-run detection and streaming into an LV (python and dd receivers)."""

import os
import subprocess

import pytest

from bmm.context import build_context_iso, read_context_sh, write_context_lv
from bmm.errors import BmmError, TransientError
from bmm.storage import image, lvm, stream
from tests.lab.lvm_support import (
    MiB,
    build_disk_image,
    build_fs_image,
    build_rootfs_dir,
    lab_vg,
    lv_bytes,
)
from tests.support import require_lab

TOOLS = ("lvm", "losetup", "blkdiscard", "blockdev", "qemu-img", "qemu-nbd", "sfdisk", "blkid", "mkfs.ext4")
MARKER = b"PREVIOUS-TENANT!"


@pytest.fixture
def lab():
    require_lab(*TOOLS)
    with lab_vg(256 * MiB) as vg:
        yield vg
    assert not vg.leaks, f"left behind: {vg.leaks}"


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    require_lab(*TOOLS)
    d = tmp_path_factory.mktemp("images")
    sparse = d / "sparse.raw"
    with open(sparse, "wb") as f:
        f.truncate(40 * MiB)
        f.seek(1 * MiB)
        f.write(os.urandom(3 * MiB))
        f.seek(10 * MiB)
        f.write(bytes(2 * MiB))                   # written zeros: found by content, not by SEEK_HOLE
        f.seek(20 * MiB + 5000)
        f.write(os.urandom(100_000))              # unaligned data
        f.seek(40 * MiB - 300)
        f.write(b"end" * 100)                     # data up to the last byte
    qcow2 = d / "sparse.qcow2"
    subprocess.run(["qemu-img", "convert", "-c", "-O", "qcow2", sparse, qcow2], check=True)
    root = d / "root"
    build_rootfs_dir(str(root))
    fs = d / "fs.raw"
    build_fs_image(str(fs), str(root), 32 * MiB)
    disk = d / "disk.raw"
    build_disk_image(str(disk), str(fs))
    disk_qcow2 = d / "disk.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", disk, disk_qcow2], check=True)
    return {"sparse": str(sparse), "qcow2": str(qcow2), "fs": str(fs), "disk": str(disk),
            "disk_qcow2": str(disk_qcow2), "dir": str(d)}


def poison(lab, lv) -> None:
    """Fill an LV with a previous tenant's bytes."""
    with lvm.open_lv(lab.ex, lab.vg, lv.name) as dev, open(dev, "r+b") as f:
        f.write((MARKER * (lv.size // len(MARKER) + 1))[:lv.size])
        f.flush()
        os.fsync(f.fileno())


def test_inspect_image(images, tmp_path):
    require_lab(*TOOLS)
    raw = image.inspect_image(images["sparse"], "raw")
    assert (raw.format, raw.virtual_size) == ("raw", 40 * MiB) and raw.actual_size < 10 * MiB
    q = image.inspect_image(images["qcow2"])
    assert (q.format, q.virtual_size) == ("qcow2", 40 * MiB)
    # declared raw: a qcow2 file is then just bytes, never opened as qcow2
    assert image.inspect_image(images["qcow2"], "raw").format == "raw"
    overlay = tmp_path / "overlay.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", images["sparse"], "-F", "raw", overlay],
                   check=True)
    with pytest.raises(BmmError, match="has a backing file"):
        image.inspect_image(str(overlay), "qcow2")
    vmdk = tmp_path / "x.vmdk"
    subprocess.run(["qemu-img", "create", "-q", "-f", "vmdk", vmdk, "1M"], check=True)
    with pytest.raises(BmmError, match="unsupported format 'vmdk'"):
        image.inspect_image(str(vmdk))
    with pytest.raises(BmmError, match="unsupported format 'vmdk'"):
        image.inspect_image(str(vmdk), "vmdk")
    with pytest.raises(BmmError, match="does not exist"):
        image.inspect_image(str(tmp_path / "nope"), "raw")


@pytest.mark.parametrize("kind", ["sparse", "qcow2"])
def test_blocks_skip_zero_runs(images, kind):
    require_lab(*TOOLS)
    fmt = "raw" if kind == "sparse" else "qcow2"
    ref = open(images["sparse"], "rb").read()
    out = bytearray(len(ref))
    data = 0
    pos = 0
    for b in image.iter_image_blocks(images[kind], fmt):
        assert b.offset == pos
        pos += b.length
        if b.data is not None:
            assert len(b.data) == b.length
            out[b.offset:b.offset + b.length] = b.data
            data += b.length
        else:
            assert b.offset % 4096 == 0            # hole (fs block) or zero-block aligned
    assert pos == len(ref) and bytes(out) == ref
    assert data < 4 * MiB                       # 3 MiB + 100 kB + the tail: the 2 MiB of zeros not sent
    window = list(image.iter_image_blocks(images[kind], fmt, start=MiB + 512, length=5 * MiB))
    assert sum(b.length for b in window) == 5 * MiB


@pytest.mark.parametrize("kind", ["sparse", "qcow2"])
@pytest.mark.parametrize("receiver", ["python", "dd"])
def test_copy_is_exact_and_leaves_no_old_bytes(lab, images, kind, receiver):
    require_lab(*TOOLS)
    fmt = "raw" if kind == "sparse" else "qcow2"
    lv = lvm.create_lv(lab.ex, lab.vg, "one-1-0", 44 * MiB)       # 4 MiB more than the image
    poison(lab, lv)
    seen = []
    with lvm.open_lv(lab.ex, lab.vg, lv.name) as dev:
        res = stream.copy_image_to_lv(lab.ex, images[kind], fmt, dev, lv.size, receiver=receiver,
                                      progress=lambda d, t: seen.append((d, t)))
    assert res.receiver == receiver
    assert res.data_bytes < 8 * MiB and res.data_bytes + res.zero_bytes == lv.size
    got = lv_bytes(lab, lv.name)
    ref = open(images["sparse"], "rb").read()
    assert got[:len(ref)] == ref
    assert got[len(ref):].count(0) == lv.size - len(ref)
    assert MARKER not in got
    assert seen[-1] == (lv.size, lv.size)
    assert all(t == lv.size for _, t in seen) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    gaps = [b[0] - a[0] for a, b in zip([(0, 0)] + seen, seen)]
    assert max(gaps) <= lv.size * 0.05 + stream.MERGE_LIMIT      # at least every few percent


def test_auto_receiver_prefers_python(lab, images):
    require_lab(*TOOLS)
    lv = lvm.create_lv(lab.ex, lab.vg, "auto", 40 * MiB)
    with lvm.open_lv(lab.ex, lab.vg, lv.name) as dev:
        res = stream.copy_image_to_lv(lab.ex, images["sparse"], "raw", dev, lv.size)
    assert res.receiver == "python"


def test_target_zeroed_sends_no_zero_records(lab, images):
    require_lab(*TOOLS)
    lv = lvm.create_lv(lab.ex, lab.vg, "fresh", 40 * MiB)
    lvm.wipe_lv(lab.ex, lab.vg, lv.name)
    with lvm.open_lv(lab.ex, lab.vg, lv.name) as dev:
        res = stream.copy_image_to_lv(lab.ex, images["sparse"], "raw", dev, lv.size, target_zeroed=True)
    assert res.zero_bytes == 0
    assert lv_bytes(lab, lv.name) == open(images["sparse"], "rb").read()


@pytest.mark.parametrize("kind", ["disk", "disk_qcow2"])
def test_copy_root_partition_of_whole_disk_image(lab, images, kind):
    require_lab(*TOOLS)
    fmt = "raw" if kind == "disk" else "qcow2"
    layout = image.probe_layout(images[kind], fmt)
    assert layout.kind == "disk" and layout.table == "dos" and layout.fstype == "ext4"
    assert [p.fstype for p in layout.partitions] == ["ext4", "swap"]
    assert layout.root_offset == MiB and layout.root_size == os.path.getsize(images["fs"])
    lv = lvm.create_lv(lab.ex, lab.vg, "root", layout.root_size)
    poison(lab, lv)
    with lvm.open_lv(lab.ex, lab.vg, lv.name) as dev:
        stream.copy_image_to_lv(lab.ex, images[kind], fmt, dev, lv.size, offset=layout.root_offset,
                                length=layout.root_size)
    assert lv_bytes(lab, lv.name) == open(images["fs"], "rb").read()
    bare = image.probe_layout(images["fs"], "raw")
    assert (bare.kind, bare.fstype, bare.root_offset, bare.root_size) == ("filesystem", "ext4", 0,
                                                                          os.path.getsize(images["fs"]))


def test_probe_layout_errors(tmp_path):
    require_lab(*TOOLS)
    blank = tmp_path / "blank.raw"
    blank.write_bytes(bytes(4 * MiB))
    with pytest.raises(BmmError, match="no root filesystem found"):
        image.probe_layout(str(blank), "raw")
    swaponly = tmp_path / "swap.raw"
    with open(swaponly, "wb") as f:
        f.truncate(8 * MiB)
    subprocess.run(["sfdisk", "--quiet", swaponly], input="label: dos\ntype=82\n", text=True, check=True)
    with pytest.raises(BmmError, match=r"no root filesystem found \(1:unknown\)"):
        image.probe_layout(str(swaponly), "raw")


class CutStream:
    """An executor (LocalExecutor or SshSession) whose link drops after `keep` pieces of the stream."""

    def __init__(self, ex, keep):
        self.ex, self.keep = ex, keep

    def __getattr__(self, name):
        return getattr(self.ex, name)

    def run_stream_in(self, argv, source, *, timeout):
        left = [self.keep]

        def cut():
            if left[0] == 0:
                return None
            left[0] -= 1
            return source()
        return self.ex.run_stream_in(argv, cut, timeout=timeout)


class KilledReceiver(CutStream):
    """The receiver process dies mid-stream (node crash, OOM kill)."""

    def run_stream_in(self, argv, source, *, timeout):
        return self.ex.run_stream_in(["sh", "-c", "head -c 3000000 >/dev/null; kill -9 $$"], source,
                                     timeout=timeout)


@pytest.mark.parametrize("receiver", ["python", "dd"])
def test_interrupted_copy_is_transient(lab, images, receiver):
    require_lab(*TOOLS)
    lv = lvm.create_lv(lab.ex, lab.vg, "partial", 40 * MiB)
    with lvm.open_lv(lab.ex, lab.vg, lv.name) as dev:
        with pytest.raises(TransientError, match="interrupted: stream ended early"):
            stream.copy_image_to_lv(CutStream(lab.ex, 4), images["sparse"], "raw", dev, lv.size,
                                    receiver=receiver)
        with pytest.raises(TransientError, match="interrupted"):
            stream.copy_image_to_lv(KilledReceiver(lab.ex, 0), images["sparse"], "raw", dev, lv.size,
                                    receiver=receiver)
    assert lab.loops_over_pv() == []


def test_copy_refuses_bad_targets(lab, images):
    require_lab(*TOOLS)
    with pytest.raises(BmmError, match="is not a usable block device") as err:
        stream.copy_image_to_lv(lab.ex, images["sparse"], "raw", "/dev/nonexistent-bmm", 40 * MiB)
    assert not isinstance(err.value, TransientError)
    assert not os.path.exists("/dev/nonexistent-bmm")
    lv = lvm.create_lv(lab.ex, lab.vg, "small", 8 * MiB)
    with lvm.open_lv(lab.ex, lab.vg, lv.name) as dev:
        with pytest.raises(BmmError, match="needs 41943040 bytes but the target has only"):
            stream.copy_image_to_lv(lab.ex, images["sparse"], "raw", dev, lv.size)
        with pytest.raises(BmmError, match="has 8388608 bytes, expected at least"):
            stream.copy_image_to_lv(lab.ex, images["sparse"], "raw", dev, 40 * MiB)


def test_write_context_lv(lab, tmp_path):
    require_lab(*TOOLS, "xorriso")
    ctx = tmp_path / "context.sh"
    ctx.write_text("# Context variables generated by OpenNebula\nETH0_MAC='02:00:00:00:00:01'\n"
                   "SET_HOSTNAME='vm42'\n")
    iso = tmp_path / "disk.1"
    build_context_iso(read_context_sh(str(ctx)), [], str(iso), macs=["52:54:00:00:01:01"])
    lv = lvm.create_lv(lab.ex, lab.vg, "one-42-ctx", MiB)
    poison(lab, lv)
    lv = write_context_lv(lab.ex, lab.vg, "one-42-ctx", str(iso))
    data = lv_bytes(lab, lv.name)
    assert data.startswith(iso.read_bytes()) and data[iso.stat().st_size:].count(0) == lv.size - iso.stat().st_size
    with lvm.open_lv(lab.ex, lab.vg, lv.name) as dev:
        probe = subprocess.run(["blkid", "-p", "-o", "export", dev], capture_output=True, text=True).stdout
    assert "LABEL=CONTEXT" in probe and "TYPE=iso9660" in probe
    big = tmp_path / "big"
    big.write_bytes(os.urandom(5 * MiB))
    build_context_iso(read_context_sh(str(ctx)), [(str(big), "big")], str(iso), macs=["52:54:00:00:01:01"])
    lv2 = write_context_lv(lab.ex, lab.vg, "one-42-ctx", str(iso))
    assert lv2.size >= iso.stat().st_size > lv.size
    assert lv_bytes(lab, lv2.name).startswith(iso.read_bytes())
