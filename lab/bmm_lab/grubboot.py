"""GRUB's boot rules, evaluated the way GRUB 2 does on a Debian-like grub.cfg.

- the menu: `menuentry`/`submenu` blocks of grub.cfg and of every file it `source`s at top level
  (the 41_custom stanza sources `${config_directory}/custom.cfg`), with titles, `--id`s and
  indexes; submenu entries are addressed as `parent>child` (titles, ids or numbers);
- the default: `next_entry` from grubenv once (then cleared, like `set next_entry=` +
  `save_env next_entry`), else the cfg's `set default=` (`"${saved_entry}"` reads grubenv's
  saved_entry), else entry 0; a default naming no entry falls back to entry 0, as GRUB does;
- what an entry boots: the LV named by the kernel's `root=/dev/mapper/<vg>-<lv>` or
  `root=/dev/<vg>/<lv>`, else by `set root=(lvm/<vg>-<lv>[,partN])`; an entry naming no LV boots
  the home root (the node's management OS).

grubenv is read and written with the real `grub-editenv`.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from bmm_lab import LabError
from bmm.runner import run


@dataclass
class MenuEntry:
    title: str
    id: str | None
    index: str                 # "2" or "1>0"
    path: str                  # titles joined with ">"
    id_path: str | None
    body: list[str] = field(default_factory=list)
    source: str = ""           # file it was read from
    root_vg: str | None = None
    root_lv: str | None = None
    partition: int | None = None

    def names(self) -> set[str]:
        out = {self.index, self.path}
        if self.id_path:
            out.add(self.id_path)
        return out

    def describe(self) -> str:
        return f"'{self.path}'" + (f" (--id {self.id})" if self.id else "")


@dataclass
class Menu:
    entries: list[MenuEntry]           # every bootable entry, submenu children included
    default_expr: str | None           # the cfg's `set default=` (None if it has none)
    files: list[str]


@dataclass
class BootChoice:
    entry: MenuEntry | None
    reason: str
    env: dict[str, str]
    home: bool


def split_dm_name(name: str) -> tuple[str, str] | None:
    """'my--vg-lv--1' -> ('my-vg', 'lv-1'): device-mapper / GRUB lvm/ name escaping."""
    i = 0
    while i < len(name):
        if name[i] == "-":
            if i + 1 < len(name) and name[i + 1] == "-":
                i += 2
                continue
            return name[:i].replace("--", "-"), name[i + 1:].replace("--", "-")
        i += 1
    return None


_SET_ROOT = re.compile(r"""^\s*set\s+root=['"]?\(?lvm/([^,)'"\s]+)(?:,(?:msdos|gpt)?(\d+))?\)?['"]?""")
_KERNEL = re.compile(r"^\s*(linux|linux16|linuxefi)\s")
_SOURCE = re.compile(r"(?:^|[;\s])source\s+(\S+)")
_SET_DEFAULT = re.compile(r"""^\s*set\s+default=(.*)$""")


def _root_from_body(entry: MenuEntry) -> None:
    for line in entry.body:
        m = _SET_ROOT.match(line)
        if m and entry.root_lv is None:
            pair = split_dm_name(m.group(1))
            if pair:
                entry.root_vg, entry.root_lv = pair
                entry.partition = int(m.group(2)) if m.group(2) else None
    for line in entry.body:
        if not _KERNEL.match(line):
            continue
        try:
            words = shlex.split(line)
        except ValueError:
            words = line.split()
        for w in words:
            if not w.startswith("root="):
                continue
            dev = w[5:]
            if dev.startswith("/dev/mapper/"):
                pair = split_dm_name(dev[len("/dev/mapper/"):])
                if pair:
                    entry.root_vg, entry.root_lv = pair
                    entry.partition = None
            else:
                m = re.match(r"^/dev/([^/]+)/([^/]+)$", dev)
                if m and m.group(1) not in ("disk", "mapper"):
                    entry.root_vg, entry.root_lv = m.group(1), m.group(2)
                    entry.partition = None


def _header(line: str) -> tuple[str, str | None] | None:
    """Title and --id of a `menuentry ... {` / `submenu ... {` line."""
    text = line.strip()
    if text.endswith("{"):
        text = text[:-1]
    text = text.replace("$menuentry_id_option", "--id").replace("${menuentry_id_option}", "--id")
    try:
        words = shlex.split(text)[1:]
    except ValueError:
        return None
    title = None
    ident = None
    i = 0
    while i < len(words):
        w = words[i]
        if w == "--id" and i + 1 < len(words):
            ident = words[i + 1]
            i += 2
            continue
        if w.startswith("--id="):
            ident = w[5:]
        elif w in ("--class", "--users", "--hotkey") and i + 1 < len(words):
            i += 2
            continue
        elif w.startswith("--"):
            pass
        elif title is None:
            title = w
        i += 1
    return (title or "", ident)


def parse_menu(cfg: Path, grub_dir: Path | None = None) -> Menu:
    """Parse grub.cfg (and files it sources at top level)."""
    grub_dir = grub_dir or cfg.parent
    entries: list[MenuEntry] = []
    files: list[str] = []
    default_expr: list[str | None] = [None]
    top_index = [0]

    def subst(path: str) -> Path:
        for var in ("${config_directory}", "$config_directory", "${prefix}", "$prefix"):
            path = path.replace(var, str(grub_dir))
        path = path.strip("'\"")
        p = Path(path)
        return p if p.is_absolute() else grub_dir / p

    def parse_file(path: Path) -> None:
        if str(path) in files or not path.is_file():
            return
        files.append(str(path))
        lines = path.read_text(errors="replace").splitlines()
        parse_lines(lines, str(path), [], [], [], depth=0)

    def parse_lines(lines, src, title_path, id_path, idx_path, depth):
        i = 0
        local_index = 0
        while i < len(lines):
            line = lines[i]
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                i += 1
                continue
            word = stripped.split()[0]
            if word in ("menuentry", "submenu") and stripped.endswith("{"):
                # find the matching close brace
                depth_count = 1
                j = i + 1
                body = []
                while j < len(lines) and depth_count:
                    s = lines[j].strip()
                    if s.endswith("{") and not s.startswith("#"):
                        depth_count += 1
                    elif s == "}":
                        depth_count -= 1
                        if depth_count == 0:
                            break
                    body.append(lines[j])
                    j += 1
                hdr = _header(stripped) or ("", None)
                if depth == 0:
                    index = top_index[0]
                    top_index[0] += 1
                else:
                    index = local_index
                    local_index += 1
                tpath = title_path + [hdr[0]]
                ipath = id_path + [hdr[1]]
                xpath = idx_path + [str(index)]
                if word == "menuentry":
                    e = MenuEntry(title=hdr[0], id=hdr[1], index=">".join(xpath), path=">".join(tpath),
                                  id_path=">".join(ipath) if all(ipath) else None, body=body, source=src)
                    _root_from_body(e)
                    entries.append(e)
                else:
                    parse_lines(body, src, tpath, ipath, xpath, depth + 1)
                i = j + 1
                continue
            if depth == 0:
                m = _SET_DEFAULT.match(stripped)
                if m:
                    val = m.group(1).strip().strip("'\"")
                    if "next_entry" not in val:
                        default_expr[0] = val
                for m in _SOURCE.finditer(stripped):
                    parse_file(subst(m.group(1)))
            i += 1

    parse_file(cfg)
    if not files:
        raise LabError(f"{cfg} does not exist")
    return Menu(entries=entries, default_expr=default_expr[0], files=files)


def read_env(grubenv: Path) -> dict[str, str]:
    res = run(["grub-editenv", str(grubenv), "list"], timeout=10, check=False)
    if not res.ok:
        raise LabError(f"cannot read {grubenv}: {res.stderr.strip() or 'grub-editenv failed'}")
    env = {}
    for line in res.stdout.splitlines():
        k, sep, v = line.partition("=")
        if sep:
            env[k] = v
    return env


def find_entry(menu: Menu, name: str) -> MenuEntry | None:
    for e in menu.entries:
        if name in e.names():
            return e
    # a number naming a submenu selects its first child, as GRUB does for "1"
    for e in menu.entries:
        if e.index.startswith(name + ">") or e.path.startswith(name + ">"):
            return e
    return None


def choose(boot_dir: Path, *, home_entry: str = "home", consume: bool = True) -> BootChoice:
    """What GRUB boots now from boot_dir (which holds grub/grub.cfg and grub/grubenv).
    With consume, a one-time next_entry is cleared in grubenv, as GRUB does."""
    grub_dir = boot_dir / "grub"
    cfg = grub_dir / "grub.cfg"
    menu = parse_menu(cfg, grub_dir)
    envfile = grub_dir / "grubenv"
    env = read_env(envfile) if envfile.exists() else {}
    if not menu.entries:
        return BootChoice(None, f"{cfg} has no menu entries", env, False)
    nxt = env.get("next_entry", "")
    if nxt:
        default, why = nxt, f"next_entry={nxt} (once)"
        if consume:
            run(["grub-editenv", str(envfile), "set", "next_entry="], timeout=10)
    else:
        expr = menu.default_expr
        if expr is None or "saved_entry" in expr:
            saved = env.get("saved_entry", "")
            default, why = (saved, f"saved_entry={saved}") if saved else ("0", "no saved_entry: entry 0")
        else:
            default, why = expr, f"default={expr} from grub.cfg"
    entry = find_entry(menu, default)
    if entry is None:
        entry = menu.entries[0]
        why += f"; no entry '{default}', falling back to entry 0"
    home = entry.root_lv is None or home_entry in (entry.id, entry.title, entry.path)
    return BootChoice(entry, why, env, home)
