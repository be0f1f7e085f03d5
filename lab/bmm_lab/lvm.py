"""Lab-side LVM: private lvm.conf per server, loop devices, and LV bytes without device-mapper.

Real: the PV and VG metadata (pvcreate/vgcreate/lvcreate write the same bytes as on a real disk).
Emulated when the kernel has no device-mapper: activation. `global{activation=0}` keeps LVM
from asking the kernel, and an LV's bytes are reached through a loop device at
`pe_start + first_pe * extent_size` limited to the LV size (linear, single-segment LVs only).
`sync_activation()` keeps `/dev/<vg>/<lv>` and `/dev/mapper/<vg>-<lv>` pointing at such loops.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

from bmm_lab import LabError
from bmm.runner import run

LVM_TIMEOUT = 30.0


def dm_available() -> bool:
    """True when the kernel has device-mapper (then LVs are activated for real)."""
    try:
        fd = os.open("/dev/mapper/control", os.O_RDWR)
    except OSError as exc:
        if exc.errno == errno.ENOENT and "device-mapper" in Path("/proc/misc").read_text():
            return True
        return False
    os.close(fd)
    return True


def write_lvm_conf(lvm_dir: Path, loops: list[str], *, activation: bool) -> None:
    """A private LVM_SYSTEM_DIR whose device filter holds only `loops`."""
    lvm_dir.mkdir(parents=True, exist_ok=True)
    accept = ", ".join(f'"a|^{dev}$|"' for dev in loops)
    filt = f"[ {accept}, \"r|.*|\" ]" if loops else '[ "r|.*|" ]'
    text = (
        "# written by bmm lab: this lab's loop devices only\n"
        f"global {{ activation = {1 if activation else 0} }}\n"
        f"devices {{ filter = {filt} global_filter = {filt} obtain_device_list_from_udev = 0 "
        "use_devicesfile = 0 }\n"
        "backup { backup = 0 archive = 0 }\n"
        "activation { udev_sync = 0 udev_rules = 0 monitoring = 0 }\n"
    )
    (lvm_dir / "lvm.conf").write_text(text)


def lvm_env(lvm_dir: Path | str) -> dict[str, str]:
    return {"LVM_SYSTEM_DIR": str(lvm_dir), "LVM_SUPPRESS_FD_WARNINGS": "1"}


def lvm(argv: list[str], lvm_dir: Path | str, *, timeout: float = LVM_TIMEOUT, check: bool = True, node=None):
    return run(["lvm", *argv], extra_env=lvm_env(lvm_dir), timeout=timeout, check=check, node=node)


# ---------------------------------------------------------------- loop devices

def loops() -> list[dict]:
    """Every loop device: [{name, back-file, back-id, offset, sizelimit}]. back-id is
    "maj:min/ino" of the backing file; for a loop stacked on a loop it identifies the lower
    loop's /dev node even when back-file is unreadable (attached in another mount namespace)."""
    res = run(["losetup", "--json", "--list", "-O", "NAME,BACK-FILE,BACK-INO,BACK-MAJ:MIN,OFFSET,SIZELIMIT"],
              timeout=10, check=False)
    if not res.ok or not res.stdout.strip():
        return []
    out = []
    for d in json.loads(res.stdout).get("loopdevices", []):
        bf = (d.get("back-file") or "").strip()
        if bf.endswith(" (deleted)"):
            bf = bf[: -len(" (deleted)")]
        back_id = f"{str(d.get('back-maj:min') or '').strip()}/{d.get('back-ino') or ''}"
        out.append({"name": d["name"], "back-file": bf, "back-id": back_id,
                    "offset": int(d.get("offset") or 0), "sizelimit": int(d.get("sizelimit") or 0)})
    return out


def node_id(path: str) -> str:
    """"maj:min/ino" of a file (as losetup reports a backing file's identity)."""
    try:
        st = os.stat(path)
    except OSError:
        return ""
    return f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}/{st.st_ino}"


def backed_by(loop: dict, dev: str, dev_id: str | None = None) -> bool:
    """Is `loop` stacked on block device `dev` (a /dev/loopN path)?"""
    return loop["back-file"] == dev or loop["back-id"] == (dev_id if dev_id is not None else node_id(dev))


def attach(path: str | Path, *, offset: int | None = None, sizelimit: int | None = None,
           readonly: bool = False, node=None) -> str:
    argv = ["losetup", "--find", "--show"]
    if offset:
        argv += ["--offset", str(offset)]
    if sizelimit:
        argv += ["--sizelimit", str(sizelimit)]
    if readonly:
        argv.append("--read-only")
    argv.append(str(path))
    last = None
    for _ in range(5):   # losetup -f can race with another attach; bounded retry
        res = run(argv, timeout=15, check=False, node=node)
        if res.ok and res.stdout.strip().startswith("/dev/loop"):
            return res.stdout.strip()
        last = res.stderr.strip() or res.stdout.strip()
    raise LabError(f"cannot attach a loop device to {path}: {last}", node=node)


def detach(dev: str) -> None:
    run(["losetup", "--detach", dev], timeout=15, check=False)


def lab_loops(lab_dir: Path | str) -> list[str]:
    """Loops this lab created: backed by a file under lab_dir, or stacked on such a loop
    (LV loops). Children come first, so detaching in order works."""
    prefix = str(Path(lab_dir).resolve()) + "/"
    all_loops = loops()
    mine = [d["name"] for d in all_loops if d["back-file"].startswith(prefix)]
    order = list(mine)
    frontier = mine
    while frontier:
        ids = {node_id(dev): dev for dev in frontier}
        children = [d["name"] for d in all_loops if d["name"] not in order
                    and (d["back-file"] in frontier or d["back-id"] in ids)]
        order = children + order
        frontier = children
    return order


# ---------------------------------------------------------------- LV geometry

def lv_list(lvm_dir: Path | str, vg: str, *, node=None) -> dict[str, dict]:
    """{lv: {size, segments, pv, first_pe}} for every LV in vg."""
    res = lvm(["lvs", "--noheadings", "--units", "b", "--nosuffix", "--separator", ";",
               "-o", "lv_name,lv_size,seg_count,seg_pe_ranges", vg], lvm_dir, node=node, check=False)
    if not res.ok:
        raise LabError(f"cannot list LVs of {vg}: {res.stderr.strip().splitlines()[-1:] or 'lvs failed'}", node=node)
    lvs: dict[str, dict] = {}
    for line in res.stdout.splitlines():
        parts = [p.strip() for p in line.strip().split(";")]
        if len(parts) < 4 or not parts[0]:
            continue
        name, size, segs, ranges = parts[0], int(parts[1]), int(parts[2]), parts[3]
        entry = lvs.setdefault(name, {"size": size, "segments": segs, "ranges": []})
        entry["ranges"].append(ranges)
    for entry in lvs.values():
        first = entry["ranges"][0].split()[0] if entry["ranges"][0] else ""
        pv, _, rng = first.rpartition(":")
        entry["pv"] = pv
        entry["first_pe"] = int(rng.split("-")[0]) if rng else 0
    return lvs


def vg_geometry(lvm_dir: Path | str, vg: str, *, node=None) -> tuple[int, int]:
    """(pe_start of the VG's PV in bytes, extent size in bytes)."""
    res = lvm(["pvs", "--noheadings", "--units", "b", "--nosuffix", "--separator", ";",
               "-o", "pe_start,vg_extent_size", "--select", f"vg_name={vg}"], lvm_dir, node=node)
    line = res.stdout.strip().splitlines()[0]
    pe_start, ext = (int(x.strip()) for x in line.split(";"))
    return pe_start, ext


def lv_extent(lvm_dir, vg: str, lv: str, *, node=None, lvs=None, geom=None) -> tuple[int, int]:
    """(offset, size) in bytes of a linear LV on its PV. Refuses multi-segment LVs."""
    lvs = lvs if lvs is not None else lv_list(lvm_dir, vg, node=node)
    if lv not in lvs:
        raise LabError(f"logical volume {vg}/{lv} does not exist", node=node)
    entry = lvs[lv]
    if entry["segments"] != 1 or len(entry["ranges"]) != 1 or len(entry["ranges"][0].split()) != 1:
        raise LabError(f"logical volume {vg}/{lv} has {entry['segments']} segments; without device-mapper "
                       "the lab can only map linear single-segment LVs", node=node)
    pe_start, ext = geom if geom is not None else vg_geometry(lvm_dir, vg, node=node)
    return pe_start + entry["first_pe"] * ext, entry["size"]


def dm_name(vg: str, lv: str) -> str:
    return f"{vg.replace('-', '--')}-{lv.replace('-', '--')}"


# ---------------------------------------------------------------- emulated activation

def sync_activation(lvm_dir: Path | str, vg: str, pv_loop: str, state_file: Path, *, node=None) -> list[str]:
    """Make /dev/<vg>/<lv> and /dev/mapper/<vg>-<lv> point at loop devices holding each LV's
    bytes; drop the links (and loops) of LVs that are gone or moved. Returns warnings."""
    warnings: list[str] = []
    try:
        current = json.loads(state_file.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        current = {}
    lvs = lv_list(lvm_dir, vg, node=node)
    geom = vg_geometry(lvm_dir, vg, node=node) if lvs else (0, 0)
    wanted: dict[str, tuple[int, int]] = {}
    for lv in lvs:
        try:
            wanted[lv] = lv_extent(lvm_dir, vg, lv, lvs=lvs, geom=geom, node=node)
        except LabError as exc:
            warnings.append(str(exc))
    live = {d["name"]: d for d in loops()}
    pv_id = node_id(pv_loop)
    vg_dir = Path("/dev") / vg
    for lv, info in list(current.items()):
        dev = info.get("loop")
        still = dev in live and backed_by(live[dev], pv_loop, pv_id) and \
            (live[dev]["offset"], live[dev]["sizelimit"]) == tuple(wanted.get(lv, (-1, -1)))
        if not still:
            for link in (vg_dir / lv, Path("/dev/mapper") / dm_name(vg, lv)):
                if link.is_symlink():
                    link.unlink()
            if dev in live and backed_by(live[dev], pv_loop, pv_id):
                detach(dev)
            del current[lv]
    for lv, (offset, size) in wanted.items():
        if lv in current:
            continue
        dev = attach(pv_loop, offset=offset, sizelimit=size, node=node)
        current[lv] = {"loop": dev, "offset": offset, "size": size}
        vg_dir.mkdir(exist_ok=True)
        Path("/dev/mapper").mkdir(exist_ok=True)
        for link in (vg_dir / lv, Path("/dev/mapper") / dm_name(vg, lv)):
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(dev)
    if not current and vg_dir.is_dir():
        try:
            vg_dir.rmdir()
        except OSError:
            pass
    tmp = state_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(current, indent=1))
    os.replace(tmp, state_file)
    return warnings


def remove_dev_links(vg_prefix: str) -> None:
    """Remove every /dev/<vg> dir and /dev/mapper link whose VG name starts with vg_prefix."""
    dev = Path("/dev")
    for d in dev.glob(vg_prefix + "*"):
        if d.is_dir() and not d.is_symlink():
            for link in d.iterdir():
                if link.is_symlink():
                    link.unlink()
            try:
                d.rmdir()
            except OSError:
                pass
    mapper = dev / "mapper"
    if mapper.is_dir():
        for link in mapper.glob(vg_prefix + "*"):
            if link.is_symlink():
                link.unlink()
