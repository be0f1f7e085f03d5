"""Pure parsers: what standard tools and /proc and /sys print, turned into bmm.inspect.facts.

Each function takes the text one remote command printed and returns facts, or raises
ValueError when the text is not what that tool prints (the caller then falls back to /sys).
Nothing here runs a command. The sysfs readers take the output of `grep -s -H . FILE...`
(`<path>:<value>` per line), which is how the probe reads many small sysfs files at once.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import replace

from bmm.inspect.facts import Cpu, Disk, Nic
from bmm.inspect.pci import ADDRESS_RE, PciDevice, normal_address

NET_NAME_RE = re.compile(r"^[^/\s:]{1,15}$")
BLOCK_NAME_RE = re.compile(r"^[A-Za-z0-9!._-]{1,64}$")
NOT_DISKS = ("loop", "ram", "zram", "dm-", "md", "sr", "fd", "nbd", "zd")
MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_NAMED_ID = re.compile(r"^(.*) \[([0-9a-fA-F]{4})\]$")


def _int(value) -> int | None:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def _float(value) -> float | None:
    try:
        return float(str(value).strip().removesuffix("MHz"))
    except (TypeError, ValueError):
        return None


# --------------------------------------------------------------------------- CPU and memory

def lscpu_json(text: str) -> Cpu:
    """`lscpu -J`: {"lscpu": [{"field": "CPU(s):", "data": "2", "children": [...]}, ...]}."""
    try:
        rows = json.loads(text)["lscpu"]
    except (ValueError, KeyError, TypeError):
        raise ValueError("not lscpu -J output") from None
    fields: dict[str, str] = {}

    def walk(items):
        for item in items:
            key = str(item.get("field", "")).rstrip(":").strip()
            fields.setdefault(key, item.get("data"))
            walk(item.get("children") or ())

    walk(rows)
    threads = _int(fields.get("CPU(s)"))
    sockets = _int(fields.get("Socket(s)")) or _int(fields.get("Cluster(s)"))
    per_socket = _int(fields.get("Core(s) per socket")) or _int(fields.get("Core(s) per cluster"))
    cores = per_socket * sockets if per_socket and sockets else None
    mhz = _float(fields.get("CPU max MHz")) or _float(fields.get("CPU MHz"))
    return Cpu(model=fields.get("Model name") or None, arch=fields.get("Architecture") or None,
               sockets=sockets, cores=cores, threads=threads, mhz=mhz)


def cpuinfo(text: str) -> Cpu:
    """/proc/cpuinfo of x86 (`physical id`, `core id`), ARM (`Processor`, `Hardware`),
    POWER (`cpu`, `clock`) or TILE (`cpu count`, `model name` once, a `processor` per tile)."""
    values: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            values.setdefault(key.strip(), []).append(value.strip())
    threads = len([p for p in values.get("processor", []) if p.isdigit()]) or _int(
        (values.get("cpu count") or [None])[0])
    model = None
    for key in ("model name", "cpu model", "Processor", "cpu", "Hardware"):
        if values.get(key) and values[key][0]:
            model = values[key][0]
            break
    mhz = None
    for key in ("cpu MHz", "clock"):
        if values.get(key):
            mhz = _float(values[key][0])
            break
    sockets = len(set(values.get("physical id", []))) or (1 if threads else None)
    cores = None
    if values.get("core id") and len(values["core id"]) == len(values.get("physical id", [])):
        cores = len(set(zip(values["physical id"], values["core id"])))
    return Cpu(model=model, sockets=sockets, cores=cores or threads, threads=threads or None, mhz=mhz)


def merge_cpu(preferred: Cpu | None, fallback: Cpu) -> Cpu:
    """lscpu's answer, with what it left out taken from /proc/cpuinfo."""
    if preferred is None:
        return fallback
    return Cpu(**{k: getattr(preferred, k) if getattr(preferred, k) is not None else getattr(fallback, k)
                  for k in Cpu.__dataclass_fields__})


def meminfo(text: str) -> int:
    """MemTotal of /proc/meminfo, in KiB (what the OS has, not what the DIMMs hold)."""
    m = re.search(r"^MemTotal:\s+(\d+)\s*kB", text, re.MULTILINE)
    if not m:
        raise ValueError("no MemTotal in /proc/meminfo")
    return int(m.group(1))


# --------------------------------------------------------------------------- sysfs files

def names(text: str, pattern: re.Pattern) -> list[str]:
    """The entries `ls -1 DIR` listed that look like what DIR holds (others are ignored)."""
    return [line.strip() for line in text.splitlines() if pattern.match(line.strip())]


def grep_values(text: str, root: str) -> dict[str, dict[str, str]]:
    """`grep -s -H . <root>/<entry>/<file> ...` -> {entry: {file: first line}}. Entries may
    hold colons (PCI addresses); file names never do."""
    out: dict[str, dict[str, str]] = {}
    prefix = root.rstrip("/") + "/"
    for line in text.splitlines():
        if not line.startswith(prefix):
            continue
        entry, _, rest = line[len(prefix):].partition("/")
        name, sep, value = rest.partition(":")
        if sep and entry and name:
            out.setdefault(entry, {}).setdefault(name, value.strip())
    return out


# --------------------------------------------------------------------------- disks

def _is_disk_name(name: str) -> bool:
    return not name.startswith(NOT_DISKS)


def lsblk_json(text: str) -> list[Disk]:
    """`lsblk -J -b -d -o NAME,TYPE,SIZE,MODEL,SERIAL,ROTA,TRAN`: whole disks only."""
    try:
        rows = json.loads(text)["blockdevices"]
    except (ValueError, KeyError, TypeError):
        raise ValueError("not lsblk -J output") from None
    disks = []
    for row in rows:
        size = _int(row.get("size")) or 0
        name = str(row.get("name") or "")
        if row.get("type") != "disk" or size <= 0 or not _is_disk_name(name):
            continue
        rota = row.get("rota")
        disks.append(Disk(name=name, size_bytes=size, model=(row.get("model") or "").strip() or None,
                          serial=(row.get("serial") or "").strip() or None,
                          rotational=None if rota is None else rota in (True, "1", 1),
                          transport=row.get("tran") or None))
    return disks


def sysfs_block(values: dict[str, dict[str, str]]) -> list[Disk]:
    """/sys/block/<disk>/{size (512-byte sectors), queue/rotational, device/model}."""
    disks = []
    for name in sorted(values):
        v = values[name]
        size = (_int(v.get("size")) or 0) * 512
        if size <= 0 or not _is_disk_name(name):
            continue
        rota = v.get("queue/rotational")
        disks.append(Disk(name=name, size_bytes=size, model=v.get("device/model") or None,
                          rotational=None if rota is None else rota == "1"))
    return disks


# --------------------------------------------------------------------------- NICs

def ip_link_json(text: str) -> list[Nic]:
    """`ip -j -d link show`: Ethernet links. Physical means a parent bus (pci, virtio, ...)
    or no link kind (with -d every virtual link says its kind: veth, bridge, bond, ...)."""
    try:
        rows = json.loads(text)
        if not isinstance(rows, list):
            raise TypeError
    except (ValueError, TypeError):
        raise ValueError("not ip -j link output") from None
    nics = []
    for row in rows:
        mac = str(row.get("address") or "").lower()
        if row.get("link_type") != "ether" or not MAC_RE.match(mac):
            continue
        flags = row.get("flags") or []
        perm = str(row.get("permaddr") or "").lower() or None
        nics.append(Nic(name=str(row.get("ifname")), mac=mac, state=str(row.get("operstate") or "").lower() or None,
                        carrier="LOWER_UP" in flags, physical=bool(row.get("parentbus")) or "linkinfo" not in row,
                        perm_mac=perm if perm != mac else None))
    return nics


def sysfs_net(values: dict[str, dict[str, str]]) -> list[Nic]:
    """/sys/class/net/<nic>/{address, operstate, carrier, type, device/uevent}: type 1 is
    Ethernet; a `device` link means hardware behind it."""
    nics = []
    for name in sorted(values):
        v = values[name]
        mac = v.get("address", "").lower()
        if v.get("type") != "1" or not MAC_RE.match(mac):
            continue
        carrier = v.get("carrier")
        event = v.get("device/uevent", "")          # its first line names the driver
        nics.append(Nic(name=name, mac=mac, state=v.get("operstate") or None,
                        carrier=None if carrier is None else carrier == "1",
                        physical="device/uevent" in v,
                        driver=event.removeprefix("DRIVER=") if event.startswith("DRIVER=") else None))
    return nics


# --------------------------------------------------------------------------- PCI

def _named(field: str) -> tuple[str, str]:
    """"NVIDIA Corporation [10de]" -> ("NVIDIA Corporation", "10de")."""
    m = _NAMED_ID.match(field.strip())
    if not m:
        raise ValueError(f"not a 'name [id]' field: {field[:40]!r}")
    name = m.group(1).strip()
    return ("" if name in ("Device", "Vendor", "Class") else name), m.group(2).lower()


def lspci_mm(text: str) -> list[PciDevice]:
    """`lspci -nn -mm`: slot "class [cccc]" "vendor [vvvv]" "device [dddd]" [-rXX] [-pXX]
    "subvendor [ssss]" "subdevice [ssss]", as OpenNebula's pci.rb probe reads it."""
    devices = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            words = shlex.split(line)
        except ValueError:
            raise ValueError("not lspci -nn -mm output") from None
        if len(words) < 4:
            raise ValueError("not lspci -nn -mm output")
        address = normal_address(words[0])
        class_name, class_code = _named(words[1])
        vendor_name, vendor = _named(words[2])
        device_name, device = _named(words[3])
        revision, prog_if, subsystem = "", "00", []
        for word in words[4:]:
            if word.startswith("-r"):
                revision = word[2:].lower()
            elif word.startswith("-p"):
                prog_if = word[2:].lower()
            else:
                subsystem.append(word)
        sub_vendor = sub_device = ""
        if len(subsystem) >= 2 and subsystem[0] and subsystem[1]:
            sub_vendor, sub_device = _named(subsystem[0])[1], _named(subsystem[1])[1]
        devices.append(PciDevice(address=address, vendor=vendor, device=device, class_code=class_code,
                                 prog_if=prog_if, subsystem_vendor=sub_vendor, subsystem_device=sub_device,
                                 revision=revision, vendor_name=vendor_name, device_name=device_name,
                                 class_name=class_name))
    return devices


def _hex(value: str | None, digits: int) -> str:
    """"0x10de" -> "10de"; anything that is not hex -> ""."""
    text = (value or "").strip().lower().removeprefix("0x")
    if not re.fullmatch(r"[0-9a-f]{1,8}", text):
        return ""
    return text.zfill(digits)[-digits:]


def sysfs_pci(values: dict[str, dict[str, str]]) -> list[PciDevice]:
    """/sys/bus/pci/devices/<address>/{vendor, device, class, subsystem_*, revision,
    numa_node}, the files lspci reads when it has no other access method."""
    devices = []
    for address in sorted(values):
        v = values[address]
        if not ADDRESS_RE.match(address) or not v.get("vendor") or not v.get("class"):
            continue
        klass = _hex(v.get("class"), 6)
        numa = _int(v.get("numa_node"))
        devices.append(PciDevice(address=address, vendor=_hex(v["vendor"], 4), device=_hex(v.get("device"), 4),
                                 class_code=klass[:4], prog_if=klass[4:] or "00",
                                 subsystem_vendor=_hex(v.get("subsystem_vendor"), 4),
                                 subsystem_device=_hex(v.get("subsystem_device"), 4),
                                 revision=_hex(v.get("revision"), 2),
                                 numa_node=numa if numa is not None and numa >= 0 else None))
    return devices


def merge_pci(named: list[PciDevice], numbered: list[PciDevice]) -> list[PciDevice]:
    """lspci's devices (names) completed by sysfs's (NUMA node), by address; a device only
    one of them lists is kept as that one saw it."""
    by_address = {d.address: d for d in numbered}
    out = []
    for dev in named:
        raw = by_address.pop(dev.address, None)
        if raw is not None:
            dev = replace(dev, numa_node=raw.numa_node, prog_if=raw.prog_if or dev.prog_if)
        out.append(dev)
    return sorted(out + list(by_address.values()), key=lambda d: d.address)


# --------------------------------------------------------------------------- firmware, BMC

def ipmitool_mc_info(text: str) -> dict[str, str]:
    """`ipmitool mc info`: the BMC's identity lines (`Key : value`; indented lists skipped)."""
    wanted = {"Device ID": "device_id", "Firmware Revision": "firmware_revision",
              "IPMI Version": "ipmi_version", "Manufacturer ID": "manufacturer_id",
              "Manufacturer Name": "manufacturer_name", "Product ID": "product_id"}
    out = {}
    for line in text.splitlines():
        if line[:1].isspace():
            continue
        key, sep, value = line.partition(":")
        if sep and key.strip() in wanted and value.strip():
            out[wanted[key.strip()]] = value.strip()
    if not out:
        raise ValueError("not ipmitool mc info output")
    return out
