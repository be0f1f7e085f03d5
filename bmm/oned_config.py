"""The blocks oned.conf and monitord.conf need for bmm, printed or applied once.

`apply` inserts bmm's own blocks between marker comments and adds `bmm` to the `-d` list of
TM_MAD and the `-s` list of DATASTORE_MAD (oned only reads the first TM_MAD block, so that one
has to be edited in place). It keeps a backup of each file it changes and changes nothing on a
second run.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

from bmm.errors import ConfigError

NAME = "bmm"
BEGIN = "# BEGIN bmm (managed by `bmm remotes apply-config`; edit outside these markers)"
END = "# END bmm"

# Every VMM action, so none makes one_vmm_exec ssh into the machine (protocol §1.5, §1.9).
# exec/exec_cancel exist from 7.2 on; older versions ignore unknown names in -l.
LOCAL_ACTIONS = (
    "deploy,shutdown,cancel,reboot,reset,save,restore,migrate,poll,pre,post,clean,"
    "update_sg,update_nic,snapshotcreate,snapshotrevert,snapshotdelete,attach_disk,"
    "detach_disk,attach_nic,detach_nic,prereconfigure,reconfigure,resize_disk,resize,"
    "exec,exec_cancel"
)

VM_MAD = f'''VM_MAD = [
    NAME           = "{NAME}",
    SUNSTONE_NAME  = "Bare metal",
    EXECUTABLE     = "one_vmm_exec",
    ARGUMENTS      = "-t 15 -r 0 -l {LOCAL_ACTIONS} {NAME}",
    TYPE           = "xml",
    KEEP_SNAPSHOTS = "no"
]'''

TM_MAD_CONF = f'''TM_MAD_CONF = [
    NAME          = "{NAME}",
    LN_TARGET     = "SYSTEM",
    CLONE_TARGET  = "SYSTEM",
    SHARED        = "NO",
    DS_MIGRATE    = "NO",
    ALLOW_ORPHANS = "NO"
]'''

IM_MAD = f'''IM_MAD = [
    NAME          = "{NAME}",
    SUNSTONE_NAME = "Bare metal",
    EXECUTABLE    = "one_im_sh",
    ARGUMENTS     = "-r 3 -t 15 -w 90 {NAME}",
    THREADS       = 0
]'''

EXAMPLES = f'''# 1. A cluster, and datastores that use TM "{NAME}" (no stock TM will ssh into a machine).
#    `bmm one register` makes all of 1, 2 and 4 from the inventory (--dry-run shows how).
#    SAFE_DIRS: where you keep images to register (7.4 accepts images only from there;
#    its default is /var/tmp). No DRIVER: oned would convert every image to it, and bmm
#    streams qcow2 images as they are.
onecluster create bare-metal
cat > bm-system.ds <<EOT
NAME = "bm_system"
TYPE = "SYSTEM_DS"
TM_MAD = "{NAME}"
EOT
cat > bm-images.ds <<EOT
NAME = "bm_images"
DS_MAD = "fs"
TM_MAD = "{NAME}"
SAFE_DIRS = "/var/tmp"
EOT
onedatastore create bm-system.ds -c bare-metal
onedatastore create bm-images.ds -c bare-metal

# 2. One host per machine, named as in the inventory (bmm.toml `inventory`):
onehost create node01 --im {NAME} --vm {NAME} --cluster bare-metal

# 3. Networks with a front-end-only VN_MAD, e.g. dummy:  VN_MAD = "dummy", BRIDGE = "br0"

# 4. A VM template asks for the whole machine:
#    CPU = 1  MEMORY = <node memory_mb>
#    SCHED_REQUIREMENTS = "BAREMETAL = \\"YES\\" & RUNNING_VMS = 0"
#    CONTEXT = [ NETWORK = "YES", SSH_PUBLIC_KEY = "$USER[SSH_PUBLIC_KEY]" ]'''


def print_config() -> str:
    return f"""# ---- /etc/one/oned.conf -------------------------------------------------------
{VM_MAD}

{TM_MAD_CONF}

# and add "{NAME}" to the -d list of the (first) TM_MAD block, e.g.
#   TM_MAD = [ EXECUTABLE = "one_tm", ARGUMENTS = "-t 15 -d dummy,lvm,shared,...,{NAME}" ]
# and to the -s list of DATASTORE_MAD, e.g.
#   DATASTORE_MAD = [ EXECUTABLE = "one_datastore", ARGUMENTS = "-t 15 -d dummy,fs,... -s shared,ssh,...,{NAME}" ]

# ---- /etc/one/monitord.conf ---------------------------------------------------
{IM_MAD}

# ---- then restart oned, and -----------------------------------------------------
{EXAMPLES}
"""


def _add_to_list(text: str, block: str, flag: str) -> str:
    """Add NAME to the `flag` list inside ARGUMENTS of the first `block = [ ... ]`."""
    m = re.search(rf"^[ \t]*{block}[ \t]*=[ \t]*\[(.*?)\]", text, re.S | re.M)
    if not m:
        raise ConfigError(f"no {block} block found")
    body = m.group(1)
    am = re.search(r'ARGUMENTS\s*=\s*"([^"]*)"', body)
    if not am:
        raise ConfigError(f"{block} has no ARGUMENTS")
    args = am.group(1)
    fm = re.search(rf"(^|\s){re.escape(flag)}\s+(\S+)", args)
    if fm:
        items = fm.group(2).split(",")
        if NAME in items:
            return text
        new_args = args[:fm.start(2)] + fm.group(2) + "," + NAME + args[fm.end(2):]
    else:
        new_args = f"{args} {flag} {NAME}"
    start = m.start(1) + am.start(1)
    end = m.start(1) + am.end(1)
    return text[:start] + new_args + text[end:]


def _with_block(text: str, block: str) -> str:
    if BEGIN in text:
        pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END) + r"\n?", re.S)
        return pattern.sub(lambda _: f"{BEGIN}\n{block}\n{END}\n", text, count=1)
    sep = "" if text.endswith("\n") or not text else "\n"
    return f"{text}{sep}\n{BEGIN}\n{block}\n{END}\n"


def _write(path: Path, new: str, old: str) -> bool:
    if new == old:
        return False
    backup = path.with_name(f"{path.name}.bmm-backup-{time.strftime('%Y%m%d%H%M%S')}")
    shutil.copy2(path, backup)
    tmp = path.with_name(f".{path.name}.bmm-tmp")
    tmp.write_text(new)
    shutil.copymode(path, tmp)
    tmp.replace(path)
    return True


def apply_oned(path: Path) -> bool:
    old = path.read_text()
    new = _with_block(old, f"{VM_MAD}\n\n{TM_MAD_CONF}")
    new = _add_to_list(new, "TM_MAD", "-d")
    new = _add_to_list(new, "DATASTORE_MAD", "-s")
    return _write(path, new, old)


def oned_problems(text: str) -> list[str]:
    """What keeps this oned.conf from running bmm (empty when nothing does)."""
    problems = []
    if BEGIN not in text or f'NAME           = "{NAME}"' not in text:
        problems.append("has no bmm VM_MAD/TM_MAD_CONF block (run `install.sh --apply-config`)")
    for block, flag in (("TM_MAD", "-d"), ("DATASTORE_MAD", "-s")):
        try:
            if _add_to_list(text, block, flag) != text:
                problems.append(f"{block} {flag} does not list {NAME}")
        except ConfigError as exc:
            problems.append(exc.reason)
    return problems


def monitord_problems(text: str) -> list[str]:
    if BEGIN not in text or 'EXECUTABLE    = "one_im_sh"' not in text:
        return ["has no bmm IM_MAD block (run `install.sh --apply-config`)"]
    return []


def apply_monitord(path: Path) -> bool:
    old = path.read_text()
    return _write(path, _with_block(old, IM_MAD), old)
