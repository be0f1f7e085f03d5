"""A server's BMC: a real `ipmi_sim` (OpenIPMI) on 127.0.0.1:<port>/udp, IPMI 2.0 (lanplus).

Real: the IPMI LAN protocol, users and passwords, `ipmitool -I lanplus -C 3` sessions.
ipmi_sim's `chassis_control` hook is DIR/bin/chassis-control; it asks the lab daemon, so
chassis power really starts and stops the server. Calls seen from ipmi_sim 2.0.33:
`get power` -> `power:0|1`; `get boot` -> `boot:default`; `set power 1|0`; `set reset 1`;
`set shutdown 1` (`chassis power soft`: ask the OS to power off); `set boot pxe|...`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from bmm_lab import LabError

HOOK_NAME = "chassis-control"

HOOK_TEMPLATE = '''#!{python} -I
# ipmi_sim chassis_control hook written by bmm lab: forwards to the lab daemon.
# argv: <node> get power|boot  |  <node> set power|reset|shutdown|boot <value>
import json, socket, sys
SOCK = {sock!r}
def ask(req):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(20)
    s.connect(SOCK)
    s.sendall(json.dumps(req).encode() + b"\\n")
    buf = b""
    while not buf.endswith(b"\\n"):
        chunk = s.recv(4096)
        if not chunk:
            break
        buf += chunk
    ans = json.loads(buf.decode())
    if not ans.get("ok"):
        sys.stderr.write("chassis-control: " + str(ans.get("error")) + "\\n")
        sys.exit(1)
    return ans
node, verb, what = sys.argv[1], sys.argv[2], sys.argv[3]
val = sys.argv[4] if len(sys.argv) > 4 else ""
if verb == "get":
    if what == "power":
        print("power:%d" % (1 if ask({{"op": "power", "node": node, "action": "status"}})["power"] else 0))
    elif what == "boot":
        print("boot:default")
    sys.exit(0)
action = None
if what == "power":
    action = "on" if val == "1" else "off"
elif what == "reset" and val == "1":
    action = "reset"
elif what == "shutdown" and val == "1":
    action = "soft"
if action:
    ask({{"op": "power", "node": node, "action": action}})
sys.exit(0)
'''

_SAFE_PATH = re.compile(r"^[A-Za-z0-9_./+-]+$")


def write_hook(lab_dir: Path) -> Path:
    bindir = lab_dir / "bin"
    bindir.mkdir(parents=True, exist_ok=True)
    hook = bindir / HOOK_NAME
    hook.write_text(HOOK_TEMPLATE.format(python=sys.executable, sock=str(lab_dir / "firmware.sock")))
    hook.chmod(0o755)
    return hook


def write_config(lab_dir: Path, node: dict, password: str) -> None:
    """lan.conf + cmd.emu for one server's ipmi_sim (lan.conf holds the password: 0600)."""
    bdir = Path(node["dir"]) / "bmc"
    (bdir / "state").mkdir(parents=True, exist_ok=True)
    hook = lab_dir / "bin" / HOOK_NAME
    # ipmi_sim runs the hook through popen (a shell): only plain path characters are allowed
    for value in (str(hook), node["name"], node["bmc_user"]):
        if not _SAFE_PATH.match(value):
            raise LabError(f"path or name {value!r} has characters ipmi_sim's hook cannot take", node=node["name"])
    if not re.match(r"^[A-Za-z0-9]{1,16}$", password):
        raise LabError("BMC password must be 1-16 letters/digits", node=node["name"])
    guid = (node["mac"].replace(":", "") + "00" * 10)[:32]
    lan = f'''# ipmi_sim config written by bmm lab for {node["name"]}
name "{node["name"]}bmc"
set_working_mc 0x20
  startlan 1
    addr 127.0.0.1 {node["bmc_port"]}
    priv_limit admin
    allowed_auths_callback none md2 md5 straight
    allowed_auths_user none md2 md5 straight
    allowed_auths_operator none md2 md5 straight
    allowed_auths_admin none md2 md5 straight
    guid {guid}
  endlan
  chassis_control "{hook} {node["name"]}"
  user 1 true  ""      "" user  10 none md2 md5 straight
  user 2 true  "{node["bmc_user"]}" "{password}" admin 10 none md2 md5 straight
'''
    conf = bdir / "lan.conf"
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(lan)
    (bdir / "cmd.emu").write_text(
        "mc_setbmc 0x20\n"
        "mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\n"
        "sel_enable 0x20 1000 0x0a\n"
        "mc_enable 0x20\n")


def argv(node: dict) -> list[str]:
    bdir = Path(node["dir"]) / "bmc"
    return ["ipmi_sim", "-c", str(bdir / "lan.conf"), "-f", str(bdir / "cmd.emu"),
            "-s", str(bdir / "state"), "-n"]


def start(fw, node: dict) -> subprocess.Popen:
    """Start the server's ipmi_sim as a child of the daemon."""
    log = open(Path(node["dir"]) / "bmc" / "ipmi_sim.log", "ab")
    return fw.spawn(argv(node), f"{node['name']}-bmc", stdout=log, stderr=subprocess.STDOUT)


def ipmitool_argv(node: dict, *args: str) -> list[str]:
    """ipmitool against a server's BMC; the password is read from its file (-f), never argv."""
    return ["ipmitool", "-I", "lanplus", "-C", "3", "-H", "127.0.0.1", "-p", str(node["bmc_port"]),
            "-U", node["bmc_user"], "-f", node["password_file"], *args]
