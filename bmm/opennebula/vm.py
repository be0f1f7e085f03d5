"""The VM as OpenNebula describes it, parsed into small read-only objects.

Accepts `<VMM_DRIVER_ACTION_DATA>` (VMM actions) or a bare `<VM>` (the deployment file when
TYPE="xml", or `onevm show -x`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping
from xml.etree import ElementTree

from bmm.opennebula.args import parse_id
from bmm.opennebula.xmlsafe import InputError, parse_xml


def _text(elem, path: str, default: str = "") -> str:
    found = elem.find(path) if elem is not None else None
    if found is None or found.text is None:
        return default
    return found.text.strip()


def _int(elem, path: str, default: int | None = None, *, what: str) -> int | None:
    """A non-negative integer field, strictly as oned writes it (see bmm.opennebula.args)."""
    raw = _text(elem, path)
    if raw == "":
        return default
    return parse_id(raw, what)


def _float(elem, path: str, default: float | None = None, *, what: str) -> float | None:
    raw = _text(elem, path)
    if raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise InputError(f"{what} is not a number") from None


def _flat(elem) -> Mapping[str, str]:
    if elem is None:
        return MappingProxyType({})
    return MappingProxyType({child.tag: (child.text or "") for child in elem if isinstance(child.tag, str)})


@dataclass(frozen=True)
class Disk:
    disk_id: int
    source: str
    tm_mad: str
    format: str
    size_mb: int | None
    save: bool
    clone: bool
    type: str
    image: str
    datastore_id: int | None
    target: str
    attrs: Mapping[str, str] = field(repr=False)


@dataclass(frozen=True)
class Nic:
    nic_id: int
    ip: str
    mac: str
    network: str
    vn_mad: str
    attrs: Mapping[str, str] = field(repr=False)


@dataclass(frozen=True)
class History:
    seq: int | None
    hostname: str
    hid: int | None
    ds_id: int | None
    vm_mad: str
    tm_mad: str


@dataclass(frozen=True)
class VM:
    vm_id: int
    name: str
    deploy_id: str
    state: int | None
    lcm_state: int | None
    cpu: float | None
    vcpu: int | None
    memory_mb: int | None
    disks: tuple[Disk, ...]
    nics: tuple[Nic, ...]
    context: Mapping[str, str]
    os: Mapping[str, str]
    user_template: Mapping[str, str]
    history: History | None

    @property
    def host(self) -> str | None:
        return self.history.hostname if self.history else None


@dataclass(frozen=True)
class DriverAction:
    host: str
    migr_host: str
    deploy_id: str
    local_deployment_file: str
    remote_deployment_file: str
    tm_command: str
    vm: VM


def _disk(elem) -> Disk:
    did = _int(elem, "DISK_ID", what="DISK/DISK_ID")
    if did is None:
        raise InputError("a DISK has no DISK_ID")
    return Disk(
        disk_id=did,
        source=_text(elem, "SOURCE"),
        tm_mad=_text(elem, "TM_MAD"),
        format=_text(elem, "FORMAT") or _text(elem, "DRIVER"),
        size_mb=_int(elem, "SIZE", what=f"DISK {did} SIZE"),
        save=_text(elem, "SAVE").upper() == "YES",
        clone=_text(elem, "CLONE").upper() == "YES",
        type=_text(elem, "TYPE"),
        image=_text(elem, "IMAGE"),
        datastore_id=_int(elem, "DATASTORE_ID", what=f"DISK {did} DATASTORE_ID"),
        target=_text(elem, "TARGET"),
        attrs=_flat(elem),
    )


def _nic(elem, index: int) -> Nic:
    nid = _int(elem, "NIC_ID", index, what="NIC/NIC_ID")
    return Nic(
        nic_id=nid,
        ip=_text(elem, "IP"),
        mac=_text(elem, "MAC"),
        network=_text(elem, "NETWORK"),
        vn_mad=_text(elem, "VN_MAD"),
        attrs=_flat(elem),
    )


def parse_vm_element(vm) -> VM:
    if vm.tag != "VM":
        raise InputError("expected a <VM> element")
    vm_id = _int(vm, "ID", what="VM ID")
    if vm_id is None:
        raise InputError("the VM has no ID")
    tmpl = vm.find("TEMPLATE")
    histories = vm.findall("HISTORY_RECORDS/HISTORY")
    history = None
    if histories:
        h = histories[-1]
        history = History(
            seq=_int(h, "SEQ", what="HISTORY/SEQ"),
            hostname=_text(h, "HOSTNAME"),
            hid=_int(h, "HID", what="HISTORY/HID"),
            ds_id=_int(h, "DS_ID", what="HISTORY/DS_ID"),
            vm_mad=_text(h, "VM_MAD"),
            tm_mad=_text(h, "TM_MAD"),
        )
    disks = tuple(sorted((_disk(d) for d in tmpl.findall("DISK")), key=lambda d: d.disk_id)) if tmpl is not None else ()
    nics = ()
    if tmpl is not None:
        nics = tuple(sorted((_nic(n, i) for i, n in enumerate(tmpl.findall("NIC"))), key=lambda n: n.nic_id))
    return VM(
        vm_id=vm_id,
        name=_text(vm, "NAME"),
        deploy_id=_text(vm, "DEPLOY_ID"),
        state=_int(vm, "STATE", what="VM STATE"),
        lcm_state=_int(vm, "LCM_STATE", what="VM LCM_STATE"),
        cpu=_float(tmpl, "CPU", what="CPU"),
        vcpu=_int(tmpl, "VCPU", what="VCPU"),
        memory_mb=_int(tmpl, "MEMORY", what="MEMORY"),
        disks=disks,
        nics=nics,
        context=_flat(tmpl.find("CONTEXT") if tmpl is not None else None),
        os=_flat(tmpl.find("OS") if tmpl is not None else None),
        user_template=_flat(vm.find("USER_TEMPLATE")),
        history=history,
    )


def parse_driver_action(xml: bytes | str) -> DriverAction:
    """Parse a VMM_DRIVER_ACTION_DATA document, or a bare VM document."""
    root = parse_xml(xml)
    if root.tag == "VM":
        vm = parse_vm_element(root)
        return DriverAction(host=vm.host or "", migr_host="", deploy_id=vm.deploy_id,
                            local_deployment_file="", remote_deployment_file="", tm_command="", vm=vm)
    if root.tag != "VMM_DRIVER_ACTION_DATA":
        raise InputError("expected a <VMM_DRIVER_ACTION_DATA> or <VM> document")
    vm_elem = root.find("VM")
    if vm_elem is None:
        raise InputError("the driver action has no <VM>")
    vm = parse_vm_element(vm_elem)
    return DriverAction(
        host=_text(root, "HOST") or (vm.host or ""),
        migr_host=_text(root, "MIGR_HOST"),
        deploy_id=_text(root, "DEPLOY_ID") or vm.deploy_id,
        local_deployment_file=_text(root, "LOCAL_DEPLOYMENT_FILE"),
        remote_deployment_file=_text(root, "REMOTE_DEPLOYMENT_FILE"),
        tm_command=_text(root, "TM_COMMAND"),
        vm=vm,
    )


def to_string(elem) -> str:
    return ElementTree.tostring(elem, encoding="unicode")
