"""The commands inspection runs on a node's OS, over one ssh session, and their fallbacks.

Every command is a fixed argv (bmm.transport.ssh quotes every word; no shell syntax reaches
the node), reads and never writes, and gets COMMAND_TIMEOUT seconds, cut to what is left
of the node's deadline. A tool the OS lacks (exit 127) or that answers in another format
(busybox's `ip`, `lspci`) falls back to /proc and /sys, read with `ls -1` and
`grep -s -H . FILE...` (both in busybox), so a minimal board OS answers too:

| section  | first choice                  | fallback / complement                       |
|----------|-------------------------------|---------------------------------------------|
| cpu      | lscpu -J                      | /proc/cpuinfo (always read: fills the gaps) |
| memory   | /proc/meminfo                 |                                             |
| disks    | lsblk -J -b -d                | /sys/block/*/size, queue/rotational, model  |
| nics     | ip -j -d link show            | /sys/class/net/*/address, operstate, ...    |
| pci      | lspci -nn -mm                 | /sys/bus/pci/devices/* (always read: NUMA)  |
| firmware | /sys/class/dmi/id/*           |                                             |
| bmc      | ipmitool mc info, only when /dev/ipmi0 exists, IPMI_TIMEOUT s            |

A section that cannot be read becomes a note in the facts, not a failure; the node fails
only when the session breaks or its deadline passes.
"""

from __future__ import annotations

import re
import time

from bmm.errors import TimeoutExpired
from bmm.inspect import parse, pciids
from bmm.inspect.facts import Cpu, Facts
from bmm.inspect.pci import ADDRESS_RE
from bmm.runner import Result, last_line

COMMAND_TIMEOUT = 10.0
IPMI_TIMEOUT = 5.0
GREP_CHUNK = 256                 # files per grep: keeps one exec request small

LSCPU = ("lscpu", "-J")
CPUINFO = ("cat", "/proc/cpuinfo")
MEMINFO = ("cat", "/proc/meminfo")
LSBLK = ("lsblk", "-J", "-b", "-d", "-o", "NAME,TYPE,SIZE,MODEL,SERIAL,ROTA,TRAN")
IP_LINK = ("ip", "-j", "-d", "link", "show")
LSPCI = ("lspci", "-nn", "-mm")
IPMI_DEVICES = ("/dev/ipmi0", "/dev/ipmi/0", "/dev/ipmidev/0")
IPMI_MC_INFO = ("ipmitool", "mc", "info")

SYS_BLOCK = "/sys/block"
SYS_NET = "/sys/class/net"
SYS_PCI = "/sys/bus/pci/devices"
SYS_DMI = "/sys/class/dmi/id"
BLOCK_FILES = ("size", "queue/rotational", "device/model")
NET_FILES = ("address", "operstate", "carrier", "type", "device/uevent")
PCI_FILES = ("vendor", "device", "class", "subsystem_vendor", "subsystem_device", "revision", "numa_node")
DMI_FILES = ("bios_vendor", "bios_version", "bios_date", "sys_vendor", "product_name",
             "product_version", "board_vendor", "board_name", "chassis_vendor")

NOT_FOUND = 127


class Probe:
    """Runs the inspection commands on one connected SshSession, within `deadline`
    (time.monotonic()); `collect()` returns the Facts."""

    def __init__(self, session, *, deadline: float, node: str, command_timeout: float = COMMAND_TIMEOUT):
        self.session = session
        self.deadline = deadline
        self.node = node
        self.command_timeout = command_timeout
        self.notes: list[str] = []
        self.sources: dict[str, str] = {}

    # -------------------------------------------------------------- running commands

    def run(self, argv: tuple[str, ...], timeout: float | None = None) -> Result | None:
        """argv's result; None when the OS has no such tool or it did not finish in time
        (noted). Past the node's deadline: TimeoutExpired, the node fails."""
        late = TimeoutExpired(f"inspection did not finish before its deadline (at {argv[0]})", node=self.node)
        limit = min(timeout or self.command_timeout, self.deadline - time.monotonic())
        if limit <= 0:
            raise late
        try:
            result = self.session.run(list(argv), timeout=limit, check=False)
        except TimeoutExpired:
            if time.monotonic() >= self.deadline:
                raise late from None
            self.notes.append(f"{argv[0]} did not finish within {limit:.3g} s")
            return None
        return None if result.returncode == NOT_FOUND else result

    def ok(self, argv: tuple[str, ...], timeout: float | None = None) -> str | None:
        """argv's stdout when it exited 0, else None (why goes to the notes)."""
        result = self.run(argv, timeout)
        if result is None:
            return None
        if result.returncode != 0:
            why = last_line(result.stderr) or f"exit {result.returncode}"
            self.notes.append(f"{' '.join(argv[:2])}: {why[:100]}")
            return None
        return result.stdout

    def sysfs(self, root: str, files: tuple[str, ...], pattern: re.Pattern) -> dict[str, dict[str, str]] | None:
        """{entry: {file: value}} for the entries of `root` (`ls -1`), their `files` read
        with grep; None when root cannot be listed."""
        listing = self.run(("ls", "-1", root))
        if listing is None or listing.returncode != 0:
            return None
        paths = [f"{root}/{entry}/{name}" for entry in parse.names(listing.stdout, pattern) for name in files]
        values: dict[str, dict[str, str]] = {}
        for i in range(0, len(paths), GREP_CHUNK):
            result = self.run(("grep", "-s", "-H", ".", *paths[i:i + GREP_CHUNK]))
            if result is not None:
                for entry, found in parse.grep_values(result.stdout, root).items():
                    values.setdefault(entry, {}).update(found)
        return values

    # -------------------------------------------------------------- sections

    def cpu(self) -> Cpu:
        text = self.ok(CPUINFO)
        from_proc = parse.cpuinfo(text) if text else Cpu()
        lscpu, source = None, "/proc/cpuinfo"
        out = self.ok(LSCPU)
        if out:
            try:
                lscpu, source = parse.lscpu_json(out), "lscpu -J + /proc/cpuinfo"
            except ValueError as exc:
                self.notes.append(f"cpu: {exc}")
        if text or lscpu:
            self.sources["cpu"] = source
        return parse.merge_cpu(lscpu, from_proc)

    def memory(self) -> int | None:
        text = self.ok(MEMINFO)
        if text:
            try:
                kib = parse.meminfo(text)
                self.sources["memory"] = "/proc/meminfo"
                return kib
            except ValueError as exc:
                self.notes.append(f"memory: {exc}")
        return None

    def tool_or_sysfs(self, section: str, argv: tuple[str, ...], source: str, parse_tool, root: str,
                      files: tuple[str, ...], pattern: re.Pattern, parse_sysfs) -> list:
        """A section from a tool's JSON when the OS has the tool, else from sysfs."""
        out = self.run(argv)
        if out is not None and out.returncode == 0:
            try:
                found = parse_tool(out.stdout)
                self.sources[section] = source
                return found
            except ValueError as exc:
                self.notes.append(f"{section}: {exc}")
        values = self.sysfs(root, files, pattern)
        if values is None:
            self.notes.append(f"{section}: cannot list {root}")
            return []
        self.sources[section] = root
        return parse_sysfs(values)

    def disks(self):
        return self.tool_or_sysfs("disks", LSBLK, "lsblk -J -b", parse.lsblk_json, SYS_BLOCK, BLOCK_FILES,
                                  parse.BLOCK_NAME_RE, parse.sysfs_block)

    def nics(self):
        return self.tool_or_sysfs("nics", IP_LINK, "ip -j -d link", parse.ip_link_json, SYS_NET, NET_FILES,
                                  parse.NET_NAME_RE, parse.sysfs_net)

    def pci(self):
        values = self.sysfs(SYS_PCI, PCI_FILES, ADDRESS_RE)
        from_sys = parse.sysfs_pci(values) if values else []
        named = None
        out = self.run(LSPCI)
        if out is not None and out.returncode == 0:
            try:
                named = parse.lspci_mm(out.stdout)
            except ValueError as exc:
                self.notes.append(f"pci: {exc}")
        if named is not None:
            self.sources["pci"] = "lspci -nn -mm" + (f" + {SYS_PCI}" if from_sys else "")
            return parse.merge_pci(named, from_sys)
        if values is None:
            self.notes.append(f"pci: no lspci and cannot list {SYS_PCI}")
            return []
        self.sources["pci"] = f"{SYS_PCI} (names: this front-end's pci.ids)"
        ids = pciids.default()
        return [d.named(ids) for d in from_sys]

    def firmware(self) -> dict[str, str]:
        result = self.run(("grep", "-s", "-H", ".", *(f"{SYS_DMI}/{name}" for name in DMI_FILES)))
        found = {}
        for line in (result.stdout if result else "").splitlines():
            path, sep, value = line.partition(":")
            name = path.rsplit("/", 1)[-1]
            if sep and path.startswith(SYS_DMI + "/") and name in DMI_FILES and value.strip():
                found[name] = value.strip()[:100]
        if found:
            self.sources["firmware"] = SYS_DMI
        return found

    def bmc(self) -> dict[str, str]:
        present = self.run(("ls", *IPMI_DEVICES))
        if present is None or not present.stdout.strip():
            return {}
        out = self.ok(IPMI_MC_INFO, timeout=IPMI_TIMEOUT)
        if not out:
            return {}
        try:
            info = parse.ipmitool_mc_info(out)
        except ValueError as exc:
            self.notes.append(f"bmc: {exc}")
            return {}
        self.sources["bmc"] = "ipmitool mc info"
        return info

    def collect(self) -> Facts:
        cpu = self.cpu()
        memory = self.memory()
        disks, nics, pci = self.disks(), self.nics(), self.pci()
        firmware, bmc = self.firmware(), self.bmc()
        return Facts(cpu=cpu, memory_kib=memory, disks=tuple(disks), nics=tuple(nics), pci=tuple(pci),
                     firmware=firmware, bmc=bmc, sources=dict(self.sources), notes=tuple(self.notes))
