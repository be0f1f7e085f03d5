"""Install bmm's driver scripts into OpenNebula's remotes directory.

Idempotent: a file is written only when its content or mode would change, so a second run
changes nothing. The shebang of every script is pointed at bmm's own Python, because oned runs
drivers with a bare environment. Files belong to oneadmin when that user exists. An existing
`etc/bmm/bmm.toml` is the operator's and is never overwritten.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass, field
from pathlib import Path

from bmm.errors import ConfigError

TREES = ("vmm/bmm", "tm/bmm", "im/bmm.d", "etc/bmm")
CONFIG_FILES = {"etc/bmm/bmm.toml"}
SHEBANG = "#!/usr/bin/env python3"


def default_source() -> Path:
    return Path(__file__).resolve().parent.parent / "remotes"


@dataclass
class InstallReport:
    written: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)


def _owner() -> tuple[int, int] | None:
    try:
        pw = pwd.getpwnam("oneadmin")
    except KeyError:
        return None
    return pw.pw_uid, pw.pw_gid


def _expected(source: Path, python: str):
    """(relative path, content, mode) of every file bmm puts into a remotes directory."""
    for tree in TREES:
        for src in sorted((source / tree).rglob("*")):
            if src.is_dir() or "__pycache__" in src.parts:
                continue
            data = src.read_bytes()
            executable = os.access(src, os.X_OK)
            if executable and data.startswith(SHEBANG.encode()):
                data = f"#!{python}".encode() + data[len(SHEBANG):]
            yield src.relative_to(source), data, (0o755 if executable else 0o644)


def _checked(dest: Path | str, python: str, source: Path | str | None) -> tuple[Path, Path]:
    dest, source = Path(dest), Path(source) if source else default_source()
    if not (source / "vmm" / "bmm" / "deploy").exists():
        raise ConfigError(f"{source} does not hold bmm's remotes (no vmm/bmm/deploy)")
    if not os.path.isabs(python):
        raise ConfigError(f"--python must be an absolute path, got {python!r}")
    return dest, source


def install_remotes(dest: Path | str, *, python: str, source: Path | str | None = None) -> InstallReport:
    dest, source = _checked(dest, python, source)
    owner = _owner()
    report = InstallReport()
    directories: set[Path] = set()          # dest and every directory below it we wrote into
    for rel, data, mode in _expected(source, python):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        directories.update(dest.joinpath(*rel.parts[:depth]) for depth in range(len(rel.parts)))
        if str(rel) in CONFIG_FILES and target.exists():
            report.kept.append(str(rel))
            continue
        if target.exists() and target.read_bytes() == data and (target.stat().st_mode & 0o777) == mode:
            report.unchanged.append(str(rel))
            continue
        tmp = target.with_name(f".{target.name}.bmm-tmp")
        tmp.write_bytes(data)
        os.chmod(tmp, mode)
        if owner:
            os.chown(tmp, *owner)
        os.replace(tmp, target)
        report.written.append(str(rel))
    if owner:
        for directory in directories:
            os.chown(directory, *owner)
    return report


def stale_remotes(dest: Path | str, *, python: str, source: Path | str | None = None) -> list[str]:
    """The files of an installed remotes directory that differ from what this bmm would
    install (missing, other content, other mode); the operator's bmm.toml is not compared."""
    dest, source = _checked(dest, python, source)
    stale = []
    for rel, data, mode in _expected(source, python):
        target = dest / rel
        if str(rel) in CONFIG_FILES:
            if not target.exists():
                stale.append(str(rel))
            continue
        if not target.exists() or target.read_bytes() != data or (target.stat().st_mode & 0o777) != mode:
            stale.append(str(rel))
    return stale
