"""bmm's operator commands against the genuine front-end: `bmm one register` (README step 6),
which made the tier's cloud (conftest `registered`: a dry run, then the real run, on a fresh
oned), and `bmm doctor` (step 5) with the front-end's own bmm.toml.

Both run as the installed `bmm` command with only ONE_LOCATION, ONE_AUTH and ONE_XMLRPC set, so
they find the remotes' bmm.toml themselves. This module runs before the life-cycle modules, while
every server still runs its home OS (doctor asks each node's ssh server).
"""

from __future__ import annotations

import json
import re

import pyone

from bmm.config import load_config
from bmm.inventory import inventory_path, load_inventory
from bmm.opennebula.register import IMAGE_DS, ROOTFS_DS, SYSTEM_DS, template_name
from tests.oned.frontend import free_ports


def inventory(cloud):
    return load_inventory(inventory_path(config=load_config(cloud.bmm_config)))


def lines(proc) -> list[str]:
    return [line for line in proc.stdout.splitlines() if line.strip()]


def changes(proc) -> list[tuple[str, str, str]]:
    """(action, kind, name) of every line a register run (or dry run) printed."""
    out = []
    for line in lines(proc):
        m = re.match(r"^(?:would )?(\w+)\s+(\w+) ([^\s:]+)", line)
        assert m, f"a line of `bmm one register` that says no action, kind and name: {line!r}"
        out.append(m.groups())
    return out


def named(proc, kind: str, action: str) -> set[str]:
    return {name for a, k, name in changes(proc) if (k, a) == (kind, action)}


def mine(objects: dict, names: dict[str, set[str]]) -> dict:
    """objects restricted to names (oned's own default cluster and datastores stay out)."""
    return {kind: {n: v for n, v in objects[kind].items() if n in names[kind]} for kind in names}


# -- register -----------------------------------------------------------------------------------
def test_register_dry_run_prints_the_plan_and_changes_nothing(registered, cloud):
    dry = registered.dry_run
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert registered.after_dry_run == registered.before_dry_run, \
        f"`bmm one register --dry-run` changed oned:\n{dry.stdout}"
    assert {a for a, _, _ in changes(dry)} <= {"create", "skip"}, dry.stdout
    assert all(line.startswith("would ") for line in lines(dry) if not line.startswith("skip ")), dry.stdout
    nodes = {n.name for n in inventory(cloud)}
    models = {template_name(n.model or n.arch) for n in inventory(cloud)}
    assert named(dry, "cluster", "create") == {"bare-metal"}, dry.stdout
    boards = any(n.kind == "netboot" for n in inventory(cloud))
    assert named(dry, "datastore", "create") == {SYSTEM_DS, IMAGE_DS} | ({ROOTFS_DS} if boards else set()), dry.stdout
    assert named(dry, "host", "create") == nodes, dry.stdout
    assert models <= named(dry, "template", "create"), dry.stdout
    # ... and the real run did what the dry run said, no more
    run = registered.run
    assert [line.split(" (id ")[0] for line in lines(run)] == [line.removeprefix("would ") for line in lines(dry)], \
        f"dry run:\n{dry.stdout}\nreal run:\n{run.stdout}"


def test_register_made_what_the_inventory_needs(registered, cloud, lab):
    one = cloud.one
    images = one.datastore.info(cloud.ids.image_ds)
    system = one.datastore.info(cloud.ids.system_ds)
    assert (images.DS_MAD, images.TM_MAD, system.TM_MAD, system.TYPE) == ("fs", "bmm", "bmm", 1), \
        (images.TEMPLATE, system.TEMPLATE)
    assert images.TEMPLATE.get("SAFE_DIRS") == "/var/tmp" and "DRIVER" not in images.TEMPLATE, images.TEMPLATE
    for ds in (images, system):
        assert cloud.ids.cluster in ds.CLUSTERS.ID, f"datastore {ds.NAME} is not in cluster bare-metal"
    for node in inventory(cloud):
        host = one.host.info(cloud.hosts[node.name])
        assert (host.IM_MAD, host.VM_MAD, host.CLUSTER_ID) == ("bmm", "bmm", cloud.ids.cluster), node.name
    for name in named(registered.run, "template", "create"):        # models and instance types alike
        tmpl = one.template.info(cloud.template_named(name)).TEMPLATE
        assert tmpl.get("BMM_MANAGED") == "YES", (name, tmpl)
        assert tmpl.get("SCHED_REQUIREMENTS", "").startswith('BAREMETAL = "YES" & RUNNING_VMS = 0'), (name, tmpl)
    by_model: dict[str, list] = {}
    for node in inventory(cloud):
        by_model.setdefault(node.model or node.arch, []).append(node)
    for model, nodes in by_model.items():
        tmpl = one.template.info(cloud.template_named(template_name(model))).TEMPLATE
        assert f'MODELNAME = "{model}"' in tmpl["SCHED_REQUIREMENTS"], (model, tmpl)
        assert (int(tmpl["VCPU"]), int(tmpl["MEMORY"])) == (min(n.cpus for n in nodes), min(n.memory_mb for n in nodes))
        for node in nodes:     # the host reports the model the template asks for
            assert cloud.host(node.name).TEMPLATE.get("MODELNAME") == model, node.name


def test_a_second_register_changes_nothing(registered, cloud):
    made = {kind: named(registered.run, kind, "create") for kind in ("cluster", "datastore", "host", "template")}
    before = mine(cloud.objects(), made)
    again = cloud.fe.bmm("one", "register")
    assert again.returncode == 0, again.stdout + again.stderr
    assert {a for a, _, _ in changes(again)} <= {"ok", "skip"}, again.stdout
    assert {kind: named(again, kind, "ok") for kind in made} == made, again.stdout
    assert mine(cloud.objects(), made) == before, f"a second `bmm one register` changed oned:\n{again.stdout}"


def test_registered_hosts_are_monitored(cloud, lab):
    for name in [*lab.servers, *lab.boards]:
        assert pyone.HOST_STATES(cloud.host(name).STATE).name == "MONITORED", name


# -- doctor -------------------------------------------------------------------------------------
def doctor(fe, *args: str) -> tuple[int, list[dict], str]:
    proc = fe.bmm("doctor", "--json", *args, timeout=300)
    try:
        return proc.returncode, json.loads(proc.stdout), proc.stderr
    except ValueError:
        raise AssertionError(f"bmm doctor --json printed no JSON (exit {proc.returncode}):\n"
                             f"{proc.stdout}{proc.stderr}") from None


def failed(checks) -> dict[str, str]:
    return {c["name"]: c["detail"] for c in checks if not c["ok"]}


def test_doctor_passes_on_this_frontend(cloud, lab):
    rc, checks, err = doctor(cloud.fe)
    assert (rc, failed(checks)) == (0, {}), err
    by_name = {c["name"]: c["detail"] for c in checks}
    assert str(cloud.bmm_config) == by_name["config"], by_name["config"]
    assert "OpenNebula 7." in by_name["oned"] and str(cloud.fe.ports.oned) in by_name["oned"], by_name["oned"]
    assert "carries bmm's blocks" in by_name["oned.conf"] and str(cloud.fe.etc) in by_name["oned.conf"]
    assert "carries bmm's blocks" in by_name["monitord.conf"] and str(cloud.fe.etc) in by_name["monitord.conf"]
    assert "match this bmm" in by_name["remotes"] and str(cloud.fe.remotes) in by_name["remotes"]
    for server in lab.servers:
        assert by_name[f"node {server}: power (ipmi)"] == "on"
        assert any(n.startswith(f"node {server}: ssh") and d == "answers" for n, d in by_name.items()), server
    for board in lab.boards:
        assert by_name[f"node {board}: power (pdu)"] in ("on", "off")


def test_doctor_names_an_oned_that_does_not_answer(cloud):
    wrong = f"http://127.0.0.1:{free_ports().oned}/RPC2"
    rc, checks, err = doctor(cloud.fe, "--no-nodes", "--one", wrong)
    problems = failed(checks)
    assert rc != 0 and list(problems) == ["oned"], (rc, problems, err)
    assert wrong in problems["oned"] and "does not answer" in problems["oned"], problems
