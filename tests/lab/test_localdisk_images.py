"""Image delivery as the local-disk TM uses it, on the lab through the OpenNebula emulation:
a qcow2 overlay whose backing file lies in its own datastore arrives with the bytes of its
whole chain, over the default transport (http, the node pulling) and over the one a node's
`storage.image_transport` names; a backing file outside the datastore is refused before the
node is touched."""

from __future__ import annotations

import hashlib
import subprocess
import tomllib
from pathlib import Path

import pytest

from bmm_lab.images import build_image
from bmm_lab.toml import dumps
from bmm.runner import LocalExecutor
from bmm.state import open_store
from bmm.config import load_config
from bmm.storage.lvm import open_lv
from tests.onemock import OpenNebula

pytestmark = pytest.mark.lab
DS = 101


@pytest.fixture(scope="module")
def world(lab, tmp_path_factory):
    """Two emulated front-ends on the session's lab: one with the inventory as the lab wrote it
    (http), one whose first server says image_transport = "ssh"."""
    tmp = tmp_path_factory.mktemp("images")
    node = lab.servers[0]
    inventory = tomllib.loads(Path(lab.inventory).read_text())
    inventory["nodes"][node].setdefault("storage", {})["image_transport"] = "ssh"
    ssh_inventory = tmp / "nodes-ssh.toml"
    ssh_inventory.write_text(dumps(inventory))
    http = OpenNebula(tmp / "http", lab.inventory)
    ssh = OpenNebula(tmp / "ssh", ssh_inventory)
    return lab, node, http, ssh, tmp


def overlay_in_datastore(one: OpenNebula, tmp: Path, name: str) -> tuple[str, bytes]:
    """A raw base image registered in the image datastore and a qcow2 overlay of it, made in
    the same datastore directory, with bytes of its own. Returns the overlay's SOURCE and the
    chain's bytes as qemu reads them."""
    base = Path(one.register_image(build_image(tmp / f"{name}-base.img", os_id=name, size="24M"), DS))
    overlay = base.parent / f"{name}-overlay"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", base.name, "-F", "raw", str(overlay)],
                   check=True, cwd=base.parent)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0xa5 20M 256k", str(overlay)],
                   check=True, capture_output=True)
    flat = tmp / f"{name}-flat.raw"
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(overlay), str(flat)], check=True)
    return str(overlay), flat.read_bytes()


def lv_bytes(lab, node: str, vg: str, lv: str, length: int) -> bytes:
    ex = LocalExecutor(extra_env=lab.lvm_env(node))
    with open_lv(ex, vg, lv) as dev, open(dev, "rb") as f:
        return f.read(length)


def lv_names(lab, node, vg):
    out = lab.ssh(node, ["lvs", "--noheadings", "-o", "lv_name", vg], timeout=60).stdout
    return sorted(line.strip() for line in out.splitlines() if line.strip())


def delete_vm(one, node, vm):
    ex = one.tm("delete", [f"{node}:{one.sysdir(vm)}", str(vm), "100"])
    assert ex.returncode == 0, ex.stderr


@pytest.mark.parametrize("transport", ["http", "ssh"])
def test_a_qcow2_overlay_arrives_with_the_bytes_of_its_chain(world, transport):
    lab, node, http, ssh, tmp = world
    one = http if transport == "http" else ssh
    vm = 71 if transport == "http" else 72
    vg = lab.node(node)["vg"]
    source, chain = overlay_in_datastore(one, tmp, f"chain-{transport}")
    try:
        ex = one.tm("clone", [f"fe:{source}", f"{node}:{one.disk(vm, 1)}", str(vm), str(DS)])
        assert ex.returncode == 0, ex.stderr
        assert f"over {transport}" in ex.stderr
        got = lv_bytes(lab, node, vg, f"vm{vm}-disk1", len(chain))
        assert hashlib.sha256(got).hexdigest() == hashlib.sha256(chain).hexdigest()
        assert got[20 * 2**20:20 * 2**20 + 4] == b"\xa5" * 4       # the overlay's own bytes
    finally:
        delete_vm(one, node, vm)
    assert f"vm{vm}-disk1" not in lv_names(lab, node, vg)


def test_a_backing_file_outside_the_datastore_is_refused_and_nothing_is_touched(world):
    lab, node, http, _, tmp = world
    vg = lab.node(node)["vg"]
    outside = build_image(tmp / "elsewhere.img", os_id="elsewhere", size="16M")
    ds = http.datastores / str(DS)
    ds.mkdir(parents=True, exist_ok=True)
    overlay = ds / "escapes"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(outside), "-F", "raw", str(overlay)],
                   check=True)
    before = lv_names(lab, node, vg)
    store = open_store(config=load_config(http.remotes / "etc" / "bmm" / "bmm.toml"))
    ex = http.tm("clone", [f"fe:{overlay}", f"{node}:{http.disk(73, 0)}", "73", str(DS)])
    assert ex.returncode != 0
    failure = [line for line in ex.stderr.splitlines() if line.strip() and not line.startswith("INFO:")]
    assert len(failure) == 1 and "is not a file inside" in failure[0], ex.stderr
    assert lv_names(lab, node, vg) == before
    rec = store.get(node)
    assert rec is None or (rec.state == "available" and rec.vm_id is None)
    delete_vm(http, node, 73)                       # oned's clean-up of the failed prolog
    assert lv_names(lab, node, vg) == before
