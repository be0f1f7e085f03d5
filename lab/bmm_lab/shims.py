"""Programs the lab lays over a server's home OS (/usr/sbin, node-private overlayfs).

- reboot, poweroff, halt, shutdown: ask the lab daemon (the firmware) instead of the real
  machine; the node then goes down and the ssh session drops, as on real hardware.
- without device-mapper: lvm and every LVM command name; each runs the real lvm (through the
  node-private bind of the real /usr/sbin) and then emulates activation, so `/dev/<vg>/<lv>` and
  `/dev/mapper/<vg>-<lv>` exist for every LV and reach its bytes (loop at the LV's offset).
"""

from __future__ import annotations

import sys
from pathlib import Path

from bmm_lab import IMPORT_PATHS

POWER_NAMES = ("reboot", "poweroff", "halt", "shutdown")
LVM_NAMES = (
    "lvm", "lvcreate", "lvremove", "lvchange", "lvextend", "lvresize", "lvreduce", "lvrename",
    "lvconvert", "lvs", "lvdisplay", "lvscan", "vgchange", "vgremove", "vgcreate", "vgextend",
    "vgreduce", "vgs", "vgdisplay", "vgscan", "vgcfgrestore", "vgcfgbackup", "pvs", "pvcreate",
    "pvremove", "pvdisplay", "pvscan", "pvmove", "pvresize",
)
LVM_MUTATING = {
    "lvcreate", "lvremove", "lvchange", "lvextend", "lvresize", "lvreduce", "lvrename", "lvconvert",
    "vgchange", "vgremove", "vgcfgrestore", "vgreduce", "vgextend", "pvmove", "pvresize",
}

POWER_SHIM = '''#!{python} -I
# bmm lab: `{{reboot,poweroff,halt,shutdown}}` of {node}'s home OS. Goes to the lab's firmware,
# never to the real machine.
import json, os, signal, socket, sys, time
SOCK = {sock!r}
NODE = {node!r}
prog = os.path.basename(sys.argv[0])
args = sys.argv[1:]
if "--help" in args or "-h" == prog:
    print("usage: %s [options]  (bmm lab: handled by the lab's firmware)" % prog)
    sys.exit(0)
action = "reboot" if prog == "reboot" else "poweroff"
if prog == "shutdown":
    if "-c" in args:
        sys.exit(0)
    flags = "".join(a[1:] for a in args if a.startswith("-") and not a.startswith("--"))
    action = "reboot" if ("r" in flags or "--reboot" in args) else "poweroff"
if prog == "halt" and ("-p" in args or "--poweroff" in args):
    action = "poweroff"
if prog in ("reboot", "poweroff", "halt") and ("--reboot" in args):
    action = "reboot"
try:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(SOCK)
    s.sendall(json.dumps({{"op": "os", "node": NODE, "action": action}}).encode() + b"\\n")
    ok = json.loads(s.makefile().readline() or "{{}}").get("ok")
except OSError:
    ok = False
if not ok:
    # the firmware is not answering: tell pid 1 of this node (busybox-init signals)
    os.kill(1, signal.SIGTERM if action == "reboot" else signal.SIGUSR2)
sys.exit(0)
'''

LVM_SHIM = '''#!{python} -I
# bmm lab: LVM on {node}'s home OS without device-mapper. Runs the real lvm, then emulates
# activation: /dev/<vg>/<lv> and /dev/mapper/<vg>-<lv> -> a loop device at the LV's offset.
import os, subprocess, sys
sys.path[:0] = {repo!r}
REAL = {real!r}
prog = os.path.basename(sys.argv[0])
args = sys.argv[1:]
argv = [REAL] + ([] if prog == "lvm" else [prog]) + args
sub = prog if prog != "lvm" else (args[0] if args else "")
if sub not in {mutating!r}:
    os.execv(REAL, argv)
rc = subprocess.call(argv)
try:
    from pathlib import Path
    from bmm_lab.lvm import sync_activation
    for w in sync_activation({lvm_dir!r}, {vg!r}, {loop!r}, Path({state!r}), node={node!r}):
        sys.stderr.write("bmm-lab: " + w + "\\n")
except Exception as exc:
    sys.stderr.write("bmm-lab: emulated LV activation failed: %s\\n" % exc)
sys.exit(rc)
'''


def write(node: dict, lab_dir: Path, *, dm: bool) -> Path:
    """Write the node's shims dir (the overlay's upper-most lower layer)."""
    shims = Path(node["shims_dir"])
    shims.mkdir(parents=True, exist_ok=True)
    Path(node["real_sbin"]).mkdir(parents=True, exist_ok=True)
    repo = IMPORT_PATHS
    for name in POWER_NAMES:
        p = shims / name
        p.write_text(POWER_SHIM.format(python=sys.executable, sock=str(lab_dir / "firmware.sock"),
                                       node=node["name"]))
        p.chmod(0o755)
    if not dm:
        text = LVM_SHIM.format(python=sys.executable, repo=repo, real=str(Path(node["real_sbin"]) / "lvm"),
                               mutating=sorted(LVM_MUTATING), lvm_dir=node["lvm_dir"], vg=node["vg"],
                               loop=node["loop"], state=str(Path(node["dir"]) / "lvmap.json"),
                               node=node["name"])
        for name in LVM_NAMES:
            p = shims / name
            p.write_text(text)
            p.chmod(0o755)
    return shims
