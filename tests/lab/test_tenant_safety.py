"""No action for one VM ever touches another tenant's machine, on the lab's real peers.

A tenant (VM 95) runs on a server. OpenNebula then sends, in the order oned uses, every
sequence that once reset or broke it: a refused prolog of another VM followed by its epilog
(`delete`), a clean-up (`cancel` + `delete`) for a VM that never got the machine, and a deploy,
reboot or reset of a VM with no disk on the node. After each, the running tenant is untouched:
the same boot (its init process started at the same instant, no new power event on its
console), the same power state, ssh with its CONTEXT key still answers, and bmm's record still
says VM 95 is active. The same calls against a free server touch nothing there either.
"""

from __future__ import annotations

import subprocess
import textwrap

import pytest

from bmm.config import load_config
from bmm_lab.images import build_image
from bmm.state import open_store
from bmm.transport.ssh import SshSession, SshTarget
from tests.onemock import OpenNebula, drv_action, vm_xml

SETTINGS = "ssh_wait_s = 60\nboot_wait_s = 60\npower_timeout_s = 30"
TENANT = 95


@pytest.fixture(scope="module")
def world(module_lab, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tenant")
    one = OpenNebula(tmp / "one", module_lab.inventory, settings=SETTINGS)
    store = open_store(config=load_config(one.remotes / "etc" / "bmm" / "bmm.toml"))
    key = tmp / "tenant_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    image = build_image(tmp / "tenant.img", os_id="tenantos", name="Tenant OS", size="32M")
    node = module_lab.servers[0]
    pub = key.with_suffix(".pub").read_text().strip()
    assert one.prolog(TENANT, node, image).returncode == 0
    ctx = one.context_sh(TENANT, textwrap.dedent(f"""\
        SET_HOSTNAME='tenant-95'
        SSH_PUBLIC_KEY='{pub}'
        """))
    ex = one.tm("context", [str(ctx), f"{node}:{one.disk(TENANT, 1)}", str(TENANT), "100"])
    assert ex.returncode == 0, ex.stderr
    ex = one.deploy(vm_xml(TENANT, node), node, TENANT, tmp / "deployment.0")
    assert ex.returncode == 0, ex.stderr
    return module_lab, one, store, key, image, tmp


def tenant_ssh(lab, node, key, argv):
    n = lab.node(node)
    with SshSession(SshTarget(n["ip"], n["ssh"]["port"], "root", str(key), host_key_policy="ignore",
                              connect_timeout=10)) as s:
        return s.run(argv, timeout=30).stdout


def fingerprint(lab, node, key=None):
    """What must not change: the boot (init's start time inside the node, power events on the
    console), the BMC's power state, who answers ssh."""
    console = lab.console(node)
    events = sum(console.count(word) for word in ("firmware: power on", "firmware: power off", "reset"))
    power = lab.ipmitool(node, "chassis", "power", "status").stdout.strip()
    who = tenant_ssh(lab, node, key, ["hostname"]).strip() if key else lab.ssh(node, ["hostname"]).stdout.strip()
    init_start = (tenant_ssh(lab, node, key, ["cat", "/proc/1/stat"]) if key
                  else lab.ssh(node, ["cat", "/proc/1/stat"]).stdout).split(")")[-1].split()[19]
    return {"events": events, "power": power, "who": who, "init_start": init_start}


def one_line(ex):
    lines = [line for line in ex.stderr.splitlines() if line.strip() and not line.startswith(("INFO:", "WARN:", "ERROR:"))]
    assert len(lines) <= 1 and "Traceback" not in ex.stderr, ex.stderr
    return lines[0] if lines else ""


def test_a_refused_prolog_and_its_epilog_leave_the_tenant_alone(world):
    lab, one, store, key, image, _ = world
    node = lab.servers[0]
    before = fingerprint(lab, node, key)
    ex = one.prolog(96, node, image)
    assert ex.returncode != 0
    assert f"holds VM {TENANT}; refusing VM 96" in one_line(ex)
    # oned's clean-up of the refused VM: TM delete of its disk, then of its directory
    for args in ([f"{node}:{one.disk(96, 0)}", "96", "101"], [f"{node}:{one.sysdir(96)}", "96", "100"]):
        ex = one.tm("delete", args)
        assert ex.returncode == 0, ex.stderr
        assert any("left untouched" in text for _, _, text in ex.log_lines), ex.log_lines
    assert fingerprint(lab, node, key) == before
    rec = store.get(node)
    assert rec.state == "active" and rec.vm_id == TENANT
    ex = one.simple("poll", drv_action(vm_xml(TENANT, node), node), f"bmm-{node}-{TENANT}", node, TENANT)
    assert ex.stdout.strip() == "STATE=a"


def test_a_cleanup_for_a_vm_that_never_got_the_machine_touches_nothing(world):
    lab, one, store, key, _, tmp = world
    busy, free = lab.servers[0], lab.servers[1]
    for node, fp_key in ((busy, key), (free, None)):
        before = fingerprint(lab, node, fp_key)
        record = store.get(node)
        ex = one.simple("cancel", drv_action(vm_xml(97, node), node), "", node, 97)
        assert ex.returncode == 0, ex.stderr
        for args in ([f"{node}:{one.disk(97, 0)}", "97", "101"], [f"{node}:{one.sysdir(97)}", "97", "100"]):
            assert one.tm("delete", args).returncode == 0
        ex = one.simple("shutdown", drv_action(vm_xml(97, node), node), "", node, 97)
        assert ex.returncode == 0, ex.stderr
        assert fingerprint(lab, node, fp_key) == before, node
        assert store.get(node) == record, node


@pytest.mark.parametrize("action", ["deploy", "reboot", "reset", "context"])
def test_actions_of_a_vm_with_no_disk_here_are_refused_before_anything_moves(world, action):
    lab, one, store, key, _, tmp = world
    busy, free = lab.servers[0], lab.servers[1]
    for node, fp_key in ((busy, key), (free, None)):
        before = fingerprint(lab, node, fp_key)
        record = store.get(node)
        if action == "deploy":
            ex = one.deploy(vm_xml(99, node), node, 99, tmp / f"deployment-{node}")
        elif action == "context":
            ctx = one.context_sh(99, "SET_HOSTNAME='intruder'\n")
            ex = one.tm("context", [str(ctx), f"{node}:{one.disk(99, 1)}", "99", "100"])
        else:
            ex = one.simple(action, drv_action(vm_xml(99, node), node), f"bmm-{node}-99", node, 99)
        assert ex.returncode != 0
        message = one_line(ex)
        assert message.startswith(f"node {node}: ")
        assert ("refusing VM 99" in message) if node == busy else ("does not hold VM 99" in message), message
        assert fingerprint(lab, node, fp_key) == before, node
        assert store.get(node) == record, node
