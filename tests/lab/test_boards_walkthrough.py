"""The legacy path end to end, as docs/boards.md walks an operator through it, on the lab's
boards: the blueprint's tilera_boards -> `bmm nodes import-tilera` -> the operator fills in
what the file lacks (PDU outlet, address, the proxy's files, bmm's ssh key) by editing the
lines marked FILL IN -> `bmm nodes validate` -> `bmm one register` (the tp64.8x8 instance type,
whose SCHED_REQUIREMENTS match what the filled-in boards report) -> clone, context and deploy
through the emulation of OpenNebula's exec drivers -> ssh into the board with the CONTEXT key.

Blueprint boards 1 and 2 stand for the lab's board1 (NFS root) and board2 (two-stage TFTP):
the lab's own inventory supplies the values an operator reads off the rack and the proxy.
Run under `flock /tmp/bmm-board-lab.lock` (the lab has boards).
"""

from __future__ import annotations

import os
import subprocess
import textwrap
import tomllib
from pathlib import Path

import pytest

from bmm.inventory import load_inventory
from bmm_lab import boardpaths, boardroot
from bmm.opennebula import register, template
from bmm.state import open_store
from bmm.tilera import toml_value
from bmm.transport.ssh import SshSession, SshTarget
from im_drivers.report import HostReport
from tests.onemock import OpenNebula, drv_action, vm_xml
from tests.schedexpr import evaluate
from tests.support import REPO, require_lab
from tests.unit.test_register import FakeOne

BLUEPRINT = REPO / "tests" / "data" / "tilera_boards.blueprint"
SETTINGS = "ssh_wait_s = 60\nboot_wait_s = 45\npower_timeout_s = 20"
BOARDS = {"tilera-1": ("board1", "nfsroot"), "tilera-2": ("board2", "tftp2stage")}


@pytest.fixture(scope="module")
def boards_lab():
    require_lab("in.tftpd", "ganesha.nfsd", "nfs-ls", "rpcbind", "busybox", "sshd", "telnet", "unshare",
                "losetup", "mkfs.ext4", "tar")
    from tests.lab.conftest import lab_session
    yield from lab_session(servers=0, boards=2)


def bmm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bmm", *args], capture_output=True, text=True, timeout=120)


# -- the operator's edits: each replaces one line of the imported board's block ------------------

def _block(text: str, node: str) -> tuple[int, int]:
    start = text.index(f"[nodes.{node}]\n")
    nxt = text.find("\n[nodes.", start + 1)
    while nxt != -1 and text.startswith(f"\n[nodes.{node}.", nxt):
        nxt = text.find("\n[nodes.", nxt + 1)
    return start, (len(text) if nxt == -1 else nxt + 1)


def replace_line(text: str, node: str, starts: str, new: list[str]) -> str:
    """The one line of node's block that starts with `starts`, replaced by `new`."""
    start, end = _block(text, node)
    lines = text[start:end].split("\n")
    hits = [i for i, line in enumerate(lines) if line.startswith(starts)]
    assert len(hits) == 1, (node, starts, text[start:end])
    lines[hits[0]:hits[0] + 1] = new
    return text[:start] + "\n".join(lines) + text[end:]


def fill_in(text: str, node: str, real: dict, lab_board: str, method: str) -> str:
    """What the operator types for one board (docs/boards.md, step 2), the values read off the
    lab's own inventory (`real`): the rack's PDU outlet, the board's address and MAC, the
    proxy's boot files, bmm's ssh key for the boards."""
    power = real["power"]
    text = replace_line(text, node, '# ip      = "<board address>"', [f"ip        = {toml_value(real['ip'])}"])
    text = replace_line(text, node, "macs      = ", [f"macs      = [{toml_value(real['macs'][0])}]"])
    text = replace_line(text, node, 'driver = "manual"', [f"{k} = {toml_value(power[k])}" for k in (
        "driver", "host", "port", "protocol", "user", "password_file", "outlet", "dialect")])
    boot = {k: v for k, v in real["boot"].items() if k not in ("method", "board")}
    text = replace_line(text, node, "method = ",
                        [f'method = "{method}"'] + [f"{k} = {toml_value(v)}" for k, v in boot.items()])
    text = replace_line(text, node, "board  = ", [f'board  = "{lab_board}"'])
    text = replace_line(text, node, f"# [nodes.{node}.ssh]", [f"[nodes.{node}.ssh]"])
    text = replace_line(text, node, "# key         = ", [f"key         = {toml_value(real['ssh']['key'])}"])
    return replace_line(text, node, "# known_hosts = ", [f"known_hosts = {toml_value(real['ssh']['known_hosts'])}"])


@pytest.fixture(scope="module")
def walk(boards_lab, tmp_path_factory):
    lab = boards_lab
    tmp = tmp_path_factory.mktemp("walkthrough")
    inventory = tmp / "nodes.toml"
    # 1. import the blueprint's file
    res = bmm("nodes", "import-tilera", str(BLUEPRINT), "-o", str(inventory))
    assert res.returncode == 0, res.stderr
    assert f"10 boards imported to {inventory}" in res.stderr
    # 2. fill in what it lacks
    real = tomllib.loads(lab.inventory.read_text())["nodes"]
    text = inventory.read_text()
    for node, (lab_board, method) in BOARDS.items():
        assert real[lab_board]["boot"]["method"] == method
        text = fill_in(text, node, real[lab_board], lab_board, method)
    inventory.write_text(text)
    return tmp, inventory, OpenNebula(tmp / "one", inventory, settings=SETTINGS), tenant_image(tmp)


def test_validate_and_register_the_filled_in_boards(walk):
    tmp, inventory, _, _ = walk
    # 3. validate
    res = bmm("nodes", "validate", "--inventory", str(inventory))
    assert res.returncode == 0 and "10 nodes OK" in res.stdout, (res.stdout, res.stderr)
    inv = load_inventory(inventory, extra_kinds=())
    for node in BOARDS:
        n = inv.get(node)
        assert (n.arch, n.cpus, n.power.driver, n.hardware["tile_grid"]) == ("tilepro64", 64, "pdu", "8x8")
    assert inv.get("tilera-0").power.driver == "manual"          # not filled in: never switched
    # 4. register: tp64.8x8 is the type the blueprint's boards serve; the others are skipped
    changes = {(c.kind, c.name): c for c in register.plan(FakeOne(), inv)}
    assert changes[("template", "tp64.8x8")].action == "create"
    assert [name for (kind, name), c in changes.items() if kind == "template" and c.action == "skip"] == [
        "t64.8x8", "tgx.4x4", "tgx.6x6", "tgx.8x8", "tgx.10x10"]
    served, _, _ = register.instance_types.match(inv)
    requirements = dict(template.parse(register.instance_type_text(served[0])))["SCHED_REQUIREMENTS"]
    for node in BOARDS:
        host = {k: str(v) for k, v in HostReport(inv.get(node), config=None).system_host()}
        assert evaluate(requirements, {**host, "RUNNING_VMS": "0"}), (node, requirements, host)


def tenant_image(tmp: Path) -> Path:
    root = tmp / "root"
    boardroot.populate_root(root, hostname="unused", label="Tenant Board OS", marker="walkthrough")
    (root / "root/.ssh/authorized_keys").unlink(missing_ok=True)
    (root / "etc/hostname").unlink(missing_ok=True)
    (root / "etc/os-release").write_text('ID=tenantboard\nPRETTY_NAME="Tenant Board OS (walk-through)"\n')
    out = tmp / "tenant-root.tar.gz"
    subprocess.run(["tar", "--create", "--gzip", "--file", str(out), "--numeric-owner", "-C", str(root), "."],
                   check=True)
    return out


@pytest.mark.parametrize("node,vm", [("tilera-1", 61), ("tilera-2", 62)])
def test_a_deploy_on_the_imported_board(walk, boards_lab, node, vm):
    tmp, inventory, one, image = walk
    key = tmp / f"user{vm}"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "walkthrough", "-f", str(key)], check=True)
    ip = tomllib.loads(inventory.read_text())["nodes"][node]["ip"]

    def ok(ex):
        assert ex.returncode == 0, (ex.stderr, ex.log_lines)
        return ex

    # 5. a deploy, in oned's order: PROLOG clone, then DEPLOY = TM context + VMM deploy
    ok(one.tm("clone", [f"fe:{one.register_image(image)}", f"{node}:{one.disk(vm, 0)}", str(vm), "101"]))
    ctx = one.context_sh(vm, textwrap.dedent(f"""\
        ETH0_IP='{ip}'
        ETH0_MASK='255.255.0.0'
        NETWORK='YES'
        SET_HOSTNAME='walk-{vm}'
        SSH_PUBLIC_KEY='{key.with_suffix(".pub").read_text().strip()}'
        """))
    ok(one.tm("context", [str(ctx), f"{node}:{one.disk(vm, 1)}", str(vm), "100"]))
    deploy_id = f"bmm-{node}-{vm}"
    try:
        ex = ok(one.deploy(vm_xml(vm, node), node, vm, tmp / f"deployment.{vm}"))
        assert ex.reply("DEPLOY", vm) == f"DEPLOY SUCCESS {vm} {deploy_id}"
        assert open_store(one.state_dir / "state.db").get(node).state == "active"
        # the user reaches the board itself, with their own key
        with SshSession(SshTarget(ip, 22, "root", str(key), host_key_policy="ignore", connect_timeout=10)) as s:
            assert s.run(["hostname"], timeout=60).stdout.strip() == f"walk-{vm}"
            assert "ID=tenantboard" in s.run(["cat", "/etc/os-release"], timeout=60).stdout
        lab_board = BOARDS[node][0]
        detail = boards_lab.daemon_status(lab_board)["detail"]
        assert detail.startswith("root /dev/sda1") if BOARDS[node][1] == "tftp2stage" else "nfs:" in detail, detail
    finally:
        action = drv_action(vm_xml(vm, node), node, deploy_id)
        ok(one.simple("cancel", action, deploy_id, node, vm))
        ok(one.tm("delete", [f"{node}:{one.sysdir(vm)}", str(vm), "100"]))
    rec = open_store(one.state_dir / "state.db").get(node)
    assert (rec.state, rec.vm_id) == ("available", None)
    assert not os.path.exists(boardpaths.tftp_root(boards_lab.dir) / f"vmlinux_{BOARDS[node][0]}")
