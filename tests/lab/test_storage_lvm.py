"""bmm.storage.lvm against real LVM metadata on a loop device (activation disabled, as in the lab).

Each test gets its own VG (`bmmtest<random>`) on its own loop device, seen only through a
private LVM_SYSTEM_DIR; everything is removed afterwards and leaked loops fail the test.
"""

import os
import subprocess

import pytest

from bmm.errors import BmmError, ConfigError
from bmm.runner import Result
from bmm.storage import lvm
from tests.lab.lvm_support import MiB, lab_vg, lv_bytes
from tests.support import require_lab

TOOLS = ("lvm", "losetup", "blkdiscard", "blockdev")


@pytest.fixture
def lab():
    require_lab(*TOOLS)
    with lab_vg(256 * MiB) as vg:
        yield vg
    assert not vg.leaks, f"left behind: {vg.leaks}"


def fill(dev: str, pattern: bytes, size: int) -> None:
    with open(dev, "r+b") as f:
        f.write((pattern * (size // len(pattern) + 1))[:size])
        f.flush()
        os.fsync(f.fileno())


def test_vg_info(lab):
    require_lab(*TOOLS)
    info = lvm.vg_info(lab.ex, lab.vg)
    assert info.name == lab.vg
    assert info.extent_size == 4 * MiB
    assert info.free == info.size == info.extent_count * info.extent_size
    assert info.pvs[0].name == lab.pv and info.pe_start == 1 * MiB
    with pytest.raises(BmmError, match=r"node labnode: VG nosuchvg\w* not found"):
        lvm.vg_info(lab.ex, "nosuchvg" + lab.vg[-8:])
    with pytest.raises(BmmError, match=r"VG nosuchvg\w* not found"):
        lvm.list_lvs(lab.ex, "nosuchvg" + lab.vg[-8:])


def test_create_rounds_up_to_extents_and_lists(lab):
    require_lab(*TOOLS)
    lv = lvm.create_lv(lab.ex, lab.vg, "one-42-0", 10_000_000, tags=("bmm",))
    assert lv.size == 12 * MiB and lv.path == f"/dev/{lab.vg}/one-42-0"
    assert lv.mapper_path == f"/dev/mapper/{lab.vg}-one--42--0"
    lvm.create_lv(lab.ex, lab.vg, "home", 4 * MiB)
    assert lvm.lv_exists(lab.ex, lab.vg, "one-42-0")
    assert not lvm.lv_exists(lab.ex, lab.vg, "one-42")
    listed = lvm.list_lvs(lab.ex, lab.vg, prefix="one-")
    assert [(x.name, x.size, x.tags) for x in listed] == [("one-42-0", 12 * MiB, ("bmm",))]
    assert lvm.vg_info(lab.ex, lab.vg).free_count == lvm.vg_info(lab.ex, lab.vg).extent_count - 4
    with pytest.raises(BmmError, match="already exists"):
        lvm.create_lv(lab.ex, lab.vg, "home", MiB)


def test_create_says_how_much_space_is_missing(lab):
    require_lab(*TOOLS)
    free = lvm.vg_info(lab.ex, lab.vg).free
    with pytest.raises(BmmError) as err:
        lvm.create_lv(lab.ex, lab.vg, "big", free + 1)
    assert str(err.value) == (f"node labnode: VG {lab.vg} has only {free // MiB} MiB free, "
                              f"image needs {free // MiB + 4} MiB")
    assert not lvm.lv_exists(lab.ex, lab.vg, "big")


def test_names_are_validated_before_any_command(lab):
    require_lab(*TOOLS)
    for bad in ("-rf", "a b", "x;y", "", "a/b", "..", "$(id)"):
        with pytest.raises(ConfigError):
            lvm.create_lv(lab.ex, lab.vg, bad, MiB)
    with pytest.raises(ConfigError):
        lvm.vg_info(lab.ex, "--all")


def test_open_lv_maps_exactly_the_lv_and_detaches(lab):
    require_lab(*TOOLS)
    lvm.create_lv(lab.ex, lab.vg, "first", 8 * MiB)
    lv = lvm.create_lv(lab.ex, lab.vg, "second", 8 * MiB)
    with lvm.open_lv(lab.ex, lab.vg, "second") as dev:
        assert dev.startswith("/dev/loop")
        assert lab.loops_over_pv() == [dev]
        assert int(subprocess.run(["blockdev", "--getsize64", dev], capture_output=True,
                                  text=True).stdout) == lv.size
        fill(dev, b"SECOND", lv.size)
    assert lab.loops_over_pv() == []
    data = lv_bytes(lab, "second")
    assert data == (b"SECOND" * (lv.size // 6 + 1))[:lv.size]
    assert lv_bytes(lab, "first").count(b"SECOND") == 0


def test_open_lv_detaches_on_error(lab):
    require_lab(*TOOLS)
    lvm.create_lv(lab.ex, lab.vg, "x", 4 * MiB)
    with pytest.raises(RuntimeError):
        with lvm.open_lv(lab.ex, lab.vg, "x"):
            raise RuntimeError("boom")
    assert lab.loops_over_pv() == []


def test_open_lv_refuses_multi_segment_lv(lab):
    require_lab(*TOOLS)
    lvm.create_lv(lab.ex, lab.vg, "a", 4 * MiB)
    lvm.create_lv(lab.ex, lab.vg, "b", 4 * MiB)
    lab.lvm("lvextend", "-y", "-l", "+1", f"{lab.vg}/a")
    with pytest.raises(BmmError, match="has 2 segments"):
        with lvm.open_lv(lab.ex, lab.vg, "a"):
            pass
    assert lab.loops_over_pv() == []
    with pytest.raises(BmmError, match="not found"):
        with lvm.open_lv(lab.ex, lab.vg, "missing"):
            pass


def test_remove_lv_is_idempotent(lab):
    require_lab(*TOOLS)
    lvm.create_lv(lab.ex, lab.vg, "gone", 4 * MiB)
    assert lvm.remove_lv(lab.ex, lab.vg, "gone") is True
    assert lvm.remove_lv(lab.ex, lab.vg, "gone") is False
    assert lvm.list_lvs(lab.ex, lab.vg) == []


def test_wipe_then_next_tenant_sees_only_zeros(lab):
    """A tenant's data never reaches the next tenant: wipe on delete, recreate on the same
    extents, and not one byte of the old data is left."""
    require_lab(*TOOLS)
    neighbour = lvm.create_lv(lab.ex, lab.vg, "neighbour", 4 * MiB)
    lv = lvm.create_lv(lab.ex, lab.vg, "tenant-a", 40 * MiB)
    with lvm.open_lv(lab.ex, lab.vg, neighbour.name) as dev:
        fill(dev, b"KEEP", neighbour.size)
    with lvm.open_lv(lab.ex, lab.vg, lv.name) as dev:
        fill(dev, b"TENANT-A-SECRET!", lv.size)
    seen = []
    assert lvm.wipe_lv(lab.ex, lab.vg, lv.name, progress=lambda d, t: seen.append((d, t))) == lv.size
    assert seen[-1] == (lv.size, lv.size) and seen == sorted(seen)
    assert lvm.remove_lv(lab.ex, lab.vg, lv.name)
    nxt = lvm.create_lv(lab.ex, lab.vg, "tenant-b", 40 * MiB)
    data = lv_bytes(lab, nxt.name)
    assert len(data) == nxt.size and data.count(0) == len(data)
    with open(lab.pv, "rb") as f:
        assert b"TENANT-A-SECRET!" not in f.read()
    assert lv_bytes(lab, neighbour.name) == b"KEEP" * (neighbour.size // 4)


class NoBlkdiscard:
    """An executor whose node has no working blkdiscard (old util-linux, odd device)."""

    def __init__(self, ex):
        self.ex, self.node, self.calls = ex, ex.node, []

    def run(self, argv, **kw):
        self.calls.append(argv[0])
        if argv[0] == "blkdiscard":
            return Result(tuple(argv), 1, "", "blkdiscard: BLKZEROOUT ioctl failed: Operation not supported")
        return self.ex.run(argv, **kw)


def test_wipe_falls_back_to_dd_with_progress(lab):
    require_lab(*TOOLS)
    lv = lvm.create_lv(lab.ex, lab.vg, "old", 64 * MiB)
    with lvm.open_lv(lab.ex, lab.vg, lv.name) as dev:
        fill(dev, b"OLDDATA!", lv.size)
    ex = NoBlkdiscard(lab.ex)
    seen = []
    lvm.wipe_lv(ex, lab.vg, lv.name, progress=lambda d, t: seen.append(d))
    assert "dd" in ex.calls and ex.calls.count("blkdiscard") == 1       # tried once, then dd only
    assert len(seen) == 4 and seen[-1] == lv.size                       # 16 MiB steps
    data = lv_bytes(lab, lv.name)
    assert data.count(0) == len(data)
    assert lab.loops_over_pv() == []
