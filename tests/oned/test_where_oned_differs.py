"""Where a genuine oned does what bmm may not assume (DESIGN.md "What a genuine oned does that a
naive driver misses"), each written as the behaviour an operator relies on.

Every scenario has its own lab server (conftest.ROLES) and its own VM. The VMs are created on
hold and deployed to their machines all at once when the module starts (`onevm deploy`), so
the deploys overlap; each test then waits for its own.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from pathlib import Path

import pyone
import pytest

from tests.oned.cloud import DEPLOY_TIMEOUT_S, NOT_SUPPORTED, RESTART_STEP, STEP_ENDED, STEP_SUCCEEDED
from tests.oned.machine import machine_on

FLEET = ("fallback", "outside_off", "reboot", "reset", "undeploy", "attach_running", "attach_poweroff",
         "occupied_delete", "occupied_terminate", "leaked")
WATCH_AFTER_S = 60           # how long a state is watched after an operation
SAMPLE_S = 0.5
MONITOR_NOTICE_S = 60        # STATE_VM every 5 s; oned ignores updates 30 s after a state change
USED_DISK_WAIT_S = 70        # SYSTEM_HOST every 20 s in the tier's monitord.conf


class Fleet:
    """One VM per role, deployed to that role's machine."""

    def __init__(self, cloud, machines, template):
        self.cloud, self.machines, self.template = cloud, machines, template
        self.vms: dict[str, int] = {}

    def start(self, roles) -> None:
        for role in roles:
            self.vms[role] = self.cloud.instantiate(self.template, f"bm-{role}", hold=True)
        for role in roles:
            self.cloud.deploy(self.vms[role], self.machines[role].name)

    def running(self, role: str) -> tuple[int, object]:
        """The role's VM once RUNNING with its tenant answering, and its machine."""
        vm, machine = self.vms[role], self.machines[role]
        self.cloud.wait_vm(vm, "RUNNING", timeout=DEPLOY_TIMEOUT_S)
        machine.wait_tenant()
        return vm, machine


@pytest.fixture(scope="module")
def fleet(cloud, machines, template):
    f = Fleet(cloud, machines, template)
    f.start(FLEET)
    try:
        yield f
    finally:
        cloud.discard(f.vms.values())


def sample(cloud, vm, machine) -> tuple[float, str, bool]:
    """(time, VM state, home OS running) with the home OS read on both sides of the state,
    so a tenant that is booting while the state is read never counts as the home OS."""
    before = machine.in_home_os()
    state = cloud.state(vm)
    return time.monotonic(), state, before and machine.in_home_os()


def transitions(trace, start: float) -> str:
    out, last = [], None
    for t, state, home in trace:
        now = (state, home)
        if now != last:
            out.append(f"+{t - start:.1f}s {state}{' (home OS)' if home else ''}")
            last = now
    return ", ".join(out)


# -- 1 ------------------------------------------------------------------------------------------
def test_the_home_os_is_never_shown_as_the_running_vm(cloud, fleet, lab):
    """Power the machine off and on from its BMC: GRUB's one-shot entry is spent, so it boots
    its home OS. OpenNebula must not show the VM RUNNING while that runs: bmm either boots the
    tenant again (RUNNING, tenant answering) or the VM stays POWEROFF/UNKNOWN."""
    vm, machine = fleet.running("fallback")
    lab.ipmitool(machine.name, "chassis", "power", "off")
    lab.wait_state(machine.name, "off")
    try:
        cloud.wait_vm(vm, ("POWEROFF", "UNKNOWN"), timeout=MONITOR_NOTICE_S)
    except AssertionError as exc:
        pytest.fail(f"the machine was powered off from its BMC, and OpenNebula did not notice: {exc}")
    lab.ipmitool(machine.name, "chassis", "power", "on")
    start = time.monotonic()
    trace = []
    while time.monotonic() - start < WATCH_AFTER_S:
        trace.append(sample(cloud, vm, machine))
        if trace[-1][1] == "RUNNING" and trace[-1][2]:
            break
        time.sleep(SAMPLE_S)
    shown = [t for t, state, home in trace if state == "RUNNING" and home]
    if shown:
        pytest.fail(f"OpenNebula showed VM {vm} RUNNING while {machine.name} ran its home OS (first at "
                    f"+{shown[0] - start:.1f}s after power on): {transitions(trace, start)}\n"
                    f"{machine.describe()}\n{cloud.explain(vm)}")
    if cloud.state(vm) == "RUNNING":
        machine.assert_tenant_booted()
    else:
        assert cloud.state(vm) in ("POWEROFF", "UNKNOWN"), cloud.explain(vm)


# -- 2 ------------------------------------------------------------------------------------------
def test_resume_after_a_power_off_outside_opennebula(cloud, fleet, lab):
    """BMC power off: oned moves the VM to POWEROFF from monitoring alone (no driver call);
    `onevm resume` must then boot the tenant again, with its disk."""
    vm, machine = fleet.running("outside_off")
    token = machine.write_token()
    lab.ipmitool(machine.name, "chassis", "power", "off")
    cloud.wait_vm(vm, "POWEROFF", timeout=MONITOR_NOTICE_S)
    cloud.act("resume", vm, "RUNNING")
    machine.assert_tenant_booted(token)


# -- 3 ------------------------------------------------------------------------------------------
def watch_restart(cloud, vm, machine, action) -> dict:
    """Run `onevm <action>` and sample the VM state every SAMPLE_S through the operation and
    WATCH_AFTER_S after the exec driver reports its end."""
    before = machine.boot_id()
    offset = cloud.log_size(vm)
    start = time.monotonic()
    cloud.action(action, vm)
    trace, ended = [], None
    ended_line = re.compile(STEP_ENDED.format(step=RESTART_STEP[action]))
    while ended is None or time.monotonic() - ended < WATCH_AFTER_S:
        trace.append((time.monotonic(), cloud.state(vm), False))
        if ended is None and ended_line.search(cloud.log_since(vm, offset)):
            ended = time.monotonic()
        if ended is None and time.monotonic() - start > DEPLOY_TIMEOUT_S:
            break
        time.sleep(SAMPLE_S)
    return {"vm": vm, "machine": machine, "before": before, "start": start, "trace": trace,
            "log": cloud.log_since(vm, offset)}


def test_reboot_and_reboot_hard_never_show_poweroff(cloud, fleet):
    """reboot and reset have no LCM state, and oned acts on a POWEROFF report that arrives
    while they run: the VM must stay RUNNING throughout and after."""
    targets = {"reboot": fleet.running("reboot"), "reboot-hard": fleet.running("reset")}
    results, errors = {}, {}

    def run(action):
        try:
            vm, machine = targets[action]
            results[action] = watch_restart(cloud.clone(), vm, machine, action)
        except Exception as exc:  # noqa: BLE001 - reported below, with the other operation's result
            errors[action] = exc

    threads = [threading.Thread(target=run, args=(a,)) for a in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    problems = []
    for action, r in results.items():
        story = f"{action} of VM {r['vm']}: {transitions(r['trace'], r['start'])}"
        states = {state for _, state, _ in r["trace"]}
        if "POWEROFF" in states:
            problems.append(f"{story}\n  -> the VM was shown POWEROFF\n{cloud.explain(r['vm'])}")
        elif STEP_SUCCEEDED.format(step=RESTART_STEP[action]) not in r["log"]:
            problems.append(f"{story}\n  -> the operation did not succeed\n{cloud.explain(r['vm'])}")
        elif r["trace"][-1][1] != "RUNNING":
            problems.append(f"{story}\n  -> the VM did not end RUNNING\n{cloud.explain(r['vm'])}")
        elif not r["machine"].tenant_answers() or r["machine"].boot_id() == r["before"]:
            problems.append(f"{story}\n  -> the tenant was not booted again: {r['machine'].describe()}")
    assert not problems, "\n\n".join(problems)


# -- 4 ------------------------------------------------------------------------------------------
def test_undeploy_is_refused_up_front_or_works(cloud, fleet):
    """oned runs SHUTDOWN before TM mv: bmm must either refuse undeploy before the machine is
    powered off (VM RUNNING, tenant untouched, "not supported") or undeploy and resume it."""
    vm, machine = fleet.running("undeploy")
    token = machine.write_token()
    boot = machine.boot_id()
    offset = cloud.log_size(vm)
    try:
        cloud.action("undeploy", vm)
    except pyone.OneException as exc:
        assert NOT_SUPPORTED in str(exc), f"undeploy refused by oned itself: {exc}"
        return

    def settled():
        state = cloud.state(vm)
        refused = state == "RUNNING" and cloud.errors_since(vm, offset)
        return state == "UNDEPLOYED" or state.endswith("FAILURE") or bool(refused), state
    final = cloud.wait_for(settled, 180, f"VM {vm} to settle after undeploy", lambda: cloud.explain(vm))
    if final == "UNDEPLOYED":
        cloud.act("resume", vm, "RUNNING", timeout=DEPLOY_TIMEOUT_S)
        machine_on(fleet.machines, cloud.host_of(vm)).assert_tenant_booted(token)
        return
    assert final == "RUNNING", f"undeploy left VM {vm} {final}\n{machine.describe()}\n{cloud.explain(vm)}"
    assert any(NOT_SUPPORTED in e for e in cloud.errors_since(vm, offset)), cloud.explain(vm)
    assert machine.tenant_answers() and machine.boot_id() == boot, \
        f"undeploy was refused, but only after the machine was powered off: {machine.describe()}"


# -- 5 ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def datablock(cloud, images_dir) -> int:
    path = images_dir / "data.raw"
    with path.open("wb") as fh:
        fh.truncate(8 * 2**20)
    return cloud.register_image(path, "bm-data", image_type="DATABLOCK")


def attach_problems(cloud, vm, machine, datablock, end_pattern: str) -> list[str]:
    """`onevm disk-attach`, and everything in which it was not a clean refusal."""
    lvs, record = machine.lvs(), machine.record()
    offset = cloud.log_size(vm)
    problems = []
    try:
        cloud.one.vm.attach(vm, f'DISK = [ IMAGE_ID = "{datablock}" ]')
    except pyone.OneException as exc:
        if NOT_SUPPORTED not in str(exc):
            problems.append(f"oned refused it with {exc}")
    else:
        cloud.wait_log(vm, offset, end_pattern, timeout=120)
        errors = cloud.errors_since(vm, offset)
        if not any(NOT_SUPPORTED in e for e in errors):
            problems.append(f"the refusal does not say {NOT_SUPPORTED!r}: {errors or 'no error at all'}")
    if machine.lvs() != lvs:
        problems.append(f"LVs changed: {lvs} -> {machine.lvs()}")
    after = machine.record()
    if (after.state, after.vm_id) != (record.state, record.vm_id):
        problems.append(f"bmm's node state changed: {record.state}/{record.vm_id} -> {after.state}/{after.vm_id}")
    return problems


def report(problems, what, cloud, vm, machine) -> None:
    if problems:
        pytest.fail(f"{what}: " + "; ".join(problems) + f"\n{machine.describe()}\n{cloud.explain(vm)}")


def test_disk_attach_on_a_running_vm_is_refused_cleanly(cloud, fleet, datablock):
    vm, machine = fleet.running("attach_running")
    boot = machine.boot_id()
    problems = attach_problems(cloud, vm, machine, datablock, r"New LCM state is RUNNING")
    if cloud.state(vm) != "RUNNING":
        problems.append(f"the VM is {cloud.state(vm)}, not RUNNING")
    if machine.in_home_os():
        problems.append("the machine was left in its home OS")
    elif not machine.tenant_answers():
        problems.append("the tenant no longer answers")
    elif machine.boot_id() != boot:
        problems.append("the tenant was rebooted")
    report(problems, "disk attach on a RUNNING VM", cloud, vm, machine)


def test_disk_attach_on_a_poweroff_vm_is_refused_cleanly(cloud, fleet, datablock):
    vm, machine = fleet.running("attach_poweroff")
    cloud.act("poweroff", vm, "POWEROFF")
    problems = attach_problems(cloud, vm, machine, datablock, r"New state is POWEROFF")
    if cloud.state(vm) != "POWEROFF":
        problems.append(f"the VM is {cloud.state(vm)}, not POWEROFF")
    if machine.powered():
        problems.append(f"the machine was left powered on ({machine.running()})")
    report(problems, "disk attach on a POWEROFF VM", cloud, vm, machine)


# -- 6 ------------------------------------------------------------------------------------------
def used_disk_mb(cloud, host: str) -> int:
    h = cloud.host(host)
    reported = int(h.TEMPLATE.get("DS_LOCATION_USED_MB", 0) or 0)
    return max(int(h.HOST_SHARE.DATASTORES.USED_DISK or 0), reported)


def test_host_used_disk_follows_the_instance_disk(cloud, fleet):
    """The host's used disk is what the instance's LVs take, and about nothing once terminate
    has wiped them (reuses the reboot --hard VM: only its LVs matter here)."""
    vm, machine = fleet.vms["reset"], fleet.machines["reset"]
    assert machine.vm_lvs(vm), f"precondition: VM {vm} has LVs on {machine.describe()}"

    def used(pred):
        def check():
            mb = used_disk_mb(cloud, machine.name)
            return pred(mb), mb
        return check
    try:
        in_use = int(cloud.wait_for(used(lambda mb: mb > 0), USED_DISK_WAIT_S, "USED_DISK > 0", lambda: ""))
    except AssertionError:
        ds = cloud.host(machine.name).HOST_SHARE.DATASTORES
        pytest.fail(f"{machine.name} holds {machine.vm_lvs(vm)}, but for {USED_DISK_WAIT_S} s its host showed "
                    f"HOST_SHARE/DATASTORES USED_DISK={ds.USED_DISK} MAX_DISK={ds.MAX_DISK} FREE_DISK={ds.FREE_DISK} "
                    f"(from the DS_LOCATION_*_MB bmm reports in SYSTEM_HOST)")
    cloud.act("terminate-hard", vm, "DONE")
    try:
        cloud.wait_for(used(lambda mb: mb <= in_use // 10), USED_DISK_WAIT_S, f"USED_DISK <= {in_use // 10}", lambda: "")
    except AssertionError as exc:
        pytest.fail(f"after terminate the host still reports {used_disk_mb(cloud, machine.name)} MB used "
                    f"(was {in_use} MB): {exc}")


# -- 7 ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def qcow2_image(cloud, images_dir) -> int:
    from bmm_lab.images import build_image
    path = build_image(images_dir / "tenant.qcow2", os_id="tenantos", name="Tenant OS", version="42",
                       layout="fs", fmt="qcow2", size="48M")
    return cloud.register_image(Path(path), "tenant-os-qcow2")


def test_a_qcow2_image_stays_qcow2_in_bmms_datastore(cloud, qcow2_image):
    image = cloud.one.image.info(qcow2_image)
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", image.SOURCE], capture_output=True,
                                     text=True, check=True, timeout=30).stdout)
    assert (image.FORMAT, info["format"]) == ("qcow2", "qcow2"), \
        (f"registered qcow2 image {qcow2_image}: FORMAT {image.FORMAT}, {image.SOURCE} is {info['format']} "
         f"(the datastore converts to TM_MAD_CONF DRIVER; datastore template: "
         f"{dict(cloud.one.datastore.info(cloud.ids.image_ds).TEMPLATE)})")


def test_a_vm_from_a_qcow2_image_deploys_and_boots(cloud, lab, machines, qcow2_image, tenant_key):
    from bmm.config import load_config
    from bmm.inventory import node_for_host
    machine = machines["qcow2"]
    node = node_for_host(load_config(cloud.bmm_config), machine.name)
    body = cloud.vm_template(qcow2_image, tenant_key.with_suffix(".pub").read_text().strip(),
                             memory_mb=int(node.memory_mb), vcpu=int(node.cpus))
    vm = cloud.instantiate(cloud.create_template("bm-tenant-qcow2", body), "bm-qcow2", hold=True)
    try:
        cloud.deploy(vm, machine.name)
        cloud.wait_vm(vm, "RUNNING", timeout=DEPLOY_TIMEOUT_S)
        machine.assert_tenant_booted()
    finally:
        cloud.discard([vm])


# -- 8 ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("role,operation", [("occupied_delete", "recover --delete"),
                                            ("occupied_terminate", "terminate")])
def test_a_refused_second_vm_leaves_the_running_tenant_untouched(cloud, fleet, template, role, operation):
    """`onevm deploy` of a second VM onto an occupied machine: bmm refuses its prolog; removing
    that VM (recover --delete, or terminate) must not touch the first one's tenant."""
    vm, machine = fleet.running(role)
    boot = machine.boot_id()
    lvs = machine.vm_lvs(vm)
    second = cloud.instantiate(template, f"bm-{role}-second", hold=True)
    fleet.vms[f"{role}-second"] = second
    cloud.deploy(second, machine.name)
    def refused_or_running():
        state = cloud.state(second)
        return state.endswith("FAILURE") or state == "RUNNING", state
    refused = cloud.wait_for(refused_or_running, DEPLOY_TIMEOUT_S, f"VM {second} refused", lambda: cloud.explain(second))
    assert refused.endswith("FAILURE"), f"a second VM was deployed onto {machine.name}:\n{cloud.explain(second)}"
    oned_offset = cloud.fe.log_size("oned.log")
    if operation == "terminate":
        cloud.action("terminate", second)
    else:
        cloud.one.vm.recover(second, 3)
    cloud.wait_vm(second, "DONE")
    cleanup = cloud.wait_cleanup(second, oned_offset)       # DONE comes before the TM delete
    record = machine.record()
    problems = []
    if cloud.state(vm) != "RUNNING":
        problems.append(f"VM {vm} is {cloud.state(vm)} in OpenNebula")
    if not machine.tenant_answers():
        problems.append("its tenant no longer answers ssh")
    elif machine.boot_id() != boot:
        problems.append("its tenant was rebooted")
    if (record.state, record.vm_id) != ("active", vm):
        problems.append(f"bmm records {record.state}/{record.vm_id}, not active/{vm}")
    if machine.vm_lvs(vm) != lvs:
        problems.append(f"its LVs changed: {lvs} -> {machine.vm_lvs(vm)}")
    assert not problems, (f"{operation} of refused VM {second} ({cleanup}) disturbed VM {vm} on {machine.name}: "
                          f"{'; '.join(problems)}\n{machine.describe()}\n{cloud.explain(second)}")


def reconcile(frontend, *args: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """`bmm one reconcile --json [args]` as an operator runs it: the run and its findings."""
    proc = frontend.bmm("one", "reconcile", "--json", *args)
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    out = proc.stdout
    return proc, json.loads(out[out.index("["):])


def test_reconcile_names_a_machine_oned_forgot_and_fix_frees_it(fleet, cloud, frontend):
    """`onevm recover --delete-db` drops a VM from oned without one driver call: its machine
    still runs the tenant on the VM's disk, and nothing in OpenNebula will ever clean it up.
    `bmm one reconcile` names that node and VM; --fix wipes the VM's disk and frees the node
    (bmm's own TM delete, under the node's lock); afterwards both sides agree on it."""
    vm, machine = fleet.running("leaked")
    _, found = reconcile(frontend)
    assert [f for f in found if f["node"] == machine.name] == [], found       # a running VM is no drift
    cloud.one.vm.recover(vm, 5)                                                 # onevm recover --delete-db
    cloud.wait_vm(vm, "DONE")
    assert machine.vm_lvs(vm) and machine.tenant_answers(), machine.describe()  # the leak is real
    proc, found = reconcile(frontend)
    mine = [f for f in found if f["node"] == machine.name]
    assert proc.returncode == 1 and len(mine) == 1, proc.stdout
    assert mine[0]["vm_id"] == vm and "does not exist any more" in mine[0]["problem"], mine
    assert machine.vm_lvs(vm), "reconcile without --fix changed the node"
    fixed = frontend.bmm("one", "reconcile", "--fix", timeout=600)
    assert f"fixed: node {machine.name}: holds VM {vm}" in fixed.stdout, fixed.stdout + fixed.stderr
    record = machine.record()
    assert (record.state, record.vm_id) == ("available", None), machine.describe()
    assert machine.vm_lvs(vm) == [], machine.describe()
    assert not machine.tenant_answers(), f"the leaked tenant still runs\n{machine.describe()}"
    _, found = reconcile(frontend)
    assert [f for f in found if f["node"] == machine.name] == [], found


def test_reconcile_names_a_bmm_host_the_inventory_does_not_have(cloud, frontend):
    """A host made by hand with bmm's drivers (or left behind after a node left the inventory)
    is named, with what to do; reconcile never deletes an OpenNebula host itself."""
    ghost = cloud.one.host.allocate("bmm-ghost", "bmm", "bmm", -1)
    try:
        proc, found = reconcile(frontend)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert [f["problem"] for f in found if f["node"] == "bmm-ghost"] == [
            "is a bmm host in OpenNebula but not in the inventory"], found
        fixed = frontend.bmm("one", "reconcile", "--fix")
        assert "node bmm-ghost: is a bmm host" in fixed.stdout and fixed.returncode == 1, fixed.stdout
        assert cloud.one.host.info(ghost).NAME == "bmm-ghost"
    finally:
        cloud.one.host.delete(ghost)
    _, found = reconcile(frontend)
    assert [f for f in found if f["node"] == "bmm-ghost"] == [], found
