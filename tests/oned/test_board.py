"""A netboot board's life cycle through a genuine OpenNebula, for both boot methods: the lab's
NFS-root board and its two-stage TFTP board, their hosts and templates made by
`bmm one register`, the root filesystem an image in bm_images (an ext4 filesystem image for
the NFS-root board) or bm_rootfs (a tar.gz root filesystem, for the two-stage one).

instantiate (the board's instance type, tp64.8x8) -> the scheduler places it on the board (the
other boards' hosts are disabled meanwhile) -> RUNNING -> ssh into the board with the CONTEXT
key (hostname, the image's os-release) -> poweroff (outlet off, root kept) -> resume (a two-stage
board boots its disk straight away) -> terminate -> the root gone from the proxy (fs_<board> and
its export; or the staged root, with /dev/sda1 zeroed), the outlet off, the node available.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from bmm.boot.netboot import NfsRootBoot
from bmm.config import load_config
from bmm.errors import BmmError
from bmm.inventory import node_for_host
from bmm_lab import boardpaths, boardroot, netboot
from bmm.opennebula.register import IMAGE_DS, ROOTFS_DS
from bmm.opennebula.register import template_name
from bmm.transport.ssh import SshSession, SshTarget
from tests.oned.cloud import DEPLOY_TIMEOUT_S, Template
from tests.oned.machine import Machine
from tests.support import all_zero


@pytest.fixture(params=["nfsroot", "tftp2stage"])
def board(request, lab, cloud, tenant_key) -> Machine:
    """The lab board that boots that way, with every other board's host disabled meanwhile."""
    mine = [b for b in lab.boards if netboot.boot_method(lab.lab_node(b)) == request.param]
    if not mine:
        pytest.fail(f"the tier's lab has no {request.param} board: {lab.boards}")
    others = [b for b in lab.boards if b != mine[0]]
    for name in others:
        cloud.set_host_enabled(name, False)
    try:
        yield Machine(lab, mine[0], tenant_key, cloud.bmm_config)
    finally:
        for name in others:
            cloud.set_host_enabled(name, True)


@pytest.fixture(scope="module")
def board_root(images_dir) -> Path:
    """A board root without one-context and without any key of its own, so only the CONTEXT
    key can let anyone in."""
    root = images_dir / "board-root"
    boardroot.populate_root(root, hostname="board-image", label="Tenant Board OS")
    (root / "root/.ssh/authorized_keys").unlink()
    (root / "etc/os-release").write_text('ID=tenantboard\nPRETTY_NAME="Tenant Board OS"\n')
    return root


def register_root(cloud, root: Path, kind: str) -> int:
    """The root registered in bm_images as an ext4 filesystem image, or as the tar.gz root
    filesystem the field report's two-stage boot uploads."""
    if kind == "ext4":
        path = root.with_name("board-root.ext4")
        argv = ["mkfs.ext4", "-q", "-F", "-d", str(root), str(path), "48M"]
    else:
        path = root.with_name("board-root.tar.gz")
        argv = ["tar", "--create", "--gzip", "--file", str(path), "--numeric-owner", "-C", str(root), "."]
    subprocess.run(argv, check=True, capture_output=True, timeout=120)
    # a rootfs tarball in bm_rootfs (NO_DECOMPRESS): bm_images would have oned unpack it
    return cloud.register_image(path, f"board-os-{kind}", datastore=ROOTFS_DS if kind == "tar.gz" else IMAGE_DS)


def board_template(registered, node) -> str:
    """The instance type (issue 11: t64.8x8, tp64.8x8, tgx.*) `bmm one register` made for this
    board, when it made one, so the scheduler judges that type's SCHED_REQUIREMENTS against
    what the board reports; else the board model's template."""
    from bmm.instance_types import match
    created = {line.split()[2].rstrip(":") for line in registered.run.stdout.splitlines()
               if line.split()[:2] == ["create", "template"]}
    served, _, _ = match([node])
    types = [m.itype.name for m in served if m.itype.name in created]
    return types[0] if types else template_name(node.model)


def on_board(lab, name: str, key: Path, argv: list[str]) -> str:
    n = lab.node(name)
    target = SshTarget(n["ip"], 22, "root", str(key), host_key_policy="ignore", connect_timeout=10, node=name)
    with SshSession(target) as session:
        return session.run(argv, timeout=30).stdout


def assert_booted(cloud, vm, lab, board: Machine, key: Path, token: str | None = None) -> None:
    try:
        hostname = on_board(lab, board.name, key, ["hostname"]).strip()
        release = on_board(lab, board.name, key, ["cat", "/etc/os-release"])
        kept = on_board(lab, board.name, key, ["cat", "/root/bmm-data"]).strip() if token else None
    except BmmError as exc:
        pytest.fail(f"VM {vm} is RUNNING, but the board does not let the CONTEXT key in: {exc}\n"
                    f"{board.describe()}\n{cloud.explain(vm)}")
    assert hostname == cloud.vm(vm).NAME, f"{board.name} calls itself {hostname!r}"
    assert "ID=tenantboard" in release, release
    if token:
        assert kept == token, f"{board.name}: the root lost what was written to it before poweroff"



def test_a_board_through_its_life_cycle(cloud, registered, lab, board, board_root, tenant_key):
    node = node_for_host(load_config(cloud.bmm_config), board.name)
    nfsroot = node.boot.method == "nfsroot"
    export = Path(NfsRootBoot(node.name, node.boot.settings).root_dir) if nfsroot else None     # fs_<board>
    staged = boardpaths.stage_dir(lab.dir)
    image = register_root(cloud, board_root, "ext4" if nfsroot else "tar.gz")
    template = Template(cloud.template_named(board_template(registered, node)),
                        cloud.extra(image, tenant_key.with_suffix(".pub").read_text().strip(), nic=False))
    vm = cloud.instantiate(template, f"bm-{board.name}")
    try:
        cloud.wait_vm(vm, "RUNNING", timeout=DEPLOY_TIMEOUT_S)
        assert cloud.host_of(vm) == board.name, cloud.explain(vm)
        assert board.powered(), board.describe()
        if nfsroot:
            assert export.is_dir(), board.describe()
        else:
            assert lab.daemon_status(board.name)["detail"].startswith("root /dev/sda1"), board.describe()
        assert_booted(cloud, vm, lab, board, tenant_key)
        token = os.urandom(8).hex()
        on_board(lab, board.name, tenant_key, ["sh", "-c", f"echo {token} > /root/bmm-data && sync"])

        cloud.act("poweroff", vm, "POWEROFF")
        assert not board.powered(), f"poweroff left the outlet on: {board.describe()}"
        assert board.record().state == "off", board.describe()

        offset = cloud.log_size(vm)
        cloud.act("resume", vm, "RUNNING", timeout=DEPLOY_TIMEOUT_S)
        assert_booted(cloud, vm, lab, board, tenant_key, token)
        if not nfsroot:
            assert "root already; no upload" in cloud.log_since(vm, offset), cloud.explain(vm)

        cloud.act("terminate", vm, "DONE")
        record = board.record()
        assert (record.state, record.vm_id) == ("available", None), board.describe()
        assert not board.powered(), board.describe()
        if nfsroot:
            assert not export.exists(), f"terminate left {export}: {board.describe()}"
            exports = boardpaths.exports_dir(lab.dir)
            assert not list(exports.glob(f"*{board.name}*")), f"terminate left an export: {list(exports.iterdir())}"
        else:
            assert not list(staged.glob(f"{board.name}-vm{vm}-*")), list(staged.iterdir())
            assert all_zero(Path(lab.lab_node(board.name)["sda_image"])), f"{board.name}'s /dev/sda1 was not zeroed"
    finally:
        cloud.discard([vm])
