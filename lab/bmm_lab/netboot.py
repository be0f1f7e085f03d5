"""The lab's netboot boards (the Tilera shape): the board half's hooks for the lab core, and
its command line (`python -m bmm_lab.netboot kernel|populate ...`).

The lab core imports this module and calls its hooks (docs/lab-internals.md, "How the board
half plugs in"): `prepare()` in `bmm lab up`, once per board; `start()` in the daemon (the
proxy's TFTP and NFS services); `make_machine()` per board; `inventory()` (with
`boot_method()` and `boot_table()`) for nodes.toml; `status()` for `bmm lab status`;
`cleanup()` in `bmm lab down`. `prepare()` (and `start()`) put the proxy's address 10.X.0.1
and the PDU's 10.X.0.2 on the root namespace's `lo`; `cleanup()` takes them off.

The rest of the board half:
- bmm_lab.boardpaths: where its files live under DIR;
- bmm_lab.boardroot: board root file systems and boot files (the KERNEL FORMAT);
- bmm_lab.netservices: the proxy's services (in.tftpd, ganesha.nfsd) and the TFTP client;
- bmm_lab.board: BoardSpec, prepare_board() and BoardMachine (power-on to a running board);
- bmm_lab.boardinit: pid 1 of a booted board (`python -m bmm_lab.boardinit SPEC`);
- bmm_lab.pdu: the PDU that powers the boards; bmm_lab.tile_monitor: the tile-monitor stand-in.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import sys
from pathlib import Path

from bmm_lab import IMPORT_PATH, LabError
from bmm_lab.addresses import (PORT_MOUNT, PORT_NFS, PORT_PDU_SSH, PORT_PDU_TELNET, PORT_TFTP, board_port, clients,
                               ensure_addr, pdu_addr, proxy_addr, remove_addr)
from bmm_lab.board import BOARD_CPUS, BOARD_MEMORY_MB, BoardMachine, BoardSpec, prepare_board
from bmm_lab.boardpaths import (board_dir, check_config_path, exports_dir, ganesha_dir, nfs_root, nfs_url,
                                sample_image, stage_dir, tftp_root)
from bmm_lab.boardroot import ROOT_KINDS, make_image, populate_root, write_kernel
from bmm_lab.netservices import NetbootServices
from bmm_lab.state import netboot_dir
from bmm.runner import run


# ---------------------------------------------------------------------------------------------
# Hooks for the lab core (docs/lab-internals.md, "How the board half plugs in")

PDU_NAME = "pdu1"


def _lab_key_text(lab_dir: Path) -> str:
    pub = lab_dir / "ssh" / "lab_key.pub"
    try:
        return pub.read_text()
    except OSError:
        raise LabError(f"the lab key {pub} is missing (the lab core creates it before boards)") from None


def install_tile_monitor(lab_dir: Path) -> Path:
    """DIR/bin/tile-monitor: the stand-in, with the lab key and known_hosts baked in."""
    bin_dir = lab_dir / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / "tile-monitor"
    env = {
        "BMM_TILE_MONITOR_KEY": str(lab_dir / "ssh" / "lab_key"),
        "BMM_TILE_MONITOR_KNOWN_HOSTS": str(lab_dir / "ssh" / "known_hosts"),
        "PYTHONPATH": IMPORT_PATH,
    }
    lines = ["#!/bin/sh", f"# bmm lab {lab_dir}: tile-monitor stand-in (lab/bmm_lab/tile_monitor.py)"]
    lines += [f"{k}={shlex.quote(v)}; export {k}" for k, v in env.items()]
    lines.append(f'exec {shlex.quote(sys.executable)} -m bmm_lab.tile_monitor "$@"')
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.chmod(tmp, 0o755)
    os.replace(tmp, path)
    return path


def prepare(lab: dict, node: dict) -> None:
    """`bmm lab up`, root namespace, once per board (after its netns exists)."""
    from bmm_lab import pdu
    lab_dir = Path(lab["dir"])
    nb = netboot_dir(lab_dir)
    for d in (nb, tftp_root(lab_dir), nfs_root(lab_dir), nb / "images"):
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o755)
    check_config_path(str(lab_dir), "lab directory")
    ensure_addr(proxy_addr(lab))
    ensure_addr(pdu_addr(lab))
    pdu.ensure_lab_secret(lab_dir, PDU_NAME)
    install_tile_monitor(lab_dir)
    keys = _lab_key_text(lab_dir)
    spec = BoardSpec.from_node(lab, node)
    prepare_board(spec, authorized_keys=keys)
    # the board's own export, for its address only (bmm replaces and removes it as it deploys)
    from bmm.boot.netboot import GaneshaExports
    from bmm.runner import LocalExecutor
    GaneshaExports(str(exports_dir(lab_dir)), None).add(LocalExecutor(), spec.board_id, str(spec.export),
                                                         node["addr"], reload=False)
    image = sample_image(lab_dir)
    if not image.exists():
        tmp_root = nb / "images" / "board-rootfs"
        populate_root(tmp_root, hostname="board", authorized_keys=keys,
                      label="bmm lab board OS (disk image)", marker="board-rootfs image")
        make_image(tmp_root, image)
        shutil.rmtree(tmp_root)
    mac = ""
    if node.get("ns"):
        res = run(["ip", "-n", node["ns"], "-j", "link", "show", "eth0"], timeout=10, check=False)
        if res.ok:
            try:
                mac = json.loads(res.stdout)[0].get("address", "")
            except (ValueError, IndexError, AttributeError):
                mac = ""
    node.update({
        "board": spec.board_id, "boot_file": spec.kernel_name, "tftp_root": str(tftp_root(lab_dir)),
        "nfs_root": str(nfs_root(lab_dir)), "nfs_export": str(spec.export),
        "sda_image": str(spec.sda_image), "console": str(spec.console), "mac": mac or node.get("mac", ""),
        "pdu": PDU_NAME, "host_key_pub": str(spec.dir / "ssh_host_ed25519_key.pub"),
    })


class _Services:
    def __init__(self, services: NetbootServices):
        self.services = services

    def stop(self) -> None:
        self.services.stop()


def start(fw) -> _Services | None:
    """Daemon: the lab's tftpd and ganesha (only when the lab has boards)."""
    if not any(n.get("kind") == "netboot" for n in fw.lab.get("nodes", [])):
        return None
    ensure_addr(proxy_addr(fw.lab))
    services = NetbootServices(
        fw.dir, tftp_port=fw.board_port(PORT_TFTP), nfs_port=fw.board_port(PORT_NFS),
        mount_port=fw.board_port(PORT_MOUNT), clients=clients(fw.lab), listen=proxy_addr(fw.lab),
        spawn=fw.spawn, log=fw.log)
    return _Services(services.start())


def make_machine(fw, node: dict) -> BoardMachine:
    lab = dict(fw.lab)
    lab.setdefault("dir", str(fw.dir))
    return BoardMachine(BoardSpec.from_node(lab, node), spawn=fw.spawn, log=fw.log)


def inventory(lab: dict, node: dict) -> dict:
    """The board's [nodes.<name>] table (docs/inventory.md)."""
    lab_dir = Path(lab["dir"])
    from bmm_lab import pdu
    table = {
        "kind": "netboot",
        "arch": "tilepro64",
        "model": "TILEmpower (bmm lab board)",
        "cpus": BOARD_CPUS,
        "memory_mb": BOARD_MEMORY_MB,
        "disk_gb": 1,
        "ip": node["addr"],
        "ssh": {
            "address": node["addr"], "port": 22, "user": "root",
            "key": str(lab_dir / "ssh" / "lab_key"),
            "known_hosts": str(lab_dir / "ssh" / "known_hosts"),
            "host_key_policy": "accept-new",
        },
        "power": {
            "driver": "pdu", "host": pdu_addr(lab), "port": board_port(lab, PORT_PDU_TELNET),
            "protocol": "telnet", "user": pdu.LAB_USER,
            "password_file": str(pdu.lab_password_file(lab_dir, PDU_NAME)),
            "outlet": int(node["outlet"]), "dialect": "apc",
        },
        "boot": boot_table(lab, node),
        "hardware": {
            "vendor": "tilera", "cpu_model": "TILEPro64", "topology": "8x8 tiles", "tile_grid": "8x8",
            "lab_sda1": "/dev/sda1 (256 MB, ext4)",
        },
    }
    if node.get("mac"):
        table["macs"] = [node["mac"]]
    return table


def boot_method(node: dict) -> str:
    """Odd boards boot their NFS root, even boards are set up for the two-stage TFTP boot
    (both kinds boot vmlinux_<board> = the NFS kernel when the lab comes up)."""
    return "tftp2stage" if int(node.get("n") or node.get("outlet") or 1) % 2 == 0 else "nfsroot"


def boot_table(lab: dict, node: dict) -> dict:
    lab_dir = Path(lab["dir"])
    common = {
        "tftp_root": str(tftp_root(lab_dir)),
        "tile_monitor": str(lab_dir / "bin" / "tile-monitor"),
        "board": str(node.get("board") or node["name"]),
    }
    if boot_method(node) == "tftp2stage":
        return {"method": "tftp2stage", **common, "rootfs_device": "/dev/sda1",
                "stage_dir": str(stage_dir(lab_dir))}
    return {"method": "nfsroot", **common, "nfs_root": str(nfs_root(lab_dir)),
            "nfs_server": proxy_addr(lab), "exports": "ganesha", "exports_dir": str(exports_dir(lab_dir)),
            "ganesha_pid_file": str(ganesha_dir(lab_dir) / "ganesha.pid")}


def status(lab: dict, node: dict) -> dict:
    lab_dir = Path(lab["dir"])
    from bmm_lab import pdu
    nfs_port, mount_port = board_port(lab, PORT_NFS), board_port(lab, PORT_MOUNT)
    export = node.get("nfs_export") or str(nfs_root(lab_dir) / f"fs_{node.get('board') or node['name']}")
    return {
        "pdu": {
            "name": PDU_NAME, "host": pdu_addr(lab), "port": board_port(lab, PORT_PDU_TELNET),
            "ssh_port": board_port(lab, PORT_PDU_SSH), "outlet": node.get("outlet"),
            "protocol": "telnet", "user": pdu.LAB_USER,
            "password_file": str(pdu.lab_password_file(lab_dir, PDU_NAME)),
        },
        "tftp": {"host": proxy_addr(lab), "port": board_port(lab, PORT_TFTP),
                 "root": str(tftp_root(lab_dir)),
                 "boot_file": node.get("boot_file") or f"vmlinux_{node.get('board') or node['name']}"},
        "nfs": {"host": proxy_addr(lab), "port": nfs_port, "mount_port": mount_port,
                "root": str(nfs_root(lab_dir)), "export": export,
                "url": nfs_url(proxy_addr(lab), export, nfs_port, mount_port)},
        "tftp_root": str(tftp_root(lab_dir)),
        "nfs_export": export,
        "sda_image": node.get("sda_image", ""),
        "console": node.get("console") or str(board_dir(lab_dir, node["name"]) / "console.log"),
        "tile_monitor": str(lab_dir / "bin" / "tile-monitor"),
        "boot_method": boot_method(node),
    }


def cleanup(lab: dict) -> None:
    """`bmm lab down`, after every lab process is gone: detach the boards' loop devices, take
    the proxy's and the PDU's addresses off lo."""
    lab_dir = Path(lab["dir"])
    if any(n.get("kind") == "netboot" for n in lab.get("nodes", [])) and lab.get("net"):
        with contextlib.suppress(LabError):
            remove_addr(proxy_addr(lab))
            remove_addr(pdu_addr(lab))
    for node in lab.get("nodes", []):
        if node.get("kind") != "netboot":
            continue
        img = board_dir(lab_dir, node["name"]) / "sda1.img"
        if not img.exists():
            continue
        res = run(["losetup", "-j", str(img), "-O", "NAME", "--noheadings"], timeout=10, check=False)
        for loop in res.stdout.split():
            run(["losetup", "-d", loop], timeout=10, check=False)


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m bmm_lab.netboot")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("kernel", help="write a lab boot file (vmlinux_*)")
    p.add_argument("path")
    p.add_argument("root", choices=ROOT_KINDS)
    p.add_argument("--nfs-root")
    p = sub.add_parser("populate", help="make a directory a bootable board root")
    p.add_argument("root")
    p.add_argument("--hostname", default="board")
    p.add_argument("--authorized-keys", help="file whose keys go to /root/.ssh/authorized_keys")
    p.add_argument("--marker")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "kernel":
            write_kernel(args.path, args.root, nfs_path=args.nfs_root)
        elif args.cmd == "populate":
            keys = Path(args.authorized_keys).read_text() if args.authorized_keys else ""
            populate_root(args.root, hostname=args.hostname, authorized_keys=keys, marker=args.marker)
    except LabError as exc:
        print(f"netboot: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
