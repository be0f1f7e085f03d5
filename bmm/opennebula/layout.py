"""OpenNebula's front-end directory layout, and the TM paths that must fit it.

oned names every place a TM action touches from two roots (protocol §8.2, §10.1):
- the datastore location (oned.conf DATASTORE_LOCATION, default `<var>/datastores`): a VM's
  system dir is `<datastores>/<system ds>/<vm id>`, its disks `…/disk.<n>`, an image
  `<datastores>/<image ds>/<name>`;
- the var location (`/var/lib/one`, or `$ONE_LOCATION/var`): `<var>/vms/<vm id>/context.sh`
  and `token.txt`.

A TM action for VM X may only name X's own places: any other path (`..`, another VM's
directory, a file outside the datastores) is refused before bmm reads or touches anything.

Where the roots are: bmm.toml `opennebula_var` / `datastore_location` when set; else the var
location is the parent of the remotes directory the script runs from (`<var>/remotes`), and
the datastore location is what oned itself wrote into `<var>/config` (its KEY=VALUE dump of
oned.conf, rewritten at every start), else `<var>/datastores`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from bmm.errors import InputError
from bmm.opennebula.args import parse_id

DEFAULT_VAR = Path("/var/lib/one")
_DISK = re.compile(r"disk\.(0|[1-9][0-9]{0,8})(\.snap)?", re.ASCII)
_IMAGE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,254}", re.ASCII)


def _normal(path: str, what: str) -> str:
    """An absolute path with `//` collapsed; `.` and `..` components are refused (oned never
    writes them, and normalising them away would hide where a path really points)."""
    if not path.startswith("/") or "\0" in path:
        raise InputError(f"{what} is not an absolute path")
    parts = [p for p in path.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise InputError(f"{what} contains a '.' or '..' component")
    return "/" + "/".join(parts)


def _under(path: str, root: Path) -> list[str] | None:
    """The components of path below root, or None when it is not below root."""
    base = str(root).rstrip("/")
    if not path.startswith(base + "/"):
        return None
    return path[len(base) + 1:].split("/")


@dataclass(frozen=True)
class DiskPath:
    """A place in a VM's system dir: the dir itself (disk_id None) or one of its disks."""

    path: str
    ds_id: int
    vm_id: int
    disk_id: int | None = None
    snap: bool = False


@dataclass(frozen=True)
class Layout:
    var: Path
    datastores: Path

    @classmethod
    def find(cls, *, remotes_dir: str | os.PathLike | None, var: str | os.PathLike | None = None,
             datastores: str | os.PathLike | None = None) -> "Layout":
        var_path = Path(var) if var else (Path(remotes_dir).parent if remotes_dir else DEFAULT_VAR)
        if datastores:
            ds_path = Path(datastores)
        else:
            ds_path = Path(oned_setting(var_path / "config", "DATASTORE_LOCATION") or var_path / "datastores")
        return cls(Path(_normal(str(var_path), "the OpenNebula var location")),
                   Path(_normal(str(ds_path), "the datastore location")))

    # ------------------------------------------------------------------ TM locations

    def system_path(self, path: str, vm_id: int, what: str) -> DiskPath:
        """`<datastores>/<ds>/<vm id>` or `…/disk.<n>[.snap]`, for this very VM."""
        norm = _normal(path, what)
        parts = _under(norm, self.datastores)
        if parts is None or len(parts) not in (2, 3):
            raise InputError(f"{what} is not <datastore location>/<ds id>/<vm id>[/disk.<n>] "
                             f"(datastore location {self.datastores})")
        ds_id = parse_id(parts[0], f"{what}: the datastore id")
        path_vm = parse_id(parts[1], f"{what}: the VM id")
        if path_vm != vm_id:
            raise InputError(f"{what} is in the directory of another VM, not of VM {vm_id}")
        if len(parts) == 2:
            return DiskPath(norm, ds_id, vm_id)
        m = _DISK.fullmatch(parts[2])
        if not m:
            raise InputError(f"{what} is not a disk.<n> path of VM {vm_id}")
        return DiskPath(norm, ds_id, vm_id, int(m.group(1)), bool(m.group(2)))

    def image_path(self, path: str, ds_id: int, what: str) -> str:
        """An image of datastore ds_id: `<datastores>/<ds_id>/<name>`, a regular file whose
        real path stays inside that datastore (no symlink out of it)."""
        norm = _normal(path, what)
        parts = _under(norm, self.datastores)
        if parts is None or len(parts) != 2 or not _IMAGE.fullmatch(parts[1]):
            raise InputError(f"{what} is not an image of datastore {ds_id} "
                             f"(<datastore location>/{ds_id}/<name>)")
        if parse_id(parts[0], f"{what}: the datastore id") != ds_id:
            raise InputError(f"{what} is not in datastore {ds_id}, the one the action names")
        real = os.path.realpath(norm)
        ds_dir = os.path.realpath(self.datastores / str(ds_id))
        if not real.startswith(ds_dir + os.sep):
            raise InputError(f"{what} leads out of datastore {ds_id}")
        if not os.path.isfile(real):
            raise InputError(f"{what}: the image file does not exist or is not a regular file")
        return norm

    # ------------------------------------------------------------------ context files

    def vm_dir(self, vm_id: int) -> Path:
        return self.var / "vms" / str(vm_id)

    def context_sh(self, path: str, vm_id: int, what: str = "context.sh") -> str:
        """oned writes the context of VM X to `<var>/vms/X/context.sh`, nowhere else."""
        norm = _normal(path, what)
        if norm != str(self.vm_dir(vm_id) / "context.sh"):
            raise InputError(f"{what} is not {self.vm_dir(vm_id) / 'context.sh'}")
        return norm

    def context_file(self, spec: str, vm_id: int, what: str) -> tuple[str, str]:
        """(source path, name in the context image) of an extra context file, as oned passes
        them: `token.txt` of this VM, a FILES_DS image `<datastores>/<ds>/<name>:'<label>'`,
        or a CONTEXT/FILES front-end path (an admin-only attribute; oned checks it against
        CONTEXT_RESTRICTED_DIRS)."""
        source, name = spec, None
        m = re.fullmatch(r"(.*):'([^']*)'", spec, re.S)
        if m:
            source, name = m.group(1), m.group(2)
        if "://" in source:
            raise InputError(f"{what} is a URL; bmm takes only front-end paths as context files")
        norm = _normal(source, what)
        if name is None:
            name = norm.rsplit("/", 1)[-1]
        if not name or name in (".", "..") or "/" in name or name == "context.sh" \
                or any(ord(c) < 32 for c in name):
            raise InputError(f"{what} would have an invalid name in the context image")
        parts = _under(norm, self.var / "vms")
        if parts is not None and (len(parts) != 2 or parts[0] != str(vm_id)):
            raise InputError(f"{what} belongs to another VM's directory")
        return norm, name


def oned_setting(config_file: Path, key: str) -> str | None:
    """A single value from oned's `<var>/config` dump (`KEY=VALUE` lines), or None."""
    try:
        with open(config_file, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                name, sep, value = line.partition("=")
                if sep and name.strip() == key:
                    return value.strip().strip('"') or None
    except OSError:
        return None
    return None
