"""LVM on a node, driven through an executor (SshSession in production, LocalExecutor in tests).

Every function takes the executor first and builds argv lists only. Nothing here assumes it
runs on the node itself.

Two worlds are supported:
- a node whose kernel has device-mapper: LVs are activated (`lvchange -ay`) and used through
  `/dev/<vg>/<lv>`;
- LVM metadata with activation disabled (`global/activation = 0`, e.g. the lab's private
  LVM_SYSTEM_DIR, or a home OS without device-mapper): a linear LV is exactly a byte range of
  its PV, so `open_lv` maps it with a loop device at `pe_start + first_pe * extent_size`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from bmm import settings
from bmm.errors import BmmError, ConfigError, TimeoutExpired
from bmm.settings import Setting
from bmm.transport import executor_node

LVM_TIMEOUT = 120.0
MiB = 1 << 20

# LVM's own rule for VG/LV names; we also refuse a leading '-' so a name is never an option.
_NAME = re.compile(r"^[A-Za-z0-9+_.][A-Za-z0-9+_.-]{0,126}$")

Progress = Callable[[int, int], None]


def check_name(kind: str, name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name) or name in (".", ".."):
        raise ConfigError(f"invalid LVM {kind} name {name!r}")
    return name


def mapper_name(vg: str, lv: str) -> str:
    """The device-mapper name of vg/lv: every '-' in either name is doubled."""
    return f"{vg.replace('-', '--')}-{lv.replace('-', '--')}"


def mib(n: int) -> str:
    return f"{n / MiB:.0f}" if n % MiB == 0 else f"{n / MiB:.1f}"


@dataclass(frozen=True)
class Pv:
    name: str
    pe_start: int


@dataclass(frozen=True)
class VgInfo:
    name: str
    size: int
    free: int
    extent_size: int
    extent_count: int
    free_count: int
    pvs: tuple[Pv, ...]

    @property
    def pe_start(self) -> int:
        """pe_start of the VG's first PV (all bmm VGs have one PV in practice)."""
        return self.pvs[0].pe_start if self.pvs else 0

    def pv(self, name: str) -> Pv:
        for pv in self.pvs:
            if pv.name == name:
                return pv
        raise BmmError(f"PV {name} of VG {self.name} is not visible to LVM")


@dataclass(frozen=True)
class Lv:
    vg: str
    name: str
    size: int
    attr: str = ""
    tags: tuple[str, ...] = ()

    @property
    def path(self) -> str:
        return f"/dev/{self.vg}/{self.name}"

    @property
    def mapper_path(self) -> str:
        return f"/dev/mapper/{mapper_name(self.vg, self.name)}"

    @property
    def active(self) -> bool:
        return len(self.attr) > 4 and self.attr[4] == "a"


@dataclass(frozen=True)
class Segment:
    pv: str
    first_pe: int
    last_pe: int
    segtype: str

    @property
    def extents(self) -> int:
        return self.last_pe - self.first_pe + 1


def _report(ex, argv: list[str], vg: str | None = None) -> list[list[str]]:
    """Run an LVM report command and split its rows (stdout only; stderr carries warnings)."""
    try:
        res = ex.run(argv, timeout=LVM_TIMEOUT)
    except BmmError as exc:
        if vg and ("Cannot process volume group" in exc.reason or f'"{vg}" not found' in exc.reason
                   or f"{vg} not found" in exc.reason):
            raise BmmError(f"VG {vg} not found", node=executor_node(ex)) from None
        raise
    rows = []
    for line in res.stdout.splitlines():
        line = line.strip()
        if line:
            rows.append([field.strip() for field in line.split("|")])
    return rows


_REPORT = ["--noheadings", "--units", "b", "--nosuffix", "--separator", "|"]


def vg_info(ex, vg: str) -> VgInfo:
    """Size, free space, extent size and PVs (with pe_start) of a VG."""
    check_name("VG", vg)
    node = executor_node(ex)
    rows = _report(ex, ["vgs", *_REPORT, "-o",
                        "vg_name,vg_size,vg_free,vg_extent_size,vg_extent_count,vg_free_count", vg], vg)
    if not rows:
        raise BmmError(f"VG {vg} not found", node=node)
    name, size, free, ext, count, free_count = rows[0][:6]
    pvs = tuple(Pv(r[0], int(r[1])) for r in
                _report(ex, ["pvs", *_REPORT, "-o", "pv_name,pe_start,vg_name"]) if len(r) >= 3 and r[2] == vg)
    return VgInfo(name, int(size), int(free), int(ext), int(count), int(free_count), pvs)


def list_lvs(ex, vg: str, prefix: str = "") -> list[Lv]:
    """LVs of a VG whose names start with prefix."""
    check_name("VG", vg)
    rows = _report(ex, ["lvs", *_REPORT, "-o", "lv_name,lv_size,lv_attr,lv_tags", vg], vg)
    out = []
    for r in rows:
        if len(r) < 3 or not r[0].startswith(prefix):
            continue
        tags = tuple(t for t in (r[3].split(",") if len(r) > 3 else []) if t)
        out.append(Lv(vg, r[0], int(r[1]), r[2], tags))
    return out


def get_lv(ex, vg: str, lv: str) -> Lv | None:
    check_name("LV", lv)
    for item in list_lvs(ex, vg, prefix=lv):
        if item.name == lv:
            return item
    return None


def lv_exists(ex, vg: str, lv: str) -> bool:
    return get_lv(ex, vg, lv) is not None


def activation_enabled(ex) -> bool:
    """False when LVM is configured with global/activation = 0 (metadata-only LVM)."""
    res = ex.run(["lvmconfig", "--typeconfig", "full", "global/activation"], timeout=LVM_TIMEOUT, check=False)
    return not (res.ok and res.stdout.strip().replace(" ", "") == "activation=0")


def create_lv(ex, vg: str, name: str, size_bytes: int, *, tags: tuple[str, ...] = ()) -> Lv:
    """Create vg/name of at least size_bytes, rounded up to whole extents."""
    check_name("VG", vg)
    check_name("LV", name)
    for tag in tags:
        check_name("tag", tag)
    node = executor_node(ex)
    if size_bytes <= 0:
        raise BmmError(f"cannot create LV {vg}/{name} of {size_bytes} bytes", node=node)
    info = vg_info(ex, vg)
    extents = -(-size_bytes // info.extent_size)
    if extents > info.free_count:
        raise BmmError(
            f"VG {vg} has only {mib(info.free_count * info.extent_size)} MiB free, "
            f"image needs {mib(extents * info.extent_size)} MiB", node=node)
    if lv_exists(ex, vg, name):
        raise BmmError(f"LV {vg}/{name} already exists", node=node)
    argv = ["lvcreate", "--yes", "--name", name, "--extents", str(extents)]
    if not activation_enabled(ex):
        # Without activation LVM cannot zero or wipe; say so instead of letting it warn.
        argv += ["--zero", "n", "--wipesignatures", "n"]
    for tag in tags:
        argv += ["--addtag", tag]
    argv.append(vg)
    try:
        ex.run(argv, timeout=LVM_TIMEOUT)
    except BmmError as exc:
        raise BmmError(f"cannot create LV {vg}/{name}: {exc.reason}", node=node) from None
    lv = get_lv(ex, vg, name)
    if lv is None:
        raise BmmError(f"LV {vg}/{name} was created but is not listed", node=node)
    return lv


def remove_lv(ex, vg: str, lv: str) -> bool:
    """Remove vg/lv; False (and no error) if it does not exist."""
    check_name("VG", vg)
    check_name("LV", lv)
    if not lv_exists(ex, vg, lv):
        return False
    try:
        ex.run(["lvremove", "--yes", f"{vg}/{lv}"], timeout=LVM_TIMEOUT)
    except BmmError as exc:
        raise BmmError(f"cannot remove LV {vg}/{lv}: {exc.reason}", node=executor_node(ex)) from None
    return True


def lv_segments(ex, vg: str, lv: str) -> tuple[Lv, list[Segment]]:
    check_name("VG", vg)
    check_name("LV", lv)
    item = get_lv(ex, vg, lv)
    if item is None:
        raise BmmError(f"LV {vg}/{lv} not found", node=executor_node(ex))
    segs = []
    for r in _report(ex, ["lvs", *_REPORT, "-o", "lv_name,segtype,seg_pe_ranges", f"{vg}/{lv}"]):
        if len(r) < 3 or r[0] != lv:
            continue
        ranges = r[2].split()
        if len(ranges) != 1:
            segs.append(Segment("", 0, -1, f"{r[1]} over {len(ranges)} PV ranges"))
            continue
        pv, _, span = ranges[0].rpartition(":")
        first, _, last = span.partition("-")
        segs.append(Segment(pv, int(first), int(last), r[1]))
    return item, segs


def _is_block(ex, path: str) -> bool:
    return ex.run(["test", "-b", path], timeout=30, check=False).ok


def blockdev_size(ex, device: str) -> int:
    res = ex.run(["blockdev", "--getsize64", device], timeout=30, check=False)
    if not res.ok:
        raise BmmError(f"{device} is not a usable block device", node=executor_node(ex))
    return int(res.stdout.strip())


def attach_loop(ex, backing: str, offset: int, size: int) -> str:
    """A loop device over [offset, offset+size) of backing; returns its path."""
    res = ex.run(["losetup", "--find", "--show", "--offset", str(offset), "--sizelimit", str(size), backing],
                 timeout=30)
    dev = res.stdout.strip()
    if not dev.startswith("/dev/loop"):
        raise BmmError(f"losetup returned no loop device for {backing}", node=executor_node(ex))
    return dev


def detach_loop(ex, dev: str) -> None:
    deadline = time.monotonic() + 10
    while True:
        res = ex.run(["losetup", "--detach", dev], timeout=30, check=False)
        if res.ok:
            return
        if time.monotonic() > deadline:
            raise BmmError(f"cannot detach {dev}: {res.stderr.strip() or 'busy'}", node=executor_node(ex))
        time.sleep(0.2)


def _wait_block(ex, paths: list[str], seconds: float) -> str | None:
    deadline = time.monotonic() + seconds
    while True:
        for p in paths:
            if _is_block(ex, p):
                return p
        if time.monotonic() > deadline:
            return None
        time.sleep(0.2)


@contextmanager
def open_lv(ex, vg: str, lv: str) -> Iterator[str]:
    """Yield a block device holding exactly the bytes of vg/lv.

    An active LV yields /dev/<vg>/<lv> (or its /dev/mapper name). An inactive LV is activated
    when LVM activation is enabled (and deactivated again on exit). With activation disabled
    the LV must be one linear segment, and a loop device over its byte range on the PV is
    yielded and detached on exit, on every path.
    """
    node = executor_node(ex)
    item, segs = lv_segments(ex, vg, lv)
    paths = [item.path, item.mapper_path]
    if item.active:
        dev = _wait_block(ex, paths, 10)
        if dev is None:
            raise BmmError(f"LV {vg}/{lv} is active but has no device node", node=node)
        yield dev
        return
    if activation_enabled(ex):
        res = ex.run(["lvchange", "--activate", "y", f"{vg}/{lv}"], timeout=LVM_TIMEOUT, check=False)
        if res.ok:
            dev = _wait_block(ex, paths, 10)
            try:
                if dev is None:
                    raise TimeoutExpired(f"LV {vg}/{lv} was activated but no device node appeared", node=node)
                yield dev
            finally:
                ex.run(["lvchange", "--activate", "n", f"{vg}/{lv}"], timeout=LVM_TIMEOUT, check=False)
            return
        if ex.run(["test", "-e", "/sys/module/dm_mod"], timeout=30, check=False).ok:
            cause = (res.stderr.strip().splitlines() or ["lvchange failed"])[-1].strip()
            raise BmmError(f"cannot activate LV {vg}/{lv}: {cause}", node=node)
        # no device-mapper in this kernel: fall through to a loop at the LV's offset
    if len(segs) != 1:
        raise BmmError(f"LV {vg}/{lv} has {len(segs)} segments; without device-mapper bmm can only map "
                       "a single linear segment", node=node)
    seg = segs[0]
    if seg.segtype not in ("linear", "striped") or not seg.pv:
        raise BmmError(f"LV {vg}/{lv} is {seg.segtype}; without device-mapper bmm can only map a linear LV",
                       node=node)
    info = vg_info(ex, vg)
    offset = info.pv(seg.pv).pe_start + seg.first_pe * info.extent_size
    if seg.extents * info.extent_size != item.size:
        raise BmmError(f"LV {vg}/{lv}: segment covers {seg.extents} extents but the LV is {item.size} bytes",
                       node=node)
    dev = attach_loop(ex, seg.pv, offset, item.size)
    try:
        yield dev
    finally:
        detach_loop(ex, dev)


def zero_range(ex, device: str, offset: int, length: int, *, timeout: float = 600, use_discard: bool = True) -> bool:
    """Zero [offset, offset+length) of a block device. Returns whether blkdiscard -z was used."""
    if use_discard:
        res = ex.run(["blkdiscard", "--zeroout", "--offset", str(offset), "--length", str(length), device],
                     timeout=timeout, check=False)
        if res.ok:
            return True
    ex.run(["dd", "if=/dev/zero", f"of={device}", "bs=4M", "iflag=count_bytes", "oflag=seek_bytes,direct",
            f"seek={offset}", f"count={length}", "conv=notrunc", "status=none"], timeout=timeout)
    return False


def wipe_device(ex, device: str, progress: Progress | None = None, *, steps: int = 50,
                min_rate: float = 20e6) -> int:
    """Zero a whole block device in ~steps pieces (progress after each); returns its size.
    Each piece must finish at min_rate bytes/s (a slow disk without WRITE_ZEROES included)."""
    size = blockdev_size(ex, device)
    chunk = max(16 * MiB, -(-size // steps))
    chunk = -(-chunk // (4 * MiB)) * (4 * MiB)
    step_timeout = max(300.0, chunk / min_rate)
    use_discard = True
    done = 0
    while done < size:
        n = min(chunk, size - done)
        use_discard = zero_range(ex, device, done, n, timeout=step_timeout, use_discard=use_discard)
        done += n
        if progress:
            progress(done, size)
    ex.run(["sync", device], timeout=step_timeout)
    return size


def wipe_lv(ex, vg: str, lv: str, progress: Progress | None = None) -> int:
    """Zero every byte of vg/lv (blkdiscard -z, else dd from /dev/zero), so a tenant's data never
    reaches the next tenant. Returns the number of bytes zeroed."""
    with open_lv(ex, vg, lv) as dev:
        try:
            return wipe_device(ex, dev, progress)
        except BmmError as exc:
            raise BmmError(f"wiping LV {vg}/{lv} failed: {exc.reason}", node=executor_node(ex)) from None


# ----------------------------------------------------------------------------------------------
# the part

class LvmDisk:
    """Instance disks carved as LVs from one VG of the node's own disk (the `[storage]` table).

    Declares its settings like every part; the methods take an executor on the node."""

    SETTINGS = {
        "vg": Setting(settings.lvm_name, "the volume group instance disks are carved from"),
        "lv_prefix": Setting(settings.lvm_name, "logical volume name prefix"),
        "image_transport": Setting(
            settings.choice("http", "ssh", "session"),
            "how image bytes reach the node (bmm.storage.delivery): http (default; the node pulls "
            "from a one-shot server on the front-end, integrity by HMAC, bytes in clear), ssh "
            "(encrypted, inside the OpenSSH client), session (the control session; slowest)"),
    }

    def __init__(self, node: str, table: Mapping[str, Any]):
        self.node = node
        self.vg = table["vg"]
        self.image_transport = table.get("image_transport", "http")

    @classmethod
    def validate(cls, table: Mapping[str, Any]) -> list[tuple[str, str]]:
        return settings.check_table(table, cls.SETTINGS)

    def present(self, ex) -> bool:
        """Does the OS behind ex see this node's VG?"""
        return ex.run(["vgs", "--noheadings", "-o", "vg_name", self.vg], timeout=30, check=False).ok

    def create(self, ex, name: str, size: int, *, tags: tuple[str, ...] = ()) -> Lv:
        return create_lv(ex, self.vg, name, size, tags=tags)

    def exists(self, ex, name: str) -> bool:
        return lv_exists(ex, self.vg, name)

    def names(self, ex, prefix: str) -> list[str]:
        return [lv.name for lv in list_lvs(ex, self.vg, prefix=prefix)]

    def open(self, ex, name: str):
        return open_lv(ex, self.vg, name)

    def wipe_and_remove(self, ex, name: str) -> None:
        """Zero every byte of the LV, then remove it: a tenant's data never reaches the next."""
        wipe_lv(ex, self.vg, name)
        remove_lv(ex, self.vg, name)

    def mapper_name(self, name: str) -> str:
        return mapper_name(self.vg, name)
