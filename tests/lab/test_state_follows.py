"""bmm's record and what OpenNebula is told follow what the machine really does, on the lab.

What a real oned showed (the real-OpenNebula issue), replayed through the emulation of its exec
drivers and the IM report monitord receives:
- the machine falls back to its home OS (GRUB's one-shot entry used up by a power cycle from
  the BMC): never reported RUNNING; it is re-armed and rebooted into the instance once;
- powered off outside OpenNebula: reported POWEROFF, the record follows, and a resume works;
- reboot and reset: nothing is reported while they run, so oned never sees a POWEROFF;
- undeploy and disk attach are refused before anything moves;
- the host reports the disk its instance occupies.
"""

from __future__ import annotations

import subprocess
import textwrap
import time

import pytest

from bmm.config import load_config
from bmm_lab.images import build_image
from bmm.opennebula import template
from bmm.runner import LocalExecutor
from bmm.state import open_store
from bmm.transport.ssh import SshSession, SshTarget
from im_drivers.control import build_report
from im_drivers.messages import payloads
from tests.onemock import OpenNebula, drv_action, vm_xml

SETTINGS = "ssh_wait_s = 60\nboot_wait_s = 60\npower_timeout_s = 30"
VM = 61


@pytest.fixture(scope="module")
def world(module_lab, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("follow")
    one = OpenNebula(tmp / "one", module_lab.inventory, settings=SETTINGS)
    config = load_config(one.remotes / "etc" / "bmm" / "bmm.toml")
    key = tmp / "tenant_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    image = build_image(tmp / "tenant.img", os_id="tenantos", name="Tenant OS", size="48M")
    node = module_lab.servers[0]
    pub = key.with_suffix(".pub").read_text().strip()
    assert one.prolog(VM, node, image).returncode == 0
    ctx = one.context_sh(VM, textwrap.dedent(f"""\
        SET_HOSTNAME='tenant-61'
        SSH_PUBLIC_KEY='{pub}'
        """))

    def deploy(seq: int):
        ex = one.tm("context", [str(ctx), f"{node}:{one.disk(VM, 1)}", str(VM), "100"])
        assert ex.returncode == 0, ex.stderr
        ex = one.deploy(vm_xml(VM, node), node, VM, tmp / f"deployment.{seq}")
        assert ex.returncode == 0, ex.stderr

    deploy(0)
    yield module_lab, one, config, open_store(config=config), key, node, deploy


def reported(config, node):
    """STATE_VM as monitord would decode it, from one report built like the daemon builds it."""
    payload = payloads(build_report(config, node), ("STATE_VM",))["STATE_VM"]
    return {attrs["ID"]: attrs["STATE"] for _, attrs in template.parse(payload)}


def tenant_answers(lab, node, key) -> bool:
    n = lab.node(node)
    try:
        with SshSession(SshTarget(n["ip"], n["ssh"]["port"], "root", str(key), host_key_policy="ignore",
                                  connect_timeout=5)) as s:
            return s.run(["hostname"], timeout=10).stdout.strip() == "tenant-61"
    except Exception:  # noqa: BLE001 - not answering is the answer
        return False


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_the_home_os_is_never_reported_running_and_the_tenant_is_rearmed(world):
    lab, one, config, store, key, node, _ = world
    assert reported(config, node) == {str(VM): "RUNNING"}
    # a power cycle from the BMC: next_entry was used up, GRUB boots the home OS
    lab.ipmitool(node, "chassis", "power", "off")
    lab.ipmitool(node, "chassis", "power", "on")
    lab.wait_ssh(node, timeout=60)                      # bmm's key: the home OS answers
    assert not tenant_answers(lab, node, key)
    seen = reported(config, node)                       # starts the re-arm
    assert seen.get(str(VM)) != "RUNNING", seen
    wait_for(lambda: store.get(node).state == "rebooting" or tenant_answers(lab, node, key), 30,
             "the re-arm to start")
    while store.get(node).state == "rebooting":
        assert reported(config, node) == {}             # nothing while it reboots
        time.sleep(0.5)
    wait_for(lambda: tenant_answers(lab, node, key), 90, "the tenant to run again")
    rec = store.get(node)
    assert rec.state == "active" and rec.vm_id == VM
    assert any("found in the home OS" in (h.reason or "") for h in store.history(node))
    assert reported(config, node) == {str(VM): "RUNNING"}


def test_a_power_off_outside_opennebula_is_followed_and_resume_works(world):
    lab, one, config, store, key, node, deploy = world
    lab.ipmitool(node, "chassis", "power", "off")
    assert reported(config, node) == {str(VM): "POWEROFF"}
    assert store.get(node).state == "off"               # the record followed the machine
    deploy(1)                                           # onevm resume: context + deploy
    assert tenant_answers(lab, node, key)
    assert store.get(node).state == "active"


def test_a_reboot_is_never_reported_as_a_power_off(world):
    lab, one, config, store, key, node, _ = world
    for action in ("reboot", "reset"):
        xml = drv_action(vm_xml(VM, node), node)
        proc = one.start("vmm", action, [f"bmm-{node}-{VM}", node, str(VM), node], xml.encode())
        seen = []
        while proc.poll() is None:
            seen.append(reported(config, node).get(str(VM)))
            time.sleep(0.3)
        ex = one.finish(proc)
        assert ex.returncode == 0, ex.stderr
        assert "POWEROFF" not in seen, seen
        assert reported(config, node) == {str(VM): "RUNNING"}


def test_undeploy_is_refused_before_the_instance_is_powered_off(world):
    lab, one, config, store, key, node, _ = world
    xml = vm_xml(VM, node).replace("<LCM_STATE>2</LCM_STATE>", "<LCM_STATE>29</LCM_STATE>")  # SHUTDOWN_UNDEPLOY
    for action in ("shutdown", "cancel"):
        ex = one.simple(action, drv_action(xml, node), f"bmm-{node}-{VM}", node, VM)
        assert ex.returncode != 0 and "undeploy" in ex.stderr and "not supported on bare metal" in ex.stderr
        assert tenant_answers(lab, node, key)
        assert store.get(node).state == "active"


def test_disk_attach_is_refused_and_its_rollback_touches_nothing(world):
    lab, one, config, store, key, node, _ = world
    vg = lab.node(node)["vg"]

    def lvs():          # read from outside: the node's LVM metadata, whatever OS runs on it
        return LocalExecutor(extra_env=lab.lvm_env(node)).run(
            ["lvs", "--noheadings", "-o", "lv_name", vg], timeout=30).stdout.split()

    lvs_before = lvs()
    image = one.register_image(build_image(one.root / "extra.img", os_id="extra", size="16M"))
    for running in (True, False):
        if not running:
            ex = one.simple("shutdown", drv_action(vm_xml(VM, node), node), f"bmm-{node}-{VM}", node, VM)
            assert ex.returncode == 0, ex.stderr
        record = store.get(node)
        power = lab.ipmitool(node, "chassis", "power", "status").stdout
        ex = one.tm("clone", [f"fe:{image}", f"{node}:{one.disk(VM, 3)}", str(VM), "101"])
        assert ex.returncode != 0 and "disk attach is not supported on bare metal" in ex.stderr
        ex = one.tm("mkimage", ["64", "raw", f"{node}:{one.disk(VM, 4)}", str(VM), "100"])
        assert ex.returncode != 0 and "disk attach is not supported on bare metal" in ex.stderr
        ex = one.tm("delete", [f"{node}:{one.disk(VM, 3)}", str(VM), "101"])       # oned's roll-back
        assert ex.returncode == 0, ex.stderr
        assert store.get(node) == record
        assert lab.ipmitool(node, "chassis", "power", "status").stdout == power   # never powered on
    assert lvs() == lvs_before


def test_the_host_reports_the_disk_its_instance_occupies(world):
    lab, one, config, store, key, node, _ = world
    system = dict(template.parse(payloads(build_report(config, node), ("SYSTEM_HOST",))["SYSTEM_HOST"]))
    used = int(system["DS_LOCATION_USED_MB"])
    assert 48 <= used <= 48 + 8, system                 # the 48 MiB root LV plus the context LV
    assert int(system["DS_LOCATION_FREE_MB"]) == int(system["DS_LOCATION_TOTAL_MB"]) - used
