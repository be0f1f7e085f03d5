"""`bmm lab up / down / status`: build, tear down and describe a lab rack.

`up` creates, in this order: DIR/lab.json (the id first, so `down` can always find what a killed
`up` left), netns + veth per node (under a host-wide lock while addresses and ports are chosen),
the lab ssh key, per server a sparse disk file on a loop device with a real PV/VG and a
Debian-like /boot/grub, ipmi_sim configs, then starts the lab daemon, powers every machine on
and waits until each answers ssh. `down` finds everything by the lab id and DIR (state file AND
scans of netns, links, loop devices and processes), so it also works after `kill -9`.
"""

from __future__ import annotations

import contextlib
import importlib
import ipaddress
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bmm_lab import DEFAULT_DIR, HOST_LOCK, IMPORT_PATH, LabError, addresses, file_lock, bmc, firmware, lvm, names, netns, server, shims
from bmm_lab import state as labstate
from bmm_lab import toml
from bmm.runner import run

DEFAULT_NET = "10.213.0.0/16"
DEFAULT_DISK = "4G"
BMC_USER = "admin"
UP_BOOT_WAIT_S = 40.0
REQUIRED_TOOLS = ("ip", "unshare", "losetup", "lvm", "ipmi_sim", "ipmitool", "sshd", "ssh-keygen",
                  "grub-editenv", "blkid", "xorriso", "sfdisk", "mount")
_SAFE_DIR = re.compile(r"^/[A-Za-z0-9_./+-]*$")

Progress = Callable[[str], None]


def _quiet(msg: str) -> None:
    pass


class Steps:
    """Progress: one line per step with the time it took."""

    def __init__(self, say: Progress):
        self._say = say
        self.t0 = time.monotonic()

    def say(self, msg: str) -> None:
        try:
            self._say(msg)
        except Exception:  # noqa: BLE001 - a closed stdout must never stop a teardown
            pass

    @contextlib.contextmanager
    def step(self, what: str):
        t = time.monotonic()
        yield
        self.say(f"[{time.monotonic() - self.t0:6.2f}s] {what} ({time.monotonic() - t:.2f}s)")


def board_module():
    """The board half (bmm_lab.netboot) if it is there and can make machines."""
    try:
        mod = importlib.import_module("bmm_lab.netboot")
    except ModuleNotFoundError as exc:
        if exc.name != "bmm_lab.netboot":
            raise
        return None
    return mod if hasattr(mod, "make_machine") else None


def resolve_dir(lab_dir: str | Path | None) -> Path:
    p = Path(lab_dir or os.environ.get("BMM_LAB_DIR") or DEFAULT_DIR).expanduser().resolve()
    if not _SAFE_DIR.match(str(p)) or str(p) == "/":
        raise LabError(f"lab dir {p} must be an absolute path of letters, digits and _ . / + -")
    return p


def parse_size(text: str) -> int:
    m = re.fullmatch(r"(\d+)([KMGT]?)i?B?", text.strip().upper())
    if not m:
        raise LabError(f"bad size {text!r} (e.g. 4G, 512M)")
    return int(m.group(1)) * {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}[m.group(2)]


def _port_free(port: int, kind: int) -> bool:
    s = socket.socket(socket.AF_INET, kind)
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def _missing_tools() -> list[str]:
    return [t for t in REQUIRED_TOOLS if shutil.which(t) is None]


# ====================================================================== up

def up(lab_dir=None, *, servers: int = 2, boards: int | None = None, disk_size: str = DEFAULT_DISK,
       net: str | None = None, say: Progress = _quiet, keep_on_failure: bool = False) -> dict:
    """Build and start a lab; return lab.json's content. On failure everything is torn down."""
    d = resolve_dir(lab_dir)
    if os.geteuid() != 0:
        raise LabError("bmm lab needs root (network namespaces, loop devices, LVM)")
    missing = _missing_tools()
    if missing:
        raise LabError(f"bmm lab needs these programs: {', '.join(missing)}")
    board_mod = board_module()
    if boards is None:
        boards = 2 if board_mod else 0
    if boards and board_mod is None:
        raise LabError("boards need the board half of the lab (bmm_lab.netboot.make_machine), which is not built yet; use --boards 0")
    if not 0 <= servers <= 49 or not 0 <= boards <= 99 or servers + boards == 0:
        raise LabError("a lab has 0-49 servers and 0-99 boards, and at least one node")
    disk_bytes = parse_size(disk_size)
    if disk_bytes < 64 * 2**20:
        raise LabError("--disk-size must be at least 64M")
    d.mkdir(parents=True, exist_ok=True)
    with file_lock(d / ".lock", wait=5, what=f"lab dir {d}"):
        old = labstate.load(d, missing_ok=True)
        if old is not None and old.get("state") != "down":
            raise LabError(f"a lab (id {old.get('id')}) is already {old.get('state', 'up')} in {d}; "
                           f"run `bmm lab down --dir {d}` first")
        if old is None and any(d.iterdir()):
            entries = [p.name for p in d.iterdir() if p.name != ".lock"]
            if entries:
                raise LabError(f"{d} is not empty and holds no lab; choose an empty or new --dir")
        _clear_dir(d)
        lab = {"id": names.new_id(), "dir": str(d), "state": "starting", "created": time.time(),
               "python": sys.executable, "dm": lvm.dm_available(), "nodes": []}
        labstate.save(d, lab)
        steps = Steps(say)
        try:
            _build(d, lab, servers, boards, disk_bytes, net, steps, board_mod)
        except BaseException as exc:
            if keep_on_failure:
                lab["state"] = "failed"
                labstate.save(d, lab)
                raise
            Steps(say).say(f"up failed ({exc}); tearing down what was built")
            try:
                _down_locked(d, say=_quiet)
            except Exception as exc2:  # noqa: BLE001
                Steps(say).say(f"teardown after failure also failed: {exc2}")
            raise
    return lab


def _clear_dir(d: Path) -> None:
    for p in d.iterdir():
        if p.name == ".lock":
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def _plan_nodes(d: Path, lab: dict, servers: int, boards: int) -> None:
    lab_id = lab["id"]
    nodes = []
    for n in range(1, servers + 1):
        name = names.server_name(n)
        nd = d / "servers" / name
        nodes.append({
            "name": name, "kind": "localdisk", "idx": n, "n": n, "dir": str(nd),
            "ns": names.ns_name(lab_id, name), "veth_host": names.veth_host(lab_id, n),
            "mac": names.mac(lab_id, n), "vg": names.vg_name(lab_id, n), "disk": str(nd / "disk.img"),
            "lvm_dir": str(nd / "lvm"), "boot_dir": str(nd / "boot"), "bmc_user": BMC_USER,
            "password_file": str(d / "secrets" / f"{name}.bmc"), "shims_dir": str(nd / "shims"),
            "real_sbin": str(nd / "real-sbin"), "console": str(nd / "console.log"),
        })
    for n in range(1, boards + 1):
        name = names.board_name(n)
        idx = names.BOARD_IDX_BASE + n
        nodes.append({
            "name": name, "kind": "netboot", "idx": idx, "n": n, "outlet": n,
            "dir": str(d / "boards" / name), "ns": names.ns_name(lab_id, name),
            "veth_host": names.veth_host(lab_id, idx), "mac": names.mac(lab_id, idx),
        })
    lab["nodes"] = nodes


def _allocate_and_wire(lab: dict, net: str | None, steps: Steps) -> None:
    """Pick 10.X.0.0/16 and the port block, create every netns/veth: under the host-wide lock."""
    explicit = net is not None
    try:
        base = ipaddress.ip_network(net or DEFAULT_NET)
    except ValueError as exc:
        raise LabError(f"bad --net {net!r}: {exc}") from None
    if base.prefixlen != 16 or base.version != 4 or not str(base).startswith("10."):
        raise LabError("--net must be a 10.X.0.0/16 network")
    with file_lock(HOST_LOCK, wait=120, what="lab network allocation"):
        used = netns.used_networks()
        x0 = int(str(base).split(".")[1])
        chosen = None
        reasons = []
        for x in ([x0] if explicit else list(range(x0, 255)) + list(range(1, x0))):
            cand = ipaddress.ip_network(f"10.{x}.0.0/16")
            clash = netns.overlaps(cand, used)
            if clash:
                reasons.append(f"{cand} overlaps {clash[0]}")
                continue
            port_base = addresses.port_base(x)
            if port_base is None:
                continue
            busy = [p for p in range(port_base, port_base + addresses.PORT_BLOCK)
                    if not _port_free(p, socket.SOCK_DGRAM) or not _port_free(p, socket.SOCK_STREAM)]
            if busy:
                reasons.append(f"ports {port_base}-{port_base + addresses.PORT_BLOCK - 1}: {busy[0]} in use")
                continue
            chosen = (x, port_base)
            break
        if chosen is None:
            raise LabError("no free lab network: " + "; ".join(reasons[:3]))
        x, port_base = chosen
        lab["net"] = f"10.{x}.0.0/16"
        lab["port_base"] = port_base
        lab["ports"] = {"board_base": port_base + addresses.BOARD_PORT_OFFSET}
        for node in lab["nodes"]:
            idx = node["idx"]
            node["host_addr"], node["addr"] = addresses.node_addresses(x, idx)
            node["prefixlen"] = 24
            if node["kind"] == "localdisk":
                node["bmc_port"] = addresses.bmc_port(port_base, idx)
        labstate.save(lab["dir"], lab)
        with steps.step(f"network {lab['net']}: {len(lab['nodes'])} netns + veth, ports {port_base}-{port_base + addresses.PORT_BLOCK - 1}"):
            for node in lab["nodes"]:
                netns.create_node_net(
                    ns=node["ns"], veth_host=node["veth_host"], veth_tmp=names.veth_node_tmp(lab["id"], node["idx"]),
                    host_addr=node["host_addr"], addr=node["addr"], prefixlen=24, mac_node=node["mac"],
                    mac_host=names.mac(lab["id"], node["idx"], host_side=True), node=node["name"])


def _write_secret(path: Path, value: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    os.chmod(path, 0o600)


def _build_server(d: Path, lab: dict, node: dict, disk_bytes: int) -> None:
    nd = Path(node["dir"])
    (nd / "sshd").mkdir(parents=True, exist_ok=True)
    with open(node["disk"], "wb") as f:
        f.truncate(disk_bytes)
    node["loop"] = lvm.attach(node["disk"], node=node["name"])
    lvm.write_lvm_conf(Path(node["lvm_dir"]), [node["loop"]], activation=lab["dm"])
    res = lvm.lvm(["vgcreate", "-y", "--metadatasize", "1m", node["vg"], node["loop"]], node["lvm_dir"],
                  check=False, node=node["name"])
    if not res.ok:
        raise LabError(f"vgcreate {node['vg']} on {node['loop']} failed: {res.stderr.strip().splitlines()[-1:]}",
                       node=node["name"])
    server.write_boot_dir(Path(node["boot_dir"]))
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{node['name']}@bmm-lab-{lab['id']}",
         "-f", str(nd / "sshd" / "host_ed25519")], timeout=20)
    password = secrets.token_hex(6)
    _write_secret(Path(node["password_file"]), password)
    bmc.write_config(d, node, password)
    shims.write(node, d, dm=lab["dm"])
    server.write_pci_view(node)
    Path(node["console"]).touch()


def _build(d: Path, lab: dict, servers: int, boards: int, disk_bytes: int, net: str | None,
           steps: Steps, board_mod) -> None:
    _plan_nodes(d, lab, servers, boards)
    labstate.save(d, lab)
    _allocate_and_wire(lab, net, steps)
    labstate.save(d, lab)
    with steps.step("lab ssh key, chassis hook"):
        (d / "ssh").mkdir(mode=0o700, exist_ok=True)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"bmm-lab-{lab['id']}",
             "-f", str(d / "ssh" / "lab_key")], timeout=20)
        shutil.copyfile(d / "ssh" / "lab_key.pub", d / "ssh" / "authorized_keys")
        bmc.write_hook(d)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)   # sshd's privilege-separation dir
    srv = [n for n in lab["nodes"] if n["kind"] == "localdisk"]
    if srv:
        with steps.step(f"{len(srv)} server disks: loop + PV/VG, /boot/grub, BMC config"
                        + (" (LVM activation emulated: no device-mapper)" if not lab["dm"] else "")):
            with ThreadPoolExecutor(max_workers=4) as pool:
                for f in [pool.submit(_build_server, d, lab, n, disk_bytes) for n in srv]:
                    f.result()
            lvm.write_lvm_conf(d / "lvm", [n["loop"] for n in srv], activation=lab["dm"])
            labstate.save(d, lab)
    brd = [n for n in lab["nodes"] if n["kind"] == "netboot"]
    if brd and hasattr(board_mod, "prepare"):
        with steps.step(f"{len(brd)} boards prepared"):
            for n in brd:
                Path(n["dir"]).mkdir(parents=True, exist_ok=True)
                board_mod.prepare(lab, n)
            labstate.save(d, lab)
    with steps.step("inventory DIR/nodes.toml, known_hosts"):
        write_known_hosts(d, lab)
        write_inventory(d, lab)
    with steps.step("lab daemon (firmware) started"):
        start_daemon(d, lab)
    with steps.step("every machine powered on; BMCs answer; every OS answers ssh"):
        for n in lab["nodes"]:
            firmware.call(d, {"op": "power", "node": n["name"], "action": "on"})
        wait_bmcs(lab)
        wait_states(d, lab, timeout=UP_BOOT_WAIT_S)
    lab["state"] = "up"
    lab["up_at"] = time.time()
    labstate.save(d, lab)


def write_known_hosts(d: Path, lab: dict) -> None:
    lines = []
    for n in lab["nodes"]:
        pub = Path(n["dir"]) / "sshd" / "host_ed25519.pub" if n["kind"] == "localdisk" else n.get("host_key_pub")
        if pub and Path(pub).exists():
            kind, key = Path(pub).read_text().split()[:2]
            lines.append(f"{n['addr']} {kind} {key}")
    (d / "ssh" / "known_hosts").write_text("\n".join(lines) + ("\n" if lines else ""))


def start_daemon(d: Path, lab: dict) -> int:
    log = open(d / firmware.LOGFILE, "ab")
    env = dict(os.environ)
    env["PYTHONPATH"] = IMPORT_PATH
    proc = subprocess.Popen([sys.executable, "-m", "bmm_lab.firmware", "--dir", str(d), "--tag", f"bmmlab-{lab['id']}"],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                            cwd="/", env=env)
    log.close()
    lab["daemon_pid"] = proc.pid
    labstate.save(d, lab)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = d / "firmware.error"
            why = err.read_text(errors="replace").strip() if err.exists() else \
                " ".join((d / firmware.LOGFILE).read_text(errors="replace").strip().splitlines()[-1:])
            raise LabError(f"the lab daemon could not start: {why} (see {d / firmware.LOGFILE})")
        if firmware.alive(d, timeout=1):
            return proc.pid
        time.sleep(0.05)
    raise LabError("the lab daemon did not answer within 15 s (see DIR/firmware.log)")


def wait_bmcs(lab: dict, timeout: float = 15.0) -> None:
    for n in lab["nodes"]:
        if n["kind"] != "localdisk":
            continue
        deadline = time.monotonic() + timeout
        while True:
            res = run(bmc.ipmitool_argv(n, "chassis", "power", "status"), timeout=10, check=False)
            if res.ok and "Chassis Power is" in res.stdout:
                break
            if time.monotonic() > deadline:
                raise LabError(f"BMC on 127.0.0.1:{n['bmc_port']} does not answer ipmitool: "
                               f"{(res.stderr or res.stdout).strip()[-200:]}", node=n["name"])
            time.sleep(0.1)


def wait_states(d: Path, lab: dict, *, timeout: float, want=("running",), names_=None) -> dict:
    deadline = time.monotonic() + timeout
    targets = set(names_ or [n["name"] for n in lab["nodes"]])
    while True:
        st = firmware.call(d, {"op": "status"})["nodes"]
        pending = {name for name in targets if st.get(name, {}).get("state") not in want}
        failed = {name for name in pending if st.get(name, {}).get("state") == "failed"}
        if failed:
            name = sorted(failed)[0]
            raise LabError(f"did not boot: {st[name].get('detail')} (see {_console(lab, name)})", node=name)
        if not pending:
            return st
        if time.monotonic() > deadline:
            name = sorted(pending)[0]
            raise LabError(f"still {st.get(name, {}).get('state')} after {timeout:g} s "
                           f"(see {_console(lab, name)})", node=name)
        time.sleep(0.1)


def _console(lab: dict, name: str) -> str:
    for n in lab["nodes"]:
        if n["name"] == name:
            return n.get("console") or n["dir"]
    return lab["dir"]


# ====================================================================== inventory

def _host_facts() -> tuple[int, int]:
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    return os.cpu_count() or 1, mem_kb // 1024


def inventory_dict(d: Path, lab: dict) -> dict:
    cpus, mem = _host_facts()
    board_mod = board_module()
    nodes = {}
    for n in lab["nodes"]:
        if n["kind"] == "localdisk":
            nodes[n["name"]] = {
                "kind": "localdisk", "arch": os.uname().machine, "model": "bmm lab server",
                "cpus": cpus, "memory_mb": mem, "disk_gb": max(1, Path(n["disk"]).stat().st_size // 2**30),
                "macs": [n["mac"]], "ip": n["addr"],
                "ssh": {"address": n["addr"], "port": 22, "user": "root", "key": str(d / "ssh" / "lab_key"),
                        "known_hosts": str(d / "ssh" / "known_hosts"), "host_key_policy": "accept-new"},
                "power": {"driver": "ipmi", "host": "127.0.0.1", "port": n["bmc_port"], "user": n["bmc_user"],
                          "password_file": n["password_file"], "interface": "lanplus", "cipher_suite": 3},
                "boot": {"method": "grub", "boot_dir": "/boot", "home_entry": "home"},
                "storage": {"vg": n["vg"]},
                "hardware": {"lab": f"bmm lab {lab['id']}", **server.PCI_HARDWARE.get(n["n"], {})},
            }
        elif board_mod is not None and hasattr(board_mod, "inventory"):
            nodes[n["name"]] = board_mod.inventory(lab, n)
    return {"nodes": nodes}


def write_inventory(d: Path, lab: dict) -> Path:
    header = (f"# bmm inventory of lab {lab['id']} in {d} (written by `bmm lab up`; docs/inventory.md)\n"
              f"# Use it with: bmm --inventory {d / 'nodes.toml'} ...  or  BMM_INVENTORY={d / 'nodes.toml'}\n\n")
    path = d / "nodes.toml"
    path.write_text(header + toml.dumps(inventory_dict(d, lab)))
    return path


# ====================================================================== status

def status(lab_dir=None) -> dict:
    d = resolve_dir(lab_dir)
    lab = labstate.load(d)
    live = None
    if lab.get("state") != "down":
        with contextlib.suppress(LabError):
            live = firmware.call(d, {"op": "status"}, timeout=5)["nodes"]
    board_mod = board_module()
    nodes = []
    for n in lab.get("nodes", []):
        st = (live or {}).get(n["name"], {})
        obj = {
            "name": n["name"], "kind": n["kind"],
            "power": st.get("power") if live is not None else None,
            "state": st.get("state", "unknown" if lab.get("state") != "down" else "down"),
            "detail": st.get("detail", ""),
            "ip": n.get("addr"), "netns": n["ns"],
            "ssh": {"host": n.get("addr"), "port": 22, "user": "root", "key": str(d / "ssh" / "lab_key")},
            "console": n.get("console"),
        }
        if n["kind"] == "localdisk":
            obj["bmc"] = {"host": "127.0.0.1", "port": n.get("bmc_port"), "user": n.get("bmc_user"),
                          "password_file": n.get("password_file"), "interface": "lanplus", "cipher_suite": 3}
            obj.update(vg=n["vg"], boot_dir=n["boot_dir"], lvm_system_dir=n["lvm_dir"], disk=n["disk"],
                       loop=n.get("loop"))
        elif board_mod is not None and hasattr(board_mod, "status"):
            with contextlib.suppress(Exception):
                obj.update(board_mod.status(lab, n))
        nodes.append(obj)
    return {
        "id": lab["id"], "dir": str(d), "state": lab.get("state"),
        "daemon": {"pid": lab.get("daemon_pid"), "alive": live is not None,
                   "socket": str(firmware.socket_path(d))},
        "net": lab.get("net"), "port_base": lab.get("port_base"), "dm": lab.get("dm"),
        "inventory": str(d / "nodes.toml"), "lvm_system_dir": str(d / "lvm"),
        "known_hosts": str(d / "ssh" / "known_hosts"),
        "nodes": nodes,
    }


# ====================================================================== down

def down(lab_dir=None, *, say: Progress = _quiet, purge: bool = False) -> dict:
    """Stop and remove everything the lab in DIR created. Safe to run twice or after kill -9."""
    d = resolve_dir(lab_dir)
    if os.geteuid() != 0:
        raise LabError("bmm lab down needs root")
    if not d.exists():
        raise LabError(f"no lab in {d} (it does not exist)")
    with file_lock(d / ".lock", wait=60, what=f"lab dir {d}"):
        report = _down_locked(d, say=say)
    if purge:
        shutil.rmtree(d, ignore_errors=True)
    return report


def _cmdline_refs(pid: int, needle: bytes, ends: tuple = (b"/", b" ", b'"', b"'")) -> bool:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    for arg in raw.split(b"\0"):
        i = arg.find(needle)
        while i >= 0:
            end = i + len(needle)
            if end == len(arg) or arg[end:end + 1] in ends:
                return True
            i = arg.find(needle, i + 1)
    return False


def _ancestors() -> set[int]:
    out = set()
    pid = os.getpid()
    while pid > 1:
        out.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            pid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return out


def lab_processes(d: Path, lab_id: str | None) -> list[int]:
    """Processes of this lab: cmdline references DIR, or they live in one of its netns."""
    needles = [(str(d).encode(), (b"/", b" ", b'"', b"'"))]
    if lab_id:       # the tag: bmmlab-<id> or bmmlab-<id>-<node>
        needles.append((f"bmmlab-{lab_id}".encode(), (b"-",)))
    keep = _ancestors()
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            pid = int(entry.name)
            if pid not in keep and any(_cmdline_refs(pid, n, e) for n, e in needles):
                pids.add(pid)
    if lab_id:
        for ns in netns.list_ns(names.ns_prefix(lab_id)):
            pids.update(p for p in netns.ns_pids(ns) if p not in keep)
    return sorted(pids)


def _kill_all(d: Path, lab_id: str | None, deadline_s: float = 6.0) -> int:
    killed = 0
    pids = lab_processes(d, lab_id)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            killed += 1
    deadline = time.monotonic() + deadline_s
    grace = time.monotonic() + 1.0
    while pids and time.monotonic() < deadline:
        time.sleep(0.05)
        pids = lab_processes(d, lab_id)
        if pids and time.monotonic() > grace:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    if pids:
        raise LabError(f"processes of the lab would not die: {pids[:5]}")
    return killed


def _down_locked(d: Path, *, say: Progress) -> dict:
    """Every step runs even if an earlier one failed; the first failure is raised at the end."""
    steps = Steps(say)
    lab = labstate.load(d, missing_ok=True) or {}
    lab_id = lab.get("id")
    report = {"id": lab_id, "processes": 0, "loops": 0, "netns": 0, "links": 0}
    errors: list[str] = []

    @contextlib.contextmanager
    def attempt(what: str):
        try:
            with steps.step(what):
                yield
        except Exception as exc:  # noqa: BLE001 - keep cleaning, report at the end
            errors.append(f"{what}: {exc}")
            steps.say(f"  ! {what}: {exc}")

    with attempt("lab daemon stopped (every machine off)"):
        if firmware.alive(d, timeout=1):
            with contextlib.suppress(LabError):
                firmware.call(d, {"op": "shutdown"}, timeout=15)
            pid = lab.get("daemon_pid")
            deadline = time.monotonic() + 15
            while pid and time.monotonic() < deadline and _pid_alive(pid):
                time.sleep(0.05)
    with attempt("leftover processes killed"):
        report["processes"] = _kill_all(d, lab_id)
    board_mod = board_module()
    if board_mod is not None and hasattr(board_mod, "cleanup") and lab:
        with attempt("board half cleaned up"):
            board_mod.cleanup(lab)
    with attempt("mounts under DIR released"):
        _unmount_under(d)
    if lab.get("dm"):
        with attempt("logical volumes deactivated"):
            for n in lab.get("nodes", []):
                if n.get("vg") and n.get("lvm_dir") and Path(n["lvm_dir"]).is_dir():
                    lvm.lvm(["vgchange", "-an", n["vg"]], n["lvm_dir"], check=False, timeout=30)
    if lab_id:
        with attempt("emulated LV links removed"):
            lvm.remove_dev_links(names.link_prefix(lab_id))
    with attempt("loop devices detached"):
        report["loops"] = _detach_loops(d)
    if lab_id:
        with attempt("network namespaces and veths deleted"):
            for ns in netns.list_ns(names.ns_prefix(lab_id)):
                netns.delete_ns(ns)
                report["netns"] += 1
            for link in netns.list_links(names.link_prefix(lab_id)):
                netns.delete_link(link)
                report["links"] += 1
    for n in lab.get("nodes", []):
        if n.get("disk"):
            with contextlib.suppress(FileNotFoundError):
                Path(n["disk"]).unlink()
    (d / firmware.SOCKET).unlink(missing_ok=True)
    (d / firmware.PIDFILE).unlink(missing_ok=True)
    if lab:
        lab["state"] = "down" if not errors else "down-incomplete"
        lab["down_at"] = time.time()
        labstate.save(d, lab)
    if errors:
        raise LabError("down incomplete: " + "; ".join(errors))
    return report


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _unmount_under(d: Path) -> None:
    prefix = str(d) + "/"
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mp = line.split()[4].replace("\\040", " ")
        if mp.startswith(prefix):
            points.append(mp)
    for mp in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", mp], capture_output=True, timeout=10)


def _detach_loops(d: Path, deadline_s: float = 5.0) -> int:
    seen: set[str] = set()
    deadline = time.monotonic() + deadline_s
    while True:
        loops = lvm.lab_loops(d)
        if not loops:
            return len(seen)
        if time.monotonic() > deadline:
            raise LabError(f"loop devices of the lab stay attached: {', '.join(loops)}")
        for dev in loops:
            lvm.detach(dev)
            seen.add(dev)
        time.sleep(0.05)
