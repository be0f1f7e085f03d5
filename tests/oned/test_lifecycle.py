"""The life cycle an operator relies on, through a genuine OpenNebula and the lab's servers.

The tests run in file order and share three VMs on the two scheduler machines (every other
host is disabled while this module runs), from the template `bmm one register` made for the
servers' model: placement starts all three and the third must wait.
The first (A) then goes through the tenant checks, poweroff/resume and terminate; the second
(B) through the tenant checks, the reboots, the refusals and terminate --hard; the third,
placed once A's machine is free, ends with terminate from POWEROFF. A failure on A does not
hide what B shows, and each test first checks the VM is where it needs to be.
"""

from __future__ import annotations

import time

import pyone
import pytest

from tests.oned.cloud import DEPLOY_TIMEOUT_S, NOT_SUPPORTED, RESTART_STEP, STEP_ENDED, STEP_SUCCEEDED
from tests.oned.machine import machine_on
PENDING_CHECK_S = 20          # four scheduler retries (SCHED_RETRY_TIME = 5)


@pytest.fixture(scope="module")
def placed(cloud, template, machines):
    """Three VMs from the template with only sched1 and sched2 enabled. Yields the state the
    tests share: {"vms": [...], "running": [a, b], "pending": c}."""
    mine = {machines["sched1"].name, machines["sched2"].name}
    others = [name for name in cloud.hosts if name not in mine]
    for name in others:
        cloud.set_host_enabled(name, False)
    shared = {"vms": [cloud.instantiate(template, f"bm-life-{i}") for i in range(3)]}
    try:
        yield shared
    finally:
        cloud.discard(shared["vms"])
        for name in others:
            cloud.set_host_enabled(name, True)


def machine_of(cloud, machines, vm_id):
    return machine_on(machines, cloud.host_of(vm_id))


def vm_of(placed, key):
    if key not in placed:
        pytest.fail(f"the placement test did not get as far as giving this test its VM ({key})")
    return placed[key]


def running_vm(cloud, placed, index):
    """VM A (0) or B (1), which must be RUNNING for the test to mean anything."""
    vm = vm_of(placed, "running")[index]
    if cloud.state(vm) != "RUNNING":
        pytest.fail(f"precondition: VM {vm} is not RUNNING (an earlier test left it so)\n{cloud.explain(vm)}")
    return vm


def assert_wiped(machine, vm_id):
    assert machine.vm_lvs(vm_id) == [], f"VM {vm_id}'s LVs are still on the node: {machine.describe()}"
    record = machine.record()
    assert record.state == "available" and record.vm_id is None, machine.describe()


def test_hosts_are_monitored(cloud, lab):
    assert set(cloud.hosts) == set(lab.servers) | set(lab.boards), cloud.hosts
    for name in cloud.hosts:
        host = cloud.host(name)
        assert pyone.HOST_STATES(host.STATE).name == "MONITORED", name
        assert host.TEMPLATE["BAREMETAL"] == "YES"
        assert int(host.HOST_SHARE.TOTAL_CPU) > 0 and int(host.HOST_SHARE.TOTAL_MEM) > 0


def test_placement_gives_one_instance_per_machine(cloud, placed, machines):
    vms = placed["vms"]
    deadline = time.monotonic() + DEPLOY_TIMEOUT_S
    while True:
        states = {vm: cloud.state(vm) for vm in vms}
        failed = [vm for vm, s in states.items() if s.endswith("FAILURE")]
        assert not failed, cloud.explain(failed[0])
        running = [vm for vm, s in states.items() if s == "RUNNING"]
        if len(running) >= 2:
            break
        assert time.monotonic() < deadline, f"two VMs should be RUNNING: {states}\n" + \
            "\n".join(cloud.explain(vm) for vm in vms)
        time.sleep(0.5)
    hosts = sorted(cloud.host_of(vm) for vm in running)
    assert hosts == sorted({machines["sched1"].name, machines["sched2"].name}), states
    (pending,) = [vm for vm in vms if vm not in running]
    placed.update(running=running, pending=pending)
    end = time.monotonic() + PENDING_CHECK_S
    while time.monotonic() < end:
        assert cloud.state(pending) == "PENDING", \
            f"a third VM must wait while both machines are taken\n{cloud.explain(pending)}"
        time.sleep(1)


def test_tenant_boots_with_its_context(cloud, placed, machines):
    for vm in vm_of(placed, "running"):
        machine = machine_of(cloud, machines, vm)
        machine.wait_tenant()
        assert machine.tenant(["hostname"]).strip() == cloud.vm(vm).NAME      # CONTEXT SET_HOSTNAME=$NAME
        release = machine.os_release()
        assert (release.get("ID"), release.get("VERSION_ID").strip('"')) == ("tenantos", "42"), release


def test_poweroff_then_resume_keeps_the_disk(cloud, placed, machines):
    vm = running_vm(cloud, placed, 0)
    machine = machine_of(cloud, machines, vm)
    token = machine.write_token()
    cloud.act("poweroff", vm, "POWEROFF")
    assert not machine.powered(), machine.describe()
    assert machine.vm_lvs(vm), f"poweroff must keep the disk: {machine.describe()}"
    cloud.act("resume", vm, "RUNNING")
    machine.assert_tenant_booted(token)


@pytest.mark.parametrize("action", ["reboot", "reboot-hard"])
def test_reboot_ends_running_in_the_tenant(cloud, placed, machines, action):
    vm = running_vm(cloud, placed, 1)
    machine = machine_of(cloud, machines, vm)
    machine.wait_tenant()
    before = machine.boot_id()
    offset = cloud.log_size(vm)
    cloud.action(action, vm)
    step = RESTART_STEP[action]
    log = cloud.wait_log(vm, offset, STEP_ENDED.format(step=step))
    assert STEP_SUCCEEDED.format(step=step) in log, f"{action} failed:\n{cloud.explain(vm)}"
    assert cloud.state(vm) == "RUNNING", cloud.explain(vm)
    machine.assert_tenant_booted()
    assert machine.boot_id() != before, f"{action} succeeded but the tenant did not boot again: {machine.describe()}"


UNSUPPORTED = {
    "snapshot": lambda cloud, vm, other: cloud.one.vm.snapshotcreate(vm, "snap"),
    "nic-attach": lambda cloud, vm, other: cloud.one.vm.attachnic(vm, f'NIC = [ NETWORK_ID = "{cloud.ids.network}" ]'),
    "live-migrate": lambda cloud, vm, other: cloud.one.vm.migrate(vm, cloud.hosts[other], True, False, -1, 0),
    "migrate": lambda cloud, vm, other: cloud.one.vm.migrate(vm, cloud.hosts[other], False, False, -1, 0),
    "suspend": lambda cloud, vm, other: cloud.action("suspend", vm),
}


@pytest.mark.parametrize("what", list(UNSUPPORTED))
def test_what_bare_metal_cannot_do_is_refused(cloud, placed, machines, what):
    vm = running_vm(cloud, placed, 1)
    machine = machine_of(cloud, machines, vm)
    other = cloud.host_of(vm_of(placed, "running")[0])
    offset = cloud.log_size(vm)
    try:
        UNSUPPORTED[what](cloud, vm, other)
    except pyone.OneException as exc:
        assert NOT_SUPPORTED in str(exc), f"{what} refused by oned with {exc!r}"
    else:
        cloud.wait_log(vm, offset, NOT_SUPPORTED, timeout=60)
    cloud.wait_vm(vm, "RUNNING", timeout=60)
    assert cloud.host_of(vm) == machine.name
    machine.assert_tenant_booted()


@pytest.mark.parametrize("index,action", [(0, "terminate"), (1, "terminate-hard")])
def test_terminate_wipes_the_disk(cloud, placed, machines, index, action):
    vm = running_vm(cloud, placed, index)
    machine = machine_of(cloud, machines, vm)
    cloud.act(action, vm, "DONE")
    assert_wiped(machine, vm)


def test_the_waiting_vm_takes_a_freed_machine_and_terminates_from_poweroff(cloud, placed, machines):
    vm = vm_of(placed, "pending")
    cloud.wait_vm(vm, "RUNNING", timeout=DEPLOY_TIMEOUT_S)
    machine = machine_of(cloud, machines, vm)
    machine.assert_tenant_booted()
    cloud.act("poweroff", vm, "POWEROFF")
    cloud.act("terminate", vm, "DONE")
    assert_wiped(machine, vm)
