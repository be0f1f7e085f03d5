"""`bmm one register`: the OpenNebula objects bmm's inventory needs, made idempotently.

From the inventory: one cluster; bmm's system datastore and image datastore (both TM_MAD
"bmm", so no stock TM ever sshes into a machine; the image datastore DS_MAD "fs" with SAFE_DIRS
naming where operators keep images, and no DRIVER, so qcow2 images stay qcow2), plus, when the
inventory has boards, a datastore for their root filesystems with NO_DECOMPRESS; one host per
node (`--im bmm --vm bmm`, in the cluster); one VM template per node model that takes the
whole machine (CPU, VCPU and MEMORY of the smallest node of that model) and carries
SCHED_REQUIREMENTS so the scheduler places it only on a free machine of that model; and one VM
template per instance type of the Tilera field report that some board can serve
(bmm.instance_types: `tp64.8x8` and the like, named as the report names them), asking for a
whole board of that family and tile grid. A type no board serves is not created, and said so.

plan() only reads oned and returns Changes; apply() makes them. An object that exists already
is compared, never deleted: a difference bmm owns (a template it made, marked BMM_MANAGED) is
updated, anything else is reported as a conflict for the operator to resolve.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from bmm import instance_types
from bmm.opennebula import template

SYSTEM_DS = "bm_system"
IMAGE_DS = "bm_images"
# Board root filesystems (.tar.gz/.tar.xz) must reach bmm as they were uploaded: oned's
# downloader unpacks a compressed upload (a tarball into a directory, which fs/cp then refuses)
# unless the datastore says NO_DECOMPRESS. bm_images keeps decompressing, so a server's
# image.raw.gz still arrives as the raw disk bmm streams.
ROOTFS_DS = "bm_rootfs"
MANAGED = "BMM_MANAGED"


@dataclass
class Change:
    kind: str                   # cluster | datastore | host | template | node
    name: str
    action: str                 # create | update | ok | conflict | skip
    detail: str = ""
    run: Callable[[], object] | None = field(default=None, repr=False)

    def __str__(self) -> str:
        return f"{self.action:8} {self.kind} {self.name}" + (f": {self.detail}" if self.detail else "")


def template_name(model: str) -> str:
    return "bmm-" + re.sub(r"[^A-Za-z0-9]+", "-", model).strip("-").lower()


def _attrs(obj) -> dict:
    tmpl = getattr(obj, "TEMPLATE", None) or {}
    return {k: (v if isinstance(v, str) else str(v)) for k, v in dict(tmpl).items()}


def _by_name(items) -> dict:
    return {item.NAME: item for item in (items or [])}


def template_text(model: str, nodes: list) -> str:
    cpus = min(n.cpus for n in nodes)
    memory = min(n.memory_mb for n in nodes)
    requirements = f'BAREMETAL = "YES" & RUNNING_VMS = 0 & MODELNAME = {template.quote(model)}'
    return template.render([
        ("NAME", template_name(model)),
        ("DESCRIPTION", f"A whole {model} machine (bmm: bare metal, one instance per machine)"),
        ("CPU", cpus), ("VCPU", cpus), ("MEMORY", memory),
        ("SCHED_REQUIREMENTS", requirements),
        (MANAGED, "YES"),
    ]) + template.vector("CONTEXT", {"NETWORK": "YES", "SSH_PUBLIC_KEY": "$USER[SSH_PUBLIC_KEY]"}) + "\n"


def plan(one, inventory, *, cluster: str = "bare-metal", safe_dirs: tuple[str, ...] = ("/var/tmp",)) -> list[Change]:
    changes: list[Change] = []
    clusters = _by_name(one.clusterpool.info().CLUSTER)
    state = {"cluster_id": clusters[cluster].ID if cluster in clusters else None}

    def cluster_id() -> int:
        return state["cluster_id"]

    if state["cluster_id"] is None:
        def make_cluster():
            state["cluster_id"] = one.cluster.allocate(cluster)
            return state["cluster_id"]
        changes.append(Change("cluster", cluster, "create", run=make_cluster))
    else:
        changes.append(Change("cluster", cluster, "ok", f"id {state['cluster_id']}"))

    datastores = _by_name(one.datastorepool.info().DATASTORE)
    wanted_ds = {
        SYSTEM_DS: [("TYPE", "SYSTEM_DS"), ("TM_MAD", "bmm")],
        IMAGE_DS: [("DS_MAD", "fs"), ("TM_MAD", "bmm"), ("SAFE_DIRS", " ".join(safe_dirs))],
    }
    if any(node.kind == "netboot" for node in inventory):
        wanted_ds[ROOTFS_DS] = [("DS_MAD", "fs"), ("TM_MAD", "bmm"), ("NO_DECOMPRESS", "YES"),
                                ("SAFE_DIRS", " ".join(safe_dirs))]
    for name, pairs in wanted_ds.items():
        ds = datastores.get(name)
        if ds is None:
            text = template.render([("NAME", name), *pairs])
            changes.append(Change("datastore", name, "create", ", ".join(f"{k}={v}" for k, v in pairs),
                                  run=lambda text=text: one.datastore.allocate(text, cluster_id())))
            continue
        have = _attrs(ds)
        wrong = [k for k, v in pairs if k not in ("TYPE", "SAFE_DIRS")
                 and (have.get(k) or "").lower() != v.lower()]
        if have.get("DRIVER"):
            wrong.append("DRIVER (set: oned would convert every image to it at registration)")
        if wrong:
            changes.append(Change("datastore", name, "conflict", f"id {ds.ID}: differs in {', '.join(wrong)}"))
        elif name in (IMAGE_DS, ROOTFS_DS) and have.get("SAFE_DIRS", "") != " ".join(safe_dirs):
            changes.append(Change("datastore", name, "update", f"SAFE_DIRS={' '.join(safe_dirs)}",
                                  run=lambda ds=ds: one.datastore.update(
                                      ds.ID, template.render([("SAFE_DIRS", " ".join(safe_dirs))]), 1)))
        else:
            changes.append(Change("datastore", name, "ok", f"id {ds.ID}"))

    hosts = _by_name(one.hostpool.info().HOST)
    for node in inventory:
        host = hosts.get(node.name)
        if host is None:
            changes.append(Change("host", node.name, "create", f"--im bmm --vm bmm, cluster {cluster}",
                                  run=lambda n=node.name: one.host.allocate(n, "bmm", "bmm", cluster_id())))
        elif (host.IM_MAD, host.VM_MAD) != ("bmm", "bmm"):
            changes.append(Change("host", node.name, "conflict",
                                  f"id {host.ID} uses IM {host.IM_MAD} / VM {host.VM_MAD}, not bmm"))
        else:
            changes.append(Change("host", node.name, "ok", f"id {host.ID}"))

    templates = _by_name(one.templatepool.info(-2, -1, -1).VMTEMPLATE)
    models: dict[str, list] = {}
    for node in inventory:
        models.setdefault(node.model or node.arch, []).append(node)
    for model, nodes in sorted(models.items()):
        changes.append(_template_change(one, templates, template_name(model), template_text(model, nodes),
                                        f"{len(nodes)} node(s) of model {model}"))
    changes.extend(_instance_type_changes(one, templates, inventory))
    return changes


def instance_type_text(m: instance_types.Match) -> str:
    t = m.itype
    return template.render([
        ("NAME", t.name),
        ("DESCRIPTION", f"Instance type {t.name}: a whole board with a {t.describe()} "
                        "(bmm: bare metal, one instance per board)"),
        ("CPU", m.cpus), ("VCPU", m.cpus), ("MEMORY", m.memory_mb),
        ("BMM_INSTANCE_TYPE", t.name),
        ("SCHED_REQUIREMENTS", m.requirements()),
        (MANAGED, "YES"),
    ]) + template.vector("CONTEXT", {"NETWORK": "YES", "SSH_PUBLIC_KEY": "$USER[SSH_PUBLIC_KEY]"}) + "\n"


def _instance_type_changes(one, templates: dict, inventory) -> list[Change]:
    served, unserved, idle = instance_types.match(inventory)
    out = []
    for m in served:
        names = ", ".join(b.node for b in m.boards)
        out.append(_template_change(one, templates, m.itype.name, instance_type_text(m),
                                    f"instance type, {m.itype.describe()}: {len(m.boards)} board(s) ({names})"))
    for t in unserved:
        detail = f"instance type, {t.describe()}: no board in the inventory serves it, not created"
        if t.name in templates:
            detail += f" (id {templates[t.name].ID} exists and is kept: bmm never deletes)"
        out.append(Change("template", t.name, "skip", detail))
    for b in idle:
        out.append(Change("node", b.node, "skip", f"serves no instance type: {instance_types.board_note(b)}"))
    return out


def _template_change(one, templates: dict, name: str, text: str, detail: str) -> Change:
    existing = templates.get(name)
    if existing is None:
        return Change("template", name, "create", detail, run=lambda: one.template.allocate(text))
    have = _attrs(existing)
    if have.get(MANAGED) != "YES":
        return Change("template", name, "conflict", f"id {existing.ID} exists and was not made by bmm")
    if _same_template(have, text):
        return Change("template", name, "ok", f"id {existing.ID}")
    return Change("template", name, "update", f"id {existing.ID}",
                  run=lambda: one.template.update(existing.ID, text, 0))


def _same_template(have: dict, text: str) -> bool:
    want = {k: v for k, v in template.parse(text) if isinstance(v, str)}
    return all(have.get(k) == v for k, v in want.items() if k != "NAME")


def apply(changes: list[Change], say: Callable[[str], None] = print) -> None:
    for change in changes:
        if change.run is not None:
            result = change.run()
            say(f"{change}" + (f" (id {result})" if isinstance(result, int) else ""))
        else:
            say(str(change))
