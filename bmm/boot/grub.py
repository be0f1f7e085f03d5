"""GRUB 2 on a local-disk node, through an executor.

The boot design: the home OS stays GRUB's `saved_entry`; a tenant boots through `next_entry`
(one-shot, `grub-reboot`), so every way back home needs only power. bmm owns
`<boot>/grub/custom.cfg` (sourced by Debian's standard 41_custom stanza; the distro's grub.cfg
is never edited) for its tenant menu entries. A custom.cfg without bmm's marker line belongs to
the admin and is never overwritten.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bmm import settings
from bmm.boot.base import Boot
from bmm.errors import BmmError, ConfigError
from bmm.settings import Setting
from bmm.transport import executor_node

TIMEOUT = 60
MARKER = "# bmm-managed custom.cfg"
HEADER = (f"{MARKER}: written by bmm (OpenNebula bare-metal driver). Do not edit: bmm rewrites it.\n"
          "# Sourced by /etc/grub.d/41_custom. Tenant entries boot once through next_entry\n"
          "# (grub-reboot); the home OS stays saved_entry.\n")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_PATH = re.compile(r"^/[A-Za-z0-9._+~/-]+$")
_ARG = re.compile(r"^[A-Za-z0-9._,:=/@+%-]+$")
_DM = re.compile(r"^[A-Za-z0-9+_.][A-Za-z0-9+_.-]{0,254}$")
FS_MODULES = {"ext2": "ext2", "ext3": "ext2", "ext4": "ext2", "xfs": "xfs", "btrfs": "btrfs"}


def grub_dir(boot_dir: str) -> str:
    return boot_dir.rstrip("/") + "/grub" if boot_dir != "/" else "/grub"


def env_path(boot_dir: str) -> str:
    return grub_dir(boot_dir) + "/grubenv"


# ---------------------------------------------------------------------------------------------
# pure: entries, custom.cfg, grub.cfg parsing

def quote(text: str) -> str:
    """A GRUB script single-quoted word."""
    return "'" + text.replace("'", "'\\''") + "'"


@dataclass(frozen=True)
class TenantEntry:
    """A tenant's boot entry: its root is a device-mapper device (an LV, by its mapper name)."""

    entry_id: str
    title: str
    root_dm: str
    kernel: str
    initrd: str
    cmdline: str = ""
    fstype: str = "ext4"


def format_tenant_entry(entry: TenantEntry) -> str:
    """One bmm menu entry (with BEGIN/END comment lines bmm uses to find it again)."""
    entry_id, title, dm = entry.entry_id, entry.title, entry.root_dm
    kernel, initrd, cmdline, fstype = entry.kernel, entry.initrd, entry.cmdline, entry.fstype
    if not _ID.match(entry_id):
        raise ConfigError(f"invalid GRUB entry id {entry_id!r}")
    if not title or any(ord(c) < 32 for c in title):
        raise ConfigError(f"invalid GRUB entry title {title!r}")
    if not _DM.match(dm):
        raise ConfigError(f"invalid device-mapper name {dm!r} for the root of GRUB entry {entry_id}")
    for what, path in (("kernel", kernel), ("initrd", initrd)):
        if not _PATH.match(path) or "/../" in path + "/":
            raise BmmError(f"the image's {what} path {path!r} cannot be put in a GRUB entry")
    args = cmdline.split()
    for arg in args:
        if not _ARG.match(arg):
            raise ConfigError(f"kernel argument {arg!r} has characters bmm does not put in a GRUB entry")
        if arg.startswith("root="):
            raise ConfigError("kernel arguments must not set root= (bmm boots the instance's LV)")
    module = FS_MODULES.get(fstype)
    if module is None:
        raise BmmError(f"GRUB entry: unsupported root filesystem {fstype}")
    linux = " ".join([kernel, f"root=/dev/mapper/{dm}", "ro", *args])
    return (f"### BEGIN bmm entry {entry_id}\n"
            f"menuentry {quote(title)} --id {entry_id} {{\n"
            f"    insmod lvm\n"
            f"    insmod {module}\n"
            f"    set root=(lvm/{dm})\n"
            f"    linux {linux}\n"
            f"    initrd {initrd}\n"
            f"}}\n"
            f"### END bmm entry {entry_id}\n")


def is_bmm_custom(text: str) -> bool:
    return text.startswith(MARKER)


def split_custom(text: str) -> dict[str, str]:
    """{entry_id: block text} of a bmm custom.cfg, in file order."""
    blocks: dict[str, str] = {}
    current: str | None = None
    lines: list[str] = []
    for line in text.splitlines(keepends=True):
        if line.startswith("### BEGIN bmm entry "):
            current = line[len("### BEGIN bmm entry "):].strip()
            lines = [line]
        elif current is not None:
            lines.append(line)
            if line.strip() == f"### END bmm entry {current}":
                blocks[current] = "".join(lines)
                current = None
    return blocks


def render_custom(blocks: dict[str, str]) -> str:
    return HEADER + "".join("\n" + b for b in blocks.values())


@dataclass(frozen=True)
class MenuEntry:
    title: str
    id: str | None
    path: str               # titles from the top, joined with '>' (what grub-reboot accepts)
    id_path: str | None     # the same with ids, when every level has one
    index: str              # "2" or "1>0"
    source: str             # "grub.cfg" or "custom.cfg"

    def matches(self, name: str) -> bool:
        return name in (self.id, self.title, self.path, self.id_path, self.index)


def _header_words(line: str) -> tuple[str, str | None]:
    text = line.strip()
    if text.endswith("{"):
        text = text[:-1]
    text = text.replace("${menuentry_id_option}", "--id").replace("$menuentry_id_option", "--id")
    try:
        words = shlex.split(text, comments=False)[1:]
    except ValueError:
        words = text.split()[1:]
    title, ident, i = None, None, 0
    while i < len(words):
        w = words[i]
        if w == "--id" and i + 1 < len(words):
            ident, i = words[i + 1], i + 2
            continue
        if w.startswith("--id="):
            ident = w[5:]
        elif w in ("--class", "--users", "--hotkey") and i + 1 < len(words):
            i += 2
            continue
        elif not w.startswith("--") and title is None:
            title = w
        i += 1
    return title or "", ident or None


def parse_menu(text: str, source: str = "grub.cfg", *, start_index: int = 0) -> list[MenuEntry]:
    """Bootable entries of a grub.cfg-like text, submenu children included."""
    entries: list[MenuEntry] = []
    # stack of (kind, title, id, index, child counter)
    stack: list[list] = []
    top = start_index
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        word = line.split()[0]
        if word in ("menuentry", "submenu") and line.endswith("{"):
            title, ident = _header_words(line)
            if stack:
                index = stack[-1][4]
                stack[-1][4] += 1
            else:
                index, top = top, top + 1
            stack.append([word, title, ident, index, 0])
            if word == "menuentry":
                titles = [s[1] for s in stack]
                ids = [s[2] for s in stack]
                entries.append(MenuEntry(title, ident, ">".join(titles),
                                         ">".join(ids) if all(ids) else None,
                                         ">".join(str(s[3]) for s in stack), source))
            continue
        if line.endswith("{"):                       # function f { ... }, if blocks use fi
            stack.append(["other", "", None, 0, 0])
            continue
        if line == "}" and stack:
            stack.pop()
    return entries


def sources_custom_cfg(grub_cfg: str) -> bool:
    return bool(re.search(r"^\s*source\s+\S*custom\.cfg", grub_cfg, re.M))


def boot_setup_problems(grub_cfg: str) -> list[str]:
    """Why this grub.cfg cannot run bmm's boot design (empty when it can)."""
    problems = []
    if "next_entry" not in grub_cfg:
        problems.append("grub.cfg does not honour next_entry (grub-reboot); regenerate it with update-grub")
    if not re.search(r"set\s+default=\"?\$\{?saved_entry", grub_cfg):
        problems.append("grub.cfg does not boot saved_entry by default (set GRUB_DEFAULT=saved and run update-grub)")
    if not sources_custom_cfg(grub_cfg):
        problems.append("grub.cfg does not source custom.cfg (/etc/grub.d/41_custom is missing or disabled)")
    return problems


def parse_env(text: str) -> dict[str, str]:
    env = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key and not key.startswith("#"):
            env[key] = value
    return env


# ---------------------------------------------------------------------------------------------
# on the node

def _exists(ex, path: str) -> bool:
    return ex.run(["test", "-e", path], timeout=TIMEOUT, check=False).ok


def _read(ex, path: str) -> str | None:
    if not _exists(ex, path):
        return None
    return ex.run(["cat", path], timeout=TIMEOUT).stdout


def read_env(ex, boot_dir: str) -> dict[str, str]:
    """grubenv's variables ({} when there is no grubenv yet)."""
    path = env_path(boot_dir)
    if not _exists(ex, path):
        return {}
    res = ex.run(["grub-editenv", path, "list"], timeout=TIMEOUT, check=False)
    if not res.ok:
        raise BmmError(f"cannot read {path}: {res.stderr.strip() or 'grub-editenv failed'}", node=executor_node(ex))
    return parse_env(res.stdout)


def saved_entry(ex, boot_dir: str) -> str | None:
    return read_env(ex, boot_dir).get("saved_entry") or None


def set_next_entry(ex, boot_dir: str, entry: str) -> None:
    """Boot `entry` once at the next boot (grub-reboot); the home OS stays saved_entry.
    grub-reboot's harmless grub-probe complaint on stderr is ignored; its exit status is not."""
    node = executor_node(ex)
    res = ex.run(["grub-reboot", f"--boot-directory={boot_dir}", entry], timeout=TIMEOUT, check=False)
    if not res.ok:
        cause = [ln for ln in res.stderr.strip().splitlines() if "grub-probe" not in ln] or res.stderr.splitlines()
        raise BmmError(f"grub-reboot {entry} failed: {cause[-1].strip() if cause else f'exit {res.returncode}'}",
                       node=node)
    got = read_env(ex, boot_dir).get("next_entry")
    if got != entry:
        raise BmmError(f"grub-reboot did not set next_entry={entry} in {env_path(boot_dir)} (it holds {got!r})",
                       node=node)


def clear_next_entry(ex, boot_dir: str) -> None:
    path = env_path(boot_dir)
    if _exists(ex, path):
        ex.run(["grub-editenv", path, "unset", "next_entry"], timeout=TIMEOUT)


def ensure_saved_entry(ex, boot_dir: str, home: str) -> bool:
    """Make `home` GRUB's saved_entry (grub-set-default) unless it already is; True if changed.
    grub-set-default also clears next_entry: call this before set_next_entry."""
    if saved_entry(ex, boot_dir) == home:
        return False
    ex.run(["grub-set-default", f"--boot-directory={boot_dir}", home], timeout=TIMEOUT)
    got = saved_entry(ex, boot_dir)
    if got != home:
        raise BmmError(f"grub-set-default did not set saved_entry={home} (it holds {got!r})", node=executor_node(ex))
    return True


def _custom_path(boot_dir: str) -> str:
    return grub_dir(boot_dir) + "/custom.cfg"


def _read_custom(ex, boot_dir: str) -> str | None:
    path = _custom_path(boot_dir)
    text = _read(ex, path)
    if text is not None and text.strip() and not is_bmm_custom(text):
        raise BmmError(f"{path} exists and was not written by bmm (no bmm marker); refusing to overwrite "
                       "the admin's file: move its entries to /etc/grub.d/40_custom", node=executor_node(ex))
    return text


def _write_custom(ex, boot_dir: str, text: str) -> None:
    """Atomically replace custom.cfg: a new file (O_EXCL) next to it, fsync, rename, sync dir."""
    directory = grub_dir(boot_dir)
    tmp = f"{directory}/.custom.cfg.bmm-{os.urandom(6).hex()}"
    ex.run(["dd", f"of={tmp}", "conv=excl,fsync", "status=none"], input=text, timeout=TIMEOUT)
    try:
        ex.run(["mv", "-f", "-T", tmp, _custom_path(boot_dir)], timeout=TIMEOUT)
    except BmmError:
        ex.run(["rm", "-f", tmp], timeout=TIMEOUT, check=False)
        raise
    ex.run(["sync", directory], timeout=TIMEOUT, check=False)


def write_tenant_entry(ex, boot_dir: str, entry: TenantEntry) -> str:
    """Add (or replace) bmm's entry in <boot>/grub/custom.cfg; returns the entry text."""
    block = format_tenant_entry(entry)
    text = _read_custom(ex, boot_dir)
    blocks = split_custom(text or "")
    blocks[entry.entry_id] = block
    _write_custom(ex, boot_dir, render_custom(blocks))
    return block


def remove_tenant_entry(ex, boot_dir: str, entry_id: str) -> bool:
    """Remove bmm's entry entry_id from custom.cfg; False if it was not there."""
    text = _read_custom(ex, boot_dir)
    if text is None:
        return False
    blocks = split_custom(text)
    if entry_id not in blocks:
        return False
    del blocks[entry_id]
    _write_custom(ex, boot_dir, render_custom(blocks))
    return True


def tenant_entries(ex, boot_dir: str) -> list[str]:
    """Ids of the entries bmm has in custom.cfg."""
    text = _read(ex, _custom_path(boot_dir))
    return list(split_custom(text)) if text and is_bmm_custom(text) else []


def menu_entries(ex, boot_dir: str) -> list[MenuEntry]:
    """The boot menu: grub.cfg's entries, then custom.cfg's (where 41_custom sources it)."""
    cfg_path = grub_dir(boot_dir) + "/grub.cfg"
    cfg = _read(ex, cfg_path)
    if cfg is None:
        raise BmmError(f"{cfg_path} does not exist", node=executor_node(ex))
    entries = parse_menu(cfg, "grub.cfg")
    custom = _read(ex, _custom_path(boot_dir))
    if custom and sources_custom_cfg(cfg):
        top = len({e.index.split(">")[0] for e in entries})
        entries += parse_menu(custom, "custom.cfg", start_index=top)
    return entries


def check_boot_setup(ex, boot_dir: str, home: str | None = None) -> None:
    """Raise BmmError if the node's GRUB cannot run bmm's boot design (or has no entry home)."""
    cfg_path = grub_dir(boot_dir) + "/grub.cfg"
    cfg = _read(ex, cfg_path)
    node = executor_node(ex)
    if cfg is None:
        raise BmmError(f"{cfg_path} does not exist", node=node)
    problems = boot_setup_problems(cfg)
    if home is not None and not home.isdigit():
        if not any(e.matches(home) for e in parse_menu(cfg)):
            problems.append(f"grub.cfg has no menu entry {home!r} for the home OS")
    if problems:
        raise BmmError("; ".join(problems), node=node)


# ---------------------------------------------------------------------------------------------
# the part

def tenant_entry_id(vm_id: int) -> str:
    return f"bmm-vm{vm_id}"


class GrubBoot(Boot):
    """A local disk booted by GRUB 2: the home OS stays saved_entry; an instance boots once
    through next_entry, from bmm's own entry in custom.cfg."""

    method = "grub"
    SETTINGS = {
        "boot_dir": Setting(settings.abs_path, "the node's boot directory, holding grub/grubenv (default /boot)"),
        "home_entry": Setting(settings.string, "id or title of the home OS menu entry (default home)"),
    }

    def __init__(self, node: str, table: Mapping[str, Any]):
        super().__init__(node, table)
        self.boot_dir = self.settings.get("boot_dir", "/boot")
        self.home = self.settings.get("home_entry", "home")

    def present(self, ex) -> bool:
        """Does the OS behind ex boot this node through GRUB (its grubenv is there)?"""
        return ex.run(["test", "-f", env_path(self.boot_dir)], timeout=10, check=False).ok

    def arm(self, ex, vm_id: int, entry: TenantEntry) -> None:
        """The next boot (and only the next) starts the instance."""
        write_tenant_entry(ex, self.boot_dir, entry)
        ensure_saved_entry(ex, self.boot_dir, self.home)
        set_next_entry(ex, self.boot_dir, entry.entry_id)

    def disarm(self, ex, vm_id: int) -> None:
        """The instance's entry goes; the home OS stays the default."""
        remove_tenant_entry(ex, self.boot_dir, tenant_entry_id(vm_id))
        ensure_saved_entry(ex, self.boot_dir, self.home)
