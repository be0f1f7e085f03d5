"""The local-disk kind's decisions, with fake parts (tests/fakeparts.py): what each OpenNebula
action does to the machine and to the node's record, and what poll and the IM say. The lab
tests prove the same against real peers; these run in milliseconds and cover every case."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from bmm.config import Config
from bmm.errors import NotSupported, Refused
from bmm.opennebula.reply import Reporter
from bmm.opennebula.vm import parse_driver_action
from bmm.state import StateStore
from im_drivers.report import HostReport
from tests.fakeparts import HOME_KEY, FakeBoot, FakeDisk, FakePower, FakeTransport, Machine
from tests.onemock import drv_action, vm_xml
from vmm_drivers import localdisk
from vmm_drivers.base import TmCall, VmmCall
from vmm_drivers.localdisk import LocalDiskKind, Parts

VM = 7


@pytest.fixture
def world(tmp_path, monkeypatch):
    machine = Machine()
    config = Config(state_db=tmp_path / "state.db", lock_wait_s=2, ssh_wait_s=5, boot_wait_s=5)
    node = SimpleNamespace(name="n1", kind="localdisk", macs=("52:54:00:00:00:01",), memory_mb=1024, cpus=4)
    parts = Parts(power=FakePower(machine), boot=FakeBoot(machine), disk=FakeDisk(machine),
                  transport=FakeTransport(machine))
    kind = LocalDiskKind(node, config, Reporter(live=False), parts=parts)
    (tmp_path / "hostkeys").mkdir()
    (tmp_path / "hostkeys" / "n1.pub").write_text(HOME_KEY + "\n")
    monkeypatch.setattr(localdisk.time, "sleep", lambda s: None)
    rearms = []
    monkeypatch.setattr(localdisk, "start_rearm", lambda config, node, vm: rearms.append((node, vm)))
    return SimpleNamespace(machine=machine, kind=kind, store=StateStore(config.state_db, lock_wait_s=2),
                           disk=parts.disk, rearms=rearms)


def call(action, vm=VM, lcm=2):
    xml = vm_xml(vm, "n1").replace("<LCM_STATE>2</LCM_STATE>", f"<LCM_STATE>{lcm}</LCM_STATE>")
    return VmmCall(action=action, argv=[], vm_id=vm, host="n1", drv_action=parse_driver_action(drv_action(xml, "n1")))


def provision(w, vm=VM):
    """What a successful TM clone leaves: the VM's disk on the node, its boot record, provisioned."""
    w.disk.lvs[f"vm{vm}-disk0"] = 32 << 20
    w.kind._note_lv(vm, f"vm{vm}-disk0", 32 << 20, boot={"lv": f"vm{vm}-disk0", "kernel": "/vmlinuz",
                                                          "initrd": "/initrd.img", "fstype": "ext4"})
    w.store.transition("n1", "deploying", vm_id=vm)
    w.store.transition("n1", "provisioned", vm_id=vm)


def running(w, vm=VM):
    provision(w, vm)
    assert w.kind.perform("deploy", call("deploy", vm)) == f"bmm-n1-{vm}"
    w.machine.calls.clear()


def test_deploy_arms_the_instance_and_boots_it(world):
    provision(world)
    assert world.kind.perform("deploy", call("deploy")) == "bmm-n1-7"
    assert world.machine.os == "tenant" and "arm 7" in world.machine.calls
    rec = world.store.get("n1")
    assert (rec.state, rec.vm_id) == ("active", 7)


def test_deploy_of_a_vm_without_a_boot_disk_moves_nothing(world):
    world.store.transition("n1", "deploying", vm_id=VM)
    world.store.transition("n1", "provisioned", vm_id=VM)
    with pytest.raises(Refused, match="has no boot disk of VM 7"):
        world.kind.perform("deploy", call("deploy"))
    assert world.machine.calls == [] and world.store.get("n1").state == "provisioned"


@pytest.mark.parametrize("action", ["reboot", "reset"])
def test_reboot_and_reset_come_back_into_the_instance(world, action):
    running(world)
    world.kind.perform(action, call(action))
    first = "power off" if action == "reboot" else "power reset"
    assert first in world.machine.calls and world.machine.calls.count("arm 7") == 1
    assert world.machine.os == "tenant" and world.store.get("n1").state == "active"
    assert [h.to_state for h in world.store.history("n1")][-2:] == ["rebooting", "active"]


def test_shutdown_failing_with_the_instance_still_up_leaves_it_active(world, monkeypatch):
    running(world)
    monkeypatch.setattr(FakePower, "soft_off", lambda self: (_ for _ in ()).throw(Refused("ACPI ignored")))
    with pytest.raises(Exception, match="did not power off"):
        world.kind.perform("shutdown", call("shutdown"))
    assert world.store.get("n1").state == "active"


def test_shutdown_with_the_bmc_away_ends_in_error_not_stopping(world):
    running(world)
    world.machine.bmc_broken = True
    with pytest.raises(Exception):
        world.kind.perform("shutdown", call("shutdown"))
    rec = world.store.get("n1")
    assert rec.state == "error" and "shutdown of VM 7 failed" in rec.last_error


@pytest.mark.parametrize("action", ["shutdown", "cancel"])
def test_undeploy_is_refused_before_the_power_off(world, action):
    running(world)
    with pytest.raises(NotSupported, match="undeploy"):
        world.kind.perform(action, call(action, lcm=29))
    assert world.machine.calls == [] and world.store.get("n1").state == "active"


def test_a_disk_for_an_instance_that_exists_is_a_hot_plug_and_refused(world):
    running(world)
    for action in ("tm_clone", "tm_mkimage", "tm_mkswap"):
        tm = TmCall(action.removeprefix("tm_"), [], VM, 101, "n1", "/x/disk.3", 3, size_mb=64)
        with pytest.raises(NotSupported, match="disk attach"):
            world.kind.perform(action, tm)
    # oned's roll-back: a delete of the disk bmm never made touches nothing
    world.kind.perform("tm_delete", TmCall("delete", [], VM, 101, "n1", "/x/disk.3", 3))
    assert world.machine.calls == [] and world.store.get("n1").state == "active"


def test_delete_wipes_every_disk_of_the_vm_and_frees_the_node(world):
    running(world)
    world.disk.lvs["vm7-context"] = 1 << 20
    world.kind.perform("cancel", call("cancel"))
    world.kind.perform("tm_delete", TmCall("delete", [], VM, 100, "n1", "/x", None))
    assert world.disk.lvs == {} and "disarm 7" in world.machine.calls
    rec = world.store.get("n1")
    assert (rec.state, rec.vm_id) == ("available", None)
    assert world.kind.used_disk_mb(rec) == 0


@pytest.mark.parametrize("action", ["cancel", "shutdown"])
def test_clean_ups_for_a_vm_that_does_not_own_the_node_touch_nothing(world, action):
    running(world)
    world.kind.perform(action, call(action, vm=8))
    world.kind.perform("tm_delete", TmCall("delete", [], 8, 100, "n1", "/x", None))
    assert world.machine.calls == [] and world.store.get("n1").vm_id == VM


# --- one answer for poll and the IM: every power x what-answers case -------------------------

CASES = [
    # power, what answers, record -> poll letter, STATE_VM
    ("on", "tenant", "active", "a", "RUNNING"),
    ("on", "home", "active", "-", None),          # fell back to the home OS: re-armed, never RUNNING
    ("on", "down", "active", "-", None),          # booting or hung: nothing definite
    ("off", "down", "active", "d", "POWEROFF"),
    ("unknown", "tenant", "active", "a", "RUNNING"),  # BMC away, the instance answers
    ("unknown", "down", "active", "-", None),
    ("on", "home", "off", "d", "POWEROFF"),       # powered on from the BMC: the home OS is not the instance
    ("off", "down", "off", "d", "POWEROFF"),
    ("on", "home", "error", "d", "POWEROFF"),     # a failed re-arm, reported honestly
]


@pytest.mark.parametrize("power,answers,record,letter,state", CASES)
def test_poll_and_the_im_agree(world, monkeypatch, power, answers, record, letter, state):
    running(world)
    if record != "active":
        world.store.transition("n1", "stopping" if record == "off" else "error", vm_id=VM, error="test")
        if record == "off":
            world.store.transition("n1", "off", vm_id=VM)
    world.machine.power = "on" if power == "unknown" else power
    world.machine.os = answers
    if power == "unknown":
        monkeypatch.setattr(FakePower, "status", lambda self: "unknown")
    polled = world.kind.poll(call("poll"))
    assert polled == f"STATE={letter}"
    assert world.store.get("n1").state == record and world.rearms == []    # a poll never acts
    report = HostReport(world.kind.node, world.kind.config, world.store, kind=world.kind)
    reported = [vm.state for vm in report.vms()]
    assert reported == ([state] if state else [])
    if (power, record) == ("off", "active"):
        assert world.store.get("n1").state == "off"                          # the record followed
    if (answers, record) == ("home", "active"):
        assert world.rearms == [("n1", VM)]                                   # one re-arm started


def test_rearm_boots_the_instance_again_from_the_home_os(world):
    running(world)
    world.machine.os = "home"                     # the tenant rebooted itself: next_entry was spent
    world.kind.perform("rearm", VmmCall(action="rearm", argv=[], vm_id=VM, host="n1"))
    assert world.machine.os == "tenant" and world.store.get("n1").state == "active"
    assert any("found in the home OS" in (h.reason or "") for h in world.store.history("n1"))


def test_rearm_when_the_instance_runs_does_nothing(world):
    running(world)
    world.kind.perform("rearm", VmmCall(action="rearm", argv=[], vm_id=VM, host="n1"))
    assert "power reset" not in world.machine.calls


def test_the_report_says_which_record_its_instance_state_holds_under(world, monkeypatch):
    """The monitor daemon sends a probe's VM states only while the node's record is still the
    one they were observed under (vms_basis): the kind's own follow-up write is theirs; a
    write by another process while the BMC was asked is not."""
    running(world)
    report = HostReport(world.kind.node, world.kind.config, world.store, kind=world.kind)
    assert [vm.state for vm in report.vms()] == ["RUNNING"]
    assert report.vms_basis == world.store.get("n1").version

    world.machine.power = "off"                     # powered off outside OpenNebula: the record follows
    report = HostReport(world.kind.node, world.kind.config, world.store, kind=world.kind)
    assert [vm.state for vm in report.vms()] == ["POWEROFF"]
    assert world.store.get("n1").state == "off"
    assert report.vms_basis == world.store.get("n1").version

    other = StateStore(world.kind.config.state_db)  # an action elsewhere, while the BMC answers
    status = FakePower.status

    def meanwhile(self):
        other.transition("n1", "deleting", vm_id=VM)
        return status(self)

    monkeypatch.setattr(FakePower, "status", meanwhile)
    world.store.transition("n1", "stopping", vm_id=VM)
    world.store.transition("n1", "active", vm_id=VM)
    world.machine.power = "on"
    world.machine.os = "tenant"
    report = HostReport(world.kind.node, world.kind.config, world.store, kind=world.kind)
    assert [vm.state for vm in report.vms()] == ["RUNNING"]        # what the BMC said: from before
    assert report.vms_basis == ("active", VM, report.vms_basis[2])
    assert report.vms_basis != world.store.get("n1").version       # so the daemon drops it
